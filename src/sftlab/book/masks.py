"""Tokens, chat templates and loss masks drawn for the reader (chapters 1, 3 and 4).

Which tokens the model learns from (SFT's assistant-only mask against next-token
prediction's every token), how a conversation becomes tokens with control tokens
highlighted, the template itself laid out for reading, and the pitfalls the chat format
avoids (pad = end-of-turn, template injection), each as HTML for the site and LaTeX for
the PDF.
"""

from __future__ import annotations

import html as _html
import re

import pandas as pd

from ..chat import control_token_ids, encode_conversation, token_table
from .display import show_rich
from .formatting import latex_escape
from .results import Results, samples



MASK_COLOURS = {"target": "#b7e4c7", "context": "#eeeeee"}  # green: in the loss; grey: read only


def pretraining_targets(encoded: dict) -> list[int]:
    """Next-token prediction's targets: every token but the first (nothing precedes it to predict it).

    >>> pretraining_targets({"input_ids": [2, 105, 2364, 107]})
    [0, 1, 1, 1]
    """
    n = len(encoded["input_ids"])
    return [0] + [1] * (n - 1) if n else []


def _mask_rows(tokenizer, encoded: dict, targets):
    rows = token_table(tokenizer, encoded)
    targets = list(encoded["assistant_masks"]) if targets is None else list(targets)
    if len(targets) != len(rows):
        raise ValueError(f"{len(targets)} targets for {len(rows)} tokens")
    for row, t in zip(rows, targets):
        row["target"] = bool(t)
    return rows


def mask_legend_text(objective: str = "sft") -> str:
    what = "reply tokens and their <end_of_turn>" if objective == "sft" else "every token after the first"
    return f"green: a training target ({what}); grey: context only, no loss; boxed: control token; ↵: newline"


def mask_html(tokenizer, encoded: dict, targets=None, *, legend: bool = True, objective: str = "sft") -> str:
    """Coloured tokens: green where the loss applies, grey where the token is context only.

    `encoded` is `encode_conversation`'s output; `targets` (one 0/1 per token) defaults to
    its assistant mask (SFT); pass `pretraining_targets(encoded)` for next-token prediction.
    Every token is one `<span class="tok" data-target="0|1" data-control="0|1">`, with its id
    in the tooltip; newlines show as ↵ and break the line.
    """
    spans = []
    for row in _mask_rows(tokenizer, encoded, targets):
        colour = MASK_COLOURS["target" if row["target"] else "context"]
        border = "1px solid #333" if row["control"] else "1px solid transparent"
        weight = "700" if row["control"] else "400"
        text = _html.escape(row["token"]).replace("\n", "↵")
        br = "<br>" if "\n" in row["token"] else ""
        spans.append(
            f'<span class="tok" data-target="{int(row["target"])}" data-control="{int(row["control"])}" '
            f'title="position {row["position"]}, id {row["id"]}" '
            f'style="background:{colour};border:{border};font-weight:{weight};border-radius:3px;'
            f'padding:0 1px;margin:1px;white-space:pre">{text}</span><wbr>{br}'
        )
    body = (
        # <wbr> after each span: spans with nothing between them give a browser no place to wrap
        '<div class="sftlab-tokens" style="font-family:monospace;font-size:0.85em;line-height:1.9;'
        'border:1px solid #ddd;padding:6px">' + "".join(spans) + "</div>"
    )
    if legend:
        body += f'<div style="font-size:0.8em;color:#555">{_html.escape(mask_legend_text(objective))}</div>'
    return body


