"""The claims the book's prose makes about the numbers, each checked against the results.

The prose is written by hand, so a sentence such as "SFT raised the probability of
`<end_of_turn>` where the reply ends, and kept it low before" could outlive the numbers that
made it true. Each such sentence carries a marker, `<!-- claim: NAME -->` (an HTML comment:
invisible in the book), and `CLAIMS[NAME]` is a function of the project root that says whether
it holds for the committed results. tests/book/test_claims.py fails when a marked claim does not
hold, when a marker names no claim, or when a claim is marked nowhere, so a re-run that breaks
a sentence fails a test instead of printing it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from .sweep_claims import SWEEP_CLAIMS

CLAIM_MARK = re.compile(r"<!--\s*claim:\s*([\w-]+)\s*-->")


def _inside(root: Path) -> dict:
    from .attention import load_inside
    from .results import load_results

    return load_inside(load_results("default", root=root, check=False))


def _shift(root: Path, which: str, segment: str):
    from .attention import segment_shift

    frame = segment_shift(_inside(root), which)
    return frame.set_index("segment").loc[segment]


def eot_learned_where_replies_end(root: Path) -> bool:
    """SFT's median P(<end_of_turn>) where the reply ends is above one half and at least 100x the base
    model's, while before the end it stays below 0.05: it learned *where* to stop."""
    from .attention import eot_summary

    s = eot_summary(_inside(root))
    return s["SFT"]["end"] > 0.5 and s["SFT"]["end"] >= 100 * s["base"]["end"] and s["SFT"]["before"] < 0.05


def base_never_expects_the_end(root: Path) -> bool:
    """The base model's median P(<end_of_turn>) where the reply ends is below 0.01."""
    from .attention import eot_summary

    return eot_summary(_inside(root))["base"]["end"] < 0.01


def first_tokens_turn_from_markers_to_request(root: Path) -> bool:
    """After SFT the first reply tokens pay less attention to the turn markers and more to the user's
    text (both paired intervals exclude zero)."""
    return bool(_shift(root, "first", "turn markers")["hi"] < 0 and _shift(root, "first", "user text")["lo"] > 0)


def attention_shift_is_small(root: Path) -> bool:
    """Over every reply token, no segment's share moves by more than 5 percentage points."""
    from .attention import segment_shift

    frame = segment_shift(_inside(root), "all")
    return bool(frame["difference"].abs().max() < 0.05)


def _metrics(root: Path) -> dict:
    from .results import load_results

    return load_results("default", root=root, check=False).metrics


def base_replies_never_stop(root: Path) -> bool:
    """The base model, with the template, ends none of its held-out replies itself."""
    return _metrics(root)["systems"]["base_chat"]["heldout"]["stop_rate"]["value"] == 0


def late_mlps_change_most(root: Path) -> bool:
    """The largest relative LoRA update is in an MLP projection of the last third of the layers, the
    MLPs' mean relative update exceeds the attention projections', and every update is below 10%."""
    from .lora import lora_norms_frame
    from .results import load_results

    norms = lora_norms_frame(load_results("default", root=root, check=False).path)
    top = norms.loc[norms["relative_norm"].idxmax()]
    layers = int(norms["layer"].max()) + 1
    by_kind = norms.groupby("kind")["relative_norm"].mean()
    return (top["kind"] == "MLP" and top["layer"] >= layers - layers // 3
            and by_kind["MLP"] > by_kind["attention"] and norms["relative_norm"].max() < 0.1)


def late_ends_are_not_the_long_replies(root: Path) -> bool:
    """The references where the SFT model gives the end at most one half are not longer: their median
    length is within 30% of the others'."""
    from .attention import eot_by_reference_length
    from .results import load_results

    split = eot_by_reference_length(_inside(root), load_results("default", root=root, check=False))
    low, high = split["median_chars_below"], split["median_chars_above"]
    return low is not None and high is not None and abs(low - high) <= 0.3 * high


