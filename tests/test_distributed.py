"""`accelerate launch -m sftlab.cli run` trains data-parallel: every process trains on its own share of each
batch, the main process alone evaluates and writes results/NAME/, and the adapter equals a one-process run's.

The two processes share this machine's CPU through gloo. `accelerate launch --cpu --num_processes 2` would
start one process only (accelerate runs several CPU processes through mpirun alone); `--multi_gpu` on a
machine without a GPU starts them through torchrun, as on GPUs, and sftlab puts them on the CPU backend.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from test_experiment import FILES

from sftlab.experiment import RunContext, _Stages, run_experiment, train

# Both runs see the same 8 conversations per optimizer step: 2 processes x 4 per process, or one process x 4
# x 2 gradient-accumulation micro-batches (doubled there, rather than the batch halved here, so that each
# process's batch is exactly one of the one-process run's micro-batches, padding included).
PROCESSES = 2
# Largest LoRA weight difference allowed between the two runs. Measured here: 0. Each step's gradient is
# the same two micro-batch gradients added (all-reduced across the processes, or accumulated in one),
# a two-term sum that does not depend on its order, and the loss's x2 and DDP's /2 are exact. What can
# differ is inside each gradient: the summation order of the matrix products, which depends on the
# micro-batch shape (one batch of 8, or four of 2, differ by 1.5e-8 and 2.1e-8) and, on other CPUs, on
# the thread count (1 per launched process, all cores in this one). Gradients left unsynchronised (each
# process stepping on its own 4 conversations) move the weights by 4e-3; the LoRA B weights reach 2e-3.
TOLERANCE = 1e-6


def _recording(trainer_class, folder):
    """A `sftlab.train.sft_trainer_class` whose trainer notes every training batch's conversations (their
    unpadded token ids) in folder/batches-RANK.jsonl, with the optimizer step they belong to."""

    def factory():
        base = trainer_class()

        class Recording(base):
            def compute_loss(self, model, inputs, *args, **kwargs):
                if model.training:
                    rows = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
                    rank = self.accelerator.process_index
                    with (Path(folder) / f"batches-{rank}.jsonl").open("a") as f:
                        f.write(json.dumps({"step": self.state.global_step, "rows": rows}) + "\n")
                return super().compute_loss(model, inputs, *args, **kwargs)

        return Recording

    return factory


# Imported at start-up by every Python process of the launch (PYTHONPATH points at it); acts only with
# SFTLAB_TEST_BATCHES set, so the command launched is the README's, unchanged.
SITECUSTOMIZE = textwrap.dedent(
    """
    import os, sys
    if os.environ.get("SFTLAB_TEST_BATCHES"):
        sys.path.insert(0, {tests!r})
        import sftlab.train
        from test_distributed import _recording
        sftlab.train.sft_trainer_class = _recording(sftlab.train.sft_trainer_class, os.environ["SFTLAB_TEST_BATCHES"])
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_group(cmd, *, env, cwd, timeout):
    """subprocess.run in a session of its own, ended whole on a timeout (the launcher and its workers)."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _batches(path: Path) -> dict[int, list[tuple]]:
    """Conversations (as token-id tuples) seen at each optimizer step."""
    steps: dict[int, list[tuple]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        steps.setdefault(row["step"], []).extend(tuple(r) for r in row["rows"])
    return steps


def _lora_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_two_processes_train_together_and_the_main_one_writes_the_results(tmp_path, tiny_recipe, monkeypatch):
    import sftlab.train

    recipe = yaml.safe_load(tiny_recipe.read_text())
    per_device = recipe["training"]["per_device_train_batch_size"]  # 4; 16 conversations, 3 steps

    # One process, the same 8 conversations per step (the evaluation, not compared here, cut to one system).
    one = dict(recipe, training={**recipe["training"], "gradient_accumulation_steps": PROCESSES},
               evaluation={**recipe["evaluation"], "systems": ["sft"], "ifeval": False, "multiturn": False})
    one_recipe = tmp_path / "one.yaml"
    one_recipe.write_text(yaml.safe_dump(one))
    (tmp_path / "one-batches").mkdir()
    monkeypatch.setattr(sftlab.train, "sft_trainer_class",
                        _recording(sftlab.train.sft_trainer_class, tmp_path / "one-batches"))
    single = run_experiment(one_recipe, results_root=tmp_path / "one", progress=False)

    # Two processes: the README's command, the recipe as it is.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(tests=str(Path(__file__).parent)))
    (tmp_path / "batches").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "SFTLAB_TEST_BATCHES": str(tmp_path / "batches"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    results = tmp_path / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(PROCESSES),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "sftlab.cli", "run", str(tiny_recipe), "--results", str(results), "--quiet"]
    start = time.time()
    proc = _run_group(cmd, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"two-process run: {time.time() - start:.1f} s")

    # Only the main process wrote, and it finished: one complete folder, no work folder left.
    out = results / "tiny"
    assert sorted(p.name for p in results.iterdir()) == ["tiny"]
    for name in FILES:
        assert (out / name).exists(), name
    assert not list(out.glob("stage_*")) and not (out / "checkpoints").exists() and not (out / "config_hash").exists()
    assert proc.stdout.split().count(str(results / "tiny")) == 1  # the other process returned None
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "loss" in row] == [1, 2, 3]  # logged once, not once per process
    run = json.loads((out / "run.json").read_text())
    assert run["training"]["processes"] == PROCESSES
    assert run["training"]["global_batch_size"] == PROCESSES * per_device == 8
    assert json.loads((single / "run.json").read_text())["training"]["processes"] == 1

    # Both processes trained, each on its own half of every step's conversations: the one-process run's.
    ranks = [_batches(tmp_path / "batches" / f"batches-{r}.jsonl") for r in range(PROCESSES)]
    reference = _batches(tmp_path / "one-batches" / "batches-0.jsonl")
    assert sorted(reference) == [0, 1, 2] and all(sorted(r) == [0, 1, 2] for r in ranks)
    for step, convs in reference.items():
        assert len(convs) == len(set(convs)) == PROCESSES * per_device
        halves = [set(r[step]) for r in ranks]
        assert all(len(h) == per_device for h in halves)
        assert not halves[0] & halves[1], step  # disjoint shards
        assert halves[0] | halves[1] == set(convs), step

    # Same adapter as the one-process run.
    a, b = _lora_weights(single), _lora_weights(out)
    assert set(a) == set(b) and any("lora_B" in k for k in a)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"largest LoRA weight difference: {diff:.2e}")
    assert diff < TOLERANCE
    assert max(float(b[k].abs().max()) for k in b if "lora_B" in k) > 100 * TOLERANCE  # trained, not zero


def test_other_processes_stop_when_a_resumed_run_had_finished_training(tmp_path, monkeypatch):
    """Resuming after training finished, a process other than the main one returns at once: it neither
    trains again nor loads the adapter to evaluate (the main process does that alone)."""

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr("sftlab.train.train_lora", no_training)
    work = tmp_path / ".work-tiny"
    work.mkdir()
    ctx = RunContext(config={"name": "tiny"}, config_path="tiny.yaml", results_root=tmp_path, work=work,
                     stages=_Stages(work), timings={}, progress=False, resume=True, started=0.0, main_process=False)
    ctx.stages.put("train", {"global_steps": 3})
    assert train(ctx, model=None) == (None, {"global_steps": 3})

