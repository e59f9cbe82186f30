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

Results are written to results/.work-NAME/, which is renamed to results/NAME/ at the
end, so a crash never leaves a half-written results/NAME/; `sftlab run CONFIG --resume`
continues an interrupted run from its finished stages and last training checkpoint.
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

import yaml

from .config import config_hash, load_config, section
from .errors import ConfigError
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


def _cpu_model() -> str:
    """The CPU's model name (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall back to what platform knows
    return platform.processor() or platform.machine()


def _hardware() -> dict:
    import torch

    hw = {"platform": platform.platform(), "processor": _cpu_model(), "cpu_count": os.cpu_count()}
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


def _write_json_atomic(path: Path, value, indent: int | None = None) -> None:
    """Write JSON through a temporary file renamed into place: a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=indent))
    tmp.replace(path)


def _work_dir(results_root: Path, name: str, config: dict, resume: bool) -> Path:
    """The run's working folder: fresh, or the interrupted one when resuming the same config."""
    work = results_root / f".work-{name}"
    stamp = work / "config_hash"
    if resume and work.exists():
        if not stamp.exists() or stamp.read_text().strip() != config_hash(config):
            raise ConfigError(
                f"cannot resume: {work} was started with a different config; run again without --resume"
            )
        _log(f"resuming from {work}")
        return work
    if resume:
        _log(f"nothing to resume in {work}; starting afresh")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stamp.write_text(config_hash(config))
    return work


class _Stages:
    """Finished stages of a run, saved as JSON in the work folder so `--resume` skips them."""

    def __init__(self, work: Path):
        self.work = work

    def get(self, name: str):
        path = self.work / f"stage_{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def put(self, name: str, value) -> None:
        _write_json_atomic(self.work / f"stage_{name}.json", value)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows after `step`: training repeats them when it resumes from that checkpoint."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))


def _last_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) if folder.exists() else []
    return found[-1] if found else None


def score_systems(
    replies: dict, heldout_refs: list[str], if_records: list[dict], *, embeddings: bool, n_resamples: int, seed: int
) -> dict:
    """The reply metrics of every system: {system: {"heldout": {...}, "ifeval": {...}}}.

    `replies[system]` holds "heldout" and "ifeval" lists of {"text", "stopped"}, aligned
    with `heldout_refs` and `if_records`. Used by a run and by `rescore`.
    """
    from . import ifeval as ifeval_mod
    from . import metrics as M

    out = {}
    for label, rep in replies.items():
        if len(rep["heldout"]) != len(heldout_refs):
            raise ValueError(f"{label}: {len(rep['heldout'])} held-out replies for {len(heldout_refs)} references")
        records = [{"reply": r["text"], "reference": ref, "stopped": r["stopped"]}
                   for r, ref in zip(rep["heldout"], heldout_refs)]
        entry = {"heldout": M.summarize(records, embeddings=embeddings, n_resamples=n_resamples, seed=seed)}
        if if_records:
            entry["ifeval"] = ifeval_mod.ifeval_accuracy(if_records, [r["text"] for r in rep["ifeval"]],
                                                         n_resamples=n_resamples, seed=seed)
            entry["ifeval"]["stop_rate"] = M.stop_rate([r["stopped"] for r in rep["ifeval"]])
        out[label] = entry
    return out


def score_losses(losses: dict, *, n_resamples: int, seed: int) -> dict:
    """Held-out assistant-token loss per system, pooled over tokens, with a bootstrap CI over conversations."""
    from . import metrics as M

    out = {}
    for label, loss in losses.items():
        rows = [[s, n] for s, n in loss["per_conversation"] if n > 0]
        lo, hi = M.bootstrap_ci(rows, stat=M.pooled_ratio, n_resamples=n_resamples, seed=seed)
        out[label] = {
            "mean_nll": loss["mean_nll"], "ci": [lo, hi],
            "perplexity": M.perplexity(loss["mean_nll"]), "n_conversations": len(rows),
            "n_tokens": int(sum(n for _, n in rows)),
        }
    return out


RESULT_FILES = ("config.yaml", "samples.jsonl", "metrics.json", "run.json")


