"""`sftlab evaluate-extra` end to end on a tiny finished run: new sets merged beside the run's own, once."""

from __future__ import annotations

import json

import pytest
import yaml

from sftlab.errors import ConfigError
from sftlab.experiment import run_experiment
from sftlab.extra import evaluate_extra, extra_settings
from sftlab.rescore import rescore


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    from tiny_models import write_tiny_recipe

    folder = tmp_path_factory.mktemp("extra")
    recipe = write_tiny_recipe(folder, tiny_model_dir)
    config = yaml.safe_load(recipe.read_text())
    config["evaluation"].update(qa_max_new_tokens=3, decoding={"heldout": 2, "ifeval": 3, "seeds": [1, 2],
                                                               "long_max_new_tokens": 8})
    recipe.write_text(yaml.safe_dump(config))
    return run_experiment(recipe, results_root=folder / "results", progress=False)


def _lines(path):
    return path.read_text().splitlines()


def test_extra_sets_are_added_beside_the_run(finished_run):
    out = finished_run
    metrics_before = json.loads((out / "metrics.json").read_text())
    samples_before = _lines(out / "samples.jsonl")
    entries = evaluate_extra(out, ["qa", "ood", "decoding"], progress=False)
    assert set(entries) == {"qa", "ood", "decoding"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert {k: metrics[k] for k in metrics_before} == metrics_before  # the run's own keys as they were
    samples = _lines(out / "samples.jsonl")
    assert samples[: len(samples_before)] == samples_before  # and its own rows
    rows = [json.loads(line) for line in samples[len(samples_before):]]
    sets = {r["set"] for r in rows}
    assert sets == {"qa", "ood", "decoding"}

    qa = metrics["qa"]
    assert qa["n_items"] >= 150 and qa["max_new_tokens"] == 3
    assert set(qa["systems"]) == {*metrics_before["systems"], "base_fewshot"}
    for entry in qa["systems"].values():
        assert {"accuracy", "attempt_rate", "stop_rate", "per_kind", "categories"} <= set(entry)
        assert len(entry["accuracy"]["ci"]) == 2
    pairs = {(c["a"], c["b"], c["metric"]) for c in qa["comparisons"]}
    assert {("sft", "base_chat", "accuracy"), ("sft", "reference", "accuracy"), ("sft", "base_fewshot", "accuracy")} <= pairs
    fewshot = next(r for r in rows if r["set"] == "qa")["replies"]["base_fewshot"]
    assert "generated" in fewshot and {"correct", "attempted", "category"} <= set(fewshot)

    ood = metrics["ood"]
    assert ood["n_prompts"] >= 40 and set(ood["systems"]) == set(metrics_before["systems"])
    assert {"prompt_level", "instruction_level", "per_type"} <= set(ood["systems"]["sft"])
    assert any(c["a"] == "sft" and c["b"] == "reference" and c["metric"] == "prompt_level" for c in ood["comparisons"])

    dec = metrics["decoding"]
    assert set(dec["settings"]) == {"greedy", "greedy-8", "sample-t0.7-seed1", "sample-t0.7-seed2"}
    assert set(dec["systems"]) == {"sft", "reference"}
    assert {"sample-t0.7", "greedy-8", "greedy"} <= set(dec["systems"]["sft"])
    assert dec["n_prompts"] == {"heldout": 2, "ifeval": 3}
    assert dec["conclusions"] and all("survives" in c for c in dec["conclusions"])
    assert len([r for r in rows if r["set"] == "decoding"]) == 3 * 5  # 3 settings x (2 + 3) prompts

    assert metrics["judge"]["used"] is False and "no judge configured" in metrics["judge"]["note"]
    assert metrics["official_ifeval"]["used"] is False and "Hub" in metrics["official_ifeval"]["note"]

    run = json.loads((out / "run.json").read_text())
    for name in ("qa", "ood", "decoding"):
        entry = run["extra_evaluation"][name]
        assert entry["cpu_kind"] and entry["timings_s"] and entry["generate_s"] >= 0
    assert not list(out.parent.glob(f".work-{out.name}-extra*"))

    # Done once: a second call adds nothing and rewrites nothing.
    assert evaluate_extra(out, ["qa", "ood", "decoding"], progress=False) == {}
    assert _lines(out / "samples.jsonl") == samples

    # rescore keeps the new rows and recomputes the same sections from them.
    assert rescore(out, progress=False)["changed"] == {}
    after = json.loads((out / "metrics.json").read_text())
    assert after["qa"] == metrics["qa"] and after["ood"] == metrics["ood"] and after["decoding"] == metrics["decoding"]
    assert len(_lines(out / "samples.jsonl")) == len(samples)


def test_an_interrupted_command_reads_back_finished_jobs(finished_run, monkeypatch):
    from sftlab import extra

    out = finished_run
    work = out.parent / f".work-{out.name}-extra-ood"  # the work folder of a command adding ood
    work.mkdir(exist_ok=True)
    n = len([line for line in _lines(out / "samples.jsonl") if json.loads(line)["set"] == "ood"]) or 47
    fake = {"replies": [{"text": "FROM-THE-STAGE", "stopped": True, "n_tokens": 1}] * n, "seconds": 1.0}
    (work / "stage_ood-sft.json").write_text(json.dumps(fake))
    calls = []
    real = extra.generate_replies
    monkeypatch.setattr(extra, "generate_replies", lambda *a, **k: calls.append(k["desc"]) or real(*a, **k))
    evaluate_extra(out, ["ood"], progress=False, force=True)
    assert "ood-sft" not in calls and "ood-base_chat" in calls
    rows = [json.loads(line) for line in _lines(out / "samples.jsonl")]
    assert all(r["replies"]["sft"]["text"] == "FROM-THE-STAGE" for r in rows if r["set"] == "ood")


def test_cli_runs_one_set(finished_run, capsys):
    from sftlab.cli import main

    assert main(["evaluate-extra", str(finished_run), "--sets", "ood", "--force", "--quiet"]) == 0
    assert "ood done" in capsys.readouterr().out


@pytest.mark.parametrize("key, value, message", [
    ("extra_sets", ["qa", "trivia"], "evaluation.extra_sets"),
    ("qa_max_new_tokens", 0, "evaluation.qa_max_new_tokens"),
    ("decoding", {"seeds": []}, "evaluation.decoding.seeds"),
    ("decoding", {"heldot": 3}, "evaluation.decoding: unknown keys"),
    ("judge", "", "evaluation.judge"),
])
def test_bad_extra_keys_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        extra_settings({key: value})


def test_unknown_set_and_unfinished_folder_are_named(finished_run, tmp_path):
    with pytest.raises(ConfigError, match="unknown extra set"):
        evaluate_extra(finished_run, ["trivia"], progress=False)
    with pytest.raises(ConfigError, match="not a finished run folder"):
        evaluate_extra(tmp_path, ["qa"], progress=False)


def test_plain_text_forgetting_added_later_matches_what_a_run_measures(tmp_path, tiny_model_dir):
    """A run with evaluation.plain_text measures forgetting itself; `evaluate-extra --sets plain_text`
    measures the same on a run without it (the reported run predates the sweep's forgetting): same
    passages, the base model and the merged SFT model, and nearly the same numbers."""
    import shutil

    from tiny_models import write_tiny_recipe

    recipe = write_tiny_recipe(tmp_path, tiny_model_dir)
    config = yaml.safe_load(recipe.read_text())
    config["evaluation"]["plain_text"] = 3
    config["evaluation"]["extra_sets"] = []
    recipe.write_text(yaml.safe_dump(config))
    run = run_experiment(recipe, results_root=tmp_path / "results", progress=False)
    measured = json.loads((run / "metrics.json").read_text())
    later = tmp_path / "later"
    shutil.copytree(run, later)
    stripped = {k: v for k, v in measured.items() if k != "plain_text_loss"}
    stripped["comparisons"] = [c for c in measured["comparisons"] if c["set"] != "plain_text"]
    (later / "metrics.json").write_text(json.dumps(stripped))
    (later / "plain_text_losses.json").unlink()

    entries = evaluate_extra(later, ["plain_text"], progress=False)
    assert set(entries) == {"plain_text"} and set(entries["plain_text"]["timings_s"]) == {
        "plain_text-base_chat_s", "plain_text-sft_s"}
    metrics = json.loads((later / "metrics.json").read_text())
    for system in ("base_chat", "sft"):
        assert metrics["plain_text_loss"][system]["n_conversations"] == 3
        assert metrics["plain_text_loss"][system]["mean_nll"] == pytest.approx(
            measured["plain_text_loss"][system]["mean_nll"], abs=1e-3)  # merged weights: the same model
    forgetting = [c for c in metrics["comparisons"] if c["set"] == "plain_text"]
    assert [(c["a"], c["b"]) for c in forgetting] == [("sft", "base_chat")]
    assert [c for c in metrics["comparisons"] if c["set"] != "plain_text"] == stripped["comparisons"]  # the rest kept
    assert set(json.loads((later / "plain_text_losses.json").read_text())) == {"base_chat", "sft"}
    assert evaluate_extra(later, ["plain_text"], progress=False) == {}  # done once
