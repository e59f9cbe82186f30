"""Tables as the book shows them: one set of cells, escaped for HTML and Markdown alike."""

from __future__ import annotations

import html
import re

import pandas as pd

from sftlab.book import display


def test_markdown_table_escapes_cells():
    md = display.markdown_table(pd.DataFrame({"a": ["<end_of_turn> | x_1 *y*"]}, index=pd.Index(["r"], name="k")))
    assert r"\<end\_of\_turn\> \| x\_1 \*y\*" in md
    assert md.splitlines()[0] == "| k | a |"


def test_markdown_table_formats_numbers():
    text = display.markdown_table(pd.DataFrame({"a|b": ["x\ny"], "n": [1234567], "f": [0.5], "t": ["<bos>"]}))
    assert text.splitlines()[0] == "| a\\|b | n | f | t |"
    # the PDF's text font has no return arrow: the newline is drawn as math
    assert text.splitlines()[2] == "| x$\\hookleftarrow$y | 1,234,567 | 0.50 | \\<bos\\> |"


def _html_rows(markup: str) -> list[list[str]]:
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", markup, re.DOTALL)
    cell = r"<t[hd][^>]*>(.*?)</t[hd]>"
    return [[html.unescape(c).strip() for c in re.findall(cell, row, re.DOTALL)] for row in rows]


def _markdown_rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    rows = [lines[0], *lines[2:]]  # lines[1] is the alignment row
    return [[re.sub(r"\\(.)", r"\1", c.strip()) for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in rows]


def test_show_table_html_and_markdown_show_the_same_cells(monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False, **kw: shown.append(obj))
    frame = pd.DataFrame({"count": pd.Series([1234567, None, 3], dtype=object),  # ints with a gap stay ints
                          "share": [0.5, None, 0.125], "token": ["<bos>", None, "a & b"]})
    frame.index = pd.Index(["x", "y", "z"], name="row")
    display.show_table(frame)
    (bundle,) = shown
    html_rows, md_rows = _html_rows(bundle["text/html"]), _markdown_rows(bundle["text/markdown"])
    assert html_rows == md_rows
    assert html_rows == [["row", "count", "share", "token"], ["x", "1,234,567", "0.50", "<bos>"],
                         ["y", "–", "–", "–"], ["z", "3", "0.12", "a & b"]]
    assert "&lt;bos&gt;" in bundle["text/html"] and "\\<bos\\>" in bundle["text/markdown"]
    assert bundle["text/markdown"].splitlines()[1] == "|:---|---:|---:|:---|"


def test_charts_draw_offline_with_the_libraries_once_per_page(monkeypatch):
    import re
    import sys

    import altair as alt
    import pandas as pd

    from sftlab.book import display as D

    chart = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_point().encode(x="x", y="y")
    monkeypatch.setattr(D, "_BUNDLE_ON_PAGE", False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    first, second = D.chart_bundle(chart)["text/html"], D.chart_bundle(chart)["text/html"]
    for page in (first, second):
        assert not re.search(r"<script[^>]*\ssrc=", page) and "cdn.jsdelivr" not in page  # nothing remote
        assert "vegaEmbed(" in page
    assert "window.vegaEmbed" in first and "window.vegaEmbed" not in second
    monkeypatch.setitem(sys.modules, "google.colab", object())  # Colab: each output is a page of its own
    assert "window.vegaEmbed" in D.chart_bundle(chart)["text/html"]


def test_a_long_table_is_cut_in_the_pdf_and_kept_whole_in_the_html(monkeypatch):
    import IPython.display
    import pandas as pd

    from sftlab.book.display import show_table

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda bundle, raw=False: shown.append(bundle))
    show_table(pd.DataFrame({"n": range(50)}), index=False, pdf_max_rows=10)
    bundle = shown[0]
    assert bundle["text/html"].split("<details>")[1].count("<td>") == 50  # every row, one click away
    assert bundle["text/markdown"].count("\n| ") == 10 and "40 more rows" in bundle["text/markdown"]  # 10 rows


def test_the_pdf_table_may_break_long_identifiers(monkeypatch):
    import IPython.display

    import pandas as pd

    from sftlab.book.display import show_table

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda bundle, raw=False: shown.append(bundle))
    show_table(pd.DataFrame({"field": ["train_sampling_strategy"], "value": ["group_by_length"]}), index=False)
    assert r"train\_\allowbreak{}sampling\_\allowbreak{}strategy" in shown[0]["text/markdown"]
    assert "train_sampling_strategy" in shown[0]["text/html"]  # the HTML is untouched


def test_under_quarto_every_chart_page_loads_one_shared_copy_of_the_libraries(monkeypatch, tmp_path):
    import sys

    import altair as alt
    import pandas as pd
    import yaml

    from sftlab.book import display as D

    (tmp_path / "_quarto.yml").write_text("project: {type: book}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QUARTO_FIG_FORMAT", "png")
    monkeypatch.setattr(D, "_BUNDLE_ON_PAGE", False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    chart = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_point().encode(x="x", y="y")
    page = D.chart_bundle(chart)["text/html"]
    assert "window.vegaEmbed=" not in page.replace(" ", "") and len(page) < 20_000  # not the 900 KB bundle
    assert D.VEGA_FILE in page and "quarto:offset" in page
    assert (tmp_path / D.VEGA_FILE).read_text() == D.vega_bundle()
    # the site gets the file: _quarto.yml copies it into _book/
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    assert D.VEGA_FILE in yaml.safe_load((root / "_quarto.yml").read_text())["project"]["resources"]


def test_a_long_table_is_collapsed_in_html_beyond_its_first_rows(monkeypatch):
    import IPython.display
    import pandas as pd

    from sftlab.book.display import show_table

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda bundle, raw=False: shown.append(bundle))
    show_table(pd.DataFrame({"token": [f"t{i}" for i in range(227)]}), pdf_max_rows=30)
    html = shown[0]["text/html"]
    visible, collapsed = html.split("<details>", 1)
    # header row + 30 rows shown; the collapsed block has the header + all 227
    assert visible.count("<tr") == 31 and "Show all 227 rows" in collapsed and collapsed.count("<tr") == 228


def test_a_chapter_kernel_draws_no_progress_bar_after_importing_the_book_package():
    """In a notebook kernel tqdm.auto is tqdm's notebook bar, which ignores TQDM_DISABLE (the first
    load of the base model on a fresh machine drew a GGUF dequantisation bar into chapter 1)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import sftlab.book\nfrom tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='working'):\n    pass\n"
        "from tqdm.notebook import tqdm as notebook_bar\nprint(issubclass(tqdm, notebook_bar), tqdm(range(1)).disable)")]
    NotebookClient(nb, timeout=120).execute()
    outputs = nb.cells[0].outputs
    assert [o.output_type for o in outputs] == ["stream"], outputs  # no widget, no bar on stderr
    assert outputs[0].text == "True True\n"
