"""sftlab compare: is a re-run inside the committed run's intervals?"""

from __future__ import annotations

import copy
import json

import pytest

from sftlab.cli import main
from sftlab.compare import compare_metrics, flatten_metrics
from sftlab.errors import ConfigError

METRICS = {
    "systems": {
        "sft": {
            "heldout": {"n": 30, "rougeL": {"value": 0.24, "ci": [0.20, 0.28]},
                        "distinct_1": {"value": 0.3, "ci": None}},
            "ifeval": {"prompt_level": {"value": 0.15, "ci": [0.07, 0.25]}, "stop_rate": 0.88,
                       "per_type": {"max_words": {"value": 0.5, "ci": [0.25, 0.75], "n": 8}}},
        },
    },
    "heldout_loss": {"sft": {"mean_nll": 1.78, "ci": [1.59, 1.99], "perplexity": 5.9}},
}


def test_flatten_names_every_numeric_metric():
    flat = flatten_metrics(METRICS)
    assert flat["sft.heldout.rougeL"] == {"value": 0.24, "ci": [0.20, 0.28]}
    assert flat["sft.ifeval.per_type.max_words"]["ci"] == [0.25, 0.75]
    assert flat["sft.ifeval.stop_rate"] == {"value": 0.88, "ci": None}
    assert flat["loss.sft.mean_nll"]["value"] == 1.78
    assert "sft.heldout.n" in flat


def test_identical_runs_are_inside_every_interval():
    result = compare_metrics(METRICS, copy.deepcopy(METRICS))
    assert result["outside"] == [] and result["inside"] == 4 and result["without_interval"] == 3


def test_a_value_outside_the_interval_is_named():
    b = copy.deepcopy(METRICS)
    b["systems"]["sft"]["heldout"]["rougeL"]["value"] = 0.31
    del b["heldout_loss"]
    result = compare_metrics(METRICS, b)
    assert result["outside"] == ["sft.heldout.rougeL"]
    assert result["only_in_a"] == ["loss.sft.mean_nll"]
    row = next(r for r in result["rows"] if r["metric"] == "sft.heldout.rougeL")
    assert row["diff"] == pytest.approx(0.07) and row["inside"] is False


def test_cli_prints_the_verdict_and_names_a_missing_folder(tmp_path, capsys):
    for name, rouge in (("a", 0.24), ("b", 0.5)):
        (tmp_path / name).mkdir()
        m = copy.deepcopy(METRICS)
        m["systems"]["sft"]["heldout"]["rougeL"]["value"] = rouge
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "3 of 4 values" in out and "outside: sft.heldout.rougeL" in out
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        from sftlab.compare import read_metrics
        read_metrics(tmp_path / "nowhere")


def test_paired_run_differences_pair_the_same_prompts(tmp_path):
    from sftlab.compare import paired_run_differences

    def write(name, stops, passes, losses):
        folder = tmp_path / name
        folder.mkdir()
        rows = [{"set": "heldout", "id": f"h{i}", "replies": {"sft": {"text": "x", "stopped": s, "category": "answer"}}}
                for i, s in enumerate(stops)]
        rows += [{"set": "ifeval", "id": f"i{i}", "replies": {"sft": {"text": "x", "stopped": True,
                                                                       "checks_passed": [p], "category": "answer"}}}
                 for i, p in enumerate(passes)]
        (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "heldout_losses.json").write_text(json.dumps({"sft": losses}))
        return folder

    variant = write("variant", [True, True, True, False], [True, True, False], [[4.0, 2, 1.0, 1], [6.0, 3, 2.0, 1]])
    control = write("control", [False, True, False, False], [False, True, False], [[6.0, 2, 3.0, 1], [9.0, 3, 5.0, 1]])
    rows = {(r["set"], r["metric"]): r for r in paired_run_differences(variant, control)}
    assert rows[("heldout", "stop_rate")]["difference"] == pytest.approx(0.5)
    assert rows[("heldout", "stop_rate")]["n_a_higher"] == 2 and rows[("heldout", "stop_rate")]["n_b_higher"] == 0
    assert rows[("ifeval", "prompt_level")]["difference"] == pytest.approx(1 / 3)
    assert rows[("loss", "mean_nll")]["difference"] == pytest.approx(10 / 5 - 15 / 5)
    assert rows[("heldout", "canned_rate")]["difference"] == 0.0
    assert {r["a"] for r in rows.values()} == {"variant"} and {r["b"] for r in rows.values()} == {"control"}


