"""The book's tables, sentences and cards, built from a tiny hand-made results folder."""

from __future__ import annotations

import json
import warnings

import pytest
import yaml

from sftlab import report as R
from sftlab.config import config_hash, load_config

RECIPE = {
    "name": "default",
    "seed": 1,
    "model": {"base": "offline:gemma-3-270m", "reference": "offline:smollm2-135m-instruct", "template": "gemma"},
    "data": {"source": "sharegpt", "max_tokens": 256, "train_size": 8, "eval_size": 3},
    "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "trainable_token_indices": ["<end_of_turn>"]},
    "training": {"num_train_epochs": 1, "learning_rate": 1.0e-4, "per_device_train_batch_size": 2,
                 "max_length": 256, "bf16": "auto", "logging_steps": 1},
    "evaluation": {"heldout_size": 3, "ifeval": True},
}
SYSTEMS = ["base_continuation", "base_chat", "sft", "reference"]


def _ci(value, half=0.1):
    return {"value": value, "ci": [value - half, value + half]}


def _heldout(stop, rouge):
    return {"n": 3, "reply_length": {**_ci(40.0, 5), "unit": "words"}, "role_leak_rate": _ci(0.2),
            "distinct_1": {"value": 0.5, "ci": None}, "distinct_2": {"value": 0.7, "ci": None},
            "stop_rate": _ci(stop, 0.05), "rougeL": _ci(rouge, 0.02), "bleu": _ci(0.05, 0.01),
            "embedding_similarity": _ci(0.4)}


def _ifeval(p):
    return {"prompt_level": _ci(p), "instruction_level": _ci(p + 0.1), "n_prompts": 2, "n_instructions": 3,
            "per_type": {"max_words": {**_ci(p), "n": 2}, "no_commas": {**_ci(p), "n": 1}},
            "stop_rate": 0.5}


def _sample(set_, i, stopped):
    replies = {s: {"text": f"reply {i} from {s}", "stopped": stopped.get(s, False), "n_tokens": 7} for s in SYSTEMS}
    row = {"set": set_, "id": f"{set_}-{i}", "prompt": [{"role": "user", "content": f"question {i}"}],
           "reference": f"reference answer {i}" if set_ == "heldout" else None, "replies": replies}
    if set_ == "ifeval":
        row["checks"] = [{"type": "max_words", "n": 10}, {"type": "no_commas"}]
        for s, r in replies.items():
            r["checks_passed"] = [True, s == "sft"]
    return row


