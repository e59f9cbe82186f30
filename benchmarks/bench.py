"""Training, generation and loading throughput of sftlab against TRL's defaults, side by side.

One run, one model, one set of conversations, one machine:

  training    TRL `SFTTrainer` with its defaults (padded batches, `assistant_only_loss=True` on a
              `messages` dataset, fused output layer over every position, gradient checkpointing)
              against sftlab's configuration (`SftlabTrainer` on pre-tokenized conversations, bf16
              autocast where the hardware has it, no gradient checkpointing, output layer only at
              labelled positions), plus sftlab's two optional fast paths one at a time: length-grouped
              batches (`train_sampling_strategy: group_by_length`) and padding-free batches
              (`padding_free: true`). Each variant runs in its own process, so its peak memory
              is its own. Reported: assistant tokens per second, median seconds per step, peak
              memory, and the loss on the first batch before any update (it must agree).
  generation  `sftlab.evaluate.generate_replies` one prompt at a time against batched, on the
              same chat prompts; the replies must be identical.
  loading     an offline model's first load (GGUF dequantized into an empty cache) against a load
              from the cache.

    python benchmarks/bench.py            # the full benchmark (CPU: about half an hour)
    python benchmarks/bench.py --smoke    # tiny sizes, to check that everything runs

Results: a table on stdout, progress on stderr, everything in `results/bench/bench.json`.
See benchmarks/README.md for how to read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
DEFAULT_OUT = ROOT / "results" / "bench" / "bench.json"
SCHEMA_VERSION = 1
BASELINE = "trl-default"
PROFILE_ROWS = 15  # operators listed per profiled variant (--profile)
LOSS_TOLERANCE = 1e-4  # first-batch losses (fp32, same tokens and labels) must agree this closely

# Sizes. The full ones are those of /work/shared/measured.md, so the figures compare.
FULL = {
    "conversations": 64,  # ShareGPT conversations, each at most max_length tokens with the template
    "max_length": 512,
    "batch_size": 4,
    "warmup_steps": 2,  # untimed: the first steps pay one-off costs (allocation, kernel selection)
    "steps": 8,  # timed
    "prompts": 16,  # IFEval prompts, one user turn each
    "generation_batch_size": None,  # None: the recipe's evaluation.batch_size (what `sftlab run` uses), else 8
    "max_new_tokens": 64,
    "first_load": True,
}
SMOKE = {**FULL, "conversations": 8, "steps": 2, "prompts": 4, "generation_batch_size": 4,
         "max_new_tokens": 16, "first_load": False}

# Training variants. sftlab variants take the config's `training` and `lora` sections, then the
# overrides here; "trainable_tokens" keeps or drops the config's lora.trainable_token_indices.
VARIANTS = {
    "trl-default": {
        "kind": "trl",
        "trainable_tokens": False,
        "about": "TRL SFTTrainer defaults: padded, assistant_only_loss on `messages`, fused LM head, "
                 "gradient checkpointing",
    },
    "sftlab": {
        "kind": "sftlab",
        "trainable_tokens": True,
        "about": "sftlab as configured (trainable <end_of_turn> row)",
    },
    "sftlab-peft-tt": {
        "kind": "sftlab",
        "trainable_tokens": True,
        "peft_trainable_tokens": True,
        "about": "sftlab with PEFT's own trainable-token layer (copies the whole 262k-row matrix per forward)",
    },
    "sftlab-no-tt": {
        "kind": "sftlab",
        "trainable_tokens": False,
        "about": "sftlab as configured, no trainable token row (same LoRA as trl-default)",
    },
    "sftlab-gc": {
        "kind": "sftlab",
        "trainable_tokens": True,
        "training": {"gradient_checkpointing": True},
        "about": "sftlab + gradient checkpointing (recompute activations, as trl-default does)",
    },
    "sftlab-no-tt-gc": {
        "kind": "sftlab",
        "trainable_tokens": False,
        "training": {"gradient_checkpointing": True},
        "about": "sftlab-no-tt + gradient checkpointing: memory like for like with trl-default",
    },
    # The recipe's three speed settings, each undone on its own (configs/default.yaml adopted them on
    # 2026-12-02), and all three together: the recipe as it was before.
    "sftlab-unfused": {
        "kind": "sftlab",
        "trainable_tokens": True,
        "training": {"loss_chunk_size": None},
        "about": "sftlab with the output layer over all labelled positions at once (no fused chunks)",
    },
    "sftlab-one-pass": {
        "kind": "sftlab",
        "trainable_tokens": True,
        "training": {"gradient_accumulation_steps": 1},
        "about": "sftlab with each step's conversations in one forward/backward pass (no gradient accumulation)",
    },
    "sftlab-dropout": {
        "kind": "sftlab",
        "trainable_tokens": True,
        "lora": {"lora_dropout": 0.05},
        # Dropout draws a random mask for the input of each of the 7 adapted projections in every layer
        # (aten::bernoulli_: 7% of a step in the 2026-12-02 profile, 10% under checkpointing, which draws
        # them again) and keeps the masked copies for backward. A regularizer, so not a speed setting at
        # equal training: configs/ablations.yaml's `no-dropout` variant measures what it changes.
        "about": "sftlab with LoRA dropout 0.05 (a random mask per adapted projection, kept for backward)",
    },
    "sftlab-2026-12-01": {
        "kind": "sftlab",
        "trainable_tokens": True,
        "training": {"loss_chunk_size": None, "gradient_accumulation_steps": 1},
        "lora": {"lora_dropout": 0.05},
        "about": "the recipe until 2026-12-01: unfused output layer, one pass per step, LoRA dropout 0.05",
    },
    # torch.compile of each decoder layer (inductor, dynamic shapes: the sequence length changes from
    # batch to batch). On a CPU inductor fuses the elementwise operators around the matrix products
    # (norms, rotary embedding, GELU, LoRA's additions) into generated C++; the products stay oneDNN's.
    # Not TrainingArguments' `torch_compile`: that compiles the model's forward, which sftlab's loss
    # bypasses (it calls the body and the output layer itself), so nothing would be compiled.
    "sftlab-compile": {
        "kind": "sftlab",
        "trainable_tokens": True,
        "compile_layers": True,
        "about": "sftlab + torch.compile (inductor, dynamic shapes) of each decoder layer",
    },
    # transformers' own selective checkpointing (`every_n_layers`, transformers >= 5.2x). TRL's
    # `gradient_checkpointing_kwargs={"selective": True}` (keep attention outputs) is not measured: with
    # transformers 5.24 the Trainer enables checkpointing through `activation_checkpointing_enable`,
    # which bypasses TRL's wrapper, and the key reaches torch's checkpoint as an error.
    "sftlab-gc-every-2": {
        "kind": "sftlab",
        "trainable_tokens": True,
        "training": {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"every_n_layers": 2}},
        "about": "sftlab + checkpointing every other decoder layer (half the recompute of sftlab-gc)",
    },
    # Frozen weights stored in bf16 once (LoRA weights, the trainable row and optimizer state stay
    # fp32: PEFT keeps adapter weights in fp32), instead of fp32 weights that autocast casts at every
    # product. Its first-batch loss is a bf16 forward, so it agrees with the others only to bf16 precision.
    "sftlab-bf16-weights": {
        "kind": "sftlab",
        "trainable_tokens": True,
        "dtype": "bfloat16",
        "training": {"bf16": False},
        "loss_tolerance": 0.05,
        "about": "sftlab with the frozen base weights held in bf16 (adapters fp32, no autocast)",
    },
    "sftlab-padding-free": {
        "kind": "sftlab",
        "trainable_tokens": True,
        "training": {"padding_free": True},
        "about": "sftlab + padding-free batches (the candidate for the default recipe)",
    },
    "sftlab-no-tt-grouped": {
        "kind": "sftlab",
        "trainable_tokens": False,
        "training": {"train_sampling_strategy": "group_by_length"},
        "about": "sftlab-no-tt + length-grouped batches",
    },
    "sftlab-no-tt-padding-free": {
        "kind": "sftlab",
        "trainable_tokens": False,
        "training": {"padding_free": True},
        "about": "sftlab-no-tt + padding-free batches",
    },
}

NOTES = [
    "trl-default trains no <end_of_turn> embedding row: TRL's fused output layer reads lm_head.bias, which "
    "PEFT's trainable-token wrapper does not expose. sftlab-no-tt is the like-for-like comparison; sftlab "
    "shows what the trainable row costs.",
    "On a CPU, trl-default runs with bf16=False: TRL's default bf16=True refuses to start on a CPU unless "
    "use_cpu=True is set too. On a GPU it keeps TRL's default (bf16 where supported).",
    "All variants read the same conversations in the same order (train_sampling_strategy='sequential'), "
    "except length-grouped ones, which reorder them: their timed steps can hold other conversations, so "
    "compare their tokens per second rather than their seconds per step.",
    "First-batch loss: mean cross-entropy over labelled tokens of the first batch_size conversations, as "
    "each variant's own pipeline tokenizes and collates them, in fp32 without autocast, before any update "
    "(LoRA starts as the identity, so every variant should give the base model's loss).",
    "Assistant tokens are the labelled tokens (reply text and its <end_of_turn>). Seconds per step run "
    "from one step's start to the next's: data collation, optimizer step and logging included.",
]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -----------------------------------------------------------------------------
# Pure helpers: summaries, ratios, tables, the JSON's shape


def summarize_steps(steps: list[dict], warmup: int) -> dict:
    """Timed summary of a training run's steps, the first `warmup` left out.

    >>> summarize_steps([{"seconds": 9, "assistant_tokens": 10, "tokens": 20, "positions": 40},
    ...                  {"seconds": 2, "assistant_tokens": 30, "tokens": 50, "positions": 60},
    ...                  {"seconds": 4, "assistant_tokens": 30, "tokens": 50, "positions": 60}], warmup=1)
    {'timed_steps': 2, 'seconds': 6.0, 'median_step_s': 3.0, 'assistant_tokens': 60, 'tokens': 100, \
'positions': 120, 'assistant_tokens_per_s': 10.0, 'tokens_per_s': 16.667, 'padding_fraction': 0.167}
    """
    timed = steps[warmup:]
    seconds = float(sum(s["seconds"] for s in timed))
    out = {
        "timed_steps": len(timed),
        "seconds": round(seconds, 3),
        "median_step_s": round(statistics.median(s["seconds"] for s in timed), 3) if timed else None,
    }
    for key in ("assistant_tokens", "tokens", "positions"):
        out[key] = int(sum(s[key] for s in timed))
    out["assistant_tokens_per_s"] = round(out["assistant_tokens"] / seconds, 3) if seconds > 0 else None
    out["tokens_per_s"] = round(out["tokens"] / seconds, 3) if seconds > 0 else None
    out["padding_fraction"] = round(1 - out["tokens"] / out["positions"], 3) if out["positions"] else None
    return out


def ratio(value, baseline) -> float | None:
    """value / baseline, or None when either is missing or the baseline is zero."""
    if value is None or baseline in (None, 0):
        return None
    return round(value / baseline, 3)


RATIO_KEYS = {  # JSON field -> how a variant's figure compares with the baseline's
    "assistant_tokens_per_s": "higher is better",
    "median_step_s": "lower is better",
    "peak_memory_bytes": "lower is better",
}


def training_ratios(variants: dict, baseline: str = BASELINE) -> dict:
    """Each successful variant's figures divided by the baseline's (see RATIO_KEYS)."""
    base = variants.get(baseline) or {}
    if "error" in base:
        return {}
    return {
        name: {key: ratio(v.get(key), base.get(key)) for key in RATIO_KEYS}
        for name, v in variants.items()
        if name != baseline and "error" not in v
    }


def format_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; numbers right-aligned, None shown as "-".

    >>> print(format_table(["a", "b"], [["x", 1.5], ["yy", None]]))
    | a  |   b |
    |----|-----|
    | x  | 1.5 |
    | yy |   - |
    """
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) for i in range(len(headers))]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        return "| " + " | ".join(v.rjust(w) if num else v.ljust(w)
                                 for v, w, num in zip(values, widths, numeric)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells])


