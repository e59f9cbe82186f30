"""Show a table, a sentence, a chart or rich text so it works in every output of the book.

Quarto picks one MIME type per output: `text/html` for HTML, and for PDF the first of
markdown, SVG, PNG, JPEG, LaTeX (quarto-cli `displayDataMimeType`). Altair's own output is
HTML that loads Vega from a CDN, which a PDF cannot use. So `show_chart` displays one
bundle holding the interactive chart as `text/html` (drawn with the Vega libraries that
vl-convert ships, put into the page with its first chart: no CDN) and a static PNG rendered
by vl-convert as `image/png`: each output takes the one it can show. Tables go as HTML plus a Markdown
pipe table, rich text (coloured tokens, reply cards) as `text/html` plus `text/latex`.
Every chapter displays its outputs through these functions.
"""

from __future__ import annotations

import html as _html
import numbers
from functools import lru_cache

from .formatting import fmt_cell, md_escape, pdf_safe_markdown



PNG_SCALE = 2  # PDF pages are printed: render at twice the screen size


def chart_png(chart) -> bytes:
    """The chart as a PNG, rendered without a browser (vl-convert)."""
    import vl_convert as vlc

    return vlc.vegalite_to_png(chart.to_json(), scale=PNG_SCALE)


_BUNDLE_ON_PAGE = False  # this kernel's page already holds the vega libraries (see chart_html)


@lru_cache(maxsize=1)
def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed in one script (vl-convert ships them), matching Altair's Vega-Lite
    version where vl-convert has it: the charts need no CDN, so the book works offline and saved."""
    import altair as alt
    import vl_convert as vlc

    wanted = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    known = vlc.get_vegalite_versions() if hasattr(vlc, "get_vegalite_versions") else []
    return vlc.javascript_bundle(vl_version=wanted if wanted in known else None)


VEGA_FILE = "sftlab-vega.js"  # beside _quarto.yml; `project: resources` copies it into the site

# Under Quarto the libraries are one file the whole site shares (`write_vega_bundle`), loaded from
# the page's offset to the site root, which Quarto writes into every page as <meta name="quarto:offset">.
_SHARED_LOADER = (
    '<script type="text/javascript">if (!window.vegaEmbed && !window.__sftlabVega) {{ window.__sftlabVega = true;'
    ' var m = document.querySelector(\'meta[name="quarto:offset"]\');'
    ' document.write(\'<script src="\' + (m ? m.content : "./") + \'{file}"><\\/script>\'); }}</script>'
)


def under_quarto() -> bool:
    """Whether this kernel runs for `quarto render` (Quarto sets QUARTO_FIG_FORMAT for its kernels)."""
    import os

    return "QUARTO_FIG_FORMAT" in os.environ


def write_vega_bundle(root=None):
    """Write the shared libraries (`vega_bundle`) to VEGA_FILE in the project root, if they changed;
    return its path."""
    from pathlib import Path

    from ..notebooks.layout import book_root

    path = Path(root or book_root()) / VEGA_FILE
    text = vega_bundle()
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def chart_html(chart, *, with_bundle: bool, shared: bool = False) -> str:
    """The chart as HTML that draws it with the local vega bundle (`vega_bundle`): a div and a script
    calling `vegaEmbed`; `with_bundle` puts the libraries in front of it (once per page is enough),
    `shared` loads them from the site's one copy instead (`write_vega_bundle`)."""
    import uuid

    target = f"sftlab-chart-{uuid.uuid4().hex[:12]}"
    spec = chart.to_json(indent=None).replace("</", "<\\/")  # a spec string must not close the script
    html = f'<div id="{target}"></div>'
    if shared:
        html += _SHARED_LOADER.format(file=VEGA_FILE)
    elif with_bundle:
        html += f'<script type="text/javascript">{vega_bundle()}</script>'
    return html + (f'<script type="text/javascript">vegaEmbed("#{target}", {spec}, {{"mode": "vega-lite"}})'
                   f'.catch(console.error);</script>')


def chart_bundle(chart) -> dict:
    """The MIME bundle `show_chart` displays: interactive HTML and a static PNG. The HTML loads the
    libraries from the site's one shared file under Quarto, carries them with the page's first chart
    in a notebook, and with every chart in Colab, which shows each output in a frame of its own."""
    import sys

    global _BUNDLE_ON_PAGE
    shared = under_quarto() and "google.colab" not in sys.modules
    if shared:
        write_vega_bundle()
    with_bundle = not _BUNDLE_ON_PAGE or "google.colab" in sys.modules
    _BUNDLE_ON_PAGE = True
    return {
        "text/html": chart_html(chart, with_bundle=with_bundle, shared=shared),
        "image/png": chart_png(chart),
        "text/plain": f"<{type(chart).__name__}: interactive in HTML, PNG in PDF>",
    }


def show_chart(chart) -> None:
    """Display an Altair chart for HTML (interactive) and PDF (PNG) alike."""
    from IPython.display import display

    display(chart_bundle(chart), raw=True)


