"""`sftlab rescore DIR`: recompute a finished run's metrics after a metric changed, without re-running it.

Everything the reply metrics need is in samples.jsonl (replies, stop flags, prompts,
references, IFEval checks), so `rescore` loads no model: it recomputes the reply metrics,
categories and paired comparisons, rewrites each reply's `checks_passed` and `category` in
samples.jsonl, and recomputes the held-out loss statistics from `heldout_losses.json` when the
run wrote it. `rescore(DIR, with_model=True)` (`sftlab rescore DIR --model`) also recomputes
the held-out loss itself, split into content and end-of-turn tokens, with the run's base model
and adapter: it rebuilds the run's held-out conversations from its recipe and refuses if they
no longer match the ones the run scored. Files are replaced atomically and run.json records
when, at which commit, and which values moved.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from .config import EVAL_DEFAULTS, read_json, read_run_recipe, read_text
from .errors import ConfigError, DataError
from .runinfo import git_commit
from .extra_scores import EXTRA_SAMPLE_SETS, rescore_sections
from .scoring import score_losses, score_plain_losses, score_replies, write_json_atomic

RESULT_FILES = ("config.yaml", "samples.jsonl", "metrics.json", "run.json")
LOSSES_FILE = "heldout_losses.json"  # per-conversation loss rows, {system: [[nats, tokens, eot_nats, eot_tokens]]}
PLAIN_FILE = "plain_text_losses.json"  # per-passage plain-text loss rows, {system: [[nats, tokens]]}

# Keys `rescore` reads from each samples.jsonl row, by prompt set, and from each reply.
_SAMPLE_KEYS = {"heldout": ("id", "replies", "reference"), "ifeval": ("id", "replies", "prompt", "checks"),
                "multiturn": ("id", "replies", "prompt", "checks")}
_REPLY_KEYS = ("text", "stopped")


def prompt_text(messages: list[dict]) -> str:
    """The user text a reply answers (every user turn of the prompt), for the echo rule."""
    return "\n".join(m["content"] for m in messages if m.get("role") == "user")


def annotate_samples(samples: list[dict]) -> list[dict]:
    """Each reply with its category and, for IFEval prompts and multi-turn probes, its echo-proof
    `checks_passed` (and `checks_passed_raw`, the checks on the reply as written)."""
    from . import ifeval as ifeval_mod
    from .categories import category
    from .multiturn import UNUSABLE, earlier_text

    for row in samples:
        if row["set"] == "multiturn":
            prompt = earlier_text(row["prompt"])  # recalling earlier turns is the task; copying them is not
        else:
            prompt = prompt_text(row.get("prompt") or [])
        record = {"id": row["id"], "prompt": prompt, "checks": row.get("checks")}
        for reply in row["replies"].values():
            reply["category"] = category(reply["text"], stopped=bool(reply["stopped"]), prompt=prompt)
            if row["set"] in ("ifeval", "multiturn"):
                reply["checks_passed"] = ifeval_mod.score_reply(record, reply["text"])["instruction_results"]
                reply["checks_passed_raw"] = ifeval_mod.score_reply(record, reply["text"], echo_proof=False)[
                    "instruction_results"]
            if row["set"] == "multiturn":  # passes only as a usable reply (`multiturn.score_probe`)
                reply["usable"] = reply["category"] not in UNUSABLE
    return samples


def read_samples(folder: Path, systems: set) -> list[dict]:
    """samples.jsonl rows, each checked (a bad row raises ConfigError naming its line and key)."""
    path = folder / "samples.jsonl"
    lines = read_text(path).split("\n")  # not splitlines: replies may hold U+2028 and other line breaks
    return [_sample_row(line, lineno, systems, path) for lineno, line in enumerate(lines, start=1) if line.strip()]


def rescore(results_dir: str | Path, *, with_model: bool = False, progress: bool = True) -> dict:
    """Recompute a finished run's metrics (see the module docstring); returns run.json's new entry."""
    folder = Path(results_dir)
    missing = [f for f in RESULT_FILES if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"{folder} is not a finished run folder: missing {', '.join(missing)}")
    # Every file is read and checked before anything is written: a bad one is named, none is half-rewritten.
    config = read_run_recipe(folder, ("seed", "evaluation", *(("model", "data", "training") if with_model else ())),
                             required=with_model)
    eval_cfg = {**EVAL_DEFAULTS, **(config.get("evaluation") or {})}
    n_boot, seed = int(eval_cfg["bootstrap_resamples"]), int(config.get("seed", 0))
    old = _metrics_file(folder / "metrics.json")
    run = read_json(folder / "run.json", "the run's record")
    if not isinstance(run.get("rescored", []), list):
        raise ConfigError(f"{folder / 'run.json'}: rescored: expected a list of earlier rescores")
    samples = read_samples(folder, set(old["systems"]))
    extra_rows = [r for r in samples if r["set"] in EXTRA_SAMPLE_SETS]  # kept, and re-scored below
    samples = [r for r in samples if r["set"] not in EXTRA_SAMPLE_SETS]
    if not samples:
        raise ConfigError(f"{folder / 'samples.jsonl'}: no rows (the run's prompts and replies)")
    stored_losses = {name: _loss_rows_file(folder / name) for name in (LOSSES_FILE, PLAIN_FILE)
                     if (folder / name).is_file()}
    replies: dict = {s: {"heldout": [], "ifeval": [], "multiturn": []} for s in old["systems"]}
    heldout_refs, heldout_prompts, if_records, mt_records = [], [], [], []
    for row in samples:
        if row["set"] == "heldout":
            heldout_refs.append(row["reference"])
            heldout_prompts.append(prompt_text(row["prompt"]) if "prompt" in row else "")
        elif row["set"] == "multiturn":
            mt_records.append({"id": row["id"], "messages": row["prompt"], "checks": row["checks"]})
        else:
            if_records.append({"id": row["id"], "prompt": row["prompt"][-1]["content"], "checks": row["checks"]})
        for s, r in row["replies"].items():
            replies[s][row["set"]].append({"text": r["text"], "stopped": r["stopped"]})
    scores = score_replies(replies, heldout_refs, if_records, mt_records=mt_records, heldout_prompts=heldout_prompts,
                           embeddings=bool(eval_cfg["embedding_similarity"]), n_resamples=n_boot, seed=seed)
    if with_model:
        losses = recompute_losses(folder, config, expected=old.get("heldout_loss") or {}, progress=progress)
        write_json_atomic(folder / LOSSES_FILE, losses, indent=None)
        stored_losses[LOSSES_FILE] = losses
    loss_scores = None
    if LOSSES_FILE in stored_losses:
        loss_scores = score_losses({s: {"per_conversation": rows} for s, rows in stored_losses[LOSSES_FILE].items()},
                                   n_resamples=n_boot, seed=seed)
    new = {**old, "systems": scores["systems"]}
    loss_comparisons = [c for c in old.get("comparisons", []) if c.get("set") == "loss"]
    if loss_scores is not None:
        new["heldout_loss"], loss_comparisons = loss_scores["heldout_loss"], loss_scores["comparisons"]
    plain_comparisons = [c for c in old.get("comparisons", []) if c.get("set") == "plain_text"]
    if PLAIN_FILE in stored_losses:
        plain = score_plain_losses(stored_losses[PLAIN_FILE], n_resamples=n_boot, seed=seed)
        new["plain_text_loss"], plain_comparisons = plain["plain_text_loss"], plain["comparisons"]
    new["comparisons"] = scores["comparisons"] + loss_comparisons + plain_comparisons
    if extra_rows:
        new.update(rescore_sections(samples + extra_rows, old, n_resamples=n_boot, seed=seed))
    changed = _changed(old, new)
    write_json_atomic(folder / "metrics.json", new, indent=2)
    _write_jsonl_atomic(folder / "samples.jsonl", annotate_samples(samples) + extra_rows)
    entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_commit": git_commit(),
             "with_model": with_model, "changed": changed}
    run.setdefault("rescored", []).append(entry)
    write_json_atomic(folder / "run.json", run, indent=2)
    return entry


def _changed(old: dict, new: dict) -> dict:
    """{"system.set.metric": [old value, new value]} for every reply metric and loss value that moved."""

    def value(tree, s, part, key):
        item = tree.get(s, {}).get(part, {}).get(key)
        return item.get("value") if isinstance(item, dict) else None

    changed = {
        f"{s}.{part}.{key}": [value(old["systems"], s, part, key), value(new["systems"], s, part, key)]
        for s, parts in new["systems"].items() for part, entry in parts.items() for key in entry
        if value(new["systems"], s, part, key) is not None
        and value(old["systems"], s, part, key) != value(new["systems"], s, part, key)
    }
    for s, entry in (new.get("heldout_loss") or {}).items():
        before = (old.get("heldout_loss") or {}).get(s, {}).get("mean_nll")
        if before != entry.get("mean_nll"):
            changed[f"{s}.loss.mean_nll"] = [before, entry.get("mean_nll")]
    return changed


def _write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def recompute_losses(folder: Path, config: dict, *, expected: dict, progress: bool = True) -> dict:
    """Held-out loss rows per conversation, split at the end-of-turn tokens, for base_chat (the
    adapter disabled) and sft, from the run's own recipe, base model and adapter.

    Raises ConfigError when the rebuilt held-out set differs from the run's (other conversation
    or token counts than metrics.json records): the data pipeline changed since the run.
    """
    from peft import PeftModel

    from .chat import prepare_model, prepare_tokenizer
    from .data import prepare_data
    from .evaluate import adapter_disabled, assistant_nll
    from .sources import load_model
    from .train import encode_dataset

    model_cfg, data_cfg = config["model"], config.get("data") or {}
    model, tokenizer = load_model(model_cfg["base"], dtype=model_cfg.get("dtype", "float32"))
    fmt = prepare_tokenizer(tokenizer, model_cfg.get("template", "gemma"),
                            allow_new_tokens=bool(model_cfg.get("allow_new_tokens", False)))
    prepare_model(model, tokenizer, fmt)
    prepared = prepare_data(data_cfg, tokenizer, int(config.get("seed", 0)), progress=progress)
    max_length = (config.get("training") or {}).get("max_length", 1024)
    eval_ds, _ = encode_dataset(list(prepared.eval), tokenizer, max_length=max_length, progress=progress)
    eval_cfg = {**EVAL_DEFAULTS, **(config.get("evaluation") or {})}
    peft_model = PeftModel.from_pretrained(model, str(folder / "adapter"))
    peft_model.eval()
    eot = tokenizer.convert_tokens_to_ids(fmt.end_of_turn)
    out = {}
    with adapter_disabled(peft_model):
        out["base_chat"], _ = assistant_nll(peft_model, eval_ds, max_batches=eval_cfg["loss_batches"],
                                            progress=progress, eot_id=eot)
    out["sft"], _ = assistant_nll(peft_model, eval_ds, max_batches=eval_cfg["loss_batches"], progress=progress,
                                  eot_id=eot)
    for system, rows in out.items():
        want = expected.get(system) or {}
        got = (len([r for r in rows if r[1] > 0]), sum(r[1] for r in rows))
        if want and (want.get("n_conversations"), want.get("n_tokens")) != got:
            raise ConfigError(
                f"{folder}: the held-out set rebuilt from config.yaml has {got[0]} conversations and {got[1]} "
                f"tokens for {system}, the run scored {want.get('n_conversations')} and {want.get('n_tokens')}: "
                "the data pipeline changed since this run, so its loss cannot be recomputed; re-run it instead")
    return {s: [list(r) for r in rows] for s, rows in out.items()}


def _sample_row(line: str, lineno: int, systems: set, path: Path = Path("samples.jsonl")) -> dict:
    """One samples.jsonl row, checked; a bad row raises ConfigError naming its file, line, id and the key."""
    where = f"{path} line {lineno}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected a JSON object (one prompt and its replies), got {type(row).__name__}")
    where += f" ({row.get('id')})"
    if row.get("set") in EXTRA_SAMPLE_SETS:
        return row  # a set `sftlab evaluate-extra` added: its own scorer reads it (sftlab.extra_scores)
    if row.get("set") not in _SAMPLE_KEYS:
        raise ConfigError(f"{where}: unknown set {row.get('set')!r}; expected one of {sorted(_SAMPLE_KEYS)}")
    missing = [k for k in _SAMPLE_KEYS[row["set"]] if k not in row]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    if not isinstance(row["replies"], dict):
        raise ConfigError(f"{where}: replies: expected a mapping of system to reply")
    if set(row["replies"]) != systems:
        raise ConfigError(f"{where}: systems {sorted(row['replies'])} differ from metrics.json's {sorted(systems)}")
    for s, r in row["replies"].items():
        missing = [k for k in _REPLY_KEYS if not isinstance(r, dict) or k not in r]
        if missing:
            raise ConfigError(f"{where}: reply of {s} has no {', '.join(missing)}")
        if not isinstance(r["text"], str) or not isinstance(r["stopped"], bool):
            raise ConfigError(f"{where}: reply of {s}: expected text and stopped (true or false)")
    prompt = row.get("prompt", [])
    if not isinstance(prompt, list) or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                               for m in prompt) or (row["set"] != "heldout" and not prompt):
        raise ConfigError(f"{where}: prompt: expected a list of messages, each with its content")
    if row["set"] == "heldout" and not isinstance(row["reference"], str):
        raise ConfigError(f"{where}: reference: expected the held-out reply's text")
    if row["set"] != "heldout":
        from .ifeval import validate_record

        try:  # the checks as the prompt sets define them (sftlab.ifeval.CHECKS)
            validate_record({"id": row["id"], "prompt": prompt[-1]["content"], "checks": row["checks"]})
        except DataError as exc:
            raise ConfigError(f"{where}: checks: {exc}") from None
    return row


def _metrics_file(path: Path) -> dict:
    """metrics.json, checked as far as `rescore` reads it: systems -> prompt set -> metrics, and lists
    of comparisons."""
    metrics = read_json(path, "the run's metrics")
    systems = metrics.get("systems")
    if not isinstance(systems, dict) or not systems or not all(
            isinstance(parts, dict) and all(isinstance(v, dict) for v in parts.values()) for parts in systems.values()):
        raise ConfigError(f"{path}: systems: expected a mapping of each system to its metrics by prompt set")
    if not isinstance(metrics.get("comparisons", []), list) or not all(
            isinstance(c, dict) for c in metrics.get("comparisons", [])):
        raise ConfigError(f"{path}: comparisons: expected a list of paired comparisons")
    if not isinstance(metrics.get("heldout_loss") or {}, dict):
        raise ConfigError(f"{path}: heldout_loss: expected a mapping of system to its loss")
    return metrics


def _loss_rows_file(path: Path) -> dict:
    """heldout_losses.json or plain_text_losses.json: {system: [[nats, tokens(, eot_nats, eot_tokens)], ...]}."""
    stored = read_json(path, "per-conversation loss rows")
    for system, rows in stored.items():
        if not (isinstance(rows, list) and rows and all(
                isinstance(r, list) and len(r) in (2, 4) and all(_is_count(x) for x in r) for r in rows)):
            raise ConfigError(f"{path}: {system}: expected a list of rows of 2 or 4 numbers "
                              "(nats, tokens, and the end-of-turn part)")
    return stored


def _is_count(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0