def _gb(n_bytes) -> float | None:
    return None if n_bytes is None else round(n_bytes / 1e9, 2)


def _x(r) -> str | None:
    return None if r is None else f"x{r:.2f}"


def format_report(result: dict) -> str:
    """The human-readable summary printed at the end of a run."""
    lines = []
    s = result["settings"]
    hw = result["hardware"]
    lines.append(f"sftlab benchmark: {s['model']} on {result['device']} ({hw.get('gpu') or hw.get('processor')}), "
                 f"{s['conversations']} conversations <= {s['max_length']} tokens, batch {s['batch_size']}, "
                 f"{s['warmup_steps']} warm-up + {s['steps']} timed steps")
    tr = result["training"]
    variants, ratios = tr["variants"], tr["ratios"]
    rows = []
    for name, v in variants.items():
        if "error" in v:
            rows.append([name, "FAILED: " + v["error"].splitlines()[-1][:60]] + [None] * 7)
            continue
        r = ratios.get(name, {})
        rows.append([name, v["assistant_tokens_per_s"], v["median_step_s"], _gb(v["peak_memory_bytes"]),
                     v["first_batch_loss"], _x(r.get("assistant_tokens_per_s")), _x(r.get("median_step_s")),
                     _x(r.get("peak_memory_bytes")), v["padding_fraction"]])
    mem = "peak GPU GB" if result["device"] == "cuda" else "peak RSS GB"
    lines += ["", "Training (ratios: variant / " + BASELINE + ")",
              format_table(["variant", "assistant tok/s", "median step s", mem, "first-batch loss",
                            "tok/s ratio", "step ratio", "memory ratio", "padding"], rows)]
    diff = tr["first_batch_loss_max_abs_diff"]
    if diff is None:
        verdict = "-"
    elif diff <= LOSS_TOLERANCE:
        verdict = "agree"
    else:
        verdict = "DISAGREE: the variants do not train on the same tokens and labels"
    lines.append(f"first-batch loss: largest difference from {BASELINE} = {diff} "
                 f"(tolerance {LOSS_TOLERANCE}: {verdict})")
    base_loss = (variants.get(BASELINE) or {}).get("first_batch_loss")
    outside = set(loss_agreement(variants)[1])  # the verdicts, as main() decides them
    for name, v in variants.items():
        own = VARIANTS.get(name, {}).get("loss_tolerance")
        if own is not None and "first_batch_loss" in v and base_loss is not None:
            lines.append(f"  {name}: difference {abs(v['first_batch_loss'] - base_loss):.6f} (its own tolerance "
                         f"{own}: {'DISAGREE' if name in outside else 'agree'})")
    for name, v in variants.items():
        if "settings" in v:
            st = v["settings"]
            lines.append(f"  {name}: {v['about']}; bf16={st['bf16']}, gradient_checkpointing="
                         f"{st['gradient_checkpointing']}, padding_free={st['padding_free']}, "
                         f"order={st['train_sampling_strategy']}, "
                         f"trainable_token_indices={st['trainable_token_indices']}"
                         + "".join(f", {k}={st[k]}" for k in ("checkpoint_every_n_layers", "loss_chunk_size")
                                   if st.get(k) not in (None, 1))
                         + (f", weights={st['weights_dtype']}" if st.get("weights_dtype", "float32") != "float32"
                            else ""))
    for name, v in variants.items():
        prof = v.get("profile")
        if prof:
            rows = [[r["operator"][:60], r["self_s"], f"{100 * r['share']:.1f}%" if r["share"] is not None else None,
                     r["calls"]] for r in prof["top"]]
            lines += ["", f"Profile of {name}, step {prof['step']} ({prof['total_self_s']} s of operator self time)",
                      format_table(["operator", "self s", "share", "calls"], rows)]
    gen = result["generation"]
    if "error" in gen:
        lines += ["", "Generation FAILED: " + gen["error"].splitlines()[-1]]
    else:
        rows = [[f"batch {g['batch_size']}", g["generated_tokens"], g["seconds"], g["tokens_per_s"]]
                for g in gen["runs"]]
        lines += ["", f"Generation: {gen['prompts']} chat prompts, greedy, {gen['max_new_tokens']} new tokens at most",
                  format_table(["run", "generated tokens", "seconds", "tokens/s"], rows),
                  f"batched / one at a time: {_x(gen['speedup'])} tokens/s; identical replies: "
                  f"{gen['identical']}/{gen['prompts']}"]
    load = result["loading"]
    rows = [[k, load[k].get("seconds"), _x(load[k].get("ratio_to_cached")),
             "FAILED" if "error" in load[k] else load[k].get("note", "")] for k in ("first", "cached") if k in load]
    lines += ["", "Model loading", format_table(["load", "seconds", "first / cached", "note"], rows)]
    lines += ["", "Notes:"] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines)


