"""Sentences computed from the numbers: comparisons, tallies, notes on the run."""

from __future__ import annotations

from sftlab.book import prose, tables, verdicts


def test_which_run_note_says_when_metrics_were_rescored(results):
    results.run["rescored"] = [
        {"at": "2026-11-28T02:30:00Z", "git_commit": "abcdef0123", "changed": {}},
        {"at": "2026-11-29T10:00:00Z", "git_commit": "0123abcdef",
         "changed": {"base_chat.heldout.role_leak_rate": [0.0, 0.2]}},
    ]
    note = prose.which_run_note(results)
    assert "re-scored" in note and "2026-11-29" in note and "0123abc" in note
    assert "`base_chat.heldout.role_leak_rate`" in note and "2026-11-28" not in note  # no-op rescores are not news


def test_comparison_direction_comes_from_the_numbers(results):
    c = verdicts.compare(results, "stop_rate", "sft", "base_chat")
    assert c.direction == "higher" and c.a_better and c.separated
    assert "LoRA SFT is higher (better" in c.sentence() and "do not overlap" in c.sentence()
    loss = verdicts.compare(results, "mean_nll", "sft", "base_chat", set="loss")
    assert loss.direction == "lower" and loss.a_better
    overlap = verdicts.compare(results, "role_leak_rate", "sft", "base_chat")
    assert overlap.direction == "equal" and "same value" in overlap.sentence()
    tally = verdicts.tally(results, "sft", "base_chat")
    assert "stop rate" in tally["better"] and "ROUGE-L" in tally["unclear"]  # intervals overlap


def test_sentences_are_generated_from_the_numbers(results):
    assert "LoRA SFT is better" in verdicts.tally_sentence(results)
    assert "stop rate" in verdicts.tally_sentence(results).split("worse")[0]
    assert "3 held-out prompts" in prose.eval_setup_note(results)
    assert "fell from" in prose.loss_sentence(results)
    assert "With 3 held-out prompts" in prose.precision_note(results)
    assert "20 records" in prose.data_summary(results) or "read 20 records" in prose.data_summary(results)
    assert tables.systems_table(results).loc["LoRA SFT", "in this run"] == "yes"


def test_statistics_without_an_interval_are_not_called_separated(results):
    results.metrics["systems"]["sft"]["heldout"]["bleu"] = {"value": 0.09, "ci": None}  # a corpus statistic
    tally = verdicts.tally(results, "sft", "base_chat")
    assert "BLEU" in tally["better_no_ci"] and "BLEU" not in tally["better"]
    assert "without an interval" in verdicts.tally_sentence(results)


def test_length_bound_diversity_is_left_out_of_the_verdict(results):
    # distinct-2 over all replies falls with reply length: no verdict is drawn from it
    results.metrics["systems"]["sft"]["heldout"]["distinct_2"]["value"] = 0.9
    tally = verdicts.tally(results, "sft", "base_chat")
    assert not any("distinct-2" == m for part in tally.values() for m in part)


def test_instruction_mix_note_counts_the_mix_and_says_when_limits_were_binding(results):
    results.data_report["n_train"] = 100
    results.data_report["instructions"] = {"share": 0.6, "n_replaced": 60, "per_type": {"lowercase": 30, "max_words": 30},
                                           "skipped": {"within_every_limit": 7, "has_code_fence": 5}}
    note = prose.instruction_mix_note(results)
    assert note.startswith("60 of the 100 training conversations (60%, share 0.6 asked)") and "2 types" in note
    assert "12 rewrite attempts" in note and "binding_limits" not in note
    results.data_report["instructions"]["binding_limits"] = True
    assert "every such example cuts its reply; 7 replies already within every limit" in prose.instruction_mix_note(results)


def test_instruction_mix_note_and_table_show_the_examples_added_from_too_long_conversations(results):
    results.data_report["n_train"] = 100
    results.data_report["instructions"] = {"share": 0.6, "n_replaced": 60, "per_type": {"lowercase": 60},
                                           "skipped": {}}
    assert "no more conversations than without them" in prose.instruction_mix_note(results)
    assert list(tables.instruction_mix_table(results).columns) == ["instruction type", "examples"]
    results.data_report["instructions"]["extra"] = {
        "n_asked": 50, "n_added": 40, "n_pool": 900, "per_type": {"max_words+lowercase": 25, "max_sentences+json": 15},
        "skipped": {"has_code_fence": 9, "does_not_fit": 3}}
    note = prose.instruction_mix_note(results)
    assert "no more conversations" not in note
    assert "A further 40 examples were added (`extra`, 50 asked), made from the 900 conversations" in note
    assert "trains on 140 conversations" in note and "12 attempts were skipped" in note
    table = tables.instruction_mix_table(results)
    assert table["made from"].tolist() == ["a training conversation (replaced)"] + ["a too-long conversation, cut (added)"] * 2
    assert table["instruction type"].tolist()[1:] == ["max_words + lowercase", "max_sentences + json"]
