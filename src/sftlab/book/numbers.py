"""The book's variables, group by group (`GROUPS`: name -> function of the project root returning
a mapping of display strings, or None when the group's results are missing). `sftlab book
variables` writes them to `_variables.yml` (sftlab.book.variables); chapters print them with
`{{< var group.key >}}`.

Every value is a string as the prose prints it ("93%", "+17 pp [+5, +28]", "2.5e-15"), so a
sentence reads the same in the HTML, the PDF and the notebooks.
"""

from __future__ import annotations

import math
from pathlib import Path

from .results import load_results


def pct(x: float, digits: int = 0) -> str:
    """0.9333 -> "93%"; digits 1 -> "93.3%"."""
    return f"{100 * x:.{digits}f}%"


def pp(d: float, lo: float, hi: float, digits: int = 1) -> str:
    """A paired change of shares in percentage points with its interval: "+1.2 pp [+0.4, +2.0]"."""
    return f"{100 * d:+.{digits}f} pp [{100 * lo:+.{digits}f}, {100 * hi:+.{digits}f}]"


def prob(p: float) -> str:
    """A probability as the prose prints it: "0.62", "0.041", "2.5e-15"."""
    if p <= 0:
        return "0"
    if p >= 0.01:
        return f"{p:.2f}"
    if p >= 0.001:
        return f"{p:.3f}"
    exponent = math.floor(math.log10(p))
    return f"{p / 10 ** exponent:.1f}e{exponent}"


def _setting(value) -> str:
    """A recorded run condition as prose: True/False as on/off."""
    return {True: "on", False: "off"}.get(value, str(value)) if isinstance(value, bool) else str(value)


def _default(root: Path):
    return load_results("default", root=root, check=False)


def inside_numbers(root: Path) -> dict | None:
    """Chapter 7: what changed inside the model (RUN/inside.json, lora_norms.jsonl)."""
    from . import attention, lora

    results = _default(root)
    try:
        inside = attention.load_inside(results)
    except attention.InsideMissingError:
        return None
    eot = attention.eot_summary(inside)
    out = {
        "conversations": str(len(inside["conversation_ids"])),
        "first_tokens": str(inside["first_reply_tokens"]),
        "example_id": str(inside["example"]["id"]),
        "eot_end_base": prob(eot["base"]["end"]), "eot_end_sft": prob(eot["SFT"]["end"]),
        "eot_before_base": prob(eot["base"]["before"]), "eot_before_sft": prob(eot["SFT"]["before"]),
        "eot_above_half_base": pct(eot["base"]["end_above_half"]),
        "eot_above_half_sft": pct(eot["SFT"]["end_above_half"]),
        # how many powers of ten SFT added where the reply ends (the base model's is near 1e-15)
        "eot_orders_end": f"{math.log10(max(eot['SFT']['end'], 1e-300) / max(eot['base']['end'], 1e-300)):.0f}",
        "example_rule": inside["example_rule"],
    }
    split = attention.eot_by_reference_length(inside, results)
    out.update({"eot_below_half_n": str(split["below"]),
                "eot_below_half_chars": f"{split['median_chars_below']:,.0f}" if split["below"] else "n/a",
                "eot_above_half_chars": f"{split['median_chars_above']:,.0f}" if split["above"] else "n/a"})
    if inside.get("eot_row"):
        out["eot_row_change"] = pct(inside["eot_row"]["relative_change"], 0)
    for which in ("first", "all"):
        for row in attention.segment_shift(inside, which).itertuples():
            key = f"{which}_{row.segment.strip('<>').replace(' ', '_')}"
            out[f"{key}_base"], out[f"{key}_sft"] = pct(row.base, 1), pct(row.SFT, 1)
            out[f"{key}_change"] = pp(row.difference, row.lo, row.hi)
    top = attention.most_changed_layer(inside)
    out.update({"layer": str(top["layer"]), "layer_markers_base": pct(top["base"], 1),
                "layer_markers_sft": pct(top["SFT"], 1)})
    norms = lora.lora_norms_frame(results.path)
    best = norms.loc[norms["relative_norm"].idxmax()]
    by_kind = norms.groupby("kind")["relative_norm"].mean()
    by_layer = norms.groupby("layer")["relative_norm"].mean()
    out.update({"norm_max": f"{best['relative_norm']:.3f}", "norm_max_layer": str(int(best["layer"])),
                "norm_max_module": str(best["module"]), "norm_layer_max": str(int(by_layer.idxmax())),
                "norm_attention": f"{by_kind.get('attention', float('nan')):.4f}",
                "norm_mlp": f"{by_kind.get('MLP', float('nan')):.4f}"})
    return out


