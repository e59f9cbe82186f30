"""How the book writes numbers and text: durations, counts, values with intervals, escaping.

One place for "0.175 [0.126, 0.216]", "12.6 min", "3.80 M" and the escaping that keeps a
reply's text from being read as Markdown or LaTeX; every table and sentence of the book
formats its numbers with these functions.
"""

from __future__ import annotations

import math
import numbers
import re



def fmt_duration(seconds: float | None) -> str:
    """42 -> "42 s"; 754 -> "12.6 min"; 7300 -> "2.0 h"."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_count(n) -> str:
    """1234567 -> "1,234,567"; 3.8e6 params read better as "3.80 M" (see fmt_params)."""
    return "n/a" if n is None else f"{int(n):,}"


def fmt_params(n) -> str:
    """3797632 -> "3.80 M"; 271895808 -> "271.9 M"."""
    if n is None:
        return "n/a"
    n = float(n)
    return f"{n / 1e6:.2f} M" if n < 1e7 else f"{n / 1e6:.1f} M"


def fmt_value(value, kind: str = "score") -> str:
    """One number as the book prints it. kind: rate (as %), score (3 decimals), nats, length, ppl."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a" if value is None else str(value)
    if kind == "rate":
        return f"{100 * value:.0f}%"
    if kind == "length":
        return f"{value:.1f}"
    if kind in ("nats", "ppl"):
        return f"{value:.2f}" if kind == "ppl" or abs(value) >= 0.1 else f"{value:.3f}"
    return f"{value:.3f}"


def fmt_ci(entry: dict | None, kind: str = "score") -> str:
    """{"value": 0.175, "ci": [0.126, 0.216]} -> "0.175 [0.126, 0.216]"; no interval -> "0.175"."""
    if not entry or entry.get("value") is None:
        return "–"
    text = fmt_value(entry["value"], kind)
    ci = entry.get("ci")
    if ci:
        text += f" [{fmt_value(ci[0], kind)}, {fmt_value(ci[1], kind)}]"
    return text


def fmt_diff(entry: dict | None, kind: str = "score") -> str:
    """A paired difference with its interval, signed, in the metric's unit: rates in percentage
    points. {"difference": 0.933, "ci": [0.833, 1.0]} as a rate -> "+93 pp [+83, +100]"."""
    if not entry or entry.get("difference") is None:
        return "–"

    # Losses get a third decimal when the difference would otherwise print as +0.00: a small
    # difference whose interval excludes zero must not read as "+0.00 [+0.00, +0.00]".
    small = kind in ("nats", "ppl") and abs(entry["difference"]) < 0.005

    def one(v):
        if kind == "rate":
            return f"{100 * v:+.0f}"
        if kind == "length":
            return f"{v:+.1f}"
        if kind in ("nats", "ppl"):
            return f"{v:+.3f}" if small else f"{v:+.2f}"
        return f"{v:+.3f}"

    unit = " pp" if kind == "rate" else ""
    low, high = entry["ci"]
    return f"{one(entry['difference'])}{unit} [{one(low)}, {one(high)}]"


def md_escape(text: str) -> str:
    """Text for a Markdown table cell (what the PDF prints): no raw HTML, no emphasis, no column
    breaks, no math of its own; a newline shows as a return arrow and the symbols of `PDF_SYMBOLS`
    as math, since the PDF's text font has no glyph for them.

    >>> print(md_escape("a <<b>> c → d"))
    a \\<\\<b\\>\\> c $\\rightarrow$ d
    """
    text = re.sub(r"([\\`*_\[\]<>|$#~^])", r"\\\1", str(text).replace("\n", "↵"))
    text = "".join(_md_symbol(c) for c in text)
    return _UNSUPPORTED_RUN.sub(lambda m: f"*\\[{_another_script(m.group())}\\]*", text)


def _another_script(run: str) -> str:
    """The placeholder for a run of characters the PDF font cannot show: how many were left out."""
    n = sum(not c.isspace() for c in run)
    return f"{n} character{'s' if n != 1 else ''} in another script"


def _md_symbol(c: str) -> str:
    """A character as the PDF's Markdown writes it: a `PDF_SYMBOLS` symbol as inline math (or its
    plain stand-in), anything else as is."""
    if c not in PDF_SYMBOLS:
        return c
    stand_in = PDF_SYMBOLS[c]
    return f"${stand_in}$" if stand_in.startswith("\\") else stand_in