def write_results_folder(root, name="default", recipe=None, systems=SYSTEMS):
    """A minimal but complete project: pyproject.toml, configs/NAME.yaml and results/NAME/."""
    recipe = dict(recipe or RECIPE, name=name)
    (root / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    (root / "configs").mkdir(exist_ok=True)
    cfg_path = root / "configs" / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    config = load_config(cfg_path)
    out = root / "results" / name
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run = {
        "name": name, "config_hash": config_hash(config), "config_path": str(cfg_path),
        "versions": {"python": "3.11", "torch": "2.13", "transformers": "5.24", "peft": "0.21", "trl": "1.16"},
        "hardware": {"cpu_count": 2, "gpu": None, "torch_threads": 2},
        "timings_s": {"train_s": 100.0, "generate_sft_s": 50.0}, "wall_s": 900.0,
        "training": {"train_wall_s": 100.0, "global_steps": 12, "train_loss": 2.1, "trainable_params": 3_797_632,
                     "total_params": 271_895_808, "train_conversations": 8, "train_tokens_per_epoch": 1000,
                     "train_assistant_tokens_per_epoch": 700, "epochs": 1.0, "bf16": True,
                     "tokens_per_second": 90.5},
    }
    (out / "run.json").write_text(json.dumps(run))
    metrics = {
        "systems": {s: {"heldout": _heldout(stop, rouge), "ifeval": _ifeval(p)}
                    for s, stop, rouge, p in [("base_continuation", 0.0, 0.10, 0.0), ("base_chat", 0.0, 0.12, 0.1),
                                              ("sft", 0.6, 0.15, 0.4), ("reference", 0.9, 0.18, 0.6)]
                    if s in systems},
        "heldout_loss": {"base_chat": {"mean_nll": 2.3, "ci": [2.1, 2.5], "perplexity": 9.97, "n_conversations": 3,
                                       "n_tokens": 120},
                         "sft": {"mean_nll": 1.8, "ci": [1.7, 1.9], "perplexity": 6.05, "n_conversations": 3,
                                 "n_tokens": 120}},
    }
    (out / "metrics.json").write_text(json.dumps(metrics))
    report = {
        "source": "sharegpt", "n_read": 20, "n_loaded": 15, "n_trimmed": 1,
        "skipped": {"first_not_user": 4, "no_messages": 1}, "skipped_examples": {"first_not_user": ["a_1"]},
        "filters": {"english_only": True, "min_tokens": None, "max_tokens": 256, "min_turns": 1, "max_turns": 3},
        "n_filter_input": 15, "rejected": {"too_many_tokens": 3, "not_english": 1}, "rejected_examples": {},
        "n_kept": 11, "seed": 1, "n_train": 8, "n_eval": 3, "n_unused": 0,
        "turns_histogram": {"1": 8, "2": 3}, "token_lengths": {"min": 20, "median": 90.0, "p90": 200, "max": 250,
                                                               "mean": 100.0},
        "raw": {"turns": [1] * 8 + [2] * 3, "token_lengths": [20, 40, 60, 80, 90, 90, 100, 120, 150, 200, 250]},
        "notes": ["a note"], "encoding_skipped": {"train": {}, "eval": {}},
    }
    (out / "data_report.json").write_text(json.dumps(report))
    log = [{"step": i, "epoch": i / 12, "time_s": 8.0 * i, "loss": 2.5 - 0.05 * i, "grad_norm": 1.0,
            "learning_rate": 1e-4 * min(1, i / 2)} for i in range(1, 13)]
    log.insert(6, {"step": 6, "epoch": 0.5, "time_s": 50.0, "eval_loss": 2.2})
    (out / "train_log.jsonl").write_text("\n".join(json.dumps(x) for x in log) + "\n")
    samples = [
        _sample("heldout", 1, {"reference": True}),
        _sample("heldout", 2, {"reference": True}),
        _sample("heldout", 3, {"sft": True, "reference": True}),
        _sample("ifeval", 1, {}),
        _sample("ifeval", 2, {"sft": True}),
    ]
    for row in samples:
        row["replies"] = {s: r for s, r in row["replies"].items() if s in systems}
    (out / "samples.jsonl").write_text("\n".join(json.dumps(x) for x in samples) + "\n")
    norms = [{"name": f"layers.{l}.{m}", "layer": l, "module": m, "norm": 0.1 * (l + 1), "relative_norm": 0.01}
             for l in range(2) for m in ("q_proj", "v_proj")]
    (out / "lora_norms.jsonl").write_text("\n".join(json.dumps(x) for x in norms) + "\n")
    return out


@pytest.fixture()
def project(tmp_path, monkeypatch):
    monkeypatch.delenv(R.RESULTS_ENV, raising=False)
    write_results_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def results(project):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return R.load_results()


# --------------------------------------------------------------------------- finding and loading


def test_project_root_is_found_from_a_subfolder(project, monkeypatch):
    (project / "chapters").mkdir()
    monkeypatch.chdir(project / "chapters")
    assert R.project_root() == project
    assert R.results_dir() == project / "results" / "default"


def test_missing_results_name_the_command(tmp_path, monkeypatch):
    monkeypatch.delenv(R.RESULTS_ENV, raising=False)
    (tmp_path / "pyproject.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(R.ResultsMissingError) as err:
        R.load_results()
    assert "sftlab run configs/default.yaml" in str(err.value) and "make all" in str(err.value)
    with pytest.raises(R.ResultsMissingError, match="sftlab run configs/hub.yaml"):
        R.results_dir("hub")


def test_full_run_is_preferred_when_present(project):
    write_results_folder(project, name="full")
    assert R.results_dir() == project / "results" / "full"
    assert R.results_dir("default") == project / "results" / "default"


def test_results_env_var_picks_a_folder(project, monkeypatch):
    write_results_folder(project, name="other")
    monkeypatch.setenv(R.RESULTS_ENV, str(project / "results" / "other"))
    assert R.load_results().name == "other"


def test_load_results_reads_every_file(results):
    assert results.name == "default" and results.stale is False
    assert results.systems == SYSTEMS and results.has_ifeval and not results.on_gpu
    assert list(results.train_log["step"])[:2] == [1, 2] and "eval_loss" in results.train_log
    assert len(results.samples) == 5 and len(results.lora_norms) == 4


def test_no_staleness_warning_when_the_recipe_is_unchanged(project):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        R.load_results()


def test_staleness_warning_when_the_recipe_changed(project):
    recipe = yaml.safe_load((project / "configs" / "default.yaml").read_text())
    recipe["training"]["learning_rate"] = 5.0e-4
    (project / "configs" / "default.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.warns(R.StaleResultsWarning, match="sftlab run configs/default.yaml"):
        results = R.load_results()
    assert results.stale is True
    assert "changed after this run" in R.which_run_note(results)


def test_key_order_alone_is_not_a_change(project):
    path = project / "configs" / "default.yaml"
    recipe = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(dict(reversed(list(recipe.items()))), sort_keys=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert R.load_results().stale is False


# --------------------------------------------------------------------------- tables


def test_metrics_table_has_metric_rows_and_system_columns(results):
    df = R.metrics_table(results)
    assert list(df.columns) == ["base (plain text)", "base + template", "LoRA SFT", "SmolLM2-135M-Instruct"]
    assert df.loc["stop rate (higher is better)", "LoRA SFT"] == "60% [55%, 65%]"
    assert df.loc["ROUGE-L (higher is better)", "base + template"] == "0.120 [0.100, 0.140]"
    assert df.loc["distinct-2 (higher is better)", "LoRA SFT"] == "0.700"  # no interval for distinct-n
    ifeval = R.metrics_table(results, "ifeval")
    assert ifeval.loc["IFEval prompt-level accuracy (higher is better)", "LoRA SFT"] == "40% [30%, 50%]"


def test_tables_leave_out_systems_the_run_did_not_evaluate(tmp_path, monkeypatch):
    monkeypatch.delenv(R.RESULTS_ENV, raising=False)
    write_results_folder(tmp_path, systems=["sft"])
    monkeypatch.chdir(tmp_path)
    results = R.load_results()
    assert list(R.metrics_table(results).columns) == ["LoRA SFT"]
    assert list(R.ifeval_table(results).columns) == ["n", "LoRA SFT"]
    assert "LoRA SFT" in R.headline_table(results).columns
    assert R.compare(results, "stop_rate", "sft", "base_chat") is None
    assert R.findings(results).count("\n- ") == 0  # only the held-out loss has both systems


def test_loss_table_reports_loss_and_perplexity(results):
    df = R.loss_table(results)
    assert list(df.index) == ["base + template", "LoRA SFT"]
    assert df.loc["LoRA SFT", "loss, nats/token [95% CI]"] == "1.80 [1.70, 1.90]"
    assert df.loc["LoRA SFT", "perplexity [95% CI]"].startswith("6.05 [5.47, 6.69]")


def test_ifeval_table_has_overall_rows_then_types(results):
    df = R.ifeval_table(results)
    assert list(df.index) == ["all prompts (prompt-level)", "all instructions (instruction-level)",
                              "max_words", "no_commas"]
    assert df.loc["max_words", "n"] == "2"


def test_training_config_table_explains_every_field(results):
    df = R.training_config_table(results)
    fields = {f for _, f in df.index}
    assert set(RECIPE["lora"]) | set(RECIPE["training"]) == fields
    assert all(df["meaning"].str.len() > 0)
    assert df.loc[("SFTConfig", "bf16"), "value"] == "auto → True on this machine"


def test_run_summary_and_which_run_note(results):
    df = R.run_summary_table(results)
    assert df.loc["trainable parameters", "value"] == "3.80 M (1.40% of 271.9 M)"
    assert "CPU" in df.loc["hardware", "value"]
    note = R.which_run_note(results)
    assert "default CPU run" in note and "15.0 min" in note and "configs/full.yaml" in note
    assert "re-scored" not in note


def test_which_run_note_says_when_metrics_were_rescored(results):
    results.run["rescored"] = [
        {"at": "2026-11-28T02:30:00Z", "git_commit": "abcdef0123", "changed": {}},
        {"at": "2026-11-29T10:00:00Z", "git_commit": "0123abcdef",
         "changed": {"base_chat.heldout.role_leak_rate": [0.0, 0.2]}},
    ]
    note = R.which_run_note(results)
    assert "re-scored" in note and "2026-11-29" in note and "0123abc" in note
    assert "`base_chat.heldout.role_leak_rate`" in note and "2026-11-28" not in note  # no-op rescores are not news


def test_data_steps_table_follows_the_report(results):
    df = R.data_steps_table(results)
    assert df.loc["1. read", "left after the step"] == "20"
    assert df.loc["3. filter", "left after the step"] == "11"
    assert df.loc["4. split", "left after the step"] == "8 train + 3 eval"


def test_markdown_table_escapes_cells():
    import pandas as pd

    md = R.markdown_table(pd.DataFrame({"a": ["<end_of_turn> | x_1 *y*"]}, index=pd.Index(["r"], name="k")))
    assert r"\<end\_of\_turn\> \| x\_1 \*y\*" in md
    assert md.splitlines()[0] == "| k | a |"


# --------------------------------------------------------------------------- comparisons


def test_comparison_direction_comes_from_the_numbers(results):
    c = R.compare(results, "stop_rate", "sft", "base_chat")
    assert c.direction == "higher" and c.a_better and c.separated
    assert "LoRA SFT is higher (better" in c.sentence() and "do not overlap" in c.sentence()
    loss = R.compare(results, "mean_nll", "sft", "base_chat", set="loss")
    assert loss.direction == "lower" and loss.a_better
    overlap = R.compare(results, "role_leak_rate", "sft", "base_chat")
    assert overlap.direction == "equal" and "same value" in overlap.sentence()
    tally = R.tally(results, "sft", "base_chat")
    assert "stop rate" in tally["better"] and "ROUGE-L" in tally["unclear"]  # intervals overlap


# --------------------------------------------------------------------------- samples and cards


def test_example_ids_are_first_ids_plus_a_telling_case(results):
    assert R.example_ids(results, "heldout", n=1) == ["heldout-1", "heldout-3"]
    assert R.example_ids(results, "ifeval", n=1) == ["ifeval-1", "ifeval-2"]
    assert [s["id"] for s in R.samples(results, "heldout", ids=["heldout-2"])] == ["heldout-2"]
    with pytest.raises(KeyError):
        R.samples(results, "heldout", ids=["nope"])


def test_comparison_card_escapes_truncates_and_flags(results):
    sample = json.loads(json.dumps(R.samples(results, "heldout")[2]))
    sample["replies"]["sft"]["text"] = "<script>alert('x')</script> 50% of $5 & more " + "word " * 400
    html, latex, plain = R.comparison_card(sample, max_chars=200)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "more characters not shown" in html and "more characters not shown" in plain
    assert "stopped (7 tokens)" in html and "hit the token limit (7 tokens)" in html
    assert r"\$5 \& more" in latex and "<script>" not in latex
    assert html.index("base (plain text)") < html.index("LoRA SFT") < html.index("ShareGPT reference reply")


def test_ifeval_card_shows_checks(results):
    html, _, _ = R.comparison_card(R.samples(results, "ifeval")[0])
    assert "max_words(n=10)" in html and "no_commas: pass" in html and "no_commas: fail" in html


def test_repetition_table_counts_loops(results):
    results.samples[0]["replies"]["sft"]["text"] = "go go go go go go go go"
    df = R.repetition_table(results)
    assert df.loc["LoRA SFT", "looping (distinct-2 < 0.5)"] == "33%"


def test_role_leak_table_lists_each_flagged_reply_with_its_rule(results):
    assert R.role_leak_table(results).empty
    results.samples[0]["replies"]["base_chat"]["text"] = "Sure thing. mendatang\npaymentsmodel\nWrite me a poem."
    df = R.role_leak_table(results)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["system"] == R.label("base_chat") and row["prompt set"] == "heldout"
    assert row["rule"].startswith("5.") and "paymentsmodel⏎W" in row["excerpt"]
    assert f"{R.label('base_chat')} 1 of" in R.role_leak_sentence(results)
    assert f"{R.label('sft')} 0 of" in R.role_leak_sentence(results)


def test_example_conversation_prefers_multi_turn(results):
    results.samples[1]["prompt"] = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                    {"role": "user", "content": "c"}]
    conv = R.example_conversation(results)
    assert conv["id"] == "heldout-2" and conv["messages"][-1]["role"] == "assistant"


def test_learned_spans_are_the_masked_runs():
    class Tok:
        def decode(self, ids):
            return "".join(chr(96 + i) for i in ids)

    enc = {"input_ids": [1, 2, 3, 4, 5], "assistant_masks": [0, 1, 1, 0, 1]}
    assert R.learned_spans(Tok(), enc) == ["bc", "e"]


def test_md_code_survives_backticks_and_newlines():
    assert R.md_code("a`b\nc") == "``a`b↵c``"
    assert R.md_code("<end_of_turn>") == "`<end_of_turn>`"


def test_token_frame_labels_are_ids_or_minus_100():
    rows = [{"position": 0, "id": 2, "token": "<bos>", "learned": False, "control": True},
            {"position": 1, "id": 7, "token": "Hi", "learned": True, "control": False}]
    df = R.token_frame(rows)
    assert list(df["label"]) == [-100, 7] and list(df["control token"]) == ["yes", ""]


def test_sentences_are_generated_from_the_numbers(results):
    assert "LoRA SFT is better" in R.tally_sentence(results)
    assert "stop rate" in R.tally_sentence(results).split("worse")[0]
    assert "3 held-out prompts" in R.eval_setup_note(results)
    assert "fell from" in R.loss_sentence(results)
    assert "With 3 held-out prompts" in R.precision_note(results)
    assert "20 records" in R.data_summary(results) or "read 20 records" in R.data_summary(results)
    assert R.systems_table(results).loc["LoRA SFT", "in this run"] == "yes"


def test_ifeval_stop_rate_gets_an_interval_from_the_samples(results):
    entry = R.metric_entry(results, "sft", "stop_rate", "ifeval")
    assert entry["value"] == 0.5 and entry["ci"] is not None and entry["ci"][0] <= 0.5 <= entry["ci"][1]


def test_statistics_without_an_interval_are_not_called_separated(results):
    results.metrics["systems"]["sft"]["heldout"]["distinct_2"]["value"] = 0.9
    tally = R.tally(results, "sft", "base_chat")
    assert "distinct-2" in tally["better_no_ci"] and "distinct-2" not in tally["better"]
    assert "without an interval" in R.tally_sentence(results)
