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


# ---------------------------------------------------------------------------
# Clean prompts and no duplicates (the split's evaluation prompts never appear in training)


def _opening(i, prompt, reply="Here is a full answer with enough words to pass the filters."):
    return {"id": str(i), "messages": [msg("user", prompt), msg("assistant", reply)]}


@pytest.mark.parametrize("prompt, reason", [
    ("cpp", "prompt_too_short"), ("OK", "prompt_too_short"), ("headline", "prompt_too_short"),
    ("continue", "prompt_too_short"), ("Continue the story from where you stopped", "prompt_needs_context"),
    ("Make it shorter and more formal please", "prompt_needs_context"),
    ("Explain quantum computing in simple terms", None),
    ("Now that we have covered the basics of photosynthesis in plants, explain how chlorophyll absorbs light",
     None),  # a long request that opens with "now" stands on its own
])
def test_prompt_problem_names_context_free_failures(prompt, reason):
    assert data.prompt_problem(prompt, min_words=4, drop_context=True) == reason


def test_short_and_context_prompts_are_counted_not_silently_dropped():
    convs = [_opening(0, "cpp"), _opening(1, "Continue the story please"),
             _opening(2, "Explain how a rainbow forms in the sky")]
    out = data.filter_conversations(convs, english_only=True, min_prompt_words=4, drop_context_prompts=True)
    assert [c["id"] for c in out.kept] == ["2"]
    assert out.rejected == {"prompt_too_short": 1, "prompt_needs_context": 1}
    assert out.settings["min_prompt_words"] == 4 and out.settings["drop_context_prompts"] is True


def test_strict_english_rejects_a_foreign_prompt_with_an_english_reply():
    reply = ("Quantum computing uses qubits, which can be in a mix of states at once, and the rules of quantum "
             "mechanics to solve some problems faster than the computers we use today. It is still early, and the "
             "machines that exist are small and make many errors, but they are improving every year.")
    convs = [_opening(0, "你好，请解释一下量子计算", reply), _opening(1, "Please explain quantum computing", reply)]
    loose = data.filter_conversations(convs, english_only=True)
    strict = data.filter_conversations(convs, english_only=True, strict_english=True)
    assert len(loose.kept) == 2  # the whole conversation looks English enough
    assert [c["id"] for c in strict.kept] == ["1"] and strict.rejected == {"not_english": 1}


def test_dedupe_keeps_the_first_of_each_opening_request():
    convs = [_opening(0, "Explain quantum computing in simple terms"),
             _opening(1, "explain  quantum computing in simple terms!", "Another, different answer to it here."),
             _opening(2, "Explain quantum computing in simple terms"),  # the whole conversation again
             _opening(3, "What is a rainbow and how does it form?")]
    out = data.filter_conversations(convs, english_only=False, dedupe=True)
    assert [c["id"] for c in out.kept] == ["0", "3"]
    assert out.rejected == {"duplicate_prompt": 1, "duplicate_conversation": 1}


def test_no_evaluation_prompt_is_also_a_training_prompt():
    prompts = ["Explain quantum computing in simple terms", "What is a rainbow?", "Tell me a joke about cats"]
    convs = [_opening(i, prompts[i % 3] + ("!" if i % 2 else "")) for i in range(30)]
    kept = data.filter_conversations(convs, english_only=False, dedupe=True).kept
    train, eval_ = data.train_eval_split(kept, eval_size=1, seed=0)
    seen = {data.normalized_prompt(data.first_prompt(c["messages"])) for c in train}
    assert not any(data.normalized_prompt(data.first_prompt(c["messages"])) in seen for c in eval_)


@pytest.mark.slow
def test_the_real_default_split_shares_no_opening_request():
    """ShareGPT as the default recipe filters it, with dedupe: no held-out prompt opens a training conversation."""
    loaded = data.load_conversations("sharegpt", progress=False)
    kept = data.filter_conversations(loaded.conversations, english_only=True, max_turns=3, strict_english=True,
                                     min_prompt_words=4, drop_context_prompts=True, dedupe=True).kept
    train, eval_ = data.train_eval_split(kept, eval_size=60, seed=42)
    seen = {data.normalized_prompt(data.first_prompt(c["messages"])) for c in train}
    assert not [c["id"] for c in eval_ if data.normalized_prompt(data.first_prompt(c["messages"])) in seen]
