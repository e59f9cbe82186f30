"""The recipe's `preference:` section: what each key takes, the defaults, and the settings a run uses.

The key table (`sftlab.config.PREFERENCE_KEYS`) says what each key means; `section_problems`
checks a section and returns every problem as (key path, message): unknown keys with the
closest valid one, values of the wrong type or range, and the `lora` and `training`
sub-sections against `peft.LoraConfig` and `trl.DPOConfig` (method dpo) or `trl.SFTConfig`
(method rft) field names and the types of their defaults, then built once as a dry run, as
training builds them. `settings` fills in the defaults for a run.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tempfile
import warnings
from pathlib import Path

METHODS = ("dpo", "rft")

PREFERENCE_DEFAULTS = {
    "method": "dpo",
    "sft_run": None,  # null: this run trains its SFT adapter itself
    "samples_from": None,  # null: this run samples its own prompts
    "prompts": 200,
    "plain_prompts": 50,
    "types": None,  # null: every instruction type and pair (sftlab.data.instructions.TYPE_NAMES)
    "samples": 4,
    "temperature": 0.8,  # plain temperature sampling (no top-k or top-p cut: sftlab.evaluate.generate_replies)
    "max_new_tokens": None,  # null: evaluation.max_new_tokens
    "batch_size": None,  # null: evaluation.batch_size
    "repair": True,
    "seed": None,  # null: the run's seed
    "lora": None,  # null: the recipe's lora section, without trainable_token_indices
    "training": None,  # null: the library's defaults with sftlab's (see sftlab.preference.trainers)
}


def _whole(v, lo=0):
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# key -> (accepts, expected in words); null is the default for every key but method
_RULES = {
    "method": (lambda v: v in METHODS, "one of dpo, rft"),
    "sft_run": (lambda v: isinstance(v, str) and bool(v.strip()), "a finished run folder such as results/default"),
    "samples_from": (lambda v: isinstance(v, str) and bool(v.strip()), "a finished preference run folder"),
    "prompts": (_whole, "a whole number >= 0"),
    "plain_prompts": (_whole, "a whole number >= 0"),
    "types": (lambda v: isinstance(v, list) and bool(v) and all(isinstance(t, str) for t in v),
              "a list of instruction types"),
    "samples": (lambda v: _whole(v, 1), "a whole number >= 1"),
    "temperature": (lambda v: _number(v) and v > 0, "a number > 0"),
    "max_new_tokens": (lambda v: _whole(v, 1), "a whole number >= 1"),
    "batch_size": (lambda v: _whole(v, 1), "a whole number >= 1"),
    "repair": (lambda v: isinstance(v, bool), "true or false"),
    "seed": (lambda v: _whole(v, 0), "a whole number >= 0"),
    "lora": (lambda v: isinstance(v, dict), "a mapping of peft.LoraConfig fields"),
    "training": (lambda v: isinstance(v, dict), "a mapping of trl.DPOConfig (dpo) or trl.SFTConfig (rft) fields"),
}


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _closest(key, allowed) -> str:
    close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(sorted(map(str, allowed)))}"


def _library_class(method: str):
    from trl import DPOConfig, SFTConfig

    return DPOConfig if method == "dpo" else SFTConfig


def _field_problem(field: dataclasses.Field, value) -> str | None:
    """A value of the wrong kind for a library field, judged by the type of the field's default
    (true/false, whole number, number, text); None when it fits or the default says nothing."""
    default = field.default
    if default is dataclasses.MISSING or default is None or value is None:
        return None
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, expected = _whole(value, -(2**63)), "a whole number"
    elif isinstance(default, float):
        ok, expected = _number(value), "a number"
    elif isinstance(default, str):
        ok, expected = isinstance(value, str), "text"
    else:
        return None
    return None if ok else f"expected {expected}, got {_shown(value)}"


def _library_problems(path: str, given: dict, cls, extra: dict | None = None) -> list[tuple[str, str]]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    allowed = set(fields) | set(extra or {})
    problems = []
    for key, value in given.items():
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"not a field of {cls.__module__.split('.')[0]}.{cls.__name__}"
            problems.append((f"{path}.{key}", f"unknown key; {hint}"))
        elif key in fields and not (key == "bf16" and value == "auto"):  # sftlab resolves bf16: auto
            wrong = _field_problem(fields[key], value)
            if wrong:
                problems.append((f"{path}.{key}", wrong))
    return problems


def _dry_run(method: str, lora: dict, training: dict, seed: int) -> list[tuple[str, str]]:
    """Build the LoraConfig and the DPOConfig/SFTConfig as the stage will; their refusals become problems."""
    from peft import LoraConfig

    from sftlab.train import build_sft_config

    from .trainers import build_dpo_config

    problems = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # token names resolve with the tokenizer at run time: only the rest is built here
            LoraConfig(**{"task_type": "CAUSAL_LM", **{k: v for k, v in lora.items() if k != "trainable_token_indices"}})
        except Exception as exc:  # reported as the recipe's problem, with the library's own words
            problems.append(("preference.lora", f"peft.LoraConfig refused it: {' '.join(str(exc).split())[:300]}"))
        build = build_dpo_config if method == "dpo" else build_sft_config
        with tempfile.TemporaryDirectory(prefix="sftlab-check-") as tmp:
            try:
                build(training, Path(tmp) / "checkpoints", seed)
            except Exception as exc:  # as above
                problems.append(("preference.training", f"{_library_class(method).__name__} refused it: "
                                 f"{' '.join(str(exc).split())[:300]}"))
    return problems


def section_problems(section, *, dry_run: bool = True) -> list[tuple[str, str]]:
    """Every problem of a `preference:` section as (key path, message); [] when it can run."""
    from peft import LoraConfig

    from sftlab.config import PREFERENCE_KEYS, TRAINING_KEYS

    if section is None:
        return []
    if not isinstance(section, dict):
        return [("preference", f"expected a mapping of keys, got {_shown(section)}")]
    problems = []
    for key, value in section.items():
        if key not in PREFERENCE_KEYS:
            problems.append((f"preference.{key}", f"unknown key; {_closest(key, PREFERENCE_KEYS)}"))
        elif value is not None and not _RULES[key][0](value):
            problems.append((f"preference.{key}", f"expected {_RULES[key][1]}, got {_shown(value)}"))
    method = section.get("method") or PREFERENCE_DEFAULTS["method"]
    if method not in METHODS:
        return problems
    sizes = [section.get(k, PREFERENCE_DEFAULTS[k]) for k in ("prompts", "plain_prompts")]
    if all(isinstance(n, int) for n in sizes) and sum(sizes) == 0:
        problems.append(("preference.prompts", "prompts and plain_prompts are both 0: the stage would have no prompt"))
    if method == "dpo" and section.get("samples") == 1:
        problems.append(("preference.samples", "method dpo needs at least 2 samples per prompt to compare"))
    if isinstance(section.get("types"), list):
        from sftlab.data.instructions import TYPE_NAMES

        problems += [("preference.types", f"unknown instruction type {t!r}; {_closest(t, TYPE_NAMES)}")
                     for t in section["types"] if t not in TYPE_NAMES]
    lora = section.get("lora") if isinstance(section.get("lora"), dict) else {}
    training = section.get("training") if isinstance(section.get("training"), dict) else {}
    problems += _library_problems("preference.lora", lora, LoraConfig)
    problems += _library_problems("preference.training", training, _library_class(method),
                                  TRAINING_KEYS if method == "rft" else None)
    if not problems and dry_run:
        problems += _dry_run(method, lora, training, 0)
    return problems


def settings(config: dict) -> dict | None:
    """The run's preference settings, defaults filled in from the section and the rest of the recipe;
    None when the recipe has no `preference:` section (the stage is off)."""
    from sftlab.config import EVAL_DEFAULTS

    section = config.get("preference")
    if section is None:
        return None
    out = {**PREFERENCE_DEFAULTS, **{k: v for k, v in section.items() if v is not None}}
    evaluation = {**EVAL_DEFAULTS, **(config.get("evaluation") or {})}
    out["max_new_tokens"] = out["max_new_tokens"] or int(evaluation["max_new_tokens"])
    out["batch_size"] = out["batch_size"] or int(evaluation["batch_size"])
    out["seed"] = int(config.get("seed", 0)) if out["seed"] is None else out["seed"]
    if out["lora"] is None:  # the SFT adapter's shape; its trained <end_of_turn> row is merged in already
        out["lora"] = {k: v for k, v in (config.get("lora") or {}).items() if k != "trainable_token_indices"}
    out["training"] = dict(out["training"] or {})
    return out
