"""Plain-text loss: what fine-tuning on conversations cost the model on ordinary prose.

The held-out loss scores replies in the chat format; it cannot tell whether training on
conversations made the model worse at the text it was pretrained on, which is what
"LoRA forgets less" (Biderman et al. 2024) is about. This module scores the model's
next-token loss, without any chat template, on English prose that is not a conversation
and that no run trains on: the prose paragraphs of the Python language reference that every
Python install ships (`pydoc_data.topics`; indented grammar and code blocks left out), cut
into windows of `window` tokens. The text is technical documentation, not general English,
and it changes a little between Python versions (run.json records the version): compare
systems within one run, or runs made with the same Python.

Used by `sftlab run` when `evaluation.plain_text` asks for passages (chapter 5's ablations:
the paired difference SFT minus base on the same windows is the forgetting).
"""

from __future__ import annotations

from .errors import ConfigError


def prose(text: str) -> str:
    """The paragraphs of a reference page that are prose: no indented (code or grammar) lines,
    no heading underlines."""
    keep = []
    for para in text.split("\n\n"):
        lines = [ln for ln in para.splitlines() if ln.strip()]
        if not lines or any(ln[0].isspace() for ln in lines):
            continue
        if len(lines) == 2 and set(lines[1].strip()) <= set("*=-~^"):
            continue  # a heading and its underline
        keep.append(" ".join(ln.strip() for ln in lines))
    return "\n\n".join(keep)


def plain_text_windows(tokenizer, n: int, *, window: int = 128) -> list[dict]:
    """`n` windows of `window` tokens of prose (each starting with the tokenizer's BOS when it has
    one), spread evenly over all windows of all pages in page-name order; every token is a
    target. Rows look like the training data (`input_ids`, `assistant_masks`), so
    `sftlab.evaluate.assistant_nll` scores them."""
    from pydoc_data.topics import topics

    if n <= 0:
        raise ConfigError(f"evaluation.plain_text must be a positive number of passages, got {n}")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    windows = []
    for name in sorted(topics):
        ids = tokenizer(prose(topics[name]), add_special_tokens=False)["input_ids"]
        windows += [ids[i : i + window] for i in range(0, len(ids) - window + 1, window)]
    if len(windows) < n:
        raise ConfigError(f"evaluation.plain_text asks for {n} passages of {window} tokens; "
                          f"the Python reference pages give {len(windows)}")
    step = len(windows) / n
    chosen = [windows[int(i * step)] for i in range(n)]
    return [{"id": f"plain-{i}", "input_ids": bos + w, "assistant_masks": [0] * len(bos) + [1] * len(w)}
            for i, w in enumerate(chosen)]
