"""`sftlab evaluate-extra DIR [--sets ...]`: response accuracy and robustness sets on a finished run.

A finished run (results/NAME/) already holds every system's replies to its held-out, IFEval-style
and multi-turn prompts. This command adds, from the run's own base model, merged adapter and
reference model (`EXTRA_SETS`):

  qa               the questions with checkable answers (`sftlab.qa`), every system plus the base
                   model's few-shot plain-text answers ("base_fewshot"), QA_MAX_NEW_TOKENS new tokens
  ood              IFEval-style prompts of untrained instruction types (`sftlab.ood`), every system
  decoding         sft and reference on a subset of the held-out and IFEval-style prompts under other
                   decoding settings: a token limit twice the recipe's, and sampling at a temperature
                   with three seeds (`decoding_jobs`)
  judge            a pairwise judge model on the run's replies (`sftlab.judge`), when one is configured
  official_ifeval  google/IFEval with the official checkers (`sftlab.official_ifeval`), with the Hub
  plain_text       forgetting: the base and the merged SFT model's loss on the same passages of plain
                   prose (`sftlab.plaintext`; `evaluation.plain_text` passages, else PLAIN_TEXT_PASSAGES),
                   into metrics.json's plain_text_loss and a paired SFT-minus-base comparison, as a run
                   with `evaluation.plain_text` writes them (chapter 5's sweep measures every run so)

The new replies go into samples.jsonl as rows of new `set` values, the scores into new sections
of metrics.json (the run's own keys and rows are left as they are), and the timings, hardware and
CPU kind into run.json under "extra_evaluation" (one entry per set). Each set is done once: a set
already in metrics.json is skipped unless `force`. Replies are kept per system in
results/.work-NAME-extra/ while the command runs, so an interrupted one continues where it stopped.
`sftlab run` calls this at the end of a run for `evaluation.extra_sets` (default qa and ood), so a
new run has them without its recipe, or its hash, naming them.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from pathlib import Path

import yaml

from .config import EVAL_DEFAULTS
from .errors import ConfigError
from .evaluate import chat_prompt_ids, continuation_prompt_ids, generate_replies
from .extra_scores import GREEDY, score_decoding, score_ood, score_qa
from .qa import QA_MAX_NEW_TOKENS, fewshot_answer, fewshot_prompt, load_questions
from .rescore import _write_jsonl_atomic
from .runinfo import git_commit, hardware, versions
from .scoring import write_json_atomic
from .workdir import _log, _Stages

EXTRA_SETS = ("qa", "ood", "decoding", "judge", "official_ifeval", "plain_text")
SECTION = {"plain_text": "plain_text_loss"}  # the metrics.json key of a set, where it is not the set's name
PLAIN_TEXT_PASSAGES = 40  # the ablation sweep's evaluation.plain_text, so the numbers compare
DECODING_DEFAULTS = {"heldout": 30, "ifeval": 60, "temperature": 0.7, "seeds": [1, 2, 3], "long_max_new_tokens": 400}
FAMILY = {"base_continuation": "base", "base_chat": "base", "base_fewshot": "base", "sft": "sft",
          "sft_continuation": "sft", "reference": "reference"}
CONTINUATION = ("base_continuation", "sft_continuation")


def extra_settings(eval_cfg: dict) -> dict:
    """The extra-evaluation keys of a recipe's `evaluation` section, checked: a bad value is a
    ConfigError naming the key."""
    sets = eval_cfg.get("extra_sets", EVAL_DEFAULTS.get("extra_sets", ["qa", "ood"]))
    if not isinstance(sets, list) or any(s not in EXTRA_SETS for s in sets):
        raise ConfigError(f"evaluation.extra_sets: expected a list of {', '.join(EXTRA_SETS)}, got {sets!r}")
    qa_tokens = eval_cfg.get("qa_max_new_tokens", QA_MAX_NEW_TOKENS)
    if not isinstance(qa_tokens, int) or isinstance(qa_tokens, bool) or qa_tokens < 1:
        raise ConfigError(f"evaluation.qa_max_new_tokens: expected a positive integer, got {qa_tokens!r}")
    decoding = {**DECODING_DEFAULTS, **(eval_cfg.get("decoding") or {})}
    unknown = set(decoding) - set(DECODING_DEFAULTS)
    if unknown:
        raise ConfigError(f"evaluation.decoding: unknown keys {sorted(unknown)}; valid: {', '.join(DECODING_DEFAULTS)}")
    for key in ("heldout", "ifeval", "long_max_new_tokens"):
        if not isinstance(decoding[key], int) or isinstance(decoding[key], bool) or decoding[key] < 0:
            raise ConfigError(f"evaluation.decoding.{key}: expected an integer >= 0, got {decoding[key]!r}")
    if not isinstance(decoding["temperature"], (int, float)) or not decoding["temperature"] > 0:
        raise ConfigError(f"evaluation.decoding.temperature: expected a number > 0, got {decoding['temperature']!r}")
    seeds = decoding["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"evaluation.decoding.seeds: expected a non-empty list of integers, got {seeds!r}")
    judge = eval_cfg.get("judge")
    if judge is not None and (not isinstance(judge, str) or not judge.strip()):
        raise ConfigError(f"evaluation.judge: expected a model spec (a local folder or a Hub id) or null, got {judge!r}")
    official = eval_cfg.get("official_ifeval", False)
    if not isinstance(official, bool):
        raise ConfigError(f"evaluation.official_ifeval: expected true or false, got {official!r}")
    return {"extra_sets": sets, "qa_max_new_tokens": qa_tokens, "decoding": decoding, "judge": judge,
            "official_ifeval": official}


# --------------------------------------------------------------------------- generation jobs


def _prompt_fn(system: str):
    if system == "base_fewshot":
        def fewshot(tok, messages):
            bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
            return bos + tok(fewshot_prompt(messages[-1]["content"]), add_special_tokens=False)["input_ids"]
        return fewshot
    return continuation_prompt_ids if system in CONTINUATION else chat_prompt_ids


def _load_family(folder: Path, config: dict, family: str):
    """(model, tokenizer, stop ids) of one model family: the run's base model, its merged SFT model
    (`sftlab.talk.load_sft_model`: PEFT's trained token row, unmerged, would rebuild the 262k-row
    embedding at every step) or the reference model with its own chat format."""
    from .chat import prepare_model, prepare_tokenizer
    from .sources import load_model
    from .talk import load_base_model, load_sft_model, stop_token_ids

    if family == "base":
        model, tok = load_base_model(folder)
    elif family == "sft":
        model, tok = load_sft_model(folder)
    else:
        model_cfg = config.get("model") or {}
        model, tok = load_model(model_cfg["reference"], dtype=model_cfg.get("dtype", "float32"))
        fmt = prepare_tokenizer(tok, model_cfg.get("reference_template", "native"))
        prepare_model(model, tok, fmt)
        model.eval()
        return model, tok, fmt.eos_token_ids
    return model, tok, stop_token_ids(tok)


def plain_text_losses(folder: Path, config: dict, n_passages: int, stages: _Stages, *, progress: bool) -> dict:
    """The base model's and the merged SFT model's loss on the same `n_passages` windows of plain prose
    (`sftlab.plaintext`), one model in memory at a time: {"base_chat": {...}, "sft": {...}}, each with
    its per-passage rows ([nats, tokens]) and seconds. Each is a stage of the work folder."""
    from .evaluate import assistant_nll
    from .plaintext import plain_text_windows

    out = {}
    for system, family in (("base_chat", "base"), ("sft", "sft")):
        key = f"plain_text-{system}"
        out[system] = stages.get(key)
        if out[system] is None:
            _log(f"plain-text loss of {system} on {n_passages} passages")
            model, tok, _ = _load_family(folder, config, family)
            t = time.time()
            per_passage, mean = assistant_nll(model, plain_text_windows(tok, n_passages), progress=progress)
            out[system] = {"per_conversation": per_passage, "mean_nll": mean, "seconds": round(time.time() - t, 1)}
            stages.put(key, out[system])
            del model
            gc.collect()
    return out


def run_jobs(folder: Path, config: dict, jobs: list[dict], stages: _Stages, *, batch_size: int,
             progress: bool) -> dict:
    """Generate every job's replies, one model family at a time (each loaded once), reading back the
    jobs an interrupted command finished. A job: {"key", "system", "messages" (a list of prompts,
    each a list of messages), "max_new_tokens", "sampling" (None: greedy)}. Returns
    {key: {"replies": [...], "seconds": s}}."""
    out = {j["key"]: stages.get(j["key"]) for j in jobs}
    for j in jobs:  # a stage left by a command with other prompts (another decoding subset) is done again
        if out[j["key"]] is not None and len(out[j["key"]]["replies"]) != len(j["messages"]):
            out[j["key"]] = None
    todo = [j for j in jobs if out[j["key"]] is None]
    for family in ("base", "sft", "reference"):
        mine = [j for j in todo if FAMILY[j["system"]] == family]
        if not mine:
            continue
        _log(f"loading the {family} model for {len(mine)} job(s)")
        model, tok, stop_ids = _load_family(folder, config, family)
        for job in mine:
            t = time.time()
            fn = _prompt_fn(job["system"])
            stops = stop_ids + (_blank_line_ids(tok) if job["system"] == "base_fewshot" else [])
            replies = generate_replies(model, tok, [fn(tok, m) for m in job["messages"]], stop_ids=stops,
                                       max_new_tokens=job["max_new_tokens"], batch_size=batch_size,
                                       desc=job["key"], progress=progress, sampling=job.get("sampling"))
            out[job["key"]] = {"replies": replies, "seconds": round(time.time() - t, 1)}
            stages.put(job["key"], out[job["key"]])
            _log(f"{job['key']}: {len(replies)} replies in {out[job['key']]['seconds']:.0f} s")
        del model, tok
        gc.collect()
    return out


def _blank_line_ids(tok) -> list[int]:
    """The token of a blank line ("\n\n"), when the vocabulary has one: a few-shot answer ends there
    (`sftlab.qa.fewshot_answer` cuts at the same place), so generation can stop."""
    ids = tok("\n\n", add_special_tokens=False)["input_ids"]
    return ids if len(ids) == 1 else []


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def qa_jobs(items: list[dict], systems: list[str], max_new_tokens: int) -> list[dict]:
    return [{"key": f"qa-{s}", "system": s, "messages": [_user(i["question"]) for i in items],
             "max_new_tokens": max_new_tokens, "sampling": None} for s in [*systems, "base_fewshot"]
            if s in systems or (s == "base_fewshot" and "base_chat" in systems)]


def qa_rows(items: list[dict], systems: list[str], done: dict) -> list[dict]:
    rows = []
    for i, item in enumerate(items):
        row = {"set": "qa", "id": item["id"], "kind": item["kind"], "prompt": _user(item["question"]),
               "reference": None, **{k: item[k] for k in ("answers", "distractors", "tolerance", "provenance")
                                     if k in item}, "replies": {}}
        for s in systems:
            reply = dict(done[f"qa-{s}"]["replies"][i])
            if s == "base_fewshot":  # the answer is the text before the next question
                text, closed = fewshot_answer(reply["text"])
                reply = {**reply, "generated": reply["text"], "text": text, "stopped": closed or reply["stopped"]}
            row["replies"][s] = reply
        rows.append(row)
    return rows


def ood_jobs(records: list[dict], systems: list[str], max_new_tokens: int) -> list[dict]:
    return [{"key": f"ood-{s}", "system": s, "messages": [_user(r["prompt"]) for r in records],
             "max_new_tokens": max_new_tokens, "sampling": None} for s in systems]


def ood_rows(records: list[dict], systems: list[str], done: dict) -> list[dict]:
    return [{"set": "ood", "id": r["id"], "prompt": _user(r["prompt"]), "reference": None, "checks": r["checks"],
             "replies": {s: dict(done[f"ood-{s}"]["replies"][i]) for s in systems}} for i, r in enumerate(records)]


def decoding_subset(samples: list[dict], settings: dict) -> dict:
    """The run's own held-out and IFEval rows the decoding settings are tried on: the first N of each."""
    return {"heldout": [r for r in samples if r["set"] == "heldout"][: settings["heldout"]],
            "ifeval": [r for r in samples if r["set"] == "ifeval"][: settings["ifeval"]]}


