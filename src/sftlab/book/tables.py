"""The book's tables of results, each a pandas DataFrame of display strings built from a run.

Cells read "value [lo, hi]" (value and 95% bootstrap interval). Chapter 6 (evaluation)
shows the systems, metrics, loss, IFEval, repetition and role-leak tables; chapter 5
(training) the recipe and the run summary; chapter 3 (data) the preprocessing steps and
skip reasons; the preface the headline table.
"""

from __future__ import annotations

import re

import pandas as pd

from .catalog import (
    METRIC_SETS,
    SET_LABELS,
    SYSTEM_DESCRIPTIONS,
    SYSTEMS,
    label,
    metric_spec,
)
from ..config import TRAINING_KEYS
from .formatting import fmt_ci, fmt_count, fmt_diff, fmt_duration, fmt_field, fmt_params, fmt_value
from .results import Results, comparison, metric_entry, samples



def systems_table(results: Results) -> pd.DataFrame:
    """The systems compared, what each is, and whether this run evaluated it."""
    model = results.config.get("model") or {}
    names = {"base": model.get("base", "?"), "reference": model.get("reference") or "none"}
    rows = [{"system": label(s), "what it is": SYSTEM_DESCRIPTIONS[s].format(**names),
             "in this run": "yes" if s in results.systems
             else ("held-out loss only" if s in (results.metrics.get("heldout_loss") or {}) else "no")}
            for s in SYSTEMS]
    return pd.DataFrame(rows).set_index("system")


def metrics_table(results: Results, set: str = "heldout", systems=None) -> pd.DataFrame:
    """Rows = metrics, columns = systems, cells "value [lo, hi]" (95% bootstrap interval).

    set: "heldout" (replies to held-out ShareGPT prompts), "ifeval" or "loss".
    Systems the run did not evaluate are left out; metrics none of them has are dropped.
    """
    specs = METRIC_SETS[set]
    if systems is None:
        systems = (list((results.metrics.get("heldout_loss") or {})) if set == "loss" else results.systems)
        systems = [s for s in SYSTEMS if s in systems] + [s for s in systems if s not in SYSTEMS]
    rows = {}
    for m in specs:
        cells = {label(s): fmt_ci(metric_entry(results, s, m.key, set), m.kind) for s in systems}
        if any(c != "–" for c in cells.values()):
            rows[m.label + (f" ({m.better} is better)" if m.better else "")] = cells
    df = pd.DataFrame.from_dict(rows, orient="index", columns=[label(s) for s in systems])
    df.index.name = "metric"
    return df


def loss_table(results: Results) -> pd.DataFrame:
    """Held-out loss before (base + template) and after (LoRA SFT) training: over all learned tokens,
    and split into the replies' own text and the end-of-turn token closing each reply."""
    rows = {}
    for system, loss in (results.metrics.get("heldout_loss") or {}).items():
        row = {
            "all learned tokens, nats/token": fmt_ci({"value": loss.get("mean_nll"), "ci": loss.get("ci")}, "nats"),
            "perplexity": fmt_ci(metric_entry(results, system, "perplexity", "loss"), "ppl"),
        }
        if "eot_nll" in loss:
            row["reply text only"] = fmt_ci(loss["content_nll"], "nats")
            row["end-of-turn only"] = fmt_ci(loss["eot_nll"], "nats")
        row["conversations"] = fmt_count(loss.get("n_conversations"))
        row["scored tokens"] = fmt_count(loss.get("n_tokens")) + (
            f" ({fmt_count(loss['eot_nll']['n_tokens'])} end-of-turn)" if "eot_nll" in loss else "")
        rows[label(system)] = row
    order = [label(s) for s in SYSTEMS]
    df = pd.DataFrame.from_dict(rows, orient="index")
    df = df.loc[sorted(df.index, key=lambda x: order.index(x) if x in order else 99)] if len(df) else df
    df.index.name = "system"
    return df


