"""Reply cards: one prompt and every system's reply side by side (chapter 6, Q5.4).

Text is escaped (replies may contain HTML or LaTeX), each reply says whether it stopped or
hit the token limit, long replies are cut with a visible note; HTML for the site and
notebooks, LaTeX for the PDF. `example_ids` picks the prompts shown, by a stated rule.
"""

from __future__ import annotations

import html as _html
import re

from .catalog import SYSTEM_COLORS, SYSTEMS, label
from .display import show_rich
from .formatting import latex_escape
from .results import Results, samples



def example_ids(results: Results, set: str = "heldout", n: int = 3, a: str = "sft", b: str = "base_chat") -> list[str]:
    """A deterministic pick: the first n ids, plus the first prompt where a stopped and b did not
    (held-out) or where a followed every instruction and b did not (IFEval), if any."""
    rows = samples(results, set)
    picked = [str(s["id"]) for s in rows[:n]]
    for s in rows:
        ra, rb = s["replies"].get(a), s["replies"].get(b)
        if not ra or not rb or str(s["id"]) in picked:
            continue
        if set == "ifeval":
            wins = all(ra.get("checks_passed") or [False]) and not all(rb.get("checks_passed") or [False])
        else:
            wins = ra.get("stopped") and not rb.get("stopped")
        if wins:
            picked.append(str(s["id"]))
            break
    return picked


def truncate(text: str, max_chars: int | None) -> tuple[str, int]:
    """(shown text, characters hidden), cutting at a word boundary near max_chars."""
    if max_chars is None or len(text) <= max_chars:
        return text, 0
    cut = text.rfind(" ", int(max_chars * 0.8), max_chars)
    cut = cut if cut > 0 else max_chars
    return text[:cut].rstrip(), len(text) - cut


def reply_status(reply: dict) -> str:
    """"stopped (57 tokens)" or "hit the token limit (128 tokens)"."""
    n = reply.get("n_tokens")
    tokens = f" ({n} tokens)" if n is not None else ""
    return ("stopped" if reply.get("stopped") else "hit the token limit") + tokens


def _check_names(sample: dict) -> list[str]:
    out = []
    for c in sample.get("checks") or []:
        args = ", ".join(f"{k}={v}" for k, v in c.items() if k != "type")
        out.append(f"{c['type']}({args})" if args else c["type"])
    return out


_BOX = ("border:1px solid #ccc;border-radius:6px;padding:6px 8px;margin:0;"
        "font-size:0.85em;line-height:1.35;min-width:0")


_TEXT = "white-space:pre-wrap;word-break:break-word;margin:4px 0 0 0;font-family:inherit"


PDF_MAX_CHARS = 320  # a printed card: a looping reply takes a few lines, not pages
PDF_MAX_LINES = 6


def pdf_cut(text: str, max_chars: int = PDF_MAX_CHARS, max_lines: int = PDF_MAX_LINES) -> tuple[str, int]:
    """(shown, characters hidden): at most `max_lines` lines and about `max_chars` characters (the PDF's
    card by default; the HTML card with its own limits)."""
    lines = (text or "").split("\n")
    kept = "\n".join(lines[:max_lines])
    shown, _ = truncate(kept, max_chars)
    return shown, len(text or "") - len(shown)


HTML_MAX_LINES = 12  # a reply of many short lines ("next" 90 times) is tall without being long


