"""LoRA supervised fine-tuning with TRL's SFTTrainer, on conversations encoded by `sftlab.chat`.

The dataset handed to `SFTTrainer` is already tokenized (`input_ids` plus
`assistant_masks`), because `sftlab.chat.encode_conversation` is the injection-safe
encoder; TRL turns the masks into labels (-100 outside assistant replies), so the
loss is assistant-only without TRL re-rendering the template.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from .chat import ChatFormat, encode_conversation
from .config import TRAINING_KEYS
from .errors import ConfigError


LOSS_ON = ("replies", "all")


def encode_dataset(conversations, tokenizer, *, max_length: int | None, progress: bool = True,
                   loss_on: str = "replies"):
    """Encode conversations for training; those longer than `max_length` are skipped and counted.

    Truncating instead would cut replies before their `<end_of_turn>`: the model would
    learn from replies that never end. `loss_on="all"` marks every token as a target
    (`assistant_masks` all ones): the full-sequence loss, prompts learned too, which is
    what TRL does with conversational data unless told otherwise. Returns
    (datasets.Dataset, Counter of skip reasons).
    """
    from datasets import Dataset
    from tqdm.auto import tqdm

    if loss_on not in LOSS_ON:
        raise ConfigError(f"data.loss_on is {loss_on!r}; choose one of: {', '.join(LOSS_ON)}")
    rows, skipped = [], Counter()
    for conv in tqdm(conversations, desc="encoding", disable=not progress, leave=False):
        enc = encode_conversation(tokenizer, conv["messages"])
        if max_length is not None and len(enc["input_ids"]) > max_length:
            skipped["longer_than_max_length"] += 1
            continue
        if not any(enc["assistant_masks"]):
            skipped["no_assistant_tokens"] += 1
            continue
        if loss_on == "all":
            enc["assistant_masks"] = [1] * len(enc["input_ids"])
        rows.append({"id": str(conv.get("id", len(rows))), **enc})
    return Dataset.from_list(rows), skipped


def resolve_token_indices(value, tokenizer):
    """Allow `trainable_token_indices` to name tokens ("<end_of_turn>") as well as ids.

    With no tokenizer (`sftlab.config.validate`'s dry run, before any model loads) a name stands for id 0."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: resolve_token_indices(v, tokenizer) for k, v in value.items()}
    ids = []
    vocab = tokenizer.get_vocab() if tokenizer is not None else None
    for item in value:
        if isinstance(item, str) and vocab is None:
            ids.append(0)
        elif isinstance(item, str):
            if item not in vocab:
                raise ConfigError(f"lora.trainable_token_indices names {item!r}, which is not in the vocabulary")
            ids.append(vocab[item])
        else:
            ids.append(int(item))
    return ids


def build_lora_config(lora_cfg: dict, tokenizer, fmt: ChatFormat | None):
    """`peft.LoraConfig` from the recipe; new template tokens always get trainable embeddings.

    `tokenizer` and `fmt` None: the recipe check's dry run (see `resolve_token_indices`)."""
    from peft import LoraConfig

    cfg = dict(lora_cfg)
    cfg.setdefault("task_type", "CAUSAL_LM")
    indices = resolve_token_indices(cfg.pop("trainable_token_indices", None), tokenizer)
    if fmt is not None and fmt.new_token_ids:
        # Added tokens start with random embeddings: they must train, or the model can never emit them.
        if isinstance(indices, dict):
            raise ConfigError("new template tokens need trainable_token_indices as a list, not a dict")
        indices = sorted(set(indices or []) | set(fmt.new_token_ids))
    if indices:
        cfg["trainable_token_indices"] = indices
    return LoraConfig(**cfg)


def build_sft_config(training_cfg: dict, output_dir: Path, seed: int):
    """`trl.SFTConfig` from the recipe, with the few settings our pre-tokenized data needs.

    Two optional fast paths work with that data (tests/test_bench.py checks both against the
    padded path): `train_sampling_strategy: group_by_length` (lengths are read from `input_ids`,
    no length column needed) and `padding_free: true`.
    """
    import torch
    from trl import SFTConfig

    cfg = dict(training_cfg)
    own = {key: cfg.pop(key) for key in TRAINING_KEYS if key in cfg}
    chunk = own.get("loss_chunk_size")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ConfigError(f"training.loss_chunk_size is {chunk!r}; expected a positive whole number or null")
    if cfg.get("assistant_only_loss"):
        raise ConfigError(
            "training.assistant_only_loss must stay false: sftlab's encoder already supplies the assistant "
            "masks (TRL's option re-renders the template from text, which is not injection-safe)"
        )
    # Not set is "auto": TRL's own default turns bf16 on, which a CPU without bf16 (or a GPU
    # without it) refuses, so a recipe that leaves it out would train on no such machine.
    cfg.setdefault("bf16", "auto")
    if cfg.get("bf16") == "auto":
        # bf16 autocast helps on CPUs with native bf16 (avx512_bf16/AMX) and on recent GPUs.
        cpu_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        cfg["bf16"] = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else bool(cpu_bf16)
    if cfg.get("bf16") and not torch.cuda.is_available():
        cfg.setdefault("use_cpu", True)  # transformers only allows CPU bf16 autocast when told it is on CPU
    if cfg.get("padding_free") and not cfg.get("packing"):
        # TRL refuses padding_free with a max_length (it could not enforce it without packing);
        # `encode_dataset` has already dropped every conversation longer than max_length.
        cfg["max_length"] = None
    cfg.setdefault("report_to", "none")
    cfg.setdefault("seed", seed)
    cfg.setdefault("data_seed", seed)
    # Checkpoints let `sftlab run --resume` continue an interrupted run; LoRA checkpoints are small.
    cfg.setdefault("save_strategy", "steps")
    cfg.setdefault("save_steps", 25)
    cfg.setdefault("save_total_limit", 2)
    cfg.setdefault("logging_steps", 1)
    args = SFTConfig(output_dir=str(output_dir), **cfg)
    # Not an SFTConfig field: carried on the arguments object, where SftlabTrainer.compute_loss reads it.
    args.loss_chunk_size = chunk
    return args


def _log_callback(path: Path):
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        """Append every logged train/eval record to a JSONL file, with wall time."""

        def __init__(self):
            self.start = time.time()

        def on_log(self, args, state, control, logs=None, **kwargs):
            # Every process logs the same (already averaged) values under `accelerate launch`; one writes.
            if not logs or not state.is_world_process_zero:
                return
            record = {"step": state.global_step, "epoch": state.epoch, "time_s": round(time.time() - self.start, 2)}
            record.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    return JsonlLog()


# Labelled positions per output-layer chunk when training with gradient checkpointing
# (`training.loss_chunk_size` sets it for any recipe).
LOSS_CHUNK_SIZE = 256


def loss_chunk_size(args) -> int | None:
    """The output-layer chunk for these arguments: the recipe's `loss_chunk_size`, else
    LOSS_CHUNK_SIZE under gradient checkpointing (a recipe that trades time for memory also
    chunks the output layer), else None (all labelled positions at once)."""
    chunk = getattr(args, "loss_chunk_size", None)
    if chunk is not None:
        return int(chunk)
    return LOSS_CHUNK_SIZE if args.gradient_checkpointing else None


def _labelled_hidden(model, inputs):
    """(inner model, hidden states at labelled positions, their targets, keep mask): the body, run once."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    body_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
    # use_cache=False matters for padding-free batches (several sequences flattened into one
    # row, with position_ids and no attention mask): transformers keeps the sequences apart
    # only when there is no KV cache; with one, every token attends to the earlier sequences.
    hidden = inner.model(**body_inputs, use_cache=False).last_hidden_state
    keep = inputs["labels"][:, 1:] != -100
    return inner, hidden[:, :-1][keep], inputs["labels"][:, 1:][keep], keep


def _project(inner, hidden):
    """Output layer (through PEFT's wrappers, if any) and Gemma's final-logit softcap, in fp32."""
    import torch

    logits = inner.lm_head(hidden).float()
    cap = getattr(inner.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _chunk_loss_sum(inner, hidden, targets):
    import torch.nn.functional as F

    return F.cross_entropy(_project(inner, hidden), targets, reduction="sum")


def labelled_logits(model, inputs):
    """Logits at the positions whose next token is labelled, with those targets.

    Returns `(logits, targets, keep)`: `keep` marks the labelled positions of
    `labels[:, 1:]`, `logits` has one row per True in `keep`. The backbone runs once and
    only those hidden states go through the 262,144-way output layer: on Gemma-3 that
    layer costs more than the whole body, and most positions (prompt, padding) carry no
    label. Training (`labelled_position_loss`) and held-out scoring
    (`sftlab.evaluate.assistant_nll`) both use it.
    """
    inner, hidden, targets, keep = _labelled_hidden(model, inputs)
    return _project(inner, hidden), targets, keep


def labelled_position_loss(model, inputs, num_items_in_batch=None, chunk_size: int | None = None):
    """Causal-LM loss that runs the output layer only where a label exists.

    Hand-written because TRL's fused LM head (its default loss path) scores every
    position and reads `lm_head.bias`, which PEFT's trainable-token wrapper on a tied
    head does not expose. The loss equals the usual mean cross-entropy over labelled
    tokens (tests compare the two); see `labelled_logits`.

    With `chunk_size`, the labelled positions go through the output layer `chunk_size`
    at a time, and each chunk's gradients are computed right away (`sftlab.fused_head`):
    its [chunk, 262144] logits are freed before the next chunk, and nothing is recomputed
    in the backward pass. Same loss and gradients (tested), less peak memory, no extra
    output-layer product. Without gradients (evaluation) the chunks are only summed.
    """
    import torch

    inner, hidden, targets, keep = _labelled_hidden(model, inputs)
    if chunk_size is None or hidden.shape[0] <= chunk_size:
        loss_sum = _chunk_loss_sum(inner, hidden, targets)
    elif torch.is_grad_enabled():
        from .fused_head import chunked_loss_sum

        params = [p for p in inner.lm_head.parameters() if p.requires_grad]
        loss_sum = chunked_loss_sum(lambda h, t: _chunk_loss_sum(inner, h, t), chunk_size, hidden, targets, params)
    else:
        loss_sum = sum(_chunk_loss_sum(inner, hidden[i:i + chunk_size], targets[i:i + chunk_size])
                       for i in range(0, hidden.shape[0], chunk_size))
    denom = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    return loss_sum / torch.as_tensor(denom, device=loss_sum.device).clamp(min=1)


def _through_wrapper(wrapped, inner, fn, inputs):
    """`fn(inner, inputs)`, run as the forward of `wrapped`, the wrapper (DistributedDataParallel under
    `accelerate launch`) around `inner`; a plain call when there is none (`wrapped is inner`).

    DDP averages gradients across processes only in a backward pass that follows its own forward,
    and `labelled_position_loss` calls the model's body and output layer itself, not the model: for
    one call, `inner`'s forward becomes `fn`, so the wrapper's forward runs it.
    """
    if wrapped is inner:
        return fn(inner, inputs)
    own = inner.__dict__.get("forward")  # accelerate patches forward itself under mixed precision
    inner.forward = lambda **kw: fn(inner, kw)
    try:
        return wrapped(**inputs)
    finally:
        if own is None:
            del inner.forward
        else:
            inner.forward = own


def sft_trainer_class():
    """TRL's `SFTTrainer` with the project's loss (`labelled_position_loss`): what `train_lora` trains
    with, and what chapter 5 builds by hand. A function, so TRL is imported only when training."""
    from trl import SFTTrainer

    class SftlabTrainer(SFTTrainer):
        """SFTTrainer whose loss scores only labelled positions (see `labelled_position_loss`)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            chunk = loss_chunk_size(self.args)
            with self.accelerator.autocast():
                loss = _through_wrapper(
                    model, self.accelerator.unwrap_model(model),
                    lambda m, batch: labelled_position_loss(m, batch, num_items_in_batch, chunk_size=chunk), inputs)
            if model.training and not bool(loss.detach().isfinite()):
                # Checked here, not in the logs: Trainer's logging_nan_inf_filter hides NaN losses.
                raise FloatingPointError(
                    f"training loss became {loss.item()} at step {self.state.global_step + 1}; run stopped "
                    "(lower training.learning_rate or check the data)"
                )
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return (loss, None) if return_outputs else loss

    return SftlabTrainer


def train_lora(
    model,
    tokenizer,
    fmt: ChatFormat,
    train_ds,
    eval_ds,
    config: dict,
    work_dir: Path,
    log_path: Path,
    *,
    resume_from_checkpoint: Path | None = None,
):
    """Wrap `model` with LoRA and train it with SFTTrainer; returns (peft_model, stats dict).

    With `resume_from_checkpoint`, training continues from that checkpoint: the Trainer
    restores the adapter, optimizer, scheduler, RNG states and position in the data.
    """
    seed = int(config.get("seed", 0))
    lora = build_lora_config(config.get("lora") or {}, tokenizer, fmt)
    args = build_sft_config(config.get("training") or {}, work_dir / "checkpoints", seed)
    trainer = sft_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds if args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[_log_callback(log_path)],
    )
    peft_model = trainer.model
    fast_trainable_tokens(peft_model)  # one row instead of the whole 262k-row matrix per step
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    n_train_tokens = sum(len(x) for x in train_ds["input_ids"])
    n_assistant_tokens = sum(sum(x) for x in train_ds["assistant_masks"]) if "assistant_masks" in train_ds.column_names else None
    start = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume_from_checkpoint) if resume_from_checkpoint else None)
    wall = time.time() - start
    epochs = float(args.num_train_epochs) if args.max_steps <= 0 else None
    stats = {
        "train_wall_s": round(wall, 1),
        "global_steps": int(result.global_step),
        "train_loss": float(result.training_loss),
        "trainable_params": int(trainable),
        "total_params": int(total),
        "train_conversations": len(train_ds),
        "train_tokens_per_epoch": int(n_train_tokens),
        "train_assistant_tokens_per_epoch": n_assistant_tokens,
        "epochs": epochs,
        "bf16": bool(args.bf16),
        # Under `accelerate launch` each process takes its own per-device batch of every step.
        "processes": int(trainer.accelerator.num_processes),
        "global_batch_size": int(args.per_device_train_batch_size * trainer.accelerator.num_processes
                                 * args.gradient_accumulation_steps),
    }
    seen_tokens = trainer.state.num_input_tokens_seen or 0
    stats["tokens_per_second"] = round((seen_tokens or n_train_tokens * (epochs or 1)) / max(wall, 1e-9), 1)
    peft_model.eval()
    return peft_model, stats


