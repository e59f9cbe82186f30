"""Finding and loading a run: the project root, which results folder, staleness, metric lookup, samples."""

from __future__ import annotations

import warnings

import pytest
import yaml

from sftlab.book import results as results_mod

# --------------------------------------------------------------------------- finding and loading


def test_project_root_is_found_from_a_subfolder(project, monkeypatch):
    (project / "chapters").mkdir()
    monkeypatch.chdir(project / "chapters")
    assert results_mod.project_root() == project
    assert results_mod.results_dir() == project / "results" / "default"


def test_missing_results_name_the_command(tmp_path, monkeypatch):
    monkeypatch.delenv(results_mod.RESULTS_ENV, raising=False)
    (tmp_path / "pyproject.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(results_mod.ResultsMissingError) as err:
        results_mod.load_results()
    assert "sftlab run configs/default.yaml" in str(err.value) and "make all" in str(err.value)
    with pytest.raises(results_mod.ResultsMissingError, match="sftlab run configs/hub.yaml"):
        results_mod.results_dir("hub")


def test_full_run_is_preferred_when_present(project, write_results_folder):
    write_results_folder(project, name="full")
    assert results_mod.results_dir() == project / "results" / "full"
    assert results_mod.results_dir("default") == project / "results" / "default"


def test_results_env_var_picks_a_folder(project, monkeypatch, write_results_folder):
    write_results_folder(project, name="other")
    monkeypatch.setenv(results_mod.RESULTS_ENV, str(project / "results" / "other"))
    assert results_mod.load_results().name == "other"


def test_load_results_reads_every_file(results, all_systems):
    assert results.name == "default" and results.stale is False
    assert results.systems == all_systems and results.has_ifeval and not results.on_gpu
    assert list(results.train_log["step"])[:2] == [1, 2] and "eval_loss" in results.train_log
    assert len(results.samples) == 5 and len(results.lora_norms) == 4


def test_no_staleness_warning_when_the_recipe_is_unchanged(project):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results_mod.load_results()


def test_staleness_warning_when_the_recipe_changed(project):
    recipe = yaml.safe_load((project / "configs" / "default.yaml").read_text())
    recipe["training"]["learning_rate"] = 5.0e-4
    (project / "configs" / "default.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.warns(results_mod.StaleResultsWarning, match="sftlab run configs/default.yaml"):
        results = results_mod.load_results()
    assert results.stale is True


def test_key_order_alone_is_not_a_change(project):
    path = project / "configs" / "default.yaml"
    recipe = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(dict(reversed(list(recipe.items()))), sort_keys=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert results_mod.load_results().stale is False


def test_results_dir_prefers_full_and_finds_the_root(fake_results):
    assert results_mod.results_dir() == fake_results
    full = fake_results.parent / "full"
    full.mkdir()
    (full / "config.yaml").write_text("name: full\n")
    (full / "run.json").write_text("{}")
    assert results_mod.results_dir() == full
    assert results_mod.run_config(fake_results)["model"]["base"] == "offline:gemma-3-270m"


# --------------------------------------------------------------------------- metrics and samples


def test_ifeval_stop_rate_gets_an_interval_from_the_samples(results):
    entry = results_mod.metric_entry(results, "sft", "stop_rate", "ifeval")
    assert entry["value"] == 0.5 and entry["ci"] is not None and entry["ci"][0] <= 0.5 <= entry["ci"][1]
