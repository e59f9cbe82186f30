"""Tests for sftlab.data.report: the data report as JSON and as the text `sftlab data` prints."""

from __future__ import annotations

import json
from pathlib import Path

from sftlab import data

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
MIXED = FIXTURES / "mixed.jsonl"


def test_report_is_json_and_text_mentions_every_reason(tiny_tokenizer, fake_sharegpt):
    loaded = data.load_conversations(str(MIXED))
    texts = [data.conversation_text(c["messages"]) for c in loaded.conversations]
    cap = sorted(data.token_lengths(texts, tiny_tokenizer))[1]  # rejects the longest of three
    filtered = data.filter_conversations(loaded.conversations, tokenizer=tiny_tokenizer, max_tokens=cap)
    train, eval_ = data.train_eval_split(filtered.kept, eval_size=0, seed=0)
    report = data.data_report(loaded, filtered, train, eval_, seed=0)
    json.dumps(report)
    assert report["n_read"] == 9 and report["skipped"]["invalid_json"] == 1
    assert report["n_kept"] == len(report["raw"]["token_lengths"]) == report["n_train"]
    text = data.format_report(report)
    for reason in list(report["skipped"]) + list(report["rejected"]):
        assert reason in text
    assert "line 3" in text and "too_many_tokens" in text

    sharegpt = data.load_conversations("sharegpt", progress=False)
    f = data.filter_conversations(sharegpt.conversations)
    text = data.format_report(data.data_report(sharegpt, f, f.kept, []))
    assert "truncated after record 4" in text and "truncated_file" in text
