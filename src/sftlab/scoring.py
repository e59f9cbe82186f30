"""Scoring a run's replies and held-out losses into metrics.json.

`sftlab run` (and `sftlab rescore`, see `sftlab.rescore`) turns every system's replies into:
- per system and prompt set, every metric with a 95% interval: a Wilson interval for rates
  (stop, role leak, canned replies, IFEval pass rates), a percentile bootstrap over prompts
  otherwise; the reply categories (`sftlab.categories`);
- `comparisons`: for each pair of systems the book compares, the paired difference on every
  metric with per-prompt values (same prompts, resampled together: `sftlab.stats`);
- the held-out loss of the reference replies, over all learned tokens and split into
  content tokens and the end-of-turn tokens that close each reply.
`write_json_atomic` is the one JSON writer a crash cannot leave half-written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .categories import canned, category, category_counts
from .errors import DataError
from .stats import bootstrap_ci, paired_difference, pooled_ratio, rate

# (a, b): the book compares a against b. Pairs whose systems a run did not evaluate are skipped.
COMPARISONS = (
    ("sft", "base_chat"),  # the effect of training
    ("sft", "reference"),  # against a published post-trained model
    ("base_chat", "base_continuation"),  # the effect of the template alone
    ("sft", "sft_continuation"),  # the trained model with and without its template
    ("preference", "sft"),  # what the preference stage added (sftlab.preference)
    ("preference", "reference"),  # the preference model against the published one
)
MATCHED_WORDS = 30  # distinct-2 over each reply's first 30 words: diversity at a matched length
RATES = ("stop_rate", "role_leak_rate", "canned_rate", "prompt_level")  # Wilson intervals


def write_json_atomic(path: Path, value, indent: int | None = None) -> None:
    """Write JSON through a temporary file renamed into place: a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=indent))
    tmp.replace(path)


def _field(records: Sequence[Mapping], name: str) -> list | None:
    """The values of `name` if every record has it, None if none has it; a mix is an error."""
    present = [r.get(name) is not None for r in records]
    if not any(present):
        return None
    if not all(present):
        i = present.index(False)
        raise DataError(f"record {i} has no {name!r}, but other records do: give it to all or none")
    return [r[name] for r in records]


def _stat(metric: str):
    """The statistic of a metric's per-prompt values: a pooled ratio for rows, else the mean."""
    from . import metrics as M

    if metric == "bleu":
        return M.bleu_from_stats
    if metric == "perplexity":
        return lambda rows: M.perplexity(pooled_ratio(rows))
    if metric == "instruction_level":
        return pooled_ratio
    return np.mean


def reply_values(records: Sequence[Mapping], *, embeddings: bool = False, tokenizer=None) -> dict:
    """Per-reply values of every metric that has them, aligned with `records` (None where a
    reply has no value, e.g. distinct-2 of a reply shorter than `MATCHED_WORDS`).

    Each record: "reply" (required), optional "reference", "stopped", "prompt" (the text the
    reply answers: enables the echo category), "mean_nll" with "n_tokens". Pooled metrics
    (BLEU, perplexity) get rows of sufficient statistics. Also returns "category" per reply.
    """
    from . import metrics as M

    if not records:
        raise ValueError("reply_values needs at least one record")
    replies = _field(records, "reply")
    if replies is None:
        raise DataError("records have no 'reply' field")
    stopped = _field(records, "stopped")
    prompts = _field(records, "prompt") or [""] * len(replies)
    cats = [category(r, stopped=bool(s) if stopped is not None else True, prompt=p)
            for r, s, p in zip(replies, stopped or [True] * len(replies), prompts)]
    values: dict = {
        "reply_length": [float(M.reply_length(r, tokenizer)) for r in replies],
        "role_leak_rate": [float(M.role_leak(r)) for r in replies],
        "canned_rate": [float(canned(c)) for c in cats],
        "distinct_2_matched": [M.distinct_n([" ".join(M.words(r)[:MATCHED_WORDS])], 2)
                               if M.count_words(r) >= MATCHED_WORDS else None for r in replies],
        "category": cats,
    }
    if stopped is not None:
        values["stop_rate"] = [float(bool(s)) for s in stopped]
    references = _field(records, "reference")
    if references is not None:
        values["rougeL"] = M.rouge_l_per_item(replies, references)
        values["bleu"] = [M.bleu_item_stats(p, r) for p, r in zip(replies, references)]
        if embeddings:
            values["embedding_similarity"] = M.embedding_similarity(replies, references)
    nll = _field(records, "mean_nll")
    if nll is not None:
        n_tokens = _field(records, "n_tokens") or [1] * len(nll)
        values["perplexity"] = [[float(m) * t, t] for m, t in zip(nll, n_tokens)]
    return values


