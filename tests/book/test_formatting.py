"""How the book writes numbers and text."""

from __future__ import annotations

from sftlab.book import formatting


def test_md_code_survives_backticks_and_newlines():
    assert formatting.md_code("a`b\nc") == "``a`b↵c``"
    assert formatting.md_code("<end_of_turn>") == "`<end_of_turn>`"