def _comparison(results, a: str, b: str, metric: str, set: str) -> dict | None:
    return next((c for c in results.metrics.get("comparisons", [])
                 if (c["a"], c["b"], c["metric"], c["set"]) == (a, b, metric, set)), None)


def nats(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def nats_ci(entry: dict, digits: int = 2) -> str:
    """{"value": 1.717, "ci": [1.63, 1.80]} (or mean_nll/ci) -> "1.72 [1.63, 1.80]"."""
    value = entry.get("value", entry.get("mean_nll"))
    lo, hi = entry["ci"]
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def diff_ci(c: dict, digits: int = 2, scale: float = 1.0, unit: str = "") -> str:
    """A paired difference with its interval: "-0.47 [-0.56, -0.40]"; rates with scale=100, unit=" pp"."""
    d, (lo, hi) = c["difference"] * scale, (v * scale for v in c["ci"])
    return f"{d:+.{digits}f}{unit} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def training_numbers(root: Path) -> dict:
    """Chapter 5: the run's configuration, its training log and its held-out loss."""
    import json

    results = _default(root)
    run, tr = results.run, results.run.get("training") or {}
    log = [json.loads(line) for line in (results.path / "train_log.jsonl").read_text().splitlines() if line.strip()]
    steps = [e for e in log if "loss" in e]
    evals = [e for e in log if "eval_loss" in e]
    per_epoch = {}
    for e in steps:
        per_epoch.setdefault(min(int(e["epoch"] - 1e-9), int(tr.get("epochs", 1)) - 1), []).append(e["loss"])
    loss = results.metrics["heldout_loss"]
    base, sft = loss["base_chat"], loss["sft"]
    total = lambda x: x["content_nll"]["nats"] + x["eot_nll"]["nats"]
    drop = total(base) - total(sft)
    eot_drop = base["eot_nll"]["nats"] - sft["eot_nll"]["nats"]
    best = min(evals, key=lambda e: e["eval_loss"]) if evals else None
    out = {
        "trainable": f"{tr['trainable_params'] / 1e6:.2f} M", "total": f"{tr['total_params'] / 1e6:.1f} M",
        "trainable_share": f"{100 * tr['trainable_params'] / tr['total_params']:.2f}%",
        "conversations": f"{tr['train_conversations']:,}", "epochs": f"{tr['epochs']:g}",
        "steps": str(tr["global_steps"]), "batch": str(tr["global_batch_size"]),
        "assistant_tokens": f"{tr['train_assistant_tokens_per_epoch']:,}",
        "tokens_per_second": f"{tr['tokens_per_second']:.0f}",
        "train_minutes": f"{run['timings_s']['train_s'] / 60:.0f}", "run_minutes": f"{run['wall_s'] / 60:.0f}",
        "cpu_kind": str((run.get("hardware") or {}).get("cpu_kind")), "bf16": "on" if tr.get("bf16") else "off",
        "first_loss": nats(steps[0]["loss"]), "first_lr": f"{steps[0]['learning_rate']:g}",
        "epoch1_loss": nats(sum(per_epoch[0]) / len(per_epoch[0])),
        "last_epoch_loss": nats(sum(per_epoch[max(per_epoch)]) / len(per_epoch[max(per_epoch)])),
        "heldout_base": nats_ci(base), "heldout_sft": nats_ci(sft),
        "heldout_change": diff_ci(_comparison(results, "sft", "base_chat", "mean_nll", "loss")),
        "content_base": nats_ci(base["content_nll"]), "content_sft": nats_ci(sft["content_nll"]),
        "content_change": diff_ci(_comparison(results, "sft", "base_chat", "content_nll", "loss")),
        "eot_base": nats_ci(base["eot_nll"], 1), "eot_sft": nats_ci(sft["eot_nll"], 1),
        "eot_tokens": f"{base['eot_nll']['n_tokens']:,}", "heldout_tokens": f"{base['n_tokens']:,}",
        "eot_token_share": pct(base["eot_nll"]["n_tokens"] / base["n_tokens"], 0),
        "eot_drop_share": pct(eot_drop / drop, 0),
    }
    cfg = results.config
    lora_cfg, data_cfg, train_cfg = cfg.get("lora") or {}, cfg.get("data") or {}, cfg.get("training") or {}
    out.update({"lora_r": str(lora_cfg.get("r")), "lora_alpha": f"{lora_cfg.get('lora_alpha'):g}",
                "instruction_share": pct(((data_cfg.get("instructions") or {}).get("share") or 0)),
                "learning_rate": f"{train_cfg.get('learning_rate'):.0e}".replace("e-0", "e-"),
                "loss_chunk": str(train_cfg.get("loss_chunk_size"))})
    # Chapter 2's costs of this run's LoRA, by the calculator's byte counts (sftlab.book.lora)
    from .lora import BYTES_PER_FROZEN_PARAM, BYTES_PER_TRAINED_PARAM

    trained, base_params = tr["trainable_params"], tr["total_params"] - tr["trainable_params"]
    lora_gb = (base_params * BYTES_PER_FROZEN_PARAM + trained * BYTES_PER_TRAINED_PARAM) / 1e9
    full_gb = base_params * BYTES_PER_TRAINED_PARAM / 1e9
    out.update({"memory_lora_gb": f"{lora_gb:.2f}", "memory_full_gb": f"{full_gb:.2f}",
                "memory_ratio": f"{full_gb / lora_gb:.1f}", "full_copy_mb": f"{base_params * BYTES_PER_FROZEN_PARAM / 1e6:,.0f}",
                "trained_state_ratio": f"{base_params / trained:,.0f}"})
    adapter = results.path / "adapter" / "adapter_model.safetensors"
    if adapter.is_file():
        out["adapter_mb"] = f"{adapter.stat().st_size / 1e6:.1f}"
    if (results.path / "lora_norms.jsonl").is_file():  # how far the adapter moved the weights (chapter 5's sweep)
        from .ablations import update_size

        out["update"] = f"{100 * update_size(results.path):.2f}%"
    forgot = _comparison(results, "sft", "base_chat", "mean_nll", "plain_text")
    if forgot:  # measured after the run by `sftlab evaluate-extra --sets plain_text`
        out["forgetting"] = diff_ci(forgot)
    if evals:
        out.update({"eval_first": nats(evals[0]["eval_loss"]), "eval_first_step": str(evals[0]["step"]),
                    "eval_best": nats(best["eval_loss"]), "eval_best_step": str(best["step"]),
                    "eval_best_epoch": f"{best['epoch']:.0f}", "eval_last": nats(evals[-1]["eval_loss"])})
    return out


def data_numbers(root: Path) -> dict:
    """Chapter 3: what the data report says the run read, kept and trained on."""
    results = _default(root)
    d, tr = results.data_report, results.run.get("training") or {}
    rejected, skipped = d.get("rejected") or {}, d.get("skipped") or {}
    lengths = d.get("token_lengths") or {}
    mix = d.get("instructions") or {}
    n = lambda x: f"{x:,}"
    out = {
        "read": n(d["n_read"]), "valid": n(d["n_loaded"]), "skipped": n(sum(skipped.values())),
        "first_not_user": n(skipped.get("first_not_user", 0)),
        "kept": n(d["n_kept"]), "kept_share_of_valid": pct(d["n_kept"] / d["n_loaded"], 0),
        "train": n(d["n_train"]), "heldout": n(d["n_eval"]),
        "too_long": n(rejected.get("too_many_tokens", 0)), "too_many_turns": n(rejected.get("too_many_turns", 0)),
        "too_long_share": pct(rejected.get("too_many_tokens", 0) / d["n_filter_input"], 0),
        "short_prompt": n(rejected.get("prompt_too_short", 0)), "needs_context": n(rejected.get("prompt_needs_context", 0)),
        "duplicates": n(rejected.get("duplicate_prompt", 0) + rejected.get("duplicate_conversation", 0)),
        "not_english": n(rejected.get("not_english", 0)),
        "max_tokens": n((results.config.get("data") or {}).get("max_tokens") or 0),
        "median_tokens": n(round(lengths.get("median", 0))) if lengths.get("median") is not None else "n/a",
        "trained": n(tr.get("train_conversations", d["n_train"])),
        "encoding_skipped": n(sum(sum(v.values()) for v in (d.get("encoding_skipped") or {}).values())),
    }
    if mix:
        out.update({"instruction_examples": n(mix["n_replaced"]), "instruction_types": n(len(mix["per_type"])),
                    "instruction_share": pct(mix["n_replaced"] / mix["n_conversations"], 0),
                    "instruction_failed": n(sum(mix.get("skipped", {}).values()))})
    return out


def failures_numbers(root: Path) -> dict:
    """Chapter 6's failure analysis: what the trained model writes instead, on the instruction types
    it never passes, and the habits behind it (sftlab.failures, on samples.jsonl)."""
    from ..data.instructions import VALUES
    from ..failures import failure_table, numbered_lines, reply_failure_counts, trained_examples, wrapped_in_quotes
    from .results import samples

    results = _default(root)
    ifeval = samples(results, "ifeval")
    per_type = ((results.data_report or {}).get("instructions") or {}).get("per_type") or {}
    table = failure_table(ifeval)
    out = {}
    for kind, entry in table.items():
        key = kind
        out[f"{key}_passed"] = f"{entry['passed']} of {entry['checks']}"
        out[f"{key}_checks"] = str(entry["checks"])
        out[f"{key}_trained"] = str(trained_examples(per_type, kind))
        for why, n in entry["kinds"].items():
            out[f"{key}_{why.replace(' ', '_')}"] = str(n)
        out[f"{key}_numbered_right_count"] = str(entry["numbered_right_count"])
    never = sorted(k for k, e in table.items() if e["passed"] == 0)
    out["never_passed"] = ", ".join(f"`{k}`" for k in never)
    out["never_passed_n"] = str(len(never))
    out["never_passed_min_trained"] = str(min((trained_examples(per_type, k) for k in never), default=0))
    for system in ("sft", "reference", "base_chat"):
        replies = [r["replies"][system]["text"] for r in ifeval if system in r["replies"]]
        out[f"quoted_{system}"] = f"{sum(map(wrapped_in_quotes, replies))} of {len(replies)}"
        out[f"numbered_{system}"] = f"{sum(numbered_lines(t) >= 2 for t in replies)} of {len(replies)}"
    out["quotation_prompts"] = str(sum(any(c["type"] == "quotation" for c in r["checks"]) for r in ifeval))
    out["quotation_trained"] = str(trained_examples(per_type, "quotation"))
    out["closers_n"] = str(len(VALUES["closers"]))
    out["closers"] = ", ".join(f'"{c}"' for c in VALUES["closers"][:3])
    for set_ in ("heldout", "ifeval"):
        for system in ("sft", "reference"):
            cats = results.metrics["systems"][system][set_].get("categories") or {}
            out[f"loops_{set_}_{system}"] = f"{cats.get('loop', 0)} of {sum(cats.values())}"
    heldout = samples(results, "heldout")
    for system in ("sft", "reference", "base_chat"):  # held-out replies that speak as the user, or only offer help
        n = reply_failure_counts(heldout, system)
        out[f"speaks_{system}"] = f"{n['speaks']} of {n['replies']}"
        out[f"offers_{system}"] = f"{n['offers']} of {n['replies']}"
    return out


# Short keys for questions.QUESTIONS, in its order.
QUESTION_KEYS = ("loss", "stop", "leaks", "ifeval", "ood", "multiturn", "similarity", "qa")


def evaluation_numbers(root: Path) -> dict:
    """Chapter 6 and the preface: every question's value per system and the paired differences of the
    SFT model from the base model (with the template) and from SmolLM2 (`questions.QUESTIONS`)."""
    from ..stats import verdict
    from .formatting import fmt_ci, fmt_diff
    from .questions import QUESTIONS, _question_comparison, _question_entry

    import yaml

    from ..compare import paired_run_differences

    results = _default(root)
    cfg = results.config.get("evaluation") or {}
    m = results.metrics["systems"]
    out = {"heldout_n": str(m["sft"]["heldout"]["stop_rate"]["n"]), "ifeval_n": str(m["sft"]["ifeval"]["n_prompts"]),
           "multiturn_n": str(m["sft"]["multiturn"]["n_prompts"]), "max_new_tokens": str(cfg.get("max_new_tokens")),
           "ifeval_types": str(len(m["sft"]["ifeval"]["per_type"]))}
    # how wide the intervals of the rates are: held-out stop rate and IFEval prompt level, every system
    widths = [100 * (e["ci"][1] - e["ci"][0]) for s in m.values() for set_, key in (("heldout", "stop_rate"),
              ("ifeval", "prompt_level")) if (e := (s.get(set_) or {}).get(key)) and e.get("ci")]
    out["ci_width_min"], out["ci_width_max"] = f"{min(widths):.0f}", f"{max(widths):.0f}"
    for set_ in ("heldout", "ifeval"):
        for system, name in (("base_chat", "base"), ("sft", "sft"), ("reference", "ref")):
            cats = m[system][set_].get("categories") or {}
            for cat in ("answer", "echo", "loop", "cut", "deflection"):
                out[f"{set_}_{cat}_{name}"] = f"{cats.get(cat, 0)} of {sum(cats.values())}"
    published = yaml.safe_load((Path(__file__).resolve().parents[1] / "prompts" / "published.yaml").read_text())
    for entry in published:
        out["published_" + entry["model"].split("/")[-1].lower().replace("-", "_").replace(".", "_")] = f"{entry['value']:.1f}%"
    other = results.path.parent / f"{results.name}-no-instructions"
    if (other / "samples.jsonl").is_file():
        for r in paired_run_differences(results.path, other, "sft"):
            if (r["set"], r["metric"]) in (("ifeval", "prompt_level"), ("heldout", "stop_rate"),
                                           ("multiturn", "prompt_level"), ("loss", "mean_nll")):
                kind = "nats" if r["set"] == "loss" else "rate"
                out[f"instructions_{r['set']}_{r['metric']}"] = fmt_diff(r, kind)
        no_instr = load_results(other.name, root=root, check=False).metrics["systems"]["sft"]["ifeval"]["prompt_level"]
        out["no_instructions_ifeval"] = fmt_ci(no_instr, "rate")
        from ..compare import condition_differences

        shown = {"hardware.cpu_kind": "CPU kind", "training.bf16": "bf16 autocast"}
        diffs = [d for d in condition_differences(results.path, other) if d["key"] in shown]
        out["no_instructions_conditions"] = ("; ".join(f"{shown[d['key']]} {_setting(d['b'])} there, {_setting(d['a'])} here" for d in diffs)
                                             or "nothing else")
    for key, (_, section, metric, kind) in zip(QUESTION_KEYS, QUESTIONS):
        for system, name in (("base_chat", "base"), ("sft", "sft"), ("reference", "ref"), ("base_fewshot", "fewshot")):
            entry = _question_entry(results, section, metric, system)
            if entry and entry.get("value") is not None:
                out[f"{key}_{name}"] = fmt_ci(entry, kind)
        better = "lower" if metric in ("mean_nll", "role_leak_rate") else "higher"
        for other, name in (("base_chat", "vs_base"), ("reference", "vs_ref")):
            c = _question_comparison(results, section, metric, "sft", other)
            if c:
                out[f"{key}_{name}"] = fmt_diff(c, kind)
                out[f"{key}_{name}_reading"] = {"better": "better", "worse": "worse", "unclear": "not separable",
                                                "": "no direction"}[verdict(c, better)]
    return out


def ablations_numbers(root: Path) -> dict:
    """Chapter 5's sweep: how many of configs/ablations.yaml's runs are finished in results/."""
    import json

    from ..sweep import load_sweep

    sweep = load_sweep(root / "configs" / "ablations.yaml")
    results = root / sweep["results"]
    done = [n for n in sweep["recipes"] if (results / n / "run.json").is_file()]
    missing = [n for n in sweep["recipes"] if n not in done]
    control = sweep["recipes"]["control"]  # the default recipe under the sweep's budget
    out = {"total": str(len(sweep["recipes"])), "finished": str(len(done)),
           "budget_conversations": str(control["data"]["train_size"]),
           "budget_epochs": f"{control['training']['num_train_epochs']:g}",
           "missing": ", ".join(f"`{n}`" for n in missing) if missing else "none",
           "variants": str(len(sweep["recipes"]) - 1)}
    control_run = results / "control" / "run.json"
    if control_run.is_file():
        out["budget_steps"] = str(json.loads(control_run.read_text())["training"]["global_steps"])
    out.update(ablation_values(results))
    return out


# Short names of the ablation metrics in the variables: {{< var ablations.no_eot_row_stop >}}.
ABLATION_KEYS = {("loss", "mean_nll"): "loss", ("heldout", "stop_rate"): "stop", ("ifeval", "prompt_level"): "ifeval",
                 ("multiturn", "prompt_level"): "multiturn", ("qa", "accuracy"): "qa", ("ood", "prompt_level"): "ood",
                 ("heldout", "role_leak_rate"): "leak", ("heldout", "reply_length"): "length",
                 ("plain_text", "mean_nll"): "plain", ("ifeval", "stop_rate"): "ifeval_stop",
                 ("qa", "stop_rate"): "qa_stop", ("ood", "stop_rate"): "ood_stop",
                 ("loss", "eot_nll"): "eot"}


def ablation_values(results: Path) -> dict:
    """Each finished variant's paired difference from the control per metric ("+5 pp [-3, +12]"),
    the control's own values ("73% [56%, 86%]"), each run's forgetting and training minutes."""
    from . import ablations
    from .catalog import metric_spec
    from .formatting import fmt_ci, fmt_diff

    summary = ablations.load_summary(results)
    control = ablations.load_control_metrics(results)
    if summary is None or control is None:
        return {}
    out = {}
    for (set_, metric), short in ABLATION_KEYS.items():
        kind = metric_spec(metric, set_).kind
        entry = ablations.control_value(control, set_, metric)
        if entry is not None:
            out[f"control_{short}"] = fmt_ci(entry, kind)
        for row in summary["variants"]:
            d = ablations._difference(row, set_, metric)
            if d is not None and row["variant"] != "control":
                out[f"{row['variant'].replace('-', '_')}_{short}"] = fmt_diff(d, kind)
    by_name = {r["variant"]: r for r in summary["variants"]}
    control_size = None  # the control's update size, read once where a variant needs it
    if "no-eot-row" in by_name:
        out["eot_row_params"] = f"{by_name['control']['trainable_params'] - by_name['no-eot-row']['trainable_params']:,}"
    for row in summary["variants"]:
        name = row["variant"].replace("-", "_")
        if row["forgetting"]:
            out[f"{name}_forgetting"] = fmt_diff(row["forgetting"][0], "nats")
        if row.get("train_s") is not None:
            out[f"{name}_train_min"] = f"{row['train_s'] / 60:.0f}"
        out[f"{name}_params"] = f"{row['trainable_params']:,}"
        if (results / row["variant"] / "lora_norms.jsonl").is_file():  # how far the adapter moved the weights
            size = ablations.update_size(results / row["variant"])
            control_size = control_size or ablations.update_size(results / "control")
            out[f"{name}_update"] = f"{100 * size:.2f}%"
            out[f"{name}_update_ratio"] = f"{size / control_size:.1f}"
    return out


def accuracy_numbers(root: Path) -> dict | None:
    """Chapter 6's response accuracy, untrained instructions, official checkers, judge and decoding
    robustness (metrics.json's qa, ood, official_ifeval, judge and decoding sections)."""
    from .formatting import fmt_ci, fmt_diff

    results = _default(root)
    m = results.metrics
    if "qa" not in m:
        return None
    qa, out = m["qa"], {}
    out.update({"qa_n": str(qa["n_items"]), "qa_tokens": str(qa.get("max_new_tokens")),
                "qa_kinds": str(len(qa["kinds"]))})
    for system, name in (("base_continuation", "plain"), ("base_chat", "base"), ("sft", "sft"),
                         ("reference", "ref"), ("base_fewshot", "fewshot")):
        entry = qa["systems"].get(system)
        if not entry:
            continue
        out[f"qa_{name}"] = fmt_ci(entry["accuracy"], "rate")
        out[f"qa_attempt_{name}"] = pct(entry["attempt_rate"]["value"])
        for kind, rate in entry["per_kind"].items():
            out[f"qa_{kind}_{name}"] = pct(rate["value"])
    for c in qa["comparisons"]:
        if c["metric"] == "accuracy":
            out[f"qa_{c['a']}_vs_{c['b']}"] = fmt_diff(c, "rate")
    if "ood" in m:
        ood = m["ood"]
        out.update({"ood_n": str(ood["n_prompts"]), "ood_types": str(len(ood["types"]))})
        for system, name in (("base_chat", "base"), ("sft", "sft"), ("reference", "ref")):
            out[f"ood_{name}"] = fmt_ci(ood["systems"][system]["prompt_level"], "rate")
        for c in ood["comparisons"]:
            if c["metric"] == "prompt_level":
                out[f"ood_{c['a']}_vs_{c['b']}"] = fmt_diff(c, "rate")
        sft_types = ood["systems"]["sft"]["per_type"]
        out["ood_sft_zero_types"] = str(sum(1 for v in sft_types.values() if v["value"] == 0))
    official = (m.get("official_ifeval") or {}).get("ifeval_with_official_checkers")
    if official:
        for system, name in (("sft", "sft"), ("reference", "ref")):
            out[f"official_{name}"] = fmt_ci(official["systems"][system]["prompt_level"], "rate")
        for c in official["comparisons"]:
            out[f"official_{c['a']}_vs_{c['b']}"] = fmt_diff(c, "rate")
        out["official_types"] = str(sum(1 for v in official["checker"].values() if v == "official"))
    out["official_note"] = (m.get("official_ifeval") or {}).get("note", "not run")
    out["judge_note"] = (m.get("judge") or {}).get("note", "not run")
    dec = m.get("decoding")
    if dec:
        out.update({"decoding_heldout_n": str(dec["n_prompts"]["heldout"]), "decoding_ifeval_n": str(dec["n_prompts"]["ifeval"]),
                    "decoding_long": str(dec["settings"]["greedy-400"]["max_new_tokens"]),
                    "decoding_temperature": f"{dec['settings']['sample-t0.7-seed1']['temperature']:g}"})
        for system, name in (("sft", "sft"), ("reference", "ref")):
            for setting, sname in (("greedy", "greedy"), ("greedy-400", "long"), ("sample-t0.7", "sampled")):
                for metric, mname in (("heldout/stop_rate", "stop"), ("ifeval/prompt_level", "ifeval")):
                    entry = dec["systems"][system][setting].get(metric)
                    if entry:
                        out[f"decoding_{mname}_{sname}_{name}"] = pct(entry["value"])
        for c in dec["comparisons"]:
            if (c["a"], c["b"]) == ("sft", "reference") and c.get("setting") in ("greedy", "greedy-400", "sample-t0.7"):
                sname = {"greedy": "greedy", "greedy-400": "long", "sample-t0.7": "sampled"}[c["setting"]]
                mname = {"heldout/stop_rate": "stop", "ifeval/prompt_level": "ifeval", "ifeval/stop_rate": "ifeval_stop"}[c["metric"]]
                out[f"decoding_{mname}_{sname}_vs_ref"] = fmt_diff(c, "rate")
    return out


def preference_numbers(root: Path) -> dict | None:
    """Chapter 6's "Beyond SFT" (`sftlab.book.preference.book_numbers`)."""
    from .preference import book_numbers

    return book_numbers(root)

GROUPS = {
    "preference": preference_numbers,
    "accuracy": accuracy_numbers,
    "ablations": ablations_numbers,
    "evaluation": evaluation_numbers,
    "data": data_numbers,
    "training": training_numbers,
    "inside": inside_numbers,
    "failures": failures_numbers,
}
