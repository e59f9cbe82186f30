"""Out-of-distribution instructions: types never trained, each checker passing and failing, echo-proof scoring."""

from __future__ import annotations

import json

import pytest

from sftlab import ood
from sftlab.data.instructions import INSTRUCTION_TYPES
from sftlab.errors import DataError
from sftlab.ifeval import CHECKS, score_reply

CASES = {  # check: (arguments, a passing reply, a failing reply)
    "word_repeat": ({"word": "leaf", "n": 3}, "A leaf, a LEAF and one more leaf.", "Leaves and a leaf."),
    "placeholders": ({"n": 2}, "Dear [name], see you at [place].", "Dear [name], see you at [name]."),
    "highlights": ({"n": 2}, "Bring *water* and **a hat**.", "Bring *water* and a hat."),
    "two_responses": ({"separator": "******"}, "Sunny Bakes\n******\nCrumb Corner", "Sunny Bakes\n******\nSunny Bakes"),
    "choose_one": ({"options": ["My answer is yes.", "My answer is no."]}, "My answer is no.",
                   "My answer is yes. My answer is no."),
    "sections": ({"headers": ["Pros", "Cons"]}, "## Pros:\nCheap.\n**Cons**\nSlow.", "Pros:\nCheap.\nCons:"),
    "wrapped": ({"start": "<<<", "end": ">>>"}, "<<< The moon is bright. >>>", "The moon is bright. >>>"),
    "hashtags": ({"n": 2}, "Sea and sand! #beach #Summer", "Sea and sand! #beach #beach"),
    "ends_with_question": ({}, "Octopuses have three hearts. Did you know?", "Did you know? Octopuses have three hearts."),
    "capital_words": ({"n": 2}, "Lock the door, ALWAYS, and I mean ALWAYS.", "LOCK THE DOOR ALWAYS."),
}


def test_every_check_has_a_passing_and_a_failing_case():
    assert set(CASES) == set(ood.OOD_CHECKS)
    for name, (args, good, bad) in CASES.items():
        check = ood.OOD_CHECKS[name]
        assert check(good, **args), name
        assert not check(bad, **args), name


def test_no_ood_type_is_a_trained_one():
    trained = {spec.check for spec in INSTRUCTION_TYPES.values()}
    assert trained == set(CHECKS)
    assert not set(ood.OOD_CHECKS) & trained


def test_packaged_prompts_cover_every_type():
    records = ood.load_ood_prompts()
    assert len(records) >= 40
    types = [c["type"] for r in records for c in r["checks"]]
    assert set(types) == set(ood.OOD_CHECKS) and min(types.count(t) for t in set(types)) >= 4


def test_scoring_is_echo_proof():
    record = {"id": "o", "prompt": "Write a two-line poem about the moon. Put your entire answer between <<< and >>>.",
              "checks": [{"type": "hashtags", "n": 1}]}
    copied = {**record, "prompt": "Share your post and tag it with #moonlight and #night sky photos tonight please."}
    assert score_reply(record, "Moon so bright #moon", checks=ood.OOD_CHECKS)["prompt_level"]
    assert not score_reply(copied, "tag it with #moonlight and #night sky photos tonight please",
                           checks=ood.OOD_CHECKS)["prompt_level"]


def test_accuracy_has_prompt_and_instruction_levels():
    records = ood.load_ood_prompts()[:2]
    out = ood.ood_accuracy(records, ["leaf " * 4, "nothing"], n_resamples=50)
    assert out["prompt_level"]["value"] == 0.5 and out["n_prompts"] == 2
    assert set(out["per_type"]) == {r["checks"][0]["type"] for r in records}
    assert ood.ood_values(records, ["leaf " * 4, "nothing"])["prompt_level"] == [1.0, 0.0]


@pytest.mark.parametrize("check, message", [
    ({"type": "word_repeat", "word": "", "n": 2}, "word must be a non-empty string"),
    ({"type": "sections", "headers": []}, "headers must be a non-empty list"),
    ({"type": "max_words", "n": 3}, "unknown check type 'max_words'"),
])
def test_bad_records_are_named(tmp_path, check, message):
    path = tmp_path / "ood.jsonl"
    path.write_text(json.dumps({"id": "ood-bad", "prompt": "Write.", "checks": [check]}) + "\n")
    with pytest.raises(DataError, match=message) as err:
        ood.load_ood_prompts(path)
    assert "ood-bad" in str(err.value)
