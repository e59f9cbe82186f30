"""Scoring: one system's summary, the paired comparisons between systems, and the split held-out loss."""

from __future__ import annotations

import json
import math

import pytest

from sftlab.errors import DataError
from sftlab.metrics import bleu, rouge_l
from sftlab.scoring import MATCHED_WORDS, eot_share_of_gain, score_losses, score_replies, summarize

LONG = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm windowsill."


def _records():
    return [
        {"reply": "Paris is the capital of France.", "reference": "Paris is the capital of France.", "stopped": True},
        {"reply": "The sea is wide.", "reference": "The sea is wide and blue.", "stopped": True},
        {"reply": "I like tea.\nUser: and you?", "reference": "Tea is a hot drink.", "stopped": False},
        {"reply": "Two plus two is four.", "reference": "2 + 2 = 4", "stopped": True},
    ]


def test_summarize_computes_every_metric_and_is_json_ready():
    out = summarize(_records(), n_resamples=200)
    json.dumps(out)  # plain types only
    assert out["n"] == 4
    expected = {"n", "reply_length", "role_leak_rate", "canned_rate", "distinct_1", "distinct_2",
                "distinct_2_matched", "stop_rate", "rougeL", "bleu", "categories"}
    assert set(out) == expected
    assert out["stop_rate"]["value"] == 0.75
    assert out["role_leak_rate"]["value"] == 0.25
    assert out["reply_length"]["unit"] == "words"
    assert out["distinct_1"]["ci"] is None
    preds = [r["reply"] for r in _records()]
    refs = [r["reference"] for r in _records()]
    assert out["rougeL"]["value"] == pytest.approx(rouge_l(preds, refs))
    assert out["bleu"]["value"] == pytest.approx(bleu(preds, refs))
    for key in ("reply_length", "role_leak_rate", "stop_rate", "rougeL", "bleu"):
        low, high = out[key]["ci"]
        assert low <= out[key]["value"] <= high, key
    assert sum(out["categories"].values()) == 4 and out["categories"]["cut"] == 1


def test_rates_get_wilson_intervals_that_are_not_degenerate():
    recs = [{"reply": "Paris is in France.", "stopped": False} for _ in range(4)]
    out = summarize(recs, n_resamples=100)
    assert out["stop_rate"]["value"] == 0.0 and out["stop_rate"]["ci"][1] > 0.4  # 0 of 4 is not "0% [0%, 0%]"


def test_summarize_perfect_system():
    texts = ["Paris is in France.", "The sea is wide and blue today.", LONG]  # 4+ tokens each: see bleu()
    recs = [{"reply": t, "reference": t} for t in texts]
    out = summarize(recs, n_resamples=100)
    assert out["rougeL"] == {"value": 1.0, "ci": [1.0, 1.0]}
    assert out["bleu"]["value"] == pytest.approx(1.0)
    assert "stop_rate" not in out and "embedding_similarity" not in out


def test_summarize_perplexity_is_token_weighted():
    recs = [{"reply": "a", "mean_nll": 1.0, "n_tokens": 3}, {"reply": "b", "mean_nll": 2.0, "n_tokens": 1}]
    out = summarize(recs, n_resamples=100)
    assert out["perplexity"]["value"] == pytest.approx(math.exp((3 * 1.0 + 1 * 2.0) / 4))
    low, high = out["perplexity"]["ci"]
    assert math.e <= low <= high <= math.exp(2.0)


def test_summarize_rejects_partial_fields_and_empty_input():
    recs = _records()
    del recs[2]["reference"]
    with pytest.raises(DataError, match="record 2 has no 'reference'"):
        summarize(recs)
    with pytest.raises(ValueError):
        summarize([])


def test_distinct_at_a_matched_length_ignores_short_replies_and_length():
    varied = " ".join(f"word{i}" for i in range(MATCHED_WORDS + 20))
    looping = " ".join(["the same words again"] * 20)
    recs = [{"reply": varied}, {"reply": looping}, {"reply": "Too short to count."}]
    out = summarize(recs, n_resamples=100)["distinct_2_matched"]
    assert out["n"] == 2 and out["words"] == MATCHED_WORDS
    assert 0.5 < out["value"] < 1.0  # the mean of 1.0 (varied) and the looping reply's low value


