"""Verifiable-instruction training examples, built by code from real conversations.

This module holds the instruction types (`INSTRUCTION_TYPES`: phrasings, the check that
decides them, a rewrite of the reply), the pairs that combine (`COMBINATIONS`), `make_example`,
which appends an instruction sentence to a conversation's last user turn and rewrites the last
assistant reply by code so that it follows it, and `mix_instructions`, which replaces a share
of the training conversations by such examples. It follows the method behind Tulu 3's
persona-IF data (Lambert et al. 2024, "Tulu 3: Pushing Frontiers in Open Language Model
Post-Training") and AutoIF (Dong et al. 2024, arXiv:2406.13542): constraints a program can
verify, every example checked by that program before it is kept. Here the verifier is the
evaluation's own echo-proof checker (`sftlab.ifeval.score_reply`), while the instruction
sentences (prompts/instruction_phrasings.yaml) are worded apart from the evaluation prompts,
so a gain measures following instructions, not recalling them. A rewrite that cannot satisfy
its instruction is skipped and counted by reason. Chapter 3 (data) shows the mix.
"""

from __future__ import annotations

import inspect
import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from sftlab.echo import strip_echo
from sftlab.errors import ConfigError, DataError
from sftlab.ifeval import _SENTENCE_BREAK, CHECKS, score_reply, validate_record
from sftlab.metrics import count_words

from .messages import validate_messages

PHRASINGS_PATH = Path(__file__).resolve().parents[1] / "prompts" / "instruction_phrasings.yaml"
_LOADED = yaml.safe_load(PHRASINGS_PATH.read_text(encoding="utf-8"))
PHRASINGS: dict[str, list[str]] = _LOADED["phrasings"]
MORE_PHRASINGS: dict[str, list[str]] = _LOADED["more_phrasings"]  # only with more_phrasings=True
VALUES: dict[str, list[str]] = _LOADED["values"]
ID_SUFFIX = "+if"  # an instruction example keeps its conversation's id with this suffix

# The numbers an instruction may ask for, per type.
SIZES = {"max_words": (30, 50, 80, 120, 150), "min_words": (50, 100, 150, 200, 300),
         "bullets": (2, 3, 4, 5), "numbered": (2, 3, 4, 5), "paragraphs": (2, 3, 4),
         "max_sentences": (2, 3, 4, 5), "keywords": (1, 2, 3), "avoid_words": (1, 2, 3)}