def ifeval_table(results: Results) -> pd.DataFrame:
    """IFEval pass rates: both overall accuracies, then one row per instruction type (with its count)."""
    systems = [s for s in results.systems if metric_entry(results, s, "prompt_level", "ifeval")]
    if not systems:
        return pd.DataFrame(columns=["instruction type", "n"]).set_index("instruction type")
    rows = {}
    first = results.metrics["systems"][systems[0]]["ifeval"]
    rows["all prompts (prompt-level)"] = {"n": fmt_count(first.get("n_prompts"))}
    rows["all instructions (instruction-level)"] = {"n": fmt_count(first.get("n_instructions"))}
    raw = "raw" in first  # echo-proof scores, with the raw ones beside them
    if raw:
        rows["prompt-level, copied text counted (raw)"] = {"n": fmt_count(first.get("n_prompts"))}
        rows["replies that copy their prompt"] = {"n": fmt_count(first.get("n_prompts"))}
    for s in systems:
        ifv = results.metrics["systems"][s]["ifeval"]
        rows["all prompts (prompt-level)"][label(s)] = fmt_ci(metric_entry(results, s, "prompt_level", "ifeval"),
                                                              "rate")
        rows["all instructions (instruction-level)"][label(s)] = fmt_ci(
            metric_entry(results, s, "instruction_level", "ifeval"), "rate")
        if raw:
            rows["prompt-level, copied text counted (raw)"][label(s)] = fmt_ci(ifv["raw"]["prompt_level"], "rate")
            rows["replies that copy their prompt"][label(s)] = fmt_count(ifv.get("n_echoed"))
    types = sorted({t for s in systems for t in results.metrics["systems"][s]["ifeval"].get("per_type", {})})
    for t in types:
        row = {}
        for s in systems:
            entry = results.metrics["systems"][s]["ifeval"].get("per_type", {}).get(t)
            row["n"] = fmt_count(entry["n"]) if entry else row.get("n", "–")
            row[label(s)] = fmt_ci(entry, "rate")
        rows[t] = row
    df = pd.DataFrame.from_dict(rows, orient="index", columns=["n"] + [label(s) for s in systems])
    df.index.name = "instruction type"
    return df


HEADLINE = (("loss", "mean_nll"), ("loss", "content_nll"), ("heldout", "stop_rate"), ("heldout", "canned_rate"),
            ("heldout", "role_leak_rate"), ("heldout", "embedding_similarity"), ("ifeval", "prompt_level"),
            ("ifeval", "instruction_level"))


def headline_table(results: Results, a: str = "sft", b: str = "base_chat") -> pd.DataFrame:
    """The few numbers of the preface: each system's value [95% interval] on loss, stopping, canned
    replies, role leaks, closeness to the reference and IFEval, and the paired difference a - b."""
    systems = results.systems or list((results.metrics.get("heldout_loss") or {}))
    systems = [s for s in SYSTEMS if s in set(systems) | set(results.metrics.get("heldout_loss") or {})]
    diff_col = f"{label(a)} − {label(b)}, paired"
    rows = {}
    for set_, key in HEADLINE:
        m = metric_spec(key, set_)
        cells = {label(s): fmt_ci(metric_entry(results, s, key, set_), m.kind) for s in systems}
        paired = comparison(results, a, b, key, set_)
        if paired is not None:
            cells[diff_col] = fmt_diff(paired, m.kind)
        if any(c != "–" for c in cells.values()):
            rows[m.label + (f" ({m.better} is better)" if m.better else "")] = cells
    columns = [label(s) for s in systems] + ([diff_col] if any(diff_col in r for r in rows.values()) else [])
    df = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    df.index.name = "metric"
    return df


def comparison_table(results: Results, a: str = "sft", b: str = "base_chat") -> pd.DataFrame:
    """Every paired comparison of a against b: the difference a - b [95% interval] on the same
    prompts, on how many prompts each is higher, and the reading (better, worse, or not separable)."""
    from ..stats import verdict

    rows = []
    order = {"loss": 0, "heldout": 1, "ifeval": 2, "multiturn": 3}
    pairs = [c for c in results.metrics.get("comparisons") or [] if c["a"] == a and c["b"] == b]
    for c in sorted(pairs, key=lambda c: order.get(c["set"], 9)):
        m = metric_spec(c["metric"], c["set"])
        rows.append({
            "prompt set": SET_LABELS.get(c["set"], c["set"]),
            "metric": m.label,
            f"{label(a)} − {label(b)} [95% CI]": fmt_diff(c, m.kind),
            "prompts: higher / lower": (f"{c['n_a_higher']} / {c['n_b_higher']} of {c['n']}" if "n_a_higher" in c
                                        else f"pooled over {c['n']}"),
            "reading": {"better": f"{label(a)} better", "worse": f"{label(a)} worse", "unclear": "not separable",
                        "": "no better direction"}[verdict(c, m.better)],
        })
    return pd.DataFrame(rows, columns=["prompt set", "metric", f"{label(a)} − {label(b)} [95% CI]",
                                       "prompts: higher / lower", "reading"])