REQUIRED = {
    "": ["schema_version", "created", "device", "settings", "hardware", "versions", "data", "training",
         "generation", "loading", "notes"],
    "settings": ["model", "data", "config", "conversations", "max_length", "batch_size", "warmup_steps", "steps",
                 "prompts", "generation_batch_size", "max_new_tokens", "first_load", "variants"],
    "training": ["variants", "ratios", "baseline", "first_batch_loss_max_abs_diff"],
    "variant": ["about", "settings", "steps", "assistant_tokens_per_s", "median_step_s", "peak_memory_bytes",
                "peak_memory_kind", "first_batch_loss", "padding_fraction", "load_s"],
}


def validate_result(result: dict) -> None:
    """Raise ValueError naming every missing key of the JSON written by a run."""
    missing = [k for k in REQUIRED[""] if k not in result]
    missing += [f"settings.{k}" for k in REQUIRED["settings"] if k not in result.get("settings", {})]
    training = result.get("training", {})
    missing += [f"training.{k}" for k in REQUIRED["training"] if k not in training]
    for name, v in training.get("variants", {}).items():
        if "error" not in v:
            missing += [f"training.variants.{name}.{k}" for k in REQUIRED["variant"] if k not in v]
    if missing:
        raise ValueError("benchmark result lacks: " + ", ".join(missing))


