"""`sftlab rescore`: metrics recomputed from a finished run's files, bad rows named, the loss split with the model."""

from __future__ import annotations

import json

import pytest

from sftlab.experiment import run_experiment
from sftlab.rescore import LOSSES_FILE, rescore


def test_rescore_recomputes_reply_metrics_from_samples(tiny_recipe, tmp_path, capsys):
    from sftlab.cli import main

    out = run_experiment(tiny_recipe, results_root=tmp_path / "results", progress=False)
    before = json.loads((out / "metrics.json").read_text())
    samples_before = (out / "samples.jsonl").read_text()

    # Unchanged samples: the same numbers and annotations come back, and run.json records the rescore.
    assert rescore(out)["changed"] == {}
    assert json.loads((out / "metrics.json").read_text()) == before
    assert (out / "samples.jsonl").read_text() == samples_before

    # One SFT reply now writes a turn marker: only that system's role-leak rate moves (0 -> 1/4 at most).
    lines = (out / "samples.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["set"] == "heldout"
    first["replies"]["sft"]["text"] = "Sure.<end_of_turn>\nuser\nAnd more?"
    lines[0] = json.dumps(first)
    (out / "samples.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["rescore", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "sft.heldout.role_leak_rate" in printed
    after = json.loads((out / "metrics.json").read_text())
    assert after["systems"]["sft"]["heldout"]["role_leak_rate"]["value"] > before["systems"]["sft"]["heldout"]["role_leak_rate"]["value"]
    assert after["systems"]["base_chat"] == before["systems"]["base_chat"]
    assert after["heldout_loss"] == before["heldout_loss"]  # recomputed from heldout_losses.json: the same
    run = json.loads((out / "run.json").read_text())
    assert len(run["rescored"]) == 2 and "sft.heldout.role_leak_rate" in run["rescored"][1]["changed"]


def test_a_run_records_the_split_loss_and_paired_comparisons(tiny_recipe, tmp_path):
    out = run_experiment(tiny_recipe, results_root=tmp_path / "results", progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    for system in ("base_chat", "sft"):
        loss = metrics["heldout_loss"][system]
        assert {"content_nll", "eot_nll"} <= set(loss)
        assert loss["content_nll"]["n_tokens"] + loss["eot_nll"]["n_tokens"] == loss["n_tokens"]
    pairs = {(c["a"], c["b"], c["set"], c["metric"]) for c in metrics["comparisons"]}
    assert ("sft", "base_chat", "loss", "eot_nll") in pairs and ("sft", "base_chat", "heldout", "stop_rate") in pairs
    rows = json.loads((out / LOSSES_FILE).read_text())
    assert set(rows) == {"base_chat", "sft"} and all(len(r) == 4 for r in rows["sft"])
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert all("category" in r for r in sample["replies"].values())


def test_rescore_with_the_model_recomputes_the_split_loss(tiny_recipe, tmp_path):
    out = run_experiment(tiny_recipe, results_root=tmp_path / "results", progress=False)
    before = json.loads((out / "metrics.json").read_text())["heldout_loss"]
    (out / LOSSES_FILE).unlink()  # as in a run made before the split existed
    entry = rescore(out, with_model=True, progress=False)
    after = json.loads((out / "metrics.json").read_text())["heldout_loss"]
    assert entry["with_model"] is True
    for system in ("base_chat", "sft"):
        assert after[system]["mean_nll"] == pytest.approx(before[system]["mean_nll"], abs=1e-4)
        assert after[system]["eot_nll"]["n_tokens"] == before[system]["eot_nll"]["n_tokens"]


def test_rescore_with_the_model_refuses_a_changed_held_out_set(tiny_recipe, tmp_path):
    from sftlab.errors import ConfigError

    out = run_experiment(tiny_recipe, results_root=tmp_path / "results", progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["heldout_loss"]["sft"]["n_tokens"] += 7  # as if the data pipeline had changed since the run
    (out / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ConfigError, match="data pipeline changed"):
        rescore(out, with_model=True, progress=False)


@pytest.mark.parametrize(
    "row, message",
    [
        ("{not json", "line 1: not valid JSON"),
        ('{"set": "other", "id": "x"}', "line 1 (x): unknown set 'other'"),
        ('{"set": "heldout", "id": "x", "replies": {}}', "line 1 (x): missing reference"),
        ('{"set": "ifeval", "id": "x", "replies": {"sft": {"text": "hi"}}, "prompt": [], "checks": []}',
         "line 1 (x): reply of sft has no stopped"),
        ('{"set": "heldout", "id": "x", "reference": "r", "replies": {"base": {"text": "a", "stopped": true}}}',
         "line 1 (x): systems ['base'] differ"),
    ],
)
def test_rescore_names_the_bad_samples_line_and_key(tmp_path, row, message):
    from sftlab.errors import ConfigError

    (tmp_path / "config.yaml").write_text("name: x\n")
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "metrics.json").write_text('{"systems": {"sft": {}}}')
    (tmp_path / "samples.jsonl").write_text(row + "\n")
    with pytest.raises(ConfigError) as err:
        rescore(tmp_path)
    assert message in str(err.value)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"systems": {"sft": {}}}  # untouched


def test_rescore_names_missing_files(tmp_path):
    from sftlab.errors import ConfigError

    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="samples.jsonl"):
        rescore(tmp_path)


def test_experiment_still_offers_the_moved_names():
    """The CLI, tests and benchmarks import these from sftlab.experiment; each has one home."""
    from sftlab import experiment, rescore as rescore_mod, scoring, train

    assert experiment.rescore is rescore_mod.rescore
    assert experiment.score_replies is scoring.score_replies and experiment.score_losses is scoring.score_losses
    assert experiment.lora_update_norms is train.lora_update_norms


# Broken files of a finished run: each is named before anything is recomputed or written.
@pytest.mark.parametrize("name, content, message", [
    ("metrics.json", "", "metrics.json: file is empty"),
    ("metrics.json", '{"systems": {"sft": ', "metrics.json: not valid JSON"),
    ("metrics.json", "[1, 2]", "metrics.json: expected a JSON object, got list"),
    ("metrics.json", '{"comparisons": []}', "metrics.json: systems: expected a mapping"),
    ("run.json", "{not json", "run.json: not valid JSON"),
    ("samples.jsonl", "", "samples.jsonl: no rows"),
    ("samples.jsonl", "[1]\n", "samples.jsonl line 1: expected a JSON object"),
    ("samples.jsonl", b"\xff\xfe{}\n", "samples.jsonl: not UTF-8 text"),
    ("samples.jsonl", '{"set": "ifeval", "id": "c", "reference": null, "prompt": [{"role": "user", "content": "hi"}], '
                      '"checks": [{"kind": "all_lowercase"}], "replies": {"sft": {"text": "hi", "stopped": true}}}\n',
     "samples.jsonl line 1 (c): checks: prompt 'c', check 0: a check must be an object with a 'type'"),
    ("heldout_losses.json", '{"sft": [[1.0]]}', "heldout_losses.json: sft: expected a list of rows of 2 or 4 numbers"),
    ("config.yaml", "evaluation: {bootstrap_resamples: many}\n",
     "config.yaml: evaluation.bootstrap_resamples: expected a whole number >= 1"),
    ("config.yaml", "evaluation: [unclosed\n", "config.yaml is not valid YAML"),
])
def test_rescore_names_a_broken_file_and_writes_nothing(tmp_path, name, content, message):
    from run_folders import snapshot, write_run_folder

    from sftlab.cli import main
    from sftlab.errors import ConfigError

    folder = write_run_folder(tmp_path / "run")
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = snapshot(folder)
    with pytest.raises(ConfigError) as err:
        rescore(folder, progress=False)
    assert str(path) in str(err.value) and message in str(err.value)
    assert snapshot(folder) == before
    assert main(["rescore", str(folder), "--quiet"]) == 2


def test_rescore_runs_on_the_miniature_run_folder(tmp_path):
    from run_folders import write_run_folder

    folder = write_run_folder(tmp_path / "run")
    entry = rescore(folder, progress=False)
    assert "sft.ifeval.prompt_level" in entry["changed"]  # metrics.json had none: all values are new
    assert json.loads((folder / "run.json").read_text())["rescored"] == [entry]
