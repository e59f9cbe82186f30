"""The filters applied to valid conversations: replies, language, the opening prompt, length, duplicates.

`filter_conversations` keeps a conversation only if it passes every filter and counts each
reject under the first one it fails: `too_few_turns`/`too_many_turns` (`n_turns`),
`not_english` (the `looks_english` heuristic; with `strict_english`, also every user turn's
letters), `prompt_too_short`/`prompt_needs_context` (`prompt_problem`: an opening request a
reader could not answer without a conversation that is not there), `too_few_tokens`/
`too_many_tokens` (`token_lengths` of `conversation_text`, an approximation without the chat
template), and, with `dedupe`, `duplicate_conversation`/`duplicate_prompt` (the same
normalised opening request as an earlier kept conversation: `normalized_prompt`). Deduplicating
before the train/eval split means no evaluation prompt is also a training prompt. Its
`FilterResult` is step 3, filters, of the "Preprocessing, step by step" section of chapter 3
"data" (chapters/03-data.qmd, @tbl-rejected and @fig-filter-rejects), and the recipe's
`data:` filter keys are passed here by `prepare_data`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from sftlab.errors import ConfigError

from .messages import N_EXAMPLES


@dataclass
class FilterResult:
    """Conversations that passed the filters, rejects counted by reason, and settings used."""

    kept: list[dict]
    rejected: Counter
    token_lengths: list[int]  # one per kept conversation, same order; empty without a tokenizer
    rejected_examples: dict[str, list[str]] = field(default_factory=dict)
    n_input: int = 0
    settings: dict = field(default_factory=dict)
    # Rejected as "too_many_tokens" only (every earlier filter passed), in input order: the pool
    # that `data.instructions.extra` cuts down to size (sftlab.data.long_replies).
    too_long: list[dict] = field(default_factory=list)



_FENCED_CODE = re.compile(r"```.*?(?:```|\Z)", re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_HTML_TAG = re.compile(
    r"</?(?:div|p|span|br|li|ul|ol|table|tr|td|th|h[1-6]|pre|code|a|img|strong|em|b|i)\b[^>]*>", re.I
)
_WORD = re.compile(r"[^\W\d_]+")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_ASCII_LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Frequent English function words that are rare as words in other Latin-script languages
# ("a", "de", "to", "die" are left out on purpose).
_STOPWORDS = frozenset(
    "the and you your what how this that with for of are be can have has was were will would "
    "should could it its on at by from an or not do does if which there their they we my me "
    "please about as so but all is in i hi hello thanks thank yes".split()
)


def looks_english(text: str) -> bool:
    """Guess whether `text` is plain English prose (True) or not.

    Rule, applied to the text with fenced and inline code removed (code says little about
    the language): (1) at least 90 % of letters are ASCII; (2) at least 8 % of words are
    common English function words ("the", "and", "you", "is", ...); (3) not HTML-heavy:
    fewer than 5 HTML tags, or fewer than one tag per 500 characters.

    >>> looks_english("What is the capital of France? The capital is Paris.")
    True
    >>> looks_english("¿Cuál es la capital de Francia? París.")
    False

    False positives/negatives: English with long non-English quotes or tables is rejected;
    so are replies that are mostly lists of names, numbers or unfenced code, and web-development
    conversations whose HTML is not fenced. Very short greetings pass only if they use one of
    the listed words. Latin-script languages that share these words (Dutch "is", "in") can
    pass when mixed with English.
    """
    prose = _INLINE_CODE.sub(" ", _FENCED_CODE.sub(" ", text))
    # Counted with C-level str methods: this runs over ~100 MB of ShareGPT text.
    ascii_text = prose.encode("ascii", "ignore")
    n_ascii = len(ascii_text) - len(ascii_text.translate(None, _ASCII_LETTERS))
    n_other = sum(c.isalpha() for c in _NON_ASCII.findall(prose))
    if n_ascii == 0 or n_ascii < 0.9 * (n_ascii + n_other):
        return False
    words = _WORD.findall(prose.lower())
    if sum(map(_STOPWORDS.__contains__, words)) < 0.08 * len(words):
        return False
    n_tags = len(_HTML_TAG.findall(prose))
    return not (n_tags >= 5 and n_tags * 500 >= len(prose))


def _letters_mostly_ascii(text: str) -> bool:
    """At least 90% of the letters are ASCII (a script check that works on a two-word prompt too)."""
    ascii_text = text.encode("ascii", "ignore")
    n_ascii = len(ascii_text) - len(ascii_text.translate(None, _ASCII_LETTERS))
    n_other = sum(c.isalpha() for c in _NON_ASCII.findall(text))
    return n_ascii > 0 and n_ascii >= 0.9 * (n_ascii + n_other)


_PROMPT_WORD = re.compile(r"[^\W_]+")
# Openings that continue an earlier exchange: "continue", "ok", "rewrite it", "make it shorter".
_CONTEXT_OPENER = re.compile(
    r"^\W*(?:continue|go on|keep going|more|next|again|ok(?:ay)?|yes|no|yep|sure|thanks|thank you|"
    r"rewrite (?:it|this|that)|make (?:it|this|that)|shorter|longer|same|and|also|what about|how about|"
    r"now|then|do (?:it|that) again|try again|another one)\b", re.IGNORECASE)
CONTEXT_PROMPT_MAX_WORDS = 12  # a longer request that opens with "now" or "and" usually stands on its own


def first_prompt(messages: list[dict]) -> str:
    """The conversation's first user message (its opening request)."""
    return next((m["content"] for m in messages if m["role"] == "user"), "")


