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
from .formatting import fmt_diff, fmt_setting, md_escape

# The rows of the ablation table and plot, in order: (prompt set, metric).
ABLATION_METRICS = [("loss", "mean_nll"), ("heldout", "stop_rate"), ("ifeval", "prompt_level"),
                    ("multiturn", "prompt_level"), ("heldout", "role_leak_rate"), ("heldout", "reply_length"),
                    ("plain_text", "mean_nll")]
READINGS = {"better": "better than the control", "worse": "worse than the control", "unclear": "not separable",
            "": "no better direction"}


def load_summary(folder: str | Path = "results/ablations") -> dict | None:
    """The sweep's summary.json, or None when the sweep has not been run (or not finished its control)."""
    path = Path(folder) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _column(set_: str, metric: str) -> str:
    m = metric_spec(metric, set_)
    if set_ in ("loss", "plain_text") or SET_LABELS[set_].lower() in m.label.lower():
        return m.label  # "IFEval prompt-level accuracy" names its prompt set already
    return f"{m.label} ({SET_LABELS[set_]})"


def _difference(row: dict, set_: str, metric: str) -> dict | None:
    return next((d for d in row["differences"] if d["set"] == set_ and d["metric"] == metric), None)


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


def ablation_table(summary: dict) -> pd.DataFrame:
    """Each variant against the control: paired difference [95% interval] per metric (rates in
    percentage points), and the run's own forgetting (SFT minus base loss on plain prose)."""
    out = []
    for row in summary["variants"]:
        entry = {"variant": row["variant"]}
        for set_, metric in ABLATION_METRICS:
            entry[_column(set_, metric)] = fmt_diff(_difference(row, set_, metric), metric_spec(metric, set_).kind)
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


def budget_sentence(summary: dict, folder: str | Path = "results/ablations") -> str:
    """The shared budget, read from the control run: conversations, epochs, optimizer steps."""
    run = json.loads((Path(folder) / "control" / "run.json").read_text())["training"]
    epochs = f" for {run['epochs']:g} epoch(s)," if run.get("epochs") else ""
    return (f"Every run trains on {run['train_conversations']} conversations{epochs} "
            f"{run['global_steps']} optimizer steps, unless its variant changes that.")


def control_sentence(sweep_file: str | Path = "configs/ablations.yaml",
                     default_run: str | Path = "results/default") -> str:
    """Which recipe the sweep's control is, and how the default run's recipe differs from it (the
    default can adopt a variant after the sweep measured it; the control stays pinned so that the
    finished runs stay valid)."""
    from ..compare import recipe_differences
    from ..sweep import load_sweep

    control = load_sweep(sweep_file)["control_path"]
    shown = f"`{Path(sweep_file).parent.name}/{control.name}`"
    if not (Path(default_run) / "config.yaml").is_file():
        return f"The control is {shown}."
    # which systems a run evaluates does not change what its model learns
    rows = recipe_differences(control, default_run, ignore=("evaluation.systems",))
    if not rows:
        return f"The control ({shown}) is the default recipe of `{default_run}`, on the sweep's budget."
    changes = "; ".join(f"`{r['key']}` {fmt_setting(r['a'])} → {fmt_setting(r['b'])}" for r in rows)
    return (f"The control ({shown}) is the default recipe as the sweep measured it; the default run "
            f"(`{default_run}`) has since changed {len(rows)} setting{'s' if len(rows) > 1 else ''}: {changes}.")


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


def _reading(row: dict) -> str:
    """What a variant changed against the control: the metrics whose interval excludes zero, each way."""
    parts = {"better": [], "worse": []}
    for set_, metric in ABLATION_METRICS:
        d = _difference(row, set_, metric)
        m = metric_spec(metric, set_)
        v = verdict(d, m.better)
        if v in parts:
            parts[v].append(f"{_column(set_, metric)} {fmt_diff(d, m.kind)}")
    if not parts["better"] and not parts["worse"]:
        return "no metric separable from the control"
    return "; ".join(f"{k} on {', '.join(v)}" for k, v in parts.items() if v)


def ablation_sentences(summary: dict) -> str:
    """One Markdown bullet per variant: the metrics on which its interval excludes zero, each way."""
    return "\n".join(f"- **{row['variant']}** ({md_escape(row['description'])}): {_reading(row)}."  # "<end_of_turn>" stays visible
                      for row in summary["variants"] if row["variant"] != "control")


def improvements_status(summary: dict | None, names: list[str]) -> str:
    """For chapter 6's list of improvements: which of the sweep variants `names` have run, with what
    each changed against the control, and which are still proposals."""
    if summary is None:
        return "The sweep has not been run for this edition, so none of them is measured yet."
    done = {row["variant"]: row for row in summary["variants"]}
    measured = [f"- **{name}**: {_reading(done[name])}." for name in names if name in done]
    waiting = [name for name in names if name not in done]
    text = ("Measured on the sweep's budget, each against its control:\n\n" + "\n".join(measured)
            if measured else "None of them has finished in the committed sweep.")
    if waiting:
        text += f"\n\nNot run yet, so still proposals: {', '.join(waiting)}."
    return text


def sweep_time_sentence(summary: dict) -> str:
    """How long the sweep took, on which kind of CPU, from each run's run.json."""
    runs = summary["variants"]
    wall = sum(r["wall_s"] or 0 for r in runs) / 3600
    train = sum(r["train_s"] or 0 for r in runs) / 3600
    kinds = sorted({r["cpu_kind"] or "unknown" for r in runs})
    missing = summary.get("missing") or []
    tail = f" {len(missing)} variant(s) had not finished: {', '.join(missing)}." if missing else ""
    return (f"The {len(runs)} runs took {wall:.1f} hours in all ({train:.1f} of them training), "
            f"on a CPU of kind {', '.join(kinds)} (`cpu_kind` in each run.json).{tail}")
