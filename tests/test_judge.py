"""The pairwise judge's plumbing on a tiny model (not its judgement): both orders, tallies, a spec that does not load."""

from __future__ import annotations

import pytest

from sftlab import judge
from sftlab.errors import ConfigError


def _samples():
    rows = []
    for i in range(3):
        replies = {s: {"text": f"{s} reply {i}", "stopped": True} for s in ("base_chat", "sft", "reference")}
        rows.append({"set": "heldout", "id": f"h{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}],
                     "replies": replies})
    rows.append({"set": "ifeval", "id": "i0", "prompt": [{"role": "user", "content": "Write a poem."}],
                 "replies": {s: {"text": "A poem.", "stopped": True} for s in ("base_chat", "sft", "reference")}})
    rows.append({"set": "multiturn", "id": "m0", "prompt": [{"role": "user", "content": "Hi"}], "replies": {}})
    return rows


@pytest.mark.parametrize("text, verdict", [("A", "A"), (" B is better", "B"), ("Tie.", "tie"), ("neither", "invalid"),
                                           ("Reply B.", "B")])
def test_parse_verdict(text, verdict):
    assert judge.parse_verdict(text) == verdict


def test_both_orders_decide_the_outcome():
    assert judge.outcome("A", "B") == "win"  # picked first as A, and again as B
    assert judge.outcome("B", "A") == "loss"
    assert judge.outcome("A", "A") == "tie"  # follows the position, not the reply
    assert judge.outcome("tie", "B") == "tie" and judge.outcome("invalid", "B") == "tie"
    out = judge.win_tie_loss(["win", "tie", "win", "loss"])
    assert out["win"]["value"] == 0.5 and out["tie"]["value"] == 0.25 and out["n"] == 4
    assert len(out["loss"]["ci"]) == 2


def test_the_prompt_file_names_both_replies():
    text = judge.judge_text("What is 2+2?", "4", "five")
    assert "What is 2+2?" in text and "Reply A:\n4" in text and "Reply B:\nfive" in text
    assert len(judge.judge_text("q", "x" * 5000, "y")) < 5000  # a long reply is cut (MAX_REPLY_CHARS)


def test_judge_run_on_a_tiny_model_judges_every_pair_in_both_orders(tiny_model_dir, monkeypatch):
    from sftlab import evaluate

    seen = []
    real = evaluate.generate_replies
    monkeypatch.setattr(evaluate, "generate_replies", lambda m, t, prompts, **k: seen.append(len(prompts))
                        or real(m, t, prompts, **k))
    section, rows = judge.judge_run(_samples(), str(tiny_model_dir), progress=False)
    assert section["used"] and section["both_orders"] and section["judge"] == str(tiny_model_dir)
    assert seen == [8, 8]  # two pairs, 4 prompts each, in both orders
    assert set(section["pairs"]) == {"sft-vs-base_chat", "sft-vs-reference"}
    for entry in section["pairs"].values():
        tally = entry["all"]
        assert tally["n"] == 4
        assert round(sum(tally[k]["value"] for k in ("win", "tie", "loss")), 9) == 1
        assert entry["heldout"]["n"] == 3 and entry["ifeval"]["n"] == 1
    assert len(rows) == 8 and all(r["set"] == "judge" and len(r["judge"]["verdicts"]) == 2 for r in rows)
    assert {r["judge"]["outcome"] for r in rows} <= {"win", "tie", "loss"}


def test_no_judge_says_why_not():
    section, rows = judge.judge_run(_samples(), None)
    assert rows == [] and section["used"] is False and "the Hub is needed" in section["note"]


def test_a_judge_that_does_not_load_is_named(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(ConfigError, match="evaluation.judge: the judge model .*not-a-model.* does not load"):
        judge.load_judge(str(empty))
