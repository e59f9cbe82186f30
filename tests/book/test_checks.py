"""The checks that stand in for looking at a rendered page (sftlab.book.checks), and the book's
chapters held to them: their prose here, their executed outputs in tests/test_quarto.py."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from sftlab.book.checks import (
    eaten_brackets,
    eaten_brackets_html,
    markdown_faults,
    output_faults,
    png_width,
    progress_outputs,
    raw_backticks_in_tables,
    unsupported_characters,
)
from sftlab.book.formatting import latex_escape, md_escape
from sftlab.notebooks import cell_options, chapter_files
from sftlab.notebooks.quarto import quarto_notebook

ROOT = Path(__file__).resolve().parents[2]


def test_characters_without_a_pdf_glyph_are_found_outside_math_only():
    assert unsupported_characters("plain – “quoted” café, ×2") == []
    found = unsupported_characters("ΔW = (α/r)·B·A")
    assert [f.split(" ")[0] for f in found] == ["'Δ'", "'α'"] and "U+03B1" in found[1]
    assert unsupported_characters(r"$\Delta W = \frac{\alpha}{r}$ and $$α$$") == []
    assert unsupported_characters(r"\ensuremath{\alpha} ok", latex=True) == []
    assert len(unsupported_characters("天气 ↵", latex=True)) == 3


def test_the_escapes_the_book_uses_leave_nothing_unsupported():
    text = "a reply\nwith → arrows, α, 天气 and −1"
    assert unsupported_characters(md_escape(text)) == []
    assert unsupported_characters(latex_escape(text), latex=True) == []
    assert "in another script" in latex_escape(text)  # a visible placeholder, not a blank


def test_double_angle_brackets_are_found_unless_escaped_or_code():
    assert eaten_brackets('give it a title like <<My Title>>') != []
    assert eaten_brackets(r'like \<\<My Title\>\> or `<<code>>`') == []
    assert eaten_brackets("```\n<<in a fence>>\n```\n") == []
    assert eaten_brackets_html("like &lt;&lt;title&gt;&gt;<script>x = a >> 2</script>") == []
    assert eaten_brackets_html("like <<title>>") != []


def test_escaped_backticks_in_a_table_row_are_found():
    assert raw_backticks_in_tables("| name |\n|:---|\n| \\`default\\` |") != []
    assert raw_backticks_in_tables("| name |\n|:---|\n| `default` |") == []


def test_progress_bars_and_widgets_are_found():
    bar = {"output_type": "stream", "name": "stderr", "text": "Loading weights:   0%|          | 0/236 [00:00<?, ?it/s]"}
    widget = {"output_type": "display_data", "data": {"application/vnd.jupyter.widget-view+json": {}, "text/plain": "x"}}
    assert len(progress_outputs([bar])) == 1 and len(progress_outputs([widget])) == 1
    assert progress_outputs([{"output_type": "stream", "name": "stdout", "text": "done in 3 s"}]) == []


def test_output_faults_name_the_cell():
    cell = nbformat.v4.new_code_cell("#| label: tbl-x\nshow()")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"text/html": "<p>only html</p>", "text/plain": "x"}),
                    nbformat.v4.new_output("display_data", data={"text/markdown": "α", "text/plain": "α"})]
    problems = output_faults(nbformat.v4.new_notebook(cells=[cell]))
    assert len(problems) == 2 and all(p.startswith("cell 0 (tbl-x): ") for p in problems)


@pytest.mark.parametrize("chapter", chapter_files(ROOT), ids=lambda p: p.stem)
def test_every_chapters_prose_and_captions_print_in_the_pdf(chapter):
    cells = quarto_notebook(chapter).cells
    prose = [c.source for c in cells if c.cell_type == "markdown"]
    captions = [str(cell_options(c.source).get(key)) for c in cells if c.cell_type == "code"
                for key in ("fig-cap", "tbl-cap") if cell_options(c.source).get(key)]
    assert markdown_faults("\n\n".join(prose + captions)) == []


def test_a_chart_wider_than_the_column_is_found():
    import altair as alt
    import pandas as pd

    from sftlab.book.display import PNG_SCALE, chart_png

    frame = pd.DataFrame({"x": [1, 2], "y": [3, 4]})
    for width, too_wide in ((300, False), (900, True)):
        png = chart_png(alt.Chart(frame).mark_point().encode(x="x", y="y").properties(width=width))
        cell = nbformat.v4.new_code_cell("show_chart(c)")
        stored = __import__("base64").b64encode(png).decode()  # a notebook stores PNGs as base64 text
        cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": stored, "text/plain": "c"})]
        assert png_width(png) / PNG_SCALE > width
        assert bool(output_faults(nbformat.v4.new_notebook(cells=[cell]))) is too_wide


def test_no_paragraph_appears_twice_in_the_book():
    # Generated summaries used to reprint earlier paragraphs word for word (the Q5.2, Q5.6 and
    # Q5.7 boxes); every paragraph of prose is now written once.
    import re

    from sftlab.notebooks.qmd import read_variables, substitute_variables

    variables = read_variables(ROOT)
    seen = {}
    for chapter in chapter_files(ROOT):
        for cell in quarto_notebook(chapter).cells:
            if cell.cell_type != "markdown":
                continue
            for paragraph in re.split(r"\n\s*\n", substitute_variables(cell.source, variables)):
                words = re.sub(r"<!--.*?-->", "", paragraph).split()
                if len(words) < 12:
                    continue
                key = " ".join(words).lower()
                assert key not in seen, f"{chapter.name} repeats a paragraph of {seen[key]}: {' '.join(words[:15])}..."
                seen[key] = chapter.name


def test_the_page_estimate_matches_the_real_render_chapter_by_chapter():
    """The counts of each chapter of the 2026-12-03 render (commit bd5f85e, re-executed) give its real
    length within a page and 10%, and the book's within 2%: the constants are that render's."""
    import json
    from pathlib import Path

    from sftlab.book.checks import pages_from_parts

    render = json.loads((Path(__file__).parent / "data" / "render-2026-12-03-pages.json").read_text())
    total = actual = 0.0
    for name, chapter in render["chapters"].items():
        estimate, real = pages_from_parts(chapter["parts"]), chapter["pages_to_last_line"]
        assert abs(estimate - real) < min(1.0, 0.1 * real), (name, estimate, real)
        total, actual = total + estimate, actual + real
    assert abs(total - actual) < 0.02 * actual


def test_page_parts_count_what_the_pdf_prints():
    import nbformat

    from sftlab.book.checks import page_estimate, page_parts

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("Five words of {{< var a.b >}} prose."),
        nbformat.v4.new_code_cell("#| echo: true\nx = 1\ny = 2", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="a\nb\n")]),
        nbformat.v4.new_code_cell("show()", outputs=[  # hidden in the PDF: its output only
            nbformat.v4.new_output("display_data", data={"text/markdown": "| a | b |\n|:---|---:|\n| one two | 3 |\n"}),
            nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<chart>"}),
            nbformat.v4.new_output("display_data", data={"text/latex": "\\textbf{four} plain \\emph{words} here"}),
        ]),
        nbformat.v4.new_code_cell("setup()"),  # hidden and silent: nothing printed
    ]
    parts = page_parts(nb)
    assert parts == {"words": 5, "lines": 4, "cells": 1, "hidden_cells": 1, "figures": 1,
                     "table_words": 5, "rich_words": 4}  # a |:---| table is a table, not prose
    assert page_parts(nb, all_code=True)["cells"] == 3 and page_parts(nb, all_code=True)["lines"] == 6
    assert page_estimate(nb) > page_estimate(nbformat.v4.new_notebook()) == 0
