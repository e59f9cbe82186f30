"""Every Altair chart of the book: `chart_*` functions take loaded results (or a frame computed
from them) and return a chart; chapters display it with `display.show_chart`.

Data charts (chapter 3), training curves (chapter 5), evaluation charts (chapter 6), the
LoRA calculator (chapter 2), attention and LoRA-update maps (chapter 7). Every chart uses
the same order, names and colours for the systems (`catalog.SYSTEM_COLORS`, colour-blind-safe
Okabe-Ito hues). Data is aggregated with pandas before it reaches Altair, which keeps the
HTML small and under Altair's 5,000-row limit whatever the size of the run.
"""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

from .attention import SEGMENTS
from .catalog import METRIC_SETS, SET_LABELS, SYSTEM_COLORS, SYSTEM_LABELS, SYSTEMS, label
from .lora import MODULE_ORDER
from .results import Results, metric_entry



WIDTH = 560  # fits the book's text column


def system_scale(systems=None) -> alt.Scale:
    """Colour scale keyed by readable system labels, in the book's order."""
    systems = [s for s in SYSTEMS if systems is None or s in systems]
    return alt.Scale(domain=[SYSTEM_LABELS[s] for s in systems], range=[SYSTEM_COLORS[s] for s in systems])


def _system_order(systems) -> list[str]:
    return [label(s) for s in SYSTEMS if s in systems]


def _reason_bars(counts: dict, title: str, x_title: str, highlight: dict | None = None) -> alt.Chart:
    """Horizontal bars of counts by reason, largest first, each labelled with its count."""
    rows = [{"reason": k, "count": int(v), "kind": "dropped"} for k, v in counts.items()]
    rows += [{"reason": k, "count": int(v), "kind": "kept"} for k, v in (highlight or {}).items()]
    df = pd.DataFrame(rows, columns=["reason", "count", "kind"])
    order = df.sort_values("count", ascending=False)["reason"].tolist()
    base = alt.Chart(df).encode(
        y=alt.Y("reason:N", sort=order, title=None),
        x=alt.X("count:Q", title=x_title),
        tooltip=["reason:N", alt.Tooltip("count:Q", format=",")],
    )
    bars = base.mark_bar().encode(
        color=alt.Color("kind:N", scale=alt.Scale(domain=["dropped", "kept"], range=["#c44e52", "#4c72b0"]),
                        legend=alt.Legend(title=None, orient="bottom-right") if highlight else None)
    )
    text = base.mark_text(align="left", dx=3).encode(text=alt.Text("count:Q", format=","))
    return (bars + text).properties(title=title, width=WIDTH - 160, height=alt.Step(22))


def chart_skip_reasons(report: dict) -> alt.Chart:
    """Records the loader could not use, by reason, next to the valid conversations kept."""
    return _reason_bars(report.get("skipped") or {}, "Loading: records skipped, by reason",
                        "records", highlight={"valid conversation": report.get("n_loaded", 0)})


def chart_filter_rejects(report: dict) -> alt.Chart:
    """Valid conversations the filters rejected, by first failing filter, next to those kept."""
    return _reason_bars(report.get("rejected") or {}, "Filtering: conversations rejected, by first failing filter",
                        "conversations", highlight={"kept": report.get("n_kept", 0)})


