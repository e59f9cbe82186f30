"""What each choice did: the ablation sweep (`sftlab sweep configs/ablations.yaml`, `sftlab.sweep`) shown.

Serves chapter 5's section "What each choice did": the table of each variant's paired
differences from the control, the forest plot of the same intervals (kept here rather than in
`charts`, which holds the charts of single runs), the forgetting of each run on plain prose,
the sentences computed from the intervals, and how long the sweep took. Every number comes
from results/ablations/summary.json and the runs it names.
"""

from __future__ import annotations

import json
from pathlib import Path

import altair as alt
import pandas as pd

from ..stats import verdict
from .catalog import SET_LABELS, metric_spec
from .formatting import fmt_ci, fmt_diff

# The rows of the ablation table and plot, in order: (prompt set, metric).
ABLATION_METRICS = [("loss", "mean_nll"), ("heldout", "stop_rate"), ("ifeval", "prompt_level"),
                    ("multiturn", "prompt_level"), ("qa", "accuracy"), ("ood", "prompt_level"),
                    ("heldout", "role_leak_rate"), ("heldout", "reply_length"), ("plain_text", "mean_nll")]
# The table leaves out the plain-text loss: its difference from the control is the difference of
# the forgetting column (the base model is the same in every run), which the table shows per run.
TABLE_METRICS = [m for m in ABLATION_METRICS if m[0] != "plain_text"]
READINGS = {"better": "better than the control", "worse": "worse than the control", "unclear": "not separable",
            "": "no better direction"}


def load_summary(folder: str | Path = "results/ablations") -> dict | None:
    """The sweep's summary.json, or None when the sweep has not been run (or not finished its control)."""
    path = Path(folder) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _column(set_: str, metric: str) -> str:
    m = metric_spec(metric, set_)
    if set_ in ("loss", "plain_text", "qa", "ood") or SET_LABELS[set_].lower() in m.label.lower():
        return m.label  # "IFEval prompt-level accuracy" names its prompt set already
    if m.label.endswith(")"):  # "reply length (words)" -> "reply length (words, held-out)"
        return f"{m.label[:-1]}, {SET_LABELS[set_]})"
    return f"{m.label} ({SET_LABELS[set_]})"


def _difference(row: dict, set_: str, metric: str) -> dict | None:
    return next((d for d in row["differences"] if d["set"] == set_ and d["metric"] == metric), None)


def control_value(metrics: dict, set_: str, metric: str) -> dict | None:
    """The SFT model's own value of one ablation metric in a run's metrics.json ({"value", "ci"}),
    or None where the run did not measure it (an older run without the extra sets)."""
    if set_ in ("loss", "plain_text"):
        entry = (metrics.get("heldout_loss" if set_ == "loss" else "plain_text_loss") or {}).get("sft")
        if entry is None or metric not in entry:
            return None
        if isinstance(entry[metric], dict):  # a part of the loss (content_nll, eot_nll) carries its own interval
            return {"value": entry[metric]["value"], "ci": entry[metric].get("ci")}
        return {"value": entry[metric], "ci": entry.get("ci")}
    if set_ in ("qa", "ood"):
        return ((metrics.get(set_) or {}).get("systems", {}).get("sft") or {}).get(metric)
    return metrics["systems"]["sft"].get(set_, {}).get(metric)


def load_control_metrics(folder: str | Path = "results/ablations") -> dict | None:
    """The control run's metrics.json (its absolute values stand beside the variants' differences)."""
    path = Path(folder) / "control" / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def ablation_frame(summary: dict) -> pd.DataFrame:
    """One row per variant and metric: the paired difference variant - control, its interval and reading."""
    rows = []
    for row in summary["variants"]:
        for set_, metric in ABLATION_METRICS:
            d = _difference(row, set_, metric)
            if d is None or d.get("difference") is None:
                continue
            m = metric_spec(metric, set_)
            scale = 100.0 if m.kind == "rate" else 1.0
            rows.append({"variant": row["variant"], "metric": _column(set_, metric),
                         "difference": scale * d["difference"], "lo": scale * d["ci"][0], "hi": scale * d["ci"][1],
                         "reading": READINGS[verdict(d, m.better)], "n": d["n"]})
    return pd.DataFrame(rows, columns=["variant", "metric", "difference", "lo", "hi", "reading", "n"])


def ablation_table(summary: dict, control: dict | None = None) -> pd.DataFrame:
    """Each variant against the control: paired difference [95% interval] per metric (rates in
    percentage points), and the run's own forgetting (SFT minus base loss on plain prose). With
    `control` (its metrics.json), the control's row holds its own values [95% interval]."""
    out = []
    for row in summary["variants"]:
        entry = {"variant": row["variant"]}
        is_control = row["variant"] == summary.get("control", "control")
        for set_, metric in TABLE_METRICS:
            kind = metric_spec(metric, set_).kind
            if is_control and control is not None:
                entry[_column(set_, metric)] = fmt_ci(control_value(control, set_, metric), kind)
            else:
                entry[_column(set_, metric)] = fmt_diff(_difference(row, set_, metric), kind)
        forgot = row["forgetting"][0] if row["forgetting"] else None
        entry["forgetting (SFT − base, plain text)"] = fmt_diff(forgot, "nats")
        out.append(entry)
    return pd.DataFrame(out)


def variants_table(summary: dict) -> pd.DataFrame:
    """What each variant changes, its trainable parameters and its training time."""
    return pd.DataFrame([{"variant": r["variant"], "what it changes": r["description"],
                          "trainable parameters": r["trainable_params"],
                          "training (min)": None if r["train_s"] is None else r["train_s"] / 60}
                         for r in summary["variants"]])


