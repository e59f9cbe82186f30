"""Text copied from the prompt: found, measured and removed."""

from __future__ import annotations

from sftlab.echo import echo_run_length, echoed_share, echoed_spans, strip_echo

TITLE_PROMPT = "Write a four-line poem about rain. Give it a title wrapped in double angular brackets, like <<My Title>>."


def test_a_copied_instruction_is_found_and_removed():
    reply = TITLE_PROMPT + " mendatang\nRain falls down."
    assert strip_echo(reply, TITLE_PROMPT).split() == ["mendatang", "Rain", "falls", "down."]
    assert echoed_share(reply, TITLE_PROMPT) > 0.8


def test_case_and_surrounding_punctuation_do_not_hide_a_copy():
    reply = "give it a title wrapped in double angular brackets like <<my title>>"
    assert echoed_spans(reply, TITLE_PROMPT) == [(0, len(reply))]


def test_short_overlaps_are_not_echoes():
    reply = "<<Rain>>\nA poem about rain, four lines long, with a title."
    assert echoed_spans(reply, TITLE_PROMPT) == []
    assert strip_echo(reply, TITLE_PROMPT) == reply


def test_copies_in_several_places_are_all_removed():
    prompt = "Describe your ideal weekend in fewer than fifty words please."
    reply = f"{prompt}\nSleeping late.\n{prompt}"
    assert strip_echo(reply, prompt).split() == ["Sleeping", "late."]


def test_short_prompts_echo_only_when_copied_whole():
    assert echo_run_length("how to live") == 3
    assert echo_run_length("test") is None
    assert echoed_spans("how to live mendatang how to live", "how to live") == [(0, 11), (22, 33)]
    assert echoed_spans("test test", "test") == []


def test_empty_reply_has_no_echo():
    assert echoed_share("", TITLE_PROMPT) == 0.0 and strip_echo("", TITLE_PROMPT) == ""
