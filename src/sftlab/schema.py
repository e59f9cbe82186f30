"""What a recipe key takes, and the walk that checks a whole recipe at once.

A `Key` says what one key accepts (`expects`, in words, for the error message), whether it
may be null and whether it is required. `sftlab.config.RULES` is the table of them, one line
per key sftlab defines; keys of `lora` and `training` without a line there are checked
against the type hints of `peft.LoraConfig` and `trl.SFTConfig` (`from_annotation`), which
then run as a dry run. `check_section` collects every problem of one section (unknown keys
with the closest valid one, wrong types and ranges, missing required keys) as `Problem`s,
so that a recipe's problems are reported together, not one per run.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import json
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from .errors import Problem


@dataclasses.dataclass(frozen=True)
class Key:
    """What one recipe key accepts. `accepts(value)` is only asked about values other than null."""

    expects: str | Callable[[], str]  # in words, for messages: "a whole number >= 1" (a callable: worded when needed)
    accepts: Callable[[Any], bool]
    null: bool = False  # null is a valid value
    required: bool = False  # a run cannot do without it
    example: str = ""  # shown when a required key is missing: "offline:gemma-3-270m"
    choices: Callable[[], tuple] | None = None  # the valid values, when they are a list (for "did you mean")

    @property
    def wording(self) -> str:
        return self.expects() if callable(self.expects) else self.expects

    def problem(self, value: Any) -> str | None:
        """None when `value` is fine, else what is wrong and what is expected."""
        if value is None and self.null:
            return None
        if value is not None and self.accepts(value):
            return None
        expected = self.wording + (" or null" if self.null else "")
        close = difflib.get_close_matches(value, [str(c) for c in self.choices()], n=1, cutoff=0.6) \
            if isinstance(value, str) and self.choices is not None else []
        hint = f"; did you mean '{close[0]}'?" if close else _yaml_hint(self, value)
        return f"expected {expected}, got {shown(value)}{hint}"


def shown(value: Any) -> str:
    """A value as the recipe would spell it (null, true, "text", [1, 2]), cut to 60 characters."""
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _yaml_hint(key: Key, value: Any) -> str:
    if isinstance(value, str) and "number" in key.wording:
        if re.fullmatch(r"[-+]?[0-9]+[eE][-+]?[0-9]+", value.strip()):
            return f" (YAML reads {value} as text: write {value.lower().replace('e', '.0e', 1)})"
        try:
            float(value)
        except ValueError:
            return ""
        return " (text, not a number: drop the quotes)"
    if isinstance(value, bool) and ("text" in key.wording or "one of" in key.wording):
        return " (YAML reads a bare yes/no/on/off as true/false: quote it, \"no\")"
    return ""


def _whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}" + (" (exclusive)" if lo_open or hi_open else "")
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}"
    return ""


def _within(value, lo, hi, lo_open: bool, hi_open: bool) -> bool:
    return ((lo is None or (value > lo if lo_open else value >= lo))
            and (hi is None or (value < hi if hi_open else value <= hi)))


def whole(lo=None, hi=None, **kw) -> Key:
    """A whole number (not true/false), optionally bounded."""
    return Key(f"a whole number{_bounds(lo, hi, False, False)}",
               lambda v: _whole_number(v) and _within(v, lo, hi, False, False), **kw)


def number(lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False, **kw) -> Key:
    """A finite number, whole or not, optionally bounded."""
    return Key(f"a number{_bounds(lo, hi, lo_open, hi_open)}",
               lambda v: _finite(v) and _within(v, lo, hi, lo_open, hi_open), **kw)


def flag(**kw) -> Key:
    return Key("true or false", lambda v: isinstance(v, bool), **kw)


def text(**kw) -> Key:
    """Text that is not empty."""
    return Key("text", lambda v: isinstance(v, str) and bool(v.strip()), **kw)


def one_of(*choices, **kw) -> Key:
    """One of `choices`; a single callable stands for choices known only later (imported lazily)."""
    def pick():
        return tuple(choices[0]()) if len(choices) == 1 and callable(choices[0]) else choices

    def accepts(value):
        return any(type(value) is type(c) and value == c for c in pick())

    def words():
        names = [shown(c).strip('"') for c in pick()]
        return "one of " + ", ".join(names if len(names) <= 10 else [*names[:8], f"... ({len(names)} in all)"])

    return Key(words, accepts, choices=pick, **kw)


def list_of(item: Key | None = None, *, nonempty: bool = False, what: str = "", **kw) -> Key:
    """A list whose every element `item` accepts."""
    def accepts(value):
        return (isinstance(value, list) and (bool(value) or not nonempty)
                and (item is None or all(v is not None and item.accepts(v) for v in value)))

    return Key(what or ("a list" if item is None else (lambda: f"a list (each {item.wording})")), accepts, **kw)


def mapping(what: str = "a mapping of keys", **kw) -> Key:
    return Key(what, lambda v: isinstance(v, dict), **kw)


def either(*keys: Key, **kw) -> Key:
    """A value that any of `keys` accepts."""
    listed = [k.choices for k in keys if k.choices is not None]
    return Key(lambda: " or ".join(k.wording for k in keys), lambda v: any(k.accepts(v) for k in keys),
               choices=(lambda: tuple(c for pick in listed for c in pick())) if listed else None, **kw)


def from_annotation(tp: Any) -> Key | None:
    """A Key from a dataclass field's type hint: int, float, bool, str, an Enum, a Literal,
    list[...], dict[...] and unions of them (Optional: null allowed). None (no check) for
    anything else, such as a library's own config classes."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if any(isinstance(a, type) and issubclass(a, enum.Enum) for a in members):
            members = [a for a in members if a is not str]  # the Enum is what the text must name
        keys = [from_annotation(a) for a in members]
        if any(k is None for k in keys) or not keys:
            return None
        return either(*keys, null=type(None) in args)
    if origin is typing.Literal:
        if any(isinstance(a, str) and "[" in a for a in args):  # a pattern such as 'pissa_niter_[n]'
            return None
        return one_of(*args)
    if origin is list or tp is list:
        inner = from_annotation(args[0]) if args else None
        return list_of(inner)
    if origin is dict or tp is dict:
        return mapping()
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return one_of(*(e.value for e in tp))
    simple = {bool: flag, int: whole, float: number}
    if tp in simple:
        return simple[tp]()
    if tp is str:
        return Key("text", lambda v: isinstance(v, str))
    return None


