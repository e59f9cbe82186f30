"""Live models in the book: the base model continuing text and replying through the template,
and the trained model loaded for a run (chapters 1, 4 and 7).

`load_base_model` and `load_sft_model` rebuild a run's models (the SFT model merged: PEFT's
trainable-token layer on Gemma's tied 262k-row embedding is far slower unmerged);
`continue_text` and `chat_reply` generate greedily, and `show_generation` draws the prompt
in grey and the model's tokens in blue.
"""

from __future__ import annotations

import html as _html
import json
from pathlib import Path

from ..chat import encode_conversation, render_conversation
from ..evaluate import chat_prompt_ids, generate_replies
from ..talk import load_base_model, load_sft_model, stop_token_ids  # noqa: F401 (the chapters' names)
from .display import show_rich
from .formatting import latex_escape
from .results import results_dir





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