def mask_latex(tokenizer, encoded: dict, targets=None, *, legend: bool = True, objective: str = "sft") -> str:
    """The same picture as `mask_html` for the PDF: `\\colorbox`es (xcolor), control tokens framed."""
    parts = []
    for row in _mask_rows(tokenizer, encoded, targets):
        colour = MASK_COLOURS["target" if row["target"] else "context"].lstrip("#").upper()
        text = latex_escape(row["token"].replace("\n", "")).replace(" ", "~")
        if "\n" in row["token"]:
            text += r"\ensuremath{\hookleftarrow}" * row["token"].count("\n")
        if not text:
            text = r"\,"
        box = (
            rf"\fcolorbox[HTML]{{333333}}{{{colour}}}{{\strut\bfseries {text}}}"
            if row["control"]
            else rf"\colorbox[HTML]{{{colour}}}{{\strut {text}}}"
        )
        # \allowbreak lets a long line wrap between tokens; a newline token ends the line.
        parts.append(box + (r"\newline " if "\n" in row["token"] else r"\allowbreak "))
    out = r"{\setlength{\fboxsep}{1pt}\noindent\ttfamily\small " + "".join(parts) + r"\par}"
    if legend:
        out += r"{\footnotesize\noindent " + latex_escape(mask_legend_text(objective)).replace(
            "↵", r"\ensuremath{\hookleftarrow}") + r"\par}"
    return out


def mask_plain(tokenizer, encoded: dict, targets=None) -> str:
    """Plain-text fallback: learned tokens in [brackets]."""
    rows = _mask_rows(tokenizer, encoded, targets)
    return "".join(f"[{r['token']}]" if r["target"] else r["token"] for r in rows)


def show_mask(tokenizer, messages: list[dict], objective: str = "sft") -> None:
    """Display a conversation's loss mask; `objective` is "sft" (assistant-only) or "pretraining"."""
    encoded = encode_conversation(tokenizer, messages)
    targets = pretraining_targets(encoded) if objective == "pretraining" else None
    show_rich(
        mask_html(tokenizer, encoded, targets, objective=objective),
        mask_latex(tokenizer, encoded, targets, objective=objective),
        mask_plain(tokenizer, encoded, targets),
    )


def show_objectives(tokenizer, messages: list[dict]) -> None:
    """Next-token prediction and SFT on the same conversation, side by side (stacked in the PDF)."""
    encoded = encode_conversation(tokenizer, messages)
    panels = [
        ("Pretraining: next-token prediction", pretraining_targets(encoded), "pretraining"),
        ("SFT: assistant-only loss", encoded["assistant_masks"], "sft"),
    ]
    html = '<div style="display:flex;gap:12px;flex-wrap:wrap">'
    latex = ""
    for title, targets, objective in panels:
        html += (
            f'<div class="sftlab-panel" style="flex:1 1 280px;min-width:0"><div style="font-weight:600">{_html.escape(title)}</div>'
            + mask_html(tokenizer, encoded, targets, objective=objective)
            + "</div>"
        )
        # a bold line, not a \paragraph: a sectioning command would be numbered ("1.3.0.0.1") in the PDF
        latex += (r"\par\medskip\noindent\textbf{" + latex_escape(title) + r"}\par\nopagebreak "
                  + mask_latex(tokenizer, encoded, targets, objective=objective))
    html += "</div>"
    show_rich(html, latex, "\n\n".join(f"{t}:\n{mask_plain(tokenizer, encoded, g)}" for t, g, _ in panels))


def objective_counts(tokenizer, messages: list[dict]):
    """How many tokens each objective trains on, for the same conversation.

    Columns: objective, tokens, targets, share (targets / tokens).
    """
    import pandas as pd

    encoded = encode_conversation(tokenizer, messages)
    n = len(encoded["input_ids"])
    rows = [
        ("next-token prediction (pretraining)", sum(pretraining_targets(encoded))),
        ("SFT, assistant-only loss", sum(encoded["assistant_masks"])),
    ]
    return pd.DataFrame(
        [{"objective": name, "tokens": n, "targets": int(t), "share": t / n} for name, t in rows]
    )


