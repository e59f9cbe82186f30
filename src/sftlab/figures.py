"""Show a figure so it works in every output of the book: HTML site, PDF, notebook, Colab.

Quarto picks one MIME type per output: `text/html` for HTML, and for PDF the first of
markdown, SVG, PNG, JPEG, LaTeX (quarto-cli `displayDataMimeType`). Altair's own
output is HTML that loads Vega from a CDN, which a PDF cannot use. So `show_chart`
displays one bundle holding the interactive chart as `text/html` and a static PNG
rendered by vl-convert as `image/png`: each output takes the one it can show.
Rich text (coloured tokens) goes the same way with `text/html` plus `text/latex`.
"""

from __future__ import annotations

import html as _html

PNG_SCALE = 2  # PDF pages are printed: render at twice the screen size


def chart_png(chart) -> bytes:
    """The chart as a PNG, rendered without a browser (vl-convert)."""
    import vl_convert as vlc

    return vlc.vegalite_to_png(chart.to_json(), scale=PNG_SCALE)


def chart_bundle(chart) -> dict:
    """The MIME bundle `show_chart` displays: interactive HTML and a static PNG."""
    return {
        "text/html": chart.to_html(fullhtml=False),
        "image/png": chart_png(chart),
        "text/plain": f"<{type(chart).__name__}: interactive in HTML, PNG in PDF>",
    }


def show_chart(chart) -> None:
    """Display an Altair chart for HTML (interactive) and PDF (PNG) alike."""
    from IPython.display import display

    display(chart_bundle(chart), raw=True)


def latex_escape(text: str) -> str:
    """Escape text for LaTeX (used for the PDF version of rich HTML output)."""
    table = {
        "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
        "%": r"\%", "_": r"\_", "^": r"\^{}", "~": r"\~{}", "<": r"\textless{}", ">": r"\textgreater{}",
    }
    return "".join(table.get(c, c) for c in text)


def show_rich(html: str, latex: str, plain: str | None = None) -> None:
    """Display rich text: HTML for the site and notebooks, LaTeX for the PDF."""
    from IPython.display import display

    display({"text/html": html, "text/latex": latex, "text/plain": plain or _html.unescape(html)}, raw=True)
