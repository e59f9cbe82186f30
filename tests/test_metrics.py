"""Metrics on hand-made cases whose right answer is known."""

from __future__ import annotations

import math

import pytest

from sftlab import metrics
from sftlab.metrics import (
    bleu,
    bleu_from_stats,
    bleu_item_stats,
    count_words,
    distinct_n,
    perplexity,
    reply_length,
    role_leak,
    role_leak_match,
    rouge_l,
    rouge_l_per_item,
    stop_rate,
)

LONG = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm windowsill."


# --------------------------------------------------------------------------- ROUGE-L and BLEU


def test_rouge_l_identical_is_one_and_disjoint_is_zero():
    assert rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert rouge_l(["apples and pears"], ["stocks fell sharply"]) == 0.0


def test_rouge_l_per_item_known_values():
    scores = rouge_l_per_item(
        ["the cat sat", "a dog", "the cat sat on the mat"],
        ["The cat sat.", "the cat", "the cat lay on the mat"],
    )
    # case and punctuation are ignored; LCS "the cat on the mat" is 5 of 6 tokens
    assert scores == pytest.approx([1.0, 0.0, 5 / 6])
    assert rouge_l(["a b", "c"], ["a b", "d"]) == pytest.approx(0.5)


def test_rouge_l_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge_l(["a", "b"], ["a"])
    with pytest.raises(ValueError):
        rouge_l([], [])


def test_bleu_identical_long_sentence_is_one_and_disjoint_is_zero():
    assert bleu([LONG], [LONG]) == pytest.approx(1.0)
    assert bleu(["hello there"], ["goodbye friend"]) == 0.0


def test_bleu_of_identical_very_short_reply_is_below_one():
    # NLTK floors each item's n-gram count at 1: "Paris." has no trigram, yet counts one.
    assert bleu(["Paris.", LONG], ["Paris.", LONG]) < 1.0


def test_bleu_partial_overlap_is_between_and_penalises_short_replies():
    full = bleu([LONG], [LONG])
    half = bleu(["The quick brown fox jumps over the lazy dog."], [LONG])
    assert 0.0 < half < full


def test_bleu_from_item_stats_matches_the_evaluate_module():
    preds = [LONG, "the cat sleeps", "", "A b c d e f", "Paris is the capital."]
    refs = [LONG, "the cat sleeps on the mat", "anything", "a b c d e f", "The capital is Paris."]
    stats = [bleu_item_stats(p, r) for p, r in zip(preds, refs)]
    assert bleu_from_stats(stats) == pytest.approx(bleu(preds, refs), abs=1e-12)
    assert bleu_item_stats("a b c", "a b d") == [3, 3, 2, 1, 0, 0, 3, 2, 1, 1]


def test_metric_modules_load_offline_once_per_process():
    assert metrics.load_metric_module("rouge") is metrics.load_metric_module("rouge")
    assert metrics.load_metric_module("bleu") is not metrics.load_metric_module("rouge")
    with pytest.raises(FileNotFoundError):
        metrics.load_metric_module("no_such_metric")


# --------------------------------------------------------------------------- embeddings


@pytest.mark.slow
def test_embedding_similarity_identical_is_one_unrelated_lower():
    a = "The cat sat on the mat."
    sims = metrics.embedding_similarity(
        [a, "A cat was sitting on the rug.", "Stocks fell sharply today."],
        [a, a, a],
    )
    assert sims[0] == pytest.approx(1.0, abs=1e-5)
    assert sims[2] < sims[1] < sims[0]
    assert all(-1.0 <= s <= 1.0 for s in sims)


# --------------------------------------------------------------------------- words, diversity, stops