def show_rich(html: str, latex: str, plain: str | None = None) -> None:
    """Display rich text: HTML for the site and notebooks, LaTeX for the PDF."""
    from IPython.display import display

    display({"text/html": html, "text/latex": latex, "text/plain": plain or _html.unescape(html)}, raw=True)


def _shows_index(frame, index: bool) -> bool:
    """Whether a table shows its index: asked for, and the index means something (named, or not 0..n-1)."""
    import pandas as pd

    return index and (any(frame.index.names) or not isinstance(frame.index, pd.RangeIndex))


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def table_cells(frame, index: bool = True, digits: int = 2, digits_by_column: dict | None = None):
    """The table as display strings (index as leading columns where shown) and, per column,
    whether it holds numbers (aligned right). Integers get thousands separators, floats
    `digits` decimals (`digits_by_column` per column), missing values "–", text as is."""
    import pandas as pd

    frame = frame.reset_index() if _shows_index(frame, index) else frame
    digits_by_column = digits_by_column or {}

    def is_numeric(values) -> bool:  # object columns of numbers (ints with a None) align right too
        present = [v for v in values if not _missing(v)]
        return bool(present) and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in present)

    columns = {c: frame[c].tolist() for c in frame.columns}  # per column: iterrows would turn ints into floats
    numeric = [is_numeric(values) for values in columns.values()]
    cells = {c: [fmt_cell(v, digits_by_column.get(c, digits)) if not _missing(v) else "–" for v in values]
             for c, values in columns.items()}
    return pd.DataFrame(cells, columns=list(frame.columns)), numeric


def markdown_table(frame, index: bool = True, digits: int = 2, digits_by_column: dict | None = None) -> str:
    """A DataFrame as a Markdown pipe table (cells escaped), which Pandoc renders in HTML and LaTeX alike.

    >>> import pandas as pd
    >>> print(markdown_table(pd.DataFrame({"rank": [8], "params": [1234567]})))
    | rank | params |
    |---:|---:|
    | 8 | 1,234,567 |
    """
    cells, numeric = table_cells(frame, index, digits, digits_by_column)
    lines = ["| " + " | ".join(md_escape(c) for c in cells.columns) + " |",
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    for row in cells.itertuples(index=False):
        lines.append("| " + " | ".join(md_escape(v) for v in row) + " |")
    return "\n".join(lines)


def show_table(frame, index: bool = True, *, digits: int = 2, digits_by_column: dict | None = None,
               pdf_max_rows: int | None = None) -> None:
    """Display a table: HTML for the site and notebooks, a Markdown pipe table for the PDF.

    Both show the same cells (`table_cells`); text is escaped, so "<bos>" stays visible. With
    `pdf_max_rows`, a longer table shows that many rows: the PDF's stops there and says how many
    more the HTML version has (a long token-by-token table would otherwise run over pages), and
    the HTML keeps the whole table one click away in a collapsed block.
    """
    from IPython.display import display

    cells, _ = table_cells(frame, index, digits, digits_by_column)
    html = cells.to_html(index=False, escape=True, border=0, classes="table table-sm")
    if pdf_max_rows is not None and len(cells) > pdf_max_rows:
        head = cells.head(pdf_max_rows).to_html(index=False, escape=True, border=0, classes="table table-sm")
        html = (f"{head}<details><summary>Show all {len(cells):,} rows</summary>{html}</details>")
    # The Markdown is what the PDF prints: let LaTeX break long identifiers after an underscore
    # (train_sampling_strategy next to group_by_length would otherwise run into each other), and
    # after a slash in the header row ("loss (nats/token)" ran into the next column's header).
    markdown = markdown_table(frame, index, digits, digits_by_column).replace("\\_", "\\_\\allowbreak{}")
    header, _, rest = markdown.partition("\n")
    markdown = header.replace("/", "/\\allowbreak{}") + "\n" + rest
    if pdf_max_rows is not None and len(frame) > pdf_max_rows:
        lines = markdown.split("\n")
        hidden = len(frame) - pdf_max_rows
        markdown = "\n".join(lines[: 2 + pdf_max_rows]) + (
            f"\n\n*{hidden:,} more rows: the HTML version of this book shows the whole table.*")
    display({"text/html": html, "text/markdown": markdown, "text/plain": cells.to_string(index=False)}, raw=True)


def show_markdown(text: str) -> None:
    """Display generated Markdown (a sentence with numbers in it) in every output format; symbols
    the PDF's fonts lack go as math or a placeholder (`pdf_safe_markdown`)."""
    from IPython.display import Markdown, display

    display(Markdown(pdf_safe_markdown(text)))


def show_facts(facts: list[str]) -> None:
    """Display computed sentences as a Markdown bullet list."""
    from IPython.display import Markdown, display

    display(Markdown(pdf_safe_markdown("\n".join(f"- {f}" for f in facts))))