def chart_turns(report: dict) -> alt.Chart:
    """How many assistant replies the kept conversations have."""
    hist = report.get("turns_histogram") or {}
    df = pd.DataFrame([{"turns": int(k), "conversations": int(v)} for k, v in hist.items()],
                      columns=["turns", "conversations"])
    base = alt.Chart(df).encode(
        x=alt.X("turns:O", title="assistant replies per conversation", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("conversations:Q", title="kept conversations"),
        tooltip=["turns:O", alt.Tooltip("conversations:Q", format=",")],
    )
    return (base.mark_bar(color="#4c72b0") + base.mark_text(dy=-6).encode(text=alt.Text("conversations:Q", format=",")))\
        .properties(title="Turns per kept conversation", width=WIDTH - 200, height=200)


def chart_token_lengths(report: dict, bins: int = 30) -> alt.Chart:
    """Histogram of the kept conversations' token lengths, with the median and the max_tokens filter."""
    lengths = np.asarray((report.get("raw") or {}).get("token_lengths") or [], dtype=float)
    if len(lengths):
        counts, edges = np.histogram(lengths, bins=min(bins, max(1, len(np.unique(lengths)))))
    else:
        counts, edges = np.array([]), np.array([0.0])
    df = pd.DataFrame({"start": edges[:-1], "end": edges[1:], "conversations": counts})
    bars = alt.Chart(df).mark_bar(color="#4c72b0", binSpacing=1).encode(
        x=alt.X("start:Q", bin="binned", title="tokens per conversation (approximate: text without template)"),
        x2="end:Q",
        y=alt.Y("conversations:Q", title="kept conversations"),
        tooltip=[alt.Tooltip("start:Q", format=".0f", title="from"), alt.Tooltip("end:Q", format=".0f", title="to"),
                 "conversations:Q"],
    )
    marks = []
    if len(lengths):
        marks.append({"at": float(np.median(lengths)), "what": "median"})
    cap = (report.get("filters") or {}).get("max_tokens")
    if cap:
        marks.append({"at": float(cap), "what": "max_tokens filter"})
    chart = bars
    if marks:
        rules = alt.Chart(pd.DataFrame(marks)).mark_rule(strokeDash=[4, 3]).encode(
            x="at:Q", color=alt.Color("what:N", scale=alt.Scale(domain=["median", "max_tokens filter"],
                                                                range=["#333333", "#c44e52"]),
                                      legend=alt.Legend(title=None, orient="bottom")),
            tooltip=["what:N", alt.Tooltip("at:Q", format=".0f")],
        )
        chart = bars + rules
    return chart.properties(title="Token length of kept conversations", width=WIDTH, height=220)


def smooth(values: pd.Series, window: int | None = None) -> pd.Series:
    """Centred rolling mean over `window` points (default: a tenth of the series, odd, at least 1)."""
    n = len(values)
    window = window or max(1, (n // 10) | 1)
    return values.rolling(window, center=True, min_periods=1).mean()


def chart_loss_curve(results: Results, window: int | None = None, heldout: bool = True) -> alt.Chart:
    """Training loss by step (raw points, smoothed line), eval loss if logged, and the held-out
    loss of the base and trained models as dashed reference lines."""
    log = results.train_log
    layers = []
    if not log.empty and "loss" in log:
        train = log.dropna(subset=["loss"])[["step", "loss"]].copy()
        w = window or max(1, (len(train) // 10) | 1)
        train["smoothed"] = smooth(train["loss"], w)
        pts = train.assign(series="train loss (each step)")
        line = train.assign(series=f"train loss (mean of {w} steps)", loss=train["smoothed"])
        layers.append(pts)
        layers.append(line)
    if not log.empty and "eval_loss" in log:
        ev = log.dropna(subset=["eval_loss"])[["step", "eval_loss"]].rename(columns={"eval_loss": "loss"})
        layers.append(ev.assign(series="eval-split loss"))
    df = pd.concat(layers, ignore_index=True) if layers else pd.DataFrame(columns=["step", "loss", "series"])
    df = df[["step", "loss", "series"]]
    series = list(dict.fromkeys(df["series"]))
    palette = {"train loss (each step)": "#9ecae1", "eval-split loss": "#d62728"}
    colors = alt.Scale(domain=series, range=[palette.get(s, "#0072b2") for s in series])
    base = alt.Chart(df).encode(
        x=alt.X("step:Q", title="optimizer step"),
        y=alt.Y("loss:Q", title="loss (nats per learned token)", scale=alt.Scale(zero=False)),
        color=alt.Color("series:N", scale=colors, legend=alt.Legend(title=None, orient="top-right")),
        tooltip=["series:N", "step:Q", alt.Tooltip("loss:Q", format=".3f")],
    )
    chart = (base.mark_circle(size=18, opacity=0.6).transform_filter(alt.datum.series == "train loss (each step)")
             + base.mark_line(strokeWidth=2.5).transform_filter(alt.datum.series != "train loss (each step)"))
    ev_pts = base.mark_point(filled=True, size=40).transform_filter(alt.datum.series == "eval-split loss")
    chart = chart + ev_pts
    if not log.empty and "epoch" in log and log["epoch"].max() > 1:
        bounds = [{"step": float(log[log["epoch"] <= e]["step"].max()), "what": f"end of epoch {e}"}
                  for e in range(1, int(math.ceil(float(log["epoch"].max()) - 1e-9)))]
        if bounds:
            epochs = alt.Chart(pd.DataFrame(bounds)).mark_rule(color="#888888", strokeDash=[2, 2])
            chart = chart + epochs.encode(x="step:Q", tooltip=["what:N"]) + epochs.mark_text(
                align="left", dx=3, dy=-4, baseline="top", color="#555555", fontSize=10).encode(
                x="step:Q", y=alt.value(0), text="what:N")
    if heldout and results.metrics.get("heldout_loss"):
        rules = pd.DataFrame([{"loss": v["mean_nll"], "who": f"held-out loss, {label(s)}"}
                              for s, v in results.metrics["heldout_loss"].items() if v.get("mean_nll") is not None])
        if len(rules):
            chart = chart + alt.Chart(rules).mark_rule(strokeDash=[6, 4], color="#555555").encode(
                y="loss:Q", tooltip=["who:N", alt.Tooltip("loss:Q", format=".3f")])
            chart = chart + alt.Chart(rules).mark_text(align="left", baseline="bottom", dx=4, dy=-2,
                                                       color="#555555", fontSize=10).encode(
                y="loss:Q", x=alt.value(0), text="who:N")
    return chart.properties(title="Training loss", width=WIDTH, height=260)


def chart_learning_rate(results: Results) -> alt.Chart:
    """The learning-rate schedule the optimizer followed (warm-up, then decay)."""
    log = results.train_log
    df = log.dropna(subset=["learning_rate"])[["step", "learning_rate"]] if "learning_rate" in log else \
        pd.DataFrame(columns=["step", "learning_rate"])
    return alt.Chart(df).mark_line(color="#555555", point=alt.OverlayMarkDef(size=12)).encode(
        x=alt.X("step:Q", title="optimizer step"),
        y=alt.Y("learning_rate:Q", title="learning rate", axis=alt.Axis(format=".1e")),
        tooltip=["step:Q", alt.Tooltip("learning_rate:Q", format=".2e")],
    ).properties(title="Learning-rate schedule", width=WIDTH, height=160)


def metric_frame(results: Results, set: str = "heldout", metrics=None) -> pd.DataFrame:
    """One row per (metric, system): value and 95% interval (NaN where there is none)."""
    specs = METRIC_SETS[set]
    if metrics is not None:
        specs = [m for m in specs if m.key in metrics]
    rows = []
    for m in specs:
        for s in results.systems:
            e = metric_entry(results, s, m.key, set)
            if not e or e.get("value") is None:
                continue
            ci = e.get("ci") or [math.nan, math.nan]
            scale = 100.0 if m.kind == "rate" else 1.0
            rows.append({"metric": m.label + (" (%)" if m.kind == "rate" else ""), "system": label(s),
                         "value": e["value"] * scale, "lo": ci[0] * scale, "hi": ci[1] * scale,
                         "better": f"{m.better} is better" if m.better else ""})
    return pd.DataFrame(rows, columns=["metric", "system", "value", "lo", "hi", "better"])


def chart_metric_comparison(results: Results, set: str = "heldout", metrics=None, columns: int = 3) -> alt.Chart:
    """One panel per metric: each system's value (dot) and 95% bootstrap interval (bar)."""
    df = metric_frame(results, set, metrics)
    order = _system_order(results.systems)
    scale = system_scale(results.systems)
    panel_order = list(dict.fromkeys(df["metric"]))
    base = alt.Chart().encode(
        y=alt.Y("system:N", sort=order, title=None, axis=alt.Axis(labels=True)),
        color=alt.Color("system:N", scale=scale, legend=None),
        tooltip=["system:N", alt.Tooltip("value:Q", format=".3f"), alt.Tooltip("lo:Q", format=".3f"),
                 alt.Tooltip("hi:Q", format=".3f"), "better:N"],
    )
    axis = alt.Axis(tickCount=4, labelOverlap=True, labelSeparation=6, labelFlush=True)
    bars = base.mark_rule(strokeWidth=2.5).encode(
        x=alt.X("lo:Q", title=None, scale=alt.Scale(zero=False), axis=axis), x2="hi:Q")
    dots = base.mark_circle(size=70, opacity=1).encode(x=alt.X("value:Q", title=None, axis=axis))
    return alt.layer(bars, dots, data=df).properties(width=150, height=alt.Step(18)).facet(
        facet=alt.Facet("metric:N", sort=panel_order, title=None, header=alt.Header(labelFontWeight="bold")),
        columns=columns,
    ).resolve_scale(x="independent").properties(
        title="Before and after, with 95% bootstrap intervals (no bar: a corpus-level statistic)")


def chart_ifeval_types(results: Results) -> alt.Chart:
    """IFEval pass rate per instruction type and system (dot), with 95% intervals (bar)."""
    rows = []
    for s in results.systems:
        per_type = ((results.metrics["systems"][s].get("ifeval") or {}).get("per_type") or {})
        for t, e in per_type.items():
            ci = e.get("ci") or [math.nan, math.nan]
            rows.append({"type": f"{t} (n={e.get('n')})", "system": label(s), "value": 100 * e["value"],
                         "lo": 100 * ci[0], "hi": 100 * ci[1]})
    df = pd.DataFrame(rows, columns=["type", "system", "value", "lo", "hi"])
    order = _system_order(results.systems)
    n_types = max(1, df["type"].nunique())
    base = alt.Chart(df).encode(
        y=alt.Y("type:N", title=None, sort="ascending"),
        yOffset=alt.YOffset("system:N", sort=order),
        color=alt.Color("system:N", scale=system_scale(results.systems), sort=order,
                        legend=alt.Legend(title=None, orient="bottom", columns=2)),
        tooltip=["type:N", "system:N", alt.Tooltip("value:Q", format=".0f", title="pass %"),
                 alt.Tooltip("lo:Q", format=".0f"), alt.Tooltip("hi:Q", format=".0f")],
    )
    err = base.mark_rule(strokeWidth=1.5, opacity=0.6).encode(
        x=alt.X("lo:Q", title="instructions followed (%)", scale=alt.Scale(domain=[0, 100])), x2="hi:Q")
    dots = base.mark_circle(size=45, opacity=1).encode(x="value:Q")
    return (err + dots).properties(title="IFEval: pass rate by instruction type (dot) with 95% interval (bar)",
                                   width=WIDTH - 180, height=n_types * (8 * len(order) + 6))


def reply_frame(results: Results, set: str = "heldout") -> pd.DataFrame:
    """One row per (prompt, system): reply length in words and tokens, and whether it stopped."""
    from ..metrics import count_words

    rows = []
    for s in results.samples:
        if s.get("set") != set:
            continue
        for system, r in s["replies"].items():
            rows.append({"id": s["id"], "system": label(system), "words": count_words(r.get("text", "")),
                         "tokens": r.get("n_tokens"),
                         "ending": "stopped" if r.get("stopped") else "hit the token limit"})
    return pd.DataFrame(rows, columns=["id", "system", "words", "tokens", "ending"])


def chart_reply_lengths(results: Results, set: str = "heldout") -> alt.Chart:
    """Each reply's length in words, per system (one dot per reply; filled: it stopped by itself)."""
    df = reply_frame(results, set)
    order = _system_order(results.systems)
    base = alt.Chart(df).encode(
        y=alt.Y("system:N", sort=order, title=None),
        x=alt.X("words:Q", title="reply length (words)"),
    )
    box = base.mark_boxplot(extent="min-max", opacity=0.35, size=20, color="#999999")
    dots = base.mark_point(size=28, opacity=0.75).encode(
        color=alt.Color("system:N", scale=system_scale(results.systems), legend=None),
        yOffset=alt.YOffset("jitter:Q"),
        shape=alt.Shape("ending:N", scale=alt.Scale(domain=["stopped", "hit the token limit"],
                                                    range=["circle", "cross"]),
                        legend=alt.Legend(title=None, orient="bottom")),
        tooltip=["id:N", "system:N", "words:Q", "tokens:Q", "ending:N"],
    ).transform_calculate(jitter="(random() - 0.5) * 12")
    return (box + dots).properties(title=f"Reply lengths ({'held-out' if set == 'heldout' else 'IFEval'} prompts)",
                                   width=WIDTH - 140, height=alt.Step(40))


def chart_stop_flags(results: Results) -> alt.Chart:
    """Share of replies that ended by themselves versus ran into the token limit, per system and prompt set."""
    frames = []
    for set_ in ("heldout", "ifeval"):
        df = reply_frame(results, set_)
        if len(df):
            frames.append(df.assign(prompts="held-out" if set_ == "heldout" else "IFEval"))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["system", "ending", "prompts"])
    counts = df.groupby(["prompts", "system", "ending"]).size().reset_index(name="replies")
    order = _system_order(results.systems)
    return alt.Chart(counts).mark_bar().encode(
        y=alt.Y("system:N", sort=order, title=None),
        x=alt.X("replies:Q", stack="normalize", title="share of replies", axis=alt.Axis(format="%")),
        color=alt.Color("ending:N", scale=alt.Scale(domain=["stopped", "hit the token limit"],
                                                    range=["#1a7f37", "#c44e52"]),
                        legend=alt.Legend(title=None, orient="bottom")),
        row=alt.Row("prompts:N", title=None, sort=["held-out", "IFEval"]),
        tooltip=["prompts:N", "system:N", "ending:N", "replies:Q"],
    ).properties(title="How replies ended", width=WIDTH - 160, height=alt.Step(22))


def chart_lora_parameters(table, highlight: tuple[int, str] | None = None):
    """Trainable parameters against rank, one line per target set, log scales; full fine-tuning
    as a dashed rule; `highlight=(rank, target_set)` rings the project's own setting."""
    import altair as alt

    lora = table[table["target_set"] != "full fine-tuning"].copy()
    lora["rank"] = lora["rank"].astype(int)
    full = table[table["target_set"] == "full fine-tuning"][["trainable"]].copy()
    full["label"] = "full fine-tuning"
    x = alt.X("rank:Q", scale=alt.Scale(type="log", base=2), axis=alt.Axis(values=sorted(lora["rank"].unique())),
              title="LoRA rank r")
    y = alt.Y("trainable:Q", scale=alt.Scale(type="log"), title="trainable parameters (log scale)")
    lines = alt.Chart(lora).mark_line(point=True).encode(
        x=x, y=y, color=alt.Color("target_set:N", title="target modules", sort=list(lora["target_set"].unique())),
        tooltip=["target_set", "rank", alt.Tooltip("trainable:Q", format=","), alt.Tooltip("share_pct:Q", format=".3f")],
    )
    rule = alt.Chart(full).mark_rule(strokeDash=[4, 4], color="black").encode(y="trainable:Q")
    rule_text = alt.Chart(full).mark_text(align="left", dx=4, dy=-6).encode(
        y="trainable:Q", x=alt.value(4), text="label:N")
    layers = [lines, rule, rule_text]
    if highlight is not None:
        r, name = highlight
        mine = lora[(lora["rank"] == r) & (lora["target_set"] == name)].assign(label="this project")
        layers.append(alt.Chart(mine).mark_point(size=300, shape="circle", filled=False, color="black",
                                                 strokeWidth=2).encode(x=x, y=y))
        layers.append(alt.Chart(mine).mark_text(dx=14, dy=14, color="black", align="left").encode(x=x, y=y, text="label:N"))
    return alt.layer(*layers).properties(width=420, height=280, title="LoRA trainable parameters by rank")


def chart_lora_norms(frame):
    """Heatmap of relative LoRA update norm, layer (rows) by module (columns)."""
    import altair as alt

    return alt.Chart(frame).mark_rect().encode(
        x=alt.X("module:N", sort=MODULE_ORDER, title="module", axis=alt.Axis(labelAngle=-45)),
        y=alt.Y("layer:O", title="layer"),
        color=alt.Color("relative_norm:Q", title="‖ΔW‖ / ‖W‖", scale=alt.Scale(scheme="viridis")),
        tooltip=["layer", "module", alt.Tooltip("relative_norm:Q", format=".5f"), alt.Tooltip("norm:Q", format=".4f")],
    ).properties(width=320, height=360, title="Relative size of the LoRA update")


def chart_attention_segments(frame, title: str = "Where reply tokens look, layer by layer"):
    """Attention share per segment against layer, base vs SFT, one panel per segment in two columns
    (each panel with its own y scale, so small segments stay readable). `frame`: model, layer,
    segment, share (`attention.layer_profile`)."""
    import altair as alt

    order = [s for s in SEGMENTS if s in set(frame["segment"])]
    return alt.Chart(frame).mark_line(point=alt.OverlayMarkDef(size=20)).encode(
        x=alt.X("layer:Q", title="layer", scale=alt.Scale(nice=False)),
        y=alt.Y("share:Q", title="share of attention"),
        color=alt.Color("model:N", title="model", sort=["base", "SFT"], legend=alt.Legend(orient="bottom")),
        tooltip=["model", "layer", "segment", alt.Tooltip("share:Q", format=".3f")],
    ).properties(width=250, height=130).facet(
        facet=alt.Facet("segment:N", sort=order, title=None), columns=2
    ).resolve_scale(y="independent").properties(title=title)


def chart_end_of_turn(frame):
    """The probability of <end_of_turn> as the next token along the reply (`attention.eot_frame`): the
    median over conversations per stretch of the reply, base and SFT, on a log scale, each
    conversation's own line faint behind it; the last point is where the reply really ends."""
    import altair as alt

    order = list(dict.fromkeys(frame.sort_values("bin")["where"]))
    x = alt.X("where:N", sort=order, title="position in the reply (share of its tokens), then its real end",
              axis=alt.Axis(labelAngle=-30))
    y = alt.Y("p:Q", scale=alt.Scale(type="log"), title="P(<end_of_turn> next)", axis=alt.Axis(format=".0e"))
    colour = alt.Color("model:N", sort=["base", "SFT"], title="model", legend=alt.Legend(orient="bottom"))
    faint = alt.Chart(frame).mark_line(opacity=0.12, strokeWidth=1).encode(x=x, y=y, color=colour, detail="conversation:N")
    median = alt.Chart(frame).mark_line(point=True, strokeWidth=3).encode(
        x=x, y=alt.Y("median(p):Q", scale=alt.Scale(type="log")), color=colour,
        tooltip=["model", "where", alt.Tooltip("median(p):Q", format=".2g", title="median")])
    return alt.layer(faint, median).properties(width=WIDTH - 120, height=240)


def chart_marker_heatmap(frame, title: str = "", difference: bool = False):
    """The example's first reply tokens (rows, labelled) against `<bos>`, each turn-marker token and
    the summed user text and reply so far (columns, labelled): `attention.example_frame`. Weights on a
    fixed 0..1 square-root scale so two models' maps compare directly; `difference=True` draws
    SFT - base on a diverging scale. The numbers are printed in the cells, for the PDF."""
    import altair as alt

    rows = list(dict.fromkeys(frame.sort_values("row_order")["row"]))
    cols = list(dict.fromkeys(frame.sort_values("column_order")["column"]))
    x = alt.X("column:N", sort=cols, title=None, axis=alt.Axis(labelAngle=-40, labelLimit=120))
    y = alt.Y("row:N", sort=rows, title="reply token", axis=alt.Axis(labelLimit=140))
    top = float(frame["weight"].abs().max() or 1)
    colour = (alt.Color("weight:Q", title="SFT - base", scale=alt.Scale(scheme="redblue", reverse=True,
                                                                      domain=[-top, top], domainMid=0))
              if difference else
              alt.Color("weight:Q", title="attention", scale=alt.Scale(type="sqrt", scheme="greys", domain=[0, 1])))
    heat = alt.Chart(frame).mark_rect().encode(x=x, y=y, color=colour,
                                               tooltip=["row", "column", alt.Tooltip("weight:Q", format=".3f")])
    text = alt.Chart(frame).mark_text(fontSize=8).encode(
        x=x, y=y, text=alt.Text("weight:Q", format="+.2f" if difference else ".2f"),
        color=alt.condition(f"abs(datum.weight) > {0.5 * top:.4f}", alt.value("white"), alt.value("black")))
    width = min(WIDTH - 200, 34 * len(cols))
    return alt.layer(heat, text).properties(width=width, height=alt.Step(18), title=title)


CATEGORY_COLORS = {  # answer blue, canned orange, failures grey-red
    "answer": "#0072b2", "cut": "#56b4e9", "greeting": "#e69f00", "deflection": "#d55e00",
    "loop": "#999999", "echo": "#cc79a7", "empty": "#000000",
}


def chart_categories(results: Results, set: str = "heldout") -> alt.Chart:
    """What each system's replies are: the share of each reply category (sftlab.categories), one bar per system."""
    from ..categories import CATEGORIES

    rows = []
    for s in results.systems:
        counts = ((results.metrics["systems"][s].get(set) or {}).get("categories")) or {}
        n = sum(counts.values())
        rows += [{"system": label(s), "category": c, "replies": counts.get(c, 0), "share": counts.get(c, 0) / n,
                  "order": CATEGORIES.index(c)} for c in CATEGORIES if n]
    df = pd.DataFrame(rows, columns=["system", "category", "replies", "share", "order"])
    order = _system_order(results.systems)
    return alt.Chart(df).mark_bar().encode(
        y=alt.Y("system:N", sort=order, title=None),
        x=alt.X("replies:Q", stack="normalize", title="share of replies", axis=alt.Axis(format="%")),
        color=alt.Color("category:N", sort=list(CATEGORIES),
                        scale=alt.Scale(domain=list(CATEGORIES), range=[CATEGORY_COLORS[c] for c in CATEGORIES]),
                        legend=alt.Legend(title=None, orient="bottom", columns=4)),
        order=alt.Order("order:Q"),
        tooltip=["system:N", "category:N", "replies:Q", alt.Tooltip("share:Q", format=".0%")],
    ).properties(title=f"What the replies are ({'held-out' if set == 'heldout' else 'IFEval-style'} prompts)",
                 width=WIDTH - 160, height=alt.Step(26))


def paired_frame(results: Results, kind: str = "rate") -> pd.DataFrame:
    """Paired differences (metrics.json "comparisons") of the metrics of one kind ("rate": in
    percentage points; "score": 0-1 scores), one row per (pair, metric), with the reading."""
    from ..stats import verdict
    from .catalog import metric_spec

    rows = []
    for c in results.metrics.get("comparisons") or []:
        if c["set"] == "loss":
            continue
        m = metric_spec(c["metric"], c["set"])
        if m.kind != kind or not m.better:
            continue
        scale = 100.0 if kind == "rate" else 1.0
        prompts = SET_LABELS.get(c["set"], c["set"])
        rows.append({"pair": f"{label(c['a'])} − {label(c['b'])}", "metric": f"{m.label} ({prompts})"
                     if "IFEval" not in m.label and "multi-turn" not in m.label else m.label,
                     "difference": c["difference"] * scale, "lo": c["ci"][0] * scale, "hi": c["ci"][1] * scale,
                     "reading": {"better": "first system better", "worse": "first system worse",
                                 "unclear": "not separable"}[verdict(c, m.better)],
                     "better": f"{m.better} is better"})
    return pd.DataFrame(rows, columns=["pair", "metric", "difference", "lo", "hi", "reading", "better"])


def chart_paired_differences(results: Results, kind: str = "rate") -> alt.Chart:
    """Forest plot of paired differences between the compared systems: each metric's difference
    (dot) with its 95% interval (bar) on the same prompts; an interval that crosses the zero line
    cannot tell the two systems apart. Colour: whether the first system of the pair is better."""
    df = paired_frame(results, kind)
    unit = "difference, percentage points" if kind == "rate" else "difference"
    pairs = list(dict.fromkeys(df["pair"]))
    base = alt.Chart().encode(
        y=alt.Y("metric:N", title=None, sort=list(dict.fromkeys(df["metric"]))),
        color=alt.Color("reading:N", scale=alt.Scale(domain=["first system better", "first system worse",
                                                            "not separable"],
                                                    range=["#1a7f37", "#c44e52", "#8c8c8c"]),
                        legend=alt.Legend(title=None, orient="bottom")),
        tooltip=["pair:N", "metric:N", alt.Tooltip("difference:Q", format="+.3f"), alt.Tooltip("lo:Q", format="+.3f"),
                 alt.Tooltip("hi:Q", format="+.3f"), "better:N"],
    )
    bars = base.mark_rule(strokeWidth=2.5).encode(x=alt.X("lo:Q", title=unit), x2="hi:Q")
    dots = base.mark_circle(size=70, opacity=1).encode(x="difference:Q")
    zero = alt.Chart().mark_rule(color="#333333", strokeDash=[4, 3]).encode(x=alt.datum(0))
    return alt.layer(zero, bars, dots, data=df).properties(width=WIDTH - 330, height=alt.Step(18)).facet(
        row=alt.Row("pair:N", sort=pairs, title=None, header=alt.Header(labelAngle=0, labelAlign="left",
                                                                          labelFontWeight="bold")),
    ).properties(title="Paired differences on the same prompts, with 95% intervals")
