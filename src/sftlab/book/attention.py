"""Where reply tokens look: attention by template segment, base model against SFT (chapter 7, Q5.6).

A conversation's tokens are sorted into segments (`<bos>`, turn markers, user text, earlier
replies, the reply so far); `attention_to_segments` sums each reply token's attention by
segment, per layer, and `attention_facts` states what changed in sentences computed from
the numbers. Attention weights need the eager kernel (`eager_attention`).
"""

from __future__ import annotations

import html as _html
import json
import re
from contextlib import contextmanager
from pathlib import Path

from ..chat import control_token_ids, encode_conversation
from .display import show_rich
from .formatting import latex_escape
from .results import results_dir



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
            f'margin:1px;white-space:pre">{text}</span><wbr>' + ("<br>" if "\n" in row.token else "")
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
        '<div class="sftlab-tokens" style="font-family:monospace;font-size:0.85em;line-height:1.8;'
        'border:1px solid #ddd;padding:6px">' + "".join(html_parts) + f'</div><div style="font-size:0.8em">{legend}</div>',
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


def heldout_conversations(results: str | Path | None, tokenizer, max_tokens: int = 512) -> tuple[list, dict]:
    """Every held-out conversation of the run (prompt + reference reply) that the attention
    analysis can read: ([(id, messages), ...], {reason: count} for those left out, so a reader
    sees how many were skipped and why: text spelling a control token, or longer than `max_tokens`)."""
    from collections import Counter

    path = Path(results) if results is not None else results_dir()
    kept, skipped = [], Counter()
    for line in (path / "samples.jsonl").read_text().splitlines():
        sample = json.loads(line)
        if sample["set"] != "heldout" or not sample.get("reference"):
            continue
        messages = list(sample["prompt"]) + [{"role": "assistant", "content": sample["reference"]}]
        try:
            n = len(token_segments(tokenizer, messages))
        except ValueError:
            skipped["text spells a control token"] += 1
            continue
        if n > max_tokens:
            skipped[f"longer than {max_tokens} tokens"] += 1
            continue
        kept.append((sample["id"], messages))
    return kept, dict(skipped)


def attention_profile(model, tokenizer, conversations: list, *, progress: bool = False):
    """`attention_to_segments` for many conversations: tidy DataFrame conversation, layer, segment, share."""
    import pandas as pd
    from tqdm.auto import tqdm

    frames = [attention_to_segments(model, tokenizer, messages).assign(conversation=str(cid))
              for cid, messages in tqdm(conversations, desc="attention", disable=not progress, leave=False)]
    return pd.concat(frames, ignore_index=True)


def segment_shift(base_profile, sft_profile, *, n_resamples: int = 1000, seed: int = 0):
    """Per segment, the share of reply-token attention (mean over layers, then over conversations)
    in the base and the SFT model, and the paired difference SFT - base with a bootstrap interval
    over conversations. Columns: segment, base, SFT, difference, lo, hi, conversations."""
    import pandas as pd

    from ..stats import paired_difference

    def per_conversation(profile):
        # segments a conversation lacks (e.g. no earlier reply) count as a share of 0
        wide = profile.pivot_table(index=["conversation", "layer"], columns="segment", values="share",
                                   fill_value=0.0)
        return wide.groupby("conversation").mean()

    b, s = per_conversation(base_profile), per_conversation(sft_profile)
    common = b.index.intersection(s.index)
    rows = []
    for segment in [x for x in SEGMENTS if x in b.columns or x in s.columns]:
        vb = b.reindex(common)[segment].fillna(0.0) if segment in b.columns else pd.Series(0.0, index=common)
        vs = s.reindex(common)[segment].fillna(0.0) if segment in s.columns else pd.Series(0.0, index=common)
        d = paired_difference(vs.tolist(), vb.tolist(), n_resamples=n_resamples, seed=seed)
        rows.append({"segment": segment, "base": float(vb.mean()), "SFT": float(vs.mean()),
                     "difference": d["difference"], "lo": d["ci"][0], "hi": d["ci"][1],
                     "conversations": len(common)})
    return pd.DataFrame(rows)


def layer_shift(base_profile, sft_profile):
    """Per layer and conversation, the total variation distance between the base and SFT segment
    profiles (0: same, 1: disjoint); columns conversation, layer, shift."""
    keys = ["conversation", "layer", "segment"]
    merged = base_profile.merge(sft_profile, on=keys, how="outer", suffixes=("_base", "_sft")).fillna(0.0)
    merged["diff"] = (merged["share_sft"] - merged["share_base"]).abs()
    return merged.groupby(["conversation", "layer"])["diff"].sum().div(2).rename("shift").reset_index()


def profile_facts(base_profile, sft_profile, *, n_resamples: int = 1000, seed: int = 0) -> list[str]:
    """Sentences stating what SFT did to attention over all analysed conversations, computed from the
    numbers, including a null finding as such: which segments gained or lost share with a paired
    interval that excludes zero, which did not move detectably, and how large the largest shift is."""
    from ..stats import bootstrap_ci

    seg = segment_shift(base_profile, sft_profile, n_resamples=n_resamples, seed=seed)
    n = int(seg["conversations"].iloc[0]) if len(seg) else 0
    moved = seg[(seg["lo"] > 0) | (seg["hi"] < 0)]
    still = seg[~seg.index.isin(moved.index)]
    facts = []
    for r in moved.itertuples():
        facts.append(f"`{r.segment}`: {r.base:.1%} of reply-token attention in the base model, {r.SFT:.1%} after "
                     f"SFT, a change of {100 * r.difference:+.1f} percentage points "
                     f"[{100 * r.lo:+.1f}, {100 * r.hi:+.1f}] over {n} conversations.")
    if len(still):
        names = ", ".join(f"`{s}` ({b:.1%} → {a:.1%})" for s, b, a in zip(still["segment"], still["base"], still["SFT"]))
        facts.append(f"No detectable change (paired 95% interval includes zero) for: {names}.")
    shift = layer_shift(base_profile, sft_profile)
    by_layer = shift.groupby("layer")["shift"].mean()
    top = int(by_layer.idxmax())
    lo, hi = bootstrap_ci(shift[shift["layer"] == top]["shift"].tolist(), n_resamples=n_resamples, seed=seed)
    facts.append(f"The attention profile changes most in layer {top}: a total variation distance of "
                 f"{by_layer.max():.3f} [{lo:.3f}, {hi:.3f}] between base and SFT, averaged over conversations "
                 f"(0 means the same profile, 1 disjoint ones); over all layers the mean is {by_layer.mean():.3f}. "
                 + ("Most of the attention stays where it was: SFT reweights it a little rather than redirecting it."
                    if by_layer.max() < 0.1 else "SFT redirects a visible part of the attention in that layer."))
    return facts