def categories_table(results: Results, set: str = "heldout") -> pd.DataFrame:
    """Reply categories (sftlab.categories) per system: count and share of the prompt set."""
    from ..categories import CATEGORIES, CATEGORY_MEANINGS

    columns = {}
    for s in results.systems:
        counts = ((results.metrics["systems"][s].get(set) or {}).get("categories")) or {}
        n = sum(counts.values())
        if n:
            columns[label(s)] = {c: f"{counts.get(c, 0)} ({100 * counts.get(c, 0) / n:.0f}%)" for c in CATEGORIES}
    df = pd.DataFrame(columns, index=list(CATEGORIES))
    df.insert(0, "what it means", [CATEGORY_MEANINGS[c] for c in CATEGORIES])
    df.index.name = "category"
    return df


def repetition_table(results: Results, set: str = "heldout", threshold: float = 0.5) -> pd.DataFrame:
    """Per system: share of replies that loop (per-reply distinct-2 below `threshold`) and that hit the limit.

    Greedy decoding from a small model often repeats one sentence until the token limit;
    a reply whose word pairs are mostly repeats has distinct-2 well under 1.
    """
    from ..metrics import distinct_n

    rows = {}
    for s in results.systems:
        replies = [x["replies"][s] for x in samples(results, set) if s in x["replies"]]
        if not replies:
            continue
        loops = [distinct_n([r["text"]], 2) < threshold for r in replies if r["text"].split()]
        limit = [not r.get("stopped") for r in replies]
        rows[label(s)] = {
            "replies": fmt_count(len(replies)),
            f"looping (distinct-2 < {threshold:g})": fmt_value(sum(loops) / len(replies), "rate"),
            "hit the token limit": fmt_value(sum(limit) / len(replies), "rate"),
            "looping among those at the limit": (
                fmt_value(sum(lp for lp, r in zip(loops, replies) if not r.get("stopped")) / max(1, sum(limit)),
                          "rate") if sum(limit) else "–"),
        }
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "system"
    return df


ROLE_LEAK_RULES = {
    1: "template marker",
    2: "speaker label",
    3: "request header",
    4: "bare turn header",
    5: "turn header glued to a stray token",
}


def role_leak_table(results: Results, context: int = 40) -> pd.DataFrame:
    """Every reply flagged as a role leak, in both prompt sets: system, prompt, rule and the text around the match.

    The rules are those of `sftlab.metrics.role_leak`; newlines in the excerpt show as "⏎".
    """
    from ..metrics import role_leak_match

    rows = []
    for set_ in ("heldout", "ifeval"):
        for sample in samples(results, set_):
            for s in results.systems:
                reply = sample["replies"].get(s)
                hit = role_leak_match(reply["text"]) if reply else None
                if hit is None:
                    continue
                rule, text = hit
                at = reply["text"].find(text)
                excerpt = reply["text"][max(0, at - context): at + len(text) + context]
                rows.append({"system": label(s), "prompt set": set_, "prompt": str(sample["id"]),
                             "rule": f"{rule}. {ROLE_LEAK_RULES[rule]}",
                             "excerpt": "…" + excerpt.replace("\n", "⏎") + "…"})
    return pd.DataFrame(rows, columns=["system", "prompt set", "prompt", "rule", "excerpt"])


