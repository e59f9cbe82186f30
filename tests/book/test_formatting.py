"""How the book writes numbers and text."""

from __future__ import annotations

from sftlab.book import formatting


def test_md_code_survives_backticks_and_newlines():
    assert formatting.md_code("a`b\nc") == "``a`b↵c``"
    assert formatting.md_code("<end_of_turn>") == "`<end_of_turn>`"


def test_a_small_loss_difference_keeps_a_digit_that_shows_it():
    from sftlab.book.formatting import fmt_diff

    assert fmt_diff({"difference": 0.0021, "ci": [0.0004, 0.0032]}, "nats") == "+0.002 [+0.000, +0.003]"
    assert fmt_diff({"difference": 0.08, "ci": [0.07, 0.09]}, "nats") == "+0.08 [+0.07, +0.09]"
    assert fmt_diff({"difference": -0.77, "ci": [-0.9, -0.6]}, "rate") == "-77 pp [-90, -60]"
