"""The book's numbers and claims, held to the committed results: `_variables.yml` is what the
results give, every `{{< var >}}` a chapter prints exists, and every claim a chapter marks
(`<!-- claim: NAME -->`) holds (sftlab.book.variables, sftlab.book.claims)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftlab.book.claims import CLAIMS, marked_claims
from sftlab.book.variables import VARIABLES_FILE, missing_variables, read_variables, render_variables, book_variables
from sftlab.notebooks import chapter_files

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = chapter_files(ROOT)


def test_the_committed_variables_are_what_the_committed_results_give():
    committed = (ROOT / VARIABLES_FILE).read_text(encoding="utf-8")
    assert committed == render_variables(book_variables(ROOT)), "run `sftlab book variables` and commit it"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_number_a_chapter_prints_is_a_variable(chapter):
    assert missing_variables(chapter.read_text(encoding="utf-8"), read_variables(ROOT)) == []


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_every_claim_holds_for_the_committed_results(name):
    assert CLAIMS[name](ROOT), f"the book says {name!r}, and the committed results no longer support it"


def test_every_marked_claim_exists_and_every_claim_is_marked():
    marked = [name for chapter in CHAPTERS for name in marked_claims(chapter.read_text(encoding="utf-8"))]
    assert sorted(set(marked) - set(CLAIMS)) == []
    assert sorted(set(CLAIMS) - set(marked)) == []


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_no_result_is_typed_into_the_prose_by_hand(chapter):
    from sftlab.book.checks import typed_numbers

    assert typed_numbers(chapter.read_text(encoding="utf-8")) == []


def test_a_typed_number_is_found():
    from sftlab.book.checks import typed_numbers

    found = typed_numbers("It trained on 625 conversations, {{< var training.conversations >}} in all.\n"
                          "```{python}\nx = 625\n```\nGemma 3 in 2024, Q5.2, `r = 16`, $r = 16$.")
    assert found == ["line 1: 625 | It trained on 625 conversations, {{< var training.conversations >}} in all."]
