"""Chapter 6's table of trials: full runs of the default recipe with one change, beside the default."""

from __future__ import annotations

import json
import shutil

from sftlab.book import results as results_mod
from sftlab.book.trials import recipe_changes, trial_names, trials_table


def _trial(project, write_results_folder, recipe, name, *, sft_ifeval, cpu_kind, bf16):
    """A finished trial under project/results/trials/NAME, made with `recipe`."""
    scratch = project / f"scratch-{name}"
    scratch.mkdir()
    out = write_results_folder(scratch, name="default", recipe=recipe)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["systems"]["sft"]["ifeval"]["prompt_level"] = {"value": sft_ifeval, "ci": [sft_ifeval - 0.1, sft_ifeval + 0.1]}
    metrics["comparisons"] = [{"a": "sft", "b": "reference", "set": "ifeval", "metric": "prompt_level",
                               "difference": sft_ifeval - 0.6, "ci": [sft_ifeval - 0.8, sft_ifeval - 0.4], "n": 2}]
    (out / "metrics.json").write_text(json.dumps(metrics))
    run = json.loads((out / "run.json").read_text())
    run["hardware"]["cpu_kind"], run["training"]["bf16"] = cpu_kind, bf16
    (out / "run.json").write_text(json.dumps(run))
    dest = project / "results" / "trials" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(out), dest)
    return dest


def test_recipe_changes_name_every_differing_key_with_its_recipe_value():
    default = {"name": "default", "data": {"instructions": {"share": 0.6}, "dedupe": True}, "lora": {"r": 16}}
    trial = {"name": "default", "data": {"instructions": {"share": 0.6, "more_phrasings": True}, "dedupe": True},
             "lora": {"r": 64}}
    assert recipe_changes(trial, default) == ["data.instructions.more_phrasings: true", "lora.r: 64"]
    assert recipe_changes(default, trial) == ["data.instructions.more_phrasings: not set", "lora.r: 16"]
    assert recipe_changes(default, default) == []


def test_the_table_puts_each_trial_beside_the_committed_default(project, write_results_folder, recipe):
    default = results_mod.load_results()
    assert trials_table(default).empty  # no results/trials: nothing to show
    wide = json.loads(json.dumps(recipe))
    wide["data"]["instructions"] = {"share": 0.6, "more_phrasings": True}
    _trial(project, write_results_folder, wide, "more-phrasings", sft_ifeval=0.3, cpu_kind="AVX-512 BF16", bf16=True)
    (project / "results" / "trials" / "unfinished").mkdir()  # no run.json: not a trial yet
    assert trial_names(project / "results" / "trials") == ["more-phrasings"]

    table = trials_table(default)
    assert list(table["run"]) == ["default (committed)", "more-phrasings"]  # plain text: no code spans to print
    committed, trial = table.to_dict("records")
    # the hand-made default has no instruction mix, so the trial's whole mapping differs
    assert trial["what differs from the default recipe"] == "data.instructions: {more_phrasings: true, share: 0.6}"
    assert committed["what differs from the default recipe"] == "–"
    assert trial["IFEval prompt-level"] == "30% [20%, 40%]" and committed["IFEval prompt-level"] == "40% [30%, 50%]"
    assert trial["vs SmolLM2 (paired)"] == "-30 pp [-50, -10]" and committed["vs SmolLM2 (paired)"] == "–"
    assert trial["host"] == "AVX-512 BF16, bf16 on" and committed["host"] == "unknown, bf16 on"
    assert trial["held-out loss"] == "1.80 [1.70, 1.90]" and trial["whole run"] == "15.0 min"
