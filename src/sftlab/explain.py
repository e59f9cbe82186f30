"""What the explanatory chapters compute: live base-model demos, loss-mask pictures, LoRA
parameter arithmetic, attention by template segment, and where the LoRA update landed.

Chapters 1, 2, 4 and 7 call these functions and display what they return; every number
those chapters state comes from here or from the run's files in `results/NAME/`.
References: LoRA (Hu et al. 2021), Gemma 3 (Gemma Team 2025).
"""

from __future__ import annotations

import html as _html
import json
import numbers
import os
import re
from contextlib import contextmanager
from pathlib import Path

from .chat import (
    control_token_ids,
    encode_conversation,
    prepare_model,
    prepare_tokenizer,
    render_conversation,
    token_table,
)
from .evaluate import chat_prompt_ids, generate_replies
from .figures import latex_escape, show_rich

# --- where things are --------------------------------------------------------------------


# One place decides which run the book shows (results/full, else results/default, or
# $SFTLAB_RESULTS) and where the project root is: sftlab.report.
from .report import project_root, results_dir  # noqa: E402


def run_config(results: str | Path | None = None) -> dict:
    """The recipe exactly as the reported run used it (`results/NAME/config.yaml`)."""
    import yaml

    path = Path(results) if results is not None else results_dir()
    return yaml.safe_load((path / "config.yaml").read_text())


def project_config(name: str = "default") -> dict:
    """A recipe from `configs/NAME.yaml`, validated as `sftlab run` would."""
    from .config import load_config

    return load_config(project_root() / "configs" / f"{name}.yaml")


# --- tables as Markdown (render as real tables in HTML, PDF and notebooks alike) -------------


def _fmt(value, digits: int) -> str:
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


def markdown_table(frame, digits: int = 2, digits_by_column: dict | None = None) -> str:
    """A DataFrame as a Markdown pipe table: integers get thousands separators, floats `digits` decimals.

    >>> import pandas as pd
    >>> print(markdown_table(pd.DataFrame({"rank": [8], "params": [1234567]})))
    | rank | params |
    |---:|---:|
    | 8 | 1,234,567 |
    """
    digits_by_column = digits_by_column or {}
    cols = list(frame.columns)

    def cell(text: str) -> str:
        # "<bos>" would be read as an HTML tag and vanish: write angle brackets as entities.
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return text.replace("|", "\\|").replace("\n", "↵")

    def is_numeric(values) -> bool:  # object columns of numbers (ints with a None) align right too
        present = [v for v in values if v is not None and not (isinstance(v, float) and v != v)]
        return bool(present) and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in present)

    numeric = [is_numeric(frame[c].tolist()) for c in cols]
    lines = ["| " + " | ".join(cell(str(c)) for c in cols) + " |"]
    lines.append("|" + "|".join("---:" if n else ":---" for n in numeric) + "|")
    columns = {c: frame[c].tolist() for c in cols}  # per column: iterrows would turn ints into floats
    for i in range(len(frame)):
        lines.append(
            "| " + " | ".join(cell(_fmt(columns[c][i], digits_by_column.get(c, digits))) for c in cols) + " |"
        )
    return "\n".join(lines)


def show_table(frame, digits: int = 2, digits_by_column: dict | None = None) -> None:
    """Display a DataFrame as a Markdown table (Quarto renders it in HTML and PDF)."""
    from IPython.display import Markdown, display

    display(Markdown(markdown_table(frame, digits, digits_by_column)))


# --- live demo: what a base model does with text and with a chat template --------------------


def stop_token_ids(tokenizer) -> list[int]:
    """Tokens that end a reply: `<end_of_turn>` (if the vocabulary has it), then `<eos>`."""
    ids = []
    eot = tokenizer.get_vocab().get("<end_of_turn>")
    if eot is not None:
        ids.append(eot)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def continue_text(model, tokenizer, text: str, max_new_tokens: int = 40) -> dict:
    """Greedy continuation of plain `text` (`<bos>` + text, no template): how pretraining reads.

    Returns `{"prompt", "text", "stopped", "n_tokens"}` (`generate_replies`' fields plus the
    prompt). E.g. `continue_text(m, tok, "Once upon a time")["text"]` is the next 40 tokens
    of the story; `stopped` says whether `<end_of_turn>`/`<eos>` came before the limit.
    """
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out = generate_replies(
        model, tokenizer, [bos + ids], stop_ids=stop_token_ids(tokenizer),
        max_new_tokens=max_new_tokens, progress=False,
    )[0]
    return {"prompt": text, **out}


