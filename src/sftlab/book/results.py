"""Find and load the run the book shows: `results/NAME/` as one `Results` object.

Every results chapter (preface, chapters 1-7) starts by loading a run here: `load_results`
picks `$SFTLAB_RESULTS`, else `results/full` (the GPU run) when present, else
`results/default`, and warns when the recipe in `configs/` changed since the run
(`StaleResultsWarning`). `metric_entry` looks one metric up in a loaded run and `samples`
returns the prompts and replies of one prompt set.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from ..errors import SftlabError
from .catalog import SYSTEMS



RESULTS_ENV = "SFTLAB_RESULTS"  # a results folder (path or name) to show instead of the default choice


class ResultsMissingError(SftlabError, FileNotFoundError):
    """The results folder the book needs does not exist (yet)."""


class StaleResultsWarning(UserWarning):
    """The recipe changed after the results were produced: the book shows an older run."""


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) holding pyproject.toml.

    Quarto runs each chapter from `chapters/`, a notebook may run from `notebooks/`:
    both find the same root.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    raise ResultsMissingError(f"no pyproject.toml at or above {here}: run this from inside the sftlab project")


def results_dir(name: str | None = None, root: str | Path | None = None) -> Path:
    """The results folder to show: `results/NAME` if named, else `$SFTLAB_RESULTS`, else
    `results/full` (the GPU run) when present, else `results/default`.

    Raises `ResultsMissingError` naming the command that produces the folder.
    """
    root = Path(root) if root is not None else project_root()
    if name is None and os.environ.get(RESULTS_ENV):
        name = os.environ[RESULTS_ENV]
    if name is None:
        path = root / "results" / "full"
        if not (path / "run.json").is_file():
            path = root / "results" / "default"
    else:
        candidate = Path(name)
        path = candidate if (candidate.is_absolute() or len(candidate.parts) > 1) else root / "results" / name
        path = path if path.is_absolute() else root / path
    if not (path / "run.json").is_file():
        stem = path.name
        how = ("`make all` (or `sftlab run configs/default.yaml`)" if stem == "default"
               else f"`sftlab run configs/{stem}.yaml`")
        raise ResultsMissingError(
            f"no results in {path}: the book shows the files a run writes there. "
            f"Produce them with {how}, or point {RESULTS_ENV} at an existing results folder."
        )
    return path


@dataclass
class Results:
    """Everything one `sftlab run` wrote (see `sftlab.experiment`), loaded."""

    name: str
    path: Path
    config: dict
    run: dict
    metrics: dict = field(default_factory=dict)
    data_report: dict = field(default_factory=dict)
    train_log: pd.DataFrame = field(default_factory=pd.DataFrame)
    samples: list = field(default_factory=list)
    lora_norms: pd.DataFrame = field(default_factory=pd.DataFrame)
    stale: bool | None = None  # True: the recipe changed since the run; None: no recipe to compare

    @property
    def systems(self) -> list[str]:
        """Evaluated systems, in the book's order (a run may leave some out)."""
        present = (self.metrics or {}).get("systems", {})
        return [s for s in SYSTEMS if s in present] + [s for s in present if s not in SYSTEMS]

    @property
    def has_ifeval(self) -> bool:
        return any("ifeval" in v for v in (self.metrics or {}).get("systems", {}).values())

    @property
    def on_gpu(self) -> bool:
        return bool((self.run.get("hardware") or {}).get("gpu"))


def _read_json(path: Path, default):
    return json.loads(path.read_text()) if path.is_file() else default


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_results(name: str | None = None, root: str | Path | None = None, *, check: bool = True) -> Results:
    """Load a results folder (see `results_dir` for which); warn if its recipe changed since."""
    root = Path(root) if root is not None else project_root()
    path = results_dir(name, root)
    run = _read_json(path / "run.json", {})
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
    results = Results(
        name=run.get("name") or config.get("name") or path.name,
        path=path,
        config=config or {},
        run=run,
        metrics=_read_json(path / "metrics.json", {}),
        data_report=_read_json(path / "data_report.json", {}),
        train_log=pd.DataFrame(_read_jsonl(path / "train_log.jsonl")),
        samples=_read_jsonl(path / "samples.jsonl"),
        lora_norms=pd.DataFrame(_read_jsonl(path / "lora_norms.jsonl")),
    )
    if check:
        results.stale = check_staleness(results, root=root)
    return results