def test_paired_multiturn_recall_needs_a_usable_reply(tmp_path):
    # A looping reply that contains the fact passes the checks but not the probe (multiturn.score_probe).
    from sftlab.compare import paired_run_differences

    def write(name, usable):
        folder = tmp_path / name
        folder.mkdir()
        rows = [{"set": "multiturn", "id": f"m{i}", "replies": {"sft": {
            "text": "x", "stopped": True, "checks_passed": [True], "category": "answer" if u else "loop", "usable": u}}}
            for i, u in enumerate(usable)]
        (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return folder

    rows = {(r["set"], r["metric"]): r
            for r in paired_run_differences(write("a", [True, True]), write("b", [True, False]))}
    assert rows[("multiturn", "prompt_level")]["difference"] == pytest.approx(0.5)


def test_recipe_differences_name_every_changed_key_and_only_those(tmp_path):
    import yaml

    from sftlab.compare import recipe_differences

    base = {"name": "a", "data": {"instructions": {"share": 0.6}, "eval_size": 60},
            "lora": {"r": 16, "lora_dropout": 0.0}, "evaluation": {"systems": ["sft", "base_chat"]}}
    other = copy.deepcopy(base)
    other.update(name="b")
    other["data"]["instructions"] = None
    other["evaluation"]["systems"] = ["sft"]
    for name, recipe in (("a", base), ("b", other)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(recipe))
    rows = recipe_differences(tmp_path / "a", tmp_path / "b", ignore=("evaluation.systems",))
    assert rows == [{"key": "data.instructions.share", "a": 0.6, "b": None}]  # `name` and ignored keys left out
    # a second changed setting is named too
    other["lora"]["lora_dropout"] = 0.05
    (tmp_path / "b" / "config.yaml").write_text(yaml.safe_dump(other))
    rows = recipe_differences(tmp_path / "a", tmp_path / "b", ignore=("evaluation.systems",))
    assert [r["key"] for r in rows] == ["data.instructions.share", "lora.lora_dropout"]
    assert rows[1] == {"key": "lora.lora_dropout", "a": 0.0, "b": 0.05}
    with pytest.raises(ConfigError, match="no config.yaml"):
        recipe_differences(tmp_path / "a", tmp_path / "missing")


def test_condition_differences_name_the_machine_and_packages_two_runs_differ_in(tmp_path):
    from sftlab.compare import condition_differences

    run = {"hardware": {"cpu_kind": "AVX-512 BF16", "gpu": None, "processor": "AMD EPYC"},
           "training": {"bf16": True, "processes": 1, "train_loss": 1.5},
           "versions": {"torch": "2.13.0+cpu", "transformers": "5.24.0", "peft": "0.21.2", "trl": "1.16.0"}}
    other = json.loads(json.dumps(run))
    other["hardware"]["cpu_kind"], other["training"]["bf16"], other["training"]["train_loss"] = "AVX2", False, 1.7
    for name, r in (("a", run), ("b", other), ("c", run)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(r))
    rows = condition_differences(tmp_path / "a", tmp_path / "b")
    assert rows == [{"key": "hardware.cpu_kind", "a": "AVX-512 BF16", "b": "AVX2"},
                    {"key": "training.bf16", "a": True, "b": False}]  # outcomes (train_loss) are not conditions
    assert condition_differences(tmp_path / "a", tmp_path / "c") == []
    with pytest.raises(ConfigError, match="no run.json"):
        condition_differences(tmp_path / "a", tmp_path / "missing")
