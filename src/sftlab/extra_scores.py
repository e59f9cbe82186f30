"""Scores of the sets `sftlab evaluate-extra` adds, computed from their samples.jsonl rows.

The rows hold everything (question records, checks, replies, stop flags), so `sftlab rescore`
recomputes these sections from them too, as it does the run's own. Each section of metrics.json
has "systems" (every metric with its 95% interval: Wilson for rates, bootstrap for the
instruction-level ratio and for rates averaged over sampling seeds) and "comparisons" (paired
differences on the same prompts, rows shaped as metrics.json's own "comparisons", `sftlab.stats`):

  qa        accuracy, attempt rate, stop rate, per kind (`sftlab.qa`); base_fewshot as a system
  ood       prompt- and instruction-level accuracy on the untrained instruction types (`sftlab.ood`)
  decoding  sft and reference under other decoding settings (`DECODING_METRICS`), each against
            the other and against the run's own greedy replies, and whether the greedy verdict
            of sft against reference survives (`decoding_conclusions`)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from . import ifeval as ifeval_mod
from .categories import category, category_counts
from .ood import OOD_CHECKS, ood_accuracy, ood_values
from .qa import qa_scores, qa_values
from .scoring import COMPARISONS, paired_entry
from .stats import bootstrap_ci, rate, verdict

# Pairs compared on the question set beyond the run's own: the base model with a chat template
# and the trained model against the base model's few-shot plain-text answers.
QA_COMPARISONS = (*COMPARISONS, ("sft", "base_fewshot"), ("base_chat", "base_fewshot"),
                  ("reference", "base_fewshot"))
GREEDY = "greedy"  # the run's own replies: greedy decoding at the recipe's token limit
DECODING_METRICS = {"heldout": ("stop_rate",), "ifeval": ("prompt_level", "stop_rate")}
DECODING_SYSTEMS = ("sft", "reference")


def _comparisons(values: Mapping[str, Mapping[str, list]], pairs, set_: str, *, n_resamples: int,
                 seed: int, **extra) -> list[dict]:
    rows = []
    for a, b in pairs:
        if a not in values or b not in values:
            continue
        for metric, va in values[a].items():
            vb = values[b].get(metric)
            if vb is None or metric == "category":
                continue
            entry = paired_entry(a, b, set_, metric, va, vb, n_resamples=n_resamples, seed=seed)
            if entry is not None:
                rows.append({**entry, **extra})
    return rows


def qa_item(row: Mapping) -> dict:
    """The question record a samples.jsonl "qa" row carries."""
    keys = ("id", "kind", "answers", "distractors", "tolerance", "provenance")
    return {"question": row["prompt"][-1]["content"], **{k: row[k] for k in keys if k in row}}


def score_qa(rows: Sequence[Mapping], *, n_resamples: int, seed: int) -> dict:
    """The "qa" section from the question rows; also writes each reply's `correct`, `attempted` and
    `category` into the rows."""
    items = [qa_item(r) for r in rows]
    systems = list(rows[0]["replies"])
    out, values = {}, {}
    for s in systems:
        replies = [r["replies"][s] for r in rows]
        v = qa_values(items, replies)
        for reply, ok, tried, cat in zip(replies, v["accuracy"], v["attempt_rate"], v["category"]):
            reply.update(correct=bool(ok), attempted=bool(tried), category=cat)
        out[s] = qa_scores(items, replies, values=v)
        values[s] = {k: v[k] for k in ("accuracy", "attempt_rate", "stop_rate")}
    return {"n_items": len(items), "kinds": sorted({i["kind"] for i in items}), "systems": out,
            "comparisons": _comparisons(values, QA_COMPARISONS, "qa", n_resamples=n_resamples, seed=seed)}


def _ood_record(row: Mapping) -> dict:
    return {"id": row["id"], "prompt": row["prompt"][-1]["content"], "checks": row["checks"]}


def score_ood(rows: Sequence[Mapping], *, n_resamples: int, seed: int) -> dict:
    """The "ood" section from the OOD prompt rows; writes each reply's `checks_passed` and `category`."""
    records = [_ood_record(r) for r in rows]
    out, values = {}, {}
    for s in rows[0]["replies"]:
        replies = [r["replies"][s] for r in rows]
        texts = [r["text"] for r in replies]
        entry = ood_accuracy(records, texts, n_resamples=n_resamples, seed=seed)
        stops = [float(bool(r["stopped"])) for r in replies]
        cats = [category(t, stopped=bool(st), prompt=rec["prompt"]) for t, st, rec in zip(texts, stops, records)]
        for reply, rec, cat in zip(replies, records, cats):
            reply["checks_passed"] = ifeval_mod.score_reply(rec, reply["text"], checks=OOD_CHECKS)["instruction_results"]
            reply["category"] = cat
        out[s] = {**entry, "stop_rate": rate(stops), "categories": category_counts(cats)}
        values[s] = {**ood_values(records, texts), "stop_rate": stops}
    return {"n_prompts": len(records), "types": sorted(OOD_CHECKS), "systems": out,
            "comparisons": _comparisons(values, COMPARISONS, "ood", n_resamples=n_resamples, seed=seed)}


