"""The preference stage inside `sftlab run`, on the tiny model: files, reuse of an SFT run, resuming,
and bad input that gets a clear error instead of a silent drop."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import yaml

from sftlab.config import load_config
from sftlab.errors import ConfigError, DataError
from sftlab.experiment import run_experiment
from tiny_models import write_tiny_recipe

TOLERANCE = 1e-4
PREFERENCE = {"method": "dpo", "prompts": 6, "plain_prompts": 4, "samples": 2, "max_new_tokens": 6, "batch_size": 4,
              "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear"},
              "training": {"max_steps": 4, "per_device_train_batch_size": 2, "learning_rate": 1e-3, "bf16": False,
                           "save_steps": 2}}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model_dir):
    """A finished tiny SFT run (no preference stage): what a preference run starts from."""
    folder = tmp_path_factory.mktemp("sft")
    run = run_experiment(write_tiny_recipe(folder, tiny_model_dir), results_root=folder / "results", progress=False)
    # as `sftlab evaluate-extra --sets decoding` leaves it: rows of another set that hold two systems only
    extra = {"set": "decoding", "id": "d0", "prompt": [{"role": "user", "content": "Hi"}],
             "replies": {s: {"text": "Hello.", "stopped": True, "n_tokens": 2} for s in ("sft", "reference")}}
    with (run / "samples.jsonl").open("a") as f:
        f.write(json.dumps(extra) + "\n")
    return run


def _recipe(folder, sft_run, name="tiny-dpo", **preference):
    cfg = yaml.safe_load((sft_run / "config.yaml").read_text())
    cfg["name"] = name
    cfg["evaluation"]["plain_text"] = 3
    cfg["preference"] = {**PREFERENCE, "sft_run": str(sft_run), **preference}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, sft_run):
    folder = tmp_path_factory.mktemp("dpo")
    return run_experiment(_recipe(folder, sft_run), results_root=folder / "results", progress=False)


def _samples(folder):
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def test_a_preference_run_writes_the_stage_s_files_and_a_sixth_system(dpo_run):
    for name in ("pairs_report.json", "pairs.jsonl", "preference_samples.jsonl", "preference_train_log.jsonl",
                 "preference_adapter/adapter_config.json", "adapter/adapter_config.json", "plain_text_losses.json"):
        assert (dpo_run / name).exists(), name
    assert not list(dpo_run.glob("stage_*")) and not (dpo_run / "preference").exists()
    metrics = json.loads((dpo_run / "metrics.json").read_text())
    assert set(metrics["systems"]) == {"base_continuation", "base_chat", "sft", "sft_continuation", "reference",
                                       "preference"}
    assert {"sft", "preference"} <= set(metrics["heldout_loss"]) and "preference" in metrics["plain_text_loss"]
    pairs = {(c["a"], c["b"], c["set"]) for c in metrics["comparisons"]}
    assert {("preference", "sft", "ifeval"), ("preference", "reference", "ifeval"), ("preference", "sft", "loss"),
            ("preference", "sft", "plain_text")} <= pairs
    run = json.loads((dpo_run / "run.json").read_text())
    pref = run["preference"]
    assert pref["method"] == "dpo" and pref["training"]["global_steps"] == 4 and pref["pairs"]["n"] > 0
    assert {"pref_sample_s", "pref_train_s", "generate_preference_s"} <= set(run["timings_s"])
    assert "train_s" not in run["timings_s"]  # the SFT adapter came from the SFT run, untrained here
    report = json.loads((dpo_run / "pairs_report.json").read_text())
    assert report["prompts"] == {"instruction": 6, "plain": 4} and report["samples"]["n"] == 20
    assert sum(report["dropped"].values()) + report["pairs"]["n"] == 10  # every prompt has a pair or a reason
    log = [json.loads(x) for x in (dpo_run / "preference_train_log.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in r and "logps/chosen" in r and "rewards/accuracies" in r for r in log)
    assert all(set(s["replies"]) == set(metrics["systems"]) for s in _samples(dpo_run))


def test_the_sft_run_s_adapter_and_replies_are_reused(dpo_run, sft_run):
    assert (dpo_run / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (sft_run / "adapter" / "adapter_model.safetensors").read_bytes()
    assert (dpo_run / "train_log.jsonl").read_text() == (sft_run / "train_log.jsonl").read_text()
    theirs = {(s["set"], s["id"]): s for s in _samples(sft_run)}
    for row in _samples(dpo_run):
        for system in ("base_chat", "sft", "reference"):
            assert row["replies"][system]["text"] == theirs[(row["set"], row["id"])]["replies"][system]["text"]
    entry = json.loads((dpo_run / "run.json").read_text())["preference"]["sft_run"]
    assert entry["path"] == str(sft_run)
    # every system the SFT run evaluated, although its extra sets' rows hold only two of them
    assert set(entry["reused_replies"]) == set(json.loads((sft_run / "metrics.json").read_text())["systems"])
    assert entry["reused_losses"] == ["base_chat", "sft"]  # the same adapter on the same held-out set
    ours, base = (json.loads((f / "metrics.json").read_text())["heldout_loss"]["sft"]["mean_nll"]
                  for f in (dpo_run, sft_run))
    assert math.isclose(ours, base, abs_tol=1e-9)
    assert "loss_sft_s" not in json.loads((dpo_run / "run.json").read_text())["timings_s"]


def test_an_sft_run_with_another_recipe_is_refused(tmp_path, sft_run):
    path = _recipe(tmp_path, sft_run)
    cfg = yaml.safe_load(path.read_text())
    cfg["lora"]["r"] = 8
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="differs in lora"):
        run_experiment(path, results_root=tmp_path / "results", progress=False)
    cfg["lora"]["r"] = 4
    cfg["preference"]["sft_run"] = str(tmp_path / "nowhere")
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="not a finished run folder"):
        run_experiment(path, results_root=tmp_path / "results", progress=False)


def test_bad_preference_keys_are_named(tmp_path, sft_run):
    path = _recipe(tmp_path, sft_run, samples="four")
    cfg = yaml.safe_load(path.read_text())
    cfg["preference"]["training"] = {"learning_rte": 1e-5, "beta": "high"}
    cfg["preference"]["metod"] = "dpo"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "preference.samples: expected a whole number >= 1, got 'four'" in text
    assert "preference.metod: unknown key; did you mean 'method'?" in text
    assert "preference.training.learning_rte: unknown key; did you mean 'learning_rate'?" in text
    assert "preference.training.beta: expected a number, got 'high'" in text
    cfg["preference"] = {"method": "rft", "training": {"beta": 0.1}}  # a DPO key for the SFT-based method
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="preference.training.beta: unknown key; not a field of trl.SFTConfig"):
        load_config(path)
    cfg["preference"] = {"prompts": 0, "plain_prompts": 0}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="both 0"):
        load_config(path)
    cfg["preference"] = {"method": "dpo", "samples": 1}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="at least 2 samples"):
        load_config(path)


def test_no_pair_at_all_is_a_clear_error(tmp_path, sft_run):
    # the tiny model never stops within 6 tokens: no instruction prompt has a usable sample
    path = _recipe(tmp_path, sft_run, plain_prompts=0)
    with pytest.raises(DataError, match=r"no chosen/rejected pair in 6 prompts x 2 samples .*no_usable_sample"):
        run_experiment(path, results_root=tmp_path / "results", progress=False)


def test_an_empty_prompt_pool_is_a_clear_error(tmp_path, sft_run, monkeypatch):
    import sftlab.preference.stage as stage

    monkeypatch.setattr(stage, "training_conversations", lambda prepared: [])
    with pytest.raises(DataError, match="prompt pool is empty"):
        run_experiment(_recipe(tmp_path, sft_run), results_root=tmp_path / "results", progress=False)


def test_sampling_resumes_at_the_next_block(tmp_path, sft_run, monkeypatch):
    import sftlab.preference.stage as stage

    real, calls = stage.generate_replies, []

    def failing_second(*args, **kw):
        calls.append(kw["sampling"]["seed"])
        if len(calls) == 2:
            raise KeyboardInterrupt("stopped while sampling")
        return real(*args, **kw)

    path = _recipe(tmp_path, sft_run, prompts=4, plain_prompts=2)  # 6 prompts x 2 samples, 2 prompts a block
    monkeypatch.setattr(stage, "generate_replies", failing_second)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(path, results_root=tmp_path / "results", progress=False)
    done = json.loads((tmp_path / "results" / ".work-tiny-dpo" / "stage_pref_samples.json").read_text())
    assert list(done["blocks"]) == ["0"]
    seeds = []
    monkeypatch.setattr(stage, "generate_replies", lambda *a, **kw: seeds.append(kw["sampling"]["seed"]) or real(*a, **kw))
    resumed = run_experiment(path, results_root=tmp_path / "results", progress=False, resume=True)
    assert json.loads((resumed / "pairs_report.json").read_text())["samples"]["n"] == 12
    assert seeds == calls[1:] + [calls[1] + 1]  # blocks 1 and 2 only, each under its own seed


DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import sftlab.preference.trainers as trainers
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGKILL)

    original = trainers._dpo_trainer_class
    def _killing():
        cls = original()
        class Killing(cls):
            def __init__(self, *a, callbacks=None, **kw):
                super().__init__(*a, callbacks=[*(callbacks or []), Kill()], **kw)
        return Killing
    trainers._dpo_trainer_class = _killing
    from sftlab.experiment import run_experiment
    run_experiment(sys.argv[1], results_root=sys.argv[2], progress=False)
    """
)


