"""Tests for sftlab.data.filters: the English heuristic, turn and token bounds, token counting."""

from __future__ import annotations

import pytest

from sftlab import data
from sftlab.errors import ConfigError


def msg(role, content):
    return {"role": role, "content": content}


def conv(i, turns=1, text="What is the capital of France? The capital of France is Paris."):
    messages = []
    for _ in range(turns):
        messages += [msg("user", f"Question {i}: {text}"), msg("assistant", f"Answer {i}: {text}")]
    return {"id": str(i), "messages": messages}


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