# --------------------------------------------------------------------------- decoding robustness


def _mean_rate(per_prompt: list[float], *, n_resamples: int, seed: int) -> dict:
    """A rate averaged over sampling seeds: the mean of per-prompt shares, with a bootstrap interval
    over prompts (the seeds of one prompt are not independent draws, so no Wilson interval)."""
    low, high = bootstrap_ci(per_prompt, n_resamples=n_resamples, seed=seed)
    return {"value": float(np.mean(per_prompt)), "ci": [low, high], "n": len(per_prompt)}


def decoding_values(source_rows: Mapping[str, Sequence[Mapping]], rows: Sequence[Mapping]) -> dict:
    """{system: {setting: {"set/metric": per-prompt values}}} for the decoding subset. `source_rows`:
    the run's own held-out and IFEval rows of the subset (its greedy replies); `rows`: the
    "decoding" rows, each naming its setting, source set and source id."""
    base = {(set_, str(r["id"])): r for set_, set_rows in source_rows.items() for r in set_rows}
    settings: dict[str, dict] = {GREEDY: {k: r["replies"] for k, r in base.items()}}
    for r in rows:
        settings.setdefault(r["setting"], {})[(r["source_set"], str(r["source_id"]))] = r["replies"]
    out: dict = {}
    for setting, got in settings.items():
        for s in DECODING_SYSTEMS:
            vals = out.setdefault(s, {}).setdefault(setting, {})
            for set_, metrics in DECODING_METRICS.items():
                keys = [(set_, str(r["id"])) for r in source_rows.get(set_, [])]
                if not keys or any(k not in got or s not in got[k] for k in keys):
                    continue
                replies = [got[k][s] for k in keys]
                vals[f"{set_}/stop_rate"] = [float(bool(r["stopped"])) for r in replies]
                if "prompt_level" in metrics:
                    records = [{"id": k[1], "prompt": base[k]["prompt"][-1]["content"], "checks": base[k]["checks"]}
                               for k in keys]
                    vals[f"{set_}/prompt_level"] = ifeval_mod.ifeval_values(records, [r["text"] for r in replies])[
                        "prompt_level"]
    return out


def _pool_seeds(values: dict) -> dict:
    """Settings "sample-...-seedN" pooled into "sample-..." (per-prompt mean over seeds)."""
    pooled: dict = {}
    for s, settings in values.items():
        groups: dict[str, list[dict]] = {}
        for setting, vals in settings.items():
            if "-seed" in setting:
                groups.setdefault(setting.rsplit("-seed", 1)[0], []).append(vals)
        for name, runs in groups.items():
            keys = set.intersection(*(set(r) for r in runs))
            pooled.setdefault(s, {})[name] = {k: list(np.mean([r[k] for r in runs], axis=0)) for k in sorted(keys)}
    return pooled