def _train_log(root: Path) -> list[dict]:
    import json

    from .results import load_results

    path = load_results("default", root=root, check=False).path / "train_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def second_epoch_fits_training_not_heldout(root: Path) -> bool:
    """The lowest held-out loss of the run is at or before the end of the first epoch, the last is
    no lower than it, and the last epoch's mean training loss is at least 0.3 nats below the first's."""
    log = _train_log(root)
    evals = [e for e in log if "eval_loss" in e]
    steps = [e for e in log if "loss" in e]
    best = min(evals, key=lambda e: e["eval_loss"])
    first = [e["loss"] for e in steps if e["epoch"] <= 1]
    last = [e["loss"] for e in steps if e["epoch"] > max(1, max(e["epoch"] for e in steps) - 1)]
    return (best["epoch"] <= 1.02 and evals[-1]["eval_loss"] >= best["eval_loss"]
            and sum(first) / len(first) - sum(last) / len(last) >= 0.3)


def eot_dominates_the_loss_drop(root: Path) -> bool:
    """The end-of-turn tokens are under 5% of the held-out reply tokens and over half of the drop in total loss."""
    loss = _metrics(root)["heldout_loss"]
    base, sft = loss["base_chat"], loss["sft"]
    drop = (base["content_nll"]["nats"] + base["eot_nll"]["nats"]) - (sft["content_nll"]["nats"] + sft["eot_nll"]["nats"])
    return (base["eot_nll"]["n_tokens"] / base["n_tokens"] < 0.05
            and (base["eot_nll"]["nats"] - sft["eot_nll"]["nats"]) / drop > 0.5)


def _failures(root: Path):
    from ..failures import failure_table
    from .results import load_results, samples

    results = load_results("default", root=root, check=False)
    return results, samples(results, "ifeval"), failure_table(samples(results, "ifeval"))


def failing_types_were_trained(root: Path) -> bool:
    """Every check type the SFT model never passes had at least 20 training examples."""
    from ..failures import trained_examples

    results, _, table = _failures(root)
    per_type = results.data_report["instructions"]["per_type"]
    never = [k for k, e in table.items() if e["passed"] == 0]
    return bool(never) and all(trained_examples(per_type, k) >= 20 for k in never)


def bullets_become_numbered_lists(root: Path) -> bool:
    """Most failed bullet counts are numbered lists, most of those with the asked number of items, and
    the SFT model writes numbered lists on the IFEval-style prompts at least twice as often as SmolLM2."""
    from ..failures import numbered_lines

    _, ifeval, table = _failures(root)
    bullets = table["bullet_count"]
    failed = bullets["checks"] - bullets["passed"]
    numbered = bullets["kinds"].get("numbered list instead", 0)
    count = lambda s: sum(numbered_lines(r["replies"][s]["text"]) >= 2 for r in ifeval)
    return numbered > failed / 2 and bullets["numbered_right_count"] > numbered / 2 and count("sft") >= 2 * count("reference")


def case_is_ignored(root: Path) -> bool:
    """Most failed letter-case checks are replies in ordinary case."""
    _, _, table = _failures(root)
    kinds = [table[k] for k in ("all_lowercase", "all_uppercase") if k in table]
    failed = sum(e["checks"] - e["passed"] for e in kinds)
    return failed > 0 and sum(e["kinds"].get("ordinary case", 0) for e in kinds) > failed / 2


def quotes_are_overused(root: Path) -> bool:
    """The SFT model wraps more IFEval-style replies in quotes than there are prompts asking for quotes,
    and more than SmolLM2 does."""
    from ..failures import wrapped_in_quotes

    _, ifeval, _ = _failures(root)
    quoted = lambda s: sum(wrapped_in_quotes(r["replies"][s]["text"]) for r in ifeval)
    asked = sum(any(c["type"] == "quotation" for c in r["checks"]) for r in ifeval)
    return quoted("sft") > asked and quoted("sft") > quoted("reference")


def endings_asked_are_not_the_trained_closers(root: Path) -> bool:
    """No ending phrase the evaluation asks for is one of the closers the training examples end with."""
    from ..data.instructions import VALUES

    _, ifeval, _ = _failures(root)
    asked = {c["phrase"].lower() for r in ifeval for c in r["checks"] if c["type"] == "ends_with"}
    return bool(asked) and not asked & {c.lower() for c in VALUES["closers"]}


def _reading(root: Path, key: str) -> str:
    from .numbers import evaluation_numbers

    return evaluation_numbers(root).get(f"{key}_reading", "missing")


def sft_beats_base_on_form(root: Path) -> bool:
    """Against the base model with the template, SFT is better, by an interval that excludes zero, on
    stopping, role leaks, instruction following and multi-turn recall."""
    return all(_reading(root, f"{q}_vs_base") == "better" for q in ("stop", "leaks", "ifeval", "multiturn"))


