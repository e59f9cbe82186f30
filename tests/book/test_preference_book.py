"""Chapter 6's preference section: tables, curves, the adoption rule and the prompts shown, read
from preference run folders (here small synthetic ones with the files a run writes)."""

from __future__ import annotations

import json

import pytest
import yaml

from sftlab.book import preference as P


def _cmp(b, set_, metric, d, lo, hi):
    return {"a": "preference", "b": b, "system": "preference", "set": set_, "metric": metric,
            "difference": d, "ci": [lo, hi], "n": 60}


def _run(root, method, *, ifeval=(0.4, 0.05, 0.3), stop=(0.0, -0.1, 0.1), passes=None):
    folder = root / "results" / P.RUNS[method]
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"name": P.RUNS[method]}))
    (folder / "run.json").write_text(json.dumps({"name": P.RUNS[method], "preference": {"method": method}}))
    rate = lambda v: {"value": v, "ci": [max(0, v - 0.1), min(1, v + 0.1)], "n": 60}
    systems = {s: {"ifeval": {"prompt_level": rate(v)}, "heldout": {"stop_rate": rate(0.9), "role_leak_rate": rate(0.0)}}
               for s, v in (("sft", 0.2), ("preference", ifeval[0]), ("reference", 0.3))}
    d, lo, hi = ifeval[0] - 0.2, ifeval[1], ifeval[2]
    comparisons = [_cmp("sft", "ifeval", "prompt_level", d, lo, hi), _cmp("sft", "heldout", "stop_rate", *stop),
                   _cmp("sft", "heldout", "role_leak_rate", 0.0, 0.0, 0.0),
                   _cmp("reference", "ifeval", "prompt_level", ifeval[0] - 0.3, -0.2, 0.3)]
    (folder / "metrics.json").write_text(json.dumps({
        "systems": systems, "comparisons": comparisons,
        "heldout_loss": {s: {"mean_nll": 1.7, "ci": [1.6, 1.8]} for s in ("sft", "preference")}}))
    passes = passes or [(False, True), (True, False), (False, False)]  # (sft, preference) per IFEval prompt
    rows = [{"set": "ifeval", "id": f"if-{i}", "prompt": [{"role": "user", "content": f"p{i}"}],
             "replies": {"sft": {"text": f"s{i}", "stopped": True, "checks_passed": [a]},
                         "preference": {"text": f"p{i}", "stopped": True, "checks_passed": [b]}}}
            for i, (a, b) in enumerate(passes)]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "pairs_report.json").write_text(json.dumps({"instruction": {
        "per_check": {"all_lowercase": {"passed": 0, "samples": 12, "rate": 0.0},
                      "max_words": {"passed": 9, "samples": 12, "rate": 0.75}},
        "per_type": {"lowercase": {"prompts": 3, "samples": 12, "passing": 0, "pairs": 2, "repaired": 2,
                                   "dropped": {"repair_failed": 1}}}}}))
    log = [{"step": s, "loss": 0.69 - 0.1 * s, "rewards/margins": 0.1 * s, "rewards/accuracies": 0.5 + 0.1 * s,
            "logps/chosen": -100.0 + s, "logps/rejected": -90.0 - s} for s in (1, 2, 3)]
    (folder / "preference_train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return folder


def test_each_method_is_read_from_its_own_folder(tmp_path):
    assert P.load_runs(tmp_path) == {}
    _run(tmp_path, "dpo")
    assert set(P.load_runs(tmp_path)) == {"dpo"}
    folder = _run(tmp_path, "rft")
    (folder / "run.json").write_text(json.dumps({"preference": {"method": "dpo"}}))
    with pytest.raises(ValueError, match="preference-rft holds a 'dpo' run"):
        P.load_runs(tmp_path)


def test_adoption_needs_a_gain_above_zero_and_no_lost_stop_rate(tmp_path):
    runs = {"dpo": _run(tmp_path / "a", "dpo"), "rft": _run(tmp_path / "b", "rft", ifeval=(0.3, -0.05, 0.25)),
            "bad": _run(tmp_path / "c", "dpo", stop=(-0.2, -0.35, -0.05))}
    read = {k: P.load_runs(v.parents[1])[("rft" if k == "rft" else "dpo")] for k, v in runs.items()}
    assert P.decision(read["dpo"])["adopted"] is True
    assert P.decision(read["rft"])["adopted"] is False and P.decision(read["rft"])["gain"] is False
    bad = P.decision(read["bad"])
    assert bad["gain"] is True and bad["kept"] is False and bad["adopted"] is False
    assert P.best_method({"dpo": read["dpo"], "rft": read["rft"]}) == "dpo"


def test_tables_show_values_differences_and_pass_rates(tmp_path):
    _run(tmp_path, "dpo")
    _run(tmp_path, "rft", ifeval=(0.3, -0.05, 0.25))
    runs = P.load_runs(tmp_path)
    table = P.before_after_table(runs).set_index("metric")
    assert table.loc["IFEval-style prompt level", "DPO"] == "40% [30%, 50%]"
    assert table.loc["IFEval-style prompt level", "DPO − SFT"] == "+20 pp [+5, +30]"
    assert table.loc["IFEval-style prompt level", "RFT − SFT"] == "+10 pp [-5, +25]"
    assert table.loc["IFEval-style prompt level", "SmolLM2"] == "30% [20%, 40%]"
    rates = P.pass_rates_table(P.load_pairs_report(runs["dpo"]))
    assert list(rates["check"]) == ["all_lowercase", "max_words"] and list(rates["pass rate"]) == [0.0, 75.0]
    bars = next(iter(P.chart_pass_rates(P.load_pairs_report(runs["dpo"])).to_dict()["datasets"].values()))
    assert [b["label"] for b in bars] == ["0 of 12", "9 of 12"]
    types = P.pairs_by_type_table(P.load_pairs_report(runs["dpo"])).iloc[0]
    assert (types["passing samples"], types["repaired"], types["dropped"]) == ("0 of 12", 2, "1 repair failed")


def test_the_prompts_shown_are_one_win_and_one_loss(tmp_path):
    runs = P.load_runs(_run(tmp_path, "dpo").parents[1])
    assert P.shown_ids(runs["dpo"]) == ["if-0", "if-1"]
    assert P.wins_and_losses(runs["dpo"]) == {"won": 1, "lost": 1, "n": 3}
    other = P.load_runs(_run(tmp_path / "x", "dpo", passes=[(False, True), (False, True), (True, True)]).parents[1])
    assert P.shown_ids(other["dpo"]) == ["if-0", "if-1"]  # no loss: the next prompt whose replies differ


def test_the_training_chart_has_margin_accuracy_and_both_log_probabilities(tmp_path):
    runs = P.load_runs(_run(tmp_path, "dpo").parents[1])
    spec = P.chart_training(runs["dpo"]).to_dict()
    assert [c["title"] for c in spec["hconcat"]] == ["reward margin", "pairs ranked right",
                                                     "log-probability of the reply"]
    (runs["dpo"].path / "preference_train_log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    with pytest.raises(KeyError, match="rewards/margins.*is it a DPO run"):
        P.chart_training(runs["dpo"])
