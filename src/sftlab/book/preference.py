"""Beyond SFT: the preference stage (`sftlab.preference`) shown in chapter 6.

Reads the finished preference runs (results/preference-dpo and results/preference-rft, the same
SFT model, prompts and samples, two ways of learning from them) and gives the chapter its
tables and figures: how often the SFT model's own samples passed their checks before the stage,
how the pairs were made, DPO's training curves, each method's model against the SFT model and
SmolLM2 on the same prompts, and the prompts shown side by side, picked by a stated rule.
"""

from __future__ import annotations

import json
from pathlib import Path

import altair as alt
import pandas as pd

from ..stats import verdict
from .catalog import metric_spec
from .formatting import fmt_ci, fmt_diff
from .results import Results, comparison, load_results, metric_entry, project_root, samples

RUNS = {"dpo": "preference-dpo", "rft": "preference-rft"}  # results/NAME, by method
METHOD_LABELS = {"dpo": "DPO", "rft": "RFT"}
METHOD_NAMES = {"dpo": "DPO on preference pairs", "rft": "rejection-sampling fine-tuning (SFT on the chosen replies)"}

# (set, metric) compared before and after the stage, in the table's order.
COMPARED = [("ifeval", "prompt_level"), ("heldout", "stop_rate"), ("heldout", "role_leak_rate"),
            ("multiturn", "prompt_level"), ("heldout", "reply_length"), ("loss", "mean_nll"),
            ("plain_text", "mean_nll")]
ROW_LABELS = {("ifeval", "prompt_level"): "IFEval-style prompt level", ("heldout", "stop_rate"): "held-out stop rate",
              ("heldout", "role_leak_rate"): "held-out role-leak rate", ("multiturn", "prompt_level"): "multi-turn recall",
              ("heldout", "reply_length"): "held-out reply length (words)",
              ("loss", "mean_nll"): "held-out loss (nats/token)", ("plain_text", "mean_nll"): "plain-text loss (nats/token)"}


def load_runs(root: str | Path | None = None) -> dict[str, Results]:
    """The finished preference runs, by method ("dpo", "rft"); {} when none has run."""
    root = Path(root) if root is not None else project_root()
    out = {}
    for method, name in RUNS.items():
        if (root / "results" / name / "run.json").is_file():
            run = load_results(name, root=root, check=False)
            if (run.run.get("preference") or {}).get("method") != method:
                raise ValueError(f"results/{name} holds a {run.run.get('preference', {}).get('method')!r} run, "
                                 f"not {method!r}: the book reads each method from its own folder")
            out[method] = run
    return out


def load_pairs_report(run: Results) -> dict:
    return json.loads((run.path / "pairs_report.json").read_text())


def pass_rates_table(report: dict) -> pd.DataFrame:
    """Each check of the instruction prompts: how many of the SFT model's samples carried it and how
    many passed, before the stage trained on anything; lowest pass rate first."""
    rows = [{"check": check, "samples": e["samples"], "passed": e["passed"], "pass rate": 100.0 * e["rate"]}
            for check, e in report["instruction"]["per_check"].items()]
    return pd.DataFrame(rows).sort_values(["pass rate", "check"]).reset_index(drop=True)


def chart_pass_rates(report: dict) -> alt.Chart:
    """The SFT model's own samples before the stage: the share that passes each check, one bar per
    check, with the number of samples that carried it."""
    table = pass_rates_table(report)
    table["label"] = table["passed"].astype(str) + " of " + table["samples"].astype(str)
    base = alt.Chart(table).encode(y=alt.Y("check:N", sort=list(table["check"]), title=None))
    bars = base.mark_bar(color="#0072b2").encode(
        x=alt.X("pass rate:Q", title="samples that pass the check (%)", scale=alt.Scale(domain=[0, 100])),
        tooltip=["check", "samples", "passed", alt.Tooltip("pass rate:Q", format=".0f")])
    text = base.mark_text(align="left", dx=3, fontSize=10).encode(x="pass rate:Q", text="label:N")
    return (bars + text).properties(width=420, height=14 * len(table))


