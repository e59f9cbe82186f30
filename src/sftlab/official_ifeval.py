"""The official IFEval: google/IFEval's 541 prompts scored by the official checkers, when the Hub answers.

The checkers are Google's own (Zhou et al. 2023, Apache-2.0), as the `if-verifiable` package on
PyPI ships them (`if_verifiable.ifeval`, installed with the `offline` extra on Python 3.11+). With
the Hub, `sftlab evaluate-extra DIR --sets official_ifeval` (or `evaluation.official_ifeval: true`)
loads google/IFEval, generates every system's replies and scores them strict and loose, prompt and
instruction level; "published_measure" (the mean of prompt- and instruction-level strict accuracy)
is what SmolLM2-135M-Instruct's 29.9 (prompts/published.yaml) measures. Without the Hub the section
says it was not used, and the project's own IFEval-style set stays the measure.

The official checkers also run offline, except the two that need NLTK's punkt data
(`checkers_offline`). For the instruction types the project shares with them (`SHARED`: the
project's check, the official instruction id, and how the two differ), `official_section` scores
the project's own prompts and the OOD prompts again with the official checker in place of the
project's, wherever it runs offline (echo-proof, as the project's are), and measures on the run's
replies how often the two checkers agree, type by type.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from .echo import strip_echo
from .errors import ConfigError, DataError
from .scoring import paired_entry
from .stats import bootstrap_ci, pooled_ratio, rate

OFFICIAL_DATASET = "google/IFEval"
NOT_USED = ("not used: google/IFEval needs the Hugging Face Hub (offline, the project's own 60 IFEval-style "
            "prompts stand in; the official checkers score them where they share a type)")
_YES_NO = ["My answer is yes.", "My answer is no.", "My answer is maybe."]

# project or OOD check type -> (official instruction id, its kwargs from the check's arguments, how they differ)
SHARED: dict[str, tuple[str, Callable[[dict], dict], str]] = {
    "max_words": ("length_constraints:number_words", lambda a: {"num_words": a["n"] + 1, "relation": "less than"},
                  "words counted as runs of letters and digits (\"don't\" is two)"),
    "min_words": ("length_constraints:number_words", lambda a: {"num_words": a["n"], "relation": "at least"},
                  "words counted as runs of letters and digits (\"don't\" is two)"),
    "all_lowercase": ("change_case:english_lowercase", lambda a: {}, "also needs langdetect to call the reply English"),
    "all_uppercase": ("change_case:english_capital", lambda a: {}, "also needs langdetect to call the reply English"),
    "bullet_count": ("detectable_format:number_bullet_lists", lambda a: {"num_bullets": a["n"]}, "the same rule"),
    "required_words": ("keywords:existence", lambda a: {"keywords": a["words"]},
                       "a keyword counts inside a longer word (\"leaf\" in \"leaflet\")"),
    "forbidden_words": ("keywords:forbidden_words", lambda a: {"forbidden_words": a["words"]}, "the same rule"),
    "json_object": ("detectable_format:json_format", lambda a: {}, "any JSON value passes, not only an object"),
    "ends_with": ("startend:end_checker", lambda a: {"end_phrase": a["phrase"]}, "case-insensitive"),
    "no_commas": ("punctuation:no_comma", lambda a: {}, "the same rule"),
    "max_sentences": ("length_constraints:number_sentences",
                      lambda a: {"num_sentences": a["n"] + 1, "relation": "less than"},
                      "NLTK's punkt sentence splitter (its data is not installed offline)"),
    "quotation": ("startend:quotation", lambda a: {}, "straight double quotes only"),
    "contains_title": ("detectable_format:title", lambda a: {}, "the same rule"),
    "n_paragraphs": ("length_constraints:number_paragraphs", lambda a: {"num_paragraphs": a["n"]},
                     "paragraphs split at *** dividers, not at blank lines"),
    "postscript": ("detectable_content:postscript", lambda a: {"postscript_marker": a.get("marker", "P.S.")},
                   "the marker anywhere, with nothing needed before or after it"),
    "word_repeat": ("keywords:frequency", lambda a: {"keyword": a["word"], "frequency": a["n"], "relation": "at least"},
                    "a keyword counts inside a longer word"),
    "placeholders": ("detectable_content:number_placeholders", lambda a: {"num_placeholders": a["n"]},
                     "repeated placeholders count again"),
    "highlights": ("detectable_format:number_highlighted_sections", lambda a: {"num_highlights": a["n"]},
                   "the same rule"),
    "two_responses": ("combination:two_responses", lambda a: {}, "the same rule"),
    "capital_words": ("change_case:capital_word_frequency",
                      lambda a: {"capital_frequency": a["n"], "capital_relation": "at least"},
                      "NLTK word tokens (its data is not installed offline); a reply all in capitals passes"),
    "choose_one": ("detectable_format:constrained_response", lambda a: {},
                   "only for the yes/no/maybe options; naming several passes"),
}
NOT_SHARED = {"numbered_list": "IFEval has no numbered-list instruction", "starts_with": "IFEval has no opening check",
              "sections": "IFEval's sections are numbered 'SECTION X' splitters, not given headers",
              "wrapped": "IFEval wraps only in double quotes (startend:quotation)",
              "hashtags": "no IFEval instruction", "ends_with_question": "no IFEval instruction"}


def registry() -> dict:
    """The official checkers by instruction id; a ConfigError says how to install them."""
    try:
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    except ImportError as err:
        raise ConfigError("the official IFEval checkers are not installed: pip install 'if-verifiable>=0.1.2,<0.2' "
                          f"(Python 3.11+; `make install` does it) ({err})") from err
    return dict(INSTRUCTION_DICT)


def _checker(instruction_id: str, kwargs: Mapping, prompt: str, reg: Mapping):
    checker = reg[instruction_id](instruction_id)
    checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        checker.build_description(prompt=prompt)
    return checker


def validate_row(row, reg: Mapping | None = None) -> None:
    """Raise DataError naming the row's key unless it is an official IFEval row: key (an integer),
    prompt (a non-empty string), instruction_id_list (known official ids) and kwargs (one mapping per
    instruction, with every argument its checker takes: a missing one would be drawn at random)."""
    import inspect

    reg = registry() if reg is None else reg
    if not isinstance(row, Mapping):
        raise DataError(f"an official IFEval row must be a mapping, got {type(row).__name__}")
    key = row.get("key")
    where = f"official IFEval row key={key!r}"
    if not isinstance(key, int) or isinstance(key, bool):
        raise DataError(f"{where}: 'key' must be an integer")
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise DataError(f"{where}: 'prompt' must be a non-empty string")
    ids, kwargs = row.get("instruction_id_list"), row.get("kwargs")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise DataError(f"{where}: 'instruction_id_list' must be a non-empty list of instruction ids")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, Mapping) for k in kwargs):
        raise DataError(f"{where}: 'kwargs' must be a list of {len(ids)} mappings, one per instruction")
    for iid, kw in zip(ids, kwargs):
        if iid not in reg:
            raise DataError(f"{where}: unknown instruction id {iid!r}")
        params = [p for p in inspect.signature(reg[iid].build_description).parameters if p != "self"]
        given = {k for k, v in kw.items() if v is not None}
        missing, unknown = set(params) - given, given - set(params)
        if missing or unknown:
            raise DataError(f"{where}: {iid} takes {params or 'no arguments'}; missing {sorted(missing)}, "
                            f"unknown {sorted(unknown)}")


def load_official_rows(dataset: str = OFFICIAL_DATASET) -> list[dict]:
    """google/IFEval's rows from the Hub, each validated; a ConfigError when the Hub does not answer."""
    from datasets import load_dataset

    try:
        split = load_dataset(dataset, split="train")
    except Exception as err:  # offline: datasets raises ConnectionError, OSError or its own errors
        raise ConfigError(f"{dataset} could not be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]}): "
                          "the official IFEval needs the Hugging Face Hub") from err
    rows = [dict(r) for r in split]
    reg = registry()
    for row in rows:
        validate_row(row, reg)
    return rows


