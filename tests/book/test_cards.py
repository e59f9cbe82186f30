"""Side-by-side reply cards and the examples they show."""

from __future__ import annotations

import json

import pytest

from sftlab.book import cards
from sftlab.book import results as results_mod


def test_example_ids_are_first_ids_plus_a_telling_case(results):
    assert cards.example_ids(results, "heldout", n=1) == ["heldout-1", "heldout-3"]
    assert cards.example_ids(results, "ifeval", n=1) == ["ifeval-1", "ifeval-2"]
    assert [s["id"] for s in results_mod.samples(results, "heldout", ids=["heldout-2"])] == ["heldout-2"]
    with pytest.raises(KeyError):
        results_mod.samples(results, "heldout", ids=["nope"])


def test_comparison_card_escapes_truncates_and_flags(results):
    sample = json.loads(json.dumps(results_mod.samples(results, "heldout")[2]))
    sample["replies"]["sft"]["text"] = "<script>alert('x')</script> 50% of $5 & more " + "word " * 400
    html, latex, plain = cards.comparison_card(sample, max_chars=200)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "more characters not shown" in html and "more characters not shown" in plain
    assert "stopped (7 tokens)" in html and "hit the token limit (7 tokens)" in html
    assert r"\$5 \& more" in latex and "<script>" not in latex
    assert html.index("base (plain text)") < html.index("LoRA SFT") < html.index("ShareGPT reference reply")


def test_ifeval_card_shows_checks(results):
    html, _, _ = cards.comparison_card(results_mod.samples(results, "ifeval")[0])
    assert "max_words(n=10)" in html and "no_commas: pass" in html and "no_commas: fail" in html


def test_a_reply_of_many_short_lines_is_capped_by_lines_in_html_too(results):
    # Capping by characters alone let a reply of "next" 90 times make a card 2,915 px tall.
    sample = json.loads(json.dumps(results_mod.samples(results, "heldout")[2]))
    sample["replies"]["sft"]["text"] = "next\n" * 90
    html, latex, _ = cards.comparison_card(sample)
    card = html.split("LoRA SFT", 1)[1].split("</div></div>", 1)[0]
    assert card.count("next") == cards.HTML_MAX_LINES
    assert "more characters not shown" in card
    assert latex.count("next") <= cards.PDF_MAX_LINES