def rescore(results_dir: str | Path) -> dict:
    """Recompute the reply metrics of a finished run from its samples.jsonl; no model is loaded.

    For a change to a metric (e.g. a better role-leak rule): the replies, stop flags,
    references and IFEval checks are all in samples.jsonl. The held-out loss needs the
    model and is kept as it is. metrics.json is replaced atomically and run.json gains a
    "rescored" entry (when, at which commit, which values changed). Returns that entry.
    """
    folder = Path(results_dir)
    missing = [f for f in RESULT_FILES if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"{folder} is not a finished run folder: missing {', '.join(missing)}")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    eval_cfg = {**EVAL_DEFAULTS, **(config.get("evaluation") or {})}
    old = json.loads((folder / "metrics.json").read_text())
    replies: dict = {s: {"heldout": [], "ifeval": []} for s in old["systems"]}
    heldout_refs, if_records = [], []
    with open(folder / "samples.jsonl", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            row = _sample_row(line, lineno, set(replies))
            if row["set"] == "heldout":
                heldout_refs.append(row["reference"])
            else:
                if_records.append({"id": row["id"], "prompt": row["prompt"][-1]["content"], "checks": row["checks"]})
            for s, r in row["replies"].items():
                replies[s][row["set"]].append({"text": r["text"], "stopped": r["stopped"]})
    systems = score_systems(replies, heldout_refs, if_records, embeddings=bool(eval_cfg["embedding_similarity"]),
                            n_resamples=int(eval_cfg["bootstrap_resamples"]), seed=int(config.get("seed", 0)))

    def value(tree, s, part, key):
        item = tree.get(s, {}).get(part, {}).get(key)
        return item.get("value") if isinstance(item, dict) else None

    changed = {
        f"{s}.{part}.{key}": [value(old["systems"], s, part, key), value(systems, s, part, key)]
        for s, parts in systems.items() for part, new in parts.items() for key in new
        if value(systems, s, part, key) is not None
        and value(old["systems"], s, part, key) != value(systems, s, part, key)
    }
    _write_json_atomic(folder / "metrics.json", {**old, "systems": systems}, indent=2)
    run = json.loads((folder / "run.json").read_text())
    entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_commit": _git_commit(),
             "changed": changed}
    run.setdefault("rescored", []).append(entry)
    _write_json_atomic(folder / "run.json", run, indent=2)
    return entry


# Keys `rescore` reads from each samples.jsonl row, by prompt set, and from each reply.
_SAMPLE_KEYS = {"heldout": ("id", "replies", "reference"), "ifeval": ("id", "replies", "prompt", "checks")}
_REPLY_KEYS = ("text", "stopped")


def _sample_row(line: str, lineno: int, systems: set) -> dict:
    """One samples.jsonl row, checked; a bad row raises ConfigError naming its line, id and the key."""
    where = f"samples.jsonl line {lineno}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc.msg})") from None
    where += f" ({row.get('id')})"
    if row.get("set") not in _SAMPLE_KEYS:
        raise ConfigError(f"{where}: unknown set {row.get('set')!r}; expected one of {sorted(_SAMPLE_KEYS)}")
    missing = [k for k in _SAMPLE_KEYS[row["set"]] if k not in row]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    if set(row["replies"]) != systems:
        raise ConfigError(f"{where}: systems {sorted(row['replies'])} differ from metrics.json's {sorted(systems)}")
    for s, r in row["replies"].items():
        missing = [k for k in _REPLY_KEYS if k not in r]
        if missing:
            raise ConfigError(f"{where}: reply of {s} has no {', '.join(missing)}")
    return row