def decoding_settings(settings: dict, max_new_tokens: int) -> dict:
    """{setting name: {"max_new_tokens", "temperature" (None: greedy), "seed"}}, the run's greedy one first."""
    out = {GREEDY: {"max_new_tokens": max_new_tokens, "temperature": None, "seed": None, "from": "the run"}}
    out[f"greedy-{settings['long_max_new_tokens']}"] = {"max_new_tokens": settings["long_max_new_tokens"],
                                                        "temperature": None, "seed": None}
    for seed in settings["seeds"]:
        out[f"sample-t{settings['temperature']}-seed{seed}"] = {"max_new_tokens": max_new_tokens,
                                                                "temperature": settings["temperature"], "seed": seed}
    return out


def decoding_jobs(subset: dict, systems: list[str], named: dict) -> list[dict]:
    """Jobs for every setting but the run's own, for sft and reference. Under the longer greedy
    limit only the replies the run cut at its limit are generated again: greedy decoding writes the
    same tokens whatever the limit, so a reply that stopped before it is the same."""
    jobs = []
    for name, st in named.items():
        if name == GREEDY:
            continue
        for s in (s for s in ("sft", "reference") if s in systems):
            for set_, rows in subset.items():
                keep = [r for r in rows if st["temperature"] is not None or not r["replies"][s]["stopped"]]
                sampling = None if st["temperature"] is None else {"temperature": st["temperature"], "seed": st["seed"]}
                jobs.append({"key": f"decoding-{name}-{set_}-{s}", "system": s, "messages": [r["prompt"] for r in keep],
                             "ids": [str(r["id"]) for r in keep], "max_new_tokens": st["max_new_tokens"],
                             "sampling": sampling})
    return jobs


