"""Compare the metrics of two runs: does a re-run reproduce a committed one within noise?

`sftlab compare results/default OTHER/default` reads both `metrics.json` files and, for
every metric that has a 95% interval in the first run, says whether the second run's value
lies inside it. A re-run with the same recipe, seed and software on the same kind of machine
should land inside nearly every interval (with 95% intervals, about one value in twenty
may fall outside by chance even when nothing changed).
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