def loss_agreement(variants: dict) -> tuple[list[float], list[str]]:
    """First-batch losses against the baseline's: (differences of the fp32 variants, names of the
    variants outside their tolerance). A variant with its own `loss_tolerance` (bf16 weights) is
    checked against that and left out of the fp32 differences."""
    base_loss = (variants.get(BASELINE) or {}).get("first_batch_loss")
    diffs, outside = [], []
    if base_loss is None:
        return diffs, outside
    for name, v in variants.items():
        if "first_batch_loss" not in v:
            continue
        d = abs(v["first_batch_loss"] - base_loss)
        own = VARIANTS.get(name, {}).get("loss_tolerance")
        if own is None:
            diffs.append(d)
        if d > (LOSS_TOLERANCE if own is None else own):
            outside.append(name)
    return diffs, outside


# -----------------------------------------------------------------------------
# Machine description


def hardware() -> dict:
    import torch

    from sftlab import runinfo

    hw = runinfo.hardware()
    hw["cpu_bf16"] = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    try:
        hw["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        hw["memory_bytes"] = None
    if torch.cuda.is_available():
        hw["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    return hw


def _relative(path) -> str:
    """A path as the project sees it (configs/default.yaml), not the absolute path of this machine."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def versions() -> dict:
    from sftlab import runinfo

    return runinfo.versions()


def peak_memory() -> tuple[int, str]:
    """This process's peak memory: CUDA's max allocated on a GPU, else the peak RSS."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "ru_maxrss"  # bytes on macOS, KiB on Linux


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# -----------------------------------------------------------------------------
# Workers: each measurement runs in a fresh process (`--worker KIND --job FILE`)


def _quiet_libraries() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("sftlab").setLevel(logging.ERROR)
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def _load(job):
    from sftlab.chat import prepare_model, prepare_tokenizer
    from sftlab.sources import load_model

    start = time.perf_counter()
    model, tokenizer = load_model(job["model"], dtype=VARIANTS.get(job.get("variant"), {}).get("dtype", "float32"))
    fmt = prepare_tokenizer(tokenizer, job["template"])
    prepare_model(model, tokenizer, fmt)
    return model, tokenizer, fmt, time.perf_counter() - start


def _read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _timed_trainer(cls):
    """`cls` with per-step wall times and token counts recorded in `self.bench_steps`."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self, trainer):
            self.trainer = trainer

        def on_step_begin(self, args, state, control, **kwargs):
            _sync()
            self.trainer.bench_starts.append(time.perf_counter())
            # one optimizer step: its micro-batches (gradient accumulation) add their tokens here
            self.trainer.bench_counts.append({"assistant_tokens": 0, "tokens": 0, "positions": 0})

        def on_train_end(self, args, state, control, **kwargs):
            _sync()
            self.trainer.bench_starts.append(time.perf_counter())

    class Timed(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.bench_starts, self.bench_counts = [], []
            self.add_callback(StepClock(self))

        def training_step(self, model, inputs, *args, **kwargs):
            labels = inputs["labels"]
            tokens = inputs["attention_mask"].sum() if "attention_mask" in inputs else torch.tensor(labels.numel())
            step = self.bench_counts[-1]
            step["assistant_tokens"] += int((labels != -100).sum())
            step["tokens"] += int(tokens)
            step["positions"] += int(labels.numel())
            return super().training_step(model, inputs, *args, **kwargs)

        def bench_steps(self):
            seconds = [b - a for a, b in zip(self.bench_starts, self.bench_starts[1:])]
            return [{"seconds": round(s, 4), **c} for s, c in zip(seconds, self.bench_counts)]

    return Timed


def train_worker(job: dict) -> dict:
    """One training variant: first-batch loss, then warm-up + timed steps."""
    import torch

    from sftlab import train as T

    variant = VARIANTS[job["variant"]]
    s = job["settings"]
    model, tokenizer, fmt, load_s = _load(job)
    convs = _read_jsonl(job["conversations"])
    lora_cfg = {**job["lora"], **variant.get("lora", {})}
    if not variant["trainable_tokens"]:
        lora_cfg.pop("trainable_token_indices", None)
    lora = T.build_lora_config(lora_cfg, tokenizer, fmt)
    # Training steps only: no checkpoints and no held-out evaluation (the recipe's eval_strategy
    # would evaluate mid-run, with an eval set the benchmark does not build, and skew the timings).
    # `batch_size` conversations per optimizer step, in `gradient_accumulation_steps` micro-batches
    recipe_training = {**job["training"], **variant.get("training", {})}
    # trl-default keeps TRL's own step: the whole batch in one pass (the recipe's accumulation is sftlab's)
    accum = 1 if variant["kind"] == "trl" else int(recipe_training.get("gradient_accumulation_steps") or 1)
    if s["batch_size"] % accum:
        raise ValueError(f"{job['variant']}: batch size {s['batch_size']} does not split into {accum} micro-batches")
    run = {"per_device_train_batch_size": s["batch_size"] // accum, "max_steps": s["warmup_steps"] + s["steps"],
           "save_strategy": "no", "eval_strategy": "no", "report_to": "none", "disable_tqdm": True,
           "seed": job["seed"], "data_seed": job["seed"]}
    out_dir = Path(job["work_dir"]) / job["variant"]
    if variant["kind"] == "trl":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        dataset = Dataset.from_list([{"messages": c["messages"]} for c in convs])
        cpu_only = {} if torch.cuda.is_available() else {"bf16": False}
        args = SFTConfig(output_dir=str(out_dir), max_length=s["max_length"], assistant_only_loss=True,
                         train_sampling_strategy="sequential", **run, **cpu_only)
        trainer_cls = SFTTrainer
    else:
        dataset, skipped = T.encode_dataset(convs, tokenizer, max_length=s["max_length"], progress=False)
        if skipped:
            raise RuntimeError(f"encode_dataset skipped conversations that the selection kept: {dict(skipped)}")
        training = {**recipe_training, **run, "max_length": s["max_length"]}
        training.setdefault("train_sampling_strategy", "sequential")
        args = T.build_sft_config(training, out_dir, job["seed"])
        trainer_cls = T.sft_trainer_class()
    trainer = _timed_trainer(trainer_cls)(model=model, args=args, train_dataset=dataset,
                                          processing_class=tokenizer, peft_config=lora)
    if variant["kind"] == "sftlab" and not variant.get("peft_trainable_tokens"):
        T.fast_trainable_tokens(trainer.model)  # as sftlab.train.train_lora does
    if variant.get("compile_layers"):
        for layer in trainer.model.get_base_model().model.layers:
            layer.compile(dynamic=True)

    # The first batch's loss before any update, computed the same way for every variant.
    peft_model = trainer.model
    device = next(peft_model.parameters()).device
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(s["batch_size"])])
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    peft_model.eval()
    with torch.no_grad():
        first_loss = float(T.labelled_position_loss(peft_model, batch))
    log(f"{job['variant']}: first-batch loss {first_loss:.6f}; training {run['max_steps']} steps")

    profiler = step_profiler(s["warmup_steps"] + s["steps"]) if s.get("profile") else None
    if profiler is not None:
        trainer.args.max_steps += 1  # one more step, profiled, outside the timed ones
        trainer.add_callback(profiler)
    trainer.train()
    steps = trainer.bench_steps()
    if profiler is not None:
        steps = steps[:-1]
    peak, kind = peak_memory()
    return {
        "about": variant["about"],
        "settings": {
            "bf16": bool(args.bf16),
            "gradient_checkpointing": bool(args.gradient_checkpointing),
            "checkpoint_every_n_layers": ((args.gradient_checkpointing_kwargs or {}).get("every_n_layers", 1)
                                          if args.gradient_checkpointing else None),
            "loss_chunk_size": None if variant["kind"] == "trl" else T.loss_chunk_size(args),
            "weights_dtype": variant.get("dtype", "float32"),
            "padding_free": bool(getattr(args, "padding_free", False)),
            "train_sampling_strategy": args.train_sampling_strategy,
            "trainable_token_indices": list(lora.trainable_token_indices or []) or None,
            "lora_dropout": lora.lora_dropout,
            "gradient_accumulation_steps": int(args.gradient_accumulation_steps),
            "max_length": args.max_length,
            "trainer": type(trainer).__mro__[1].__name__,
            "loss": "TRL fused LM head" if variant["kind"] == "trl" else "sftlab labelled-position loss",
        },
        "load_s": round(load_s, 2),
        "first_batch_loss": round(first_loss, 6),
        "steps": steps,
        **summarize_steps(steps, s["warmup_steps"]),
        "peak_memory_bytes": peak,
        "peak_memory_kind": kind,
        **({"profile": profiler.result} if profiler is not None else {}),
    }


def top_operators(events, limit: int = PROFILE_ROWS) -> dict:
    """The operators with the most self time in a profiled step: name, seconds, share, calls.

    `events` are torch.profiler's key averages (anything with `key`, `self_cpu_time_total` in
    microseconds and `count`). Self time counts each operator once, without what it calls, so the
    shares add up to at most 1.
    """
    rows = sorted(((e.key, float(e.self_cpu_time_total), int(e.count)) for e in events), key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    top = [{"operator": name, "self_s": round(us / 1e6, 4), "share": round(us / total, 4) if total else None,
            "calls": calls} for name, us, calls in rows[:limit]]
    return {"total_self_s": round(total / 1e6, 4), "top": top}


def step_profiler(step: int):
    """Trainer callback: torch.profiler around the one optimizer step that starts after `step` steps;
    its `result` holds `top_operators` of that step once it has run."""
    import torch
    from transformers import TrainerCallback

    class StepProfiler(TrainerCallback):
        def __init__(self):
            self.prof, self.result = None, None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == step and self.prof is None:
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.prof.start()

        def on_step_end(self, args, state, control, **kwargs):
            if self.prof is not None and self.result is None:
                self.prof.stop()
                self.result = {"step": step + 1, **top_operators(self.prof.key_averages())}

    return StepProfiler()


def generate_worker(job: dict) -> dict:
    """Greedy replies to the same prompts, one at a time and batched."""
    import torch

    from sftlab.evaluate import chat_prompt_ids, generate_replies
    from sftlab.ifeval import load_prompts

    s = job["settings"]
    model, tokenizer, fmt, _ = _load(job)
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    records = load_prompts()[: s["prompts"]]
    prompts = [chat_prompt_ids(tokenizer, [{"role": "user", "content": r["prompt"]}]) for r in records]
    kw = dict(stop_ids=fmt.eos_token_ids, progress=False)
    generate_replies(model, tokenizer, prompts[:1], max_new_tokens=2, batch_size=1, **kw)  # warm-up
    runs, replies = [], {}
    for batch_size in (1, s["generation_batch_size"]):
        log(f"generating {len(prompts)} replies, batch size {batch_size}")
        _sync()
        start = time.perf_counter()
        out = generate_replies(model, tokenizer, prompts, max_new_tokens=s["max_new_tokens"],
                               batch_size=batch_size, **kw)
        _sync()
        seconds = time.perf_counter() - start
        generated = sum(r["n_tokens"] + int(r["stopped"]) for r in out)  # the stop token is generated too
        runs.append({"batch_size": batch_size, "generated_tokens": generated, "seconds": round(seconds, 3),
                     "tokens_per_s": round(generated / seconds, 3)})
        replies[batch_size] = out
    one, batched = replies[1], replies[s["generation_batch_size"]]
    same = [a["text"] == b["text"] for a, b in zip(one, batched)]
    return {
        "prompts": len(prompts),
        "prompt_ids": [r["id"] for r in records],
        "max_new_tokens": s["max_new_tokens"],
        "runs": runs,
        "speedup": ratio(runs[1]["tokens_per_s"], runs[0]["tokens_per_s"]),
        "identical": sum(same),
        "differing_prompt_ids": [r["id"] for r, ok in zip(records, same) if not ok],
        "stop_rate": round(sum(r["stopped"] for r in one) / len(one), 3),
    }


def load_worker(job: dict) -> dict:
    """How long `sftlab.sources.load_model` takes, with whatever SFTLAB_CACHE the parent set."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (imports are not load time)

    from sftlab.sources import load_model

    start = time.perf_counter()
    load_model(job["model"], dtype="float32")
    seconds = time.perf_counter() - start
    peak, kind = peak_memory()
    return {"seconds": round(seconds, 2), "peak_memory_bytes": peak, "peak_memory_kind": kind}


WORKERS = {"train": train_worker, "generate": generate_worker, "load": load_worker}


def run_worker(kind: str, job_path: Path) -> int:
    _quiet_libraries()
    job = json.loads(job_path.read_text())
    result = WORKERS[kind](job)
    Path(job["result"]).write_text(json.dumps(result, indent=2))
    return 0


def run_job(kind: str, job: dict, work: Path, name: str, env: dict | None = None) -> dict:
    """Run one worker in a fresh process; its result, or {"error": ...} if it failed.

    The worker's output goes to `work/NAME.log`; its "[bench]" lines are echoed as progress.
    """
    job = {**job, "result": str(work / f"{name}.result.json")}
    job_path = work / f"{name}.job.json"
    job_path.write_text(json.dumps(job, indent=2))
    log_path = work / f"{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--job", str(job_path)]
    start = time.perf_counter()
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **(env or {})})
        for line in proc.stdout:
            log_file.write(line)
            if line.startswith("[bench]"):
                sys.stderr.write("  " + line)
        proc.wait()
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not Path(job["result"]).exists():
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
        log(f"{name} failed (exit {proc.returncode}); last lines of its log:\n{tail}")
        return {"error": tail.strip() or f"exit status {proc.returncode}", "wall_s": round(wall, 1)}
    result = json.loads(Path(job["result"]).read_text())
    result["wall_s"] = round(wall, 1)
    return result


