"""A small instruction-following test in the spirit of IFEval, with checks a program can verify.

Each prompt asks for an everyday piece of writing and adds one or two
instructions whose success a short function decides ("fewer than 50 words",
"exactly 3 bullet points", "end with 'Thank you again!'"). A reply follows a
prompt when it passes all of that prompt's checks. The prompts in
`prompts/ifeval.jsonl` were written for this project (English only); the idea
and the two accuracies (prompt level, instruction level) come from
Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models",
arXiv:2311.07911.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


from sftlab.errors import DataError
from sftlab.echo import echoed_spans, strip_echo
from sftlab.metrics import count_words
from sftlab.stats import bootstrap_ci, pooled_ratio, rate

PROMPTS_PATH = Path(__file__).resolve().parent / "prompts" / "ifeval.jsonl"

_BULLET = re.compile(r"^[ \t]*[-*][ \t]+\S", re.MULTILINE)
_NUMBERED = re.compile(r"^[ \t]*\d+[.)][ \t]+\S", re.MULTILINE)
_TITLE = re.compile(r"<<[^<>\n]+>>")
_FENCE = re.compile(r"^```[A-Za-z]*[ \t]*\n?(.*?)\n?```$", re.DOTALL)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+|\n+")


# --------------------------------------------------------------------------- checks
# Each check reads a reply and its own arguments and returns whether the reply
# follows the instruction. Word counts use sftlab.metrics.count_words.


def max_words(reply: str, n: int) -> bool:
    """At most n words: ("One two three.", n=3) -> True; n=2 -> False."""
    return count_words(reply) <= n


def min_words(reply: str, n: int) -> bool:
    """At least n words: ("One two three.", n=3) -> True; n=4 -> False."""
    return count_words(reply) >= n


def all_lowercase(reply: str) -> bool:
    """No capital letters: "hello there." -> True; "Hello there." -> False."""
    return reply == reply.lower()


def all_uppercase(reply: str) -> bool:
    """No lowercase letters: "WATCH YOUR STEP!" -> True; "Watch your step!" -> False."""
    return reply == reply.upper()


def bullet_count(reply: str, n: int) -> bool:
    """Exactly n lines that start with "- " or "* " (indentation allowed).

    ("- towel\\n- hat\\n- sunscreen", n=3) -> True; the same with n=2 -> False.
    """
    return len(_BULLET.findall(reply)) == n


def numbered_list(reply: str, n: int) -> bool:
    """Exactly n lines that start with a number and "." or ")": "1. Boil water" or "2) Add tea"."""
    return len(_NUMBERED.findall(reply)) == n


def _has_word(reply: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", reply, re.IGNORECASE) is not None


def required_words(reply: str, words: list[str]) -> bool:
    """Every word appears as a whole word, any case: ("Cozy leaves.", ["leaves", "cozy"]) -> True.

    Whole word means "leaf" is not found in "leaves", nor "cat" in "category".
    """
    return all(_has_word(reply, w) for w in words)


def forbidden_words(reply: str, words: list[str]) -> bool:
    """None of the words appears as a whole word, any case: ("Big waves.", ["blue"]) -> True."""
    return not any(_has_word(reply, w) for w in words)


def json_object(reply: str) -> bool:
    """The reply is one JSON object, optionally inside a ``` or ```json fence.

    '{"name": "Tom"}' -> True; '```json\\n{"name": "Tom"}\\n```' -> True;
    'Here it is: {"name": "Tom"}' -> False; '[1, 2]' -> False.
    """
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def ends_with(reply: str, phrase: str) -> bool:
    """The reply ends with exactly `phrase` (case and punctuation count), trailing whitespace aside.

    ("Thanks for everything. Thank you again!\\n", "Thank you again!") -> True;
    ("... thank you again.", "Thank you again!") -> False.
    """
    return reply.rstrip().endswith(phrase)


def starts_with(reply: str, phrase: str) -> bool:
    """The reply starts with exactly `phrase`, leading whitespace aside.

    ("Did you know that...", "Did you know") -> True; ("did you know...", "Did you know") -> False.
    """
    return reply.lstrip().startswith(phrase)


def no_commas(reply: str) -> bool:
    """No comma anywhere: "Boil the egg for ten minutes." -> True."""
    return "," not in reply


def count_sentences(text: str) -> int:
    """Sentences, split after ".", "!" or "?" followed by a space, and at line breaks.

    "Hi. How are you? Fine!" -> 3; "- eggs\\n- milk" -> 2. Abbreviations such as
    "Dr. Smith" count as a break, so a limit errs on the strict side.
    """
    return sum(1 for part in _SENTENCE_BREAK.split(text) if part and re.search(r"\w", part))


def max_sentences(reply: str, n: int) -> bool:
    """At most n sentences (see `count_sentences`): ("It rains. It pours.", n=2) -> True."""
    return count_sentences(reply) <= n


def quotation(reply: str) -> bool:
    """The whole reply is wrapped in double quotes, straight or curly: '"Keep going."' -> True."""
    text = reply.strip()
    return len(text) >= 2 and (text[0], text[-1]) in {('"', '"'), ("\u201c", "\u201d")}


def contains_title(reply: str) -> bool:
    """A title in double angular brackets on one line: "<<Rainy Day>>\\nDrops fall..." -> True."""
    return _TITLE.search(reply) is not None


def n_paragraphs(reply: str, n: int) -> bool:
    """Exactly n paragraphs, separated by blank lines: ("One.\\n\\nTwo.", n=2) -> True."""
    paragraphs = [p for p in re.split(r"\n[ \t]*\n", reply.strip()) if p.strip()]
    return len(paragraphs) == n


def postscript(reply: str, marker: str = "P.S.") -> bool:
    """A postscript: a line that starts with `marker` (any case, indentation allowed) and has
    text after it, below some other text.

    ("See you soon.\n\nP.S. Bring a hat.") -> True; "P.S. Bring a hat." -> False (nothing
    before it); "See you soon. P.S. Bring a hat." -> False (not at the start of a line);
    "See you soon.\nP.S." -> False (no text after the marker).
    """
    pattern = re.compile(rf"^[ \t]*{re.escape(marker)}[ \t]*\S", re.IGNORECASE | re.MULTILINE)
    return any(re.search(r"\w", reply[: m.start()]) for m in pattern.finditer(reply))


CHECKS: dict[str, Callable[..., bool]] = {
    f.__name__: f
    for f in (
        max_words,
        min_words,
        all_lowercase,
        all_uppercase,
        bullet_count,
        numbered_list,
        required_words,
        forbidden_words,
        json_object,
        ends_with,
        starts_with,
        no_commas,
        max_sentences,
        quotation,
        contains_title,
        n_paragraphs,
        postscript,
    )
}


# --------------------------------------------------------------------------- prompt file


_STRING_ARGS = frozenset({"phrase", "marker", "word", "start", "end", "separator"})
_LIST_ARGS = frozenset({"words", "headers", "options"})


def _arg_problem(name: str, value) -> str | None:
    """What is wrong with a check argument, or None: n is a positive int, phrase, marker (and the
    other `_STRING_ARGS`) non-empty strings, words (and the other `_LIST_ARGS`) a non-empty list of
    non-empty strings."""
    if name == "n":
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return None if ok else f"n must be a positive integer, got {value!r}"
    if name in _STRING_ARGS:
        return None if isinstance(value, str) and value.strip() else f"{name} must be a non-empty string, got {value!r}"
    if name in _LIST_ARGS:
        ok = isinstance(value, list) and value and all(isinstance(w, str) and w.strip() for w in value)
        return None if ok else f"{name} must be a non-empty list of non-empty strings, got {value!r}"
    return None


def _check_args(check: Mapping) -> dict:
    return {k: v for k, v in check.items() if k != "type"}


def validate_record(record: Mapping, checks: Mapping[str, Callable[..., bool]] | None = None) -> None:
    """Raise DataError, naming the prompt id and the check, if a prompt record is malformed.

    A record is {"id": str, "prompt": str, "checks": [{"type": <a CHECKS name>, **its arguments}]};
    `checks` is another registry of check functions (`sftlab.ood.OOD_CHECKS`), CHECKS by default.
    Also rejects checks that contradict each other (all_lowercase with a
    phrase in capitals, a required word that is also forbidden, ...).
    """
    registry = CHECKS if checks is None else checks
    if not isinstance(record, Mapping):
        raise DataError(f"a prompt record must be a JSON object, got {record!r}")
    pid = record.get("id")
    if not isinstance(pid, str) or not pid.strip():
        raise DataError(f"prompt record without a string id: {record!r}")
    if not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
        raise DataError(f"prompt {pid!r}: 'prompt' must be a non-empty string")
    checks = record.get("checks")
    if not isinstance(checks, list) or not checks:
        raise DataError(f"prompt {pid!r}: 'checks' must be a non-empty list")
    extra = set(record) - {"id", "prompt", "checks"}
    if extra:
        raise DataError(f"prompt {pid!r}: unknown keys {sorted(extra)}")

    for i, check in enumerate(checks):
        where = f"prompt {pid!r}, check {i}"
        if not isinstance(check, Mapping) or "type" not in check:
            raise DataError(f"{where}: a check must be an object with a 'type', got {check!r}")
        ctype = check["type"]
        if ctype not in registry:
            raise DataError(f"{where}: unknown check type {ctype!r}; known: {', '.join(sorted(registry))}")
        where = f"prompt {pid!r}, check {i} ({ctype})"
        signature = list(inspect.signature(registry[ctype]).parameters.values())[1:]
        params = [p.name for p in signature]
        needed = {p.name for p in signature if p.default is inspect.Parameter.empty}
        args = _check_args(check)
        missing, unknown = needed - set(args), set(args) - set(params)
        if missing or unknown:
            raise DataError(
                f"{where}: expects arguments {params or 'none'}, missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        for name, value in args.items():
            problem = _arg_problem(name, value)
            if problem:
                raise DataError(f"{where}: {problem}")

    by_type: dict[str, list[dict]] = {}
    for check in checks:
        by_type.setdefault(check["type"], []).append(_check_args(check))
    phrases = [a["phrase"] for t in ("starts_with", "ends_with") for a in by_type.get(t, [])]

    def conflict(message: str):
        raise DataError(f"prompt {pid!r}: contradictory checks: {message}")

    if "all_lowercase" in by_type and "all_uppercase" in by_type:
        conflict("all_lowercase and all_uppercase")
    for phrase in phrases:
        if "all_lowercase" in by_type and phrase != phrase.lower():
            conflict(f"all_lowercase but phrase {phrase!r} has capitals")
        if "all_uppercase" in by_type and phrase != phrase.upper():
            conflict(f"all_uppercase but phrase {phrase!r} has lowercase letters")
        if "no_commas" in by_type and "," in phrase:
            conflict(f"no_commas but phrase {phrase!r} has a comma")
    for a in by_type.get("postscript", []):
        if "no_commas" in by_type and "," in a.get("marker", "P.S."):
            conflict(f"no_commas but marker {a['marker']!r} has a comma")
    required = {w.lower() for a in by_type.get("required_words", []) for w in a["words"]}
    forbidden = {w.lower() for a in by_type.get("forbidden_words", []) for w in a["words"]}
    if required & forbidden:
        conflict(f"words both required and forbidden: {sorted(required & forbidden)}")
    lows = [a["n"] for a in by_type.get("min_words", [])]
    highs = [a["n"] for a in by_type.get("max_words", [])]
    if lows and highs and max(lows) > min(highs):
        conflict(f"min_words {max(lows)} > max_words {min(highs)}")


def load_prompts(path: str | Path | None = None, checks: Mapping[str, Callable[..., bool]] | None = None) -> list[dict]:
    """The prompt records of a JSONL file (default: the packaged `prompts/ifeval.jsonl`), validated
    against `checks` (default CHECKS).

    Blank lines are skipped; a bad line, a bad record or a repeated id raises
    DataError naming the line and the prompt id.
    """
    path = Path(path) if path is not None else PROMPTS_PATH
    records, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err})") from err
            try:
                validate_record(record, checks)
            except DataError as err:
                raise DataError(f"{path}:{lineno}: {err}") from err
            if record["id"] in seen:
                raise DataError(f"{path}:{lineno}: prompt id {record['id']!r} appears twice")
            seen.add(record["id"])
            records.append(record)
    if not records:
        raise DataError(f"{path}: no prompts")
    return records


# --------------------------------------------------------------------------- scoring


def score_reply(prompt_record: Mapping, reply: str, *, echo_proof: bool = True,
                checks: Mapping[str, Callable[..., bool]] | None = None) -> dict:
    """Run every check of one prompt on one reply.

    An empty or blank reply follows no instruction (otherwise it would pass
    max_words, no_commas, all_lowercase, ... for free). With `echo_proof` (the default),
    text the reply copied from the prompt (`sftlab.echo`) can neither earn nor excuse an
    instruction: a check must pass on the whole reply AND on the reply without its copied
    text, which must not be blank. So a reply that copies "give it a title like <<My
    Title>>" gets no title credit, and copying a prompt that has no commas is not "no commas".
    ({"id": "x", "prompt": "...", "checks": [{"type": "no_commas"}, {"type": "max_words", "n": 3}]},
     "One two three four.") -> {"id": "x", "prompt_level": False, "instruction_results": [True, False],
     "echoed": False}
    """
    own = strip_echo(reply, prompt_record["prompt"]) if echo_proof else reply
    registry = CHECKS if checks is None else checks
    results = []
    for check in prompt_record["checks"]:
        fn, args = registry[check["type"]], _check_args(check)
        ok = bool(own.strip()) and fn(reply, **args) and (own is reply or fn(own, **args))
        results.append(bool(ok))
    return {"id": prompt_record["id"], "prompt_level": all(results), "instruction_results": results,
            "echoed": bool(echoed_spans(reply, prompt_record["prompt"]))}


def ifeval_values(records: Sequence[Mapping], replies: Sequence[str], *, echo_proof: bool = True,
                  checks: Mapping[str, Callable[..., bool]] | None = None) -> dict:
    """Per-prompt values, aligned with `records`: "prompt_level" (0/1: every check passed),
    "instruction_level" (rows [checks passed, checks]) and "echoed" (0/1: the reply copied
    the prompt). What both one system's accuracy and a paired comparison resample."""
    if len(replies) != len(records):
        raise ValueError(f"{len(records)} prompts but {len(replies)} replies")
    scores = [score_reply(rec, reply, echo_proof=echo_proof, checks=checks) for rec, reply in zip(records, replies)]
    return {
        "prompt_level": [float(s["prompt_level"]) for s in scores],
        "instruction_level": [[sum(s["instruction_results"]), len(s["instruction_results"])] for s in scores],
        "echoed": [float(s["echoed"]) for s in scores],
        "scores": scores,
    }


