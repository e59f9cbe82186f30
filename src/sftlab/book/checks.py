"""What a rendered page would get wrong, found in the text Quarto receives (a chapter's markdown,
a cell's `text/markdown`, `text/latex` and `text/html` outputs), since Quarto itself cannot run here:

- `unsupported_characters`: characters the PDF's fonts (Latin Modern) have no glyph for, outside
  math, where the PDF would print a blank or a replacement box;
- `eaten_brackets`: `<<title>>`-like text that Pandoc or a browser reads as an HTML tag, so it
  vanishes ("give it a title like <>");
- `raw_backticks_in_tables`: a code span in a pipe table cell the table code escaped twice, which
  prints its backticks;
- `progress_outputs`: progress bars (a widget is blank offline; a bar is not content);
- `png_width`: a chart wider than the book's text column (Quarto's HTML column is about 680 px;
  a wider chart scrolls there and is shrunk in the PDF).

Each returns a list of readable problems (empty: nothing found); tests run them on every chapter.
"""

from __future__ import annotations

import re

from .formatting import PDF_SUPPORTED

_FENCED = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.M | re.S)
_MATH = re.compile(r"\$\$.*?\$\$|(?<![\\$])\$[^$\n]+?\$", re.S)
_LATEX_MATH = re.compile(r"\\ensuremath\{[^{}]*\}|\\\(.*?\\\)|\\\[.*?\\\]", re.S)
_UNSUPPORTED = re.compile(rf"[^{PDF_SUPPORTED}]")
_BRACKETS = re.compile(r"(?<!\\)<<|(?<!\\)>>")
_TABLE_ROW = re.compile(r"^\|.*\|\s*$", re.M)
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
COLUMN_PX = 680
_PROGRESS = re.compile(r"\d+%\|[^|\n]*\|\s*\d+/\d+|\bit/s\]|Loading weights")


def _context(text: str, at: int, width: int = 30) -> str:
    return text[max(0, at - width): at + width].replace("\n", " ")


def unsupported_characters(text: str, *, latex: bool = False) -> list[str]:
    """Characters outside the PDF fonts' coverage, outside math (`$...$` in Markdown; in LaTeX,
    `\\ensuremath{...}` and `\\(...\\)`), each with some context."""
    masked = (_LATEX_MATH if latex else _MATH).sub(lambda m: " " * len(m.group()), text)
    return [f"{m.group()!r} (U+{ord(m.group()):04X}) in ...{_context(text, m.start())}..."
            for m in _UNSUPPORTED.finditer(masked)]


def _prose(markdown: str) -> str:
    """Markdown without fenced code blocks and code spans (their text is shown as it is)."""
    text = _FENCED.sub(lambda m: " " * len(m.group()), markdown)
    return re.sub(r"(`+)[^`]*?\1", lambda m: " " * len(m.group()), text)


def eaten_brackets(markdown: str) -> list[str]:
    """Unescaped `<<` or `>>` in Markdown prose (outside code), which renders as a tag."""
    text = _prose(markdown)
    return [f"unescaped {m.group()!r} in ...{_context(markdown, m.start())}..." for m in _BRACKETS.finditer(text)]


def eaten_brackets_html(html: str) -> list[str]:
    """`<<` or `>>` left raw in HTML output (it should be `&lt;&lt;`)."""
    text = re.sub(r"<(script|style)\b.*?</\1>", "", html, flags=re.S | re.I)  # code, not text
    return [f"raw {m.group()!r} in HTML ...{_context(text, m.start())}..." for m in re.finditer(r"<<|>>", text)]


def raw_backticks_in_tables(markdown: str) -> list[str]:
    """Pipe table rows whose cells show escaped backticks (a code span escaped as text)."""
    return [f"escaped backticks in table row {row.group()[:80]!r}" for row in _TABLE_ROW.finditer(markdown)
            if "\\`" in row.group()]


def progress_outputs(outputs: list[dict]) -> list[str]:
    """Cell outputs that are progress bars: a widget, or a stream or text with a bar in it."""
    found = []
    for output in outputs:
        data = output.get("data") or {}
        if _WIDGET_MIME in data:
            found.append("a widget output (blank offline)")
        text = output.get("text") or data.get("text/plain") or ""
        text = "".join(text) if isinstance(text, list) else text
        if _PROGRESS.search(text):
            found.append(f"a progress bar: {text.strip()[:60]!r}")
    return found