def planned_table(sweep_file: str | Path = "configs/ablations.yaml") -> pd.DataFrame:
    """The variants a sweep file defines, with what each changes: the table shown before the sweep has run."""
    from ..sweep import load_sweep

    sweep = load_sweep(sweep_file)
    return pd.DataFrame([{"variant": name, "what it changes": sweep["descriptions"].get(name, "")}
                         for name in sweep["recipes"]])


def chart_ablations(summary: dict) -> alt.Chart:
    """Forest plot: one panel per metric, one line per variant, the paired difference from the
    control (dot) and its 95% interval (bar); an interval crossing the dashed zero line cannot
    tell the variant from the control. Colour: the reading."""
    df = ablation_frame(summary)
    variants = [r["variant"] for r in summary["variants"] if r["variant"] != "control"]
    base = alt.Chart().encode(
        y=alt.Y("variant:N", sort=variants, title=None),
        color=alt.Color("reading:N", scale=alt.Scale(domain=list(READINGS.values()),
                                                    range=["#1a7f37", "#c44e52", "#8c8c8c", "#4c72b0"]),
                        legend=alt.Legend(title=None, orient="bottom")),
        tooltip=["variant:N", "metric:N", alt.Tooltip("difference:Q", format="+.2f"),
                 alt.Tooltip("lo:Q", format="+.2f"), alt.Tooltip("hi:Q", format="+.2f"), "n:Q"],
    )
    bars = base.mark_rule(strokeWidth=2.5).encode(x=alt.X("lo:Q", title="variant − control"), x2="hi:Q")
    dots = base.mark_circle(size=60, opacity=1).encode(x="difference:Q")
    zero = alt.Chart().mark_rule(color="#333333", strokeDash=[4, 3]).encode(x=alt.datum(0))
    return alt.layer(zero, bars, dots, data=df).properties(width=150, height=alt.Step(14)).facet(
        facet=alt.Facet("metric:N", sort=list(dict.fromkeys(df["metric"])), title=None), columns=3,
    ).resolve_scale(x="independent").properties(
        title="Each variant against the control, paired on the same prompts (rates in percentage points)")


# The variants that change how far the adapter moves and nothing else: step size, rank, target
# modules, epochs. (DoRA moves exactly as far as the control and would sit on its point.)
SIZE_VARIANTS = ("lower-lr", "rank-4", "attention-only", "control", "two-epochs", "rank-64")


def update_size(run: str | Path) -> float:
    """How far a run's adapter moved the model: the median over its adapted projections of
    ||scale * B @ A|| / ||W|| (its lora_norms.jsonl), as a fraction."""
    from .lora import lora_norms_frame

    return float(lora_norms_frame(run)["relative_norm"].median())


def update_frame(summary: dict, folder: str | Path = "results/ablations",
                 variants: tuple[str, ...] = SIZE_VARIANTS) -> pd.DataFrame:
    """One row per variant (those of `variants` that ran): its update size (%), its forgetting
    (plain-prose loss, SFT minus base) and its held-out stop-rate difference from the control (pp),
    each with its 95% interval. The control's stop-rate difference is 0 by definition."""
    by_name = {r["variant"]: r for r in summary["variants"]}
    rows = []
    for name in (v for v in variants if v in by_name):
        row, folder_ = by_name[name], Path(folder) / name
        forgot = row["forgetting"][0] if row["forgetting"] else None
        stop = _difference(row, "heldout", "stop_rate") or {"difference": 0.0, "ci": [0.0, 0.0]}
        rows.append({"variant": name, "update": 100 * update_size(folder_),
                     "forgetting": None if forgot is None else forgot["difference"],
                     "forgetting_lo": None if forgot is None else forgot["ci"][0],
                     "forgetting_hi": None if forgot is None else forgot["ci"][1],
                     "stop": 100 * stop["difference"], "stop_lo": 100 * stop["ci"][0], "stop_hi": 100 * stop["ci"][1]})
    return pd.DataFrame(rows)


def chart_update_size(summary: dict, folder: str | Path = "results/ablations") -> alt.HConcatChart:
    """Two panels over the same x, how far each variant's adapter moved the weights: its forgetting
    (left) and its held-out stop rate against the control's (right), with 95% intervals."""
    df = update_frame(summary, folder)
    x = alt.X("update:Q", title="median ‖ΔW‖ / ‖W‖ (%)", scale=alt.Scale(zero=True))

    def panel(y: str, title: str, axis: str):
        base = alt.Chart(df).encode(x=x)
        bars = base.mark_rule(strokeWidth=2, color="#4c72b0").encode(y=alt.Y(f"{y}_lo:Q", title=axis), y2=f"{y}_hi:Q")
        dots = base.mark_circle(size=60, color="#4c72b0", opacity=1).encode(
            y=f"{y}:Q", tooltip=["variant:N", alt.Tooltip("update:Q", format=".2f"), alt.Tooltip(f"{y}:Q", format="+.3f")])
        # attention-only sits next to the control on both panels: its label goes below its point
        below = alt.datum.variant == "attention-only"
        labels = [base.transform_filter(f).mark_text(align="left", dx=7, dy=dy, fontSize=10).encode(
            y=f"{y}:Q", text="variant:N") for f, dy in ((~below, -8), (below, 12))]
        zero = alt.Chart().mark_rule(color="#333333", strokeDash=[4, 3]).encode(y=alt.datum(0))
        return alt.layer(zero, bars, dots, *labels).properties(width=220, height=200, title=title)

    return alt.hconcat(panel("forgetting", "Forgetting", "plain-prose loss, SFT − base (nats/token)"),
                       panel("stop", "Ending the turn", "held-out stop rate − control's (pp)")).properties(
        title="How far the adapter moved, and what it cost and bought")
