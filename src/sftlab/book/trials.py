"""Recipe changes tried on the whole default run and not adopted: results/trials/ shown.

Serves chapter 6's list of improvements. A trial is a full run of the default recipe with one
change (results/trials/NAME/, its `config.yaml` the recipe that made it). The table puts each
beside the committed default, on the numbers that decide adoption; what changed is computed
from the two recipes, not written by hand, and so are the host and every figure.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from .formatting import fmt_ci, fmt_diff, fmt_duration
from .results import Results, comparison, load_results, metric_entry


def recipe_changes(trial: dict, default: dict, prefix: str = "") -> list[str]:
    """The keys (dotted) whose value in `trial` differs from `default`, as "key: value".

    >>> recipe_changes({"data": {"instructions": {"share": 0.6, "extra": 300}}, "name": "x"},
    ...                {"data": {"instructions": {"share": 0.6}}, "name": "x"})
    ['data.instructions.extra: 300']
    """
    out = []
    for key in list(dict.fromkeys([*default, *trial])):
        a, b = trial.get(key), default.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += recipe_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {_yaml_value(a)}")
    return out


def _yaml_value(value) -> str:
    """A recipe value as the recipe file writes it: true, 300, [a, b]; a missing key as "not set"."""
    return "not set" if value is None else yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def trial_names(folder: str | Path) -> list[str]:
    """The finished trials under `folder` (each with run.json and metrics.json), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "run.json").is_file() and (p / "metrics.json").is_file())


def _row(label: str, res: Results, changes: str) -> dict:
    hw, tr = res.run.get("hardware") or {}, res.run.get("training") or {}
    return {
        "run": label,
        "what differs from the default recipe": changes,
        "host": f"{hw.get('cpu_kind') or 'unknown'}, bf16 {'on' if tr.get('bf16') else 'off'}",
        "IFEval prompt-level": fmt_ci(metric_entry(res, "sft", "prompt_level", "ifeval"), "rate"),
        "vs SmolLM2 (paired)": fmt_diff(comparison(res, "sft", "reference", "prompt_level", "ifeval"), "rate"),
        "held-out stop rate": fmt_ci(metric_entry(res, "sft", "stop_rate"), "rate"),
        "held-out loss": fmt_ci(metric_entry(res, "sft", "mean_nll", "loss"), "nats"),
        "whole run": fmt_duration(res.run.get("wall_s")),
    }


def trials_table(default: Results, folder: str | Path | None = None) -> pd.DataFrame:
    """The committed default and each trial under `folder` (default: results/trials beside the
    default's folder), one row each; an empty frame when there are none."""
    folder = Path(folder) if folder is not None else default.path.parent / "trials"
    rows = []
    for name in trial_names(folder):
        trial = load_results(str((folder / name).resolve()), check=False)
        changes = [c for c in recipe_changes(trial.config, default.config) if not c.startswith("name:")]
        # Plain text: show_table escapes cells for HTML and Markdown alike, so a code span
        # written here would print its backticks.
        rows.append(_row(name, trial, "; ".join(changes) or "none"))
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame([_row(f"{default.name} (committed)", default, "–"), *rows])