def run_experiment(
    config_path: str | Path,
    *,
    results_root: str | Path = "results",
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Run a recipe end to end; returns the results folder.

    With `resume=True` an interrupted run of the same config continues: finished
    stages (base evaluation, training, later evaluations) are read back from
    `results/.work-NAME/`, and training restarts from its last checkpoint
    (`training.save_steps` sets how often one is written).
    """
    from accelerate import PartialState
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
    # Under `accelerate launch` several processes run this; one prepares the work folder.
    state = PartialState()
    if state.is_main_process:
        _work_dir(results_root, name, config, resume)
    state.wait_for_everyone()
    work = results_root / f".work-{name}"
    stages = _Stages(work)
    timings: dict[str, float] = stages.get("timings") or {}
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
        kept_eval_ids = set(eval_ds["id"])
        heldout = [c for c in prepared.eval if str(c["id"]) in kept_eval_ids][: int(eval_cfg["heldout_size"])]

        # Held-out prompts: each conversation up to its last user turn; the reference is the last reply.
        heldout_prompts = [c["messages"][:-1] for c in heldout]
        heldout_refs = [c["messages"][-1]["content"] for c in heldout]
        if_records = ifeval_mod.load_prompts() if eval_cfg["ifeval"] else []
        if_prompts = [[{"role": "user", "content": r["prompt"]}] for r in if_records]
        gen_kw = dict(max_new_tokens=int(eval_cfg["max_new_tokens"]), batch_size=int(eval_cfg["batch_size"]),
                      progress=progress)
        systems = list(eval_cfg["systems"])

        def evaluate_system(label, mdl, tok, prompt_fn, stop_ids):
            """Replies of one system to both prompt sets (read back if a resumed run has them)."""
            done = stages.get(f"replies_{label}")
            if done is not None:
                return done
            t = time.time()
            out = {
                "heldout": generate_replies(mdl, tok, [prompt_fn(tok, p) for p in heldout_prompts],
                                            stop_ids=stop_ids, desc=f"{label}: held-out", **gen_kw),
                "ifeval": generate_replies(mdl, tok, [prompt_fn(tok, p) for p in if_prompts],
                                           stop_ids=stop_ids, desc=f"{label}: ifeval", **gen_kw) if if_prompts else [],
            }
            timings[f"generate_{label}_s"] = time.time() - t
            stages.put(f"replies_{label}", out)
            stages.put("timings", timings)
            return out

        def heldout_loss(label, mdl):
            done = stages.get(f"loss_{label}")
            if done is None:
                t = time.time()
                per_conv, mean = assistant_nll(mdl, eval_ds, max_batches=eval_cfg["loss_batches"], progress=progress)
                done = {"per_conversation": per_conv, "mean_nll": mean}
                timings[f"loss_{label}_s"] = time.time() - t
                stages.put(f"loss_{label}", done)
            return done

        replies: dict[str, dict] = {}
        losses: dict[str, dict] = {}

        # Training comes first so that under `accelerate launch` every process trains together and
        # only the main process evaluates afterwards (no process waits at a barrier while another
        # generates). The base model is evaluated through the same object with the adapter disabled.
        train_stats = stages.get("train")
        if train_stats is None:
            _log("training LoRA")
            model.train()
            checkpoint = _last_checkpoint(work / "checkpoints") if resume else None
            if checkpoint is not None:
                _log(f"continuing training from {checkpoint}")
                _truncate_log(work / "train_log.jsonl", int(checkpoint.name.split("-")[-1]))
            peft_model, train_stats = train_lora(
                model, tokenizer, fmt, train_ds, eval_ds, config, work, work / "train_log.jsonl",
                resume_from_checkpoint=checkpoint,
            )
            if not state.is_main_process:
                return work  # the main process evaluates and writes the results
            timings["train_s"] = train_stats["train_wall_s"]
            peft_model.save_pretrained(work / "adapter")
            # The chat template travels with the adapter; the 33 MB tokenizer does not (it is the base model's).
            (work / "adapter" / "chat_template.jinja").write_text(tokenizer.chat_template)
            _write_jsonl(work / "lora_norms.jsonl", lora_update_norms(peft_model))
            stages.put("train", train_stats)
            stages.put("timings", timings)
        else:
            from peft import PeftModel

            _log("training finished before the interruption; loading its adapter")
            peft_model = PeftModel.from_pretrained(model, work / "adapter")
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
        peft_model.eval()

        with adapter_disabled(peft_model):
            if "base_continuation" in systems:
                _log("evaluating base model as plain continuation")
                replies["base_continuation"] = evaluate_system(
                    "base_continuation", peft_model, tokenizer, continuation_prompt_ids, fmt.eos_token_ids)
            if "base_chat" in systems:
                _log("evaluating base model with the chat template")
                replies["base_chat"] = evaluate_system(
                    "base_chat", peft_model, tokenizer, chat_prompt_ids, fmt.eos_token_ids)
            losses["base_chat"] = heldout_loss("base_chat", peft_model)

        _log("evaluating the LoRA SFT model")
        losses["sft"] = heldout_loss("sft", peft_model)
        if "sft" in systems:
            # Merged weights generate at base-model speed; unmerged LoRA and the trainable-token
            # wrapper on the 262k-row output layer add work at every decoding step.
            merged = peft_model.merge_and_unload()
            merged.eval()
            replies["sft"] = evaluate_system("sft", merged, tokenizer, chat_prompt_ids, fmt.eos_token_ids)
            del merged
        del peft_model, model

        if "reference" in systems and model_cfg.get("reference"):
            _log(f"evaluating reference model {model_cfg['reference']}")
            ref_model, ref_tok = load_model(model_cfg["reference"], dtype=model_cfg.get("dtype", "float32"))
            ref_fmt = prepare_tokenizer(ref_tok, model_cfg.get("reference_template", "native"))
            prepare_model(ref_model, ref_tok, ref_fmt)
            ref_model.eval()
            replies["reference"] = evaluate_system("reference", ref_model, ref_tok, chat_prompt_ids,
                                                   ref_fmt.eos_token_ids)
            del ref_model

        _log("scoring")
        t = time.time()
        n_boot = int(eval_cfg["bootstrap_resamples"])
        metrics = {
            "systems": score_systems(replies, heldout_refs, if_records, embeddings=bool(eval_cfg["embedding_similarity"]),
                                     n_resamples=n_boot, seed=seed),
            "heldout_loss": score_losses(losses, n_resamples=n_boot, seed=seed),
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
            "resumed": bool(resume),
            "training": train_stats,
            "chat_format": {"template": fmt.template, "end_of_turn": fmt.end_of_turn,
                            "eos_token_ids": fmt.eos_token_ids, "pad_token_id": fmt.pad_token_id},
        }
        (work / "run.json").write_text(json.dumps(run, indent=2))
        for leftover in [*work.glob("stage_*.json"), work / "config_hash"]:
            leftover.unlink()
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
        _log(f"run stopped; its work so far is in {work} (results/{name} untouched); "
             f"continue it with: sftlab run {config_path} --resume")
        raise