def pairs_by_type_table(report: dict) -> pd.DataFrame:
    """Each instruction type (one or two checks) of the prompt pool: prompts, samples that pass,
    pairs made, how many of those have a repaired chosen reply, and the prompts dropped, by reason."""
    rows = []
    for kind, e in report["instruction"]["per_type"].items():
        rows.append({"instruction type": kind, "prompts": e["prompts"], "passing samples": f"{e['passing']} of {e['samples']}",
                     "pairs": e["pairs"], "repaired": e["repaired"],
                     "dropped": ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(e["dropped"].items()))})
    return pd.DataFrame(rows)


def training_frame(run: Results) -> pd.DataFrame:
    """The stage's training log (preference_train_log.jsonl), one row per logged step."""
    path = run.path / "preference_train_log.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame([r for r in rows if "loss" in r and "step" in r])


def chart_training(run: Results) -> alt.Chart:
    """DPO's curves that matter: the reward margin (chosen minus rejected, in units of beta times
    the log-ratio to the reference), the share of pairs whose chosen reply gets the higher reward,
    and the policy's log-probability of the chosen and rejected replies."""
    log = training_frame(run)
    panels = {"reward margin": ["rewards/margins"], "pairs ranked right": ["rewards/accuracies"],
              "log-probability of the reply": ["logps/chosen", "logps/rejected"]}
    names = {"rewards/margins": "margin", "rewards/accuracies": "share ranked right",
             "logps/chosen": "chosen", "logps/rejected": "rejected"}
    missing = [c for cols in panels.values() for c in cols if c not in log]
    if missing:
        raise KeyError(f"{run.path / 'preference_train_log.jsonl'} has no {', '.join(missing)}: is it a DPO run?")
    charts = []
    for title, cols in panels.items():
        long = log.melt(id_vars=["step"], value_vars=cols, var_name="series", value_name="value")
        long["series"] = long["series"].map(names)
        charts.append(alt.Chart(long, title=title).mark_line(point=True).encode(
            x=alt.X("step:Q", title="optimizer step"), y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
            color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom") if len(cols) > 1 else None),
            tooltip=["step", "series", alt.Tooltip("value:Q", format=".3f")]).properties(width=170, height=150))
    return alt.hconcat(*charts)


def _system_value(run: Results, system: str, set_: str, metric: str) -> dict | None:
    return metric_entry(run, system, metric, set_)


def stage_comparison(run: Results, b: str, set_: str, metric: str) -> dict | None:
    """The run's paired difference "preference" minus `b` ("sft" or "reference") on one metric."""
    return comparison(run, "preference", b, metric, set_)


def before_after_table(runs: dict[str, Results]) -> pd.DataFrame:
    """Before and after the stage on the same prompts: the SFT model, each method's model with its
    paired difference from the SFT model, and SmolLM2 (rates in %, differences in points)."""
    first = next(iter(runs.values()))
    rows = []
    for set_, metric in COMPARED:
        kind = metric_spec(metric, set_).kind
        row = {"metric": ROW_LABELS[(set_, metric)], "LoRA SFT": fmt_ci(_system_value(first, "sft", set_, metric), kind)}
        for method, run in runs.items():
            row[METHOD_LABELS[method]] = fmt_ci(_system_value(run, "preference", set_, metric), kind)
            row[f"{METHOD_LABELS[method]} − SFT"] = fmt_diff(stage_comparison(run, "sft", set_, metric), kind)
        row["SmolLM2"] = fmt_ci(_system_value(first, "reference", set_, metric), kind)
        rows.append(row)
    return pd.DataFrame(rows)


def decision(run: Results) -> dict:
    """The adoption rule of issue 28, decided before the runs: the stage replaces the SFT-only
    default when its IFEval-style prompt level beats the SFT model's by a paired interval above 0
    and neither its held-out stop rate nor its role-leak rate gets worse by an interval that
    excludes 0."""
    ifeval = stage_comparison(run, "sft", "ifeval", "prompt_level")
    stop = stage_comparison(run, "sft", "heldout", "stop_rate")
    leak = stage_comparison(run, "sft", "heldout", "role_leak_rate")
    missing = [n for n, c in (("IFEval", ifeval), ("stop rate", stop), ("role leaks", leak)) if c is None]
    if missing:
        raise KeyError(f"{run.path / 'metrics.json'} has no preference - sft comparison for {', '.join(missing)}")
    gain = verdict(ifeval, "higher") == "better"
    kept = verdict(stop, "higher") != "worse" and verdict(leak, "lower") != "worse"
    return {"ifeval": ifeval, "stop": stop, "leak": leak, "gain": gain, "kept": kept, "adopted": gain and kept}


