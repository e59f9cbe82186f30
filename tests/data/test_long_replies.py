"""Tests for sftlab.data.long_replies: instruction examples cut from conversations too long to keep."""

from __future__ import annotations

import json
import random

import pytest

from sftlab import data
from sftlab.data.filters import conversation_text, first_prompt, normalized_prompt, token_lengths
from sftlab.data.instructions import ID_SUFFIX, SIZES
from sftlab.data.long_replies import (
    EXTRA_SUFFIX,
    PARTNER_TYPES,
    cut_example,
    cut_reply,
    long_reply_examples,
)
from sftlab.data.messages import validate_messages
from sftlab.errors import ConfigError
from sftlab.ifeval import count_sentences, score_reply
from sftlab.metrics import count_words

MAX_TOKENS = 600


def msg(role, content):
    return {"role": role, "content": content}


def long_conv(i: int, topic: str = "rivers") -> dict:
    """A conversation whose reply (30 sentences of prose) is far over MAX_TOKENS."""
    sentences = [f"Fact {k} about {topic} is that many people study their water and banks in detail every year."
                 for k in range(30)]
    return {"id": f"long{i}", "messages": [msg("user", f"Tell me everything you know about {topic}, case {i}."),
                                           msg("assistant", " ".join(sentences))]}


def record_of(example: dict) -> dict:
    return {"id": example["id"], "prompt": example["messages"][0]["content"], "checks": example["instruction_checks"]}


def length_of(example, tokenizer) -> int:
    return token_lengths([conversation_text(example["messages"])], tokenizer)[0]


def test_cut_reply_keeps_whole_sentences_within_the_limit():
    text = "One two three. Four five six. Seven eight."
    assert cut_reply(text, "max_words", 6) == "One two three. Four five six."
    assert cut_reply(text, "max_words", 2) is None  # not even the first sentence fits
    assert cut_reply(text, "max_sentences", 2) == "One two three. Four five six."
    assert cut_reply(text, "max_sentences", 5) == text


@pytest.mark.parametrize("partner", PARTNER_TYPES)
@pytest.mark.parametrize("kind", ["max_words", "max_sentences"])
def test_every_partner_with_every_limit_gives_a_cut_example_that_passes_and_fits(partner, kind, tiny_tokenizer):
    conv = long_conv(1)
    made = None
    for size in reversed(SIZES[kind]):  # as long_reply_examples does: smaller until it fits
        made = cut_example(conv, partner, kind, size, random.Random(0), max_tokens=MAX_TOKENS,
                           tokenizer=tiny_tokenizer)
        if made not in ("does_not_fit", "over_every_limit"):
            break
    assert isinstance(made, dict), made
    assert made["id"] == "long1" + ID_SUFFIX + EXTRA_SUFFIX and made["instruction_type"] == f"{kind}+{partner}"
    assert [c["type"] for c in made["instruction_checks"]][-1] == kind
    assert score_reply(record_of(made), made["messages"][1]["content"])["prompt_level"]
    assert length_of(made, tiny_tokenizer) <= MAX_TOKENS < length_of(conv, tiny_tokenizer)
    assert validate_messages(made["messages"]) is None
    assert made["messages"][0]["content"].startswith(conv["messages"][0]["content"])


def test_the_stated_limit_is_the_smallest_size_the_reply_meets(tiny_tokenizer):
    made = cut_example(long_conv(2), "lowercase", "max_words", 80, random.Random(0), max_tokens=10_000,
                       tokenizer=tiny_tokenizer)
    reply, limit = made["messages"][1]["content"], made["instruction_checks"][-1]["n"]
    assert count_words(reply) <= limit and limit == min(s for s in SIZES["max_words"] if s >= count_words(reply))
    made = cut_example(long_conv(2), "lowercase", "max_sentences", 3, random.Random(0), max_tokens=10_000,
                       tokenizer=tiny_tokenizer)
    assert count_sentences(made["messages"][1]["content"]) == 3 == made["instruction_checks"][-1]["n"]