def decoding_rows(subset: dict, systems: list[str], named: dict, done: dict) -> list[dict]:
    rows = []
    for name in named:
        if name == GREEDY:
            continue
        for set_, source in subset.items():
            for r in source:
                row = {"set": "decoding", "id": f"{name}/{set_}/{r['id']}", "setting": name, "source_set": set_,
                       "source_id": r["id"], "replies": {}}
                for s in (s for s in ("sft", "reference") if s in systems):
                    job = done[f"decoding-{name}-{set_}-{s}"]
                    ids = [str(r2["id"]) for r2 in source if named[name]["temperature"] is not None
                           or not r2["replies"][s]["stopped"]]
                    if str(r["id"]) in ids:
                        reply = dict(job["replies"][ids.index(str(r["id"]))])
                    else:  # stopped under the run's limit: the same greedy reply
                        reply = {k: r["replies"][s][k] for k in ("text", "stopped", "n_tokens") if k in r["replies"][s]}
                        reply["reused"] = True
                    row["replies"][s] = reply
                rows.append(row)
    return rows


# --------------------------------------------------------------------------- the command


def _read_rows(path: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return rows


def evaluate_extra(results_dir: str | Path, sets=None, *, progress: bool = True, force: bool = False,
                   judge: str | None = None, decoding: dict | None = None) -> dict:
    """Add the extra sets (default: the recipe's `evaluation.extra_sets`) to a finished run; returns
    run.json's "extra_evaluation" entries written now. `judge` overrides `evaluation.judge`;
    `decoding` overrides keys of `evaluation.decoding` (e.g. {"heldout": 10})."""
    from . import judge as judge_mod
    from . import official_ifeval
    from .ood import load_ood_prompts

    folder = Path(results_dir)
    missing = [f for f in ("config.yaml", "samples.jsonl", "metrics.json", "run.json") if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"{folder} is not a finished run folder: missing {', '.join(missing)}")
    config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    eval_cfg = {**EVAL_DEFAULTS, **(config.get("evaluation") or {})}
    if decoding:
        eval_cfg["decoding"] = {**(eval_cfg.get("decoding") or {}), **decoding}
    if judge is not None:
        eval_cfg["judge"] = judge
    settings = extra_settings(eval_cfg)
    explicit = sets is not None  # sets named on the command line: official_ifeval is then tried with the Hub
    sets = list(settings["extra_sets"] if sets is None else sets)
    bad = [s for s in sets if s not in EXTRA_SETS]
    if bad:
        raise ConfigError(f"unknown extra set(s) {bad}; known: {', '.join(EXTRA_SETS)}")
    metrics = json.loads((folder / "metrics.json").read_text())
    samples = _read_rows(folder / "samples.jsonl")
    systems = [s for s in metrics["systems"] if s in FAMILY]  # the systems this command can load
    # each set once; a section that says it was not used (judge, official IFEval) is tried again
    todo = [s for s in sets if force or SECTION.get(s, s) not in metrics or not metrics[SECTION.get(s, s)].get("used", True)]
    if not todo and {"judge", "official_ifeval"} <= set(metrics):
        return {}
    n_boot, seed = int(eval_cfg["bootstrap_resamples"]), int(config.get("seed", 0))
    max_new = int(eval_cfg["max_new_tokens"])
    # one work folder per set list: commands adding other sets at the same time do not share it
    work = folder.parent / f".work-{folder.name}-extra-{'-'.join(sorted(todo)) or 'none'}"
    work.mkdir(parents=True, exist_ok=True)
    stages = _Stages(work)
    t0 = time.time()
    jobs, build = [], {}
    if "qa" in todo:
        items = load_questions()
        jobs += qa_jobs(items, systems, settings["qa_max_new_tokens"])
        build["qa"] = lambda done: qa_rows(items, [*systems, "base_fewshot"] if "base_chat" in systems else systems,
                                           done)
    if "ood" in todo:
        records = load_ood_prompts()
        jobs += ood_jobs(records, systems, max_new)
        build["ood"] = lambda done: ood_rows(records, systems, done)
    if "decoding" in todo:
        subset = decoding_subset(samples, settings["decoding"])
        named = decoding_settings(settings["decoding"], max_new)
        jobs += decoding_jobs(subset, systems, named)
        build["decoding"] = lambda done: decoding_rows(subset, systems, named, done)
    want_official = settings["official_ifeval"] or explicit and "official_ifeval" in sets
    if "official_ifeval" in todo and want_official:
        official_rows = official_ifeval.load_official_rows()  # the Hub, or a clear error
        jobs += [{"key": f"official_ifeval-{s}", "system": s, "messages": [_user(r["prompt"]) for r in official_rows],
                  "max_new_tokens": max_new, "sampling": None} for s in systems]
        build["official_ifeval"] = lambda done: official_ifeval.official_sample_rows(official_rows, systems, done)
    done = run_jobs(folder, config, jobs, stages, batch_size=int(eval_cfg["batch_size"]), progress=progress)
    plain = None
    if "plain_text" in todo:
        plain = plain_text_losses(folder, config, int(eval_cfg.get("plain_text") or PLAIN_TEXT_PASSAGES), stages,
                                  progress=progress)
    new_rows = {name: fn(done) for name, fn in build.items()}
    sections, entries = {}, {}
    if "qa" in new_rows:
        sections["qa"] = {**score_qa(new_rows["qa"], n_resamples=n_boot, seed=seed),
                          "max_new_tokens": settings["qa_max_new_tokens"]}
    if "ood" in new_rows:
        sections["ood"] = {**score_ood(new_rows["ood"], n_resamples=n_boot, seed=seed), "max_new_tokens": max_new}
    if "decoding" in new_rows:
        sections["decoding"] = score_decoding(subset, new_rows["decoding"], settings=named, n_resamples=n_boot, seed=seed)
    if "judge" in todo or "judge" not in metrics:  # without a judge the section says it was not used
        sections["judge"], judge_rows = judge_mod.judge_run(samples, settings["judge"] if "judge" in todo else None,
                                                            progress=progress)
        if judge_rows:
            new_rows["judge"] = judge_rows
    if "official_ifeval" in todo:
        sections["official_ifeval"] = {}  # computed in _merge, from every set's rows
    comparisons = []
    if plain is not None:
        from .scoring import score_plain_losses

        scored = score_plain_losses({s: v["per_conversation"] for s, v in plain.items()}, n_resamples=n_boot, seed=seed)
        sections["plain_text_loss"], comparisons = scored["plain_text_loss"], scored["comparisons"]
    hw, vers, commit = hardware(), versions(), git_commit()
    timed = {**done, **{f"plain_text-{s}": v for s, v in (plain or {}).items()}}
    for name in todo:
        if SECTION.get(name, name) not in sections:
            continue
        keys = [k for k in timed if k.startswith(f"{name}-")]
        entries[name] = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_commit": commit,
                         "timings_s": {f"{k}_s": timed[k]["seconds"] for k in keys},
                         "generate_s": round(sum(timed[k]["seconds"] for k in keys), 1),
                         "cpu_kind": hw["cpu_kind"], "hardware": hw, "versions": vers}
    _merge(folder, new_rows, sections, entries, wall_s=round(time.time() - t0, 1), n_resamples=n_boot, seed=seed,
           comparisons=comparisons, plain={s: v["per_conversation"] for s, v in (plain or {}).items()})
    shutil.rmtree(work, ignore_errors=True)
    return entries


