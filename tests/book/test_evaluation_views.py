"""The evaluation chapter's views on a real (tiny) run: paired comparisons, categories, the split
loss, and the question table."""

from __future__ import annotations

import pytest

from sftlab.book import charts, questions, tables
from sftlab.book.results import comparison


def test_loss_table_shows_the_split(tiny_run):
    df = tables.loss_table(tiny_run)
    assert {"reply text only", "end-of-turn only"} <= set(df.columns)
    assert "end-of-turn)" in df.loc["LoRA SFT", "scored tokens"]


def test_headline_table_has_the_paired_difference_column(tiny_run):
    df = tables.headline_table(tiny_run)
    column = "LoRA SFT − base + template, paired"
    assert column in df.columns
    stop = comparison(tiny_run, "sft", "base_chat", "stop_rate")
    assert df.loc["stop rate (higher is better)", column].startswith(f"{100 * stop['difference']:+.0f} pp")


def test_comparison_table_reads_each_paired_interval(tiny_run):
    df = tables.comparison_table(tiny_run, "sft", "base_chat")
    assert len(df) == len([c for c in tiny_run.metrics["comparisons"] if c["a"] == "sft" and c["b"] == "base_chat"])
    assert list(df["prompt set"])[0] == "held-out loss"  # loss first, then held-out, then IFEval
    for c, reading in zip(sorted((c for c in tiny_run.metrics["comparisons"] if c["a"] == "sft" and c["b"] == "base_chat"),
                                 key=lambda c: {"loss": 0, "heldout": 1, "ifeval": 2, "multiturn": 3}[c["set"]]), df["reading"]):
        crosses = c["ci"][0] <= 0 <= c["ci"][1]
        assert (reading == "not separable") == crosses or reading == "no better direction"


def test_categories_table_counts_every_reply(tiny_run):
    df = tables.categories_table(tiny_run, "heldout")
    n = len([s for s in tiny_run.samples if s["set"] == "heldout"])
    for system in df.columns[1:]:
        assert sum(int(cell.split(" ")[0]) for cell in df[system]) == n


@pytest.mark.parametrize("build", [
    lambda r: charts.chart_categories(r, "heldout"),
    lambda r: charts.chart_categories(r, "ifeval"),
    lambda r: charts.chart_paired_differences(r, "rate"),
    lambda r: charts.chart_paired_differences(r, "score"),
])
def test_new_charts_build(tiny_run, build):
    spec = build(tiny_run).to_dict()
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")


def test_question_table_has_one_row_per_question_with_both_paired_differences(tiny_run):
    df = questions.question_table(tiny_run)
    assert "Ends its reply by itself (held-out stop rate)" in df.index
    stop = comparison(tiny_run, "sft", "base_chat", "stop_rate")
    assert df.loc["Ends its reply by itself (held-out stop rate)", "LoRA SFT − base + template"].startswith(
        f"{100 * stop['difference']:+.0f} pp")
    assert "Answers checkable questions correctly (accuracy)" not in df.index  # no qa section in this run

