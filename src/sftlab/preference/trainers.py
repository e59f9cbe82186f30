"""The preference stage's training: pre-tokenized pairs, TRL's DPOTrainer, and rejection sampling.

Pairs are encoded by `sftlab.chat.encode_conversation`, as SFT training and evaluation encode
(injection-safe: text a user typed is never read as a control token): the prompt is the
conversation with the generation prompt (`<bos>` ... `<start_of_turn>model\\n`, one BOS), the
chosen reply is its content and the `<end_of_turn>` that closes it, and a rejected reply ends
with `<end_of_turn>` only when the sample stopped there; one cut off at the token limit is
kept as written, so DPO never learns that stopping is the fault. No `<eos>` is added: the turn
ends where the template ends it. TRL's own tokenization (chat template re-rendered from
text) is bypassed: the dataset already holds `prompt_ids`, `chosen_ids` and `rejected_ids`.

Both methods train a new LoRA on top of the merged SFT model. With PEFT and no `ref_model`,
DPOTrainer's reference is the same model with the adapter disabled: the merged SFT weights,
not the base model (tests/test_preference_train.py checks the reference log-probabilities).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from sftlab.chat import encode_conversation
from sftlab.errors import DataError


def encode_pair(tokenizer, eot_id: int, messages: list[dict], chosen: str, rejected: str, *,
                rejected_stopped: bool = True) -> dict | str:
    """{"prompt_ids", "chosen_ids", "rejected_ids"} for one pair, or why it cannot be encoded:
    "empty_reply", or "prompt_not_prefix" when the prompt's ids are not the start of the full
    conversation's."""
    prompt_ids = encode_conversation(tokenizer, messages, add_generation_prompt=True)["input_ids"]
    out = {"prompt_ids": prompt_ids}
    for side, text, stopped in (("chosen", chosen, True), ("rejected", rejected, rejected_stopped)):
        if not text or not text.strip():
            return "empty_reply"
        full = encode_conversation(tokenizer, [*messages, {"role": "assistant", "content": text}])["input_ids"]
        if full[: len(prompt_ids)] != prompt_ids:
            return "prompt_not_prefix"
        end = len(full) - 1 - full[::-1].index(eot_id)  # the <end_of_turn> that closes this reply
        out[f"{side}_ids"] = full[len(prompt_ids): end + 1 if stopped else end]
    return out


def pair_dataset(tokenizer, eot_id: int, pairs: list[dict], prompts: dict[str, dict], *, max_length: int | None):
    """The DPO training set from the selected pairs (`sftlab.preference.pairs.select` results with
    both sides), pairs longer than `max_length` (prompt + the longer reply) skipped, as SFT skips
    conversations: a truncated reply would lose its end. Returns (datasets.Dataset, Counter of skips)."""
    from datasets import Dataset

    rows, skipped = [], Counter()
    for pair in pairs:
        enc = encode_pair(tokenizer, eot_id, prompts[pair["id"]]["messages"], pair["chosen"], pair["rejected"],
                          rejected_stopped=pair["rejected_stopped"])
        if isinstance(enc, str):
            skipped[enc] += 1
            continue
        longest = len(enc["prompt_ids"]) + max(len(enc["chosen_ids"]), len(enc["rejected_ids"]))
        if max_length is not None and longest > max_length:
            skipped["longer_than_max_length"] += 1
            continue
        rows.append({"id": pair["id"], **enc})
    if not rows:
        raise DataError(f"no preference pair left to train on (skipped: {dict(skipped) or 'none'})")
    return Dataset.from_list(rows), skipped


def resolve_precision(cfg: dict) -> None:
    """`bf16: auto` as `sftlab.train.build_sft_config` reads it: bf16 autocast where the hardware
    has native bf16 (a CPU with avx512_bf16/AMX, a recent GPU); on a CPU, Trainer is told so."""
    import torch

    if cfg.get("bf16") == "auto":
        cpu_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        cfg["bf16"] = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else bool(cpu_bf16)
    if cfg.get("bf16") and not torch.cuda.is_available():
        cfg.setdefault("use_cpu", True)


