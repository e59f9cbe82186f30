"""`sftlab sweep FILE`: an ablation study, the control recipe and variants of it, each trained and
scored on the same prompts, compared pair by pair with the control.

A sweep file names a control recipe, a `budget` of overrides every run shares (a cheaper
training budget than the control's own, for example) and `variants`, each a few overridden
keys:

    control: default.yaml                 # a recipe, relative to this file
    results: results/ablations            # where the runs go (one folder per variant)
    budget:
      training: {num_train_epochs: 1}
      evaluation: {systems: [sft], plain_text: 40}
    variants:
      control: {}
      rank-4: {lora: {r: 4, lora_alpha: 8}}
      no-eot-row: {lora: {trainable_token_indices: null}}

Overrides replace keys inside a section (`lora: {r: 4}` keeps the other `lora` keys); a key
set to null is null (for a `data` key: its default). Every variant's recipe is checked like a
recipe (`sftlab.config.validate`) before anything trains, and the problems of all variants are
reported together, each naming its variant and key.
Each variant runs with `sftlab.experiment.run_experiment` into RESULTS/VARIANT/, its merged
recipe written beside it as RESULTS/recipes/VARIANT.yaml. A finished variant whose recipe is
unchanged is skipped and an interrupted one resumes from its checkpoint, so a killed sweep
continues where it stopped. After each variant RESULTS/summary.json holds, for every finished variant, its
paired differences from the control on the same prompts (`compare.paired_run_differences`)
and its training time. Chapter 5's "What each choice did" reads it (`sftlab.book.ablations`).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import yaml

from .config import config_hash, read_json, read_yaml_mapping, recipe_problems
from .errors import ConfigError, Problem

SWEEP_KEYS = {
    "control": "the control recipe, a path relative to the sweep file",
    "results": "folder receiving one results folder per variant (default: results/<sweep file stem>)",
    "budget": "overrides applied to every run, the control included (sections of a recipe)",
    "variants": "name -> overrides of the control recipe; one variant is usually `control: {}`",
    "descriptions": "name -> one line saying what the variant changes (shown in the book)",
}
SUMMARY_FILE = "summary.json"


def merge(recipe: dict, overrides: dict, *, where: str) -> dict:
    """`recipe` with `overrides` applied section by section (a deep copy; `recipe` is unchanged).

    A section's keys are replaced one by one; a top-level scalar (`seed`) is replaced whole.
    `where` names the overrides in errors ("variant rank-4")."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: overrides must be a mapping of recipe sections, got {type(overrides).__name__}")
    out = copy.deepcopy(recipe)
    for key, value in overrides.items():
        if key == "name":
            raise ConfigError(f"{where}: 'name' is set by the sweep (the variant's name)")
        if isinstance(value, dict):
            if not isinstance(out.get(key) or {}, dict):
                raise ConfigError(f"{where}: '{key}' is not a section of the recipe")
            out[key] = {**(out.get(key) or {}), **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_sweep(path: str | Path) -> dict:
    """Read a sweep file and build every variant's recipe (validated, named after the variant).

    Returns {"name", "results": Path, "control_path", "recipes": {variant: recipe},
    "descriptions": {variant: str}}; a ConfigError names the file, variant and key at fault."""
    path = Path(path)
    spec = read_yaml_mapping(path, "sweep file")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key(s) {', '.join(unknown)}; valid: {', '.join(SWEEP_KEYS)}")
    for key in ("control", "variants"):
        if key not in spec:
            raise ConfigError(f"{path}: '{key}' is required ({SWEEP_KEYS[key]})")
    variants = spec["variants"]
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{path}: 'variants' must map at least one variant name to its overrides")
    if "control" not in variants:
        raise ConfigError(f"{path}: 'variants' needs a 'control' entry (usually `control: {{}}`), "
                          "the run every other variant is compared with")
    control_path = (path.parent / spec["control"]).resolve()
    if not control_path.is_file():
        raise ConfigError(f"{path}: control recipe {spec['control']} not found (looked at {control_path})")
    control = read_yaml_mapping(control_path, "control recipe")
    base = merge(control, spec.get("budget") or {}, where=f"{path.name}: budget")
    recipes, problems = {}, {}
    for name, overrides in variants.items():
        if not str(name).replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{path}: variant name {name!r} must be letters, digits, '-' or '_' (a folder name)")
        where = f"{path.name}: variant {name}"
        recipe = merge(base, overrides or {}, where=where)
        recipe["name"] = str(name)
        problems[str(name)] = recipe_problems(recipe, where)
        recipes[str(name)] = recipe
    if any(problems.values()):
        raise ConfigError(problems=_sweep_problems(path, spec["control"], problems))
    descriptions = {str(k): str(v) for k, v in (spec.get("descriptions") or {}).items()}
    missing = sorted(set(descriptions) - set(recipes))
    if missing:
        raise ConfigError(f"{path}: descriptions name variants that do not exist: {', '.join(missing)}")
    results = Path(spec.get("results") or Path("results") / path.stem)
    return {"name": path.stem, "results": results, "control_path": control_path, "recipes": recipes,
            "descriptions": descriptions}


def _sweep_problems(path: Path, control: str, by_variant: dict[str, list[Problem]]) -> list[Problem]:
    """Every variant's problems, those that all variants share (from the control or the budget) once."""
    shared = set.intersection(*({(p.key, p.message) for p in found} for found in by_variant.values()))
    first = next(iter(by_variant.values()))
    out = [Problem(f"{path.name}: every variant ({control} with the budget)", p.key, p.message)
           for p in first if (p.key, p.message) in shared] if len(by_variant) > 1 else []
    return out + [p for found in by_variant.values() for p in found if len(by_variant) == 1
                  or (p.key, p.message) not in shared]


def variant_state(results: Path, name: str, recipe: dict) -> str:
    """"done" (a finished run of this recipe), "interrupted" (a work folder to resume) or "new".

    A finished folder from a different recipe is an error: the sweep never overwrites a result
    it did not make from the current file."""
    done = results / name / "run.json"
    if done.is_file():
        made_by = read_json(done, "the finished variant's run record").get("config_hash")
        if made_by != config_hash(recipe):
            raise ConfigError(f"{results / name} was made by a different recipe than variant {name} now is; "
                              f"delete that folder to run the variant again")
        return "done"
    return "interrupted" if (results / f".work-{name}").is_dir() else "new"


def run_sweep(path: str | Path, *, progress: bool = True, only: list[str] | None = None) -> Path:
    """Run every variant of the sweep (control first) that is not finished, then write the summary.

    Returns the summary's path. `only` restricts the runs to some variants (the summary still
    covers every finished one)."""
    from .experiment import run_experiment

    sweep = load_sweep(path)
    results, recipes = sweep["results"], sweep["recipes"]
    unknown = sorted(set(only or []) - set(recipes))
    if unknown:
        raise ConfigError(f"no variant named {', '.join(unknown)} in {path}; variants: {', '.join(recipes)}")
    order = ["control"] + [n for n in recipes if n != "control"]
    states = {n: variant_state(results, n, recipes[n]) for n in order}  # refuse before training anything
    (results / "recipes").mkdir(parents=True, exist_ok=True)
    todo = [n for n in order if states[n] != "done" and (not only or n in only)]
    summary = None
    for i, name in enumerate(todo, 1):
        recipe_path = results / "recipes" / f"{name}.yaml"
        recipe_path.write_text(yaml.safe_dump(recipes[name], sort_keys=False))
        verb = "resuming" if states[name] == "interrupted" else "running"
        print(f"[sftlab sweep] {verb} variant {name} ({i} of {len(todo)}; "
              f"{len(order) - len(todo)} finished before)", flush=True)
        run_experiment(recipe_path, results_root=results, progress=progress, resume=states[name] == "interrupted")
        summary = write_summary(results, order, sweep["descriptions"])  # after each variant: a killed sweep keeps one
    # Nothing ran (all finished, or --only named finished ones): write it once here.
    return summary or write_summary(results, order, sweep["descriptions"])


def write_summary(results: Path, order: list[str], descriptions: dict) -> Path:
    """RESULTS/summary.json: each finished variant's paired differences from the control and its
    timings; variants not finished yet are listed as missing."""
    from .compare import paired_run_differences

    if not (results / "control" / "run.json").is_file():
        raise ConfigError(f"{results / 'control'} is not finished: the summary compares every variant with it")
    rows, missing = [], []
    for name in order:
        run_file = results / name / "run.json"
        if not run_file.is_file():
            missing.append(name)
            continue
        run = json.loads(run_file.read_text())
        metrics = json.loads((results / name / "metrics.json").read_text())
        entry = {"variant": name, "description": descriptions.get(name, ""),
                 "train_s": run["timings_s"].get("train_s"), "wall_s": run.get("wall_s"),
                 "cpu_kind": (run.get("hardware") or {}).get("cpu_kind"),
                 "trainable_params": (run.get("training") or {}).get("trainable_params"),
                 "forgetting": [c for c in metrics.get("comparisons", []) if c.get("set") == "plain_text"],
                 "differences": [] if name == "control" else paired_run_differences(results / name,
                                                                                   results / "control")}
        rows.append(entry)
    summary = {"written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "control": "control",
               "variants": rows, "missing": missing}
    out = results / SUMMARY_FILE
    out.write_text(json.dumps(summary, indent=2))
    return out