def test_word_counts_and_reply_length(tiny_tokenizer):
    assert count_words("Don't stop -- it's 9:30!") == 5
    assert count_words("state-of-the-art design") == 5
    assert count_words("") == 0
    assert reply_length("The sea is wide and blue.") == 6
    text = "The sea is wide and blue."
    assert reply_length(text, tiny_tokenizer) == len(tiny_tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.parametrize(
    "texts, n, expected",
    [
        (["a b a b"], 1, 2 / 4),
        (["a b a b"], 2, 2 / 3),
        (["a b", "a b"], 2, 1 / 2),
        (["The cat", "the CAT"], 1, 2 / 4),  # case does not make a new n-gram
        (["a b", "c d"], 2, 1.0),  # no bigram across replies
        (["one", ""], 2, 0.0),  # no bigrams at all
    ],
)
def test_distinct_n(texts, n, expected):
    assert distinct_n(texts, n) == pytest.approx(expected)


def test_distinct_n_rejects_n_below_one():
    with pytest.raises(ValueError):
        distinct_n(["a"], 0)


def test_stop_rate():
    assert stop_rate([True, True, False, True]) == 0.75
    assert stop_rate([0, 1]) == 0.5
    with pytest.raises(ValueError):
        stop_rate([])


# --------------------------------------------------------------------------- role leaks


@pytest.mark.parametrize(
    "reply",
    [
        "Paris.<end_of_turn>",
        "Sure!<|im_end|>\n<|im_start|>user\nThanks",
        "Paris is the capital.\nUser: and what about Rome?",
        "Paris.\n\nHuman: Thanks!",
        "Paris.\nUSER: more",
        "Paris.\n**User:** and Spain?",
        "Here you go.\n### Instruction:\nWrite a poem.",
        "Paris.\nuser\nWhat about Italy?",  # Gemma turn header, special tokens stripped
        "Paris.\n<|user|>\nNext question",
        "Assistant: Paris is the capital of France.",
        # Rule 5, from the base model's replies with the Gemma template (results/default):
        # a junk token stands where <start_of_turn> belongs, glued to the role name.
        "Write headlines for the product. mendatang\npaymentsmodel\n\"I want you to act as a writer",
        "that will help answer my questions. mendatanguser\n醍\nHi, you are a highly knowledgeable",
        "Use numbers (1., 2., 3., 4.).\nificationmodel\nGive four simple steps for",
        "Include the words \"warm\" and \"cozy\". mendatang\n年度model\nWrite a short paragraph",
        "Sure! mendatangassistant \nHere is more.",
    ],
)
def test_role_leak_positive(reply):
    assert role_leak(reply)


@pytest.mark.parametrize(
    "reply",
    [
        "The user can reset the password from the settings page.",
        "User experience: smooth and fast.",
        "Human rights: a short history of the idea.",
        "Ask the assistant: it will help you.",
        "Most users: students and teachers.",
        "The model\nworks well.",  # capitalised words are prose, not a turn header
        "Our tests cover:\n- user accounts\n- model loading",
        "A good assistant listens first.\nThen it answers.",
        "## Instructions for use\nShake well.",  # "Instructions" is not the header word "Instruction"
        # Rule 5 must not read paths, identifiers, hashtags or ordinary words as glued headers
        # (the last four are from real ShareGPT replies).
        "```bash\ncd /home/user\nls\n```",
        "Set the owner to my_user\nthen restart.",
        "DB_DATABASE=laravel\nDB_USERNAME=laraveluser\nDB_PASSWORD=password",
        "python manage.py createsuperuser\nThis will prompt you for a name.",
        "* A scented candle or essential oil diffuser\n* A small desk accessory",
        "Help with your remodel? #TaskRabbit #HomeRemodel\n13. Want some curb appeal?",
        "We fitted a v2model\nand it worked.",
        "Protect the ecosystem\nand the river.",  # "system" is not part of rule 5
        "This line ends in the model\nand goes on.",  # a space before the role name: prose
        "",
    ],
)
def test_role_leak_negative(reply):
    assert not role_leak(reply)


@pytest.mark.slow
def test_glued_header_rule_flags_no_real_sharegpt_reply():
    # Human-written ShareGPT replies never open a turn of their own, so every reply rule 5
    # flags there is a false positive: there must be none (37,450 replies).
    from sftlab.data import load_conversations
    from sftlab.metrics import _GLUED_ROLE_LINE, _glued_header

    replies = [m["content"] for c in load_conversations("sharegpt", progress=False).conversations
               for m in c["messages"] if m["role"] == "assistant"]
    assert len(replies) > 30_000
    flagged = [r for r in replies if any(_glued_header(m) for m in _GLUED_ROLE_LINE.finditer(r))]
    assert flagged == []


@pytest.mark.parametrize(
    "reply, rule, text",
    [
        ("Paris.<end_of_turn>\nuser\nHi", 1, "<end_of_turn>"),
        ("Paris.\n**User:** and Spain?", 2, "**User:"),
        ("Here you go.\n### Instruction:\nWrite.", 3, "### Instruction"),
        ("Paris.\nuser\nWhat about Italy?", 4, "user\nW"),
        ("Done. mendatang\npaymentsmodel\nWrite a poem", 5, "paymentsmodel\nW"),
    ],
)
def test_role_leak_match_names_the_rule_and_the_text(reply, rule, text):
    assert role_leak_match(reply) == (rule, text)
    assert role_leak_match("Paris is the capital of France.") is None


def test_role_leak_markers_are_configurable():
    assert not role_leak("done <eos>")
    assert role_leak("done <eos>", markers=["<eos>"])
    assert not role_leak("done <end_of_turn>", markers=[])


# --------------------------------------------------------------------------- perplexity


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(7.6)) == pytest.approx(7.6)
    assert perplexity(1e6) == math.inf
    with pytest.raises(ValueError):
        perplexity(-0.1)
    with pytest.raises(ValueError):
        perplexity(float("nan"))