def _merge(folder: Path, new_rows: dict, sections: dict, entries: dict, *, wall_s: float, n_resamples: int,
           seed: int, comparisons: list | None = None, plain: dict | None = None) -> None:
    """Write the new rows, sections and run.json entries; the run's own rows and keys stay as they are.
    The files are read again here, so commands adding other sets at the same time keep each other's;
    the "official_ifeval" section (official checkers on the IFEval-style and OOD rows, the benchmark
    itself where its rows are there) is computed from all rows, as merged."""
    from .official_ifeval import official_section

    samples = _read_rows(folder / "samples.jsonl")
    metrics = {**json.loads((folder / "metrics.json").read_text()), **sections}
    if comparisons:  # a set's paired comparisons replace that set's earlier ones in the run's list
        new_sets = {c["set"] for c in comparisons}
        metrics["comparisons"] = [c for c in metrics.get("comparisons", []) if c.get("set") not in new_sets] + comparisons
    if plain:
        from .rescore import PLAIN_FILE

        write_json_atomic(folder / PLAIN_FILE, plain)
    merged = [r for r in samples if r.get("set") not in new_rows] + [r for rows in new_rows.values() for r in rows]
    metrics["official_ifeval"] = official_section(merged, [r for r in merged if r.get("set") == "official_ifeval"],
                                                  n_resamples=n_resamples, seed=seed)
    _write_jsonl_atomic(folder / "samples.jsonl", merged)
    write_json_atomic(folder / "metrics.json", metrics, indent=2)
    run = json.loads((folder / "run.json").read_text())
    extra = run.setdefault("extra_evaluation", {})
    for name, entry in entries.items():
        extra[name] = {**entry, "command_wall_s": wall_s}
    write_json_atomic(folder / "run.json", run, indent=2)