# One-line meanings of the recipe fields the configs use; other fields fall back to the
# libraries' own help text (PEFT and TRL document every dataclass field).
FIELD_MEANINGS = {
    ("lora", "r"): "rank of each low-rank update B·A: the adapter's capacity",
    ("lora", "lora_alpha"): "scale of the update: ΔW = (lora_alpha / r) · B·A",
    ("lora", "lora_dropout"): "dropout on the adapter's input during training",
    ("lora", "target_modules"): "which linear layers get an adapter (here: attention and MLP projections)",
    ("lora", "trainable_token_indices"): "embedding rows trained in full (tied output layer: also the "
                                         "logit of that token)",
    ("lora", "bias"): "which biases train (none: only the adapters)",
    ("lora", "use_dora"): "DoRA: split each weight into magnitude and direction and adapt both",
    ("lora", "use_rslora"): "rank-stabilized scaling lora_alpha / sqrt(r) instead of lora_alpha / r",
    ("lora", "modules_to_save"): "modules trained in full next to the adapters",
    ("training", "num_train_epochs"): "passes over the training conversations",
    ("training", "max_steps"): "stop after this many optimizer steps (overrides epochs when > 0)",
    ("training", "per_device_train_batch_size"): "conversations per forward/backward pass",
    ("training", "gradient_accumulation_steps"): "passes summed before each optimizer step "
                                                 "(effective batch = batch size × this)",
    ("training", "learning_rate"): "peak learning rate of AdamW",
    ("training", "lr_scheduler_type"): "learning-rate curve after warm-up",
    ("training", "warmup_steps"): "steps of linear warm-up from 0 to the peak learning rate",
    ("training", "warmup_ratio"): "share of all steps spent warming up",
    ("training", "weight_decay"): "AdamW weight decay",
    ("training", "max_length"): "longest conversation in tokens; longer ones are skipped, never truncated",
    ("training", "bf16"): "bfloat16 autocast (auto: where the CPU or GPU supports it)",
    ("training", "gradient_checkpointing"): "recompute activations in the backward pass to save memory",
    ("training", "logging_steps"): "write loss, grad norm and learning rate every this many steps",
    ("training", "eval_strategy"): "when to compute the eval-split loss during training",
    ("training", "eval_steps"): "steps between eval-loss measurements",
    ("training", "per_device_eval_batch_size"): "conversations per eval batch",
    ("training", "packing"): "concatenate conversations into full-length rows",
    ("training", "padding_free"): "batch without padding (position ids mark the sequences)",
    ("training", "max_grad_norm"): "gradient clipping threshold",
    ("training", "optim"): "optimizer",
    ("training", "seed"): "training seed",
    ("training", "train_sampling_strategy"): "order of training examples (group_by_length: batches of similar "
                                             "length, so less padding)",
    ("training", "group_by_length"): "batch conversations of similar length together (less padding)",
}


def _library_help(section: str, key: str) -> str:
    """First sentence of PEFT's / TRL's own help for a field, or ""."""
    import dataclasses

    try:
        if section == "lora":
            from peft import LoraConfig as cls
        else:
            from trl import SFTConfig as cls
        for f in dataclasses.fields(cls):
            if f.name == key:
                text = " ".join(str(f.metadata.get("help", "")).split())
                return re.split(r"(?<=\.)\s", text, maxsplit=1)[0][:160]
    except Exception:  # noqa: BLE001 - a missing library only loses a description
        return ""
    return ""


def training_config_table(results: Results) -> pd.DataFrame:
    """Every `lora` (peft.LoraConfig) and `training` (trl.SFTConfig) field of the run, with its meaning."""
    rows = []
    resolved_bf16 = (results.run.get("training") or {}).get("bf16")
    for section in ("lora", "training"):
        for key, value in (results.config.get(section) or {}).items():
            shown = fmt_field(value)
            if key == "bf16" and value == "auto" and resolved_bf16 is not None:
                shown = f"auto → {resolved_bf16} on this machine"
            own = TRAINING_KEYS.get(key) if section == "training" else None  # sftlab's own keys: no library help
            meaning = FIELD_MEANINGS.get((section, key)) or own or _library_help(section, key)
            rows.append({"section": "LoraConfig" if section == "lora" else "SFTConfig",
                         "field": key, "value": shown, "meaning": meaning})
    return pd.DataFrame(rows, columns=["section", "field", "value", "meaning"]).set_index(["section", "field"])


