"""What changed inside the model, as chapter 7 shows it: read from RUN/inside.json, which
`sftlab inspect RUN` measures once (sftlab.inspect), so no chapter loads two models to draw it.

    load_inside         the file, or a clear error saying which command writes it
    segment_shift       per segment, base and SFT shares and the paired change with its interval
    layer_profile       per layer and segment, the mean share (for the line chart)
    most_changed_layer  where the first reply tokens' share on the turn markers moved most
    eot_frame / eot_summary   the probability of <end_of_turn> along each reply, and its summary
    example_frame       the labelled heatmap of the example conversation in one layer
    show_segments       the example conversation's tokens coloured by segment
"""

from __future__ import annotations

import html as _html
import json
from pathlib import Path

from ..errors import SftlabError
from ..inspect import INSIDE_FILE, SEGMENTS
from .display import show_rich
from .formatting import latex_escape
from .results import Results

SEGMENT_COLOURS = {  # the same colours in token pictures and charts
    "<bos>": "#7f7f7f", "turn markers": "#d62728", "user text": "#1f77b4",
    "earlier replies": "#9467bd", "reply so far": "#2ca02c", "reply": "#2ca02c",
}
MODELS = {"base": "base", "sft": "SFT"}


class InsideMissingError(SftlabError, FileNotFoundError):
    """The run has no inside.json yet."""


def load_inside(results: Results | str | Path) -> dict:
    """RUN/inside.json; InsideMissingError naming the command that writes it when it is not there."""
    path = Path(results.path if isinstance(results, Results) else results) / INSIDE_FILE
    if not path.is_file():
        raise InsideMissingError(f"{path} is missing: `sftlab inspect {path.parent}` measures it (a few minutes)")
    return json.loads(path.read_text(encoding="utf-8"))


def shares_frame(inside: dict, which: str = "all"):
    """Tidy shares: conversation, model ("base"/"SFT"), layer, segment, share. `which` is "all"
    (every reply token) or "first" (the first `first_reply_tokens` of each reply)."""
    import pandas as pd

    rows = []
    for key, model in MODELS.items():
        for cid, layers in zip(inside["conversation_ids"], inside["shares"][which][key]):
            for layer, values in enumerate(layers):
                rows += [{"conversation": cid, "model": model, "layer": layer, "segment": s, "share": v}
                         for s, v in zip(inside["segments"], values)]
    return pd.DataFrame(rows)


def segment_shift(inside: dict, which: str = "all", *, n_resamples: int = 1000, seed: int = 0):
    """Per segment: the share of reply-token attention (mean over layers, then conversations) in the
    base and the SFT model, and the paired change SFT - base with a bootstrap interval over
    conversations. Columns: segment, base, SFT, difference, lo, hi, conversations."""
    import pandas as pd

    from ..stats import paired_difference

    frame = shares_frame(inside, which)
    per = frame.groupby(["model", "conversation", "segment"])["share"].mean().unstack("segment")
    rows = []
    for segment in SEGMENTS:
        if segment not in per.columns or not per[segment].any():
            continue
        base, sft = per.loc["base"][segment], per.loc["SFT"][segment]
        d = paired_difference(sft.tolist(), base.reindex(sft.index).tolist(), n_resamples=n_resamples, seed=seed)
        rows.append({"segment": segment, "base": float(base.mean()), "SFT": float(sft.mean()),
                     "difference": d["difference"], "lo": d["ci"][0], "hi": d["ci"][1], "conversations": len(sft)})
    return pd.DataFrame(rows)


def layer_profile(inside: dict, which: str = "all"):
    """Mean share over conversations per model, layer and segment (segments never attended left out)."""
    frame = shares_frame(inside, which)
    out = frame.groupby(["model", "layer", "segment"], as_index=False)["share"].mean()
    present = out.groupby("segment")["share"].max()
    return out[out["segment"].isin(present[present > 0].index)]


def most_changed_layer(inside: dict, which: str = "first", segment: str = "turn markers") -> dict:
    """The layer where SFT moved `segment`'s share most (mean over conversations): {layer, base, SFT, change}."""
    prof = layer_profile(inside, which)
    wide = prof[prof["segment"] == segment].pivot(index="layer", columns="model", values="share")
    change = (wide["SFT"] - wide["base"])
    layer = int(change.abs().idxmax())
    return {"layer": layer, "base": float(wide.at[layer, "base"]), "SFT": float(wide.at[layer, "SFT"]),
            "change": float(change[layer])}


def eot_frame(inside: dict, bins: int = 10):
    """The probability of `<end_of_turn>` as the next token along each reply, per model: rows conversation,
    model, where ("reply, 0-10%" ... "reply, 90-100%" before the end; "at the end": where the reply
    really ends), p (the median over the positions of that bin)."""
    import numpy as np
    import pandas as pd

    rows = []
    for key, model in MODELS.items():
        for cid, replies in zip(inside["conversation_ids"], inside["eot"][key]):
            for r in replies[-1:]:  # the last reply: the one the conversation ends with
                before, end = r["p"][:-1], r["p"][-1]
                if before:
                    edges = np.linspace(0, len(before), bins + 1).round().astype(int)
                    for b in range(bins):
                        chunk = before[edges[b]:edges[b + 1]]
                        if chunk:
                            rows.append({"conversation": cid, "model": model, "bin": b,
                                         "where": f"{100 * b // bins}-{100 * (b + 1) // bins}%", "p": float(np.median(chunk))})
                rows.append({"conversation": cid, "model": model, "bin": bins, "where": "at the end", "p": float(end)})
    return pd.DataFrame(rows)


