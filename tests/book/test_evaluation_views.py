"""The evaluation chapter's new views on a real (tiny) run: paired comparisons, categories, the split
loss, the IFEval reading and the published scores; every sentence built from the run's numbers."""

from __future__ import annotations

import pytest

from sftlab.book import charts, prose, tables, verdicts
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


def test_sentences_come_from_the_numbers(tiny_run):
    loss = tiny_run.metrics["heldout_loss"]["sft"]
    text = prose.loss_split_sentence(tiny_run)
    assert f"{loss['eot_nll']['value']:.1f} nats" in text
    counts = tiny_run.metrics["systems"]["sft"]["heldout"]["categories"]
    assert prose.category_sentence(tiny_run, "sft").startswith(f"Of LoRA SFT's {sum(counts.values())} replies")
    assert "Prompt-level accuracy, counting only what each reply wrote itself" in prose.ifeval_sentence(tiny_run)
    assert "tell the two apart" in verdicts.tally_sentence(tiny_run) or "separable" in verdicts.tally_sentence(tiny_run)


def test_published_scores_carry_their_source_and_the_caveat(tiny_run):
    text = prose.published_note(tiny_run)
    assert "[@smollm2card]" in text and "[@gemma3270mcard]" in text
    assert "not comparable one to one" in text
    assert f"{len([s for s in tiny_run.samples if s['set'] == 'ifeval'])} prompts" in text


def test_epoch_sentence_compares_training_and_held_out_loss(tiny_run):
    text = prose.epoch_sentence(tiny_run)
    held = tiny_run.metrics["heldout_loss"]["sft"]["mean_nll"]
    assert f"{held:.2f} on held-out ones" in text


@pytest.mark.parametrize("build", [
    lambda r: charts.chart_categories(r, "heldout"),
    lambda r: charts.chart_categories(r, "ifeval"),
    lambda r: charts.chart_paired_differences(r, "rate"),
    lambda r: charts.chart_paired_differences(r, "score"),
])
def test_new_charts_build(tiny_run, build):
    spec = build(tiny_run).to_dict()
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")


def test_old_runs_without_comparisons_fall_back_to_interval_overlap(results):
    # The hand-made folder predates paired comparisons: the verdict says so.
    assert "non-overlapping 95% intervals" in verdicts.tally_sentence(results)