def run_summary_table(results: Results) -> pd.DataFrame:
    """Where and how the run trained: hardware, versions, time, throughput, parameter counts."""
    run = results.run
    hw, tr, v = run.get("hardware") or {}, run.get("training") or {}, run.get("versions") or {}
    cfg_train = results.config.get("training") or {}
    batch = cfg_train.get("per_device_train_batch_size")
    accum = cfg_train.get("gradient_accumulation_steps", 1)
    trainable, total = tr.get("trainable_params"), tr.get("total_params")
    share = f" ({100 * trainable / total:.2f}% of {fmt_params(total)})" if trainable and total else ""
    tokens, assistant = tr.get("train_tokens_per_epoch"), tr.get("train_assistant_tokens_per_epoch")
    rows = [
        ("run", f"{results.name} (config hash {run.get('config_hash', '?')})"),
        ("hardware", f"{hw.get('gpu_count', 1)} × {hw['gpu']}" if hw.get("gpu")
         else f"CPU{' (' + hw['processor'] + ')' if hw.get('processor') else ''}, {hw.get('cpu_count', '?')} cores, "
              f"{hw.get('torch_threads', '?')} torch threads"),
        ("software", ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "transformers", "peft", "trl") if v.get(k))),
        ("base model", (results.config.get("model") or {}).get("base", "?")),
        ("training conversations", fmt_count(tr.get("train_conversations"))),
        ("tokens per epoch (of which learned)",
         f"{fmt_count(tokens)} ({fmt_count(assistant)}, {100 * assistant / tokens:.0f}%)" if tokens and assistant
         else fmt_count(tokens)),
        ("epochs; optimizer steps", f"{fmt_field(tr.get('epochs'))}; {fmt_count(tr.get('global_steps'))}"),
        ("effective batch (conversations)", f"{batch * accum}" if batch else "?"),
        ("trainable parameters", f"{fmt_params(trainable)}{share}"),
        ("bf16 autocast", str(tr.get("bf16"))),
        ("mean training loss (nats/token)", fmt_value(tr.get("train_loss"), "nats")),
        ("training time", fmt_duration(tr.get("train_wall_s"))),
        ("throughput (tokens/s)", f"{tr['tokens_per_second']:,.0f}" if tr.get("tokens_per_second") else "n/a"),
        ("whole run (data + training + evaluation)", fmt_duration(run.get("wall_s"))),
    ]
    for key, seconds in (run.get("timings_s") or {}).items():
        rows.append((f"  time: {key.removesuffix('_s').replace('_', ' ')}", fmt_duration(seconds)))
    df = pd.DataFrame(rows, columns=["item", "value"]).set_index("item")
    return df


def data_steps_table(results: Results) -> pd.DataFrame:
    """The preprocessing pipeline, step by step, with the count each step left (from data_report.json)."""
    r, run = results.data_report, results.run
    cfg = results.config.get("data") or {}
    f = r.get("filters") or {}
    enc = r.get("encoding_skipped") or {}
    enc_train, enc_eval = sum((enc.get("train") or {}).values()), sum((enc.get("eval") or {}).values())
    max_length = (results.config.get("training") or {}).get("max_length")
    # trained on: the split's training conversations plus any instruction examples added to them
    n_trained = (r.get("n_train") or 0) + (((r.get("instructions") or {}).get("extra") or {}).get("n_added") or 0)
    rows = [
        ("1. read", f"records decoded from {r.get('source', '?')}", fmt_count(r.get("n_read"))),
        ("2. validate + normalize",
         f"roles mapped to user/assistant, whitespace stripped, a trailing unanswered user turn dropped "
         f"(in {fmt_count(r.get('n_trimmed'))} of them); records skipped: "
         f"{fmt_count(sum((r.get('skipped') or {}).values()))}",
         fmt_count(r.get("n_loaded"))),
        ("3. filter",
         ", ".join(f"{k}={v}" for k, v in f.items() if v is not None)
         + f"; rejected: {fmt_count(sum((r.get('rejected') or {}).values()))}",
         fmt_count(r.get("n_kept"))),
        ("4. split", f"seed {r.get('seed')}: eval drawn first, then train; unused: {fmt_count(r.get('n_unused'))}",
         f"{fmt_count(r.get('n_train'))} train + {fmt_count(r.get('n_eval'))} eval"),
        ("5. template + tokenize",
         f"Gemma-3 turn format, injection-safe encoding; longer than max_length={max_length} skipped: "
         f"{fmt_count(enc_train)} train, {fmt_count(enc_eval)} eval",
         f"{fmt_count(n_trained - enc_train)} train + {fmt_count((r.get('n_eval') or 0) - enc_eval)} eval"),
        ("6. loss mask", "labels only on reply tokens and their end-of-turn; everything else -100",
         f"{fmt_count((run.get('training') or {}).get('train_assistant_tokens_per_epoch'))} learned tokens "
         f"of {fmt_count((run.get('training') or {}).get('train_tokens_per_epoch'))}"),
    ]
    mix = r.get("instructions")
    if mix:
        added = (f"; {fmt_count(mix['extra']['n_added'])} more added, cut from conversations too long to keep"
                 if mix.get("extra") else "")
        rows.insert(4, ("4b. instruction examples",
                        f"{fmt_count(mix['n_replaced'])} training conversations rewritten to carry a verifiable "
                        f"instruction ({len(mix['per_type'])} types){added}; the held-out set is untouched",
                        f"{fmt_count(n_trained)} train + {fmt_count(r.get('n_eval'))} eval"))
    if cfg.get("limit"):
        rows[0] = (rows[0][0], rows[0][1] + f" (first {cfg['limit']:,} only)", rows[0][2])
    return pd.DataFrame(rows, columns=["step", "what happens", "left after the step"]).set_index("step")