def recipe_path(results: Results, root: str | Path | None = None) -> Path | None:
    """The recipe this run came from: configs/NAME.yaml, else the path run.json recorded."""
    root = Path(root) if root is not None else project_root()
    for candidate in (root / "configs" / f"{results.name}.yaml", results.run.get("config_path")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def check_staleness(results: Results, root: str | Path | None = None) -> bool | None:
    """Compare run.json's config hash with the recipe's current hash; warn when they differ.

    Returns True (stale, warned), False (up to date) or None (no recipe or hash to compare).
    """
    from ..config import config_hash, load_config

    recorded = results.run.get("config_hash")
    root = Path(root) if root is not None else project_root()
    path = recipe_path(results, root)
    if not recorded or path is None:
        return None
    try:
        current = config_hash(load_config(path))
    except SftlabError as exc:
        warnings.warn(f"could not read {path} to check whether results/{results.name} is current: {exc}",
                      StaleResultsWarning, stacklevel=3)
        return None
    if current == recorded:
        return False
    warnings.warn(
        f"{_rel(path, root)} changed since results/{results.name} was produced (config hash {recorded} in run.json, "
        f"{current} now): the book shows the older run. Re-run it with `sftlab run {_rel(path, root)}` "
        f"(or `make all` after deleting results/{results.name}/).",
        StaleResultsWarning, stacklevel=3,
    )
    return True


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def run_config(results: str | Path | None = None) -> dict:
    """The recipe exactly as the reported run used it (`results/NAME/config.yaml`)."""
    import yaml

    path = Path(results) if results is not None else results_dir()
    return yaml.safe_load((path / "config.yaml").read_text())


def project_config(name: str = "default") -> dict:
    """A recipe from `configs/NAME.yaml`, validated as `sftlab run` would."""
    from ..config import load_config

    return load_config(project_root() / "configs" / f"{name}.yaml")


def metric_entry(results: Results, system: str, metric: str, set: str = "heldout") -> dict | None:
    """{"value", "ci"} of one metric, or None where the run did not measure it.

    set: "heldout", "ifeval", "multiturn", "loss" (held-out loss), "plain_text" (loss on plain
    prose), or an extra set with its own "systems" section ("qa", "ood").
    """
    if set in ("qa", "ood"):
        return ((results.metrics.get(set) or {}).get("systems", {}).get(system) or {}).get(metric)
    if set in ("loss", "plain_text"):
        loss = (results.metrics.get("heldout_loss" if set == "loss" else "plain_text_loss") or {}).get(system)
        if not loss:
            return None
        if metric == "perplexity":
            ci = loss.get("ci")
            return {"value": loss.get("perplexity"), "ci": [math.exp(c) for c in ci] if ci else None}
        if isinstance(loss.get(metric), dict):  # content_nll, eot_nll: the split, where the run recorded it
            return loss[metric]
        return {"value": loss.get(metric), "ci": loss.get("ci") if metric == "mean_nll" else None}
    entry = (results.metrics.get("systems", {}).get(system) or {}).get(set) or {}
    value = entry.get(metric)
    if value is None:
        return None
    if isinstance(value, dict):
        return value
    if metric == "stop_rate":  # metrics.json has the IFEval stop rate without an interval
        return {"value": value, "ci": _stop_ci(results, system, set)}
    return {"value": value, "ci": None}


def comparison(results: Results, a: str, b: str, metric: str, set: str = "heldout") -> dict | None:
    """The paired difference a - b on one metric (metrics.json "comparisons"), or None where the
    run did not compare them: {"difference", "ci", "n", "n_a_higher", "n_b_higher"}."""
    for c in results.metrics.get("comparisons") or []:
        if c["a"] == a and c["b"] == b and c["set"] == set and c["metric"] == metric:
            return c
    return None


def _stop_ci(results: Results, system: str, set: str) -> list[float] | None:
    """95% Wilson interval of a stop rate, from the stop flags in samples.jsonl (for a metrics.json
    written before the IFEval stop rate carried its own interval)."""
    from ..stats import rate

    flags = [bool(s["replies"][system].get("stopped")) for s in results.samples
             if s.get("set") == set and system in s.get("replies", {})]
    return rate(flags)["ci"] if flags else None


def samples(results: Results, set: str = "heldout", ids=None) -> list[dict]:
    """Samples of one prompt set, in file order, or exactly `ids` in the order given."""
    rows = [s for s in results.samples if s.get("set") == set]
    if ids is None:
        return rows
    by_id = {str(s["id"]): s for s in rows}
    missing = [i for i in ids if str(i) not in by_id]
    if missing:
        raise KeyError(f"no {set} samples with ids {missing} in {results.path / 'samples.jsonl'}")
    return [by_id[str(i)] for i in ids]