def chat_reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 60) -> dict:
    """Greedy reply to `messages` through the chat template (the tokenizer must have one).

    The prompt ends with `<start_of_turn>model\\n`, exactly as in evaluation
    (`sftlab.evaluate.chat_prompt_ids`); `stopped` is True only if the model wrote
    `<end_of_turn>` (or `<eos>`) within `max_new_tokens`.
    """
    out = generate_replies(
        model, tokenizer, [chat_prompt_ids(tokenizer, messages)], stop_ids=stop_token_ids(tokenizer),
        max_new_tokens=max_new_tokens, progress=False,
    )[0]
    return {"prompt": render_conversation(tokenizer, messages, add_generation_prompt=True), **out}


def _visible_html(text: str) -> str:
    return _html.escape(text).replace("\n", "↵<br>")


def _visible_latex(text: str) -> str:
    # Latin Modern (the PDF font) has no ↵ glyph: use the math arrow.
    lines = [latex_escape(line) for line in text.split("\n")]
    return r"\ensuremath{\hookleftarrow}\newline ".join(lines)


def generation_markup(result: dict) -> tuple[str, str, str]:
    """(HTML, LaTeX, plain) showing a prompt in grey, the model's tokens in blue, and how it ended."""
    how = (
        f"stopped by itself after {result['n_tokens']} tokens"
        if result["stopped"]
        else f"no end-of-turn token: cut at the {result['n_tokens']}-token limit"
    )
    html = (
        '<div style="font-family:monospace;font-size:0.85em;border:1px solid #ccc;padding:6px;'
        'line-height:1.5;white-space:pre-wrap">'
        f'<span style="color:#888">{_visible_html(result["prompt"])}</span>'
        f'<span style="color:#1f4e9c;font-weight:600">{_visible_html(result["text"])}</span>'
        f'<div style="margin-top:4px;color:#555;font-family:sans-serif">⏹ {_html.escape(how)}</div></div>'
    )
    latex = (
        r"\begin{quote}\small\ttfamily "
        r"\textcolor[HTML]{888888}{" + _visible_latex(result["prompt"]) + "}"
        r"\textcolor[HTML]{1F4E9C}{\bfseries " + _visible_latex(result["text"]) + "}"
        r"\par\normalfont\textit{" + latex_escape(how) + r"}\end{quote}"
    )
    plain = f"{result['prompt']}[[{result['text']}]]\n({how})"
    return html, latex, plain


def show_generation(result: dict) -> None:
    """Display a `continue_text`/`chat_reply` result: prompt grey, generated text blue, how it ended."""
    show_rich(*generation_markup(result))


def stop_rates(results: str | Path | None = None):
    """Share of held-out replies that ended with `<end_of_turn>`, per system, from samples.jsonl."""
    import pandas as pd

    path = Path(results) if results is not None else results_dir()
    rows = []
    for line in (path / "samples.jsonl").read_text().splitlines():
        sample = json.loads(line)
        if sample["set"] != "heldout":
            continue
        for system, reply in sample["replies"].items():
            rows.append({"system": system, "stopped": bool(reply["stopped"]), "tokens": reply["n_tokens"]})
    frame = pd.DataFrame(rows, columns=["system", "stopped", "tokens"])
    return (
        frame.groupby("system", sort=False)
        .agg(replies=("stopped", "size"), stopped=("stopped", "sum"), mean_tokens=("tokens", "mean"))
        .assign(stop_rate=lambda d: d["stopped"] / d["replies"])
        .reset_index()
    )


# --- loss masks: which tokens the model learns from --------------------------------------------

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
            f'padding:0 1px;margin:1px;white-space:pre">{text}</span>{br}'
        )
    body = (
        '<div style="font-family:monospace;font-size:0.85em;line-height:1.9;border:1px solid #ddd;'
        'padding:6px">' + "".join(spans) + "</div>"
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
            f'<div style="flex:1;min-width:280px"><div style="font-weight:600">{_html.escape(title)}</div>'
            + mask_html(tokenizer, encoded, targets, objective=objective)
            + "</div>"
        )
        latex += r"\paragraph{" + latex_escape(title) + "}" + mask_latex(tokenizer, encoded, targets, objective=objective)
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


# --- template injection: the same message encoded naively and safely ---------------------------


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


def end_of_turn_probability(model, tokenizer, messages: list[dict]):
    """At the exact place each reply ends, how likely the model finds `<end_of_turn>`.

    Teacher forcing: the whole conversation is read once; for every `<end_of_turn>` that is
    a training target (it closes a reply), the model's probability for it, and its rank among
    all tokens (1 = the model's top choice), given everything before it.
    Columns: reply (1, 2, ...), probability, rank, top_token (what the model preferred).
    """
    import pandas as pd
    import torch

    enc = encode_conversation(tokenizer, messages)
    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
    rows = []
    for pos, (tid, learned) in enumerate(zip(enc["input_ids"], enc["assistant_masks"])):
        if tid == eot and learned and pos > 0:
            probs = torch.softmax(logits[pos - 1], dim=-1)
            rows.append({"reply": len(rows) + 1, "probability": float(probs[eot]),
                         "rank": int((probs > probs[eot]).sum()) + 1,
                         "top_token": tokenizer.decode([int(probs.argmax())])})
    return pd.DataFrame(rows)