def reasons_table(counts: dict, examples: dict | None = None) -> pd.DataFrame:
    """Skip or reject reasons with their counts and a few example record ids."""
    examples = examples or {}
    rows = [{"reason": k, "count": fmt_count(v), "example ids": ", ".join(examples.get(k, [])[:3])}
            for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]
    return pd.DataFrame(rows, columns=["reason", "count", "example ids"]).set_index("reason")


def instruction_mix_table(results: Results) -> pd.DataFrame:
    """The verifiable-instruction examples of a run: type, checks it carries (from the type name), count."""
    mix = results.data_report.get("instructions") or {}
    rows = [{"instruction type": t.replace("+", " + "), "examples": fmt_count(n)}
            for t, n in sorted((mix.get("per_type") or {}).items(), key=lambda kv: (-kv[1], kv[0]))]
    extra = mix.get("extra")
    if not extra:
        return pd.DataFrame(rows, columns=["instruction type", "examples"])
    # with `extra`: which conversations each row's examples were made from
    for row in rows:
        row["made from"] = "a training conversation (replaced)"
    rows += [{"instruction type": t.replace("+", " + "), "examples": fmt_count(n),
              "made from": "a too-long conversation, cut (added)"}
             for t, n in sorted(extra["per_type"].items(), key=lambda kv: (-kv[1], kv[0]))]
    return pd.DataFrame(rows, columns=["instruction type", "examples", "made from"])


def run_comparison_table(rows: list[dict], a_label: str, b_label: str) -> pd.DataFrame:
    """Two runs of the trained model compared prompt by prompt (`sftlab.compare.paired_run_differences`):
    per prompt set and metric, the paired difference a - b [95% interval], prompts where each is
    higher, and the reading."""
    from ..stats import verdict

    order = {"loss": 0, "heldout": 1, "ifeval": 2, "multiturn": 3}
    out = []
    for c in sorted(rows, key=lambda c: (order.get(c["set"], 9), c["metric"])):
        m = metric_spec(c["metric"], c["set"])
        out.append({
            "prompt set": SET_LABELS.get(c["set"], c["set"]),
            "metric": m.label,
            f"{a_label} − {b_label} [95% CI]": fmt_diff(c, m.kind),
            "prompts: higher / lower": (f"{c['n_a_higher']} / {c['n_b_higher']} of {c['n']}" if "n_a_higher" in c
                                        else f"pooled over {c['n']}"),
            "reading": {"better": f"{a_label} better", "worse": f"{a_label} worse", "unclear": "not separable",
                        "": "no better direction"}[verdict(c, m.better)],
        })
    return pd.DataFrame(out, columns=["prompt set", "metric", f"{a_label} − {b_label} [95% CI]",
                                      "prompts: higher / lower", "reading"])