def normalized_prompt(text: str) -> str:
    """A request as compared for duplicates: lowercase words only, in order.

    >>> normalized_prompt("Explain quantum computing  in simple terms!")
    'explain quantum computing in simple terms'
    """
    return " ".join(_PROMPT_WORD.findall(text.lower()))


def prompt_problem(text: str, min_words: int | None = None, drop_context: bool = False) -> str | None:
    """Why an opening request cannot stand alone, or None: "prompt_too_short" (fewer than
    `min_words` words: "cpp", "OK", "test") or, with `drop_context`, "prompt_needs_context" (a
    short request that continues a conversation which is not there: "continue", "make it shorter").

    >>> prompt_problem("headline", min_words=4)
    'prompt_too_short'
    >>> prompt_problem("Rewrite it in a more formal tone please", drop_context=True)
    'prompt_needs_context'
    >>> prompt_problem("Explain quantum computing in simple terms", min_words=4, drop_context=True) is None
    True
    """
    n = len(_PROMPT_WORD.findall(text))
    if min_words is not None and n < min_words:
        return "prompt_too_short"
    if drop_context and n < CONTEXT_PROMPT_MAX_WORDS and _CONTEXT_OPENER.match(text):
        return "prompt_needs_context"
    return None


def conversation_text(messages: list[dict]) -> str:
    """Plain-text rendering used for length filtering: "role\\ncontent" blocks joined by newlines."""
    return "\n".join(f"{m['role']}\n{m['content']}" for m in messages)


def n_turns(messages: list[dict]) -> int:
    """Number of assistant replies (what `min_turns`/`max_turns` count)."""
    return sum(m["role"] == "assistant" for m in messages)


CHARS_PER_TOKEN_CAP = 6  # English averages ~4 characters per token; code and tables fewer


def token_lengths(texts: list[str], tokenizer, *, cap: int | None = None, batch_size: int = 256) -> list[int]:
    """Token counts of `texts` with batched fast tokenization (no special tokens).

    With `cap`, texts longer than `CHARS_PER_TOKEN_CAP` characters per allowed token are cut
    before tokenizing, which keeps 17k ShareGPT conversations (some of 100k+ characters)
    fast: a cut text whose count exceeds `cap + 8` is reported with that count (a lower
    bound, enough to reject it), while a cut text that still fits is re-tokenized in full, so
    every length up to `cap` is exact.
    """
    char_cap = None if cap is None else CHARS_PER_TOKEN_CAP * cap + 64
    cut = [t if char_cap is None or len(t) <= char_cap else t[:char_cap] for t in texts]
    lengths: list[int] = []
    for i in range(0, len(cut), batch_size):
        enc = tokenizer(cut[i:i + batch_size], add_special_tokens=False,
                        return_attention_mask=False, return_token_type_ids=False)
        lengths.extend(len(ids) for ids in enc["input_ids"])
    redo = [i for i, t in enumerate(cut) if t is not texts[i] and lengths[i] <= cap + 8]
    if redo:
        enc = tokenizer([texts[i] for i in redo], add_special_tokens=False,
                        return_attention_mask=False, return_token_type_ids=False)
        for i, ids in zip(redo, enc["input_ids"]):
            lengths[i] = len(ids)
    return lengths