@pytest.mark.parametrize("reply, reason", [
    ("Here is the code:\n```python\nprint(1)\n```\nIt prints one. " * 20, "has_code_fence"),
    ("| a | b |\n|---|---|\n| 1 | 2 |\n" * 20, "has_table"),
    ("word " * 200 + ".", "no_sentence_to_keep"),
])
def test_replies_that_cannot_be_cut_are_skipped_with_a_reason(reply, reason, tiny_tokenizer):
    conv = {"id": "x", "messages": [msg("user", "Tell me something long, please."), msg("assistant", reply)]}
    assert cut_example(conv, "lowercase", "max_words", 30, random.Random(0), max_tokens=MAX_TOKENS,
                       tokenizer=tiny_tokenizer) == reason


def test_a_prompt_too_long_for_max_tokens_does_not_fit(tiny_tokenizer):
    conv = long_conv(3)
    conv["messages"][0]["content"] = "Please read this. " * 200
    assert cut_example(conv, "lowercase", "max_sentences", 2, random.Random(0), max_tokens=MAX_TOKENS,
                       tokenizer=tiny_tokenizer) == "does_not_fit"


def test_examples_are_balanced_deterministic_and_never_reuse_an_excluded_opening(tiny_tokenizer):
    pool = [long_conv(i, topic) for i in range(40) for topic in ("rivers",)]
    pool += [{"id": "code", "messages": [msg("user", "Write some code for me, please."),
                                         msg("assistant", "```\nx = 1\n```")]}]
    excluded = {normalized_prompt(first_prompt(pool[k]["messages"])) for k in range(5)}
    kwargs = {"n": 28, "max_tokens": MAX_TOKENS, "tokenizer": tiny_tokenizer, "exclude_prompts": excluded}
    out, report = long_reply_examples(pool, seed=0, **kwargs)
    assert len(out) == report["n_added"] == 28 and report["n_pool"] == len(pool)
    assert not {normalized_prompt(first_prompt(c["messages"])) for c in out} & excluded
    assert report["skipped"].get("duplicate_prompt", 0) <= 5
    per_partner = {p: sum(n for t, n in report["per_type"].items() if t.endswith("+" + p)) for p in PARTNER_TYPES}
    assert set(per_partner.values()) == {2}  # 28 examples, 14 partners: two each
    assert all(score_reply(record_of(c), c["messages"][1]["content"])["prompt_level"] for c in out)
    assert all(length_of(c, tiny_tokenizer) <= MAX_TOKENS for c in out)
    again, _ = long_reply_examples(pool, seed=0, **kwargs)
    other, _ = long_reply_examples(pool, seed=1, **kwargs)
    assert again == out and other != out


def test_the_pool_running_out_gives_fewer_and_says_how_many(tiny_tokenizer):
    out, report = long_reply_examples([long_conv(i) for i in range(3)], n=10, seed=0, max_tokens=MAX_TOKENS,
                                      tokenizer=tiny_tokenizer)
    assert len(out) == report["n_added"] == 3 and report["n_asked"] == 10


@pytest.mark.parametrize("n", [-1, 2.5, True, "10"])
def test_a_bad_count_is_a_config_error(n, tiny_tokenizer):
    with pytest.raises(ConfigError, match="extra must be a whole number"):
        long_reply_examples([], n=n, seed=0, max_tokens=MAX_TOKENS, tokenizer=tiny_tokenizer)


def test_types_limit_the_partners(tiny_tokenizer):
    out, report = long_reply_examples([long_conv(i) for i in range(6)], n=6, seed=0, max_tokens=MAX_TOKENS,
                                      tokenizer=tiny_tokenizer, types=["lowercase", "bullets+lowercase"])
    assert {t.split("+")[1] for t in report["per_type"]} == {"lowercase"}
    with pytest.raises(ConfigError, match="needs one of"):
        long_reply_examples([], n=1, seed=0, max_tokens=MAX_TOKENS, tokenizer=tiny_tokenizer, types=["min_words"])


# --------------------------------------------------------------------------- through prepare_data


