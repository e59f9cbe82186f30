"""Compare two runs: does a re-run reproduce a committed one within noise, and what did a change do?

`sftlab compare results/default OTHER/default` reads both `metrics.json` files and, for
every metric that has a 95% interval in the first run, says whether the second run's value
lies inside it. A re-run with the same recipe, seed and software on the same kind of machine
should land inside nearly every interval (with 95% intervals, about one value in twenty
may fall outside by chance even when nothing changed). `paired_run_differences` compares two
runs whose recipes differ (an ablation, the run without instruction data) prompt by prompt:
paired differences with 95% intervals, from their samples.jsonl and heldout_losses.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError


def flatten_metrics(metrics: dict) -> dict[str, dict]:
    """{"sft.heldout.rougeL": {"value": v, "ci": [lo, hi] or None}, "loss.sft.mean_nll": {...}, ...}

    Only entries with a numeric value are kept; per-type IFEval breakdowns are included
    ("sft.ifeval.per_type.max_words").
    """
    flat: dict[str, dict] = {}
    for system, parts in (metrics.get("systems") or {}).items():
        for part, entries in parts.items():
            for key, entry in entries.items():
                if key == "per_type":
                    for check, sub in entry.items():
                        flat[f"{system}.{part}.per_type.{check}"] = {"value": sub["value"], "ci": sub.get("ci")}
                elif isinstance(entry, dict) and isinstance(entry.get("value"), (int, float)):
                    flat[f"{system}.{part}.{key}"] = {"value": entry["value"], "ci": entry.get("ci")}
                elif isinstance(entry, (int, float)) and not isinstance(entry, bool):
                    flat[f"{system}.{part}.{key}"] = {"value": entry, "ci": None}
    for system, loss in (metrics.get("heldout_loss") or {}).items():
        flat[f"loss.{system}.mean_nll"] = {"value": loss["mean_nll"], "ci": loss.get("ci")}
    return flat


def compare_metrics(a: dict, b: dict) -> dict:
    """Row by row: a's value and interval, b's value, their difference, and whether b is inside a's interval.

    Returns {"rows": [...], "inside": n, "outside": [keys], "without_interval": n,
    "only_in_a": [keys], "only_in_b": [keys]}.
    """
    fa, fb = flatten_metrics(a), flatten_metrics(b)
    rows, outside, without = [], [], 0
    for key in fa:
        if key not in fb:
            continue
        va, vb, ci = fa[key]["value"], fb[key]["value"], fa[key]["ci"]
        inside = None if ci is None else bool(ci[0] - 1e-12 <= vb <= ci[1] + 1e-12)
        if inside is None:
            without += 1
        elif not inside:
            outside.append(key)
        rows.append({"metric": key, "a": va, "a_ci": ci, "b": vb, "diff": vb - va, "inside": inside})
    return {
        "rows": rows,
        "inside": sum(1 for r in rows if r["inside"]),
        "outside": outside,
        "without_interval": without,
        "only_in_a": sorted(set(fa) - set(fb)),
        "only_in_b": sorted(set(fb) - set(fa)),
    }


def read_metrics(folder: str | Path) -> dict:
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise ConfigError(f"{path} not found: give a finished run folder such as results/default")
    return json.loads(path.read_text())


def format_comparison(result: dict, name_a: str = "a", name_b: str = "b") -> str:
    """A fixed-width table plus a one-line verdict."""
    lines = [f"{'metric':<44} {name_a[:12]:>12} {'95% CI of ' + name_a[:8]:>22} {name_b[:12]:>12} {'diff':>9}  inside"]
    for r in result["rows"]:
        ci = "-" if r["a_ci"] is None else f"[{r['a_ci'][0]:.4g}, {r['a_ci'][1]:.4g}]"
        mark = {True: "yes", False: "NO", None: "-"}[r["inside"]]
        lines.append(f"{r['metric']:<44} {r['a']:>12.4g} {ci:>22} {r['b']:>12.4g} {r['diff']:>+9.3g}  {mark}")
    with_ci = result["inside"] + len(result["outside"])
    lines.append("")
    lines.append(f"{result['inside']} of {with_ci} values of {name_b} lie inside {name_a}'s 95% intervals"
                 + (f"; outside: {', '.join(result['outside'])}" if result["outside"] else "")
                 + f"; {result['without_interval']} metrics have no interval.")
    for side, keys in ((name_a, result["only_in_a"]), (name_b, result["only_in_b"])):
        if keys:
            lines.append(f"only in {side}: {', '.join(keys)}")
    return "\n".join(lines)


# Per-prompt values read from samples.jsonl, by prompt set: what two runs' replies to the
# same prompts can be compared on, pair by pair.
def _sample_values(row: dict, reply: dict) -> dict:
    from . import metrics as M
    from .categories import canned

    out = {"stop_rate": float(bool(reply.get("stopped"))), "role_leak_rate": float(M.role_leak(reply["text"])),
           "reply_length": float(M.reply_length(reply["text"]))}
    if "category" in reply:
        out["canned_rate"] = float(canned(reply["category"]))
    if row["set"] == "qa" and "correct" in reply:  # written by sftlab.extra_scores.score_qa
        out["accuracy"] = float(bool(reply["correct"]))
    if row["set"] in ("ifeval", "multiturn", "ood") and reply.get("checks_passed") is not None:
        passed = all(reply["checks_passed"])
        if row["set"] == "multiturn":  # a probe passes only in a usable reply (`multiturn.score_probe`)
            passed = passed and reply.get("usable", True)
        out["prompt_level"] = float(passed)
    return out


def paired_run_differences(a_dir: str | Path, b_dir: str | Path, system: str = "sft", *,
                           n_resamples: int = 1000, seed: int = 0) -> list[dict]:
    """Run A's `system` against run B's on the prompts both answered (matched by prompt set and id):
    paired differences A - B of the stop rate, canned replies and, for IFEval-style, multi-turn and
    untrained-instruction (ood) prompts, prompt-level accuracy; for the questions (qa), accuracy. The same rows as metrics.json's "comparisons", with
    "a" and "b" naming the runs. For an ablation, A is the variant and B the control.
    """
    from .stats import paired_difference

    def read(folder):
        path = Path(folder) / "samples.jsonl"
        if not path.is_file():
            raise ConfigError(f"{folder} has no samples.jsonl: is it a finished run folder?")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {(r["set"], str(r["id"])): r for r in rows if system in r.get("replies", {})}

    a_rows, b_rows = read(a_dir), read(b_dir)
    common = [k for k in a_rows if k in b_rows]
    if not common:
        raise ConfigError(f"{a_dir} and {b_dir} share no prompt answered by {system}: nothing to pair")
    values: dict[tuple[str, str], tuple[list, list]] = {}
    for key in common:
        va = _sample_values(a_rows[key], a_rows[key]["replies"][system])
        vb = _sample_values(b_rows[key], b_rows[key]["replies"][system])
        for metric in va.keys() & vb.keys():
            pair = values.setdefault((key[0], metric), ([], []))
            pair[0].append(va[metric])
            pair[1].append(vb[metric])
    out = [{"a": Path(a_dir).name, "b": Path(b_dir).name, "system": system, "set": set_, "metric": metric,
            **paired_difference(xa, xb, n_resamples=n_resamples, seed=seed)}
           for (set_, metric), (xa, xb) in sorted(values.items())]
    out += _paired_losses(Path(a_dir), Path(b_dir), system, n_resamples=n_resamples, seed=seed)
    return out


def _paired_losses(a_dir: Path, b_dir: Path, system: str, *, n_resamples: int, seed: int) -> list[dict]:
    """Held-out loss (set "loss", heldout_losses.json) and plain-text loss (set "plain_text",
    plain_text_losses.json) of the two runs' `system` on the same conversations or passages, where
    both runs wrote the file with the same number of rows; [] otherwise."""
    from .rescore import LOSSES_FILE, PLAIN_FILE
    from .scoring import loss_rows
    from .stats import paired_difference, pooled_ratio

    out = []
    for filename, set_ in ((LOSSES_FILE, "loss"), (PLAIN_FILE, "plain_text")):
        files = [d / filename for d in (a_dir, b_dir)]
        if not all(f.is_file() for f in files):
            continue
        ra, rb = (loss_rows(json.loads(f.read_text()).get(system) or []) for f in files)
        if not ra["mean_nll"] or len(ra["mean_nll"]) != len(rb["mean_nll"]):
            continue
        for part in ("mean_nll", "content_nll", "eot_nll"):
            if part in ra and part in rb:
                keep = [i for i, (x, y) in enumerate(zip(ra[part], rb[part])) if x[1] > 0 and y[1] > 0]
                out.append({"a": a_dir.name, "b": b_dir.name, "system": system, "set": set_, "metric": part,
                            **paired_difference([ra[part][i] for i in keep], [rb[part][i] for i in keep],
                                                stat=pooled_ratio, n_resamples=n_resamples, seed=seed)})
    return out


def recipe_differences(a_dir: str | Path, b_dir: str | Path, ignore: tuple[str, ...] = ()) -> list[dict]:
    """The recipe keys (dotted: "lora.lora_dropout") on which two finished runs' config.yaml (or two
    recipe files) differ, `name` and the `ignore`d keys aside, as rows {"key", "a", "b"} (None where
    a run lacks the key or sets it to null), sorted by key.

    A comparison of two runs is only about one choice when this lists that choice alone."""
    from .config import read_yaml_mapping

    def flat(folder) -> dict:
        path = Path(folder) if Path(folder).is_file() else Path(folder) / "config.yaml"  # a recipe file, or a run
        if not path.is_file():
            raise ConfigError(f"{folder} has no config.yaml: is it a finished run folder?")
        out = {}

        def walk(prefix, value):
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = value
        walk("", read_yaml_mapping(path, "run recipe"))
        out.pop("name", None)
        return out

    fa, fb = flat(a_dir), flat(b_dir)
    return [{"key": k, "a": fa.get(k), "b": fb.get(k)} for k in sorted(fa.keys() | fb.keys())
            if fa.get(k) != fb.get(k) and k not in ignore]


# What a run's run.json says about where it ran, beside its recipe: the same recipe trains
# differently with bf16 autocast on (AVX-512 BF16 CPUs, GPUs) than off (AVX2 CPUs).
RUN_CONDITIONS = (("hardware", "cpu_kind"), ("hardware", "gpu"), ("training", "bf16"), ("training", "processes"),
                  ("versions", "torch"), ("versions", "transformers"), ("versions", "peft"), ("versions", "trl"))


def condition_differences(a_dir: str | Path, b_dir: str | Path) -> list[dict]:
    """The `RUN_CONDITIONS` (dotted: "hardware.cpu_kind") on which two finished runs' run.json
    differ, as rows {"key", "a", "b"} (None where a run does not record it)."""
    def read(folder) -> dict:
        path = Path(folder) / "run.json"
        if not path.is_file():
            raise ConfigError(f"{folder} has no run.json: is it a finished run folder?")
        run = json.loads(path.read_text(encoding="utf-8"))
        return {f"{section}.{key}": (run.get(section) or {}).get(key) for section, key in RUN_CONDITIONS}

    ca, cb = read(a_dir), read(b_dir)
    return [{"key": k, "a": ca[k], "b": cb[k]} for k in ca if ca[k] != cb[k]]
