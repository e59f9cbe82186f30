"""An interrupted run resumes from its last checkpoint and ends where an uninterrupted one does."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import yaml

from sftlab.experiment import run_experiment

# The killed process dies with SIGKILL right after step 5 (checkpoint-4 is on disk, step 5 is not).
KILL_AT_STEP = 5
TOLERANCE = 1e-4  # held-out NLL, nats per token: resuming restores RNG, data order and optimizer


def _recipe(tmp_path, tiny_model_dir):
    data = tmp_path / "convs.jsonl"
    with data.open("w") as f:
        for i in range(20):
            msgs = [{"role": "user", "content": f"Say something about number {i}."},
                    {"role": "assistant", "content": f"Number {i} is a fine number."}]
            f.write(json.dumps({"id": f"c{i}", "messages": msgs}) + "\n")
    recipe = {
        "name": "tiny", "seed": 3,
        "model": {"base": str(tiny_model_dir), "reference": None, "template": "gemma"},
        "data": {"source": str(data), "english_only": False, "min_tokens": None, "max_tokens": None,
                 "train_size": 16, "eval_size": 4},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear"},
        "training": {"max_steps": 8, "per_device_train_batch_size": 2, "learning_rate": 5e-3,
                     "save_steps": 2, "bf16": False, "gradient_checkpointing": False},
        "evaluation": {"systems": ["sft"], "heldout_size": 2, "ifeval": False, "max_new_tokens": 4,
                       "embedding_similarity": False, "bootstrap_resamples": 20},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import sftlab.train as train
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == {step}:
                os.kill(os.getpid(), signal.SIGKILL)

    # The run's own callbacks come from train._nonfinite_guard; add the killer beside them.
    original = train.sft_trainer_class
    def _killing_trainer_class():
        cls = original()
        class Killing(cls):
            def __init__(self, *a, callbacks=None, **kw):
                super().__init__(*a, callbacks=[*(callbacks or []), Kill()], **kw)
        return Killing
    train.sft_trainer_class = _killing_trainer_class
    from sftlab.experiment import run_experiment
    run_experiment(sys.argv[1], results_root=sys.argv[2], progress=False)
    """
)


def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_model_dir):
    recipe = _recipe(tmp_path, tiny_model_dir)
    straight = run_experiment(recipe, results_root=tmp_path / "a", progress=False)

    results_b = tmp_path / "b"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.replace("{step}", str(KILL_AT_STEP)))
    proc = subprocess.run([sys.executable, str(driver), str(recipe), str(results_b)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed, as planned
    work = results_b / ".work-tiny"
    assert (work / "checkpoints" / "checkpoint-4").exists() and not (results_b / "tiny").exists()

    resumed = run_experiment(recipe, results_root=results_b, progress=False, resume=True)
    a = json.loads((straight / "metrics.json").read_text())["heldout_loss"]["sft"]["mean_nll"]
    b = json.loads((resumed / "metrics.json").read_text())["heldout_loss"]["sft"]["mean_nll"]
    assert math.isclose(a, b, abs_tol=TOLERANCE), (a, b)
    log_a = [json.loads(x) for x in (straight / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]
    log_b = [json.loads(x) for x in (resumed / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in log_b] == [r["step"] for r in log_a]  # no step lost or repeated
    assert log_b[-1]["loss"] == pytest.approx(log_a[-1]["loss"], abs=TOLERANCE)
    assert json.loads((resumed / "run.json").read_text())["resumed"] is True


def test_resume_refuses_a_changed_config(tmp_path, tiny_model_dir):
    from sftlab.errors import ConfigError

    recipe = _recipe(tmp_path, tiny_model_dir)
    work = tmp_path / "r" / ".work-tiny"
    work.mkdir(parents=True)
    (work / "config_hash").write_text("0000")
    with pytest.raises(ConfigError, match="different config"):
        run_experiment(recipe, results_root=tmp_path / "r", progress=False, resume=True)


def _interrupted(tmp_path, recipe):
    """A work folder as a killed run of `recipe` leaves it: its config stamp and one finished stage."""
    from sftlab.config import config_hash, load_config

    work = tmp_path / "r" / ".work-tiny"
    work.mkdir(parents=True)
    (work / "config_hash").write_text(config_hash(load_config(recipe)))
    (work / "stage_pref_samples.json").write_text("{}")
    return work


def test_a_plain_run_never_discards_an_interrupted_run_of_the_same_recipe(tmp_path, tiny_model_dir):
    from sftlab.errors import ConfigError

    recipe = _recipe(tmp_path, tiny_model_dir)
    work = _interrupted(tmp_path, recipe)
    with pytest.raises(ConfigError, match=r"interrupted run of this recipe \(finished: pref_samples\).*--resume.*--fresh"):
        run_experiment(recipe, results_root=tmp_path / "r", progress=False)
    assert (work / "stage_pref_samples.json").exists()  # untouched


def test_fresh_discards_it_and_the_cli_says_so(tmp_path, tiny_model_dir):
    recipe = _recipe(tmp_path, tiny_model_dir)
    work = _interrupted(tmp_path, recipe)
    cli = [sys.executable, "-c", "import sys; from sftlab.cli import main; sys.exit(main())", "run", str(recipe), "--results", str(tmp_path / "r"), "--quiet"]
    refused = subprocess.run(cli, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "--fresh" in refused.stderr and "Traceback" not in refused.stderr
    done = subprocess.run([*cli, "--fresh"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"discarding {work}" in done.stderr and (tmp_path / "r" / "tiny" / "metrics.json").exists()
    both = subprocess.run([*cli, "--fresh", "--resume"], capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path, tiny_model_dir):
    recipe = _recipe(tmp_path, tiny_model_dir)
    cfg = yaml.safe_load(recipe.read_text())
    cfg["training"]["learning_rate"] = 1e30  # diverges at once
    recipe.write_text(yaml.safe_dump(cfg))
    with pytest.raises(FloatingPointError, match=r"at step \d+"):
        run_experiment(recipe, results_root=tmp_path / "n", progress=False)