def score_decoding(source_rows: Mapping[str, Sequence[Mapping]], rows: Sequence[Mapping], *, settings: Mapping,
                   n_resamples: int, seed: int) -> dict:
    """The "decoding" section: each system's metrics per setting (Wilson intervals; sampled settings
    also pooled over seeds, bootstrap), paired sft - reference per setting, each setting against
    the run's greedy replies per system, and the conclusions (`decoding_conclusions`)."""
    values = decoding_values(source_rows, rows)
    pooled = _pool_seeds(values)
    systems: dict = {}
    for s in values:
        systems[s] = {setting: {k: rate(v) for k, v in vals.items()} for setting, vals in values[s].items()}
        for name, vals in pooled.get(s, {}).items():
            systems[s][name] = {k: _mean_rate(v, n_resamples=n_resamples, seed=seed) for k, v in vals.items()}
    comparisons = []
    all_values = {s: {**values[s], **pooled.get(s, {})} for s in values}
    names = sorted({n for s in all_values.values() for n in s})
    for setting in names:
        pair = {s: all_values[s].get(setting, {}) for s in DECODING_SYSTEMS if s in all_values}
        comparisons += [{**c, "setting": setting} for c in _comparisons(pair, [DECODING_SYSTEMS], "decoding",
                                                                         n_resamples=n_resamples, seed=seed)]
        if setting == GREEDY:
            continue
        for s in all_values:
            if setting in all_values[s] and GREEDY in all_values[s]:
                pair = {setting: all_values[s][setting], GREEDY: all_values[s][GREEDY]}
                comparisons += [{**c, "system": s, "setting": setting}
                                for c in _comparisons(pair, [(setting, GREEDY)], "decoding",
                                                      n_resamples=n_resamples, seed=seed)]
    return {"settings": dict(settings), "n_prompts": {k: len(v) for k, v in source_rows.items()},
            "systems": systems, "comparisons": comparisons,
            "conclusions": decoding_conclusions(comparisons)}


def decoding_conclusions(comparisons: Sequence[Mapping]) -> list[dict]:
    """For each metric: sft against reference under the run's greedy decoding and under every other setting, the
    verdict each time ("better", "worse", "unclear" for sft, from the paired interval) and whether
    it is the greedy verdict ("survives")."""
    head = {(c["metric"]): c for c in comparisons if c["a"] == "sft" and c.get("setting") == GREEDY}
    out = []
    for c in comparisons:
        if c["a"] != "sft" or c["b"] != "reference" or c.get("setting") == GREEDY or c["metric"] not in head:
            continue
        base = head[c["metric"]]
        v0, v1 = verdict(base, "higher"), verdict(c, "higher")
        out.append({"metric": c["metric"], "setting": c["setting"], "greedy_difference": base["difference"],
                    "greedy_verdict": v0, "difference": c["difference"], "ci": c["ci"], "verdict": v1,
                    "survives": v0 == v1})
    return out


# Sets `sftlab evaluate-extra` adds to samples.jsonl; `sftlab rescore` keeps their rows and re-scores them here.
EXTRA_SAMPLE_SETS = frozenset({"qa", "ood", "decoding", "judge", "official_ifeval"})


def rescore_sections(samples: Sequence[Mapping], metrics: Mapping, *, n_resamples: int, seed: int) -> dict:
    """The sections of metrics.json recomputed from the rows of `samples` (the run's own rows and the
    extra sets'), for the sets a run has: qa, ood, decoding (the judge's verdicts need its model and stay
    as they are; official_ifeval's shared-type scores are redone, without the Hub)."""
    by_set: dict[str, list] = {}
    for row in samples:
        by_set.setdefault(row.get("set"), []).append(row)
    out: dict = {}
    if by_set.get("qa"):
        out["qa"] = {**metrics.get("qa", {}), **score_qa(by_set["qa"], n_resamples=n_resamples, seed=seed)}
    if by_set.get("ood"):
        out["ood"] = {**metrics.get("ood", {}), **score_ood(by_set["ood"], n_resamples=n_resamples, seed=seed)}
    if by_set.get("decoding") and "decoding" in metrics:
        wanted = {(r["source_set"], str(r["source_id"])) for r in by_set["decoding"]}
        source = {s: [r for r in by_set.get(s, []) if (s, str(r["id"])) in wanted] for s in DECODING_METRICS}
        out["decoding"] = score_decoding(source, by_set["decoding"], settings=metrics["decoding"].get("settings", {}),
                                         n_resamples=n_resamples, seed=seed)
    if "official_ifeval" in metrics:
        from .official_ifeval import official_section

        out["official_ifeval"] = official_section(samples, by_set.get("official_ifeval"), n_resamples=n_resamples,
                                                  seed=seed)
    return out
