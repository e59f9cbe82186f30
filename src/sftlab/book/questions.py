"""The evaluation's summary tables: one metric per question (the preface and chapter 6), response
accuracy, decoding robustness, and the failure analysis's table (chapter 6)."""

from __future__ import annotations

import pandas as pd

from .catalog import label
from .formatting import fmt_ci, fmt_diff, fmt_value
from .results import Results, comparison, metric_entry



def failure_kinds_table(results: Results, system: str = "sft", only_failing: bool = True) -> pd.DataFrame:
    """Per IFEval-style check type (those the system never passes, with `only_failing`): how many
    training examples taught it, how often it passed, and what the failed replies did instead
    (sftlab.failures' rules)."""
    from ..failures import failure_table, trained_examples
    from .results import samples

    per_type = ((results.data_report or {}).get("instructions") or {}).get("per_type") or {}
    rows = []
    for kind, entry in sorted(failure_table(samples(results, "ifeval"), system).items()):
        if only_failing and entry["passed"]:
            continue
        rows.append({"check": kind, "training examples": trained_examples(per_type, kind),
                     "passed": f"{entry['passed']} of {entry['checks']}",
                     "what the reply did instead": ", ".join(f"{why} ({n})" for why, n in entry["kinds"].most_common())})
    return pd.DataFrame(rows, columns=["check", "training examples", "passed", "what the reply did instead"])


# One metric per question the evaluation asks (the preface's headline and chapter 6's summary):
# (question, where the numbers are, metric, kind). "systems" sections are metrics.json's own per-set
# entries; "qa" and "ood" are the extra sets' sections (sftlab evaluate-extra), shown once present.
QUESTIONS = (
    ("Predicts held-out replies better (loss, nats/token)", "loss", "mean_nll", "nats"),
    ("Ends its reply by itself (held-out stop rate)", "heldout", "stop_rate", "rate"),
    ("Stays in its role (held-out role-leak rate)", "heldout", "role_leak_rate", "rate"),
    ("Follows trained kinds of instructions (IFEval-style, prompt level)", "ifeval", "prompt_level", "rate"),
    ("Follows untrained kinds of instructions (prompt level)", "ood", "prompt_level", "rate"),
    ("Uses a fact from an earlier turn (multi-turn probes)", "multiturn", "prompt_level", "rate"),
    ("Says what the reference reply says (embedding similarity)", "heldout", "embedding_similarity", "score"),
    ("Answers checkable questions correctly (accuracy)", "qa", "accuracy", "rate"),
)


def _question_entry(results: Results, section: str, metric: str, system: str) -> dict | None:
    if section in ("qa", "ood"):
        return ((results.metrics.get(section) or {}).get("systems") or {}).get(system, {}).get(metric)
    return metric_entry(results, system, metric, section)


def _question_comparison(results: Results, section: str, metric: str, a: str, b: str) -> dict | None:
    if section in ("qa", "ood"):
        rows = (results.metrics.get(section) or {}).get("comparisons") or []
        return next((c for c in rows if (c["a"], c["b"], c["metric"]) == (a, b, metric)), None)
    return comparison(results, a, b, metric, section)


def question_table(results: Results, systems=("base_chat", "sft", "reference")) -> pd.DataFrame:
    """One row per question (`QUESTIONS`): each system's value [95% interval] and the paired
    differences of the SFT model from the base model with the template and from SmolLM2 on the
    same prompts. Questions whose results this run lacks are left out."""
    rows = {}
    for question, section, metric, kind in QUESTIONS:
        cells = {label(s): fmt_ci(_question_entry(results, section, metric, s), kind) for s in systems}
        if all(c == "–" for c in cells.values()):
            continue
        for other in ("base_chat", "reference"):
            c = _question_comparison(results, section, metric, "sft", other)
            cells[f"LoRA SFT − {label(other)}"] = fmt_diff(c, kind) if c else "–"
        rows[question] = cells
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "question"
    return df


def accuracy_table(results: Results, systems=("base_chat", "base_fewshot", "sft", "reference")) -> pd.DataFrame:
    """Questions with checkable answers (metrics.json's qa section): each system's accuracy [95%
    interval], the share of replies that attempt an answer, and accuracy by kind of question."""
    qa = results.metrics.get("qa") or {}
    names = {"base_fewshot": "base, few-shot plain text"}
    rows = {}
    for s in systems:
        entry = (qa.get("systems") or {}).get(s)
        if not entry:
            continue
        row = {"accuracy": fmt_ci(entry["accuracy"], "rate"), "attempts an answer": fmt_value(entry["attempt_rate"]["value"], "rate")}
        row.update({kind: fmt_value(v["value"], "rate") for kind, v in entry["per_kind"].items()})
        rows[names.get(s, label(s))] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "system"
    return df


def decoding_table(results: Results) -> pd.DataFrame:
    """Decoding robustness (metrics.json's decoding section): held-out stop rate and IFEval-style
    prompt-level accuracy of the SFT model and SmolLM2 per setting, with the paired difference."""
    dec = results.metrics.get("decoding") or {}
    names = {"greedy": "greedy, the run's limit", "greedy-400": "greedy, a longer limit", "sample-t0.7": "sampled (3 seeds)"}
    rows = []
    for setting, name in names.items():
        for metric, mname in (("heldout/stop_rate", "held-out stop rate"), ("ifeval/prompt_level", "IFEval-style prompt level")):
            cells = {"setting": name if setting != "greedy-400" else f"greedy, {dec['settings'][setting]['max_new_tokens']} tokens",
                     "metric": mname}
            for s in ("sft", "reference"):
                cells[label(s)] = fmt_ci(dec["systems"][s][setting].get(metric), "rate")
            c = next((c for c in dec.get("comparisons", []) if (c["a"], c["b"], c.get("setting"), c["metric"])
                      == ("sft", "reference", setting, metric)), None)
            cells["LoRA SFT − SmolLM2, paired"] = fmt_diff(c, "rate") if c else "–"
            rows.append(cells)
    return pd.DataFrame(rows)