def content_did_not_move(root: Path) -> bool:
    """Closeness to the reference reply (embedding similarity) is not separable from the base model's."""
    return _reading(root, "similarity_vs_base") == "not separable"


def sft_level_with_smollm2(root: Path) -> bool:
    """Against SmolLM2, SFT stops more often and is not separable on instructions, multi-turn recall
    and closeness to the reference."""
    return (_reading(root, "stop_vs_ref") == "better"
            and all(_reading(root, f"{q}_vs_ref") == "not separable" for q in ("ifeval", "multiturn", "similarity")))


def sft_answers_where_base_echoes(root: Path) -> bool:
    """The base model with the template answers no held-out prompt and copies most of them back; SFT
    attempts an answer to more held-out prompts than SmolLM2."""
    cats = lambda s: _metrics(root)["systems"][s]["heldout"]["categories"]
    base, sft, ref = cats("base_chat"), cats("sft"), cats("reference")
    return base["answer"] == 0 and base["echo"] > sum(base.values()) / 2 and sft["answer"] > ref["answer"]


def instruction_examples_not_separable(root: Path) -> bool:
    """The trained model with and without the instruction examples cannot be told apart on the
    IFEval-style prompts (paired interval includes zero)."""
    from ..compare import paired_run_differences
    from .results import load_results

    path = load_results("default", root=root, check=False).path
    row = next(r for r in paired_run_differences(path, path.parent / "default-no-instructions", "sft")
               if (r["set"], r["metric"]) == ("ifeval", "prompt_level"))
    return row["ci"][0] <= 0 <= row["ci"][1]


def telling_examples_exist(root: Path) -> bool:
    """There is a held-out prompt where SFT stopped and the base model did not, and an IFEval-style
    prompt where SFT passed every check and the base model did not (the side-by-side cards)."""
    from .cards import example_ids
    from .results import load_results

    results = load_results("default", root=root, check=False)
    return all(len(example_ids(results, s, n=0)) == 1 for s in ("heldout", "ifeval"))


def sft_no_role_leaks(root: Path) -> bool:
    """The SFT model writes no other role's turn in any held-out reply."""
    return _metrics(root)["systems"]["sft"]["heldout"]["role_leak_rate"]["value"] == 0


def _section_comparison(root: Path, section: str, a: str, b: str, metric: str, setting: str | None = None) -> dict:
    rows = _metrics(root)[section]["comparisons"]
    return next(c for c in rows if (c["a"], c["b"], c["metric"]) == (a, b, metric)
                and (setting is None or c.get("setting") == setting))


def _includes_zero(c: dict) -> bool:
    return c["ci"][0] <= 0 <= c["ci"][1]


def ood_gain_not_separable(root: Path) -> bool:
    """On the untrained instruction types, SFT is separable neither from the base model with the
    template nor from SmolLM2 (paired intervals include zero)."""
    return (_includes_zero(_section_comparison(root, "ood", "sft", "base_chat", "prompt_level"))
            and _includes_zero(_section_comparison(root, "ood", "sft", "reference", "prompt_level")))


def sft_knows_what_the_base_knew(root: Path) -> bool:
    """On the checkable questions, SFT beats the base model with the template, is not separable from
    the base model's few-shot answers, and is below SmolLM2 (each by its paired interval)."""
    vs_base = _section_comparison(root, "qa", "sft", "base_chat", "accuracy")
    vs_fewshot = _section_comparison(root, "qa", "sft", "base_fewshot", "accuracy")
    vs_ref = _section_comparison(root, "qa", "sft", "reference", "accuracy")
    return vs_base["ci"][0] > 0 and _includes_zero(vs_fewshot) and vs_ref["ci"][1] < 0


def stop_lead_depends_on_the_limit(root: Path) -> bool:
    """SFT's stop-rate lead over SmolLM2 excludes zero under greedy decoding at the run's limit and
    under sampling, but not with the longer limit."""
    c = lambda setting: _section_comparison(root, "decoding", "sft", "reference", "heldout/stop_rate", setting)
    return c("greedy")["ci"][0] > 0 and c("sample-t0.7")["ci"][0] > 0 and _includes_zero(c("greedy-400"))