def png_width(data: str | bytes) -> int:
    """A PNG's width in pixels, from its header (`data`: bytes or base64 text, as a notebook stores it)."""
    import base64
    import struct

    raw = base64.b64decode(data) if isinstance(data, str) else data
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">I", raw[16:20])[0]


def output_faults(nb) -> list[str]:
    """Every problem of an executed notebook's outputs (see the module docstring), named by cell."""
    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        outputs = cell.get("outputs", [])
        found = progress_outputs(outputs)
        for output in outputs:
            data = output.get("data") or {}
            markdown, latex, html = data.get("text/markdown"), data.get("text/latex"), data.get("text/html")
            if markdown:
                found += unsupported_characters(markdown) + eaten_brackets(markdown) + raw_backticks_in_tables(markdown)
            if latex:
                found += unsupported_characters(latex, latex=True)
            if html and not markdown and not latex and not any(k.startswith("image/") for k in data):
                found.append("HTML-only output: the PDF has nothing to show for it")
            if html:
                found += eaten_brackets_html(html if isinstance(html, str) else "".join(html))
            if data.get("image/png"):
                from .display import PNG_SCALE

                width = png_width(data["image/png"]) / PNG_SCALE
                if width > COLUMN_PX:
                    found.append(f"a figure {width:.0f} px wide in a {COLUMN_PX} px column")
        label = re.search(r"^#\|\s*label:\s*(\S+)", cell.source, re.M)
        problems += [f"cell {index} ({label.group(1) if label else 'no label'}): {p}" for p in found]
    return problems


def markdown_faults(markdown: str) -> list[str]:
    """Every problem of a chapter's own Markdown (its prose, code cells excluded by the caller)."""
    text = _FENCED.sub("", markdown)
    return unsupported_characters(text) + eaten_brackets(markdown)


# A page count of the PDF from an executed chapter (Quarto cannot run here), item by item, at the
# book's geometry (scrreprt, 11 pt, 25 mm margins, letter). Calibrated against the real render of
# 2026-12-03 (../shared/render/book-2026-12-03.pdf, commit bd5f85e, every cell's code printed: its
# chapters re-executed and measured with `all_code=True`): WORDS_PER_PAGE and FIGURE_PAGES measured
# on the PDF itself (full prose pages hold 450-480 words; figures are 6.5 in wide, median 3.4 in tall
# with caption), the other four fitted by non-negative least squares over the eight chapters. Each
# chapter came out within 0.7 pages (10%) of its real length, 106.1 pages for 106.9 in all
# (tests/book/test_checks.py keeps the measurements). One render fixes these: a second would test them.
WORDS_PER_PAGE = 480     # prose, and Markdown output that is not a table
LINES_PER_PAGE = 44      # printed code and plain output lines (long lines wrap at about 80 characters)
TABLE_WORDS_PER_PAGE = 173  # words in the cells of a table (captions, rules and padding included)
RICH_WORDS_PER_PAGE = 506   # words of a LaTeX output (reply cards, token strips)
FIGURE_PAGES = 0.5       # one figure with its caption
CELL_PAGES = 0.113       # the space around each printed code cell and its output
# A cell whose code the PDF hides (`echo: false`) keeps only its output's spacing: half, a guess the
# render could not measure (it printed every cell's code).
HIDDEN_CELL_PAGES = CELL_PAGES / 2
_TABLE_RULE = re.compile(r"^\|[ :|-]*-{3,}[ :|-]*\|?\s*$", re.M)  # |---| and |:---| alike
_LATEX_MARKUP = re.compile(r"\\[a-zA-Z]+\*?|\[[0-9A-Fa-f]{6}\]|\{[0-9A-Fa-f]{6}\}|[{}]")