# -----------------------------------------------------------------------------
# The parent process: data selection, the runs, the report


def select_conversations(source: str, tokenizer, n: int, max_length: int,
                         english_only: bool) -> tuple[list[dict], dict]:
    """The first `n` conversations of `source` (file order) that pass the filters and fit `max_length`
    tokens with the chat template; and a summary of what was read and kept."""
    from sftlab.chat import encode_conversation
    from sftlab.data import filter_conversations, load_conversations

    limit = max(8 * n, 64)
    while True:
        loaded = load_conversations(source, limit=limit, progress=False)
        filtered = filter_conversations(loaded.conversations, tokenizer=tokenizer, english_only=english_only,
                                        min_turns=1, max_tokens=max_length)
        kept, tokens, assistant = [], 0, 0
        for conv in filtered.kept:
            enc = encode_conversation(tokenizer, conv["messages"])
            if len(enc["input_ids"]) <= max_length and any(enc["assistant_masks"]):
                kept.append({"id": str(conv["id"]), "messages": conv["messages"]})
                tokens += len(enc["input_ids"])
                assistant += sum(enc["assistant_masks"])
            if len(kept) == n:
                break
        exhausted = loaded.n_read < limit
        if len(kept) == n or exhausted:
            break
        limit *= 4
    if len(kept) < n:
        raise SystemExit(f"bench: {source} has only {len(kept)} usable conversations of at most {max_length} tokens; "
                         f"{n} needed (use --data or fewer conversations)")
    summary = {"source": source, "records_read": loaded.n_read, "conversations": len(kept),
               "ids": [c["id"] for c in kept], "tokens": tokens, "assistant_tokens": assistant}
    return kept, summary