def build_dpo_config(training_cfg: dict, output_dir: Path, seed: int):
    """`trl.DPOConfig` from `preference.training`, with sftlab's defaults where the recipe is silent:
    bf16 auto (TRL turns bf16 on everywhere), no gradient checkpointing (TRL turns it on; short
    sequences on a CPU only pay for it), a log row every step, checkpoints every 10 steps for
    `--resume`, no reporting, the run's seed."""
    from trl import DPOConfig

    cfg = dict(training_cfg)
    cfg.setdefault("bf16", "auto")
    resolve_precision(cfg)
    cfg.setdefault("gradient_checkpointing", False)
    cfg.setdefault("report_to", "none")
    cfg.setdefault("seed", seed)
    cfg.setdefault("data_seed", seed)
    cfg.setdefault("save_strategy", "steps")
    cfg.setdefault("save_steps", 10)
    cfg.setdefault("save_total_limit", 2)
    cfg.setdefault("logging_steps", 1)
    return DPOConfig(output_dir=str(output_dir), **cfg)


def _dpo_trainer_class():
    from trl import DPOTrainer

    class SftlabDPOTrainer(DPOTrainer):
        """DPOTrainer on a dataset sftlab has tokenized already (`pair_dataset`)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            missing = {"prompt_ids", "chosen_ids", "rejected_ids"} - set(dataset.column_names)
            if missing:
                raise DataError(f"the {dataset_name} preference set must be pre-tokenized (sftlab.preference."
                                f"trainers.pair_dataset); it lacks {sorted(missing)}")
            return dataset

    return SftlabDPOTrainer


def _log_rows(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _last_means(rows: list[dict], keys: tuple[str, ...], n: int = 10) -> dict:
    """Each key's mean over the last `n` logged training steps that have it."""
    out = {}
    for key in keys:
        values = [r[key] for r in rows if key in r][-n:]
        if values:
            out[key] = sum(values) / len(values)
    return out


DPO_LOG_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected")


def train_dpo(model, tokenizer, fmt, dataset, lora_cfg: dict, training_cfg: dict, *, seed: int, work_dir: Path,
              log_path: Path, resume_from_checkpoint: Path | None = None):
    """A new LoRA over `model` (the merged SFT model) trained with DPO on `dataset`; returns (peft_model, stats).

    The reference is `model` itself with the adapter disabled. With `resume_from_checkpoint` the
    Trainer restores the adapter, optimizer, scheduler, RNG and position in the data."""
    from sftlab.train import _log_callback, build_lora_config

    args = build_dpo_config(training_cfg, work_dir / "checkpoints", seed)
    lora = build_lora_config(lora_cfg, tokenizer, fmt)
    trainer = _dpo_trainer_class()(model=model, ref_model=None, args=args, train_dataset=dataset,
                                   processing_class=tokenizer, peft_config=lora, callbacks=[_log_callback(log_path)])
    peft_model = trainer.model
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    start = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume_from_checkpoint) if resume_from_checkpoint else None)
    stats = {"method": "dpo", "train_wall_s": round(time.time() - start, 1), "global_steps": int(result.global_step),
             "train_loss": float(result.training_loss), "trainable_params": int(trainable), "pairs": len(dataset),
             "beta": float(args.beta), "loss_type": list(args.loss_type), "bf16": bool(args.bf16),
             "precompute_ref_log_probs": bool(args.precompute_ref_log_probs),
             "last_10_steps": _last_means(_log_rows(log_path), DPO_LOG_KEYS + ("loss",))}
    peft_model.eval()
    return peft_model, stats


def train_rft(model, tokenizer, fmt, conversations: list[dict], lora_cfg: dict, training_cfg: dict, *, seed: int,
              work_dir: Path, log_path: Path, max_length: int | None, resume_from_checkpoint: Path | None = None):
    """Rejection-sampling fine-tuning: a new LoRA over `model` (the merged SFT model) trained by
    `sftlab.train.train_lora` (SFTTrainer, the loss on the replies only) on `conversations`, each a
    prompt with its chosen reply. Returns (peft_model, stats)."""
    from sftlab.train import encode_dataset, train_lora

    dataset, skipped = encode_dataset(conversations, tokenizer, max_length=max_length, progress=False)
    if len(dataset) == 0:
        raise DataError(f"no chosen reply left to train on (skipped: {dict(skipped) or 'none'})")
    training = {"eval_strategy": "no", "save_steps": 10, "bf16": "auto", "gradient_checkpointing": False,
                **training_cfg}
    config = {"seed": seed, "lora": lora_cfg, "training": training}
    peft_model, stats = train_lora(model, tokenizer, fmt, dataset, None, config, work_dir, log_path,
                                   resume_from_checkpoint=resume_from_checkpoint)
    return peft_model, {"method": "rft", "examples": len(dataset), "skipped": dict(skipped), **stats}
