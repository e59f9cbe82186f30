"""The claims chapter 5 makes about the ablation sweep (results/ablations), each checked against
the committed runs; `sftlab.book.claims` holds the book's other claims and the marker rules."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def _sweep(root: Path) -> dict:
    from .ablations import load_summary

    summary = load_summary(root / "results" / "ablations")
    if summary is None:
        raise FileNotFoundError(f"{root / 'results' / 'ablations' / 'summary.json'} is missing: run the sweep")
    return {r["variant"]: r for r in summary["variants"]}


def _ablation(root: Path, variant: str, set_: str, metric: str) -> str:
    """How variant - control reads on one metric: "better", "worse", "unclear" (or "missing")."""
    from ..stats import verdict
    from .ablations import _difference
    from .catalog import metric_spec

    d = _difference(_sweep(root)[variant], set_, metric)
    return verdict(d, metric_spec(metric, set_).better) if d else "missing"


def the_eot_row_teaches_stopping(root: Path) -> bool:
    """Without the trained row: stop rate and multi-turn recall worse, loss worse, replies longer (all
    intervals excluding 0); IFEval-style prompt level and question accuracy not separable."""
    from .ablations import _difference

    row = _sweep(root)["no-eot-row"]
    return (_ablation(root, "no-eot-row", "heldout", "stop_rate") == "worse"
            and _ablation(root, "no-eot-row", "multiturn", "prompt_level") == "worse"
            and _ablation(root, "no-eot-row", "loss", "mean_nll") == "worse"
            and _difference(row, "heldout", "reply_length")["ci"][0] > 0
            and _ablation(root, "no-eot-row", "ifeval", "prompt_level") == "unclear"
            and _ablation(root, "no-eot-row", "qa", "accuracy") == "unclear")


def prompt_loss_costs_replies_and_prose(root: Path) -> bool:
    """Loss on every token: held-out reply loss and plain-text loss worse (intervals above 0); stop
    rate and IFEval-style prompt level not separable."""
    v = "full-sequence-loss"
    return (_ablation(root, v, "loss", "mean_nll") == "worse" and _ablation(root, v, "plain_text", "mean_nll") == "worse"
            and _ablation(root, v, "heldout", "stop_rate") == "unclear"
            and _ablation(root, v, "ifeval", "prompt_level") == "unclear")


INSTRUCTION_MIXES = ("no-instructions", "fewer-instructions", "all-instructions", "binding-limits")


def instruction_mixes_not_separable(root: Path) -> bool:
    """No change of the instruction mix moves IFEval-style prompt level or question accuracy by an
    interval that excludes 0, and every one has a higher held-out loss than the control."""
    return all(_ablation(root, v, "ifeval", "prompt_level") == "unclear" and _ablation(root, v, "qa", "accuracy") == "unclear"
               and _ablation(root, v, "loss", "mean_nll") == "worse" for v in INSTRUCTION_MIXES)


def _update_frame(root: Path):
    from .ablations import load_summary, update_frame

    folder = root / "results" / "ablations"
    return update_frame(load_summary(folder), folder).set_index("variant")


def forgetting_follows_the_update(root: Path) -> bool:
    """Over lower-lr, rank-4, control, two-epochs and rank-64 (the runs that differ only in how far
    the adapter moves, all its modules kept), forgetting rises with the update size; rank-64 forgets
    most of every run in the sweep; and the rise from the control up is over three times as steep
    as the rise up to it."""
    f = _update_frame(root)
    order = f.loc[["lower-lr", "rank-4", "control", "two-epochs", "rank-64"]].sort_values("update")
    slope = lambda a, b: (f.loc[b, "forgetting"] - f.loc[a, "forgetting"]) / (f.loc[b, "update"] - f.loc[a, "update"])
    most = max(_sweep(root).values(), key=lambda r: r["forgetting"][0]["difference"] if r["forgetting"] else -1)
    return (bool(order["forgetting"].is_monotonic_increasing) and most["variant"] == "rank-64"
            and slope("control", "rank-64") > 3 * slope("lower-lr", "control")
            and _ablation(root, "rank-64", "loss", "mean_nll") == "worse")


def stopping_needs_a_minimum_step(root: Path) -> bool:
    """lower-lr moves the weights less than half as far as the control and its stop rate and held-out
    loss are worse; rank-64 and two-epochs move them further and their held-out stop rate is not
    separable from the control's."""
    f = _update_frame(root)
    return (f.loc["lower-lr", "update"] < 0.5 * f.loc["control", "update"]
            and _ablation(root, "lower-lr", "heldout", "stop_rate") == "worse"
            and _ablation(root, "lower-lr", "loss", "mean_nll") == "worse"
            and all(f.loc[v, "update"] > f.loc["control", "update"]
                    and _ablation(root, v, "heldout", "stop_rate") == "unclear" for v in ("rank-64", "two-epochs")))


