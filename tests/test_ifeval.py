"""Instruction-following checks, the packaged prompt set and its scoring."""

from __future__ import annotations

import json

import pytest

from sftlab.errors import DataError
from sftlab.ifeval import CHECKS, count_sentences, ifeval_accuracy, load_prompts, score_reply, validate_record

# check type -> (arguments, a reply that follows it, a reply that does not)
CASES = {
    "max_words": ({"n": 5}, "I like quiet sunny mornings.", "I like quiet sunny mornings by the sea."),
    "min_words": ({"n": 5}, "Water keeps your body working well.", "Drink water."),
    "all_lowercase": ({}, "dear sam, please water my plants. thanks!", "Dear Sam, please water my plants."),
    "all_uppercase": ({}, "CAUTION: WET FLOOR!", "Caution: wet floor!"),
    "bullet_count": ({"n": 3}, "Pack these:\n- towel\n* hat\n- sunscreen", "- towel\n- hat"),
    "numbered_list": ({"n": 4}, "1. Boil water\n2. Add tea\n3) Wait\n4. Pour", "1. Boil water\n2. Add tea\n3. Pour"),
    "required_words": (
        {"words": ["leaves", "cozy"]},
        "Cozy evenings and falling Leaves.",
        "Cozy evenings and a falling leaf.",  # "leaf" is not "leaves"
    ),
    "forbidden_words": ({"words": ["blue", "water"]}, "Big waves and waterfalls of foam.", "The deep blue sea."),
    "json_object": ({}, '```json\n{"name": "Tom", "age": 3}\n```', 'Here it is: {"name": "Tom"}'),
    "ends_with": ({"phrase": "Thank you again!"}, "You helped me a lot. Thank you again!\n", "Thank you again."),
    "starts_with": ({"phrase": "Did you know"}, "  Did you know the moon drifts away?", "Fun fact: did you know..."),
    "no_commas": ({}, "Boil the egg for ten minutes.", "First, boil the egg."),
    "max_sentences": ({"n": 2}, "Water the seed. Wait.", "Dig a hole. Drop the seed. Water it."),
    "quotation": ({}, '"Keep going, one step at a time."', 'Keep going. "One step at a time."'),
    "contains_title": ({}, "<<Rain Song>>\nDrops on the roof", "Rain Song\nDrops on the roof"),
    "n_paragraphs": ({"n": 2}, "Spring is mild.\n\nI love it.", "Spring is mild.\nI love it."),
    "postscript": ({"marker": "P.S."}, "See you soon.\n\nP.S. Bring a hat.", "See you soon. P.S. Bring a hat."),
}


def test_every_check_type_has_a_case():
    assert set(CASES) == set(CHECKS)


@pytest.mark.parametrize("ctype", sorted(CASES))
def test_check_passes_and_fails(ctype):
    kwargs, good, bad = CASES[ctype]
    assert CHECKS[ctype](good, **kwargs) is True
    assert CHECKS[ctype](bad, **kwargs) is False


@pytest.mark.parametrize(
    "ctype, kwargs, reply, expected",
    [
        ("max_words", {"n": 3}, "One two three.", True),
        ("json_object", {}, '{"a": 1}', True),
        ("json_object", {}, "[1, 2]", False),  # an array is not an object
        ("json_object", {}, "```\n{}\n```", True),
        ("required_words", {"words": ["cat"]}, "A category of things.", False),
        ("forbidden_words", {"words": ["ice cream"]}, "I love ICE CREAM.", False),
        ("ends_with", {"phrase": "every day."}, "We use it every day.  \n", True),
        ("quotation", {}, "\u201cKeep going.\u201d", True),
        ("quotation", {}, '"', False),
        ("bullet_count", {"n": 2}, "  - nested\n  - items\n-not a bullet", True),
        ("n_paragraphs", {"n": 3}, "\n\nOne.\n \nTwo.\n\n\nThree.\n\n", True),
        ("all_lowercase", {}, "it is 9:30 now.", True),
    ],
)
def test_check_edge_cases(ctype, kwargs, reply, expected):
    assert CHECKS[ctype](reply, **kwargs) is expected