def md_code(text: str) -> str:
    """Text as a Markdown code span (newlines shown as ↵), safe whatever backticks it holds."""
    text = str(text).replace("\n", "↵")
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def fmt_field(value) -> str:
    """A recipe value as the config table shows it: lists comma-separated, floats short (5e-04 -> 0.0005)."""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def fmt_cell(value, digits: int) -> str:
    """One table cell: "" for missing, yes/no for booleans, 1,234 for integers, `digits` decimals
    for floats (significant digits for tiny ones), text as is."""
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        v = float(value)
        if v != 0 and abs(v) < 10 ** (-digits):
            return f"{v:.{digits}g}"
        return f"{v:,.{digits}f}"
    return str(value)


# Characters the PDF's font (Latin Modern, xelatex) has glyphs for: Latin scripts and common
# punctuation. Anything else (a base model's looping Korean or Chinese, emoji) would print as
# blank space, so `latex_escape` writes a visible note in its place, and symbols the book itself
# uses go as math (`PDF_SYMBOLS`; "" drops a purely decorative one).
PDF_SUPPORTED = "\u0000-\u024f\u2010-\u2027\u2030-\u205e\u20ac\u2122"
PDF_SYMBOLS = {
    "↵": r"\hookleftarrow", "⏎": r"\hookleftarrow", "→": r"\rightarrow", "←": r"\leftarrow",
    "Δ": r"\Delta", "α": r"\alpha", "β": r"\beta", "−": "-", "≈": r"\approx", "≤": r"\leq",
    "≥": r"\geq", "∅": r"\emptyset", "◀": r"\blacktriangleleft", "✓": r"\checkmark",
    "⏹": "",
}
_PDF_UNSUPPORTED = rf"[^{PDF_SUPPORTED}]"
_UNSUPPORTED_RUN = re.compile(rf"{_PDF_UNSUPPORTED}+(?:\s+{_PDF_UNSUPPORTED}+)*")


def latex_escape(text: str) -> str:
    """Escape text for LaTeX (used for the PDF version of rich HTML output).

    A run of characters the PDF font cannot show becomes a visible note saying how many
    were left out: "天气很好" -> "[4 characters in another script]".
    """
    table = {
        "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
        "%": r"\%", "_": r"\_", "^": r"\^{}", "~": r"\~{}", "<": r"\textless{}", ">": r"\textgreater{}",
    }
    table.update({c: (rf"\ensuremath{{{m}}}" if m.startswith("\\") else m) for c, m in PDF_SYMBOLS.items()})
    text = "".join(" " if c in PDF_SYMBOLS and not PDF_SYMBOLS[c] else c for c in text)
    out, pos = [], 0
    for match in _UNSUPPORTED_RUN.finditer("".join("x" if c in table else c for c in text)):
        out.append("".join(table.get(c, c) for c in text[pos:match.start()]))
        out.append(rf"\textit{{[{_another_script(match.group())}]}}")
        pos = match.end()
    out.append("".join(table.get(c, c) for c in text[pos:]))
    return "".join(out)



_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)


def pdf_safe_markdown(text: str) -> str:
    """Markdown that prints in the PDF as it reads in HTML: outside code spans, the `PDF_SYMBOLS` as
    math and runs of other scripts as a counted placeholder; inside code spans (which cannot hold
    math) a newline arrow as `\\n` and other unprintable characters as the same placeholder.

    >>> print(pdf_safe_markdown("a → b, `x↵y`, 天气"))
    a $\\rightarrow$ b, `x\\ny`, *[2 characters in another script]*
    """
    out, pos = [], 0
    for match in _CODE_SPAN.finditer(text):
        out.append(_safe_prose(text[pos:match.start()]))
        code = match.group(2).replace("↵", "\\n").replace("⏎", "\\n")
        code = "".join(PDF_SYMBOLS[c] if c in PDF_SYMBOLS and not PDF_SYMBOLS[c].startswith("\\") else c for c in code)
        code = _UNSUPPORTED_RUN.sub(lambda m: f"[{_another_script(m.group())}]", code)
        out.append(f"{match.group(1)}{code}{match.group(1)}")
        pos = match.end()
    out.append(_safe_prose(text[pos:]))
    return "".join(out)


def _safe_prose(text: str) -> str:
    text = "".join(_md_symbol(c) for c in text)
    return _UNSUPPORTED_RUN.sub(lambda m: f"*[{_another_script(m.group())}]*", text)