def _entry(metric: str, values: list, *, n_resamples: int, confidence: float, seed: int) -> dict:
    """One metric's {"value", "ci"} from per-prompt values (None values left out, counted in "n")."""
    present = [v for v in values if v is not None]
    if metric in RATES:
        return rate(present)
    stat = _stat(metric)
    low, high = bootstrap_ci(present, stat=stat, n_resamples=n_resamples, confidence=confidence, seed=seed)
    out = {"value": float(stat(np.asarray(present, dtype=float))), "ci": [low, high]}
    if len(present) != len(values):
        out["n"] = len(present)
    return out


def summarize(
    records: Sequence[Mapping],
    *,
    embeddings: bool = False,
    tokenizer=None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    values: dict | None = None,
) -> dict:
    """All metrics for one system's replies, as a JSON-ready dict (see `reply_values` for records;
    pass `values` when they are already computed).

    Rates get a Wilson interval, other metrics a percentile bootstrap over prompts (BLEU and
    perplexity through their pooled statistics). distinct-1/2 over all replies are corpus
    statistics without an interval (resampling duplicates a reply's own n-grams) and depend
    on reply length; `distinct_2_matched` compares at a matched length (each reply's first
    `MATCHED_WORDS` words, replies at least that long). "categories" counts the reply
    categories; "canned_rate" is the share of deflections and bare greetings.
    [{"reply": "Paris.", "reference": "Paris.", "stopped": True}] ->
    {"n": 1, "rougeL": {"value": 1.0, "ci": [1.0, 1.0]}, "stop_rate": {...}, ...}
    """
    from . import metrics as M

    values = values or reply_values(records, embeddings=embeddings, tokenizer=tokenizer)
    replies = [r["reply"] for r in records]
    out: dict = {"n": len(replies)}
    for metric, vals in values.items():
        if metric == "category":
            continue
        if metric == "distinct_2_matched" and not any(v is not None for v in vals):
            out[metric] = {"value": None, "ci": None, "n": 0, "words": MATCHED_WORDS}
            continue
        out[metric] = _entry(metric, vals, n_resamples=n_resamples, confidence=confidence, seed=seed)
    out["reply_length"]["unit"] = "words" if tokenizer is None else "tokens"
    out["distinct_2_matched"]["words"] = MATCHED_WORDS
    out["distinct_2_matched"].setdefault("n", len(replies))
    if "bleu" in values:
        out["bleu"]["value"] = M.bleu(replies, [r["reference"] for r in records])
    out["distinct_1"] = {"value": M.distinct_n(replies, 1), "ci": None}
    out["distinct_2"] = {"value": M.distinct_n(replies, 2), "ci": None}
    out["categories"] = category_counts(values["category"])
    return out


def _heldout_records(rep: dict, refs: list, prompts: list | None) -> list[dict]:
    return [{"reply": r["text"], "reference": ref, "stopped": r["stopped"], "prompt": p or ""}
            for r, ref, p in zip(rep["heldout"], refs, prompts or [""] * len(refs))]