def test_count_sentences():
    assert count_sentences("Hi. How are you? Fine!") == 3
    assert count_sentences("- eggs\n- milk") == 2
    assert count_sentences('"Always check your mirrors." Then drive.') == 2
    assert count_sentences("") == 0


# --------------------------------------------------------------------------- the packaged prompt set


def test_packaged_prompts_load_and_cover_every_check():
    prompts = load_prompts()
    assert len(prompts) >= 50
    ids = [p["id"] for p in prompts]
    assert len(set(ids)) == len(ids)
    used = {c["type"] for p in prompts for c in p["checks"]}
    assert used <= set(CHECKS)
    # every check type is exercised by some prompt, but postscript (added for the training
    # instruction examples, sftlab.data.instructions), which no evaluation prompt uses yet
    assert used == set(CHECKS) - {"postscript"}
    assert all(1 <= len(p["checks"]) <= 2 for p in prompts)


def test_example_replies_to_real_prompts_pass():
    prompts = {p["id"]: p for p in load_prompts()}
    assert score_reply(prompts["ifeval-005"], "- towel\n- sunscreen\n- hat")["prompt_level"]
    assert score_reply(prompts["ifeval-017"], "Walking lifts your mood and keeps your heart strong.")["prompt_level"]
    reply = "A calendar shows the days weeks and months so we can plan what happens every day."
    assert score_reply(prompts["ifeval-059"], reply)["prompt_level"]


# --------------------------------------------------------------------------- invalid records


def _write(tmp_path, records):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


GOOD = {"id": "ok-1", "prompt": "Say hi.", "checks": [{"type": "max_words", "n": 5}]}


def _rec(*checks, prompt="Hi"):
    return {"id": "p-7", "prompt": prompt, "checks": list(checks)}


@pytest.mark.parametrize(
    "record, message",
    [
        (_rec({"type": "max_wordz", "n": 5}), r"'p-7', check 0: unknown check type 'max_wordz'"),
        (_rec({"type": "max_words", "n": "5"}), r"'p-7', check 0 \(max_words\): n must be"),
        (_rec({"type": "max_words"}), r"'p-7', check 0 \(max_words\).*missing \['n'\]"),
        (_rec({"type": "no_commas", "n": 2}), r"'p-7', check 0 \(no_commas\).*unknown \['n'\]"),
        (_rec({"type": "required_words", "words": []}), r"'p-7'.*words must be"),
        (_rec({"type": "ends_with", "phrase": " "}), r"'p-7'.*phrase must be"),
        (_rec({"type": "bullet_count", "n": True}), r"'p-7'.*n must be"),
        (_rec(), r"'p-7': 'checks' must be a non-empty list"),
        (_rec({"type": "no_commas"}, prompt=""), r"'p-7': 'prompt' must be"),
        ({"prompt": "Hi", "checks": [{"type": "no_commas"}]}, r"without a string id"),
        (
            _rec({"type": "all_lowercase"}, {"type": "starts_with", "phrase": "Dear"}),
            r"'p-7': contradictory checks: all_lowercase but phrase 'Dear'",
        ),
        (
            _rec({"type": "min_words", "n": 50}, {"type": "max_words", "n": 10}),
            r"'p-7': contradictory checks: min_words 50 > max_words 10",
        ),
        (
            _rec({"type": "required_words", "words": ["Sea"]}, {"type": "forbidden_words", "words": ["sea"]}),
            r"'p-7': contradictory.*\['sea'\]",
        ),
    ],
)
def test_invalid_record_names_prompt_and_check(tmp_path, record, message):
    with pytest.raises(DataError, match=message):
        validate_record(record)
    with pytest.raises(DataError, match=r"prompts\.jsonl:2: .*" + message):
        load_prompts(_write(tmp_path, [GOOD, record]))


def test_load_prompts_rejects_duplicate_ids_and_bad_json(tmp_path):
    with pytest.raises(DataError, match=r":2: prompt id 'ok-1' appears twice"):
        load_prompts(_write(tmp_path, [GOOD, GOOD]))
    with pytest.raises(DataError, match=r":2: not valid JSON"):
        load_prompts(_write(tmp_path, [GOOD, "{not json"]))
    assert load_prompts(_write(tmp_path, [GOOD, ""])) == [GOOD]


