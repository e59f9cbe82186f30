"""The preference stage inside `sftlab run`, after `train`: named sub-stages, each resumable.

`adopt_sft_run` (before `train`): with `preference.sft_run`, the run starts from that finished
run's SFT adapter instead of training one: its recipe must equal this one in seed, model, data,
lora and training; its adapter, training log and LoRA norms are copied into the work folder
(stage_train.json then says training is done), and its replies are reused for every system it
evaluated on the same prompts with the same decoding (same held-out, IFEval and multi-turn
prompts, checked one by one; same token limit and batch size), so the SFT model and the new
one answer the same prompts; its per-conversation held-out losses of base_chat and sft are reused
too (heldout_losses.json). Without `sft_run` the run trains SFT itself first.

`run_preference` (after `generate_sft`, on the merged SFT model):
  pref_prompts   the prompt pool (`sftlab.preference.prompts`)            stage_pref_prompts.json
  pref_samples   k samples per prompt, in blocks (a killed run resumes at the next block)
                                                                          stage_pref_samples.json
  pref_pairs     judged samples and pairs: pairs_report.json, pairs.jsonl, preference_samples.jsonl
  pref_train     DPO or RFT, a new LoRA over the merged SFT model, from its last checkpoint when
                 resuming: preference_adapter/, preference_train_log.jsonl, stage_pref_train.json
  With `preference.samples_from` (another finished preference run, same sampling settings), the
  first three come from that run's files instead, so two methods train on the same pairs.
  then the new system "preference" (that adapter merged) answers the evaluation prompts
  (stage_replies_preference.json) and its held-out and plain-text losses are measured.
The result is a PEFT adapter over the merged SFT model (`load_preference_model`), which
`sftlab chat` loads; run.json's "preference" entry records what was done, counts and times.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import yaml

from sftlab.config import EVAL_DEFAULTS
from sftlab.errors import ConfigError, DataError
from sftlab.evaluate import chat_prompt_ids, generate_replies
from sftlab.experiment import generate_system, heldout_loss
from sftlab.train import last_checkpoint, truncate_log
from sftlab.workdir import _log, _write_jsonl

from .pairs import build_pairs
from .prompts import build_prompt_pool, evaluation_texts
from .recipe import settings
from .trainers import pair_dataset, train_dpo, train_rft

SFT_SECTIONS = ("seed", "model", "data", "lora", "training")  # what decides the SFT model
SAME_DECODING = ("heldout_size", "ifeval", "multiturn", "max_new_tokens", "batch_size")
ADAPTER = "preference_adapter"
TRAIN_LOG = "preference_train_log.jsonl"
SYSTEM = "preference"
SAMPLE_SEED_STRIDE = 100_003  # block b of a run with seed s is sampled under torch seed s * stride + b


def _single_process(ctx) -> None:
    from accelerate import PartialState

    if PartialState().num_processes > 1:
        raise ConfigError("the preference stage runs in one process: start the run without accelerate launch")


def adopt_sft_run(ctx) -> None:
    """With `preference.sft_run`, start from that run's SFT adapter and reuse its replies (see the
    module docstring); a no-op without it, or when a resumed run has adopted it already."""
    cfg = settings(ctx.config)
    if cfg is None:
        return
    _single_process(ctx)
    if cfg["sft_run"] is None or ctx.stages.get("sft_run") is not None:
        return
    src = Path(cfg["sft_run"])
    missing = [f for f in ("config.yaml", "run.json", "samples.jsonl", "adapter/adapter_config.json")
               if not (src / f).is_file()]
    if missing:
        raise ConfigError(f"preference.sft_run: {src} is not a finished run folder (missing {', '.join(missing)})")
    theirs = yaml.safe_load((src / "config.yaml").read_text())
    differ = [k for k in SFT_SECTIONS if theirs.get(k) != ctx.config.get(k)]
    if differ:
        raise ConfigError(f"preference.sft_run: {src} trained its SFT model with another recipe (differs in "
                          f"{', '.join(differ)}); copy those sections from {src / 'config.yaml'} or drop sft_run")
    _log(f"starting from the SFT adapter of {src}")
    shutil.rmtree(ctx.work / "adapter", ignore_errors=True)
    shutil.copytree(src / "adapter", ctx.work / "adapter")
    for name in ("train_log.jsonl", "lora_norms.jsonl"):
        if (src / name).is_file():
            shutil.copyfile(src / name, ctx.work / name)
    run = json.loads((src / "run.json").read_text())
    reused = _reuse_replies(ctx, src, theirs)
    ctx.stages.put("sft_run", {"path": str(src), "config_hash": run.get("config_hash"),
                               "git_commit": run.get("git_commit"), "cpu_kind": run.get("hardware", {}).get("cpu_kind"),
                               "timings_s": run.get("timings_s"), "reused_replies": reused,
                               "reused_losses": _reuse_losses(ctx, src, theirs)})
    ctx.stages.put("train", run["training"])  # last: training counts as done only once everything is copied


def _reuse_replies(ctx, src: Path, theirs: dict) -> list[str]:
    """Put `src`'s replies in this run's stage files for every system both evaluate, when the prompts
    and the decoding are the same; returns the systems reused ([] when something differs)."""
    their_eval = {**EVAL_DEFAULTS, **(theirs.get("evaluation") or {})}
    changed = [k for k in SAME_DECODING if their_eval[k] != ctx.eval_cfg[k]]
    if changed:
        _log(f"not reusing {src}'s replies: evaluation differs in {', '.join(changed)}")
        return []
    rows = [json.loads(line) for line in (src / "samples.jsonl").read_text().splitlines() if line.strip()]
    by_set = {s: [r for r in rows if r["set"] == s] for s in ("heldout", "ifeval", "multiturn")}
    ours = {"heldout": [(c["id"], c["messages"][:-1]) for c in ctx.heldout],
            "ifeval": [(r["id"], [{"role": "user", "content": r["prompt"]}]) for r in ctx.if_records],
            "multiturn": [(r["id"], r["messages"]) for r in ctx.mt_records]}
    for name, prompts in ours.items():
        if [(r["id"], r["prompt"]) for r in by_set[name]] != prompts:
            _log(f"not reusing {src}'s replies: its {name} prompts differ from this run's")
            return []
    # only the three sets reused here: `sftlab evaluate-extra` adds rows (decoding, qa, ...) that
    # hold fewer systems, and must not make the base systems look missing
    reused_rows = [r for name in ours for r in by_set[name]]
    systems = [s for s in ctx.eval_cfg["systems"] if all(s in r["replies"] for r in reused_rows)]
    for s in systems:
        if ctx.stages.get(f"replies_{s}") is None:
            ctx.stages.put(f"replies_{s}", {name: [{k: r["replies"][s][k] for k in ("text", "stopped", "n_tokens")
                                                    if k in r["replies"][s]} for r in by_set[name]]
                                            for name in by_set})
    return systems


def _reuse_losses(ctx, src: Path, theirs: dict) -> list[str]:
    """Put `src`'s per-conversation held-out loss rows (heldout_losses.json) in this run's stage files
    for base_chat and sft: the same adapter on the same held-out set (same data and loss_batches)."""
    their_eval = {**EVAL_DEFAULTS, **(theirs.get("evaluation") or {})}
    path = src / "heldout_losses.json"
    if their_eval["loss_batches"] != ctx.eval_cfg["loss_batches"] or not path.is_file():
        return []
    rows = json.loads(path.read_text())
    reused = []
    for system in ("base_chat", "sft"):
        if system in rows and ctx.stages.get(f"loss_{system}") is None:
            tokens = sum(r[1] for r in rows[system])
            ctx.stages.put(f"loss_{system}", {"per_conversation": rows[system],
                                              "mean_nll": sum(r[0] for r in rows[system]) / tokens if tokens else None})
            reused.append(system)
    return reused


def training_conversations(prepared) -> list[dict]:
    """The split's training conversations as drawn, before instruction examples replaced some
    (an example keeps its conversation's id plus "+if"); added examples (long replies) left out."""
    from sftlab.data.instructions import ID_SUFFIX

    by_id = {c["id"]: c for c in prepared.filtered.kept}
    ids = [i[: -len(ID_SUFFIX)] if i.endswith(ID_SUFFIX) else i for i in prepared.train["id"]]
    return [by_id[i] for i in ids if i in by_id]


def _prompt_pool(ctx, cfg) -> tuple[list[dict], dict]:
    from sftlab.ifeval import load_prompts
    from sftlab.multiturn import load_probes

    done = ctx.stages.get("pref_prompts")
    if done is not None:
        return done["prompts"], done["report"]
    convs = training_conversations(ctx.prepared)
    # every evaluation prompt the project has, whether or not this run scores it
    exclude = evaluation_texts(ctx.heldout_prompts, [*ctx.if_records, *load_prompts()],
                               [*ctx.mt_records, *load_probes()])
    prompts, report = build_prompt_pool(convs, n_instruction=cfg["prompts"], n_plain=cfg["plain_prompts"],
                                        seed=cfg["seed"], types=cfg["types"], exclude=exclude)
    if not prompts:
        raise DataError(f"the preference prompt pool is empty: asked for {report['asked']} from "
                        f"{len(convs)} training conversations; skipped {report['skipped'] or 'none'}, "
                        f"excluded {report['excluded'] or 'none'} (raise preference.prompts or plain_prompts)")
    ctx.stages.put("pref_prompts", {"prompts": prompts, "report": report})
    return prompts, report


def _samples(ctx, cfg, prompts: list[dict], model) -> dict[str, list[dict]]:
    """k sampled replies per prompt, a block of prompts at a time, each block saved when done."""
    from tqdm.auto import tqdm

    state = ctx.stages.get("pref_samples") or {"blocks": {}, "seconds": 0.0, "cpu_seconds": 0.0}
    k = int(cfg["samples"])
    per_block = max(1, int(cfg["batch_size"]) // k)
    blocks = [prompts[i: i + per_block] for i in range(0, len(prompts), per_block)]
    todo = [b for b in range(len(blocks)) if str(b) not in state["blocks"]]
    if todo:
        _log(f"sampling {k} replies to each of {len(prompts)} prompts ({len(todo)} of {len(blocks)} blocks to go)")
    for b in tqdm(todo, desc="preference: sampling", disable=not ctx.progress, initial=len(blocks) - len(todo),
                  total=len(blocks)):
        t, cpu = time.time(), time.process_time()
        ids = [chat_prompt_ids(ctx.tokenizer, p["messages"]) for p in blocks[b] for _ in range(k)]
        out = generate_replies(model, ctx.tokenizer, ids, stop_ids=ctx.fmt.eos_token_ids,
                               max_new_tokens=int(cfg["max_new_tokens"]), batch_size=int(cfg["batch_size"]),
                               sampling={"temperature": float(cfg["temperature"]),
                                         "seed": int(cfg["seed"]) * SAMPLE_SEED_STRIDE + b}, progress=False)
        state["blocks"][str(b)] = [out[i * k: (i + 1) * k] for i in range(len(blocks[b]))]
        state["seconds"] += time.time() - t
        state["cpu_seconds"] = state.get("cpu_seconds", 0.0) + time.process_time() - cpu
        ctx.stages.put("pref_samples", state)
    ctx.timings["pref_sample_s"] = state["seconds"]
    ctx.timings["pref_sample_cpu_s"] = state.get("cpu_seconds", 0.0)
    return {p["id"]: state["blocks"][str(b)][i] for b, block in enumerate(blocks) for i, p in enumerate(block)}


def _pairs(ctx, cfg, prompts, pool_report, samples) -> list[dict]:
    """Judge the samples and select the pairs; write pairs_report.json, pairs.jsonl, preference_samples.jsonl."""
    done = ctx.stages.get("pref_pairs")
    if done is not None:
        return done["selections"]
    t = time.time()
    selections, verdicts, report = build_pairs(prompts, samples, seed=cfg["seed"], allow_repair=cfg["repair"])
    keys = ("method", "sft_run", "samples", "temperature", "max_new_tokens", "repair", "seed")
    report = {"settings": {k: cfg[k] for k in keys}, "pool": pool_report, **report}
    (ctx.work / "pairs_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    _write_jsonl(ctx.work / "pairs.jsonl", [
        {"id": p["id"], "kind": p["kind"], "type": p["type"], "prompt": p["messages"], "checks": p["checks"],
         **{k: s[k] for k in ("chosen", "chosen_kind", "rejected", "rejected_stopped", "dropped")}}
        for p, s in zip(prompts, selections)])
    _write_jsonl(ctx.work / "preference_samples.jsonl", [
        {"id": p["id"], "kind": p["kind"], "type": p["type"], "checks": p["checks"],
         "samples": [{**s, **v} for s, v in zip(samples.get(p["id"], []), judged)]}
        for p, judged in zip(prompts, verdicts)])
    n_pairs, n_chosen = report["pairs"]["n"], report["rft"]["n"]
    if (n_pairs if cfg["method"] == "dpo" else n_chosen) == 0:
        what = "no chosen/rejected pair" if cfg["method"] == "dpo" else "no chosen reply"
        raise DataError(f"the preference stage found {what} in {len(prompts)} prompts x {cfg['samples']} samples "
                        f"(no prompt kept: {report['dropped']}); see {ctx.work / 'pairs_report.json'}")
    ctx.timings["pref_pairs_s"] = time.time() - t
    ctx.stages.put("pref_pairs", {"selections": selections})
    ctx.stages.put("timings", ctx.timings)
    return selections


SHARED_FILES = ("pairs_report.json", "pairs.jsonl", "preference_samples.jsonl")
SAMPLING_KEYS = ("sft_run", "prompts", "plain_prompts", "types", "samples", "temperature", "max_new_tokens",
                 "batch_size", "repair", "seed")


def _adopt_samples(ctx, cfg) -> tuple[list[dict], list[dict]]:
    """With `preference.samples_from`: that finished preference run's prompts, samples and pairs (its
    pairs_report.json, pairs.jsonl and preference_samples.jsonl, copied), so that two methods train
    on the same data. Its sampling settings must be this recipe's."""
    from .recipe import settings as read_settings

    src = Path(cfg["samples_from"])
    missing = [f for f in (*SHARED_FILES, "config.yaml") if not (src / f).is_file()]
    if missing:
        raise ConfigError(f"preference.samples_from: {src} is not a finished preference run (missing "
                          f"{', '.join(missing)})")
    theirs = read_settings(yaml.safe_load((src / "config.yaml").read_text())) or {}
    differ = [k for k in SAMPLING_KEYS if theirs.get(k) != cfg[k]]
    if differ:
        raise ConfigError(f"preference.samples_from: {src} sampled with other settings ({', '.join(differ)} "
                          "differ); use the same preference settings but method, or drop samples_from")
    for name in SHARED_FILES:
        if not (ctx.work / name).is_file():
            shutil.copyfile(src / name, ctx.work / name)
    rows = [json.loads(line) for line in (ctx.work / "pairs.jsonl").read_text().splitlines() if line.strip()]
    prompts = [{"id": r["id"], "kind": r["kind"], "type": r["type"], "messages": r["prompt"], "checks": r["checks"]}
               for r in rows]
    keys = ("id", "kind", "type", "chosen", "chosen_kind", "rejected", "rejected_stopped", "dropped")
    return prompts, [{k: r[k] for k in keys} for r in rows]


def _train(ctx, cfg, prompts, selections, model):
    """DPO or RFT on the selections (from the last checkpoint when resuming); returns (merged model, stats)."""
    from peft import PeftModel

    work, folder, log = ctx.work, ctx.work / "preference", ctx.work / TRAIN_LOG
    stats = ctx.stages.get("pref_train")
    if stats is None:
        checkpoint = last_checkpoint(folder / "checkpoints") if ctx.resume else None
        if checkpoint is not None:
            _log(f"continuing preference training from {checkpoint}")
            truncate_log(log, int(checkpoint.name.split("-")[-1]))
        elif log.exists():
            log.unlink()
        by_id = {p["id"]: p for p in prompts}
        max_length = cfg["training"].get("max_length", 1024)
        common = dict(seed=int(cfg["seed"]), work_dir=folder, log_path=log, resume_from_checkpoint=checkpoint)
        model.train()
        cpu = time.process_time()
        if cfg["method"] == "dpo":
            _log("training the preference adapter with DPO")
            pairs = [s for s in selections if s["chosen"] is not None and s["rejected"] is not None]
            dataset, skipped = pair_dataset(ctx.tokenizer, ctx.fmt.end_of_turn_id, pairs, by_id, max_length=max_length)
            peft_model, stats = train_dpo(model, ctx.tokenizer, ctx.fmt, dataset, cfg["lora"], cfg["training"], **common)
            stats["skipped"] = dict(skipped)
        else:
            _log("training the preference adapter on the chosen replies (rejection sampling)")
            convs = [{"id": s["id"], "messages": [*by_id[s["id"]]["messages"],
                                                  {"role": "assistant", "content": s["chosen"]}]}
                     for s in selections if s["chosen"] is not None]
            peft_model, stats = train_rft(model, ctx.tokenizer, ctx.fmt, convs, cfg["lora"], cfg["training"],
                                          max_length=max_length, **common)
        peft_model.save_pretrained(work / ADAPTER)
        _describe_adapter(work / ADAPTER, ctx.config)
        ctx.timings["pref_train_s"] = stats["train_wall_s"]
        ctx.timings["pref_train_cpu_s"] = time.process_time() - cpu  # this process's CPU time (all threads)
        ctx.stages.put("pref_train", stats)
        ctx.stages.put("timings", ctx.timings)
    else:
        _log("preference training finished before the interruption; loading its adapter")
        peft_model = PeftModel.from_pretrained(model, work / ADAPTER)
    shutil.rmtree(folder, ignore_errors=True)
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged, stats


def _describe_adapter(folder: Path, config: dict) -> None:
    """The adapter's own base is the run's SFT model merged, not a published model: say so, with no machine path."""
    cfg_path = folder / "adapter_config.json"
    adapter_cfg = json.loads(cfg_path.read_text())
    base = (config.get("model") or {}).get("base")
    adapter_cfg["base_model_name_or_path"] = f"{base} + ../adapter (merged)"
    cfg_path.write_text(json.dumps(adapter_cfg, indent=2))
    (folder / "README.md").write_text(
        f"# Preference adapter\n\nA LoRA adapter trained by sftlab's preference stage on top of the run's SFT model: "
        f"the base model `{base}` with the SFT adapter in `../adapter` merged into it. To use it, load the base, merge "
        "`../adapter`, then load and merge this adapter (`sftlab.preference.stage.load_preference_model`, or "
        "`sftlab chat` on the run folder).\n")


def run_preference(ctx, losses: dict) -> dict:
    """The whole stage (see the module docstring) on `ctx.sft_model`, the merged SFT model, which it
    changes (the new adapter is merged into it). Adds the held-out (and plain-text) loss of the new
    system to `losses` (`ctx.plain_losses`); returns its replies, {"preference": ...}; {} when off."""
    cfg = settings(ctx.config)
    if cfg is None:
        return {}
    model = ctx.sft_model
    if cfg["samples_from"] is not None:
        prompts, selections = _adopt_samples(ctx, cfg)
    else:
        prompts, pool_report = _prompt_pool(ctx, cfg)
        samples = _samples(ctx, cfg, prompts, model)
        selections = _pairs(ctx, cfg, prompts, pool_report, samples)
    tuned, stats = _train(ctx, cfg, prompts, selections, model)
    ctx.sft_model = None  # merged with the preference adapter now
    _log("evaluating the preference model")
    replies = {SYSTEM: generate_system(ctx, SYSTEM, tuned, ctx.tokenizer, chat_prompt_ids, ctx.fmt.eos_token_ids)}
    losses[SYSTEM] = heldout_loss(ctx, SYSTEM, tuned)
    if ctx.plain_ds:
        ctx.plain_losses[SYSTEM] = heldout_loss(ctx, SYSTEM, tuned, plain=True)
    report = json.loads((ctx.work / "pairs_report.json").read_text())
    stage_s = sum(ctx.timings.get(k, 0.0) for k in ("pref_sample_s", "pref_pairs_s", "pref_train_s"))
    ctx.run_info["preference"] = {
        "method": cfg["method"], "system": SYSTEM, "sft_run": ctx.stages.get("sft_run"),
        "samples_from": cfg["samples_from"],
        "model_form": f"a LoRA adapter ({ADAPTER}/) over the SFT model merged into the base (adapter/ merged); "
                      "sftlab.preference.stage.load_preference_model and `sftlab chat` load it",
        "stage_s": round(stage_s, 1), "training": stats,
        "prompts": report["prompts"], "pairs": report["pairs"], "rft": report["rft"], "dropped": report["dropped"],
        "settings": report["settings"],
        # The CPU may be shared with other work: the wall times are read beside the load average and
        # this process's own CPU time (pref_*_cpu_s in timings_s, all threads: about twice the wall
        # time of a 2-core machine to itself)
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    return replies


def load_preference_model(model, folder: str | Path):
    """`model` (the run's SFT model, merged) with the run's preference adapter merged in; `model`
    itself when the run has none. A ConfigError names an adapter that does not fit."""
    from peft import PeftModel

    adapter = Path(folder) / ADAPTER
    if not (adapter / "adapter_config.json").is_file():
        return model
    try:
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as err:  # size mismatch, unknown modules
        raise ConfigError(f"the preference adapter in {adapter} does not fit the run's SFT model: "
                          f"{str(err).splitlines()[0][:300]}") from err
    merged.eval()
    return merged
