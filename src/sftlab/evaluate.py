"""Before/after evaluation: the same prompts, greedy decoding and token limit for every system.

Systems (names used in results/*/metrics.json and samples.jsonl):
  base_continuation  the base model reading the user's text as plain text (no template)
  base_chat          the base model with the chat template (what SFT starts from)
  sft                the base model with the trained LoRA adapter, same template
  reference          a published post-trained model (SmolLM2-135M-Instruct) with its own template
"""

from __future__ import annotations

import math
from contextlib import nullcontext

from .chat import encode_conversation

SYSTEMS = ("base_continuation", "base_chat", "sft", "reference")


def chat_prompt_ids(tokenizer, messages) -> list[int]:
    """Prompt ids for the next reply: the conversation so far plus the reply header."""
    return encode_conversation(tokenizer, messages, add_generation_prompt=True)["input_ids"]


def continuation_prompt_ids(tokenizer, messages) -> list[int]:
    """The conversation's text with no template: how a base model was pretrained to read."""
    text = "\n\n".join(m["content"] for m in messages)
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + ids + tokenizer("\n\n", add_special_tokens=False)["input_ids"]


def generate_replies(
    model,
    tokenizer,
    prompts: list[list[int]],
    *,
    stop_ids: list[int],
    max_new_tokens: int,
    batch_size: int = 8,
    chunk_tokens: int | None = 32,
    desc: str = "generating",
    progress: bool = True,
    sampling: dict | None = None,
) -> list[dict]:
    """Greedy replies for token-id prompts, batched with left padding (with `sampling`,
    {"temperature": T, "seed": S}: sampled at temperature T, no top-k or top-p cut, the torch
    generator seeded with S before the first batch, so the same call gives the same replies).

    Prompts are sorted by length so a batch wastes little padding; results come
    back in the input order. Each result: text (up to, not including, the stop
    token), stopped (a stop token came before the limit), n_tokens.

    A batch is generated `chunk_tokens` new tokens at a time; after each chunk the
    rows that have stopped leave the batch and its KV cache, so the rows still
    writing stop paying for them (`model.generate` alone runs every row until the
    last one stops: 55% of the trained model's decoding went to finished rows).
    The cache carries over, so each token sees what it would in one `generate`
    call; None generates the batch in one call.
    """
    import torch
    from tqdm.auto import tqdm

    pad_id = tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[dict | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    stop_set = set(stop_ids)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if sampling is not None:
        torch.manual_seed(int(sampling["seed"]))
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            p = prompts[i]
            ids[row, width - len(p) :] = torch.tensor(p)
            attn[row, width - len(p) :] = 1
        new_tokens = _generate_dropping_finished(
            model, ids.to(device), attn.to(device), stop_set=stop_set, max_new_tokens=max_new_tokens,
            chunk_tokens=chunk_tokens, pad_id=pad_id, sampling=sampling)
        for row, i in enumerate(batch):
            new = new_tokens[row]
            cut = next((k for k, t in enumerate(new) if t in stop_set), None)
            tokens = new if cut is None else new[:cut]
            results[i] = {
                "text": tokenizer.decode(tokens, skip_special_tokens=False),
                "stopped": cut is not None,
                "n_tokens": len(tokens),
            }
    return results  # type: ignore[return-value]


def _generate_dropping_finished(model, ids, attn, *, stop_set: set[int], max_new_tokens: int,
                                chunk_tokens: int | None, pad_id: int, sampling: dict | None = None) -> list[list[int]]:
    """New token ids per row of a left-padded batch, greedy (or sampled: `generate_replies`), up to
    and including a stop token.

    Hand-written because `generate` has no option to drop finished rows: it is called for
    `chunk_tokens` at a time with the previous call's cache (`return_dict_in_generate`),
    and rows that have stopped are removed from the batch and the cache between calls."""
    import torch

    from transformers.generation import utils as generation_utils

    gen_kw = dict(do_sample=False, eos_token_id=sorted(stop_set), pad_token_id=pad_id)
    if sampling is not None:  # plain temperature sampling: the model's own top-k / top-p defaults switched off
        gen_kw.update(do_sample=True, temperature=float(sampling["temperature"]), top_k=0, top_p=1.0)
    # newer transformers call generate's cache argument `cache` (and deprecate `past_key_values`);
    # older ones take only `past_key_values`
    cache_kw = "cache" if hasattr(generation_utils, "ALL_CACHE_NAMES") else "past_key_values"
    width = ids.shape[1]
    if not chunk_tokens:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens, **gen_kw)
        return [out[row, width:].tolist() for row in range(len(ids))]
    new_tokens: list[list[int] | None] = [None] * len(ids)
    alive = list(range(len(ids)))  # batch rows still writing, in the order of `ids`' rows
    cache, made = None, 0
    while alive and made < max_new_tokens:
        step = min(chunk_tokens, max_new_tokens - made)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=step, return_dict_in_generate=True,
                                 **{cache_kw: cache}, **gen_kw)
        grown = out.sequences.shape[1] - ids.shape[1]
        ids, made = out.sequences, made + grown
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        attn = torch.cat([attn, attn.new_ones((len(alive), grown))], dim=1)
        keep = []
        for k, row in enumerate(alive):
            new = ids[k, width:].tolist()
            if made >= max_new_tokens or grown < step or any(t in stop_set for t in new):
                new_tokens[row] = new
            else:
                keep.append(k)
        if len(keep) < len(alive):
            index = torch.tensor(keep, dtype=torch.long, device=ids.device)
            ids, attn = ids[index], attn[index]
            if keep:
                cache.batch_select_indices(index)
            alive = [alive[k] for k in keep]
    return new_tokens  # type: ignore[return-value]