def score_replies(
    replies: dict,
    heldout_refs: list[str],
    if_records: list[dict],
    *,
    mt_records: list[dict] | None = None,
    heldout_prompts: list[str] | None = None,
    embeddings: bool,
    n_resamples: int,
    seed: int,
) -> dict:
    """Every system's reply metrics and the paired comparisons between systems.

    `replies[system]` holds "heldout", "ifeval" (and "multiturn") lists of {"text", "stopped"},
    aligned with `heldout_refs` (and `heldout_prompts`, the user text each reply answers),
    `if_records` and `mt_records` (multi-turn probes, `sftlab.multiturn`). Returns
    {"systems": {system: {"heldout": {...}, "ifeval": {...}, "multiturn": {...}}}, "comparisons": [{"a", "b", "set", "metric", "difference", "ci", "n", ...}, ...]}.
    Used by a run and by `rescore`.
    """
    from . import ifeval as ifeval_mod

    systems, values = {}, {}
    for label, rep in replies.items():
        if len(rep["heldout"]) != len(heldout_refs):
            raise ValueError(f"{label}: {len(rep['heldout'])} held-out replies for {len(heldout_refs)} references")
        entry, values[label] = {}, {}
        if heldout_refs:
            records = _heldout_records(rep, heldout_refs, heldout_prompts)
            values[label]["heldout"] = reply_values(records, embeddings=embeddings)
            entry["heldout"] = summarize(records, embeddings=embeddings, n_resamples=n_resamples, seed=seed,
                                         values=values[label]["heldout"])
        if if_records:
            texts = [r["text"] for r in rep["ifeval"]]
            entry["ifeval"] = ifeval_mod.ifeval_accuracy(if_records, texts, n_resamples=n_resamples, seed=seed)
            stops = [float(bool(r["stopped"])) for r in rep["ifeval"]]
            entry["ifeval"]["stop_rate"] = rate(stops)
            if_values = ifeval_mod.ifeval_values(if_records, texts)
            cats = [category(t, stopped=bool(s), prompt=rec["prompt"]) for t, s, rec in zip(texts, stops, if_records)]
            entry["ifeval"]["categories"] = category_counts(cats)
            entry["ifeval"]["canned_rate"] = rate([float(canned(c)) for c in cats])
            values[label]["ifeval"] = {"prompt_level": if_values["prompt_level"],
                                       "instruction_level": if_values["instruction_level"],
                                       "stop_rate": stops, "canned_rate": [float(canned(c)) for c in cats]}
        if mt_records:
            entry["multiturn"], values[label]["multiturn"] = _multiturn_scores(mt_records, rep["multiturn"])
        systems[label] = entry
    comparisons = []
    for a, b in COMPARISONS:
        if a not in values or b not in values:
            continue
        for set_, metrics in values[a].items():
            for metric, va in metrics.items():
                vb = values[b].get(set_, {}).get(metric)
                if metric == "category" or vb is None:
                    continue
                comparisons.append(paired_entry(a, b, set_, metric, va, vb, n_resamples=n_resamples, seed=seed))
    return {"systems": systems, "comparisons": [c for c in comparisons if c is not None]}


def _multiturn_scores(mt_records: list[dict], replies: list[dict]) -> tuple[dict, dict]:
    """One system's multi-turn probe scores and their per-probe values (for the comparisons)."""
    from .multiturn import score_probe

    if len(replies) != len(mt_records):
        raise ValueError(f"{len(mt_records)} multi-turn probes but {len(replies)} replies")
    scored = [score_probe(p, r["text"], stopped=bool(r["stopped"])) for p, r in zip(mt_records, replies)]
    flags = [float(s["prompt_level"]) for s in scored]
    stops = [float(bool(r["stopped"])) for r in replies]
    entry = {"prompt_level": rate(flags), "n_prompts": len(flags), "n_echoed": int(sum(s["echoed"] for s in scored)),
             # the fact's checks alone, usable reply or not: what a check-only scorer would report
             "checks_level": rate([float(s["checks_level"]) for s in scored]),
             "stop_rate": rate(stops), "categories": category_counts([s["category"] for s in scored])}
    return entry, {"prompt_level": flags, "stop_rate": stops}


def paired_entry(a: str, b: str, set_: str, metric: str, va: list, vb: list, *, n_resamples: int,
                 seed: int) -> dict | None:
    """One row of `comparisons`: a minus b on one metric, over the prompts where both have a value."""
    keep = [i for i, (x, y) in enumerate(zip(va, vb)) if x is not None and y is not None]
    if not keep:
        return None
    diff = paired_difference([va[i] for i in keep], [vb[i] for i in keep], stat=_stat(metric),
                             n_resamples=n_resamples, seed=seed)
    return {"a": a, "b": b, "set": set_, "metric": metric, **diff}