_NUMBER_WORDS = dict(enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")))
_STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had
has have having he her here hers him his how i if in into is it its itself just me more most my
no nor not now of off on once only or other our ours out over own same she should so some such
than that the their them then there these they this those through to too under until up very was
we were what when where which while who whom why will with would you your yours please write
give make tell explain want need like know using use following given based help create answer
question something thing things example also could would should might must shall may
""".split())
_FENCE = "```"
_TABLE_LINE = re.compile(r"^[ \t]*\|", re.MULTILINE)
_LIST_MARKER = re.compile(r"^[ \t]*(?:#{1,6}[ \t]+|>[ \t]*|[-*+\u2022][ \t]+|\d+[.)][ \t]+)+")
_CONTENT_WORD = re.compile(r"(?<![\w'\u2019\\-])[A-Za-z]{4,}(?![\w'\u2019-])")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_DANGLING = re.compile(r"(?::|(?:^|\n)[ \t]*(?:\d+[.)]|[-*+\u2022]|#{1,6}))$")
_FILLER_START = re.compile(r"(?i)^(sure|certainly|of course|absolutely|okay|ok|yes)\b[^.!?\n]{0,20}[.!?]\s+")


# --------------------------------------------------------------------------- text helpers


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence as `sftlab.ifeval.count_sentences` counts them, closing
    quotes included: "Hi. How are you?" -> [(0, 3), (4, 16)]."""
    spans, pos = [], 0
    for m in [*_SENTENCE_BREAK.finditer(text), None]:
        end = m.start() + len(m.group().rstrip()) if m else len(text)
        if re.search(r"\w", text[pos:end]):
            spans.append((pos, end))
        pos = m.end() if m else len(text)
    return spans


def sentences_within_words(text: str, spans: list[tuple[int, int]], n: int) -> int:
    """How many of the first sentences (`spans`) fit in `n` words together."""
    keep = 0
    while keep < len(spans) and count_words(text[: spans[keep][1]]) <= n:
        keep += 1
    return keep


def _cut_to(text: str, spans: list[tuple[int, int]], keep: int) -> str | None:
    """The text up to the end of sentence `keep`, backing off past an ending that promises more
    (`_DANGLING`: "Here are the steps:" or a bare list marker "...\n5.", "- " or "##")."""
    while keep and _DANGLING.search(text[: spans[keep - 1][1]].rstrip()):
        keep -= 1
    return text[: spans[keep - 1][1]].rstrip() if keep else None


def _content_words(text: str, min_len: int = 4) -> list[str]:
    """Distinct lowercase words of letters only, in order of first appearance, stopwords left out."""
    seen: dict[str, None] = {}
    for m in _CONTENT_WORD.finditer(text):
        w = m.group().lower()
        if len(w) >= min_len and w not in _STOPWORDS:
            seen.setdefault(w, None)
    return list(seen)


def _quote_words(words: list[str]) -> str:
    """'"a"', '"a" and "b"', '"a", "b" and "c"'."""
    quoted = [f'"{w}"' for w in words]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def render_instruction(template: str, args: dict, *, spell: bool = False) -> str:
    """One instruction sentence: a phrasing with its arguments filled in; `spell` writes n up
    to ten as a word. ("Keep it to {n} words.", {"n": 3}, spell=True) -> "Keep it to three words."."""
    fmt = dict(args)
    if "n" in fmt:
        fmt["n"] = _NUMBER_WORDS.get(fmt["n"], str(fmt["n"])) if spell else str(fmt["n"])
    if "words" in fmt:
        fmt["words"] = _quote_words(fmt["words"])
    return template.format(**fmt)


# --------------------------------------------------------------------------- rewrites
# Each takes (reply, request, rng) and returns (new reply, arguments) or a skip reason.
# The arguments fill the phrasing; those the check takes become the check's arguments.


def _rw_lowercase(text, request, rng):
    return text.lower(), {}


def _rw_uppercase(text, request, rng):
    return text.upper(), {}


def _rw_no_commas(text, request, rng):
    out = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    out = re.sub(r"[ \t]*,[ \t]*", " ", out)
    return re.sub(r"(?<=\S) {2,}", " ", out), {}


def _draw_limit(kind: str, own: int, rng, binding: bool) -> int | None:
    """A size for a length limit on a reply of `own` words or sentences: any of SIZES[kind], or,
    `binding`, one the reply does not meet yet (None when it meets them all)."""
    sizes = [n for n in SIZES[kind] if n < own] if binding else SIZES[kind]
    return rng.choice(sizes) if sizes else None


def _rw_max_words(text, request, rng, binding=False):
    own = count_words(text)
    n = _draw_limit("max_words", own, rng, binding)
    if n is None:
        return "within_every_limit"
    if _TABLE_LINE.search(text):  # a cut would leave half a table
        return "has_table"
    if own <= n:
        return text, {"n": n}
    spans = sentence_spans(text)
    cut = _cut_to(text, spans, sentences_within_words(text, spans, n))
    return (cut, {"n": n}) if cut else "sentence_over_word_limit"


def _rw_min_words(text, request, rng):
    own = count_words(strip_echo(text, request))
    sizes = [n for n in SIZES["min_words"] if n <= own]
    return (text, {"n": rng.choice(sizes)}) if sizes else "too_short"


def _rw_max_sentences(text, request, rng, binding=False):
    spans = sentence_spans(text)
    n = _draw_limit("max_sentences", len(spans), rng, binding)
    if n is None:
        return "within_every_limit"
    if _TABLE_LINE.search(text):
        return "has_table"
    cut = _cut_to(text, spans, min(n, len(spans)))
    return (cut, {"n": n}) if cut and count_words(cut) >= 3 else "no_sentence_to_keep"


def _list_items(text: str, n: int) -> tuple[str | None, list[str]] | str:
    """An intro line (the first sentence when it ends in ":") and the first n usable sentences,
    list markers and heading marks removed; a skip reason when there are fewer than n."""
    if _TABLE_LINE.search(text):
        return "has_table"
    units = [_LIST_MARKER.sub("", text[s:e]).strip() for s, e in sentence_spans(text)]
    intro = units.pop(0) if units and units[0].endswith(":") else None
    items = [u for u in units if count_words(u) >= 3 and not u.endswith(":")][:n]
    return (intro, items) if len(items) == n else "too_few_sentences"


def _rw_bullets(text, request, rng):
    n, bullet = rng.choice(SIZES["bullets"]), rng.choice("-*")
    found = _list_items(text, n)
    if isinstance(found, str):
        return found
    intro, items = found
    lines = ([intro] if intro else []) + [f"{bullet} {item}" for item in items]
    return "\n".join(lines), {"n": n, "bullet": bullet}


def _rw_numbered(text, request, rng):
    n, close = rng.choice(SIZES["numbered"]), rng.choice(".)")
    found = _list_items(text, n)
    if isinstance(found, str):
        return found
    intro, items = found
    lines = ([intro] if intro else []) + [f"{i}{close} {item}" for i, item in enumerate(items, start=1)]
    return "\n".join(lines), {"n": n}


def _rw_paragraphs(text, request, rng):
    n = rng.choice(SIZES["paragraphs"])
    if _TABLE_LINE.search(text):
        return "has_table"
    units = [p.strip() for p in _BLANK_LINE.split(text.strip()) if p.strip()]
    while len(units) < n:  # too few: split the one-line paragraph with most sentences in two
        count, i = max(((len(sentence_spans(u)), i) for i, u in enumerate(units) if "\n" not in u), default=(0, 0))
        if count < 2:
            return "too_few_paragraphs"
        mid = sentence_spans(units[i])[count // 2 - 1][1]
        units[i : i + 1] = [units[i][:mid].strip(), units[i][mid:].strip()]
    size, extra = divmod(len(units), n)  # too many: consecutive ones share a paragraph
    groups, pos = [], 0
    for i in range(n):
        step = size + (i < extra)
        groups.append("\n".join(units[pos : pos + step]))
        pos += step
    return "\n\n".join(groups), {"n": n}


def _rw_quotation(text, request, rng):
    return f'"{text.strip()}"', {}


def _rw_json(text, request, rng):
    key = rng.choice(("answer", "response", "reply"))
    out = json.dumps({key: text}, ensure_ascii=False, indent=rng.choice((None, 2)))
    return (f"```json\n{out}\n```" if rng.random() < 0.3 else out), {}


def _rw_title(text, request, rng):
    words = _content_words(" ".join(request.split()[:40]), min_len=3)
    if len(words) < 2:
        return "no_title_words"
    title = " ".join(w.capitalize() for w in words[: rng.choice((2, 3, 4))])
    return f"<<{title}>>\n\n{text}", {}


def _rw_starts_with(text, request, rng):
    phrase = rng.choice(VALUES["openers"])
    body = _FILLER_START.sub("", text.lstrip(), count=1)  # "Sure! Here is..." -> "Here is..."
    sep = " " if re.match(r"[A-Za-z\"']", body) else "\n\n"  # a heading, list or code on a line of its own
    return phrase + sep + body, {"phrase": phrase}


def _rw_ends_with(text, request, rng):
    phrase = rng.choice(VALUES["closers"])
    return f"{text.rstrip()}\n\n{phrase}", {"phrase": phrase}


def _rw_keywords(text, request, rng):
    k = rng.choice(SIZES["keywords"])
    found = _content_words(strip_echo(text, request), min_len=5)
    return (text, {"words": sorted(rng.sample(found, k), key=found.index)}) if len(found) >= k else "no_keywords"


def _rw_avoid_words(text, request, rng):
    k = rng.choice(SIZES["avoid_words"])
    absent = [w for w in dict.fromkeys(_content_words(request)[:30] + VALUES["fillers"])
              if CHECKS["forbidden_words"](text, [w])]
    return (text, {"words": rng.sample(absent, k)}) if len(absent) >= k else "no_absent_words"


def _rw_postscript(text, request, rng):
    body = text.rstrip()
    paras = [p.strip() for p in _BLANK_LINE.split(body) if p.strip()]
    last = paras[-1]
    movable = (len(paras) > 1 and "\n" not in last and _FENCE not in last and len(sentence_spans(last)) == 1
               and count_words(last) <= 30 and not last.endswith(":"))
    if movable:
        body, note = body[: body.rfind(last)].rstrip(), last
    else:
        note = rng.choice(VALUES["postscripts"])
    return f"{body}\n\nP.S. {note}", {"marker": "P.S."}


# --------------------------------------------------------------------------- the types


@dataclass(frozen=True)
class InstructionType:
    """One kind of instruction: its phrasings, the `sftlab.ifeval.CHECKS` entry that decides it,
    and the rewrite that makes a reply follow it. Applicability is the rewrite's to judge (it
    returns a skip reason); `code_ok` False skips replies with a ``` fence up front, for rewrites
    that would break code (changing case, removing commas, cutting or regrouping lines)."""

    name: str
    check: str
    phrasings: tuple[str, ...]
    rewrite: Callable
    code_ok: bool = True
    more_phrasings: tuple[str, ...] = ()

    def wordings(self, more: bool = False) -> tuple[str, ...]:
        """The phrasings an example draws from: the first set, with `more` the second set after it."""
        return self.phrasings + self.more_phrasings if more else self.phrasings

    def check_args(self, args: dict) -> dict:
        """The rewrite's arguments that the check takes."""
        params = list(inspect.signature(CHECKS[self.check]).parameters)[1:]
        return {k: v for k, v in args.items() if k in params}


_SPECS = [  # (name, check, rewrite, code_ok)
    ("lowercase", "all_lowercase", _rw_lowercase, False),
    ("uppercase", "all_uppercase", _rw_uppercase, False),
    ("no_commas", "no_commas", _rw_no_commas, False),
    ("max_words", "max_words", _rw_max_words, False),
    ("min_words", "min_words", _rw_min_words, True),
    ("bullets", "bullet_count", _rw_bullets, False),
    ("numbered", "numbered_list", _rw_numbered, False),
    ("paragraphs", "n_paragraphs", _rw_paragraphs, False),
    ("quotation", "quotation", _rw_quotation, False),
    ("json", "json_object", _rw_json, True),
    ("title", "contains_title", _rw_title, True),
    ("starts_with", "starts_with", _rw_starts_with, True),
    ("ends_with", "ends_with", _rw_ends_with, True),
    ("keywords", "required_words", _rw_keywords, True),
    ("avoid_words", "forbidden_words", _rw_avoid_words, True),
    ("postscript", "postscript", _rw_postscript, True),
    ("max_sentences", "max_sentences", _rw_max_sentences, False),
]
INSTRUCTION_TYPES: dict[str, InstructionType] = {
    name: InstructionType(name, check, tuple(PHRASINGS[name]), rewrite, code_ok, tuple(MORE_PHRASINGS.get(name, ())))
    for name, check, rewrite, code_ok in _SPECS
}

# Pairs that never contradict, applied in this order: the second rewrite keeps what the
# first one made true (lowercasing keeps bullets, removing commas keeps a word limit, ...).
COMBINATIONS: tuple[tuple[str, str], ...] = (
    ("bullets", "lowercase"), ("max_words", "no_commas"), ("max_sentences", "uppercase"),
    ("numbered", "keywords"), ("title", "lowercase"), ("paragraphs", "avoid_words"),
    ("min_words", "postscript"), ("no_commas", "starts_with"), ("max_words", "quotation"),
    ("json", "keywords"), ("ends_with", "avoid_words"), ("postscript", "lowercase"),
)
TYPE_NAMES: tuple[str, ...] = (*INSTRUCTION_TYPES, *("+".join(pair) for pair in COMBINATIONS))
# Length limits: drawn from SIZES, a limit may exceed the reply's own length and leave it whole.
# With `binding_limits` it is drawn below that length, so the reply is always cut to meet it.
LIMIT_TYPES = frozenset({"max_words", "max_sentences"})


def _parts(type_name: str) -> list[InstructionType]:
    if type_name not in TYPE_NAMES:
        raise ConfigError(f"unknown instruction type {type_name!r}; known: {', '.join(TYPE_NAMES)}")
    return [INSTRUCTION_TYPES[name] for name in type_name.split("+")]


def _join_instruction(request: str, instruction: str) -> str:
    """The request with the instruction after it: on the same line after a one-line request
    that ends a sentence, else after a blank line."""
    request = request.rstrip()
    one_line = "\n" not in request and request[-1:] in ".?!"
    return f"{request}{' ' if one_line else chr(10) * 2}{instruction}"


def make_example(conversation: dict, type_name: str, rng: random.Random, *,
                 binding_limits: bool = False, more_phrasings: bool = False) -> dict | str:
    """An instruction version of `conversation`, or the reason there is none.

    The instruction sentence (a phrasing of each part of `type_name`, e.g. "bullets" or
    "bullets+lowercase") is appended to the last user turn and the last reply rewritten by
    code to follow it. The result, {"id": id + "+if", "messages", "instruction_type",
    "instruction_checks"}, is kept only if `sftlab.ifeval.score_reply` (echo-proof) passes
    every check on the new reply with the new user turn as prompt; otherwise the reason is
    "fails_check". Other reasons come from the rewrites ("has_code_fence", "too_short", ...).
    With `binding_limits`, a length limit (`LIMIT_TYPES`) is one the reply does not meet yet, so
    the rewrite cuts it; a reply within every size is skipped as "within_every_limit".
    With `more_phrasings`, the instruction sentence is drawn from `MORE_PHRASINGS` too.
    """
    parts = _parts(type_name)
    messages = conversation.get("messages") if isinstance(conversation, dict) else None
    if validate_messages(messages) is not None:
        return "invalid_conversation"
    request, text = messages[-2]["content"], messages[-1]["content"]
    checks, sentences = [], []
    for part in parts:
        if not part.code_ok and _FENCE in text:
            return "has_code_fence"
        binding = {"binding": True} if binding_limits and part.name in LIMIT_TYPES else {}
        out = part.rewrite(text, request, rng, **binding)
        if isinstance(out, str):
            return out
        text, args = out
        checks.append({"type": part.check, **part.check_args(args)})
        sentences.append(render_instruction(rng.choice(part.wordings(more_phrasings)), args, spell=rng.random() < 0.5))
    text = text.strip()
    prompt = _join_instruction(request, " ".join(sentences))
    new_id = f"{conversation.get('id', '')}{ID_SUFFIX}"
    record = {"id": new_id, "prompt": prompt, "checks": checks}
    try:
        validate_record(record)
    except DataError:
        return "contradictory_checks"
    if not text or not score_reply(record, text)["prompt_level"]:
        return "fails_check"
    new_messages = [*messages[:-2], {"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
    if validate_messages(new_messages) is not None:
        return "invalid_messages"
    return {"id": new_id, "messages": new_messages, "instruction_type": type_name, "instruction_checks": checks}


def mix_instructions(
    train_convs: list[dict], *, share: float, seed: int, types: list[str] | None = None,
    binding_limits: bool = False, more_phrasings: bool = False,
) -> tuple[list[dict], dict]:
    """Replace `round(share * len(train_convs))` training conversations by instruction versions.

    Conversations are drawn in a `random.Random(seed)` order. Each tries the types (`types`,
    default `TYPE_NAMES`) with the fewest examples so far first, ties in seeded random order,
    until one applies: the types stay balanced although some skip many replies (code). A
    conversation no type applies to is counted as "no_type_applies" and the next one is
    drawn, so fewer than asked are replaced only when the conversations run out. Returns the new list (same order and
    length) and a report: {"share", "seed", "n_conversations", "n_target", "n_replaced",
    "per_type": {type: count}, "skipped": {reason: failed attempts}, "examples": {type: an id}},
    plus "binding_limits" / "more_phrasings": true when set (see `make_example`). Deterministic for a
    seed and input.
    """
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ConfigError(f"instruction share must be a number from 0 to 1, got {share!r}")
    names = list(TYPE_NAMES if types is None else types)
    if not names:
        raise ConfigError("instruction types must not be empty")
    for name in names:
        _parts(name)
    for key, value in (("binding_limits", binding_limits), ("more_phrasings", more_phrasings)):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
    rng = random.Random(seed)
    target = round(share * len(train_convs))
    order = list(range(len(train_convs)))
    rng.shuffle(order)
    out = list(train_convs)
    per_type, skipped, examples = Counter(), Counter(), {}
    replaced = 0
    for idx in order:
        if replaced >= target:
            break
        tiebreak = {name: rng.random() for name in names}
        for name in sorted(names, key=lambda t: (per_type[t], tiebreak[t])):
            result = make_example(train_convs[idx], name, rng, binding_limits=binding_limits,
                                  more_phrasings=more_phrasings)
            if isinstance(result, str):
                skipped[result] += 1
                continue
            out[idx] = result
            per_type[name] += 1
            examples.setdefault(name, result["id"])
            replaced += 1
            break
        else:
            skipped["no_type_applies"] += 1
    report = {"share": share, "seed": seed, "n_conversations": len(train_convs), "n_target": target,
              "n_replaced": replaced, "per_type": dict(sorted(per_type.items())),
              "skipped": dict(skipped.most_common()), "examples": dict(sorted(examples.items()))}
    if binding_limits:  # only when set: reports of recipes without the key stay as they were
        report["binding_limits"] = True
    if more_phrasings:
        report["more_phrasings"] = True
    return out, report
