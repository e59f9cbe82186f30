"""`sftlab inspect RUN`: what changed inside the model, measured once and saved as RUN/inside.json.

Chapter 7 reads the file instead of loading two models and running attention over every held-out
conversation at each render. For each held-out conversation (prompt plus reference reply, the
same tokens for both models: teacher forcing), the base model and the SFT model (merged) each
read it once, with the eager attention kernel, and the file keeps:

- `shares`: per conversation, layer and segment, the share of attention the reply tokens pay to
  `<bos>`, the turn markers (control tokens, role names, the template's newlines), the user's
  text, earlier replies and the reply so far; once for every reply token (`all`) and once for
  the first `FIRST_REPLY_TOKENS` of each reply (`first`), where the template's markers are the
  nearest context and the reply decides how to start;
- `eot`: along each reply, the probability the model gives `<end_of_turn>` as the next token at
  every position, and at the position where the reply really ends;
- `example`: one conversation chosen by a stated rule (`representative`), its tokens and segments,
  and per layer the attention of its first reply tokens to each turn-marker token, to `<bos>`,
  and summed over the user's text and the reply so far: a heatmap small enough to label;
- `eot_row`: how far training moved the `<end_of_turn>` embedding row (the one row it trains).
"""

from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager
from pathlib import Path

from .chat import control_token_ids, encode_conversation

INSIDE_FILE = "inside.json"
SEGMENTS = ("<bos>", "turn markers", "user text", "earlier replies", "reply so far")
FIRST_REPLY_TOKENS = 8
MAX_TOKENS = 512  # longer held-out conversations are left out (counted)
EXAMPLE_MAX_TOKENS = 160
EXAMPLE_MIN_REPLY = 16

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


def read_conversation(model, input_ids: list[int]):
    """One forward pass: (attention [layers, heads, q, k] as a numpy array, logits [tokens, vocab])."""
    import torch

    with eager_attention(model), torch.no_grad():
        out = model(input_ids=torch.tensor([input_ids]), output_attentions=True, use_cache=False)
    attention = torch.stack([a[0].float() for a in out.attentions]).numpy()
    return attention, out.logits[0].float()


def key_labels(seg, query_message: int) -> list[str]:
    """Segment of every key position as seen from a query inside reply `query_message`."""
    labels = []
    for s, m in zip(seg["segment"], seg["message"]):
        if s == "reply":
            labels.append("reply so far" if m == query_message else "earlier replies")
        else:
            labels.append(s)
    return labels


def segment_shares(attention, seg, queries: list[int]):
    """[layers, len(SEGMENTS)]: per layer, the mean over `queries` of the attention each pays to
    each segment (heads averaged; a query's row sums to 1 over what it can see, so shares add to 1)."""
    import numpy as np

    heads = attention.mean(axis=1)  # [layers, q, k]
    totals = np.zeros((heads.shape[0], len(SEGMENTS)))
    for q in queries:
        labels = np.array(key_labels(seg, seg.at[q, "message"]))
        for j, name in enumerate(SEGMENTS):
            cols = np.nonzero(labels[: q + 1] == name)[0]
            if len(cols):
                totals[:, j] += heads[:, q, cols].sum(axis=1)
    return totals / max(len(queries), 1)


def first_reply_queries(seg, k: int = FIRST_REPLY_TOKENS) -> list[int]:
    """The first `k` positions of every reply (the learned positions at the start of each run)."""
    queries, run, previous = [], 0, False
    for pos, learned in enumerate(seg["learned"]):
        run = run + 1 if (learned and previous) else (1 if learned else 0)
        if learned and run <= k:
            queries.append(pos)
        previous = bool(learned)
    return queries


def eot_along_reply(logits, seg, eot_id: int) -> list[dict]:
    """For each reply: the probability of `<end_of_turn>` as the next token at every reply position
    (from the prediction of the reply's first token to that of its `<end_of_turn>`), and where it ends."""
    import torch

    probs = torch.softmax(logits, dim=-1)[:, eot_id].tolist()
    replies, current = [], None
    for pos, learned in enumerate(seg["learned"]):
        if learned:
            if current is None:
                current = {"start": pos, "p": []}
            # the prediction of token `pos`, to 4 significant digits: the base model's are near 1e-15
            current["p"].append(float(f"{probs[pos - 1]:.4g}"))
            if seg.at[pos, "id"] == eot_id:
                replies.append(current)
                current = None
    return replies


def heldout_conversations(run: Path, tokenizer, max_tokens: int = MAX_TOKENS) -> tuple[list, dict]:
    """Every held-out conversation of the run (prompt + reference reply) the analysis can read:
    ([(id, messages, segments), ...], {reason: count} for those left out)."""
    from collections import Counter

    kept, skipped = [], Counter()
    for line in (Path(run) / "samples.jsonl").read_text(encoding="utf-8").splitlines():
        sample = json.loads(line)
        if sample["set"] != "heldout" or not sample.get("reference"):
            continue
        messages = list(sample["prompt"]) + [{"role": "assistant", "content": sample["reference"]}]
        try:
            seg = token_segments(tokenizer, messages)
        except ValueError:
            skipped["text spells a control token"] += 1
            continue
        if len(seg) > max_tokens:
            skipped[f"longer than {max_tokens} tokens"] += 1
            continue
        kept.append((str(sample["id"]), messages, seg))
    return kept, dict(skipped)