def assistant_nll(model, dataset, *, batch_size: int = 4, max_batches: int | None = None, progress: bool = True,
                  eot_id: int | None = None):
    """Mean negative log-likelihood per assistant token, per conversation.

    Hand-written rather than `Trainer.evaluate`, because the book needs one number per
    conversation (for bootstrap intervals), not only the corpus mean, and the share of the
    loss that sits on the end-of-turn tokens closing each reply.
    Returns (per-conversation list of (sum_nll, n_tokens), corpus mean nll); with `eot_id`
    each entry is (sum_nll, n_tokens, eot_sum_nll, eot_tokens), the last two over the
    learned positions whose target is that token.
    """
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    per_conv = []
    rows = list(range(len(dataset)))
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    if max_batches is not None:
        batches = batches[:max_batches]
    for batch in tqdm(batches, desc="held-out loss", disable=not progress, leave=False):
        seqs = [dataset[i]["input_ids"] for i in batch]
        masks = [dataset[i]["assistant_masks"] for i in batch]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        lab = torch.full((len(batch), width), -100, dtype=torch.long)
        for r, (s, m) in enumerate(zip(seqs, masks)):
            ids[r, : len(s)] = torch.tensor(s)
            attn[r, : len(s)] = 1
            lab[r, : len(s)] = torch.where(torch.tensor(m) == 1, torch.tensor(s), torch.tensor(-100))
        with torch.no_grad():
            nll, eot_nll = _labelled_nll(model, ids.to(device), attn.to(device), lab.to(device), eot_id=eot_id)
        n_tok = (lab[:, 1:] != -100).sum(dim=1)
        n_eot = (lab[:, 1:] == eot_id).sum(dim=1) if eot_id is not None else None
        for r in range(len(batch)):
            row = (float(nll[r]), int(n_tok[r]))
            per_conv.append(row + (float(eot_nll[r]), int(n_eot[r])) if eot_id is not None else row)
    total_nll = sum(c[0] for c in per_conv)
    total_tok = sum(c[1] for c in per_conv)
    return per_conv, (total_nll / total_tok if total_tok else math.nan)


def _labelled_nll(model, input_ids, attention_mask, labels, *, eot_id: int | None = None):
    """Summed NLL per row over labelled tokens, scoring only labelled positions; and the same
    sum over the positions whose target is `eot_id` (zeros without it)."""
    import torch
    import torch.nn.functional as F

    from .train import labelled_logits

    logits, targets, keep = labelled_logits(
        model, {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    )
    token_nll = F.cross_entropy(logits, targets, reduction="none")
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(keep)[keep]
    total = torch.zeros(labels.shape[0], device=labels.device).index_add_(0, rows, token_nll)
    is_eot = (targets == eot_id).to(token_nll.dtype) if eot_id is not None else torch.zeros_like(token_nll)
    eot = torch.zeros(labels.shape[0], device=labels.device).index_add_(0, rows, token_nll * is_eot)
    return total, eot


def adapter_disabled(model):
    """Context in which a PEFT model behaves as its base model (no-op for plain models)."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