def lora_update_norms(peft_model) -> list[dict]:
    """Frobenius norm of each LoRA update (scale * B @ A), by layer and module: where training acted."""
    import re

    import torch

    rows = []
    for name, module in peft_model.named_modules():
        if not (hasattr(module, "lora_A") and hasattr(module, "lora_B")):
            continue
        for adapter in module.lora_A:
            a = module.lora_A[adapter].weight.float()
            b = module.lora_B[adapter].weight.float()
            scale = module.scaling[adapter]
            with torch.no_grad():
                delta = scale * (b @ a)
                base = module.base_layer.weight.float()
                norm = float(delta.norm())
                rel = norm / float(base.norm())
            layer = re.search(r"layers\.(\d+)\.", name)
            rows.append(
                {
                    "name": name,
                    "layer": int(layer.group(1)) if layer else None,
                    "module": name.rsplit(".", 1)[-1],
                    "norm": norm,
                    "relative_norm": rel,
                }
            )
    return rows


def truncate_log(path: Path, step: int) -> None:
    """Drop log rows after `step`: training repeats them when it resumes from that checkpoint."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))


def last_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) if folder.exists() else []
    return found[-1] if found else None


def _rows_forward(self, x, *args, **kwargs):
    """`TrainableTokensLayer.forward` that touches only the trained rows (see `fast_trainable_tokens`)."""
    import torch

    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    active = self.active_adapters
    if self.disable_adapters or not active or self.merged or len(active) != 1:
        return TrainableTokensLayer.forward(self, x, *args, **kwargs)  # the library's own path
    name = active[0]
    delta = self.trainable_tokens_delta[name]
    index = torch.as_tensor(self.token_indices[name], device=delta.device)
    result = self.base_layer(x, *args, **kwargs)
    # Both sides add (trained row - frozen row) where it applies: an in-place add passes the
    # gradient through unchanged, where overwriting would copy the [positions, 262144] gradient.
    change = delta - self.base_layer.weight[index].detach()  # [k, dim]
    if isinstance(self.base_layer, torch.nn.Embedding):
        hit = x.unsqueeze(-1) == index  # [..., k]: which input positions are trained tokens
        if bool(hit.any()):
            rows = hit.to(change.dtype) @ change  # [..., dim]: the change for trained tokens, 0 elsewhere
            scale = self._get_embed_scale()  # Gemma scales embeddings inside its embedding module
            if scale is not None:
                rows = rows * scale.to(rows.dtype)
            result = result + rows.to(result.dtype)
        return result
    if isinstance(self.base_layer, torch.nn.Linear):  # the tied output layer: logits of the trained tokens
        return result.index_add_(-1, index, torch.nn.functional.linear(x, change.to(x.dtype)).to(result.dtype))
    return TrainableTokensLayer.forward(self, x, *args, **kwargs)


def fast_trainable_tokens(model) -> int:
    """Make PEFT's trainable-token layers compute only the rows they train; returns how many it changed.

    PEFT's `TrainableTokensLayer` (`lora.trainable_token_indices`) builds the whole merged
    matrix, `W.index_copy(rows, delta)`, at every forward: for Gemma's tied 262,144 x 640
    embedding that is a 671 MB copy for the input embedding and another for the output layer,
    per step, to change one row. Hand-written because PEFT has no sparse path: here the input
    side looks tokens up in the frozen matrix and swaps in the trained rows where the input
    is one of those tokens, and the output side computes the frozen logits and overwrites the
    trained tokens' columns. Same values and gradients (tested); the parameters, and so the
    saved adapter, are PEFT's own, so it loads with plain PEFT. Merged, disabled or
    multi-adapter layers keep PEFT's path.
    """
    import types

    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    n = 0
    for module in model.modules():
        if isinstance(module, TrainableTokensLayer):
            module.forward = types.MethodType(_rows_forward, module)
            n += 1
    return n