def loss_rows(per_conversation: list) -> dict:
    """Per-conversation sufficient statistics of the held-out loss: rows [nats, tokens] for all
    learned tokens, for content tokens, and for end-of-turn tokens (when the run recorded them:
    each per-conversation entry is [nats, tokens] or [nats, tokens, eot_nats, eot_tokens])."""
    rows = [list(r) for r in per_conversation if r[1] > 0]
    out = {"mean_nll": [[r[0], r[1]] for r in rows]}
    if rows and all(len(r) == 4 for r in rows):
        out["content_nll"] = [[r[0] - r[2], r[1] - r[3]] for r in rows]
        out["eot_nll"] = [[r[2], r[3]] for r in rows]
    return out


def score_losses(losses: dict, *, n_resamples: int, seed: int) -> dict:
    """Held-out loss per system, pooled over tokens, with bootstrap intervals over conversations,
    split into content and end-of-turn tokens where recorded, and the paired differences
    between the compared systems. Returns {"heldout_loss": {...}, "comparisons": [...]}."""
    from . import metrics as M

    out, rows_by_system = {}, {}
    for label, loss in losses.items():
        rows = loss_rows(loss["per_conversation"])
        rows_by_system[label] = rows
        lo, hi = bootstrap_ci(rows["mean_nll"], stat=pooled_ratio, n_resamples=n_resamples, seed=seed)
        mean = pooled_ratio(rows["mean_nll"])
        entry = {"mean_nll": mean, "ci": [lo, hi], "perplexity": M.perplexity(mean),
                 "n_conversations": len(rows["mean_nll"]), "n_tokens": int(sum(n for _, n in rows["mean_nll"]))}
        for part in ("content_nll", "eot_nll"):
            if part in rows and sum(n for _, n in rows[part]) > 0:
                kept = [r for r in rows[part] if r[1] > 0]
                plo, phi = bootstrap_ci(kept, stat=pooled_ratio, n_resamples=n_resamples, seed=seed)
                entry[part] = {"value": pooled_ratio(kept), "ci": [plo, phi],
                               "n_tokens": int(sum(n for _, n in rows[part])),
                               "nats": float(sum(s for s, _ in rows[part]))}
        out[label] = entry
    comparisons = []
    for a, b in COMPARISONS:
        if a in rows_by_system and b in rows_by_system:
            ra, rb = rows_by_system[a], rows_by_system[b]
            if len(ra["mean_nll"]) != len(rb["mean_nll"]):
                continue  # not the same conversations: no pairing
            for part in ("mean_nll", "content_nll", "eot_nll"):
                if part in ra and part in rb:
                    pairs = [i for i, (x, y) in enumerate(zip(ra[part], rb[part])) if x[1] > 0 and y[1] > 0]
                    diff = paired_difference([ra[part][i] for i in pairs], [rb[part][i] for i in pairs],
                                             stat=pooled_ratio, n_resamples=n_resamples, seed=seed)
                    comparisons.append({"a": a, "b": b, "set": "loss", "metric": part, **diff})
    return {"heldout_loss": out, "comparisons": comparisons}


def score_plain_losses(plain: dict, *, n_resamples: int, seed: int) -> dict:
    """The plain-text loss (`sftlab.plaintext`) per system, as `score_losses` scores the held-out
    loss ("n_conversations" counts passages), and the paired SFT-minus-base difference on the same
    passages (set "plain_text"): a positive difference is what training forgot.
    Returns {"plain_text_loss": {...}, "comparisons": [...]}."""
    scored = score_losses({s: {"per_conversation": rows} for s, rows in plain.items()},
                          n_resamples=n_resamples, seed=seed)
    return {"plain_text_loss": scored["heldout_loss"],
            "comparisons": [{**c, "set": "plain_text"} for c in scored["comparisons"] if c["metric"] == "mean_nll"]}


def eot_share_of_gain(heldout_loss: dict, a: str = "sft", b: str = "base_chat") -> float | None:
    """Share of the total held-out loss reduction (b minus a, in nats summed over tokens) that
    comes from the end-of-turn tokens alone; None without the split."""
    ea, eb = heldout_loss.get(a) or {}, heldout_loss.get(b) or {}
    if "eot_nll" not in ea or "eot_nll" not in eb:
        return None
    total = eb["mean_nll"] * eb["n_tokens"] - ea["mean_nll"] * ea["n_tokens"]
    eot = eb["eot_nll"]["nats"] - ea["eot_nll"]["nats"]
    return eot / total if total and math.isfinite(total) else None
