"""Text a reply copied from its prompt: found, measured and removed.

A base model given a chat prompt often repeats the prompt before (or instead of) answering.
Copied text can make a reply look as if it followed an instruction ("give it a title like
<<My Title>>" copied back contains a title), so the IFEval-style checks (`sftlab.ifeval`)
and the reply categories (`sftlab.categories`) look at what the reply wrote itself.

The rule: a run of at least `ECHO_MIN_WORDS` consecutive words of the reply that also
stands, in the same order, in the prompt is an echo. Words are compared without case and
without the punctuation around them ("<<My Title>>." and "<<my title>>" match). For a
prompt shorter than that, the whole prompt copied (at least 3 words) is an echo.
"""

from __future__ import annotations

import re

ECHO_MIN_WORDS = 8
_TOKEN = re.compile(r"\S+")
_EDGE = re.compile(r"^\W+|\W+$")


def _norm(word: str) -> str:
    return _EDGE.sub("", word.lower())


def _words(text: str) -> list[tuple[str, int, int]]:
    """(normalised word, start, end) for every whitespace-separated token with a letter or digit."""
    out = []
    for m in _TOKEN.finditer(text):
        w = _norm(m.group())
        if w:
            out.append((w, m.start(), m.end()))
    return out


def echo_run_length(prompt: str) -> int | None:
    """How many consecutive copied words make an echo of this prompt (None: too short to tell)."""
    n = len(_words(prompt))
    if n >= ECHO_MIN_WORDS:
        return ECHO_MIN_WORDS
    return n if n >= 3 else None


def echoed_spans(reply: str, prompt: str) -> list[tuple[int, int]]:
    """Character spans of the reply that copy the prompt, merged, in order.

    >>> p = "Write a poem. Give it a title wrapped in double angular brackets, like <<My Title>>."
    >>> r = "Give it a title wrapped in double angular brackets, like <<My Title>>. Rain falls."
    >>> [r[a:b] for a, b in echoed_spans(r, p)]
    ['Give it a title wrapped in double angular brackets, like <<My Title>>.']
    """
    k = echo_run_length(prompt)
    if k is None:
        return []
    prompt_words = [w for w, _, _ in _words(prompt)]
    grams = {tuple(prompt_words[i : i + k]) for i in range(len(prompt_words) - k + 1)}
    reply_words = _words(reply)
    copied = [False] * len(reply_words)
    for i in range(len(reply_words) - k + 1):
        if tuple(w for w, _, _ in reply_words[i : i + k]) in grams:
            copied[i : i + k] = [True] * k
    spans: list[tuple[int, int]] = []
    for flag, (_, start, end) in zip(copied, reply_words):
        if not flag:
            continue
        if spans and not reply[spans[-1][1] : start].strip():
            spans[-1] = (spans[-1][0], end)  # only whitespace between: one span
        else:
            spans.append((start, end))
    return spans


def strip_echo(reply: str, prompt: str) -> str:
    """The reply without the text it copied from the prompt (see `echoed_spans`)."""
    out, pos = [], 0
    for start, end in echoed_spans(reply, prompt):
        out.append(reply[pos:start])
        pos = end
    out.append(reply[pos:])
    return "".join(out)


def echoed_share(reply: str, prompt: str) -> float:
    """Share of the reply's words that are copied from the prompt: 0.0 (none) to 1.0 (all)."""
    words = _words(reply)
    if not words:
        return 0.0
    spans = echoed_spans(reply, prompt)
    copied = sum(any(a <= s and e <= b for a, b in spans) for _, s, e in words)
    return copied / len(words)