# --- the model: architecture facts and where its parameters are -------------------------------


def architecture_facts(model):
    """The model's shape, read from its config and weights (not typed in). Columns: fact, value."""
    import pandas as pd

    c = model.config
    layer_types = list(getattr(c, "layer_types", None) or [])
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is not None and out.weight.data_ptr() == emb.data_ptr()
    facts = [
        ("architecture", type(model).__name__),
        ("transformer layers", c.num_hidden_layers),
        ("hidden size", c.hidden_size),
        ("MLP intermediate size", c.intermediate_size),
        ("attention heads (query)", c.num_attention_heads),
        ("key/value heads (grouped-query attention)", c.num_key_value_heads),
        ("head dimension", getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)),
        ("vocabulary size", c.vocab_size),
        ("input and output embeddings tied", bool(tied)),
    ]
    if layer_types:
        facts += [
            ("sliding-window (local) attention layers", sum(t == "sliding_attention" for t in layer_types)),
            ("full (global) attention layers", sum(t == "full_attention" for t in layer_types)),
            ("sliding window (tokens)", getattr(c, "sliding_window", None)),
        ]
    facts += [
        ("max positions", c.max_position_embeddings),
        ("parameters", sum(p.numel() for p in model.parameters())),
    ]
    return pd.DataFrame(facts, columns=["fact", "value"]).astype({"value": object})


def parameter_breakdown(model):
    """Parameters by part: the (tied) embedding, attention and MLP projections, norms.

    `model.parameters()` lists a tied weight once, so the parts add up to the model's size.
    Columns: part, parameters, share (of all parameters).
    """
    import pandas as pd

    parts = {"token embedding (tied with output layer)": 0, "attention projections": 0,
             "MLP projections": 0, "norms and other": 0}
    for name, p in model.named_parameters():
        if "embed_tokens" in name or name.startswith("lm_head"):
            parts["token embedding (tied with output layer)"] += p.numel()
        elif ".self_attn." in name and name.endswith("proj.weight"):
            parts["attention projections"] += p.numel()
        elif ".mlp." in name:
            parts["MLP projections"] += p.numel()
        else:
            parts["norms and other"] += p.numel()
    total = sum(parts.values())
    return pd.DataFrame(
        [{"part": k, "parameters": v, "share": v / total} for k, v in parts.items()]
    )


# --- LoRA arithmetic -----------------------------------------------------------------------

