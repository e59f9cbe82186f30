"""`sftlab sweep`: variants merged onto the control recipe, checked before anything trains, run
into one folder each, resumed after a kill, and summarised against the control."""

from __future__ import annotations

import json

import pytest
import yaml

from sftlab.errors import ConfigError
from sftlab.sweep import load_sweep, merge, run_sweep


def _sweep(tmp_path, recipe_path, variants, budget=None, **extra):
    spec = {"control": str(recipe_path), "results": str(tmp_path / "ablations"),
            "budget": budget or {}, "variants": variants, **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_overrides_replace_keys_inside_a_section_and_keep_the_rest():
    recipe = {"lora": {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj"]}, "seed": 1}
    merged = merge(recipe, {"lora": {"r": 4}, "seed": 2}, where="variant x")
    assert merged["lora"] == {"r": 4, "lora_alpha": 32, "target_modules": ["q_proj"]} and merged["seed"] == 2
    assert recipe["lora"]["r"] == 16  # the control is not modified


def test_budget_applies_to_every_variant_and_variants_win(tiny_recipe, tmp_path):
    path = _sweep(tmp_path, tiny_recipe, {"control": {}, "rank-2": {"lora": {"r": 2}}},
                  budget={"training": {"max_steps": 2}, "lora": {"r": 8}})
    recipes = load_sweep(path)["recipes"]
    assert recipes["control"]["lora"]["r"] == 8 and recipes["rank-2"]["lora"]["r"] == 2
    assert {r["training"]["max_steps"] for r in recipes.values()} == {2}
    assert recipes["rank-2"]["name"] == "rank-2"


@pytest.mark.parametrize("variants, message", [
    ({"control": {}, "typo": {"lora": {"lora_alph": 8}}}, r"variant typo: lora.lora_alph: unknown key; did you mean 'lora_alpha'"),
    ({"control": {}, "typo": {"traning": {"learning_rate": 1e-4}}}, r"variant typo: traning: unknown key; did you mean 'training'"),
    ({"control": {}, "rank-0": {"lora": {"r": 0}}}, r"variant rank-0: lora.r: expected a whole number >= 1, got 0"),
    ({"rank-4": {"lora": {"r": 4}}}, "needs a 'control' entry"),
    ({"control": {}, "bad/name": {}}, "must be letters, digits"),
])
def test_a_bad_variant_is_refused_by_name_before_anything_trains(tiny_recipe, tmp_path, variants, message):
    path = _sweep(tmp_path, tiny_recipe, variants)
    with pytest.raises(ConfigError, match=message):
        run_sweep(path, progress=False)
    assert not (tmp_path / "ablations").exists()


def test_the_problems_of_every_variant_come_together_shared_ones_once(tiny_recipe, tmp_path):
    path = _sweep(tmp_path, tiny_recipe, {"control": {}, "rank-0": {"lora": {"r": 0}},
                                          "slow": {"training": {"learning_rate": "1e-4"}}},
                  budget={"evaluation": {"systems": ["sft", "chatgpt"]}})
    with pytest.raises(ConfigError) as err:
        run_sweep(path, progress=False)
    assert [(p.where, p.key) for p in err.value.problems] == [
        (f"sweep.yaml: every variant ({tiny_recipe} with the budget)", "evaluation.systems"),
        ("sweep.yaml: variant rank-0", "lora.r"), ("sweep.yaml: variant slow", "training.learning_rate")]
    assert str(err.value).startswith("3 problems:\n  sweep.yaml: every variant")
    assert not (tmp_path / "ablations").exists()


def test_killed_variant_resumes_and_finished_ones_are_skipped(tiny_recipe, tmp_path, monkeypatch):
    import sftlab.experiment as experiment

    budget = {"evaluation": {"systems": ["sft"], "ifeval": False, "multiturn": False, "plain_text": 4}}
    path = _sweep(tmp_path, tiny_recipe, {"control": {}, "rank-2": {"lora": {"r": 2, "lora_alpha": 4}}},
                  budget=budget, descriptions={"rank-2": "LoRA rank 2 instead of 4"})
    results = tmp_path / "ablations"

    real = experiment.generate_sft

    def killed_in_rank_2(ctx, peft_model):  # after training: the variant's work folder has its adapter
        if ctx.config["name"] == "rank-2":
            raise KeyboardInterrupt("killed")
        return real(ctx, peft_model)

    monkeypatch.setattr(experiment, "generate_sft", killed_in_rank_2)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(path, progress=False)
    assert (results / "control" / "run.json").is_file() and (results / ".work-rank-2").is_dir()
    # The killed sweep still has a summary of what finished, naming what did not.
    assert json.loads((results / "summary.json").read_text())["missing"] == ["rank-2"]
    control_run = (results / "control" / "run.json").read_text()

    monkeypatch.setattr(experiment, "generate_sft", real)
    summary = json.loads(run_sweep(path, progress=False).read_text())
    assert (results / "control" / "run.json").read_text() == control_run  # not run again
    assert json.loads((results / "rank-2" / "run.json").read_text())["resumed"] is True
    assert yaml.safe_load((results / "recipes" / "rank-2.yaml").read_text())["lora"]["r"] == 2
    rows = {r["variant"]: r for r in summary["variants"]}
    assert set(rows) == {"control", "rank-2"} and summary["missing"] == []
    assert rows["rank-2"]["description"] == "LoRA rank 2 instead of 4"
    # Paired with the control on the same prompts: the held-out loss and the plain-text loss.
    sets = {(d["set"], d["metric"]) for d in rows["rank-2"]["differences"]}
    assert {("loss", "mean_nll"), ("plain_text", "mean_nll"), ("heldout", "stop_rate")} <= sets
    assert all(d["a"] == "rank-2" and d["b"] == "control" for d in rows["rank-2"]["differences"])
    # Forgetting: each run's SFT-minus-base plain-text loss on the same 4 passages.
    forgetting = rows["control"]["forgetting"]
    assert len(forgetting) == 1 and forgetting[0]["a"] == "sft" and forgetting[0]["n"] == 4
    # The book's section reads the same summary.
    from sftlab.book import ablations

    table = ablations.ablation_table(summary).set_index("variant")
    assert table.loc["rank-2", "held-out loss (nats/token)"].startswith(("+", "-"))
    assert table.loc["control", "forgetting (SFT − base, plain text)"] != "–"


def test_a_finished_variant_from_another_recipe_is_not_overwritten(tiny_recipe, tmp_path):
    budget = {"evaluation": {"systems": ["sft"], "ifeval": False, "multiturn": False}}
    path = _sweep(tmp_path, tiny_recipe, {"control": {}}, budget=budget)
    run_sweep(path, progress=False)
    changed = _sweep(tmp_path, tiny_recipe, {"control": {"seed": 5}}, budget=budget)
    with pytest.raises(ConfigError, match="made by a different recipe.*delete that folder"):
        run_sweep(changed, progress=False)


def _shipped_variants():
    from pathlib import Path

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "ablations.yaml").read_text())
    return sorted(spec["variants"].items())


@pytest.mark.parametrize("name, overrides", _shipped_variants())
def test_every_shipped_variant_trains_and_scores_on_the_tiny_model(tiny_recipe, tmp_path, name, overrides):
    # The shipped sweep takes hours: a variant whose keys fail (DoRA with the trainable row, the
    # full-sequence loss, ...) must fail here, not three hours in. The tiny model has the Gemma
    # projection names; data and epoch keys keep the tiny recipe's sizes.
    from sftlab.experiment import run_experiment

    recipe = yaml.safe_load(tiny_recipe.read_text())
    kept = {section: {k: v for k, v in (overrides.get(section) or {}).items()
                      if section != "data" or k in ("loss_on", "instructions")}
            for section in ("lora", "data")}
    recipe = merge(recipe, kept, where=name)
    recipe["training"]["max_steps"] = 2
    recipe["evaluation"] = {"systems": ["sft"], "heldout_size": 2, "ifeval": False, "multiturn": False,
                            "max_new_tokens": 4, "embedding_similarity": False, "bootstrap_resamples": 20,
                            "plain_text": 2}
    recipe["name"] = name
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = run_experiment(path, results_root=tmp_path / "results", progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["heldout_loss"]["sft"]["mean_nll"] > 0 and "plain_text_loss" in metrics


