"""A tiny end-to-end run (tiny model, a few steps) writes a complete, loadable results folder."""

from __future__ import annotations

import json

import pytest
import yaml

from sftlab.experiment import run_experiment

FILES = ["config.yaml", "run.json", "data_report.json", "train_log.jsonl", "metrics.json",
         "samples.jsonl", "lora_norms.jsonl", "adapter/adapter_config.json"]


def _write_conversations(path, n=24):
    topics = ["the sea", "France", "a fox", "numbers", "poems", "the weather"]
    with path.open("w") as f:
        for i in range(n):
            t = topics[i % len(topics)]
            messages = [
                {"role": "user", "content": f"Tell me about {t}, please ({i})."},
                {"role": "assistant", "content": f"Here is a short answer about {t}."},
            ]
            f.write(json.dumps({"id": f"c{i}", "messages": messages}) + "\n")


@pytest.fixture()
def tiny_recipe(tmp_path, tiny_model_dir):
    data = tmp_path / "convs.jsonl"
    _write_conversations(data)
    recipe = {
        "name": "tiny",
        "seed": 0,
        "model": {"base": str(tiny_model_dir), "reference": str(tiny_model_dir),
                  "template": "gemma", "reference_template": "gemma"},
        "data": {"source": str(data), "english_only": False, "min_tokens": None, "max_tokens": None,
                 "train_size": 16, "eval_size": 4},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear",
                 "trainable_token_indices": ["<end_of_turn>"]},
        "training": {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
                     "max_length": 256, "bf16": False, "gradient_checkpointing": False},
        "evaluation": {"heldout_size": 4, "max_new_tokens": 6, "batch_size": 8,
                       "embedding_similarity": False, "bootstrap_resamples": 50},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


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
    assert set(metrics["systems"]) == {"base_continuation", "base_chat", "sft", "reference"}
    for entry in metrics["systems"].values():
        assert 0.0 <= entry["heldout"]["stop_rate"]["value"] <= 1.0
        assert "prompt_level" in entry["ifeval"]
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


def test_rescore_recomputes_reply_metrics_from_samples(tiny_recipe, tmp_path, capsys):
    from sftlab.cli import main
    from sftlab.experiment import rescore

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
    from sftlab.experiment import rescore

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
    from sftlab.experiment import rescore

    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="samples.jsonl"):
        rescore(tmp_path)