def _write_source(tmp_path) -> str:
    short = [{"id": f"s{i}", "messages": [msg("user", f"What is the capital of country number {i}?"),
                                          msg("assistant", f"The capital of country {i} is a city.")]}
             for i in range(30)]
    long = [long_conv(i, topic) for i, topic in enumerate(["rivers", "lakes", "hills", "seas"] * 5)]
    # a too-long conversation that opens with a kept (possibly held-out) conversation's request
    long.append({"id": "copy", "messages": [short[0]["messages"][0], long[0]["messages"][1]]})
    path = tmp_path / "convs.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in short + long))
    return str(path)


def test_prepare_data_adds_the_examples_to_training_only_and_reports_them(tmp_path, tiny_tokenizer):
    cfg = {"source": _write_source(tmp_path), "english_only": False, "max_tokens": MAX_TOKENS, "eval_size": 10,
           "instructions": {"share": 0.5, "seed": 1, "extra": 12}}
    out = data.prepare_data(cfg, tiny_tokenizer, seed=3, progress=False)
    plain = data.prepare_data({**cfg, "instructions": {"share": 0.5, "seed": 1}}, tiny_tokenizer, seed=3,
                              progress=False)
    assert out.eval["messages"] == plain.eval["messages"]
    assert out.train["id"][: len(plain.train)] == plain.train["id"]  # the split's conversations, as before
    added = out.train["id"][len(plain.train):]
    extra = out.report["instructions"]["extra"]
    assert len(added) == extra["n_added"] == 12 and all(i.endswith(EXTRA_SUFFIX) for i in added)
    assert out.report["n_train"] == plain.report["n_train"] == 20  # the split's count; the extra ones beside
    openings = {normalized_prompt(first_prompt(m)) for m in [*out.eval["messages"], *plain.train["messages"]]}
    assert not {normalized_prompt(first_prompt(m)) for m in list(out.train["messages"])[20:]} & openings
    assert "copy" + ID_SUFFIX + EXTRA_SUFFIX not in added
    assert set(extra["samples"]) == set(extra["per_type"])
    assert "extra" not in plain.report["instructions"]  # a recipe without the key keeps its report
    assert "added from too-long conversations" in data.format_report(out.report)


def test_extra_without_max_tokens_is_a_config_error(tmp_path, tiny_tokenizer):
    cfg = {"source": _write_source(tmp_path), "english_only": False, "eval_size": 10,
           "instructions": {"share": 0.5, "extra": 5}}
    with pytest.raises(ConfigError, match="extra needs data.max_tokens"):
        data.prepare_data(cfg, tiny_tokenizer, seed=3, progress=False)


# --------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_real_too_long_sharegpt_conversations_give_examples_that_all_pass_and_fit():
    from sftlab.sources import load_tokenizer

    tokenizer = load_tokenizer("offline:gemma-3-270m")
    filtered = data.filter_conversations(data.load_conversations("sharegpt", progress=False).conversations,
                                         tokenizer=tokenizer, english_only=True, max_turns=3, max_tokens=224,
                                         strict_english=True, min_prompt_words=4, drop_context_prompts=True,
                                         dedupe=True)
    assert len(filtered.too_long) == filtered.rejected["too_many_tokens"] > 3000
    kept = {normalized_prompt(first_prompt(c["messages"])) for c in filtered.kept}
    out, report = long_reply_examples(filtered.too_long, n=1000, seed=0, max_tokens=224, tokenizer=tokenizer,
                                      exclude_prompts=kept)
    assert len(out) == report["n_added"] == 1000
    failed = [c["id"] for c in out if not score_reply(record_of(c), c["messages"][1]["content"])["prompt_level"]]
    assert not failed, f"{len(failed)} of {len(out)} emitted examples fail their checks: {failed[:5]}"
    assert max(token_lengths([conversation_text(c["messages"]) for c in out], tokenizer)) <= 224
    assert not {normalized_prompt(first_prompt(c["messages"])) for c in out} & kept
    per_partner = {p: sum(n for t, n in report["per_type"].items() if t.endswith("+" + p)) for p in PARTNER_TYPES}
    assert min(per_partner.values()) >= 50, per_partner  # every partner type well represented