def score_row(row: Mapping, reply: str, reg: Mapping | None = None) -> dict:
    """One reply against one official row: strict and loose pass per instruction (the official
    evaluation, `if_verifiable.common.evaluate_instructions`)."""
    from if_verifiable.common import evaluate_instructions

    reg = registry() if reg is None else reg
    validate_row(row, reg)
    results, _ = evaluate_instructions(reply, row["instruction_id_list"], row["kwargs"], row["prompt"], reg)
    strict = [bool(r.strict_pass) for r in results] or [False] * len(row["instruction_id_list"])
    loose = [bool(r.loose_pass) for r in results] or [False] * len(row["instruction_id_list"])
    return {"key": row["key"], "strict": strict, "loose": loose}


def official_scores(rows: Sequence[Mapping], replies: Sequence[str], *, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Prompt-level (Wilson) and instruction-level (bootstrap over prompts) accuracy, strict and loose,
    and the published measure (mean of the two strict ones)."""
    reg = registry()
    scored = [score_row(r, t, reg) for r, t in zip(rows, replies, strict=True)]
    out = {"n_prompts": len(rows)}
    for mode in ("strict", "loose"):
        out[f"prompt_level_{mode}"] = rate([all(s[mode]) for s in scored])
        pairs = [[sum(s[mode]), len(s[mode])] for s in scored]
        lo, hi = bootstrap_ci(pairs, stat=pooled_ratio, n_resamples=n_resamples, seed=seed)
        out[f"instruction_level_{mode}"] = {"value": pooled_ratio(pairs), "ci": [lo, hi]}
    out["published_measure"] = (out["prompt_level_strict"]["value"] + out["instruction_level_strict"]["value"]) / 2
    return out


def checkers_offline(reg: Mapping | None = None) -> dict[str, str]:
    """{official id of a shared type: "runs" or why not}: each checker tried on a short text."""
    reg = registry() if reg is None else reg
    out = {}
    for check, (iid, kwargs, _) in SHARED.items():
        example = {"n": 2, "words": ["sun"], "phrase": "Bye.", "marker": "P.S.", "word": "sun"}
        try:
            _checker(iid, kwargs(example), "Say hi.", reg).check_following("Hi there. The SUN is up. Bye.")
            out[iid] = "runs"
        except LookupError as err:  # NLTK data missing: say which
            found = re.search(r"Resource \W*(\w+)", str(err))
            out[iid] = f"does not run offline: NLTK data {found.group(1) if found else ''} not installed".replace("  ", " ")
    return out


def check_with_official(check: Mapping, reply: str, prompt: str, reg: Mapping, offline: Mapping[str, str],
                        *, echo_proof: bool = True) -> bool | None:
    """One project (or OOD) check decided by the official checker of its type, echo-proof as
    `sftlab.ifeval.score_reply` is; None when the type is not shared or its checker cannot run."""
    if check["type"] not in SHARED:
        return None
    iid, kwargs, _ = SHARED[check["type"]]
    args = {k: v for k, v in check.items() if k != "type"}
    if offline.get(iid) != "runs" or (check["type"] == "choose_one" and args.get("options") != _YES_NO):
        return None
    checker = _checker(iid, kwargs(args), prompt, reg)
    own = strip_echo(reply, prompt) if echo_proof else reply
    return bool(own.strip()) and bool(checker.check_following(reply)) and (own is reply or bool(checker.check_following(own)))


def _mixed_values(rows: Sequence[Mapping], system: str, reg: Mapping, offline: Mapping[str, str],
                  checks_registry: Mapping | None) -> list[float]:
    """Per prompt 0/1: every check passed, decided by the official checker where the type is shared
    and it runs offline, by the project's checker otherwise (both echo-proof)."""
    from .ifeval import CHECKS, _check_args

    registry_ = CHECKS if checks_registry is None else checks_registry
    out = []
    for row in rows:
        prompt, reply = row["prompt"][-1]["content"], row["replies"][system]["text"]
        own = strip_echo(reply, prompt)
        passed = []
        for check in row["checks"]:
            official = check_with_official(check, reply, prompt, reg, offline)
            if official is None:
                fn, args = registry_[check["type"]], _check_args(check)
                official = bool(own.strip()) and fn(reply, **args) and fn(own, **args)
            passed.append(bool(official))
        out.append(float(all(passed)))
    return out


def _agreement(rows: Sequence[Mapping], reg: Mapping, offline: Mapping[str, str], checks_registry) -> dict:
    """Per shared type whose checker runs: how often the official and the project checker give the same
    verdict on the run's replies (every system, the replies as written)."""
    from .ifeval import CHECKS, _check_args

    registry_ = CHECKS if checks_registry is None else checks_registry
    same: dict[str, list[bool]] = {}
    for row in rows:
        prompt = row["prompt"][-1]["content"]
        for reply in row["replies"].values():
            for check in row["checks"]:
                official = check_with_official(check, reply["text"], prompt, reg, offline, echo_proof=False)
                if official is not None:
                    project = bool(registry_[check["type"]](reply["text"], **_check_args(check)))
                    same.setdefault(check["type"], []).append(official == project)
    return {t: rate(v) for t, v in sorted(same.items())}


def _prompt_set(rows: Sequence[Mapping], systems: Sequence[str], reg, offline, checks_registry, *,
                n_resamples: int, seed: int, set_: str) -> dict:
    values = {s: _mixed_values(rows, s, reg, offline, checks_registry) for s in systems}
    pairs = [("sft", "base_chat"), ("sft", "reference")]
    comparisons = [paired_entry(a, b, set_, "prompt_level", values[a], values[b], n_resamples=n_resamples, seed=seed)
                   for a, b in pairs if a in values and b in values]
    types = sorted({c["type"] for r in rows for c in r["checks"]})
    return {"systems": {s: {"prompt_level": rate(v)} for s, v in values.items()},
            "comparisons": [c for c in comparisons if c],
            "checker": {t: "official" if t in SHARED and offline.get(SHARED[t][0]) == "runs" else "project" for t in types},
            "agreement": _agreement(rows, reg, offline, checks_registry)}


def official_section(samples: Sequence[Mapping], official_rows: Sequence[Mapping] | None, *, n_resamples: int,
                     seed: int) -> dict:
    """metrics.json's "official_ifeval": the official benchmark when `official_rows` (samples rows of
    set "official_ifeval" with replies) are given, else a note that it was not used; in both cases the
    shared-type table, which official checkers run offline, and the project's IFEval-style and OOD
    prompts scored with the official checker for the shared types."""
    from importlib.metadata import version

    from .ood import OOD_CHECKS

    try:
        reg = registry()
    except ConfigError as err:  # the package is not installed (Python 3.10): the section says so
        return {"used": False, "note": f"{NOT_USED}; {err}", "dataset": OFFICIAL_DATASET}
    offline = checkers_offline(reg)
    out: dict = {"used": bool(official_rows), "note": None if official_rows else NOT_USED,
                 "dataset": OFFICIAL_DATASET, "checkers_package": f"if-verifiable {version('if-verifiable')}",
                 "runs_offline": offline,
                 "shared_types": {t: {"official": iid, "differs": note} for t, (iid, _, note) in SHARED.items()},
                 "not_shared": NOT_SHARED}
    for set_, checks_registry in (("ifeval", None), ("ood", OOD_CHECKS)):
        rows = [r for r in samples if r.get("set") == set_]
        if rows:
            systems = list(rows[0]["replies"])
            out[f"{set_}_with_official_checkers"] = _prompt_set(rows, systems, reg, offline, checks_registry,
                                                                n_resamples=n_resamples, seed=seed, set_=set_)
    if official_rows:
        systems = list(official_rows[0]["replies"])
        rows = [{"key": r["key"], "prompt": r["prompt"][-1]["content"], "instruction_id_list": r["instruction_id_list"],
                 "kwargs": r["kwargs"]} for r in official_rows]
        out["systems"] = {s: official_scores(rows, [r["replies"][s]["text"] for r in official_rows],
                                             n_resamples=n_resamples, seed=seed) for s in systems}
        flags = {s: [float(all(score_row(row, r["replies"][s]["text"], reg)["strict"]))
                     for row, r in zip(rows, official_rows)] for s in systems}
        out["comparisons"] = [c for c in (paired_entry(a, b, "official_ifeval", "prompt_level_strict", flags[a], flags[b],
                                                       n_resamples=n_resamples, seed=seed)
                                          for a, b in (("sft", "base_chat"), ("sft", "reference"))
                                          if a in flags and b in flags) if c]
    return out


def official_sample_rows(rows: Sequence[Mapping], systems: Sequence[str], done: Mapping) -> list[dict]:
    """samples.jsonl rows of set "official_ifeval": each official row with every system's reply
    (jobs "official_ifeval-SYSTEM" of `sftlab.extra.run_jobs`)."""
    return [{"set": "official_ifeval", "id": str(r["key"]), "key": r["key"],
             "prompt": [{"role": "user", "content": r["prompt"]}], "reference": None,
             "instruction_id_list": r["instruction_id_list"], "kwargs": r["kwargs"],
             "replies": {s: dict(done[f"official_ifeval-{s}"]["replies"][i]) for s in systems}}
            for i, r in enumerate(rows)]
