"""The book's variables, group by group (`GROUPS`: name -> function of the project root returning
a mapping of display strings, or None when the group's results are missing). `sftlab book
variables` writes them to `_variables.yml` (sftlab.book.variables); chapters print them with
`{{< var group.key >}}`.

Every value is a string as the prose prints it ("93%", "+17 pp [+5, +28]", "2.5e-15"), so a
sentence reads the same in the HTML, the PDF and the notebooks.
"""

from __future__ import annotations

import math
from pathlib import Path

from .results import load_results


def pct(x: float, digits: int = 0) -> str:
    """0.9333 -> "93%"; digits 1 -> "93.3%"."""
    return f"{100 * x:.{digits}f}%"


def pp(d: float, lo: float, hi: float, digits: int = 1) -> str:
    """A paired change of shares in percentage points with its interval: "+1.2 pp [+0.4, +2.0]"."""
    return f"{100 * d:+.{digits}f} pp [{100 * lo:+.{digits}f}, {100 * hi:+.{digits}f}]"


def prob(p: float) -> str:
    """A probability as the prose prints it: "0.62", "0.041", "2.5e-15"."""
    if p <= 0:
        return "0"
    if p >= 0.01:
        return f"{p:.2f}"
    if p >= 0.001:
        return f"{p:.3f}"
    exponent = math.floor(math.log10(p))
    return f"{p / 10 ** exponent:.1f}e{exponent}"


def _default(root: Path):
    return load_results("default", root=root, check=False)


def inside_numbers(root: Path) -> dict | None:
    """Chapter 7: what changed inside the model (RUN/inside.json, lora_norms.jsonl)."""
    from . import attention, lora

    results = _default(root)
    try:
        inside = attention.load_inside(results)
    except attention.InsideMissingError:
        return None
    eot = attention.eot_summary(inside)
    out = {
        "conversations": str(len(inside["conversation_ids"])),
        "first_tokens": str(inside["first_reply_tokens"]),
        "example_id": str(inside["example"]["id"]),
        "eot_end_base": prob(eot["base"]["end"]), "eot_end_sft": prob(eot["SFT"]["end"]),
        "eot_before_base": prob(eot["base"]["before"]), "eot_before_sft": prob(eot["SFT"]["before"]),
        "eot_above_half_base": pct(eot["base"]["end_above_half"]),
        "eot_above_half_sft": pct(eot["SFT"]["end_above_half"]),
        # how many powers of ten SFT added where the reply ends (the base model's is near 1e-15)
        "eot_orders_end": f"{math.log10(max(eot['SFT']['end'], 1e-300) / max(eot['base']['end'], 1e-300)):.0f}",
        "example_rule": inside["example_rule"],
    }
    split = attention.eot_by_reference_length(inside, results)
    out.update({"eot_below_half_n": str(split["below"]),
                "eot_below_half_chars": f"{split['median_chars_below']:,.0f}" if split["below"] else "n/a",
                "eot_above_half_chars": f"{split['median_chars_above']:,.0f}" if split["above"] else "n/a"})
    if inside.get("eot_row"):
        out["eot_row_change"] = pct(inside["eot_row"]["relative_change"], 0)
    for which in ("first", "all"):
        for row in attention.segment_shift(inside, which).itertuples():
            key = f"{which}_{row.segment.strip('<>').replace(' ', '_')}"
            out[f"{key}_base"], out[f"{key}_sft"] = pct(row.base, 1), pct(row.SFT, 1)
            out[f"{key}_change"] = pp(row.difference, row.lo, row.hi)
    top = attention.most_changed_layer(inside)
    out.update({"layer": str(top["layer"]), "layer_markers_base": pct(top["base"], 1),
                "layer_markers_sft": pct(top["SFT"], 1)})
    norms = lora.lora_norms_frame(results.path)
    best = norms.loc[norms["relative_norm"].idxmax()]
    by_kind = norms.groupby("kind")["relative_norm"].mean()
    by_layer = norms.groupby("layer")["relative_norm"].mean()
    out.update({"norm_max": f"{best['relative_norm']:.3f}", "norm_max_layer": str(int(best["layer"])),
                "norm_max_module": str(best["module"]), "norm_layer_max": str(int(by_layer.idxmax())),
                "norm_attention": f"{by_kind.get('attention', float('nan')):.4f}",
                "norm_mlp": f"{by_kind.get('MLP', float('nan')):.4f}"})
    return out


GROUPS = {
    "inside": inside_numbers,
}