def best_method(runs: dict[str, Results]) -> str:
    """The method whose model has the higher IFEval-style prompt level (the cheaper one, RFT, on a tie)."""
    def key(method):
        return (_system_value(runs[method], "preference", "ifeval", "prompt_level")["value"], method == "rft")

    return max(runs, key=key)


def _passed(reply: dict | None) -> bool:
    return bool(reply) and bool(reply.get("checks_passed")) and all(reply["checks_passed"])


def shown_ids(run: Results) -> list[str]:
    """The IFEval-style prompts shown side by side, by rule: the first (in the evaluation's order)
    that the stage's model passes and the SFT model fails, and the first the other way round; where
    either does not exist, the first prompt whose two replies differ."""
    rows = samples(run, "ifeval")
    win = next((r for r in rows if _passed(r["replies"].get("preference")) and not _passed(r["replies"].get("sft"))), None)
    loss = next((r for r in rows if _passed(r["replies"].get("sft")) and not _passed(r["replies"].get("preference"))), None)
    picked = [r for r in (win, loss) if r is not None]
    if len(picked) < 2:
        differ = [r for r in rows if r not in picked
                  and r["replies"].get("preference", {}).get("text") != r["replies"].get("sft", {}).get("text")]
        picked += differ[:2 - len(picked)]
    return [str(r["id"]) for r in picked]


def wins_and_losses(run: Results) -> dict:
    """On the IFEval-style prompts: how many the stage's model passes that the SFT model fails, and
    the other way round (the discordant pairs behind the paired difference)."""
    rows = samples(run, "ifeval")
    won = sum(_passed(r["replies"].get("preference")) and not _passed(r["replies"].get("sft")) for r in rows)
    lost = sum(_passed(r["replies"].get("sft")) and not _passed(r["replies"].get("preference")) for r in rows)
    return {"won": won, "lost": lost, "n": len(rows)}