def naive_encoding(tokenizer, messages: list[dict]) -> dict:
    """What `apply_chat_template(tokenize=True)` gives: the rendered text is tokenized whole,
    so text a user typed that spells `<end_of_turn>` becomes the control token."""
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return {"input_ids": list(out["input_ids"]), "assistant_masks": list(out["assistant_masks"])}


def injection_report(tokenizer, messages: list[dict]):
    """Naive vs injection-safe encoding: tokens, control tokens, `<end_of_turn>` count, learned tokens.

    The template writes one `<end_of_turn>` per message; any extra in the naive encoding came
    from message text.
    """
    import pandas as pd

    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    controls = control_token_ids(tokenizer)
    rows = []
    for name, enc in (
        ("naive: apply_chat_template(tokenize=True)", naive_encoding(tokenizer, messages)),
        ("safe: sftlab.chat.encode_conversation", encode_conversation(tokenizer, messages)),
    ):
        ids = enc["input_ids"]
        rows.append({
            "encoding": name,
            "tokens": len(ids),
            "control tokens": sum(i in controls for i in ids),
            "<end_of_turn> tokens": ids.count(eot),
            "messages": len(messages),
            "learned tokens": int(sum(enc["assistant_masks"])),
        })
    return pd.DataFrame(rows)


def show_tokens(tokenizer, encoded: dict, objective: str = "sft") -> None:
    """Display an already-encoded sequence (e.g. `naive_encoding(...)`) as coloured tokens."""
    show_rich(
        mask_html(tokenizer, encoded, objective=objective),
        mask_latex(tokenizer, encoded, objective=objective),
        mask_plain(tokenizer, encoded),
    )


def pretty_jinja(source: str) -> str:
    """A one-line Jinja template laid out one tag per line, indented by block, for reading.

    >>> print(pretty_jinja("{%- if x -%}{{ a }}{%- endif -%}"))
    {%- if x -%}
      {{ a }}
    {%- endif -%}
    """
    pieces = [p for p in re.split(r"(\{%.*?%\}|\{\{.*?\}\})", source, flags=re.S) if p]
    lines, depth = [], 0
    for piece in pieces:
        tag = re.match(r"\{%-?\s*(\w+)", piece)
        word = tag.group(1) if tag else ""
        if word.startswith("end") or word in ("else", "elif"):
            depth = max(depth - 1, 0)
        # Newlines inside string literals are shown as \n, as a template file would spell them.
        lines.append("  " * depth + piece.replace("\n", "\\n"))
        if word in ("if", "for", "generation", "else", "elif", "macro", "block"):
            depth += 1
    return "\n".join(lines)


def special_tokens_table(tokenizer):
    """The tokens the chat format relies on, with their ids and how each is spelt as one token."""
    import pandas as pd

    roles = [("<bos>", "start of every sequence"), ("<eos>", "end of a document (pretraining)"),
             ("<pad>", "padding; never a target"), ("<start_of_turn>", "opens a turn (template)"),
             ("<end_of_turn>", "closes a turn; generation stops here")]
    rows = []
    for token, role in roles:
        rows.append({"token": token, "id": tokenizer.convert_tokens_to_ids(token),
                     "pieces when tokenized": len(tokenizer(token, add_special_tokens=False)["input_ids"]),
                     "purpose": role})
    return pd.DataFrame(rows)


def pad_pitfall(tokenizer, messages: list[dict]):
    """Learned `<end_of_turn>` targets after the usual "labels[input_ids == pad] = -100" step,
    with the real pad token and with pad set to `<end_of_turn>` (a common shortcut).

    If pad and end-of-turn are the same token, masking padding deletes every reply's last
    target: the model never learns to stop.
    """
    import pandas as pd

    enc = encode_conversation(tokenizer, messages)
    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    rows = []
    for name, pad_id in (("pad = <pad> (sftlab)", tokenizer.pad_token_id), ("pad = <end_of_turn> (shortcut)", eot)):
        labels = [t if m and t != pad_id else -100 for t, m in zip(enc["input_ids"], enc["assistant_masks"])]
        rows.append({"pad choice": name, "pad id": pad_id,
                     "learned <end_of_turn> targets": labels.count(eot),
                     "replies": sum(m["role"] == "assistant" for m in messages)})
    return pd.DataFrame(rows)


