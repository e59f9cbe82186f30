"""What kind of reply is this? Stated rules that sort every reply into one category.

Averages hide what a model actually does: a stop rate of 93% can be mostly "Hello! How
can I help you today?". Each reply gets the first category whose rule matches, in this
order (chapter 6 shows the counts per system and what they mean):

  empty        no letter or digit at all (whitespace, a zero-width space)
  echo         mostly copies the prompt: half or more of its words are copied text
               (runs of `sftlab.echo.ECHO_MIN_WORDS` words, see there)
  loop         repeats itself: most of its word pairs are repeats (distinct-2 < 0.5)
  deflection   asks for clarification or declines instead of answering
               ("I'm sorry, I'm not sure what you mean by ...", "Could you please provide more context")
  greeting     a short greeting or offer of help with nothing else (at most 25 words:
               "Hello! How can I help you today?", "Sure, I can help. Let me know what you need.")
  cut          none of the above, but cut off at the token limit
  answer       none of the above: an attempt at an answer, right or wrong

The patterns are deliberately narrow (tested on hand-made cases and on real replies):
a reply only counts as canned when it says nothing else.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from .echo import echoed_share
from .metrics import count_words, distinct_n

CATEGORIES = ("empty", "echo", "loop", "deflection", "greeting", "cut", "answer")
CATEGORY_MEANINGS = {
    "empty": "no letter or digit at all",
    "echo": "mostly copies the prompt (half or more of its words)",
    "loop": "repeats itself (most word pairs are repeats)",
    "deflection": "asks for clarification or declines instead of answering",
    "greeting": "a bare greeting or offer of help",
    "cut": "cut off at the token limit (none of the above)",
    "answer": "an attempt at an answer, right or wrong",
}
LOOP_DISTINCT_2 = 0.5  # per-reply distinct-2 below this: a loop (the book's repetition threshold)
GREETING_MAX_WORDS = 25
ECHO_SHARE = 0.5  # at least this share of the reply's words copied from the prompt: an echo

_DEFLECTION = re.compile(
    r"\bI(?:'m| am) (?:sorry,? (?:but )?)?(?:I(?:'m| am) )?not sure what you(?:'re| are)? (?:mean|asking|referring)"
    r"|\bcould you (?:please )?(?:provide|give) (?:me )?(?:more|some) (?:context|information|details)"
    r"|\bcould you (?:please )?clarify\b"
    r"|\bI(?:'m| am) sorry,? but I (?:can(?:no|')t|am unable to|don't understand)"
    r"|\bI don't understand (?:what|your)",
    re.IGNORECASE,
)
_GREETING = re.compile(
    r"^\W*(?:(?:hello|hi|hey|greetings)(?: there)?\W+)?"
    r"(?:(?:sure|of course|certainly)\W+)?"
    r"(?:(?:how|what) can I (?:help|assist|do for) you(?: (?:today|with))?\W*"
    r"|I(?:'m| am) here to help\W*(?:(?:how|what) can I (?:help|assist|do for) you(?: today)?\W*)?"
    r"|I can help(?: you)?(?: with that)?\W+(?:please )?let me know what you need\W*)$",
    re.IGNORECASE,
)
_INVISIBLE = re.compile(r"[\s\u200b-\u200f\u2060\ufeff]+")


def category(reply: str, *, stopped: bool, prompt: str = "") -> str:
    """The category of one reply (see the module docstring for the rules, in order).

    >>> category("Hello! How can I help you today?", stopped=True)
    'greeting'
    >>> category("I'm sorry, I'm not sure what you mean by \\"cpp\\". Could you clarify?", stopped=True)
    'deflection'
    >>> category("Paris is the capital of France.", stopped=True)
    'answer'
    """
    text = _INVISIBLE.sub(" ", reply).strip()
    if not re.search(r"\w", text):
        return "empty"
    if prompt and echoed_share(text, prompt) >= ECHO_SHARE:
        return "echo"
    if count_words(text) >= 4 and distinct_n([text], 2) < LOOP_DISTINCT_2:
        return "loop"
    if _DEFLECTION.search(text):
        return "deflection"
    if count_words(text) <= GREETING_MAX_WORDS and _GREETING.match(text):
        return "greeting"
    if not stopped:
        return "cut"
    return "answer"


def category_counts(categories: Sequence[str]) -> dict:
    """{category: count} in `CATEGORIES` order, zeros included."""
    counts = Counter(categories)
    unknown = set(counts) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown reply categories {sorted(unknown)}; known: {', '.join(CATEGORIES)}")
    return {c: counts.get(c, 0) for c in CATEGORIES}


def canned(category_name: str) -> bool:
    """Deflections and bare greetings: replies that could answer any prompt."""
    return category_name in ("deflection", "greeting")