def test_a_killed_preference_stage_resumes_to_the_same_result(tmp_path, sft_run, dpo_run):
    path = _recipe(tmp_path, sft_run)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(driver), str(path), str(results)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed after DPO step 3, checkpoint-2 on disk
    work = results / ".work-tiny-dpo"
    assert (work / "preference" / "checkpoints" / "checkpoint-2").exists() and (work / "stage_pref_pairs.json").exists()
    resumed = run_experiment(path, results_root=results, progress=False, resume=True)
    a, b = (json.loads((f / "metrics.json").read_text())["heldout_loss"]["preference"]["mean_nll"]
            for f in (dpo_run, resumed))
    assert math.isclose(a, b, abs_tol=TOLERANCE), (a, b)
    steps = [json.loads(x)["step"] for x in (resumed / "preference_train_log.jsonl").read_text().splitlines()
             if '"loss"' in x]
    assert steps == [1, 2, 3, 4]  # none lost or repeated
    assert (resumed / "pairs.jsonl").read_text() == (dpo_run / "pairs.jsonl").read_text()
    assert json.loads((resumed / "run.json").read_text())["resumed"] is True


def test_sftlab_chat_loads_the_preference_model(dpo_run, tmp_path):
    import io
    import shutil

    import torch

    from sftlab.preference.stage import load_preference_model
    from sftlab.talk import chat, load_sft_model

    out = io.StringIO()
    assert chat(dpo_run, prompt="Hello there", max_new_tokens=5, stdout=out) == 0 and out.getvalue().endswith("\n")
    sft, _ = load_sft_model(dpo_run)  # the SFT model alone, as the other systems load it
    before = {n: p.detach().clone() for n, p in sft.named_parameters() if "q_proj" in n}
    tuned = load_preference_model(sft, dpo_run)  # plain PEFT: the adapter over the merged SFT model
    assert any(not torch.equal(before[n], p) for n, p in tuned.named_parameters() if n in before)
    broken = tmp_path / "broken"
    shutil.copytree(dpo_run, broken)
    config = json.loads((broken / "preference_adapter" / "adapter_config.json").read_text())
    config["r"] = 7
    (broken / "preference_adapter" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="preference adapter .* does not fit"):
        load_preference_model(load_sft_model(broken)[0], broken)


def test_rejection_sampling_can_train_on_another_run_s_samples(tmp_path, sft_run, dpo_run):
    path = _recipe(tmp_path, sft_run, name="tiny-rft", method="rft", samples_from=str(dpo_run))
    cfg = yaml.safe_load(path.read_text())
    cfg["preference"]["training"] = {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-3,
                                     "bf16": False, "max_length": 256}
    path.write_text(yaml.safe_dump(cfg))
    out = run_experiment(path, results_root=tmp_path / "results", progress=False)
    for name in ("pairs.jsonl", "pairs_report.json", "preference_samples.jsonl"):
        assert (out / name).read_text() == (dpo_run / name).read_text()
    run = json.loads((out / "run.json").read_text())
    assert run["preference"]["method"] == "rft" and run["preference"]["samples_from"] == str(dpo_run)
    assert run["preference"]["training"]["examples"] == run["preference"]["rft"]["n"]
    assert "pref_sample_s" not in run["timings_s"] and "preference" in json.loads((out / "metrics.json").read_text())[
        "systems"]
    cfg["preference"]["temperature"] = 1.3  # sampled otherwise: refused
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="temperature"):
        run_experiment(path, results_root=tmp_path / "results2", progress=False)