def ifeval_accuracy(
    records: Sequence[Mapping],
    replies: Sequence[str] | Mapping[str, str],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    checks: Mapping[str, Callable[..., bool]] | None = None,
) -> dict:
    """Prompt-level and instruction-level accuracy of one system, with 95% intervals (`checks`: the
    registry the records' check types come from, CHECKS by default).

    `replies` is a list aligned with `records` or a dict from prompt id to reply.
    prompt_level: share of prompts whose checks all pass (Wilson interval); instruction_level:
    share of all checks that pass (bootstrap over prompts, which keeps a prompt's checks
    together). Both are echo-proof (see `score_reply`); "raw" holds both without that rule,
    and "n_echoed" counts the replies that copied their prompt.
    per_type: {check type: {"value": pass rate, "ci": [lo, hi] (Wilson), "n": number of checks}}.
    Two prompts with checks [pass, fail] and [pass] ->
    prompt_level 0.5, instruction_level 2/3, n_prompts 2, n_instructions 3.
    """
    if not records:
        raise ValueError("ifeval_accuracy needs at least one prompt")
    if isinstance(replies, Mapping):
        missing = [r["id"] for r in records if r["id"] not in replies]
        if missing:
            raise DataError(f"no reply for prompt ids {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        replies = [replies[r["id"]] for r in records]
    if len(replies) != len(records):
        raise ValueError(f"{len(records)} prompts but {len(replies)} replies")

    def pooled(rows) -> dict:
        low, high = bootstrap_ci(rows, stat=pooled_ratio, n_resamples=n_resamples, confidence=confidence, seed=seed)
        return {"value": pooled_ratio(rows), "ci": [low, high]}

    values = ifeval_values(records, replies, checks=checks)
    raw = ifeval_values(records, replies, echo_proof=False, checks=checks)
    per_type_flags: dict[str, list[float]] = {}
    for rec, s in zip(records, values["scores"]):
        for check, ok in zip(rec["checks"], s["instruction_results"]):
            per_type_flags.setdefault(check["type"], []).append(float(ok))

    return {
        "prompt_level": rate(values["prompt_level"]),
        "instruction_level": pooled(values["instruction_level"]),
        "n_prompts": len(records),
        "n_instructions": int(sum(n for _, n in values["instruction_level"])),
        "n_echoed": int(sum(values["echoed"])),
        "raw": {"prompt_level": rate(raw["prompt_level"]), "instruction_level": pooled(raw["instruction_level"])},
        "per_type": {t: rate(flags) for t, flags in sorted(per_type_flags.items())},
    }