def representative(conversations: list) -> int:
    """Index of the example conversation, by rule: among those of at most EXAMPLE_MAX_TOKENS tokens
    whose reply has at least EXAMPLE_MIN_REPLY tokens, the one whose reply length is closest to
    their median (ties: the shorter conversation), so it is typical, not picked by eye."""
    import statistics

    fits = [(i, len(seg), int(seg["learned"].sum())) for i, (_, _, seg) in enumerate(conversations)
            if len(seg) <= EXAMPLE_MAX_TOKENS and int(seg["learned"].sum()) >= EXAMPLE_MIN_REPLY]
    if not fits:
        fits = [(i, len(seg), int(seg["learned"].sum())) for i, (_, _, seg) in enumerate(conversations)]
    if not fits:
        raise ValueError("no held-out conversation to inspect")
    median = statistics.median(reply for _, _, reply in fits)
    return min(fits, key=lambda f: (abs(f[2] - median), f[1]))[0]


def marker_matrix(attention, seg, queries: list[int]):
    """Per layer, the attention of each query to `<bos>`, to each turn-marker token before the
    first query, and summed over the user's text and the reply so far: (matrix [layers, q, cols], columns)."""
    import numpy as np

    heads = attention.mean(axis=1)
    start = queries[0]
    markers = [p for p in range(start) if seg.at[p, "segment"] == "turn markers"]
    columns = ["<bos>"] + [f"{seg.at[p, 'token']!r}@{p}" for p in markers] + ["user text", "reply so far"]
    labels = np.array(key_labels(seg, seg.at[start, "message"]))
    out = np.zeros((heads.shape[0], len(queries), len(columns)))
    for r, q in enumerate(queries):
        out[:, r, 0] = heads[:, q, 0]
        for c, p in enumerate(markers, start=1):
            out[:, r, c] = heads[:, q, p]
        for c, name in ((len(columns) - 2, "user text"), (len(columns) - 1, "reply so far")):
            cols = np.nonzero(labels[: q + 1] == name)[0]
            out[:, r, c] = heads[:, q, cols].sum(axis=1) if len(cols) else 0.0
    return out, columns


def inspect_run(run: str | Path, *, progress: bool = True, log=print) -> Path:
    """Measure `shares`, `eot` and `example` (module docstring) for a finished run; write RUN/inside.json."""
    from tqdm.auto import tqdm

    from .runinfo import cpu_kind, git_commit
    from .talk import load_base_model, load_sft_model

    run = Path(run)
    start = time.perf_counter()
    log(f"[sftlab inspect] loading the base and SFT models of {run}")
    base, tokenizer = load_base_model(run)
    sft, _ = load_sft_model(run)
    loaded = time.perf_counter() - start
    conversations, skipped = heldout_conversations(run, tokenizer)
    if not conversations:
        raise ValueError(f"{run / 'samples.jsonl'}: no held-out conversation with a reference reply to inspect")
    eot_id = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    pick = representative(conversations)
    shares = {"all": {"base": [], "sft": []}, "first": {"base": [], "sft": []}}
    eot = {"base": [], "sft": []}
    example = {}
    for i, (cid, messages, seg) in enumerate(tqdm(conversations, desc="inspect", disable=not progress)):
        learned = seg.index[seg["learned"]].tolist()
        first = first_reply_queries(seg)
        for name, model in (("base", base), ("sft", sft)):
            attention, logits = read_conversation(model, seg["id"].tolist())
            shares["all"][name].append(segment_shares(attention, seg, learned).round(6).tolist())
            shares["first"][name].append(segment_shares(attention, seg, first).round(6).tolist())
            eot[name].append(eot_along_reply(logits, seg, eot_id))
            if i == pick:
                matrix, columns = marker_matrix(attention, seg, first)
                example[name] = matrix.round(5).tolist()
                example["columns"] = columns
        if i == pick:
            example.update({"id": cid, "rows": [seg.at[q, "token"] for q in first],
                            "tokens": seg["token"].tolist(), "segments": seg["segment"].tolist(),
                            "learned": seg["learned"].tolist()})
    a = base.get_input_embeddings().weight[eot_id].detach().float()
    b = sft.get_input_embeddings().weight[eot_id].detach().float()
    eot_row = {"change": round(float((b - a).norm()), 6), "relative_change": round(float((b - a).norm() / a.norm()), 6)}
    out = {
        "run": run.name, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git_commit(), "cpu_kind": cpu_kind(),
        "segments": list(SEGMENTS), "first_reply_tokens": FIRST_REPLY_TOKENS,
        "conversation_ids": [cid for cid, _, _ in conversations], "skipped": skipped,
        "example_rule": (f"of the held-out conversations of at most {EXAMPLE_MAX_TOKENS} tokens whose reply has at "
                         f"least {EXAMPLE_MIN_REPLY}, the one whose reply length is closest to their median"),
        "shares": shares, "eot": eot, "example": example, "eot_row": eot_row,
        "timings_s": {"load_s": round(loaded, 1), "total_s": round(time.perf_counter() - start, 1)},
    }
    path = run / INSIDE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out), encoding="utf-8")
    tmp.replace(path)
    log(f"[sftlab inspect] {len(conversations)} conversations in {out['timings_s']['total_s']:.0f} s -> {path}")
    return path