def filter_conversations(
    convs: list[dict],
    *,
    tokenizer=None,
    english_only: bool = True,
    min_tokens: int | None = None,
    max_tokens: int | None = None,
    min_turns: int | None = None,
    max_turns: int | None = None,
    strict_english: bool = False,
    min_prompt_words: int | None = None,
    drop_context_prompts: bool = False,
    dedupe: bool = False,
) -> FilterResult:
    """Keep conversations that pass every filter; count each reject under its first failing reason.

    Order (cheapest first): turns ("too_few_turns", "too_many_turns"), language
    ("not_english", see `looks_english`; `strict_english` also asks that each user turn's
    letters be at least 90% ASCII), the opening request ("prompt_too_short",
    "prompt_needs_context", see `prompt_problem`), tokens ("too_few_tokens", "too_many_tokens"),
    then, with `dedupe`, duplicates in file order: the first conversation with a given
    `normalized_prompt` is kept, later ones are "duplicate_conversation" (every message the same
    as a kept one's) or "duplicate_prompt".
    Token length is an approximation: `conversation_text` tokenized without special tokens,
    so it includes role names but not a chat template's markers (Gemma adds 2 per message
    plus `<bos>`); the training code measures the exact templated length.
    """
    if (min_tokens is not None or max_tokens is not None) and tokenizer is None:
        raise ConfigError("min_tokens/max_tokens need a tokenizer to count tokens")
    settings = {"english_only": english_only, "min_tokens": min_tokens, "max_tokens": max_tokens,
                "min_turns": min_turns, "max_turns": max_turns}
    # The newer filters are recorded only when used, so older runs' reports read as they did.
    for key, value in (("strict_english", strict_english), ("min_prompt_words", min_prompt_words),
                       ("drop_context_prompts", drop_context_prompts), ("dedupe", dedupe)):
        if value:
            settings[key] = value
    rejected: Counter = Counter()
    examples: dict[str, list[str]] = {}

    def reject(reason: str, conv: dict) -> None:
        rejected[reason] += 1
        ex = examples.setdefault(reason, [])
        if len(ex) < N_EXAMPLES:
            ex.append(str(conv.get("id")))

    survivors = []
    for conv in convs:
        turns = n_turns(conv["messages"])
        if min_turns is not None and turns < min_turns:
            reject("too_few_turns", conv)
        elif max_turns is not None and turns > max_turns:
            reject("too_many_turns", conv)
        elif english_only and not looks_english("\n".join(m["content"] for m in conv["messages"])):
            reject("not_english", conv)
        elif english_only and strict_english and not all(
                _letters_mostly_ascii(m["content"]) for m in conv["messages"] if m["role"] == "user"):
            reject("not_english", conv)
        elif problem := prompt_problem(first_prompt(conv["messages"]), min_prompt_words, drop_context_prompts):
            reject(problem, conv)
        else:
            survivors.append(conv)

    kept, lengths, too_long = survivors, [], []
    if tokenizer is not None:
        all_lengths = token_lengths([conversation_text(c["messages"]) for c in survivors],
                                    tokenizer, cap=max_tokens)
        kept = []
        for conv, n in zip(survivors, all_lengths):
            if min_tokens is not None and n < min_tokens:
                reject("too_few_tokens", conv)
            elif max_tokens is not None and n > max_tokens:
                reject("too_many_tokens", conv)
                too_long.append(conv)
            else:
                kept.append(conv)
                lengths.append(n)
    if dedupe:
        seen_prompts, seen_convs, unique, unique_lengths = set(), set(), [], []
        for i, conv in enumerate(kept):
            prompt = normalized_prompt(first_prompt(conv["messages"]))
            whole = tuple((m["role"], normalized_prompt(m["content"])) for m in conv["messages"])
            if whole in seen_convs:
                reject("duplicate_conversation", conv)
            elif prompt in seen_prompts:
                reject("duplicate_prompt", conv)
            else:
                seen_prompts.add(prompt)
                seen_convs.add(whole)
                unique.append(conv)
                if lengths:
                    unique_lengths.append(lengths[i])
        kept, lengths = unique, unique_lengths
    return FilterResult(kept=kept, rejected=rejected, token_lengths=lengths,
                        rejected_examples=examples, n_input=len(convs), settings=settings, too_long=too_long)

