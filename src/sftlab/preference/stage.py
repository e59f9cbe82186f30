"""The preference stage inside `sftlab run`, after `train`: named sub-stages, each resumable.

`adopt_sft_run` (before `train`): with `preference.sft_run`, the run starts from that finished
run's SFT adapter instead of training one: its recipe must equal this one in seed, model, data,
lora and training; its adapter, training log and LoRA norms are copied into the work folder
(stage_train.json then says training is done), and its replies are reused for every system it
evaluated on the same prompts with the same decoding (same held-out, IFEval and multi-turn
prompts, checked one by one; same token limit and batch size), so the SFT model and the new
one answer the same prompts. Without `sft_run` the run trains SFT itself first.

`run_preference` (after `generate_sft`, on the merged SFT model):
  pref_prompts   the prompt pool (`sftlab.preference.prompts`)            stage_pref_prompts.json
  pref_samples   k samples per prompt, in blocks (a killed run resumes at the next block)
                                                                          stage_pref_samples.json
  pref_pairs     judged samples and pairs: pairs_report.json, pairs.jsonl, preference_samples.jsonl
  pref_train     DPO or RFT, a new LoRA over the merged SFT model, from its last checkpoint when
                 resuming: preference_adapter/, preference_train_log.jsonl, stage_pref_train.json
  then the new system "preference" (that adapter merged) answers the evaluation prompts
  (stage_replies_preference.json) and its held-out and plain-text losses are measured.
The result is a PEFT adapter over the merged SFT model (`load_preference_model`), which
`sftlab chat` loads; run.json's "preference" entry records what was done, counts and times.
"""

from __future__ import annotations

import json
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
                               "timings_s": run.get("timings_s"), "reused_replies": reused})
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
    systems = [s for s in ctx.eval_cfg["systems"] if all(s in r["replies"] for r in rows)]
    for s in systems:
        if ctx.stages.get(f"replies_{s}") is None:
            ctx.stages.put(f"replies_{s}", {name: [{k: r["replies"][s][k] for k in ("text", "stopped", "n_tokens")
                                                    if k in r["replies"][s]} for r in by_set[name]]
                                            for name in by_set})
    return systems


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

    state = ctx.stages.get("pref_samples") or {"blocks": {}, "seconds": 0.0}
    k = int(cfg["samples"])
    per_block = max(1, int(cfg["batch_size"]) // k)
    blocks = [prompts[i: i + per_block] for i in range(0, len(prompts), per_block)]
    todo = [b for b in range(len(blocks)) if str(b) not in state["blocks"]]
    if todo:
        _log(f"sampling {k} replies to each of {len(prompts)} prompts ({len(todo)} of {len(blocks)} blocks to go)")
    for b in tqdm(todo, desc="preference: sampling", disable=not ctx.progress, initial=len(blocks) - len(todo),
                  total=len(blocks)):
        t = time.time()
        ids = [chat_prompt_ids(ctx.tokenizer, p["messages"]) for p in blocks[b] for _ in range(k)]
        out = generate_replies(model, ctx.tokenizer, ids, stop_ids=ctx.fmt.eos_token_ids,
                               max_new_tokens=int(cfg["max_new_tokens"]), batch_size=int(cfg["batch_size"]),
                               sampling={"temperature": float(cfg["temperature"]),
                                         "seed": int(cfg["seed"]) * SAMPLE_SEED_STRIDE + b}, progress=False)
        state["blocks"][str(b)] = [out[i * k: (i + 1) * k] for i in range(len(blocks[b]))]
        state["seconds"] += time.time() - t
        ctx.stages.put("pref_samples", state)
    ctx.timings["pref_sample_s"] = state["seconds"]
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
        "model_form": f"a LoRA adapter ({ADAPTER}/) over the SFT model merged into the base (adapter/ merged); "
                      "sftlab.preference.stage.load_preference_model and `sftlab chat` load it",
        "stage_s": round(stage_s, 1), "training": stats,
        "prompts": report["prompts"], "pairs": report["pairs"], "rft": report["rft"], "dropped": report["dropped"],
        "settings": report["settings"]}
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