def page_parts(nb, *, all_code: bool = False) -> dict:
    """What a chapter prints, counted for `page_estimate`: prose words, printed code and output lines,
    code cells printed and hidden (with output), figures, table-cell words, LaTeX-output words.
    `all_code` counts every cell's code, as the PDF printed it before glue code was hidden; otherwise
    only `echo: true` cells print their code."""
    parts = dict(words=0, lines=0, cells=0, hidden_cells=0, figures=0, table_words=0, rich_words=0)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts["words"] += len(re.sub(r"\{\{<.*?>\}\}", "x", cell.source).split())
            continue
        shown = all_code or re.search(r"^#\|\s*echo:\s*true", cell.source, re.M)
        if shown:
            parts["lines"] += sum(1 for line in cell.source.splitlines() if not line.startswith("#|"))
            parts["cells"] += 1
        elif cell.get("outputs"):
            parts["hidden_cells"] += 1
        for output in cell.get("outputs", []):
            data = output.get("data") or {}
            markdown = "".join(data.get("text/markdown", ""))
            if "image/png" in data:
                parts["figures"] += 1
            elif markdown and _TABLE_RULE.search(markdown):
                parts["table_words"] += sum(1 for w in markdown.split() if not set(w) <= set("|:-"))
            elif "text/latex" in data:
                parts["rich_words"] += len(_LATEX_MARKUP.sub(" ", "".join(data["text/latex"])).split())
            elif markdown:
                parts["words"] += len(markdown.split())
            elif output.get("output_type") == "stream":
                parts["lines"] += "".join(output.get("text", "")).count("\n")
    return parts


def pages_from_parts(parts: dict) -> float:
    """The estimated pages of `page_parts`' counts."""
    return (parts["words"] / WORDS_PER_PAGE + parts["lines"] / LINES_PER_PAGE + parts["cells"] * CELL_PAGES
            + parts["hidden_cells"] * HIDDEN_CELL_PAGES
            + parts["figures"] * FIGURE_PAGES + parts["table_words"] / TABLE_WORDS_PER_PAGE
            + parts["rich_words"] / RICH_WORDS_PER_PAGE)


def page_estimate(nb, *, all_code: bool = False) -> float:
    """Estimated PDF pages of an executed chapter notebook (see the constants above)."""
    return pages_from_parts(page_parts(nb, all_code=all_code))


# Numbers in prose that are not results: model and format names, years, list markers, the
# confidence level, and the facts listed in NOT_RESULTS (a dataset's size, a vocabulary, a
# quoted reply). Everything else a chapter's prose prints must come from `{{< var >}}`.
_NAMES = re.compile(r"""(?x)
    \b(?:gemma-3-270m|SmolLM2-135M(?:-Instruct)?|SmolLM2|Gemma[ ]3|Q4_K_M|fp32|bf16|fp16|NF4|AVX-512|AVX2
       |Tulu[ ]3|ROUGE-L|BLEU-4|distinct-\d|all-MiniLM-L6-v2|MiniLM-L6-v2|Python[ ]3\.\d+)\b
  | \b(?:19|20)\d\d\b | \bQ\d\.\d\b | \b\d+(?:\.\d)?[ ]?[BM]\b | \b\d+-bit\b | \b\d-core\b | \b95%
  | ^\s*\d+\.[ ] | \(\d\)[ ] | \bsection[ ]\d(?:,[ ]part[ ]\d)?\b
""")
NOT_RESULTS = (
    "16 bytes", "4 bytes", "2 bytes", "~4 bits",  # fp32 weight, gradient and two moments; frozen fp32; bf16; NF4
    "262,144-way", "262,144-row",  # Gemma 3's vocabulary
    "541 prompts",  # the size of google/IFEval
    "in under 50", "fewer than 50 words", "exactly 3 bullet points",  # examples of instructions
    '"What is 100 minus 37?", "100"', '"99 plus 1 is 100"', '"5 factorial is equal to 120 ... equals', "240\")",
    "the 270M base model",
)


def typed_numbers(markdown: str) -> list[str]:
    """Numbers typed by hand into a chapter's prose ("line N: 625 | the line"): outside code, math,
    inline code, links, citations, `{{< var >}}` and the names and facts above."""
    out, code = [], False
    for n, line in enumerate(markdown.splitlines(), 1):
        if line.startswith("```"):
            code = not code
            continue
        if code or line.startswith(("#|", "<!--")):
            continue
        text = re.sub(r"\{\{<.*?>\}\}|`[^`]*`|\$[^$]*\$|\[@[^\]]*\]|@[\w:-]+|\]\([^)]*\)|<https?://[^>]*>|\{[#.][^}]*\}",
                      "", line)
        for phrase in NOT_RESULTS:
            text = text.replace(phrase, "")
        text = _NAMES.sub("", text)
        out += [f"line {n}: {x} | {line.strip()[:100]}" for x in re.findall(r"(?<![\w-])\d+(?:[.,]\d+)?%?", text)]
    return out
