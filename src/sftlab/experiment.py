"""`sftlab run CONFIG`: train LoRA on the base model, evaluate every system, write results/NAME/.

Everything the book shows comes from the files this writes:
  config.yaml         the recipe, as run
  run.json            versions, git commit, hardware, wall times, throughput, parameter counts
  data_report.json    what the data pipeline read, skipped, filtered and split
  train_log.jsonl     every logged training/eval step
  metrics.json        per-system metrics with 95% bootstrap intervals
  samples.jsonl       every prompt with every system's reply and stop flag
  lora_norms.jsonl    the LoRA update's norm per layer and module
  heldout_losses.json per-conversation held-out loss rows (plain_text_losses.json: per passage)
  adapter/            the LoRA adapter in standard PEFT format

Results are written to results/.work-NAME/, which is renamed to results/NAME/ at the
end, so a crash never leaves a half-written results/NAME/; `sftlab run CONFIG --resume`
continues an interrupted run from its finished stages and last training checkpoint.

`run_experiment` calls one function per stage, in order: `prepare`, `train`, `generate_base`,
`heldout_losses`, `generate_sft`, `generate_reference`, `score`, `write_samples`, `finish`;
each docstring names the files and the stage_*.json (in the work folder) it writes. With a
`preference:` section, `adopt_sft_run` (before `train`: start from a finished run's SFT adapter)
and `run_preference` (after `generate_sft`: sampling, pairs, DPO or RFT, a sixth system) add the
preference stage (sftlab.preference.stage, which lists its files).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import EVAL_DEFAULTS, config_hash, load_config, section
from .errors import ConfigError
from .evaluate import (
    adapter_disabled,
    assistant_nll,
    chat_prompt_ids,
    continuation_prompt_ids,
    generate_replies,
)
from .extra import extra_settings
from .modelcard import write_model_card
from .multiturn import load_probes
from .runinfo import git_commit, hardware, versions
from .plaintext import plain_text_windows
from .rescore import LOSSES_FILE, PLAIN_FILE, annotate_samples, prompt_text, rescore
from .scoring import score_losses, score_plain_losses, score_replies, write_json_atomic
from .train import last_checkpoint, lora_update_norms, truncate_log
from .workdir import _log, _process_state, _Stages, _work_dir, _write_jsonl

__all__ = ["EVAL_DEFAULTS", "RunContext", "lora_update_norms", "rescore", "run_experiment", "score_losses",
           "score_replies"]


@dataclass
class RunContext:
    """What the stages of one run share: the recipe, the work folder with its finished stages and
    timings, and what `prepare` read (tokenizer, chat format, encoded data, the two prompt sets)."""

    config: dict
    config_path: str | Path
    results_root: Path
    work: Path
    stages: _Stages
    timings: dict[str, float]
    progress: bool
    resume: bool
    started: float  # time.time() when the run began
    # False in the other processes under `accelerate launch`: they only train (see `train`).
    main_process: bool = True
    # Set by `prepare`:
    tokenizer: Any = None
    fmt: Any = None  # the base model's ChatFormat
    train_ds: Any = None
    eval_ds: Any = None
    heldout: list[dict] = field(default_factory=list)  # held-out conversations the systems reply to
    heldout_prompts: list[list[dict]] = field(default_factory=list)  # each up to its last user turn
    heldout_refs: list[str] = field(default_factory=list)  # each one's last reply
    if_records: list[dict] = field(default_factory=list)  # IFEval prompts and checks (none when off)
    if_prompts: list[list[dict]] = field(default_factory=list)
    mt_records: list[dict] = field(default_factory=list)  # multi-turn probes and checks (none when off)
    plain_ds: list[dict] = field(default_factory=list)  # plain-text passages (none when off)
    # Set by `heldout_losses`: per-passage plain-text loss rows by system (empty when off).
    plain_losses: dict = field(default_factory=dict)
    # For the preference stage (sftlab.preference; unused without a `preference:` section):
    prepared: Any = None  # what `prepare_data` returned (its training conversations, before the mix)
    sft_model: Any = None  # set by `generate_sft`: the SFT model, merged
    run_info: dict = field(default_factory=dict)  # more run.json entries ("preference")

    @property
    def eval_cfg(self) -> dict:
        return {**EVAL_DEFAULTS, **section(self.config, "evaluation")}


def run_experiment(
    config_path: str | Path,
    *,
    results_root: str | Path = "results",
    progress: bool = True,
    resume: bool = False,
    fresh: bool = False,
) -> Path | None:
    """Run a recipe end to end; returns the results folder.

    With `resume=True` an interrupted run of the same config continues: finished
    stages (base evaluation, training, later evaluations) are read back from
    `results/.work-NAME/`, and training restarts from its last checkpoint
    (`training.save_steps` sets how often one is written). Without it, an interrupted run of the
    same config is an error unless `fresh=True` discards it.

    Under `accelerate launch` (or torchrun) every process trains its share of each batch;
    the main process alone then evaluates, writes results/NAME/ and returns it, the others
    return None as soon as training ends (or at once, when resuming after training finished).
    """
    from transformers import set_seed

    t0 = time.time()
    config = load_config(config_path)
    extra_settings({**EVAL_DEFAULTS, **section(config, "evaluation")})  # bad extra-set keys fail before training
    name = config["name"]
    results_root = Path(results_root)
    results_root.mkdir(parents=True, exist_ok=True)
    # Under `accelerate launch` several processes run this; the main one prepares the work folder
    # while the others wait, and its refusal (a changed config on --resume) stops them all.
    state = _process_state()
    work = results_root / f".work-{name}"
    refused = None
    if state.is_main_process:
        try:
            _work_dir(results_root, name, config, resume, fresh)
        except ConfigError as exc:
            refused = exc
    state.wait_for_everyone()
    if refused is not None:
        raise refused
    stamp = work / "config_hash"
    if not (stamp.is_file() and stamp.read_text().strip() == config_hash(config)):
        raise ConfigError(f"the main process did not prepare {work} for this config; see its error")
    stages = _Stages(work)
    ctx = RunContext(config=config, config_path=config_path, results_root=results_root, work=work, stages=stages,
                     timings=stages.get("timings") or {}, progress=progress, resume=resume, started=t0,
                     main_process=state.is_main_process)
    try:
        from .preference.stage import adopt_sft_run, run_preference

        set_seed(int(config.get("seed", 0)))
        model = prepare(ctx)
        adopt_sft_run(ctx)  # with preference.sft_run: that run's SFT adapter and replies, no training here
        # Training comes first so that under `accelerate launch` every process trains together and
        # only the main process evaluates afterwards (no process waits at a barrier while another
        # generates). The base model is evaluated through the same object with the adapter disabled.
        peft_model, train_stats = train(ctx, model)
        if peft_model is None:
            return None  # another process: the main process evaluates and writes the results
        replies = generate_base(ctx, peft_model)
        losses = heldout_losses(ctx, peft_model)
        replies.update(generate_sft(ctx, peft_model))  # merges the adapter: the last use of peft_model
        del peft_model, model
        replies.update(run_preference(ctx, losses))  # with a `preference:` section: on the merged SFT model
        replies.update(generate_reference(ctx))
        score(ctx, replies, losses)
        write_samples(ctx, replies)
        final = finish(ctx, train_stats)
    except BaseException:
        where = "" if results_root == Path("results") else f" --results {results_root}"
        _log(f"run stopped; its work so far is in {work} ({results_root / name} untouched); "
             f"continue it with: sftlab run {config_path}{where} --resume", every_process=True)
        raise
    if ctx.eval_cfg["extra_sets"]:  # the run folder is complete; `sftlab evaluate-extra DIR` resumes this part
        from .extra import evaluate_extra

        _log(f"evaluating the extra sets {', '.join(ctx.eval_cfg['extra_sets'])} (sftlab.extra)")
        evaluate_extra(final, progress=progress)
    return final


def prepare(ctx: RunContext):
    """Load the base model and its chat format, prepare and encode the data, pick the prompt sets.

    Writes config.yaml and data_report.json (the main process; every process reads the
    model and data); times load_base_s and data_s. Fills the RunContext's tokenizer, fmt,
    datasets and prompts; returns the base model.
    """
    from accelerate import PartialState

    from . import ifeval as ifeval_mod
    from .chat import prepare_model, prepare_tokenizer
    from .data import prepare_data
    from .sources import load_model
    from .train import encode_dataset

    work, timings, model_cfg, progress = ctx.work, ctx.timings, section(ctx.config, "model"), ctx.progress
    seed = int(ctx.config.get("seed", 0))
    if ctx.main_process:
        (work / "config.yaml").write_text(yaml.safe_dump(ctx.config, sort_keys=False))

    _log(f"loading base model {model_cfg['base']}")
    t = time.time()
    # The main process first: an offline model's first load builds the cached checkpoint once.
    with PartialState().main_process_first():
        model, tokenizer = load_model(model_cfg["base"], dtype=model_cfg.get("dtype", "float32"))
    fmt = prepare_tokenizer(tokenizer, model_cfg.get("template", "gemma"),
                            allow_new_tokens=bool(model_cfg.get("allow_new_tokens", False)))
    prepare_model(model, tokenizer, fmt)
    timings["load_base_s"] = time.time() - t

    _log("preparing data")
    t = time.time()
    prepared = prepare_data(section(ctx.config, "data"), tokenizer, seed, progress=progress)
    max_length = (ctx.config.get("training") or {}).get("max_length", 1024)
    loss_on = section(ctx.config, "data").get("loss_on") or "replies"  # the held-out set always scores replies
    train_ds, train_skips = encode_dataset(list(prepared.train), tokenizer, max_length=max_length,
                                           progress=progress, loss_on=loss_on)
    eval_ds, eval_skips = encode_dataset(list(prepared.eval), tokenizer, max_length=max_length, progress=progress)
    report = dict(prepared.report)
    report["encoding_skipped"] = {"train": dict(train_skips), "eval": dict(eval_skips)}
    if ctx.main_process:
        (work / "data_report.json").write_text(json.dumps(report, indent=2, default=str))
    timings["data_s"] = time.time() - t
    kept_eval_ids = set(eval_ds["id"])
    heldout = [c for c in prepared.eval if str(c["id"]) in kept_eval_ids][: int(ctx.eval_cfg["heldout_size"])]

    ctx.tokenizer, ctx.fmt, ctx.train_ds, ctx.eval_ds, ctx.prepared = tokenizer, fmt, train_ds, eval_ds, prepared
    # Held-out prompts: each conversation up to its last user turn; the reference is the last reply.
    ctx.heldout = heldout
    ctx.heldout_prompts = [c["messages"][:-1] for c in heldout]
    ctx.heldout_refs = [c["messages"][-1]["content"] for c in heldout]
    ctx.if_records = ifeval_mod.load_prompts() if ctx.eval_cfg["ifeval"] else []
    ctx.if_prompts = [[{"role": "user", "content": r["prompt"]}] for r in ctx.if_records]
    ctx.mt_records = load_probes() if ctx.eval_cfg["multiturn"] else []
    n_plain = int(ctx.eval_cfg["plain_text"] or 0)
    ctx.plain_ds = plain_text_windows(tokenizer, n_plain) if n_plain else []
    return model


def train(ctx: RunContext, model):
    """Train LoRA (from the last checkpoint when resuming), or load the adapter a finished stage_train.json left.

    Writes train_log.jsonl, checkpoints/ (removed when done), adapter/ with chat_template.jinja,
    lora_norms.jsonl, stage_train.json; times train_s. Returns (peft_model, stats); (None, stats)
    in a process other than the main one, whose part ends with training (or before it, when a
    resumed run had finished training).
    """
    from .train import train_lora  # looked up at each run: tests replace it

    work, timings, tokenizer = ctx.work, ctx.timings, ctx.tokenizer
    train_stats = ctx.stages.get("train")
    if train_stats is not None and not ctx.main_process:
        return None, train_stats  # trained before the interruption: the main process evaluates
    if train_stats is None:
        _log("training LoRA")
        model.train()
        checkpoint = last_checkpoint(work / "checkpoints") if ctx.resume else None
        if checkpoint is not None:
            _log(f"continuing training from {checkpoint}")
            if ctx.main_process:  # the main process alone writes the log
                truncate_log(work / "train_log.jsonl", int(checkpoint.name.split("-")[-1]))
        peft_model, train_stats = train_lora(
            model, tokenizer, ctx.fmt, ctx.train_ds, ctx.eval_ds, ctx.config, work, work / "train_log.jsonl",
            resume_from_checkpoint=checkpoint,
        )
        if not ctx.main_process:
            return None, train_stats  # the main process evaluates and writes the results
        timings["train_s"] = train_stats["train_wall_s"]
        peft_model.save_pretrained(work / "adapter")
        # The chat template travels with the adapter; the 33 MB tokenizer does not (it is the base model's).
        (work / "adapter" / "chat_template.jinja").write_text(tokenizer.chat_template)
        _write_jsonl(work / "lora_norms.jsonl", lora_update_norms(peft_model))
        ctx.stages.put("train", train_stats)
        ctx.stages.put("timings", timings)
    else:
        from peft import PeftModel

        _log("training finished before the interruption; loading its adapter")
        peft_model = PeftModel.from_pretrained(model, work / "adapter")
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    peft_model.eval()
    return peft_model, train_stats


def generate_system(ctx: RunContext, label: str, mdl, tok, prompt_fn, stop_ids) -> dict:
    """Replies of one system to every prompt set (read back if a resumed run has them).

    Writes stage_replies_<label>.json and stage_timings.json; times generate_<label>_s."""
    done = ctx.stages.get(f"replies_{label}")
    if done is not None:
        return done
    eval_cfg = ctx.eval_cfg
    gen_kw = dict(max_new_tokens=int(eval_cfg["max_new_tokens"]), batch_size=int(eval_cfg["batch_size"]),
                  progress=ctx.progress)
    t = time.time()
    out = {
        "heldout": generate_replies(mdl, tok, [prompt_fn(tok, p) for p in ctx.heldout_prompts],
                                    stop_ids=stop_ids, desc=f"{label}: held-out", **gen_kw),
        "ifeval": generate_replies(mdl, tok, [prompt_fn(tok, p) for p in ctx.if_prompts],
                                   stop_ids=stop_ids, desc=f"{label}: ifeval", **gen_kw) if ctx.if_prompts else [],
        "multiturn": generate_replies(mdl, tok, [prompt_fn(tok, r["messages"]) for r in ctx.mt_records],
                                      stop_ids=stop_ids, desc=f"{label}: multi-turn", **gen_kw)
        if ctx.mt_records else [],
    }
    ctx.timings[f"generate_{label}_s"] = time.time() - t
    ctx.stages.put(f"replies_{label}", out)
    ctx.stages.put("timings", ctx.timings)
    return out


def heldout_loss(ctx: RunContext, label: str, mdl, *, plain: bool = False) -> dict:
    """Assistant-token loss of `mdl` on the held-out set, or with `plain` its loss on the plain-text
    passages (read back if a resumed run has it).

    Writes stage_loss_<label>.json (stage_plain_<label>.json); times loss_<label>_s (plain_<label>_s)."""
    key = f"{'plain' if plain else 'loss'}_{label}"
    done = ctx.stages.get(key)
    if done is None:
        t = time.time()
        if plain:
            per_conv, mean = assistant_nll(mdl, ctx.plain_ds, progress=ctx.progress)
        else:
            eot = ctx.tokenizer.convert_tokens_to_ids(ctx.fmt.end_of_turn)  # the loss is split at this token
            per_conv, mean = assistant_nll(mdl, ctx.eval_ds, max_batches=ctx.eval_cfg["loss_batches"],
                                           progress=ctx.progress, eot_id=eot)
        done = {"per_conversation": per_conv, "mean_nll": mean}
        ctx.timings[f"{key}_s"] = time.time() - t
        ctx.stages.put(key, done)
    return done


def generate_base(ctx: RunContext, peft_model) -> dict:
    """The base model's replies (adapter disabled) as plain continuation and with the chat template,
    each when in evaluation.systems: stage_replies_base_continuation.json, stage_replies_base_chat.json."""
    replies = {}
    with adapter_disabled(peft_model):
        if "base_continuation" in ctx.eval_cfg["systems"]:
            _log("evaluating base model as plain continuation")
            replies["base_continuation"] = generate_system(
                ctx, "base_continuation", peft_model, ctx.tokenizer, continuation_prompt_ids, ctx.fmt.eos_token_ids)
        if "base_chat" in ctx.eval_cfg["systems"]:
            _log("evaluating base model with the chat template")
            replies["base_chat"] = generate_system(
                ctx, "base_chat", peft_model, ctx.tokenizer, chat_prompt_ids, ctx.fmt.eos_token_ids)
    return replies


def heldout_losses(ctx: RunContext, peft_model) -> dict:
    """Held-out loss of the base model (adapter disabled) and of the SFT model, always both; with
    evaluation.plain_text, both models' plain-text loss too (into ctx.plain_losses).

    Writes stage_loss_base_chat.json and stage_loss_sft.json (stage_plain_*.json)."""
    with adapter_disabled(peft_model):
        losses = {"base_chat": heldout_loss(ctx, "base_chat", peft_model)}
        if ctx.plain_ds:
            ctx.plain_losses["base_chat"] = heldout_loss(ctx, "base_chat", peft_model, plain=True)
    _log("evaluating the LoRA SFT model")
    losses["sft"] = heldout_loss(ctx, "sft", peft_model)
    if ctx.plain_ds:
        ctx.plain_losses["sft"] = heldout_loss(ctx, "sft", peft_model, plain=True)
    return losses


def generate_sft(ctx: RunContext, peft_model) -> dict:
    """The SFT model's replies, from the adapter merged into the base weights (`peft_model` is spent
    afterwards): with the chat template ("sft") and reading the prompt as plain text, as the base
    model does in "base_continuation" ("sft_continuation": what the template does for the trained
    model), each when in evaluation.systems. Writes stage_replies_sft.json, stage_replies_sft_continuation.json."""
    wanted = [s for s in ("sft", "sft_continuation") if s in ctx.eval_cfg["systems"]]
    if not wanted and ctx.config.get("preference") is None:
        return {}
    # Merged weights generate at base-model speed; unmerged LoRA and the trainable-token
    # wrapper on the 262k-row output layer add work at every decoding step.
    merged = peft_model.merge_and_unload()
    merged.eval()
    ctx.sft_model = merged  # the preference stage starts from it
    prompt_fns = {"sft": chat_prompt_ids, "sft_continuation": continuation_prompt_ids}
    if "sft_continuation" in wanted:
        _log("evaluating the LoRA SFT model as plain continuation")
    return {s: generate_system(ctx, s, merged, ctx.tokenizer, prompt_fns[s], ctx.fmt.eos_token_ids) for s in wanted}


def generate_reference(ctx: RunContext) -> dict:
    """The reference model's replies (when in evaluation.systems and model.reference is set),
    with its own chat format. Writes stage_replies_reference.json."""
    from .chat import prepare_model, prepare_tokenizer
    from .sources import load_model

    model_cfg = section(ctx.config, "model")
    if not ("reference" in ctx.eval_cfg["systems"] and model_cfg.get("reference")):
        return {}
    _log(f"evaluating reference model {model_cfg['reference']}")
    ref_model, ref_tok = load_model(model_cfg["reference"], dtype=model_cfg.get("dtype", "float32"))
    ref_fmt = prepare_tokenizer(ref_tok, model_cfg.get("reference_template", "native"))
    prepare_model(ref_model, ref_tok, ref_fmt)
    ref_model.eval()
    return {"reference": generate_system(ctx, "reference", ref_model, ref_tok, chat_prompt_ids,
                                         ref_fmt.eos_token_ids)}


def score(ctx: RunContext, replies: dict, losses: dict) -> None:
    """Score every system's replies and held-out loss, with the paired comparisons between systems
    (see sftlab.scoring). Writes metrics.json and heldout_losses.json (the per-conversation loss
    rows, so `sftlab rescore` can redo the loss statistics without the model); times score_s."""
    _log("scoring")
    t = time.time()
    eval_cfg, seed = ctx.eval_cfg, int(ctx.config.get("seed", 0))
    n_boot = int(eval_cfg["bootstrap_resamples"])
    reply_scores = score_replies(replies, ctx.heldout_refs, ctx.if_records, mt_records=ctx.mt_records,
                                 heldout_prompts=[prompt_text(p) for p in ctx.heldout_prompts],
                                 embeddings=bool(eval_cfg["embedding_similarity"]), n_resamples=n_boot, seed=seed)
    loss_scores = score_losses(losses, n_resamples=n_boot, seed=seed)
    metrics = {"systems": reply_scores["systems"], "heldout_loss": loss_scores["heldout_loss"],
               "comparisons": reply_scores["comparisons"] + loss_scores["comparisons"]}
    if ctx.plain_losses:
        plain = {s: loss["per_conversation"] for s, loss in ctx.plain_losses.items()}
        plain_scores = score_plain_losses(plain, n_resamples=n_boot, seed=seed)
        metrics["plain_text_loss"] = plain_scores["plain_text_loss"]
        metrics["comparisons"] += plain_scores["comparisons"]
        write_json_atomic(ctx.work / PLAIN_FILE, plain)
    (ctx.work / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_json_atomic(ctx.work / LOSSES_FILE, {s: loss["per_conversation"] for s, loss in losses.items()})
    ctx.timings["score_s"] = time.time() - t


def write_samples(ctx: RunContext, replies: dict) -> None:
    """Write samples.jsonl: every prompt with its reference, IFEval checks and every system's reply,
    each reply with its category and (IFEval) which checks it passed."""
    samples = []
    for i, (conv, ref) in enumerate(zip(ctx.heldout, ctx.heldout_refs)):
        samples.append({"set": "heldout", "id": conv["id"], "prompt": conv["messages"][:-1], "reference": ref,
                        "replies": {s: replies[s]["heldout"][i] for s in replies}})
    for i, rec in enumerate(ctx.if_records):
        row = {"set": "ifeval", "id": rec["id"], "prompt": [{"role": "user", "content": rec["prompt"]}],
               "reference": None, "checks": rec["checks"], "replies": {}}
        for s in replies:
            r = dict(replies[s]["ifeval"][i])
            row["replies"][s] = r
        samples.append(row)
    for i, probe in enumerate(ctx.mt_records):
        samples.append({"set": "multiturn", "id": probe["id"], "prompt": probe["messages"], "reference": None,
                        "checks": probe["checks"], "replies": {s: dict(replies[s]["multiturn"][i]) for s in replies}})
    _write_jsonl(ctx.work / "samples.jsonl", annotate_samples(samples))  # + categories and IFEval checks


def finish(ctx: RunContext, train_stats: dict) -> Path:
    """Write run.json, delete the stage_*.json files and config_hash, and rename results/.work-NAME/
    to results/NAME/ (replacing an older one). Returns results/NAME/."""
    config, work, fmt = ctx.config, ctx.work, ctx.fmt
    name = config["name"]
    run = {
        "name": name,
        "config_hash": config_hash(config),
        "config_path": str(ctx.config_path),
        "git_commit": git_commit(),
        "versions": versions(),
        "hardware": hardware(),
        "timings_s": {k: round(v, 1) for k, v in ctx.timings.items()},
        "wall_s": round(time.time() - ctx.started, 1),
        "resumed": bool(ctx.resume),
        "training": train_stats,
        "chat_format": {"template": fmt.template, "end_of_turn": fmt.end_of_turn,
                        "eos_token_ids": fmt.eos_token_ids, "pad_token_id": fmt.pad_token_id},
        **ctx.run_info,
    }
    (work / "run.json").write_text(json.dumps(run, indent=2))
    if (work / "adapter" / "adapter_config.json").is_file():
        write_model_card(work)  # adapter/README.md from this run, and the base model as its Hub id
    for leftover in [*work.glob("stage_*.json"), work / "config_hash"]:
        leftover.unlink()
    results_root = ctx.results_root
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