def _replies(texts_stops):
    return {"heldout": [{"text": t, "stopped": s} for t, s in texts_stops], "ifeval": []}


def test_comparisons_are_paired_over_the_same_prompts():
    refs = ["Paris is the capital of France.", "Tea is a drink.", "The sea is blue.", "Two and two make four."]
    replies = {
        "sft": _replies([(r, True) for r in refs]),
        "base_chat": _replies([("Hello! How can I help you today?", True)] + [("no no no no no no", False)] * 3),
    }
    out = score_replies(replies, refs, [], embeddings=False, n_resamples=200, seed=0)
    rows = {(c["a"], c["b"], c["metric"]): c for c in out["comparisons"]}
    stop = rows[("sft", "base_chat", "stop_rate")]
    assert stop["difference"] == pytest.approx(0.75) and stop["n_a_higher"] == 3 and stop["n_b_higher"] == 0
    assert rows[("sft", "base_chat", "canned_rate")]["difference"] == pytest.approx(-0.25)
    assert ("sft", "reference", "stop_rate") not in rows  # no reference system in this run
    assert out["systems"]["base_chat"]["heldout"]["categories"]["greeting"] == 1


def test_ifeval_scores_are_echo_proof_with_the_raw_score_beside():
    prompt = "Write a four-line poem about rain. Give it a title wrapped in double angular brackets, like <<My Title>>."
    records = [{"id": "t", "prompt": prompt, "checks": [{"type": "contains_title"}]}]
    echo = {"heldout": [], "ifeval": [{"text": prompt + " mendatang\nmore text", "stopped": False}]}
    own = {"heldout": [], "ifeval": [{"text": "<<Rain>>\nDrops fall.", "stopped": True}]}
    out = score_replies({"base_chat": echo, "sft": own}, [], records, embeddings=False, n_resamples=100, seed=0)
    base = out["systems"]["base_chat"]["ifeval"]
    assert base["prompt_level"]["value"] == 0.0 and base["raw"]["prompt_level"]["value"] == 1.0
    assert base["n_echoed"] == 1 and base["categories"]["echo"] == 1
    assert out["systems"]["sft"]["ifeval"]["prompt_level"]["value"] == 1.0


def test_loss_is_split_into_content_and_end_of_turn_tokens():
    # per conversation: [nats, tokens, end-of-turn nats, end-of-turn tokens]
    losses = {"base_chat": {"per_conversation": [[30.0, 10, 20.0, 1], [12.0, 5, 8.0, 1]]},
              "sft": {"per_conversation": [[12.0, 10, 2.0, 1], [6.0, 5, 1.0, 1]]}}
    out = score_losses(losses, n_resamples=200, seed=0)
    base, sft = out["heldout_loss"]["base_chat"], out["heldout_loss"]["sft"]
    assert base["mean_nll"] == pytest.approx(42 / 15)
    assert base["content_nll"]["value"] == pytest.approx(14 / 13) and base["eot_nll"]["value"] == pytest.approx(14.0)
    assert sft["eot_nll"]["n_tokens"] == 2
    parts = {c["metric"]: c for c in out["comparisons"]}
    assert set(parts) == {"mean_nll", "content_nll", "eot_nll"}
    assert parts["eot_nll"]["difference"] == pytest.approx(1.5 - 14.0)
    # The loss fell by 42 - 18 = 24 nats in all; end-of-turn tokens alone fell by 28 - 3 = 25 (content rose).
    assert eot_share_of_gain(out["heldout_loss"]) == pytest.approx((28.0 - 3.0) / (42.0 - 18.0))


def test_old_two_column_loss_rows_still_score_without_a_split():
    out = score_losses({"sft": {"per_conversation": [[3.0, 2], [1.0, 2]]}}, n_resamples=50, seed=0)
    assert out["heldout_loss"]["sft"]["mean_nll"] == 1.0 and "eot_nll" not in out["heldout_loss"]["sft"]
