"""The machinery around a run's stages: its work folder, the stages it has finished, its processes.

`sftlab run` works in results/.work-NAME/ (`_work_dir`: fresh, or the interrupted one when
`--resume` finds the same config there), records each finished stage as stage_NAME.json
(`_Stages`) so a resumed run skips it, and under `accelerate launch` knows which process it is
(`_process_state`; progress messages come from the main process, `_log`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from .config import config_hash
from .errors import ConfigError
from .scoring import write_json_atomic


def _log(msg: str, *, every_process: bool = False) -> None:
    """Progress on stderr: from the main process only when several run (`accelerate launch`),
    unless `every_process`, when each process says it, naming itself."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1:
        if not (every_process or state.is_main_process):
            return
        if every_process:
            msg = f"(process {state.process_index}) {msg}"
    print(f"[sftlab] {msg}", file=sys.stderr, flush=True)


def _process_state():
    """This process's `accelerate.PartialState`: one of several under `accelerate launch` or torchrun.

    Launched as several processes on a machine without a GPU, accelerate finds no device
    backend and would let every process run alone (each would train on all the data and
    write the same work folder); they then share the CPU through gloo instead, and
    ACCELERATE_USE_CPU tells the Trainer's own PartialState the same.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and state.distributed_type == DistributedType.NO:
        PartialState._reset_state()  # nothing was set up yet (no process group): start again on the CPU
        os.environ["ACCELERATE_USE_CPU"] = "true"
        state = PartialState(cpu=True)
    world = int(os.environ.get("WORLD_SIZE", state.num_processes))
    if state.num_processes != world:
        raise ConfigError(f"launched as {world} processes but accelerate set up {state.num_processes} "
                          f"({state.distributed_type}); check the launch command")
    return state


def _write_jsonl(path: Path, rows) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _work_dir(results_root: Path, name: str, config: dict, resume: bool, fresh: bool = False) -> Path:
    """The run's working folder: fresh, or the interrupted one when resuming the same config.

    An interrupted run of the same config is never discarded unasked (its sampling or training may
    be hours of CPU): without `resume` or `fresh` that is an error that names both."""
    work = results_root / f".work-{name}"
    stamp = work / "config_hash"
    same = stamp.is_file() and stamp.read_text().strip() == config_hash(config)
    done = sorted(p.name[len("stage_"):-len(".json")] for p in work.glob("stage_*.json")) if work.is_dir() else []
    if same and done and not resume and not fresh:
        shown = ", ".join(done[:8]) + (f" and {len(done) - 8} more" if len(done) > 8 else "")
        raise ConfigError(
            f"{work} holds an interrupted run of this recipe (finished: {shown}); continue it with "
            f"--resume, or discard it and start over with --fresh"
        )
    if resume and work.exists():
        if not stamp.exists() or stamp.read_text().strip() != config_hash(config):
            raise ConfigError(
                f"cannot resume: {work} was started with a different config; run again without --resume"
            )
        _log(f"resuming from {work}")
        return work
    if resume:
        _log(f"nothing to resume in {work}; starting afresh")
    if work.exists() and not resume:
        _log(f"discarding {work} ({'--fresh' if same else 'started with another recipe'})")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stamp.write_text(config_hash(config))
    return work


class _Stages:
    """Finished stages of a run, saved as JSON in the work folder so `--resume` skips them."""

    def __init__(self, work: Path):
        self.work = work

    def get(self, name: str):
        path = self.work / f"stage_{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def put(self, name: str, value) -> None:
        write_json_atomic(self.work / f"stage_{name}.json", value)