# --------------------------------------------------------------------------- scoring


RECORDS = [
    {"id": "a", "prompt": "...", "checks": [{"type": "no_commas"}, {"type": "max_words", "n": 3}]},
    {"id": "b", "prompt": "...", "checks": [{"type": "all_lowercase"}]},
]


def test_score_reply():
    assert score_reply(RECORDS[0], "One two three four.") == {
        "id": "a",
        "prompt_level": False,
        "instruction_results": [True, False],
        "echoed": False,
    }
    assert score_reply(RECORDS[0], "One two three.")["prompt_level"] is True


def test_empty_reply_follows_no_instruction():
    assert score_reply(RECORDS[0], "  \n") == {"id": "a", "prompt_level": False, "instruction_results": [False, False],
                                               "echoed": False}


def test_ifeval_accuracy_known_values():
    out = ifeval_accuracy(RECORDS, ["One two three four.", "all lowercase here"], n_resamples=200)
    json.dumps(out)
    assert out["n_prompts"] == 2 and out["n_instructions"] == 3
    assert out["prompt_level"]["value"] == 0.5
    assert out["instruction_level"]["value"] == pytest.approx(2 / 3)
    for key in ("prompt_level", "instruction_level"):
        low, high = out[key]["ci"]
        assert 0.0 <= low <= out[key]["value"] <= high <= 1.0
    assert out["per_type"]["max_words"]["value"] == 0.0 and out["per_type"]["max_words"]["n"] == 1
    assert out["per_type"]["max_words"]["ci"][1] > 0.5  # Wilson: one failure does not pin the rate at 0%
    assert set(out["per_type"]) == {"no_commas", "max_words", "all_lowercase"}


def test_ifeval_accuracy_accepts_replies_by_id_and_checks_alignment():
    by_id = {"b": "all lowercase here", "a": "One two three."}
    assert ifeval_accuracy(RECORDS, by_id, n_resamples=50)["prompt_level"]["value"] == 1.0
    with pytest.raises(DataError, match=r"no reply for prompt ids \['b'\]"):
        ifeval_accuracy(RECORDS, {"a": "x"})
    with pytest.raises(ValueError, match="2 prompts but 1 replies"):
        ifeval_accuracy(RECORDS, ["x"])


def test_ifeval_accuracy_on_packaged_prompts_is_deterministic():
    prompts = load_prompts()
    replies = ["- one\n- two\n- three" if i % 2 else "Hello, world." for i in range(len(prompts))]
    first = ifeval_accuracy(prompts, replies, n_resamples=200, seed=1)
    assert first == ifeval_accuracy(prompts, replies, n_resamples=200, seed=1)
    assert first["n_prompts"] == len(prompts)
    assert first["n_instructions"] == sum(len(p["checks"]) for p in prompts)


# --------------------------------------------------------------------------- echo-proof scoring

IFEVAL_015 = {
    "id": "ifeval-015",
    "prompt": "Write a four-line poem about rain. Give it a title wrapped in double angular brackets, like <<My Title>>.",
    "checks": [{"type": "contains_title"}],
}
# The committed run's base model with the chat template answered ifeval-015 like this (first 200
# characters of results/default/samples.jsonl at commit 9e32e4f): it copies the instruction.
BASE_CHAT_015 = ("Write a four-line poem about rain. Give it a title wrapped in double angular brackets, like "
                 "<<My Title>>. mendatang\n겪을 수 있는 일과 그에 대한 이야기를 담은 낭만적인 글.\n겪을 수 있는 일과 그에 대한 이야기를 담은 낭만적인 글.")


def test_a_copied_instruction_earns_no_credit():
    scored = score_reply(IFEVAL_015, BASE_CHAT_015)
    assert scored["echoed"] is True and scored["instruction_results"] == [False]
    assert score_reply(IFEVAL_015, BASE_CHAT_015, echo_proof=False)["instruction_results"] == [True]


