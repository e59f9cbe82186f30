"""Instructions of types the model was never trained on: how much of the IFEval gain is recall?

The default recipe mixes in training examples of the 17 instruction types that the project's
IFEval-style prompts check (`sftlab.data.instructions.INSTRUCTION_TYPES`, one per
`sftlab.ifeval.CHECKS` entry), so a gain on those prompts may be recall of the trained types.
The prompts in `prompts/ifeval_ood.jsonl` ask for instructions of other types (`OOD_CHECKS`,
none of them a trained check: test), modelled on IFEval's own (Zhou et al. 2023) where one
exists: a word repeated at least N times (keywords:frequency), square-bracket placeholders
(detectable_content:number_placeholders), *highlighted* spans (number_highlighted_sections),
two answers split by ****** (combination:two_responses), one of given answers
(detectable_format:constrained_response), and, written for this project, sections under given
headers, the whole answer wrapped in given markers, hashtags, a closing question and words
written in capitals. They are scored as `sftlab.ifeval` scores its own prompts, echo-proof
(`ifeval.score_reply` with `checks=OOD_CHECKS`): prompt-level and instruction-level accuracy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from . import ifeval

OOD_PATH = Path(__file__).resolve().parent / "prompts" / "ifeval_ood.jsonl"

_HIGHLIGHT = re.compile(r"\*\*[^\n*]+\*\*|(?<!\*)\*[^\n*]+\*(?!\*)")
_PLACEHOLDER = re.compile(r"\[[^\[\]\n]+\]")
_HASHTAG = re.compile(r"(?<![\w#&])#[A-Za-z][\w]*")
_CAPS_WORD = re.compile(r"(?<![\w'])[A-Z]{2,}(?![\w'])")
_HEADER_DECOR = re.compile(r"^[\s#*_]+|[\s#*_:]+$")


def word_repeat(reply: str, word: str, n: int) -> bool:
    """The word appears at least n times as a whole word, any case:
    ("Green hills, green trees, GREEN sky.", "green", 3) -> True; n=4 -> False."""
    return len(re.findall(rf"(?<!\w){re.escape(word)}(?!\w)", reply, re.IGNORECASE)) >= n


def placeholders(reply: str, n: int) -> bool:
    """At least n distinct placeholders in square brackets: ("Dear [name], at [address].", 2) -> True."""
    return len({m.lower() for m in _PLACEHOLDER.findall(reply)}) >= n


def highlights(reply: str, n: int) -> bool:
    """At least n spans highlighted in markdown, *like this* or **like this**, with text inside:
    ("Take *water* and **a hat**.", 2) -> True; ("Take water.", 1) -> False."""
    return sum(1 for m in _HIGHLIGHT.findall(reply) if m.strip("*").strip()) >= n


def two_responses(reply: str, separator: str = "******") -> bool:
    """Exactly two different, non-empty answers separated by `separator` on its own:
    ("Tea.\\n******\\nCoffee.") -> True; ("Tea.\\n******\\nTea.") -> False."""
    parts = [p.strip() for p in reply.split(separator)]
    return len(parts) == 2 and all(re.search(r"\w", p) for p in parts) and parts[0] != parts[1]


def choose_one(reply: str, options: list[str]) -> bool:
    """Exactly one of the given answers (as written, any case) appears in the reply:
    ("My answer is yes.", ["My answer is yes.", "My answer is no."]) -> True; both -> False."""
    low = reply.lower()
    return sum(1 for o in options if o.lower() in low) == 1


def sections(reply: str, headers: list[str]) -> bool:
    """The reply has exactly these section headers, in this order, each on a line of its own
    (markdown #, ** and a closing colon allowed) and each followed by some text:
    ("Pros:\\nCheap.\\nCons:\\nSlow.", ["Pros", "Cons"]) -> True; one header missing -> False."""
    wanted = [h.lower() for h in headers]
    lines = reply.splitlines()
    found = [(i, _HEADER_DECOR.sub("", line).lower()) for i, line in enumerate(lines)]
    found = [(i, h) for i, h in found if h in wanted]
    if [h for _, h in found] != wanted:
        return False
    bounds = [i for i, _ in found] + [len(lines)]
    return all(re.search(r"\w", "\n".join(lines[a + 1 : b])) for a, b in zip(bounds, bounds[1:]))


def wrapped(reply: str, start: str, end: str) -> bool:
    """The whole reply starts with `start` and ends with `end` (whitespace aside), text between:
    ("<<< Rain today. >>>", "<<<", ">>>") -> True; ("Rain today. >>>", "<<<", ">>>") -> False."""
    text = reply.strip()
    inner = text[len(start) : len(text) - len(end)] if len(text) >= len(start) + len(end) else ""
    return text.startswith(start) and text.endswith(end) and re.search(r"\w", inner) is not None


def hashtags(reply: str, n: int) -> bool:
    """At least n distinct hashtags such as #summer: ("Sun! #summer #beach", 2) -> True."""
    return len({m.lower() for m in _HASHTAG.findall(reply)}) >= n


def ends_with_question(reply: str) -> bool:
    """The reply's last character, closing quotes and whitespace aside, is a question mark:
    ("Nice day. Shall we walk?") -> True; ("Shall we walk? Yes.") -> False."""
    return reply.rstrip().rstrip("\"'\u201d\u2019)").endswith("?")


def capital_words(reply: str, n: int) -> bool:
    """At least n words written all in capital letters (two letters or more), with lowercase text
    around them (a reply all in capitals is another instruction, a trained one):
    ("This is VERY, VERY important.", 2) -> True; ("THIS IS VERY IMPORTANT.", 2) -> False."""
    return len(_CAPS_WORD.findall(reply)) >= n and re.search(r"[a-z]", reply) is not None


OOD_CHECKS: dict[str, Callable[..., bool]] = {
    f.__name__: f
    for f in (word_repeat, placeholders, highlights, two_responses, choose_one, sections, wrapped, hashtags,
              ends_with_question, capital_words)
}


def load_ood_prompts(path: str | Path | None = None) -> list[dict]:
    """The out-of-distribution prompt records (default: the packaged `prompts/ifeval_ood.jsonl`),
    validated as `sftlab.ifeval.load_prompts` validates its own, against `OOD_CHECKS`."""
    return ifeval.load_prompts(path if path is not None else OOD_PATH, checks=OOD_CHECKS)


def ood_accuracy(records: Sequence[Mapping], replies: Sequence[str], *, n_resamples: int = 1000,
                 seed: int = 0) -> dict:
    """Prompt-level (Wilson) and instruction-level (bootstrap) accuracy on the OOD prompts, echo-proof,
    per type: `sftlab.ifeval.ifeval_accuracy` with `OOD_CHECKS`."""
    return ifeval.ifeval_accuracy(records, replies, n_resamples=n_resamples, seed=seed, checks=OOD_CHECKS)


def ood_values(records: Sequence[Mapping], replies: Sequence[str]) -> dict:
    """Per-prompt values for paired comparisons ("prompt_level", "instruction_level")."""
    values = ifeval.ifeval_values(records, replies, checks=OOD_CHECKS)
    return {"prompt_level": values["prompt_level"], "instruction_level": values["instruction_level"]}