def measure_loading(spec: str, first_load: bool, work: Path) -> dict:
    """Cached load (default cache) and, for offline specs, first load into an empty cache."""
    from sftlab.sources import cache_dir, resolve_spec

    source = resolve_spec(spec)
    job = {"model": spec}
    out = {}
    if source.kind == "offline":
        cached = cache_dir() / "models" / source.name
        if not cached.is_dir():
            log(f"building the default cache for {spec} first (untimed)")
            run_job("load", job, work, "load-build-cache")
        log("cached load")
        out["cached"] = {**run_job("load", job, work, "load-cached"), "note": f"from {cached}"}
        if first_load:
            fresh = Path(tempfile.mkdtemp(prefix="sftlab-cache-", dir=work))
            log("first load into an empty cache (dequantizes the GGUF)")
            out["first"] = {**run_job("load", job, work, "load-first", env={"SFTLAB_CACHE": str(fresh)}),
                            "note": "GGUF dequantized into an empty SFTLAB_CACHE"}
            shutil.rmtree(fresh, ignore_errors=True)
            out["first"]["ratio_to_cached"] = ratio(out["first"].get("seconds"), out["cached"].get("seconds"))
        else:
            out["first"] = {"seconds": None, "note": "skipped (--smoke or --no-first-load)"}
    else:
        out["cached"] = {**run_job("load", job, work, "load-cached"), "note": f"{source.kind} checkpoint"}
        out["first"] = {"seconds": None, "note": "not an offline spec: there is nothing to dequantize"}
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (8 conversations, 2 timed steps, 4 prompts, "
                   "no first-load measurement): checks that everything runs")
    p.add_argument("--steps", type=int, help="timed training steps (default 8; --smoke 2)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"JSON output (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="recipe whose model, lora and training sections sftlab's variants use")
    p.add_argument("--model", help="model spec (default: the config's model.base)")
    p.add_argument("--data", help="conversation source (default: the config's data.source)")
    p.add_argument("--conversations", type=int, help="number of conversations (default 64; --smoke 8)")
    p.add_argument("--variants", help=f"comma-separated training variants (default all: {','.join(VARIANTS)})")
    p.add_argument("--generation-batch-size", type=int,
                   help="batched generation size (default: the recipe's evaluation.batch_size)")
    p.add_argument("--no-first-load", action="store_true", help="skip the first-load (dequantize) measurement")
    p.add_argument("--profile", action="store_true",
                   help="after the timed steps, profile one more step of each variant with torch.profiler: "
                        "the operators that take the most time, printed and kept in the JSON")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_settings(args, config: dict) -> dict:
    settings = dict(SMOKE if args.smoke else FULL)
    if args.steps is not None:
        settings["steps"] = args.steps
    if args.conversations is not None:
        settings["conversations"] = args.conversations
    if args.no_first_load:
        settings["first_load"] = False
    settings["profile"] = bool(args.profile)
    if args.generation_batch_size is not None:
        settings["generation_batch_size"] = args.generation_batch_size
    if settings["generation_batch_size"] is None:
        settings["generation_batch_size"] = int((config.get("evaluation") or {}).get("batch_size") or 8)
    variants = list(dict.fromkeys(args.variants.split(","))) if args.variants else list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"bench: unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if BASELINE not in variants:
        variants.insert(0, BASELINE)
    model_cfg, data_cfg = config.get("model") or {}, config.get("data") or {}
    settings.update({
        "smoke": bool(args.smoke),
        "model": args.model or model_cfg.get("base", "offline:gemma-3-270m"),
        "template": model_cfg.get("template", "gemma"),
        "data": args.data or data_cfg.get("source", "sharegpt"),
        "english_only": bool(data_cfg.get("english_only", True)),
        "config": _relative(args.config),
        "seed": int(config.get("seed", 0)),
        "variants": variants,
    })
    return settings


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args.worker, args.job)

    import torch
    import yaml

    from sftlab.chat import prepare_tokenizer
    from sftlab.sources import load_tokenizer

    config = yaml.safe_load(args.config.read_text()) or {}
    settings = make_settings(args, config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    log(f"device {device}; model {settings['model']}; data {settings['data']}; "
        f"variants {', '.join(settings['variants'])}")

    with tempfile.TemporaryDirectory(prefix="sftlab-bench-") as tmp:
        work = Path(tmp)
        tokenizer = load_tokenizer(settings["model"])
        prepare_tokenizer(tokenizer, settings["template"])
        log(f"selecting {settings['conversations']} conversations from {settings['data']}")
        convs, data_summary = select_conversations(settings["data"], tokenizer, settings["conversations"],
                                                   settings["max_length"], settings["english_only"])
        conv_path = work / "conversations.jsonl"
        conv_path.write_text("".join(json.dumps(c) + "\n" for c in convs))
        common = {"model": settings["model"], "template": settings["template"], "settings": settings,
                  "seed": settings["seed"], "conversations": str(conv_path), "work_dir": str(work),
                  "lora": config.get("lora") or {}, "training": config.get("training") or {}}

        variants = {}
        for i, name in enumerate(settings["variants"], 1):
            log(f"training variant {name} ({i}/{len(settings['variants'])}): {VARIANTS[name]['about']}")
            v = run_job("train", {**common, "variant": name}, work, f"train-{name}")
            variants[name] = v
            if "error" not in v:
                log(f"  {name}: {v['assistant_tokens_per_s']} assistant tok/s, median step {v['median_step_s']} s, "
                    f"peak {_gb(v['peak_memory_bytes'])} GB ({v['wall_s']} s)")

        log("generation")
        generation = run_job("generate", common, work, "generate")
        log("model loading")
        loading = measure_loading(settings["model"], settings["first_load"], work)

    diffs, outside = loss_agreement(variants)
    result = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/bench.py"] + (argv or sys.argv[1:])),
        "device": device,
        "settings": settings,
        "hardware": hardware(),
        "versions": versions(),
        "python": platform.python_version(),
        "data": data_summary,
        "training": {
            "baseline": BASELINE,
            "variants": variants,
            "ratios": training_ratios(variants),
            "ratio_meaning": RATIO_KEYS,
            "first_batch_loss_max_abs_diff": round(max(diffs), 8) if diffs else None,
            "first_batch_loss_outside_tolerance": outside,
        },
        "generation": generation,
        "loading": loading,
        "notes": NOTES,
    }
    validate_result(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_report(result))
    log(f"wrote {args.out}")
    failed = [n for n, v in variants.items() if "error" in v] + (["generation"] if "error" in generation else [])
    if outside:
        failed.append("first-batch loss agreement (" + ", ".join(outside) + ")")
    if failed:
        log("FAILED: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