def test_a_reply_that_writes_its_own_title_still_passes():
    assert score_reply(IFEVAL_015, "<<Rain>>\nDrops on the glass,\nclouds pass,\npuddles grow,\nthe gutters flow.")[
        "prompt_level"] is True


def test_copying_a_comma_free_prompt_is_not_following_no_commas():
    record = {"id": "c", "prompt": "Explain how to boil an egg without using any commas.", "checks": [{"type": "no_commas"}]}
    assert score_reply(record, "Explain how to boil an egg without using any commas.")["prompt_level"] is False
    assert score_reply(record, "Put the egg in boiling water for nine minutes.")["prompt_level"] is True


def test_copied_text_does_not_excuse_a_length_limit():
    record = {"id": "w", "prompt": "Describe your ideal weekend in fewer than fifty words and make it sound fun.",
              "checks": [{"type": "max_words", "n": 12}]}
    reply = "Describe your ideal weekend in fewer than fifty words and make it sound fun. Sleep late."
    assert score_reply(record, reply)["prompt_level"] is False  # 17 words in all; the copy still counts here


def test_raw_and_echo_proof_accuracies_are_both_reported():
    out = ifeval_accuracy([IFEVAL_015], [BASE_CHAT_015], n_resamples=50)
    assert out["prompt_level"]["value"] == 0.0 and out["raw"]["prompt_level"]["value"] == 1.0
    assert out["n_echoed"] == 1


# --------------------------------------------------------------------------- postscript


@pytest.mark.parametrize(
    "reply, marker, expected",
    [
        ("Thanks for coming.\n\nP.S. Bring a hat.", "P.S.", True),
        ("thanks for coming.\np.s. bring a hat.", "P.S.", True),  # any case, as in IFEval
        ("Thanks.\n  P.S.Bring a hat.", "P.S.", True),
        ("Thanks.\n\nP.P.S. One more thing.", "P.P.S.", True),
        ("Thanks.\n\nP.P.S. One more thing.", "P.S.", False),  # "P.P.S." is not "P.S."
        ("P.S. Bring a hat.", "P.S.", False),  # nothing before the postscript
        ("Thanks for coming. P.S. Bring a hat.", "P.S.", False),  # not at the start of a line
        ("Thanks for coming.\nP.S.", "P.S.", False),  # no text after the marker
        ("Thanks for coming.", "P.S.", False),
    ],
)
def test_postscript(reply, marker, expected):
    assert CHECKS["postscript"](reply, marker=marker) is expected


def test_postscript_marker_defaults_to_ps_and_is_validated():
    assert CHECKS["postscript"]("Hi.\nP.S. Bye.") is True
    validate_record({"id": "p", "prompt": "Add a P.S. note.", "checks": [{"type": "postscript"}]})
    validate_record({"id": "p", "prompt": "Add a note.", "checks": [{"type": "postscript", "marker": "P.P.S."}]})
    with pytest.raises(DataError, match="marker must be a non-empty string"):
        validate_record({"id": "p", "prompt": "Add a note.", "checks": [{"type": "postscript", "marker": ""}]})
    with pytest.raises(DataError, match="unknown"):
        validate_record({"id": "p", "prompt": "Add a note.", "checks": [{"type": "postscript", "mark": "P.S."}]})
    with pytest.raises(DataError, match="marker 'Note, later' has a comma"):
        validate_record({"id": "p", "prompt": "A note.", "checks": [{"type": "no_commas"},
                                                                   {"type": "postscript", "marker": "Note, later"}]})


def test_postscript_is_echo_proof():
    record = {"id": "e", "prompt": "Write a note. End with a line P.S. remember to bring the blue umbrella tonight.",
              "checks": [{"type": "postscript", "marker": "P.S."}]}
    copied = "See you.\nP.S. remember to bring the blue umbrella tonight."
    assert score_reply(record, copied, echo_proof=False)["prompt_level"] is True
    assert score_reply(record, copied)["prompt_level"] is False
    assert score_reply(record, "See you.\nP.S. Umbrella!")["prompt_level"] is True
