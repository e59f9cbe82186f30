"""The ablation section: table and plot read each variant's paired differences from the control."""

from __future__ import annotations

import json

from sftlab.book.ablations import (
    ablation_table,
    chart_ablations,
    load_summary,
    variants_table,
)


def _diff(set_, metric, d, lo, hi, n=30):
    return {"a": "v", "b": "control", "system": "sft", "set": set_, "metric": metric, "difference": d,
            "ci": [lo, hi], "n": n}


SUMMARY = {
    "control": "control", "missing": ["dora"],
    "variants": [
        {"variant": "control", "description": "the default recipe", "train_s": 600.0, "wall_s": 1200.0,
         "cpu_kind": "AVX2", "trainable_params": 3797632, "differences": [],
         "forgetting": [{"a": "sft", "b": "base_chat", "set": "plain_text", "metric": "mean_nll",
                         "difference": 0.12, "ci": [0.08, 0.16], "n": 40}]},
        {"variant": "rank-4", "description": "LoRA rank 4", "train_s": 540.0, "wall_s": 1100.0, "cpu_kind": "AVX2",
         "trainable_params": 1000000, "forgetting": [],
         "differences": [_diff("loss", "mean_nll", 0.05, 0.02, 0.08), _diff("heldout", "stop_rate", -0.2, -0.4, -0.05),
                         _diff("ifeval", "prompt_level", 0.02, -0.05, 0.09, n=60)]},
    ],
}


def test_table_shows_each_difference_with_its_interval_in_the_metric_unit():
    table = ablation_table(SUMMARY).set_index("variant")
    assert table.loc["rank-4", "held-out loss (nats/token)"] == "+0.05 [+0.02, +0.08]"
    assert table.loc["rank-4", "stop rate (held-out)"] == "-20 pp [-40, -5]"
    assert table.loc["control", "stop rate (held-out)"] == "–"  # the control is not compared with itself
    assert table.loc["control", "forgetting (SFT − base, plain text)"] == "+0.12 [+0.08, +0.16]"
    assert variants_table(SUMMARY).set_index("variant").loc["rank-4", "training (min)"] == 9.0


def test_plot_has_one_mark_per_variant_and_metric(tmp_path):
    spec = chart_ablations(SUMMARY).to_dict()
    values = next(iter(spec["datasets"].values()))
    assert len(values) == 3 and {v["variant"] for v in values} == {"rank-4"}
    stop = next(v for v in values if v["metric"] == "stop rate (held-out)")
    assert (stop["difference"], stop["lo"], stop["hi"]) == (-20.0, -40.0, -5.0)  # rates in percentage points
    assert stop["reading"] == "worse than the control"
    assert load_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text(json.dumps(SUMMARY))
    assert load_summary(tmp_path)["missing"] == ["dora"]


def test_the_control_row_shows_the_control_s_own_values():
    control = {"systems": {"sft": {"heldout": {"stop_rate": {"value": 0.7, "ci": [0.5, 0.85]}},
                                   "ifeval": {"prompt_level": {"value": 0.2, "ci": [0.1, 0.3]}}}},
               "heldout_loss": {"sft": {"mean_nll": 1.73, "ci": [1.65, 1.8]}},
               "qa": {"systems": {"sft": {"accuracy": {"value": 0.29, "ci": [0.22, 0.36]}}}}}
    table = ablation_table(SUMMARY, control).set_index("variant")
    assert table.loc["control", "stop rate (held-out)"] == "70% [50%, 85%]"
    assert table.loc["control", "held-out loss (nats/token)"] == "1.73 [1.65, 1.80]"
    assert table.loc["control", "question accuracy"] == "29% [22%, 36%]"
    assert table.loc["control", "untrained-instruction accuracy"] == "–"  # not measured in this run
    assert table.loc["rank-4", "stop rate (held-out)"] == "-20 pp [-40, -5]"  # variants keep their differences
    assert "plain-text loss (nats/token)" not in table  # it is the forgetting column's difference


def test_question_and_untrained_instruction_replies_are_paired_between_runs(tmp_path):
    from sftlab.compare import paired_run_differences

    def run(folder, correct, passed):
        folder.mkdir()
        rows = [{"set": "qa", "id": f"q{i}", "replies": {"sft": {"text": "x", "stopped": True, "correct": c}}}
                for i, c in enumerate(correct)]
        rows += [{"set": "ood", "id": f"o{i}", "replies": {"sft": {"text": "x", "stopped": True,
                                                                 "checks_passed": [p]}}} for i, p in enumerate(passed)]
        (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return folder

    a = run(tmp_path / "a", [True, True, False, True], [True, False])
    b = run(tmp_path / "b", [False, True, False, False], [False, False])
    got = {(d["set"], d["metric"]): d["difference"] for d in paired_run_differences(a, b, n_resamples=50)}
    assert got[("qa", "accuracy")] == 0.5 and got[("ood", "prompt_level")] == 0.5


def test_update_size_places_each_run_by_how_far_its_adapter_moved(tmp_path):
    from sftlab.book.ablations import chart_update_size, update_frame, update_size

    def norms(name, sizes):
        (tmp_path / name).mkdir()
        rows = [{"name": f"layers.{i}.q_proj", "layer": i, "module": "q_proj", "norm": 1.0, "relative_norm": s}
                for i, s in enumerate(sizes)]
        (tmp_path / name / "lora_norms.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    norms("control", [0.01, 0.02, 0.03])
    norms("rank-4", [0.001, 0.005, 0.5])  # the median, not the mean: one large projection does not move it
    assert update_size(tmp_path / "control") == 0.02 and update_size(tmp_path / "rank-4") == 0.005
    frame = update_frame(SUMMARY, tmp_path).set_index("variant")
    assert list(frame.index) == ["rank-4", "control"]  # in the order of SIZE_VARIANTS, only runs that exist
    assert frame.loc["rank-4", "update"] == 0.5 and frame.loc["control", "update"] == 2.0  # percent
    assert (frame.loc["rank-4", "stop"], frame.loc["rank-4", "stop_lo"]) == (-20.0, -40.0)  # pp against the control
    assert frame.loc["control", "stop"] == 0.0 and frame.loc["control", "forgetting"] == 0.12
    assert frame.loc["rank-4", "forgetting"] is None or frame["forgetting"].isna()["rank-4"]  # not measured
    spec = chart_update_size(SUMMARY, tmp_path).to_dict()
    assert len(spec["hconcat"]) == 2