def less_capacity_costs_fit(root: Path) -> bool:
    """rank-4 and attention-only: held-out loss worse, forgetting not worse, IFEval-style prompt level
    not separable; rank-4 stops less on IFEval-style prompts, attention-only on untrained instructions."""
    return (all(_ablation(root, v, "loss", "mean_nll") == "worse"
                and _ablation(root, v, "plain_text", "mean_nll") != "worse"
                and _ablation(root, v, "ifeval", "prompt_level") == "unclear" for v in ("rank-4", "attention-only"))
            and _ablation(root, "rank-4", "ifeval", "stop_rate") == "worse"
            and _ablation(root, "attention-only", "ood", "stop_rate") == "worse")


def dora_is_lora_here(root: Path) -> bool:
    """Every DoRA - control difference the ablation table and plot show includes zero, the held-out
    loss differing by under 0.005 nats; the loss on the end-of-turn tokens alone is lower (interval
    below zero); its update is within 5% of the control's size."""
    from ..stats import verdict
    from .ablations import ABLATION_METRICS, update_size
    from .catalog import metric_spec

    row = _sweep(root)["dora"]
    loss = next(d for d in row["differences"] if d["set"] == "loss" and d["metric"] == "mean_nll")
    folder = root / "results" / "ablations"
    shown = [d for d in row["differences"] if (d["set"], d["metric"]) in ABLATION_METRICS]
    return (all(verdict(d, metric_spec(d["metric"], d["set"]).better) in ("unclear", "") for d in shown)
            and abs(loss["difference"]) < 0.005 and _ablation(root, "dora", "loss", "eot_nll") == "better"
            and abs(update_size(folder / "dora") / update_size(folder / "control") - 1) < 0.05)


def second_epoch_buys_stopping(root: Path) -> bool:
    """two-epochs: stop rate on IFEval-style prompts and on the questions better, forgetting worse,
    held-out loss not separable; the reported run's update is within 25% of rank-64's and it forgets
    more than the control (its forgetting's interval lies above the control's)."""
    from .ablations import update_size
    from .results import comparison, load_results

    folder = root / "results" / "ablations"
    reported = comparison(load_results("default", root=root, check=False), "sft", "base_chat", "mean_nll", "plain_text")
    control = _sweep(root)["control"]["forgetting"][0]
    if reported["ci"][0] <= control["ci"][1]:
        return False
    return (_ablation(root, "two-epochs", "ifeval", "stop_rate") == "better"
            and _ablation(root, "two-epochs", "qa", "stop_rate") == "better"
            and _ablation(root, "two-epochs", "plain_text", "mean_nll") == "worse"
            and _ablation(root, "two-epochs", "loss", "mean_nll") == "unclear"
            and abs(update_size(root / "results" / "default") / update_size(folder / "rank-64") - 1) < 0.25)


def no_knob_moves_skills(root: Path) -> bool:
    """No variant's IFEval-style prompt level or question accuracy differs from the control's by an
    interval that excludes zero (a variant without the question set counts for IFEval only)."""
    return all(_ablation(root, v, "ifeval", "prompt_level") == "unclear"
               and _ablation(root, v, "qa", "accuracy") in ("unclear", "missing")
               for v in _sweep(root) if v != "control")


SWEEP_CLAIMS: dict[str, Callable[[Path], bool]] = {
    "the-eot-row-teaches-stopping": the_eot_row_teaches_stopping,
    "prompt-loss-costs-replies-and-prose": prompt_loss_costs_replies_and_prose,
    "instruction-mixes-not-separable": instruction_mixes_not_separable,
    "forgetting-follows-the-update": forgetting_follows_the_update,
    "stopping-needs-a-minimum-step": stopping_needs_a_minimum_step,
    "less-capacity-costs-fit": less_capacity_costs_fit,
    "dora-is-lora-here": dora_is_lora_here,
    "second-epoch-buys-stopping": second_epoch_buys_stopping,
    "no-knob-moves-skills": no_knob_moves_skills,
}
