"""Scoring and `sftlab rescore`: metrics recomputed from a finished run's samples.jsonl, bad rows named."""

from __future__ import annotations

import json

import pytest

from sftlab.experiment import run_experiment
from sftlab.scoring import rescore


def test_rescore_recomputes_reply_metrics_from_samples(tiny_recipe, tmp_path, capsys):
    from sftlab.cli import main

    out = run_experiment(tiny_recipe, results_root=tmp_path / "results", progress=False)
    before = json.loads((out / "metrics.json").read_text())

    # Unchanged samples: the same numbers come back, and run.json records the rescore.
    assert rescore(out)["changed"] == {}
    assert json.loads((out / "metrics.json").read_text()) == before

    # One SFT reply now writes a turn marker: only that system's role-leak rate moves (0 -> 1/4 at most).
    lines = (out / "samples.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["set"] == "heldout"
    first["replies"]["sft"]["text"] = "Sure.<end_of_turn>\nuser\nAnd more?"
    lines[0] = json.dumps(first)
    (out / "samples.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["rescore", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sft.heldout.role_leak_rate" in printed
    after = json.loads((out / "metrics.json").read_text())
    assert after["systems"]["sft"]["heldout"]["role_leak_rate"]["value"] > before["systems"]["sft"]["heldout"]["role_leak_rate"]["value"]
    assert after["systems"]["base_chat"] == before["systems"]["base_chat"]
    assert after["heldout_loss"] == before["heldout_loss"]  # needs the model: kept as it was
    run = json.loads((out / "run.json").read_text())
    assert len(run["rescored"]) == 2 and "sft.heldout.role_leak_rate" in run["rescored"][1]["changed"]


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
    from sftlab import config, experiment, scoring, train

    assert experiment.rescore is scoring.rescore
    assert experiment.score_systems is scoring.score_systems and experiment.score_losses is scoring.score_losses
    assert experiment.lora_update_norms is train.lora_update_norms
    assert experiment.EVAL_DEFAULTS is config.EVAL_DEFAULTS