def comparison_card(sample: dict, systems=None, max_chars: int | None = 700,
                    max_lines: int | None = HTML_MAX_LINES) -> tuple[str, str, str]:
    """(html, latex, plain) of one prompt and every system's reply, side by side.

    Text is escaped (replies may contain HTML or LaTeX), each reply says whether it
    stopped or hit the token limit, and long replies are cut with a visible note: after
    `max_lines` lines or `max_chars` characters in HTML, after `PDF_MAX_LINES` lines or
    `PDF_MAX_CHARS` characters in the PDF, where a reply that loops would otherwise fill pages.
    """

    systems = [s for s in (systems or SYSTEMS) if s in sample["replies"]]
    checks = _check_names(sample)

    def cut(text):
        text = text or ""
        shown, _ = pdf_cut(text, max_chars if max_chars is not None else len(text), max_lines or len(text) + 1)
        hidden = len(text) - len(shown)
        return shown, (f"[… {hidden:,} more characters not shown]" if hidden else "")

    def tex_cut(text):
        shown, hidden = pdf_cut(text or "")
        return shown, (f"[… {hidden:,} more characters not shown]" if hidden else "")

    # --- prompt
    turns = sample.get("prompt") or []
    h = [f'<div style="{_BOX};background:#f7f7f7"><b>Prompt</b> · {_html.escape(sample.get("set", ""))} · '
         f'id {_html.escape(str(sample.get("id")))}']
    tex = [r"\par\noindent\textbf{Prompt} (" + latex_escape(f"{sample.get('set')}, id {sample.get('id')}") + r")\par"]
    plain = [f"PROMPT ({sample.get('set')}, id {sample.get('id')})"]
    for m in turns:
        shown, note = cut(m["content"])
        h.append(f'<div style="{_TEXT}"><i>{_html.escape(m["role"])}:</i> {_html.escape(shown)}'
                 + (f' <span style="color:#a00">{_html.escape(note)}</span>' if note else "") + "</div>")
        tshown, tnote = tex_cut(m["content"])
        tex.append(r"\noindent\emph{" + latex_escape(m["role"]) + ":} " + _latex_text(tshown)
                   + (r" \emph{" + latex_escape(tnote) + "}" if tnote else "") + r"\par")
        plain.append(f"{m['role']}: {shown} {note}".rstrip())
    if checks:
        h.append(f'<div style="{_TEXT}"><i>checks:</i> {_html.escape(", ".join(checks))}</div>')
        tex.append(r"\noindent\emph{checks:} " + latex_escape(", ".join(checks)) + r"\par")
        plain.append("checks: " + ", ".join(checks))
    h.append("</div>")

    # --- replies
    h.append('<div style="display:grid;grid-template-columns:repeat(auto-fit,minmax(240px,1fr));gap:8px;'
             'margin-top:8px">')
    entries = [(s, label(s), sample["replies"][s]) for s in systems]
    if sample.get("reference"):
        entries.append(("_ref", "ShareGPT reference reply", {"text": sample["reference"]}))
    for key, name, reply in entries:
        shown, note = cut(reply.get("text", ""))
        status = reply_status(reply) if key != "_ref" else "what the dataset's assistant wrote"
        passed = reply.get("checks_passed")
        if passed is not None and checks:
            marks = ", ".join(f"{c}: {'pass' if ok else 'fail'}" for c, ok in zip(checks, passed))
            status += f" · {marks}"
        color = SYSTEM_COLORS.get(key, "#444")
        flag_color = "#1a7f37" if reply.get("stopped") else ("#a00" if key != "_ref" else "#555")
        h.append(
            f'<div class="sftlab-card" style="{_BOX};border-top:4px solid {color}"><b>{_html.escape(name)}</b>'
            f'<div style="color:{flag_color};font-size:0.9em">{_html.escape(status)}</div>'
            f'<div style="{_TEXT}">{_html.escape(shown) if shown.strip() else "<i>(empty reply)</i>"}</div>'
            + (f'<div style="color:#a00;font-size:0.9em">{_html.escape(note)}</div>' if note else "")
            + "</div>"
        )
        tshown, tnote = tex_cut(reply.get("text", ""))
        tex.append(r"\par\medskip\noindent\textbf{" + latex_escape(name) + r"} --- \emph{" + latex_escape(status)
                   + r"}\par\noindent{\small " + (_latex_text(tshown) if tshown.strip() else r"\emph{(empty reply)}")
                   + (r" \emph{" + latex_escape(tnote) + "}" if tnote else "") + r"}\par")
        plain.append(f"--- {name}: {status}\n{shown}\n{note}".rstrip())
    h.append("</div>")
    return ("".join(h), "\n".join(tex) + "\n\\medskip\n", "\n".join(plain))


def _latex_text(text: str) -> str:
    """Escaped text with its paragraph and line breaks kept, safe anywhere in a paragraph."""

    paras = []
    for para in re.split(r"\n\s*\n", text.strip()):
        lines = [latex_escape(line) for line in para.split("\n") if line.strip()]
        if lines:
            paras.append(r"\newline ".join(lines))
    return r"\par ".join(paras)


def side_by_side(results: Results, id, set: str | None = None, max_chars: int | None = 700, systems=None) -> None:
    """Display one prompt and every system's reply (HTML in the site, LaTeX in the PDF)."""

    pool = [s for s in results.samples if str(s["id"]) == str(id) and (set is None or s["set"] == set)]
    if not pool:
        raise KeyError(f"no sample with id {id!r}{f' in set {set!r}' if set else ''} in {results.path}")
    show_rich(*comparison_card(pool[0], systems=systems, max_chars=max_chars))