def eot_summary(inside: dict) -> dict:
    """Per model: median probability of `<end_of_turn>` where the reply ends ("end") and over every
    earlier reply position ("before"), and the share of replies where it is above one half at the end."""
    import numpy as np

    out = {}
    for key, model in MODELS.items():
        ends = [r["p"][-1] for replies in inside["eot"][key] for r in replies[-1:]]
        before = [p for replies in inside["eot"][key] for r in replies[-1:] for p in r["p"][:-1]]
        out[model] = {"end": float(np.median(ends)), "before": float(np.median(before)),
                      "end_above_half": float(np.mean([p > 0.5 for p in ends])), "replies": len(ends)}
    return out


def example_frame(inside: dict, model: str, layer: int):
    """The example conversation's heatmap in one layer, tidy: row (reply token, labelled), column (`<bos>`,
    each turn-marker token, "user text", "reply so far"), weight. `model` "base", "SFT" or "SFT - base"."""
    import pandas as pd

    ex = inside["example"]
    if model == "SFT - base":
        values = [[s - b for s, b in zip(rs, rb)] for rs, rb in zip(ex["sft"][layer], ex["base"][layer])]
    else:
        values = ex["sft" if model == "SFT" else "base"][layer]
    rows_ = [f"{i + 1}: {tok!r}" for i, tok in enumerate(ex["rows"])]
    return pd.DataFrame([{"row": r, "row_order": i, "column": c, "column_order": j, "weight": round(v, 5)}
                         for i, (r, vals) in enumerate(zip(rows_, values)) for j, (c, v) in enumerate(zip(ex["columns"], vals))])


def show_segments(inside: dict) -> None:
    """Display the example conversation's tokens coloured by segment (the grouping of the shares)."""
    ex = inside["example"]
    html_parts, latex_parts = [], []
    for token, segment in zip(ex["tokens"], ex["segments"]):
        colour = SEGMENT_COLOURS[segment]
        text = _html.escape(token).replace("\n", "↵")
        html_parts.append(f'<span title="{_html.escape(segment)}" style="border-bottom:3px solid {colour};'
                          f'margin:1px;white-space:pre">{text}</span><wbr>' + ("<br>" if "\n" in token else ""))
        ltext = latex_escape(token.replace("\n", "")).replace(" ", "~") + r"\ensuremath{\hookleftarrow}" * token.count("\n")
        latex_parts.append(rf"\textcolor[HTML]{{{colour.lstrip('#').upper()}}}{{{ltext or chr(32)}}}"
                           + (r"\newline " if "\n" in token else r"\allowbreak "))
    names = [s for s in ("<bos>", "turn markers", "user text", "reply") if s in set(ex["segments"])]
    legend = " · ".join(f'<span style="color:{SEGMENT_COLOURS[s]};font-weight:600">{_html.escape(s)}</span>' for s in names)
    latex_legend = " $\\cdot$ ".join(
        rf"\textcolor[HTML]{{{SEGMENT_COLOURS[s].lstrip('#').upper()}}}{{\bfseries {latex_escape(s)}}}" for s in names)
    show_rich(
        '<div class="sftlab-tokens" style="font-family:monospace;font-size:0.85em;line-height:1.8;'
        'border:1px solid #ddd;padding:6px">' + "".join(html_parts) + f'</div><div style="font-size:0.8em">{legend}</div>',
        r"{\noindent\ttfamily\small " + "".join(latex_parts) + r"\par}" + r"{\footnotesize\noindent " + latex_legend + r"\par}",
        "".join(ex["tokens"]),
    )


def shift_table(inside: dict):
    """`segment_shift` for the first reply tokens and for every reply token, side by side, as the
    book prints it: shares in %, changes in percentage points with their interval."""
    import pandas as pd

    from .numbers import pct, pp

    first, every = (segment_shift(inside, w).set_index("segment") for w in ("first", "all"))
    rows = []
    for segment in [s for s in SEGMENTS if s in first.index or s in every.index]:
        row = {"segment": segment}
        for name, frame in (("first tokens", first), ("all reply tokens", every)):
            r = frame.loc[segment] if segment in frame.index else None
            row[f"{name}: base"] = pct(r["base"], 1) if r is not None else "–"
            row[f"{name}: SFT"] = pct(r["SFT"], 1) if r is not None else "–"
            row[f"{name}: change"] = pp(r["difference"], r["lo"], r["hi"]) if r is not None else "–"
        rows.append(row)
    return pd.DataFrame(rows)


def eot_by_reference_length(inside: dict, results: Results) -> dict:
    """The SFT model's replies split at one half of P(<end_of_turn>) where the reference ends: how many
    fall below, and the median length (characters) of the reference replies in each group."""
    import statistics

    from .results import samples

    ends = {cid: replies[-1]["p"][-1] for cid, replies in zip(inside["conversation_ids"], inside["eot"]["sft"])}
    length = {str(s["id"]): len(s["reference"]) for s in samples(results, "heldout") if str(s["id"]) in ends}
    low = [length[c] for c, p in ends.items() if p <= 0.5 and c in length]
    high = [length[c] for c, p in ends.items() if p > 0.5 and c in length]
    return {"below": len(low), "above": len(high),
            "median_chars_below": statistics.median(low) if low else None,
            "median_chars_above": statistics.median(high) if high else None}
