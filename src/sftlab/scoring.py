"""Scoring a run's replies and losses into metrics.json, and `sftlab rescore`, which redoes it from samples.jsonl.

`sftlab run` calls `score_systems` and `score_losses` once every system has replied; `rescore`
calls `score_systems` again on a finished run folder (no model loaded) after a metric changes,
replaces metrics.json and notes in run.json what moved. `write_json_atomic` is the one JSON
writer that a crash cannot leave half-written, shared with the run's stage files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from .config import EVAL_DEFAULTS
from .errors import ConfigError
from .runinfo import git_commit


def write_json_atomic(path: Path, value, indent: int | None = None) -> None:
    """Write JSON through a temporary file renamed into place: a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=indent))
    tmp.replace(path)


def score_systems(
    replies: dict, heldout_refs: list[str], if_records: list[dict], *, embeddings: bool, n_resamples: int, seed: int
) -> dict:
    """The reply metrics of every system: {system: {"heldout": {...}, "ifeval": {...}}}.

    `replies[system]` holds "heldout" and "ifeval" lists of {"text", "stopped"}, aligned
    with `heldout_refs` and `if_records`. Used by a run and by `rescore`.
    """
    from . import ifeval as ifeval_mod
    from . import metrics as M

    out = {}
    for label, rep in replies.items():
        if len(rep["heldout"]) != len(heldout_refs):
            raise ValueError(f"{label}: {len(rep['heldout'])} held-out replies for {len(heldout_refs)} references")
        records = [{"reply": r["text"], "reference": ref, "stopped": r["stopped"]}
                   for r, ref in zip(rep["heldout"], heldout_refs)]
        entry = {"heldout": M.summarize(records, embeddings=embeddings, n_resamples=n_resamples, seed=seed)}
        if if_records:
            entry["ifeval"] = ifeval_mod.ifeval_accuracy(if_records, [r["text"] for r in rep["ifeval"]],
                                                         n_resamples=n_resamples, seed=seed)
            entry["ifeval"]["stop_rate"] = M.stop_rate([r["stopped"] for r in rep["ifeval"]])
        out[label] = entry
    return out


def score_losses(losses: dict, *, n_resamples: int, seed: int) -> dict:
    """Held-out assistant-token loss per system, pooled over tokens, with a bootstrap CI over conversations."""
    from . import metrics as M

    out = {}
    for label, loss in losses.items():
        rows = [[s, n] for s, n in loss["per_conversation"] if n > 0]
        lo, hi = M.bootstrap_ci(rows, stat=M.pooled_ratio, n_resamples=n_resamples, seed=seed)
        out[label] = {
            "mean_nll": loss["mean_nll"], "ci": [lo, hi],
            "perplexity": M.perplexity(loss["mean_nll"]), "n_conversations": len(rows),
            "n_tokens": int(sum(n for _, n in rows)),
        }
    return out


RESULT_FILES = ("config.yaml", "samples.jsonl", "metrics.json", "run.json")


def rescore(results_dir: str | Path) -> dict:
    """Recompute the reply metrics of a finished run from its samples.jsonl; no model is loaded.

    For a change to a metric (e.g. a better role-leak rule): the replies, stop flags,
    references and IFEval checks are all in samples.jsonl. The held-out loss needs the
    model and is kept as it is. metrics.json is replaced atomically and run.json gains a
    "rescored" entry (when, at which commit, which values changed). Returns that entry.
    """
    folder = Path(results_dir)
    missing = [f for f in RESULT_FILES if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"{folder} is not a finished run folder: missing {', '.join(missing)}")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    eval_cfg = {**EVAL_DEFAULTS, **(config.get("evaluation") or {})}
    old = json.loads((folder / "metrics.json").read_text())
    replies: dict = {s: {"heldout": [], "ifeval": []} for s in old["systems"]}
    heldout_refs, if_records = [], []
    with open(folder / "samples.jsonl", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            row = _sample_row(line, lineno, set(replies))
            if row["set"] == "heldout":
                heldout_refs.append(row["reference"])
            else:
                if_records.append({"id": row["id"], "prompt": row["prompt"][-1]["content"], "checks": row["checks"]})
            for s, r in row["replies"].items():
                replies[s][row["set"]].append({"text": r["text"], "stopped": r["stopped"]})
    systems = score_systems(replies, heldout_refs, if_records, embeddings=bool(eval_cfg["embedding_similarity"]),
                            n_resamples=int(eval_cfg["bootstrap_resamples"]), seed=int(config.get("seed", 0)))

    def value(tree, s, part, key):
        item = tree.get(s, {}).get(part, {}).get(key)
        return item.get("value") if isinstance(item, dict) else None

    changed = {
        f"{s}.{part}.{key}": [value(old["systems"], s, part, key), value(systems, s, part, key)]
        for s, parts in systems.items() for part, new in parts.items() for key in new
        if value(systems, s, part, key) is not None
        and value(old["systems"], s, part, key) != value(systems, s, part, key)
    }
    write_json_atomic(folder / "metrics.json", {**old, "systems": systems}, indent=2)
    run = json.loads((folder / "run.json").read_text())
    entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_commit": git_commit(),
             "changed": changed}
    run.setdefault("rescored", []).append(entry)
    write_json_atomic(folder / "run.json", run, indent=2)
    return entry


# Keys `rescore` reads from each samples.jsonl row, by prompt set, and from each reply.
_SAMPLE_KEYS = {"heldout": ("id", "replies", "reference"), "ifeval": ("id", "replies", "prompt", "checks")}
_REPLY_KEYS = ("text", "stopped")


def _sample_row(line: str, lineno: int, systems: set) -> dict:
    """One samples.jsonl row, checked; a bad row raises ConfigError naming its line, id and the key."""
    where = f"samples.jsonl line {lineno}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc.msg})") from None
    where += f" ({row.get('id')})"
    if row.get("set") not in _SAMPLE_KEYS:
        raise ConfigError(f"{where}: unknown set {row.get('set')!r}; expected one of {sorted(_SAMPLE_KEYS)}")
    missing = [k for k in _SAMPLE_KEYS[row["set"]] if k not in row]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    if set(row["replies"]) != systems:
        raise ConfigError(f"{where}: systems {sorted(row['replies'])} differ from metrics.json's {sorted(systems)}")
    for s, r in row["replies"].items():
        missing = [k for k in _REPLY_KEYS if k not in r]
        if missing:
            raise ConfigError(f"{where}: reply of {s} has no {', '.join(missing)}")
    return row