def token_strip(rows: list[dict], max_tokens: int | None = None) -> tuple[str, str]:
    """(html, latex) of tokens in a row: control tokens highlighted, learned (loss-masked-in) tokens underlined.

    `rows` come from `sftlab.chat.token_table`.
    """

    rows = rows[:max_tokens] if max_tokens else rows
    h, t = ['<div class="sftlab-tokens" style="line-height:2.1;font-family:monospace;font-size:0.85em">'], []
    for r in rows:
        text = r["token"]
        shown = text.replace("\n", "↵").replace(" ", "·") or "∅"
        style = "padding:1px 2px;margin:1px;border-radius:3px;"
        style += "background:#ffd8a8;font-weight:bold;" if r["control"] else "background:#eef;"
        if r["learned"]:
            style += "border-bottom:3px solid #1a7f37;"
        h.append(f'<span title="position {r["position"]}, id {r["id"]}" style="{style}">{_html.escape(shown)}</span><wbr>')
        tex_tok = latex_escape(text.replace("\n", "\\n")).replace(" ", r"\textvisiblespace{}") or r"\emph{empty}"
        tex_tok = r"\texttt{" + tex_tok + "}"
        if r["control"]:
            tex_tok = r"\textbf{" + tex_tok + "}"
        if r["learned"]:
            tex_tok = r"\underline{" + tex_tok + "}"
        t.append(tex_tok)
    more = ""
    if max_tokens and len(rows) == max_tokens:
        more = " …"
    h.append(_html.escape(more) + "</div>")
    legend_h = ('<div style="font-size:0.8em"><span style="background:#ffd8a8;font-weight:bold">control token</span> '
                '<span style="border-bottom:3px solid #1a7f37">learned (in the loss)</span> · ↵ newline, · space</div>')
    legend_t = (r"\par\noindent{\small \textbf{bold}: control token; \underline{underlined}: learned (in the loss); "
                r"\texttt{\textbackslash n}: newline}\par")
    return legend_h + "".join(h), r"\par\noindent\sloppy " + " ".join(t) + more + legend_t


def learned_spans(tokenizer, encoded: dict) -> list[str]:
    """The text of each run of consecutive learned tokens (mask 1): one per assistant reply."""
    spans, current = [], []
    for token_id, m in zip(encoded["input_ids"], encoded["assistant_masks"]):
        if m:
            current.append(token_id)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def example_conversation(results: Results, min_turns: int = 2) -> dict:
    """A short real held-out conversation (prompt + reference reply) for the template figures.

    Prefers the shortest with at least `min_turns` assistant replies, else the shortest.
    """
    convs = []
    for s in samples(results, "heldout"):
        messages = list(s["prompt"]) + [{"role": "assistant", "content": s["reference"]}]
        n_turns = sum(m["role"] == "assistant" for m in messages)
        convs.append((n_turns >= min_turns, -sum(len(m["content"]) for m in messages), s["id"], messages))
    if not convs:
        raise ValueError(f"no held-out samples in {results.path / 'samples.jsonl'}")
    best = max(convs, key=lambda c: (c[0], c[1]))
    return {"id": best[2], "messages": best[3]}


def token_frame(rows: list[dict], limit: int | None = None) -> pd.DataFrame:
    """Token rows as a table with the label the loss sees: the token id where learned, else -100."""
    rows = rows[:limit] if limit else rows
    out = [{"position": r["position"], "token": repr(r["token"]), "id": r["id"],
            "control token": "yes" if r["control"] else "",
            "label": r["id"] if r["learned"] else -100} for r in rows]
    return pd.DataFrame(out, columns=["position", "token", "id", "control token", "label"]).set_index("position")