def sampling_favours_smollm2_on_instructions(root: Path) -> bool:
    """On the IFEval-style subset, SFT and SmolLM2 are not separable under greedy decoding, and SmolLM2
    is ahead when both sample."""
    c = lambda setting: _section_comparison(root, "decoding", "sft", "reference", "ifeval/prompt_level", setting)
    return _includes_zero(c("greedy")) and c("sample-t0.7")["ci"][1] < 0


def quoted_qa_replies_are_real(root: Path) -> bool:
    """The replies chapter 6 quotes from the question set are in the committed samples: the few-shot
    base model answering "What is 100 minus 37?" with "100", the SFT model writing "99 plus 1 is 100",
    and an SFT reply credited as correct though it also says "equals 240"."""
    from .results import load_results, samples

    rows = {r["prompt"][-1]["content"]: r for r in samples(load_results("default", root=root, check=False), "qa")}
    reply = lambda q, s: rows[q]["replies"][s]["text"] if q in rows else ""
    credited = [r for r in rows.values() if r["replies"]["sft"].get("correct") and "equals 240" in r["replies"]["sft"]["text"]]
    return (reply("What is 100 minus 37?", "base_fewshot").strip().startswith("100")
            and "99 plus 1 is 100" in reply("What is 99 plus 1?", "sft") and bool(credited))


def trials_not_separable(root: Path) -> bool:
    """Every committed trial's trained model is not separable from the default's on IFEval-style
    prompt level, paired on the same prompts."""
    from ..compare import paired_run_differences
    from .results import load_results
    from .trials import trial_names

    default = load_results("default", root=root, check=False).path
    names = trial_names(default.parent / "trials")
    rows = [next(r for r in paired_run_differences(default, default.parent / "trials" / n, "sft")
                 if (r["set"], r["metric"]) == ("ifeval", "prompt_level")) for n in names]
    return bool(rows) and all(_includes_zero(r) for r in rows)


def smollm2_writes_longer(root: Path) -> bool:
    """SmolLM2's held-out replies are longer than SFT's, and it stops less often, and SFT's are
    shorter than the reference replies."""
    import statistics

    from .results import load_results, samples

    m = _metrics(root)["systems"]
    ref_words = statistics.mean(len(s["reference"].split())
                                for s in samples(load_results("default", root=root, check=False), "heldout"))
    return (m["reference"]["heldout"]["reply_length"]["value"] > m["sft"]["heldout"]["reply_length"]["value"]
            and m["reference"]["heldout"]["stop_rate"]["value"] < m["sft"]["heldout"]["stop_rate"]["value"]
            and m["sft"]["heldout"]["reply_length"]["value"] < ref_words)


def _reply_failure_counts(root: Path) -> dict:
    """{system: sftlab.failures.reply_failure_counts} on the held-out replies."""
    from ..failures import reply_failure_counts
    from .results import load_results, samples

    heldout = samples(load_results("default", root=root, check=False), "heldout")
    return {s: reply_failure_counts(heldout, s) for s in ("sft", "reference", "base_chat")}


def speaking_as_the_user_is_a_remnant(root: Path) -> bool:
    """On the held-out prompts the base model with the template speaks as the user more often than the
    SFT model, which does it at least once; SmolLM2 never does."""
    n = _reply_failure_counts(root)
    return n["base_chat"]["speaks"] > n["sft"]["speaks"] >= 1 and n["reference"]["speaks"] == 0


def offers_are_sfts_own(root: Path) -> bool:
    """Only the SFT model offers help instead of answering on the held-out prompts (at least once);
    neither the base model nor SmolLM2 ever does."""
    n = _reply_failure_counts(root)
    return n["sft"]["offers"] >= 1 and n["reference"]["offers"] == 0 and n["base_chat"]["offers"] == 0


def _preference(root: Path):
    from . import preference as P

    runs = P.load_runs(root)
    if set(runs) != {"dpo", "rft"}:
        raise FileNotFoundError(f"results/preference-dpo and results/preference-rft are both needed, found {sorted(runs)}")
    return P, runs


