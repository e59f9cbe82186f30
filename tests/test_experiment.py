"""A tiny end-to-end run (tiny model, a few steps) writes a complete, loadable results folder."""

from __future__ import annotations

import json

import pytest
import yaml

from sftlab.experiment import run_experiment

FILES = ["config.yaml", "run.json", "data_report.json", "train_log.jsonl", "metrics.json",
         "samples.jsonl", "lora_norms.jsonl", "heldout_losses.json", "adapter/adapter_config.json"]


def test_tiny_run_writes_complete_results(tiny_recipe, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = run_experiment(tiny_recipe, results_root=tmp_path / "results", progress=False)
    assert out == tmp_path / "results" / "tiny"
    for name in FILES:
        assert (out / name).exists(), name
    assert not list((tmp_path / "results").glob(".work-*"))  # the work folder was renamed
    assert not list(out.glob("stage_*")) and not (out / "checkpoints").exists()

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["systems"]) == {"base_continuation", "base_chat", "sft", "sft_continuation", "reference"}
    for entry in metrics["systems"].values():
        assert 0.0 <= entry["heldout"]["stop_rate"]["value"] <= 1.0
        assert "prompt_level" in entry["ifeval"] and "prompt_level" in entry["multiturn"]
    assert set(metrics["heldout_loss"]) == {"base_chat", "sft"}

    run = json.loads((out / "run.json").read_text())
    assert run["training"]["global_steps"] == 3
    assert 0 < run["training"]["trainable_params"] < run["training"]["total_params"]
    assert run["versions"]["trl"] and run["config_hash"]

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("loss" in row for row in log)

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    heldout = [s for s in samples if s["set"] == "heldout"]
    assert len(heldout) == 4 and all(set(s["replies"]) == set(metrics["systems"]) for s in heldout)
    probes = [s for s in samples if s["set"] == "multiturn"]
    assert probes and all("checks_passed" in r for s in probes for r in s["replies"].values())
    pairs = {(c["a"], c["b"]) for c in metrics["comparisons"]}
    assert ("sft", "sft_continuation") in pairs  # the template's effect on the trained model

    # The adapter is a standard PEFT adapter.
    base = AutoModelForCausalLM.from_pretrained(yaml.safe_load((out / "config.yaml").read_text())["model"]["base"])
    PeftModel.from_pretrained(base, out / "adapter")


def test_failed_run_leaves_previous_results_untouched(tiny_recipe, tmp_path, monkeypatch):
    import sftlab.experiment as exp

    results = tmp_path / "results"
    (results / "tiny").mkdir(parents=True)
    (results / "tiny" / "metrics.json").write_text('{"old": true}')

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash during training")

    monkeypatch.setattr("sftlab.train.train_lora", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        exp.run_experiment(tiny_recipe, results_root=results, progress=False)
    assert json.loads((results / "tiny" / "metrics.json").read_text()) == {"old": True}
