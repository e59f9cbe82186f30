"""The official IFEval path: rows in google/IFEval's format scored by the official checkers (if-verifiable),
malformed rows named by key, and the offline section (not used; shared types; official checkers on our prompts)."""

from __future__ import annotations

import pytest

pytest.importorskip("if_verifiable")

from sftlab import official_ifeval as off  # noqa: E402
from sftlab.errors import DataError  # noqa: E402
from sftlab.ifeval import CHECKS  # noqa: E402
from sftlab.ood import OOD_CHECKS  # noqa: E402

# Rows as google/IFEval has them (key, prompt, instruction_id_list, kwargs; unused kwargs are None there).
ROWS = [
    {"key": 1000, "prompt": "Write a short note about rain. Do not use any commas.",
     "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
    {"key": 1001, "prompt": "Write about tea in at least 5 words, and end your response with 'Is there anything else?'",
     "instruction_id_list": ["length_constraints:number_words", "startend:end_checker"],
     "kwargs": [{"num_words": 5, "relation": "at least", "end_phrase": None},
                {"end_phrase": "Is there anything else?", "num_words": None, "relation": None}]},
    {"key": 1002, "prompt": "Describe a cat. Highlight at least 2 sections with markdown, i.e. *highlighted section*.",
     "instruction_id_list": ["detectable_format:number_highlighted_sections"], "kwargs": [{"num_highlights": 2}]},
]


def test_official_rows_are_scored_by_the_official_checkers():
    replies = ["Rain falls softly on the roof.", "Tea is warm and calm and good. Is there anything else?",
               "A *soft* cat with *green* eyes."]
    for row, reply in zip(ROWS, replies):
        out = off.score_row(row, reply)
        assert all(out["strict"]) and all(out["loose"]), row["key"]
    assert off.score_row(ROWS[0], "Rain, rain, go away.")["strict"] == [False]
    assert off.score_row(ROWS[1], "Is there anything else?")["strict"] == [False, True]  # 4 words
    scores = off.official_scores(ROWS, ["Rain, rain.", replies[1], replies[2]], n_resamples=50)
    assert scores["prompt_level_strict"]["value"] == pytest.approx(2 / 3)
    assert scores["instruction_level_strict"]["value"] == pytest.approx(3 / 4)
    assert scores["published_measure"] == pytest.approx((2 / 3 + 3 / 4) / 2)


@pytest.mark.parametrize("change, message", [
    ({"key": "1000"}, "'key' must be an integer"),
    ({"prompt": ""}, "'prompt' must be a non-empty string"),
    ({"instruction_id_list": ["punctuation:no_semicolons"]}, "unknown instruction id 'punctuation:no_semicolons'"),
    ({"kwargs": []}, "'kwargs' must be a list of 1 mappings"),
    ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 5}]}, "missing \\['relation'\\]"),
])
def test_a_malformed_row_is_named_by_its_key(change, message):
    with pytest.raises(DataError, match=message) as err:
        off.validate_row({**ROWS[0], **change})
    assert "key=" in str(err.value)


def test_every_shared_type_maps_to_an_official_instruction():
    registry = off.registry()
    assert set(off.SHARED) | set(off.NOT_SHARED) == set(CHECKS) | set(OOD_CHECKS)
    assert all(iid in registry for iid, _, _ in off.SHARED.values())
    offline = off.checkers_offline(registry)
    assert set(offline) == {iid for iid, _, _ in off.SHARED.values()}
    assert offline["punctuation:no_comma"] == "runs"


def test_the_offline_section_says_not_used_and_scores_our_prompts_with_official_checkers():
    rows = [{"set": "ifeval", "id": "a", "prompt": [{"role": "user", "content": "Write about rain. Use no commas."}],
             "checks": [{"type": "no_commas"}],
             "replies": {"sft": {"text": "Rain falls.", "stopped": True}, "reference": {"text": "Rain, rain.", "stopped": True}}},
            {"set": "ood", "id": "b", "prompt": [{"role": "user", "content": "Post about sun with 2 hashtags."}],
             "checks": [{"type": "hashtags", "n": 2}],
             "replies": {"sft": {"text": "Sun! #sun #sky", "stopped": True}, "reference": {"text": "Sun.", "stopped": True}}}]
    section = off.official_section(rows, None, n_resamples=50, seed=0)
    assert section["used"] is False and "Hub" in section["note"]
    mine = section["ifeval_with_official_checkers"]
    assert mine["checker"] == {"no_commas": "official"}
    assert mine["systems"]["sft"]["prompt_level"]["value"] == 1.0
    assert mine["systems"]["reference"]["prompt_level"]["value"] == 0.0
    assert mine["agreement"]["no_commas"]["value"] == 1.0
    assert section["ood_with_official_checkers"]["checker"] == {"hashtags": "project"}
