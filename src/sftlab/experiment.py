"""`sftlab run CONFIG`: train LoRA on the base model, evaluate every system, write results/NAME/.

Everything the book shows comes from the files this writes:
  config.yaml         the recipe, as run
  run.json            versions, git commit, hardware, wall times, throughput, parameter counts
  data_report.json    what the data pipeline read, skipped, filtered and split
  train_log.jsonl     every logged training/eval step
  metrics.json        per-system metrics with 95% bootstrap intervals
  samples.jsonl       every prompt with every system's reply and stop flag
  lora_norms.jsonl    the LoRA update's norm per layer and module
  adapter/            the LoRA adapter in standard PEFT format

Results are written to a temporary folder that is renamed at the end, so a crash
never leaves a half-written results/NAME/.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from .config import config_hash, load_config, section
from .evaluate import (
    adapter_disabled,
    assistant_nll,
    chat_prompt_ids,
    continuation_prompt_ids,
    generate_replies,
)

EVAL_DEFAULTS = {
    "systems": ["base_continuation", "base_chat", "sft", "reference"],
    "heldout_size": 40,
    "ifeval": True,
    "max_new_tokens": 128,
    "batch_size": 8,
    "embedding_similarity": True,
    "bootstrap_resamples": 1000,
    "loss_batches": None,
}


def _log(msg: str) -> None:
    print(f"[sftlab] {msg}", file=sys.stderr, flush=True)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip() or None
    except OSError:
        return None


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    names = ["sftlab", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "evaluate", "nltk"]
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out


def _hardware() -> dict:
    import torch

    hw = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(0)
        hw["gpu_count"] = torch.cuda.device_count()
    else:
        hw["gpu"] = None
    hw["torch_threads"] = torch.get_num_threads()
    return hw


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


def _write_jsonl(path: Path, rows) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def run_experiment(config_path: str | Path, *, results_root: str | Path = "results", progress: bool = True) -> Path:
    """Run a recipe end to end; returns the results folder."""
    import torch
    from transformers import set_seed

    from . import ifeval as ifeval_mod
    from . import metrics as M
    from .chat import prepare_model, prepare_tokenizer
    from .data import prepare_data
    from .sources import load_model
    from .train import encode_dataset, train_lora

    t0 = time.time()
    config = load_config(config_path)
    name = config["name"]
    seed = int(config.get("seed", 0))
    model_cfg = section(config, "model")
    data_cfg = section(config, "data")
    eval_cfg = {**EVAL_DEFAULTS, **section(config, "evaluation")}
    results_root = Path(results_root)
    results_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile_dir(results_root, name))
    timings: dict[str, float] = {}
    try:
        set_seed(seed)
        (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

        _log(f"loading base model {model_cfg['base']}")
        t = time.time()
        model, tokenizer = load_model(model_cfg["base"], dtype=model_cfg.get("dtype", "float32"))
        fmt = prepare_tokenizer(tokenizer, model_cfg.get("template", "gemma"),
                                allow_new_tokens=bool(model_cfg.get("allow_new_tokens", False)))
        prepare_model(model, tokenizer, fmt)
        timings["load_base_s"] = time.time() - t

        _log("preparing data")
        t = time.time()
        prepared = prepare_data(data_cfg, tokenizer, seed, progress=progress)
        max_length = (config.get("training") or {}).get("max_length", 1024)
        train_ds, train_skips = encode_dataset(list(prepared.train), tokenizer, max_length=max_length, progress=progress)
        eval_ds, eval_skips = encode_dataset(list(prepared.eval), tokenizer, max_length=max_length, progress=progress)
        report = dict(prepared.report)
        report["encoding_skipped"] = {"train": dict(train_skips), "eval": dict(eval_skips)}
        (work / "data_report.json").write_text(json.dumps(report, indent=2, default=str))
        timings["data_s"] = time.time() - t
        heldout = [c for c in prepared.eval if str(c["id"]) in set(eval_ds["id"])][: int(eval_cfg["heldout_size"])]

        # Held-out prompts: each conversation up to its last user turn; the reference is the last reply.
        heldout_prompts = [c["messages"][:-1] for c in heldout]
        heldout_refs = [c["messages"][-1]["content"] for c in heldout]
        if_records = ifeval_mod.load_prompts() if eval_cfg["ifeval"] else []
        if_prompts = [[{"role": "user", "content": r["prompt"]}] for r in if_records]
        gen_kw = dict(stop_ids=fmt.eos_token_ids, max_new_tokens=int(eval_cfg["max_new_tokens"]),
                      batch_size=int(eval_cfg["batch_size"]), progress=progress)
        systems = list(eval_cfg["systems"])
        replies: dict[str, dict[str, list[dict]]] = {}
        losses: dict[str, dict] = {}

        def evaluate_chat_model(label, mdl, tok, prompt_fn):
            t = time.time()
            out = {
                "heldout": generate_replies(mdl, tok, [prompt_fn(tok, p) for p in heldout_prompts],
                                            desc=f"{label}: held-out", **gen_kw),
                "ifeval": generate_replies(mdl, tok, [prompt_fn(tok, p) for p in if_prompts],
                                           desc=f"{label}: ifeval", **gen_kw) if if_prompts else [],
            }
            timings[f"generate_{label}_s"] = time.time() - t
            replies[label] = out

        # The base model, before training (the adapter does not exist yet).
        model.eval()
        if "base_continuation" in systems:
            _log("evaluating base model as plain continuation")
            evaluate_chat_model("base_continuation", model, tokenizer, continuation_prompt_ids)
        if "base_chat" in systems:
            _log("evaluating base model with the chat template")
            evaluate_chat_model("base_chat", model, tokenizer, chat_prompt_ids)
        t = time.time()
        per_conv, mean = assistant_nll(model, eval_ds, max_batches=eval_cfg["loss_batches"], progress=progress)
        losses["base_chat"] = {"per_conversation": per_conv, "mean_nll": mean}
        timings["loss_base_s"] = time.time() - t

        _log("training LoRA")
        model.train()
        peft_model, train_stats = train_lora(
            model, tokenizer, fmt, train_ds, eval_ds, config, work, work / "train_log.jsonl"
        )
        timings["train_s"] = train_stats["train_wall_s"]
        peft_model.save_pretrained(work / "adapter")
        tokenizer.save_pretrained(work / "adapter")
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
        _write_jsonl(work / "lora_norms.jsonl", lora_update_norms(peft_model))

        peft_model.eval()
        _log("evaluating the LoRA SFT model")
        t = time.time()
        per_conv, mean = assistant_nll(peft_model, eval_ds, max_batches=eval_cfg["loss_batches"], progress=progress)
        losses["sft"] = {"per_conversation": per_conv, "mean_nll": mean}
        timings["loss_sft_s"] = time.time() - t
        if "sft" in systems:
            # Merged weights generate at base-model speed; unmerged LoRA and the trainable-token
            # wrapper on the 262k-row output layer add work at every decoding step.
            merged = peft_model.merge_and_unload()
            merged.eval()
            evaluate_chat_model("sft", merged, tokenizer, chat_prompt_ids)
            del merged
        del peft_model, model

        if "reference" in systems and model_cfg.get("reference"):
            _log(f"evaluating reference model {model_cfg['reference']}")
            ref_model, ref_tok = load_model(model_cfg["reference"], dtype=model_cfg.get("dtype", "float32"))
            ref_fmt = prepare_tokenizer(ref_tok, model_cfg.get("reference_template", "native"))
            prepare_model(ref_model, ref_tok, ref_fmt)
            ref_model.eval()
            ref_kw = dict(gen_kw, stop_ids=ref_fmt.eos_token_ids)
            t = time.time()
            replies["reference"] = {
                "heldout": generate_replies(ref_model, ref_tok, [chat_prompt_ids(ref_tok, p) for p in heldout_prompts],
                                            desc="reference: held-out", **ref_kw),
                "ifeval": generate_replies(ref_model, ref_tok, [chat_prompt_ids(ref_tok, p) for p in if_prompts],
                                           desc="reference: ifeval", **ref_kw) if if_prompts else [],
            }
            timings["generate_reference_s"] = time.time() - t
            del ref_model

        _log("scoring")
        t = time.time()
        n_boot = int(eval_cfg["bootstrap_resamples"])
        metrics: dict = {"systems": {}, "heldout_loss": {}}
        for label, out in replies.items():
            records = [{"reply": r["text"], "reference": ref, "stopped": r["stopped"]}
                       for r, ref in zip(out["heldout"], heldout_refs)]
            entry = {"heldout": M.summarize(records, embeddings=bool(eval_cfg["embedding_similarity"]),
                                            n_resamples=n_boot, seed=seed)}
            if if_records:
                entry["ifeval"] = ifeval_mod.ifeval_accuracy(if_records, [r["text"] for r in out["ifeval"]],
                                                             n_resamples=n_boot, seed=seed)
                entry["ifeval"]["stop_rate"] = M.stop_rate([r["stopped"] for r in out["ifeval"]])
            metrics["systems"][label] = entry
        for label, loss in losses.items():
            rows = [[s, n] for s, n in loss["per_conversation"] if n > 0]
            def pooled(rows):
                rows = np.asarray(rows)
                return float(rows[:, 0].sum() / rows[:, 1].sum())

            lo, hi = M.bootstrap_ci(rows, stat=pooled, n_resamples=n_boot, seed=seed)
            metrics["heldout_loss"][label] = {
                "mean_nll": loss["mean_nll"], "ci": [lo, hi],
                "perplexity": M.perplexity(loss["mean_nll"]), "n_conversations": len(rows),
                "n_tokens": int(sum(n for _, n in rows)),
            }
        (work / "metrics.json").write_text(json.dumps(metrics, indent=2))
        timings["score_s"] = time.time() - t

        samples = []
        for i, (conv, ref) in enumerate(zip(heldout, heldout_refs)):
            samples.append({"set": "heldout", "id": conv["id"], "prompt": conv["messages"][:-1], "reference": ref,
                            "replies": {s: replies[s]["heldout"][i] for s in replies}})
        for i, rec in enumerate(if_records):
            row = {"set": "ifeval", "id": rec["id"], "prompt": [{"role": "user", "content": rec["prompt"]}],
                   "reference": None, "checks": rec["checks"], "replies": {}}
            for s in replies:
                r = dict(replies[s]["ifeval"][i])
                r["checks_passed"] = ifeval_mod.score_reply(rec, r["text"])["instruction_results"]
                row["replies"][s] = r
            samples.append(row)
        _write_jsonl(work / "samples.jsonl", samples)

        run = {
            "name": name,
            "config_hash": config_hash(config),
            "config_path": str(config_path),
            "git_commit": _git_commit(),
            "versions": _versions(),
            "hardware": _hardware(),
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
            "wall_s": round(time.time() - t0, 1),
            "training": train_stats,
            "chat_format": {"template": fmt.template, "end_of_turn": fmt.end_of_turn,
                            "eos_token_ids": fmt.eos_token_ids, "pad_token_id": fmt.pad_token_id},
        }
        (work / "run.json").write_text(json.dumps(run, indent=2))
        final = results_root / name
        if final.exists():
            old = results_root / f".old-{name}-{os.getpid()}"
            final.rename(old)
            work.rename(final)
            shutil.rmtree(old)
        else:
            work.rename(final)
        _log(f"done in {run['wall_s']:.0f} s: {final}")
        return final
    except BaseException:
        _log(f"run failed; partial files left in {work} (results/{name} untouched)")
        raise


def tempfile_dir(root: Path, name: str) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root)
