"""Multi-turn probes: the packaged set is valid, a reply passes only by recalling the earlier fact."""

from __future__ import annotations

import json

import pytest

from sftlab.errors import DataError
from sftlab.multiturn import load_probes, score_probe, validate_probe

DOG = {"id": "dog", "messages": [
    {"role": "user", "content": "My dog is called Biscuit and she loves long walks."},
    {"role": "assistant", "content": "She sounds like a happy dog! Long walks are great exercise."},
    {"role": "user", "content": "What is my dog's name again?"}],
    "checks": [{"type": "required_words", "words": ["Biscuit"]}]}


def test_the_packaged_probes_are_valid_and_refer_back():
    probes = load_probes()
    assert len(probes) >= 12 and len({p["id"] for p in probes}) == len(probes)
    assert any(sum(m["role"] == "user" for m in p["messages"]) == 3 for p in probes)


def test_a_reply_passes_by_recalling_the_fact():
    assert score_probe(DOG, "Your dog is called Biscuit.")["prompt_level"] is True
    assert score_probe(DOG, "I don't know your dog's name.")["prompt_level"] is False


def test_copying_the_conversation_earns_nothing():
    copied = "My dog is called Biscuit and she loves long walks. She sounds like a happy dog!"
    assert score_probe(DOG, copied)["prompt_level"] is False


def test_a_loop_that_contains_the_fact_has_not_answered():
    loop = "I think it's called Biscuit.\n\n" * 12
    scored = score_probe(DOG, loop, stopped=False)
    assert scored["checks_level"] is True and scored["category"] == "loop"
    assert scored["prompt_level"] is False
    assert score_probe(DOG, "I think it's called Biscuit.", stopped=True)["prompt_level"] is True


@pytest.mark.parametrize("change, message", [
    (lambda p: p["messages"].pop(), "starting and ending with user"),
    (lambda p: p["checks"][0].update(words=["Rover"]), "not stated in an earlier user turn"),
    (lambda p: p["messages"][-1].update(content="Is Biscuit my dog's name?"), "in the last question itself"),
    (lambda p: p["messages"].__setitem__(slice(0, 3), p["messages"][2:]), "2 or 3 user turns"),
])
def test_bad_probes_are_refused_by_name(change, message):
    probe = json.loads(json.dumps(DOG))
    change(probe)
    with pytest.raises(DataError, match=message):
        validate_probe(probe)


def test_a_bad_line_is_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(DOG) + "\n{oops\n")
    with pytest.raises(DataError, match=r"p.jsonl:2"):
        load_probes(path)