def dpo_ranks_its_pairs(root: Path) -> bool:
    """Over DPO's last quarter of steps the mean margin is positive and over 75% of pairs are ranked
    right, and the rejected replies' log-probability fell by more than the chosen ones' changed."""
    P, runs = _preference(root)
    log = P.training_frame(runs["dpo"])
    last = log.tail(max(1, len(log) // 4))
    first = log.iloc[0]
    chosen = abs(last["logps/chosen"].mean() - first["logps/chosen"])
    rejected = first["logps/rejected"] - last["logps/rejected"].mean()
    return bool(last["rewards/margins"].mean() > 0 and last["rewards/accuracies"].mean() > 0.75 and rejected > chosen)


def preference_stage_not_separable(root: Path) -> bool:
    """Both methods' IFEval-style prompt level minus the SFT model's, and the better one's minus
    SmolLM2's, have intervals that include 0."""
    from ..stats import verdict

    P, runs = _preference(root)
    best = runs[P.best_method(runs)]
    return (all(verdict(P.stage_comparison(r, "sft", "ifeval", "prompt_level"), "higher") == "unclear"
                for r in runs.values())
            and verdict(P.stage_comparison(best, "reference", "ifeval", "prompt_level"), "higher") == "unclear")


def rft_drifts_dpo_does_not(root: Path) -> bool:
    """RFT's held-out and plain-prose losses are above the SFT model's (intervals above 0); DPO's
    are not above it, and DPO's stop rate is not worse."""
    from ..stats import verdict

    P, runs = _preference(root)
    c = lambda m, set_, metric: P.stage_comparison(runs[m], "sft", set_, metric)
    return (verdict(c("rft", "loss", "mean_nll"), "lower") == "worse"
            and verdict(c("rft", "plain_text", "mean_nll"), "lower") == "worse"
            and verdict(c("dpo", "loss", "mean_nll"), "lower") != "worse"
            and verdict(c("dpo", "plain_text", "mean_nll"), "lower") != "worse"
            and verdict(c("dpo", "heldout", "stop_rate"), "higher") != "worse")


CLAIMS: dict[str, Callable[[Path], bool]] = {
    **SWEEP_CLAIMS,
    "speaking-as-the-user-is-a-remnant": speaking_as_the_user_is_a_remnant,
    "offers-are-sfts-own": offers_are_sfts_own,
    "dpo-ranks-its-pairs": dpo_ranks_its_pairs,
    "preference-stage-not-separable": preference_stage_not_separable,
    "rft-drifts-dpo-does-not": rft_drifts_dpo_does_not,
    "trials-not-separable": trials_not_separable,
    "smollm2-writes-longer": smollm2_writes_longer,
    "quoted-qa-replies-are-real": quoted_qa_replies_are_real,
    "ood-gain-not-separable": ood_gain_not_separable,
    "sft-knows-what-the-base-knew": sft_knows_what_the_base_knew,
    "stop-lead-depends-on-the-limit": stop_lead_depends_on_the_limit,
    "sampling-favours-smollm2-on-instructions": sampling_favours_smollm2_on_instructions,
    "sft-no-role-leaks": sft_no_role_leaks,
    "telling-examples-exist": telling_examples_exist,
    "sft-beats-base-on-form": sft_beats_base_on_form,
    "content-did-not-move": content_did_not_move,
    "sft-level-with-smollm2": sft_level_with_smollm2,
    "sft-answers-where-base-echoes": sft_answers_where_base_echoes,
    "instruction-examples-not-separable": instruction_examples_not_separable,
    "failing-types-were-trained": failing_types_were_trained,
    "bullets-become-numbered-lists": bullets_become_numbered_lists,
    "case-is-ignored": case_is_ignored,
    "quotes-are-overused": quotes_are_overused,
    "endings-asked-are-not-the-trained-closers": endings_asked_are_not_the_trained_closers,
    "second-epoch-fits-training-not-heldout": second_epoch_fits_training_not_heldout,
    "eot-dominates-the-loss-drop": eot_dominates_the_loss_drop,
    "late-ends-are-not-the-long-replies": late_ends_are_not_the_long_replies,
    "base-replies-never-stop": base_replies_never_stop,
    "late-mlps-change-most": late_mlps_change_most,
    "eot-learned-where-replies-end": eot_learned_where_replies_end,
    "base-never-expects-the-end": base_never_expects_the_end,
    "first-tokens-turn-from-markers-to-request": first_tokens_turn_from_markers_to_request,
    "attention-shift-is-small": attention_shift_is_small,
}


def marked_claims(text: str) -> list[str]:
    """The claim names marked in a chapter's text, in order."""
    return CLAIM_MARK.findall(text)