TARGET_SETS = {
    "attention q,v": ("q_proj", "v_proj"),
    "attention q,k,v,o": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all linear (attention + MLP)": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}

BYTES_PER_TRAINED_PARAM = 16  # fp32 weight 4 + gradient 4 + Adam's two moments 4 + 4
BYTES_PER_FROZEN_PARAM = 4  # fp32 weight only: no gradient, no optimizer state


def target_linears(model, target_modules) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of every Linear whose last name part is a target.

    PEFT matches a list of `target_modules` the same way (by name suffix); the output layer
    `lm_head` is never a target here. Works before and after `get_peft_model` (a LoRA layer
    keeps the name and the shape of the Linear it wraps).
    """
    import torch

    targets = set(target_modules)
    return [
        (name, mod.in_features, mod.out_features)
        for name, mod in model.named_modules()
        if (isinstance(mod, torch.nn.Linear) or hasattr(mod, "base_layer"))
        and name.rsplit(".", 1)[-1] in targets
    ]


def lora_parameter_count(model, r: int, target_modules) -> int:
    """Trainable LoRA parameters: r * (in + out) per targeted Linear (A is r x in, B is out x r).

    Gemma-3 270M, r=16, q_proj (640 -> 1024): 16 * (640 + 1024) = 26,624 per layer.
    """
    return sum(r * (i + o) for _, i, o in target_linears(model, target_modules))


def lora_parameter_table(model, ranks=(4, 8, 16, 32, 64), target_sets: dict | None = None,
                         highlight: tuple[int, str] | None = None):
    """Trainable parameters and training memory for each LoRA rank and target set, plus full fine-tuning.

    Columns: target_set, rank, trainable, share_pct (of the model's parameters),
    adapter_mb (the fp32 adapter file), trained_state_mb (16 bytes per trained parameter:
    weight, gradient, two Adam moments), train_memory_gb (frozen fp32 weights at 4 bytes +
    trained state; activations excluded, they depend on batch and length).
    The last row is full fine-tuning: every parameter trained (its rank is empty).
    `highlight=(rank, target_set)` adds a `note` column marking that row ("◀ this project").
    """
    import pandas as pd

    target_sets = target_sets or TARGET_SETS
    total = sum(p.numel() for p in model.parameters())
    rows = []
    for set_name, modules in target_sets.items():
        for r in ranks:
            n = lora_parameter_count(model, r, modules)
            rows.append({"target_set": set_name, "rank": r, "trainable": n})
    rows.append({"target_set": "full fine-tuning", "rank": None, "trainable": total})
    frame = pd.DataFrame(rows)
    frame["rank"] = pd.Series([row["rank"] for row in rows], dtype=object)  # ints, None for full fine-tuning
    frame["share_pct"] = 100 * frame["trainable"] / total
    frame["adapter_mb"] = frame["trainable"] * 4 / 1e6
    frame["trained_state_mb"] = frame["trainable"] * BYTES_PER_TRAINED_PARAM / 1e6
    frozen = (total - frame["trainable"]).clip(lower=0)
    frame["train_memory_gb"] = (frozen * BYTES_PER_FROZEN_PARAM + frame["trainable"] * BYTES_PER_TRAINED_PARAM) / 1e9
    if highlight is not None:
        frame["note"] = ["◀ this project" if i == setting_index(frame, highlight) else "" for i in frame.index]
    return frame


def setting_index(table, setting: tuple[int, str]):
    """Index of the row of `lora_parameter_table` for `setting=(rank, target_set)` (KeyError if absent)."""
    r, name = setting
    hits = [i for i, (rank, s) in enumerate(zip(table["rank"].tolist(), table["target_set"])) if rank == r and s == name]
    if not hits:
        raise KeyError(f"no row for rank {r} and target set {name!r}")
    return table.index[hits[0]]


def target_set_name(target_modules, target_sets: dict | None = None) -> str | None:
    """The name of the set in `target_sets` holding exactly `target_modules` (None if none does)."""
    wanted = set(target_modules or ())
    for name, modules in (target_sets or TARGET_SETS).items():
        if set(modules) == wanted:
            return name
    return None


def adapter_update(results: str | Path | None, layer: int, module: str) -> dict:
    """One trained LoRA update read from the run's adapter file: A, B, the scale alpha/r, and
    delta_w = scale * B @ A (the matrix merging adds to the frozen weight).

    E.g. layer 0 q_proj of Gemma-3 270M at r=16: A is 16 x 640, B is 1024 x 16, delta_w is
    1024 x 640 but has rank at most 16.
    """
    import torch
    from safetensors import safe_open

    path = Path(results) if results is not None else results_dir()
    cfg = json.loads((path / "adapter" / "adapter_config.json").read_text())
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    # rsLoRA scales by alpha / sqrt(r) instead of alpha / r.
    scale = alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r
    with safe_open(str(path / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = [k for k in f.keys() if f"layers.{layer}." in k and f".{module}.lora_" in k]
        a = f.get_tensor(next(k for k in keys if ".lora_A." in k)).float()
        b = f.get_tensor(next(k for k in keys if ".lora_B." in k)).float()
    delta = scale * (b @ a)
    return {"A": a, "B": b, "r": r, "alpha": alpha, "scale": scale, "delta_w": delta,
            "rank": int(torch.linalg.matrix_rank(delta))}


def lora_update_summary(update: dict):
    """A small table about one LoRA update: shapes, parameter counts, numerical rank."""
    import pandas as pd

    a, b, d = update["A"], update["B"], update["delta_w"]
    rows = [
        ("A (down-projection), trained", "x".join(map(str, a.shape)), a.numel()),
        ("B (up-projection), trained", "x".join(map(str, b.shape)), b.numel()),
        ("delta_w = (alpha/r) B A, merged into W", "x".join(map(str, d.shape)), d.numel()),
    ]
    frame = pd.DataFrame(rows, columns=["matrix", "shape", "entries"])
    frame["rank"] = [min(a.shape), min(b.shape), update["rank"]]
    return frame


# --- attention: how reply tokens read the template ---------------------------------------------

SEGMENTS = ("<bos>", "turn markers", "user text", "earlier replies", "reply so far")
_MARK = "\ue010{}\ue011"  # private-use characters: never in a template or real chat text
_MARK_RE = re.compile("\ue010(\\d+)\ue011")


def _content_spans(tokenizer, messages) -> tuple[str, dict[int, tuple[int, int]]]:
    """The rendered conversation and, per message, the character span its content occupies.

    The template is rendered once with each content replaced by a marker, so template text
    (role names, newlines) is known apart from content even where they spell the same words.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    marked = [{**m, "content": _MARK.format(i)} for i, m in enumerate(messages)]
    skeleton = tokenizer.apply_chat_template(marked, tokenize=False)
    pieces = _MARK_RE.split(skeleton)  # literal, index, literal, index, ..., literal
    literals, indices = pieces[0::2], [int(i) for i in pieces[1::2]]
    spans, pos = {}, 0
    for k, index in enumerate(indices):
        if not text.startswith(literals[k], pos):
            raise ValueError("template output does not match its skeleton; cannot locate message text")
        pos += len(literals[k])
        content = messages[index]["content"]
        following = literals[k + 1]
        # Templates may trim content (Gemma trims user and reply text, not the system text).
        for candidate in (content.strip(), content, content.lstrip(), content.rstrip()):
            if text.startswith(candidate, pos) and text.startswith(following, pos + len(candidate)):
                break
        else:
            raise ValueError(f"cannot locate message {index}'s text in the rendered conversation")
        spans[index] = (pos, pos + len(candidate))
        pos += len(candidate)
    return text, spans


def token_segments(tokenizer, messages: list[dict]):
    """One row per token: position, id, token, segment, message (index or -1), learned (assistant mask).

    Segments: `<bos>`; turn markers (control tokens, role names, the template's newlines);
    user text (system text included: Gemma folds it into the first user turn); reply text
    (`message` says which reply). A reply's `<end_of_turn>` is a turn marker that belongs to
    its reply (its `message` is the reply's index) and is learned.
    Needs ordinary text: a message spelling a control token raises ValueError.
    """
    import pandas as pd

    encoded = encode_conversation(tokenizer, messages)
    text, spans = _content_spans(tokenizer, messages)
    tok = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(tok["input_ids"]) != list(encoded["input_ids"]):
        raise ValueError("this conversation's text spells control tokens; use ordinary text for attention analysis")
    controls = control_token_ids(tokenizer)
    rows, last_reply = [], -1
    for pos, (tid, (a, b), learned) in enumerate(zip(tok["input_ids"], tok["offset_mapping"], encoded["assistant_masks"])):
        b = max(b, a + 1)
        owner = next((i for i, (s, e) in spans.items() if a < e and s < b), -1)
        if tid == tokenizer.bos_token_id:
            segment, message = "<bos>", -1
        elif tid in controls or owner < 0:
            segment = "turn markers"
            message = last_reply if learned else -1  # a reply's closing <end_of_turn>
        elif messages[owner]["role"] == "assistant":
            segment, message, last_reply = "reply", owner, owner
        else:
            segment, message = "user text", owner
        rows.append({"position": pos, "id": int(tid), "token": tokenizer.decode([tid]),
                     "segment": segment, "message": message, "learned": bool(learned)})
    return pd.DataFrame(rows)


SEGMENT_COLOURS = {  # the same colours in token pictures and charts
    "<bos>": "#7f7f7f", "turn markers": "#d62728", "user text": "#1f77b4",
    "earlier replies": "#9467bd", "reply so far": "#2ca02c", "reply": "#2ca02c",
}


def show_segments(tokenizer, messages: list[dict]) -> None:
    """Display a conversation's tokens coloured by segment (as `attention_to_segments` groups them)."""
    seg = token_segments(tokenizer, messages)
    html_parts, latex_parts = [], []
    for row in seg.itertuples():
        colour = SEGMENT_COLOURS[row.segment]
        text = _html.escape(row.token).replace("\n", "↵")
        html_parts.append(
            f'<span title="{_html.escape(row.segment)}, position {row.position}" style="border-bottom:3px solid {colour};'
            f'margin:1px;white-space:pre">{text}</span>' + ("<br>" if "\n" in row.token else "")
        )
        ltext = latex_escape(row.token.replace("\n", "")).replace(" ", "~")
        ltext += r"\ensuremath{\hookleftarrow}" * row.token.count("\n")
        latex_parts.append(
            rf"\textcolor[HTML]{{{colour.lstrip('#').upper()}}}{{{ltext or chr(32)}}}"
            + (r"\newline " if "\n" in row.token else r"\allowbreak ")
        )
    names = [s for s in ("<bos>", "turn markers", "user text", "reply") if s in set(seg["segment"])]
    legend = " · ".join(
        f'<span style="color:{SEGMENT_COLOURS[s]};font-weight:600">{_html.escape(s)}</span>' for s in names
    )
    latex_legend = " $\\cdot$ ".join(
        rf"\textcolor[HTML]{{{SEGMENT_COLOURS[s].lstrip('#').upper()}}}{{\bfseries {latex_escape(s)}}}" for s in names
    )
    show_rich(
        '<div style="font-family:monospace;font-size:0.85em;line-height:1.8;border:1px solid #ddd;padding:6px">'
        + "".join(html_parts) + f'</div><div style="font-size:0.8em">{legend}</div>',
        r"{\noindent\ttfamily\small " + "".join(latex_parts) + r"\par}"
        + r"{\footnotesize\noindent " + latex_legend + r"\par}",
        "".join(seg["token"]),
    )


@contextmanager
def eager_attention(model):
    """Temporarily switch to the eager attention kernel: only it can return attention weights
    (SDPA and flash kernels never materialise them). transformers >= 5 switches in place."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)


def attention_maps(model, tokenizer, messages: list[dict]):
    """Attention weights of one forward pass: a float tensor [layers, heads, tokens, tokens]."""
    import torch

    ids = encode_conversation(tokenizer, messages)["input_ids"]
    with eager_attention(model), torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_attentions=True, use_cache=False)
    return torch.stack([a[0].float() for a in out.attentions])


def _key_labels(seg, query_message: int) -> list[str]:
    """Segment of every key position as seen from a query inside reply `query_message`."""
    labels = []
    for s, m in zip(seg["segment"], seg["message"]):
        if s == "reply":
            labels.append("reply so far" if m == query_message else "earlier replies")
        else:
            labels.append(s)
    return labels


def attention_to_segments(model, tokenizer, messages: list[dict]):
    """Per layer, the share of attention that reply tokens pay to each template segment.

    Rows (queries) are the learned positions (reply tokens and their `<end_of_turn>`); each
    query's attention row sums to 1 over the positions it may see (itself and earlier), so
    summing it by segment and averaging over heads and queries gives shares that add to 1
    per layer. Segments as in `token_segments`; "reply so far" is the query's own reply up
    to and including itself, "earlier replies" any previous reply.
    Returns a tidy DataFrame: layer, segment, share.
    """
    import numpy as np
    import pandas as pd

    seg = token_segments(tokenizer, messages)
    att = attention_maps(model, tokenizer, messages).mean(dim=1).numpy()  # [layers, q, k], heads averaged
    queries = seg.index[seg["learned"]].tolist()
    present = list(SEGMENTS)
    totals = np.zeros((att.shape[0], len(present)))
    for q in queries:
        labels = _key_labels(seg, seg.at[q, "message"])
        for j, name in enumerate(present):
            cols = [k for k, lab in enumerate(labels) if lab == name]
            if cols:
                totals[:, j] += att[:, q, cols].sum(axis=1)
    shares = totals / max(len(queries), 1)
    seen = {lab for q in queries for lab in _key_labels(seg, seg.at[q, "message"])}
    rows = [
        {"layer": layer, "segment": name, "share": float(shares[layer, j])}
        for layer in range(att.shape[0])
        for j, name in enumerate(present)
        if name in seen
    ]
    return pd.DataFrame(rows)


def attention_matrix(model, tokenizer, messages: list[dict], layer: int, max_rows: int = 40):
    """Token-by-token attention of one layer (heads averaged): the first `max_rows` reply tokens
    (rows) against every earlier position (columns). Tidy DataFrame: query, key, weight,
    query_token, key_token, key_segment (segment as seen from that query's reply)."""
    import pandas as pd

    seg = token_segments(tokenizer, messages)
    att = attention_maps(model, tokenizer, messages)[layer].mean(dim=0).numpy()
    queries = seg.index[seg["learned"]].tolist()[:max_rows]
    rows = []
    for q in queries:
        labels = _key_labels(seg, seg.at[q, "message"])
        for k in range(q + 1):
            rows.append({"query": q, "key": k, "weight": round(float(att[q, k]), 5),
                         "query_token": seg.at[q, "token"], "key_token": seg.at[k, "token"],
                         "key_segment": labels[k]})
    return pd.DataFrame(rows)


def attention_difference(base_frame, sft_frame):
    """`attention_matrix` of the SFT model minus the base model's, cell by cell (same tokens)."""
    keys = ["query", "key"]
    merged = sft_frame.merge(base_frame[keys + ["weight"]], on=keys, suffixes=("", "_base"))
    merged["weight"] = (merged["weight"] - merged.pop("weight_base")).round(5)
    return merged


def attention_shift(frame):
    """Per layer, how far SFT moved the segment shares from the base model's: total variation
    distance, half the sum of absolute share differences (0: same profile, 1: disjoint).

    `frame` has columns model ("base"/"SFT"), layer, segment, share.
    """
    wide = frame.pivot_table(index=["layer", "segment"], columns="model", values="share").reset_index()
    wide["diff"] = (wide["SFT"] - wide["base"]).abs()
    return wide.groupby("layer")["diff"].sum().div(2).rename("shift").reset_index()


def attention_facts(frame) -> list[str]:
    """Sentences stating what the attention comparison shows, computed (never typed)."""
    shift = attention_shift(frame)
    top = shift.loc[shift["shift"].idxmax()]
    facts = [f"Largest change of attention profile: layer {int(top['layer'])} "
             f"(total variation distance {top['shift']:.3f}; mean over layers {shift['shift'].mean():.3f})."]
    mean = frame.groupby(["model", "segment"])["share"].mean().unstack("model")
    mean = mean.reindex([s for s in SEGMENTS if s in mean.index])
    for segment, row in mean.iterrows():
        facts.append(f"`{segment}`: {row['base']:.1%} of reply-token attention in the base model, "
                     f"{row['SFT']:.1%} after SFT (mean over layers).")
    return facts


# --- loading the base and the fine-tuned model for a run ----------------------------------------


def load_base_model(results: str | Path | None = None):
    """The run's base model and tokenizer, with the run's chat template, EOS and pad settings."""
    from .sources import load_model

    config = run_config(results)
    model_cfg = config.get("model") or {}
    model, tokenizer = load_model(model_cfg["base"], dtype=model_cfg.get("dtype", "float32"))
    fmt = prepare_tokenizer(tokenizer, model_cfg.get("template", "gemma"),
                            allow_new_tokens=bool(model_cfg.get("allow_new_tokens", False)))
    prepare_model(model, tokenizer, fmt)
    model.eval()
    return model, tokenizer


def load_sft_model(results: str | Path | None = None):
    """Base model + the run's LoRA adapter, merged into plain weights (W + scale * B @ A).

    Merging makes the fine-tuned model an ordinary `Gemma3ForCausalLM` again (same speed as
    the base, and eager attention works as for the base); the adapter's trained
    `<end_of_turn>` embedding row is merged into the tied embedding too.
    """
    from peft import PeftModel

    path = Path(results) if results is not None else results_dir()
    model, tokenizer = load_base_model(path)
    merged = PeftModel.from_pretrained(model, str(path / "adapter")).merge_and_unload()
    merged.eval()
    return merged, tokenizer


def heldout_conversation(results: str | Path | None, tokenizer, max_tokens: int = 160, min_reply_tokens: int = 16):
    """A held-out conversation from the run's samples.jsonl, ending with its reference reply.

    The first whose encoded length is at most `max_tokens` and whose last reply has at least
    `min_reply_tokens` tokens (short enough to draw token by token; if none fits, the shortest).
    Both models then read identical tokens (teacher forcing), so their attention is comparable.
    Returns (id, messages).
    """
    path = Path(results) if results is not None else results_dir()
    candidates = []
    for line in (path / "samples.jsonl").read_text().splitlines():
        sample = json.loads(line)
        if sample["set"] != "heldout" or not sample.get("reference"):
            continue
        messages = list(sample["prompt"]) + [{"role": "assistant", "content": sample["reference"]}]
        try:
            seg = token_segments(tokenizer, messages)
        except Exception:  # refused by the template, or text spelling control tokens: not a candidate
            continue
        n, reply = len(seg), int(seg["learned"].sum())
        if n <= max_tokens and reply >= min_reply_tokens:
            return sample["id"], messages
        candidates.append((n, sample["id"], messages))
    if not candidates:
        raise ValueError(f"no held-out conversation with a reference reply in {path / 'samples.jsonl'}")
    _, sid, messages = min(candidates, key=lambda c: c[0])
    return sid, messages


def embedding_row_change(base, tuned, token_id: int) -> dict:
    """How far fine-tuning moved one token's embedding row: absolute and relative L2 change."""
    a = base.get_input_embeddings().weight[token_id].detach().float()
    b = tuned.get_input_embeddings().weight[token_id].detach().float()
    change = float((b - a).norm())
    return {"token_id": token_id, "change": change, "relative_change": change / float(a.norm())}


# --- LoRA update norms ------------------------------------------------------------------------

MODULE_ORDER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_norms_frame(results: str | Path | None = None):
    """`lora_norms.jsonl` as a DataFrame (name, layer, module, norm, relative_norm) plus `kind`
    (attention or MLP). relative_norm = ||scale * B @ A|| / ||W||: the update's size next to
    the weight it changes."""
    import pandas as pd

    path = Path(results) if results is not None else results_dir()
    frame = pd.read_json(path / "lora_norms.jsonl", lines=True)
    frame["kind"] = frame["module"].map(lambda m: "MLP" if m in ("gate_proj", "up_proj", "down_proj") else "attention")
    return frame


def lora_norm_facts(frame) -> list[str]:
    """Sentences stating where the update is largest, computed from the norms (never typed)."""
    top = frame.loc[frame["relative_norm"].idxmax()]
    low = frame.loc[frame["relative_norm"].idxmin()]
    by_module = frame.groupby("module")["relative_norm"].mean()
    by_kind = frame.groupby("kind")["relative_norm"].mean()
    by_layer = frame.groupby("layer")["relative_norm"].mean()
    n = int(frame["layer"].max()) + 1
    third = max(n // 3, 1)
    early = by_layer[by_layer.index < third].mean()
    late = by_layer[by_layer.index >= n - third].mean()
    facts = [
        f"Largest relative update: layer {int(top['layer'])}, `{top['module']}` "
        f"({top['relative_norm']:.4f} of the weight's norm); smallest: layer {int(low['layer'])}, "
        f"`{low['module']}` ({low['relative_norm']:.4f}).",
        f"Module with the largest mean relative update: `{by_module.idxmax()}` ({by_module.max():.4f}); "
        f"smallest: `{by_module.idxmin()}` ({by_module.min():.4f}).",
        f"Mean relative update, attention vs MLP: {by_kind.get('attention', float('nan')):.4f} vs "
        f"{by_kind.get('MLP', float('nan')):.4f}.",
        f"Layer with the largest mean relative update: {int(by_layer.idxmax())}; first {third} layers average "
        f"{early:.4f}, last {third} layers {late:.4f}.",
    ]
    return facts


def show_facts(facts: list[str]) -> None:
    """Display computed sentences as a Markdown bullet list."""
    from IPython.display import Markdown, display

    display(Markdown("\n".join(f"- {f}" for f in facts)))


# --- charts (Altair; chapters display them with sftlab.figures.show_chart) --------------------


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


def chart_attention_segments(frame):
    """Attention share per segment against layer, base vs SFT, one panel per segment
    (each panel with its own y scale, so small segments stay readable)."""
    import altair as alt

    order = [s for s in SEGMENTS if s in set(frame["segment"])]
    return alt.Chart(frame).mark_line(point=alt.OverlayMarkDef(size=20)).encode(
        x=alt.X("layer:Q", title="layer", scale=alt.Scale(nice=False)),
        y=alt.Y("share:Q", title="share of reply-token attention"),
        color=alt.Color("model:N", title="model", sort=["base", "SFT"]),
        tooltip=["model", "layer", "segment", alt.Tooltip("share:Q", format=".3f")],
    ).properties(width=130, height=150).facet(
        facet=alt.Facet("segment:N", sort=order, title=None), columns=len(order)
    ).resolve_scale(y="independent").properties(title="Where reply tokens look, layer by layer")


def chart_attention_matrix(frame, title: str = "", difference: bool = False):
    """Heatmap of one layer's attention (reply rows x earlier positions), with a top row
    colouring each column by segment. Inline data (`alt.Data`) so a few thousand cells are fine.

    Weights use a fixed 0..1 square-root scale, so two models' maps compare directly;
    `difference=True` draws an `attention_difference` frame on a diverging scale instead.
    """
    import altair as alt

    # Segments as the last reply row sees them: every column up to it, once; drawn as row -1.
    cols = frame[frame["query"] == frame["query"].max()][["key", "key_token", "key_segment"]]
    strip_rows = [{"query": -1, "key": int(k), "key_token": t, "segment": g}
                  for k, t, g in zip(cols["key"], cols["key_token"], cols["key_segment"])]
    order = [s for s in SEGMENTS if s in {r["segment"] for r in strip_rows}]
    x = alt.X("key:O", title="position attended to (key)", axis=alt.Axis(labels=False, ticks=False))
    y = alt.Y("query:O", title="reply token (query); top row: segment", axis=alt.Axis(labels=False, ticks=False))
    strip = alt.Chart(alt.Data(values=strip_rows)).mark_rect().encode(
        x=x, y=y,
        color=alt.Color("segment:N", sort=order, title="column segment",
                        scale=alt.Scale(domain=order, range=[SEGMENT_COLOURS[s] for s in order])),
        tooltip=["key:O", "key_token:N", "segment:N"],
    )
    heat = alt.Chart(alt.Data(values=frame.to_dict(orient="records"))).mark_rect().encode(
        x=x, y=y,
        color=(
            alt.Color("weight:Q", title="SFT − base",
                      scale=alt.Scale(scheme="redblue", reverse=True, domainMid=0,
                                      domain=[-float(frame["weight"].abs().max() or 1), float(frame["weight"].abs().max() or 1)]))
            if difference
            else alt.Color("weight:Q", scale=alt.Scale(type="sqrt", scheme="greys", domain=[0, 1]), title="attention")
        ),
        tooltip=["query_token:N", "key_token:N", "key_segment:N", alt.Tooltip("weight:Q", format=".3f")],
    )
    return alt.layer(strip, heat).resolve_scale(color="independent").properties(width=520, height=280, title=title)