def book_numbers(root: Path) -> dict | None:
    """Chapter 6's "Beyond SFT": the preference runs' samples, pairs, training and paired results
    (`sftlab.book.preference`); None when no preference run is finished."""
    import sys

    from .numbers import pct

    P = sys.modules[__name__]

    runs = P.load_runs(root)
    if not runs:
        return None
    first = next(iter(runs.values()))
    report = P.load_pairs_report(first)
    ins, settings = report["instruction"], report["settings"]
    rates = P.pass_rates_table(report)
    out = {"samples_n": str(report["samples"]["n"]), "samples_per_prompt": str(settings["samples"]),
           "temperature": f"{settings['temperature']:g}", "max_new_tokens": str(settings["max_new_tokens"]),
           "prompts_instruction": str(report["prompts"]["instruction"]), "prompts_plain": str(report["prompts"]["plain"]),
           "sample_pass_rate": pct(ins["passing"] / ins["samples"]), "sample_passing": f"{ins['passing']} of {ins['samples']}",
           "sample_stop_rate": pct(report["samples"]["stop_rate"]), "sample_usable_rate": pct(report["samples"]["usable_rate"]),
           "checks_n": str(len(rates)),
           "zero_checks": ", ".join(f"`{c}`" for c in rates.loc[rates["passed"] == 0, "check"]) or "none",
           "zero_checks_n": str(int((rates["passed"] == 0).sum())),
           "pairs_n": str(report["pairs"]["n"]), "pairs_instruction": str(report["pairs"]["by_kind"].get("instruction", 0)),
           "pairs_plain": str(report["pairs"]["by_kind"].get("plain", 0)), "repaired": str(report["pairs"]["repaired"]),
           "repaired_share": pct(report["pairs"]["repaired"] / max(1, report["pairs"]["n"])),
           "rejected_not_stopped": str(report["pairs"].get("rejected_not_stopped", 0)),
           "dropped_n": str(sum(report["dropped"].values())),
           "dropped": "; ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in
                                sorted(report["dropped"].items(), key=lambda kv: -kv[1])) or "none",
           "rft_n": str(report["rft"]["n"]), "rft_repaired": str(report["rft"]["by_chosen_kind"].get("repaired", 0)),
           "sft_ifeval": fmt_ci(P._system_value(first, "sft", "ifeval", "prompt_level"), "rate"),
           "ref_ifeval": fmt_ci(P._system_value(first, "reference", "ifeval", "prompt_level"), "rate"),
           "cpu_kind": str((first.run.get("hardware") or {}).get("cpu_kind"))}
    for row in rates.itertuples():
        out[f"check_{row.check}"] = f"{row.passed} of {row.samples}"
    for method, run in runs.items():
        m = method
        out[f"{m}_ifeval"] = fmt_ci(P._system_value(run, "preference", "ifeval", "prompt_level"), "rate")
        out[f"{m}_stop"] = fmt_ci(P._system_value(run, "preference", "heldout", "stop_rate"), "rate")
        out[f"{m}_leak"] = fmt_ci(P._system_value(run, "preference", "heldout", "role_leak_rate"), "rate")
        for b, bname in (("sft", "sft"), ("reference", "ref")):
            for (set_, metric), key in ((("ifeval", "prompt_level"), "ifeval"), (("heldout", "stop_rate"), "stop"),
                                        (("heldout", "role_leak_rate"), "leak"), (("multiturn", "prompt_level"), "multiturn"),
                                        (("loss", "mean_nll"), "loss"), (("plain_text", "mean_nll"), "plain"),
                                        (("heldout", "reply_length"), "length")):
                c = P.stage_comparison(run, b, set_, metric)
                if c is not None:
                    kind = "nats" if set_ in ("loss", "plain_text") else ("length" if metric == "reply_length" else "rate")
                    out[f"{m}_{key}_vs_{bname}"] = fmt_diff(c, kind)
        d = P.decision(run)
        out[f"{m}_decision"] = "adopted" if d["adopted"] else "not adopted"
        wl = P.wins_and_losses(run)
        out[f"{m}_won"], out[f"{m}_lost"] = str(wl["won"]), str(wl["lost"])
        t = run.run.get("timings_s") or {}
        stage = t.get("pref_sample_s", 0) + t.get("pref_pairs_s", 0) + t.get("pref_train_s", 0)
        out[f"{m}_sample_min"] = f"{t.get('pref_sample_s', 0) / 60:.0f}"
        out[f"{m}_train_min"] = f"{t.get('pref_train_s', 0) / 60:.0f}"
        out[f"{m}_stage_min"] = f"{stage / 60:.0f}"
        out[f"{m}_steps"] = str((run.run["preference"].get("training") or {}).get("global_steps"))
    if "dpo" in runs:
        log = P.training_frame(runs["dpo"])
        if "rewards/margins" in log:
            last = log.tail(max(1, len(log) // 4))  # the last quarter of the steps
            out.update({"dpo_margin_end": f"{last['rewards/margins'].mean():.2f}",
                        "dpo_accuracy_end": pct(last["rewards/accuracies"].mean()),
                        "dpo_chosen_start": f"{log['logps/chosen'].iloc[0]:.0f}",
                        "dpo_chosen_end": f"{last['logps/chosen'].mean():.0f}",
                        "dpo_rejected_start": f"{log['logps/rejected'].iloc[0]:.0f}",
                        "dpo_rejected_end": f"{last['logps/rejected'].mean():.0f}",
                        "dpo_beta": f"{runs['dpo'].run['preference']['training'].get('beta'):g}"})
    best = P.best_method(runs)
    out["best"] = P.METHOD_LABELS[best]
    out["best_ifeval_vs_ref"] = out.get(f"{best}_ifeval_vs_ref", "n/a")
    return out
