"""The book's results tables, built from the hand-made results folder."""

from __future__ import annotations

from sftlab.book import catalog, tables
from sftlab.book import results as results_mod


def test_metrics_table_has_metric_rows_and_system_columns(results):
    df = tables.metrics_table(results)
    assert list(df.columns) == ["base (plain text)", "base + template", "LoRA SFT", "SmolLM2-135M-Instruct"]
    assert df.loc["stop rate (higher is better)", "LoRA SFT"] == "60% [55%, 65%]"
    assert df.loc["ROUGE-L (higher is better)", "base + template"] == "0.120 [0.100, 0.140]"
    assert df.loc["distinct-2 (higher is better)", "LoRA SFT"] == "0.700"  # no interval for distinct-n
    ifeval = tables.metrics_table(results, "ifeval")
    assert ifeval.loc["IFEval prompt-level accuracy (higher is better)", "LoRA SFT"] == "40% [30%, 50%]"


def test_tables_leave_out_systems_the_run_did_not_evaluate(tmp_path, monkeypatch, write_results_folder):
    monkeypatch.delenv(results_mod.RESULTS_ENV, raising=False)
    write_results_folder(tmp_path, systems=["sft"])
    monkeypatch.chdir(tmp_path)
    results = results_mod.load_results()
    assert list(tables.metrics_table(results).columns) == ["LoRA SFT"]
    assert list(tables.ifeval_table(results).columns) == ["n", "LoRA SFT"]
    assert "LoRA SFT" in tables.headline_table(results).columns


def test_loss_table_reports_loss_and_perplexity(results):
    df = tables.loss_table(results)
    assert list(df.index) == ["base + template", "LoRA SFT"]
    assert df.loc["LoRA SFT", "all learned tokens, nats/token"] == "1.80 [1.70, 1.90]"
    assert df.loc["LoRA SFT", "perplexity"].startswith("6.05 [5.47, 6.69]")
    assert "end-of-turn only" not in df.columns  # this hand-made run has no split: no empty columns


def test_ifeval_table_has_overall_rows_then_types(results):
    df = tables.ifeval_table(results)
    assert list(df.index) == ["all prompts (prompt-level)", "all instructions (instruction-level)",
                              "max_words", "no_commas"]
    assert df.loc["max_words", "n"] == "2"


def test_training_config_table_explains_every_field(results, recipe):
    df = tables.training_config_table(results)
    fields = {f for _, f in df.index}
    assert set(recipe["lora"]) | set(recipe["training"]) == fields
    assert all(df["meaning"].str.len() > 0)
    assert df.loc[("SFTConfig", "bf16"), "value"] == "auto → True on this machine"


def test_training_config_table_explains_sftlab_own_training_keys(results):
    import copy

    own = copy.copy(results)
    own.config = {**results.config, "training": {"loss_chunk_size": 256}}
    df = tables.training_config_table(own)
    assert df.loc[("SFTConfig", "loss_chunk_size"), "meaning"].startswith("labelled positions per output-layer chunk")


def test_run_summary(results):
    df = tables.run_summary_table(results)
    assert df.loc["trainable parameters", "value"] == "3.80 M (1.40% of 271.9 M)"
    assert "CPU" in df.loc["hardware", "value"]


def test_data_steps_table_follows_the_report(results):
    df = tables.data_steps_table(results)
    assert df.loc["1. read", "left after the step"] == "20"
    assert df.loc["3. filter", "left after the step"] == "11"
    assert df.loc["4. split", "left after the step"] == "8 train + 3 eval"
    # instruction examples added from too-long conversations: trained on beside the split's 8
    results.data_report["instructions"] = {"share": 0.5, "n_replaced": 4, "per_type": {"lowercase": 4},
                                           "extra": {"n_added": 5, "per_type": {"max_words+lowercase": 5}}}
    df = tables.data_steps_table(results)
    assert df.loc["4. split", "left after the step"] == "8 train + 3 eval"
    assert df.loc["4b. instruction examples", "left after the step"] == "13 train + 3 eval"
    assert "5 more added, cut from conversations too long" in df.loc["4b. instruction examples", "what happens"]
    assert df.loc["5. template + tokenize", "left after the step"].startswith("13 train")


def test_repetition_table_counts_loops(results):
    results.samples[0]["replies"]["sft"]["text"] = "go go go go go go go go"
    df = tables.repetition_table(results)
    assert df.loc["LoRA SFT", "looping (distinct-2 < 0.5)"] == "33%"


def test_role_leak_table_lists_each_flagged_reply_with_its_rule(results):
    assert tables.role_leak_table(results).empty
    results.samples[0]["replies"]["base_chat"]["text"] = "Sure thing. mendatang\npaymentsmodel\nWrite me a poem."
    df = tables.role_leak_table(results)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["system"] == catalog.label("base_chat") and row["prompt set"] == "heldout"
    assert row["rule"].startswith("5.") and "paymentsmodel⏎W" in row["excerpt"]