@functools.lru_cache(maxsize=None)
def dataclass_keys(cls) -> dict[str, Key | None]:
    """Field name -> Key from the type hints of a library's config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: from_annotation(hints.get(f.name)) for f in dataclasses.fields(cls)}


def closest(key: str, allowed) -> str:
    """'did you mean' with the closest valid key, or the list of valid keys."""
    close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(sorted(map(str, allowed)))}"


def check_section(where: str, path: str, given: Any, allowed, rules: dict[str, Key],
                  fallback: Callable[[str], Key | None] | None = None, *, required_too: bool = True) -> list[Problem]:
    """Every problem of one section of a recipe: keys not in `allowed` (with the closest valid
    one), values that their rule (`rules["path.key"]`, else `fallback(key)`) refuses, and
    required keys that are missing (with `required_too`). `given` None is an empty section."""
    problems = []
    given = {} if given is None else given
    for key, value in given.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in allowed:
            problems.append(Problem(where, full, f"unknown key; {closest(key, allowed)}"))
            continue
        rule = rules.get(full) or (fallback(key) if fallback else None)
        wrong = rule.problem(value) if rule is not None else None
        if wrong:
            problems.append(Problem(where, full, wrong))
    if required_too:
        prefix = f"{path}." if path else ""
        for full, rule in rules.items():
            key = full[len(prefix):]
            if rule.required and full.startswith(prefix) and "." not in key and key not in given:
                doc = allowed.get(key, "") if isinstance(allowed, dict) else ""
                example = f"; e.g. {key}: {rule.example}" if rule.example else ""
                problems.append(Problem(where, full, f"required, missing ({doc or rule.wording}){example}"))
    return problems
