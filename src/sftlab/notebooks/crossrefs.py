"""Citations and cross-references in the Colab notebooks: Quarto's markup written out for readers.

Jupyter shows Quarto's `[@key]` and `@tbl-x` as typed. `sftlab.notebooks` exports each chapter
and calls `resolve_references` on its markdown cells (code cells and code inside markdown are
left alone): citations become author-year text rendered by pandoc's citeproc (one pandoc call per
notebook, from the pypandoc_binary wheel, never on whole cells, so tables and math keep their
markdown), with a "References" cell at the end; `@sec-x`, `@tbl-x` and `@fig-x` become the
heading or the first words of the caption they point to. Labels that cannot be found stay
readable and are reported (`UnresolvedReferenceWarning`).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from .layout import book_root, chapter_files
from .qmd import _FENCE, _PY_CELL, _TABLE_CAPTION, _closes, cell_options, split_front_matter


# -----------------------------------------------------------------------------
# Citations and cross-references, for readers of the notebooks
#
# Jupyter shows Quarto's `[@key]` and `@tbl-x` as typed. The export rewrites them in markdown
# cells (code cells and code inside markdown are left alone): citations become author-year
# text rendered by pandoc's citeproc (one pandoc call per notebook, from the pypandoc_binary
# wheel, never on whole cells, so tables and math keep their markdown), with a "References"
# cell at the end; `@sec-x`, `@tbl-x` and `@fig-x` become the heading or the first words of
# the caption they point to. Labels that cannot be found stay readable and are reported.

# Quarto's cross-reference prefixes and how the text names each kind.
CROSSREF_KINDS = {
    "fig": "figure", "tbl": "table", "sec": "section", "eq": "equation", "lst": "listing",
    "thm": "theorem", "lem": "lemma", "cor": "corollary", "prp": "proposition", "cnj": "conjecture",
    "def": "definition", "exm": "example", "exr": "exercise", "nte": "note", "tip": "tip",
    "wrn": "warning", "imp": "important note", "cau": "caution",
}
CAPTION_WORDS = 12  # a caption longer than this is cut ("…") when a cross-reference quotes it

# Pandoc's citation key: starts with a letter, digit or _, and has punctuation only inside.
_KEY = r"[A-Za-z0-9_](?:\w|[:.#$%&+?<>~/-]+(?=\w))*"
_NOT_IN_A_WORD = r"(?<![\w.@/\\])"  # me@mail.com and .../@user are not citations
_CITE_ITEM = re.compile(_NOT_IN_A_WORD + r"(?P<minus>-?)@(?P<key>" + _KEY + ")")
_NO_BLANK_LINE = r"(?:[^\[\]\n]|\n(?![ \t]*\n))"
_PROSE_TOKEN = re.compile(
    # left as they are: fenced code, inline code, HTML comments, display math
    r"(?P<skip>^(?P<fence>`{3,}|~{3,})[^\n]*\n(?:.*?\n)??(?:[ \t]*(?P=fence)[`~]*[ \t]*$|\Z)"
    r"|(?P<tick>`+)(?:(?!\n[ \t]*\n).)+?(?P=tick)"
    r"|<!--.*?-->|\$\$.*?\$\$)"
    # [see @a, p. 3; @b] (not a link's text: no ( [ or { right after it)
    rf"|(?P<bracket>\[(?P<body>{_NO_BLANK_LINE}*?@{_NO_BLANK_LINE}*?)\](?![(\[{{]))"
    # @key, -@key, @key [p. 3]
    rf"|{_NOT_IN_A_WORD}(?P<bare>(?P<minus>-?)@(?P<key>{_KEY})(?P<locator>[ ]\[[^\[\]@\n]*\](?![(\[{{]))?)",
    re.M | re.S,
)
_NAMES_KIND = re.compile(r"\b(?:fig(?:ure)?s?|tables?|tbls?|sections?|secs?|chapters?|chaps?)\.?\s*\Z", re.I)
_INLINE_CODE = re.compile(r"(`+)[^`]*?\1")
_HEADING_LABEL = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<text>.*?)\s*\{(?P<attrs>[^{}]*)\}\s*$")
_IMAGE_LABEL = re.compile(r"!\[(?P<text>[^\]]*)\]\([^)]*\)\{#(?P<label>fig-[^\s}]+)[^{}]*\}")


class UnresolvedReferenceWarning(UserWarning):
    """A citation or cross-reference the notebook export could not resolve."""


@dataclass(frozen=True)
class Target:
    """What a cross-reference label points to: a heading (`sec`) or a captioned table or
    figure, in the chapter file `stem`; `chapter` names that chapter for other chapters
    ("chapter 3", 'the chapter "Preface"')."""

    label: str
    kind: str
    text: str
    stem: str
    level: int = 0
    chapter: str = ""


def _caption(value) -> str:
    """A `tbl-cap`/`fig-cap` option's text (a list of subcaptions: the first)."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    return " ".join(str(value or "").split())


def chapter_labels(text: str, stem: str = "chapter") -> dict[str, Target]:
    """The labels a chapter defines: `{#sec-x}` on headings, `#| label: tbl-x`/`fig-x` on
    code cells with their `tbl-cap`/`fig-cap`, `: caption {#tbl-x}` under a pipe table and
    `![caption](file){#fig-x}`. Headings inside code blocks do not count."""
    _, body = split_front_matter(text)
    labels: dict[str, Target] = {}
    lines, i = body.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            code, i = [], i + 1
            while i < len(lines) and not _closes(lines[i], fence.group("fence")):
                code.append(lines[i])
                i += 1
            i += 1
            if _PY_CELL.match(line):
                options = cell_options("\n".join(code))
                label = str(options.get("label") or "")
                kind = label.split("-", 1)[0]
                if kind in ("tbl", "fig"):
                    labels[label] = Target(label, kind, _caption(options.get(f"{kind}-cap")), stem)
            continue
        heading = _HEADING_LABEL.match(line)
        ids = re.findall(r"#(sec-[^\s}]+)", heading.group("attrs")) if heading else []
        if ids:
            labels[ids[0]] = Target(ids[0], "sec", heading.group("text"), stem, level=len(heading.group("hashes")))
        caption = _TABLE_CAPTION.match(line)
        if caption:
            labels[caption.group("label")] = Target(caption.group("label"), "tbl", caption.group("text"), stem)
        for image in _IMAGE_LABEL.finditer(line):
            labels[image.group("label")] = Target(image.group("label"), "fig", _caption(image.group("text")), stem)
        i += 1
    return labels


def book_labels(root: Path | None = None) -> dict[str, Target]:
    """Every chapter's labels (`chapter_labels`), each knowing how to name its chapter:
    numbered chapters in book order ("chapter 3"), unnumbered ones by title."""
    root = root or book_root()
    labels: dict[str, Target] = {}
    number = 0
    for path in chapter_files(root):
        text = path.read_text(encoding="utf-8")
        found = chapter_labels(text, path.stem)
        _, body = split_front_matter(text)
        first = re.search(r"^#\s+(.*?)\s*(\{[^{}]*\})?\s*$", body, re.M)
        meta_title = split_front_matter(text)[0].get("title")
        title = first.group(1) if first else str(meta_title or path.stem)
        unnumbered = bool(first and first.group(2) and re.search(r"\.unnumbered\b|(?<![\w-])-(?=[\s}])", first.group(2)))
        if unnumbered:
            chapter = f'the chapter "{title}"'
        else:
            number += 1
            chapter = f"chapter {number}"
        for label, target in found.items():
            labels.setdefault(label, replace(target, chapter=chapter))
    return labels


def short_caption(text: str, words: int = CAPTION_WORDS) -> str:
    """The first words of a caption, for a cross-reference to quote: its first sentence,
    without parenthetical remarks, cut at a clause or after `words` words if still longer,
    with "…" wherever something was left out.

    >>> short_caption("Held-out loss (mean NLL per token) and perplexity, before and after training, over all tokens and split by part.")
    'Held-out loss and perplexity…'
    >>> short_caption("PEFT methods compared. Costs are qualitative.")
    'PEFT methods compared…'
    >>> short_caption("Step 2, validation: records skipped, by reason.")
    'Step 2, validation: records skipped, by reason'
    """
    text = " ".join(text.split())
    plain = " ".join(re.sub(r"\s*\([^()]*\)", "", text).split()) or text
    plain = plain.rstrip(" .")
    first = re.split(r"(?<=[a-z0-9)])\.\s+(?=[A-Z])", plain, maxsplit=1)
    cut = len(first) > 1 and len(first[0].split()) >= 2
    plain = first[0] if cut else plain
    if len(plain.split()) <= words:
        return plain + "…" * cut
    for stop in (r"[;:](?=\s)", r",(?=\s)"):
        for found in re.finditer(stop, plain):
            head = plain[: found.start()]
            if 3 <= len(head.split()) <= words:
                return head + "…"
            if len(head.split()) > words:
                break
    return " ".join(plain.split()[:words]).rstrip(",;:") + "…"


def _sentence_start(before: str) -> bool:
    """Whether text that follows `before` starts a sentence, paragraph, list item or heading."""
    line = before.rsplit("\n", 1)[-1]
    if re.fullmatch(r"[ \t]*(?:[-*+]|\d+[.)]|#{1,6}|>)[ \t]+", line):
        return True
    if line.strip():  # words before it on its line
        return re.search(r"[.!?][\"'”’)]*[ \t]+\Z", line) is not None
    previous = before[: len(before) - len(line)]
    if not previous.strip() or re.search(r"\n[ \t]*\n\Z", previous):
        return True  # a new cell or paragraph
    last = previous.rstrip().rsplit("\n", 1)[-1]
    return last.lstrip().startswith("#") or re.search(r"[.!?][\"'”’)]*\Z", last) is not None


class _Refs:
    """Resolves one notebook's citations and cross-references (see the section comment)."""

    def __init__(self, stem, labels, bib_keys, unresolved):
        self.stem, self.labels, self.bib_keys = stem, labels, bib_keys
        self.unresolved = unresolved
        self.citations: list[str] = []  # pandoc input, in order of first use
        self.rendered: dict[str, str] = {}

    # --- what a label reads as
    def crossref(self, label: str, minus: bool, before: str, after: str) -> str:
        kind = label.split("-", 1)[0]
        name = CROSSREF_KINDS.get(kind, kind)
        target = self.labels.get(label)
        if target is None or not target.text:
            self.report(f"no {name} labelled {label} in the chapters" if target is None else f"{label} has no caption")
            text = f"the {name} {label}"
        elif target.kind == "sec" and target.level == 1:
            if target.stem == self.stem:
                text = "this chapter"
            elif target.chapter.startswith("chapter "):
                text = f'{target.chapter}, "{target.text}"'
            else:
                text = target.chapter
            if minus:
                text = f'"{target.text}"'
        else:
            quoted = f'"{target.text}"' if target.kind == "sec" else f'"{short_caption(target.text)}"'
            text = quoted if minus else f"the {name} {quoted}"
            located = re.match(r"\s*(?:in\s+|\(\s*)-?@sec-|\s*in\s+(?:chapter|the chapter)\b", after)
            if target.stem != self.stem and target.chapter and not located:
                text += f" in {target.chapter}"
        if not minus and _sentence_start(before):
            text = text[:1].upper() + text[1:]
        return text

    def report(self, problem: str) -> None:
        line = f"{self.stem}: {problem}"
        if line not in self.unresolved:  # each pass over the cells meets it again
            self.unresolved.append(line)

    # --- the two passes over a cell: find the citations, then write the cell
    def rewrite(self, text: str, collect: bool) -> str:
        def replace(match):
            if match.group("skip") is not None:
                return match.group(0)
            before, after = text[: match.start()], text[match.end() :]
            if match.group("bracket") is not None:
                return self._bracket(match, before, after, collect)
            key = match.group("key")
            if key.split("-", 1)[0] in CROSSREF_KINDS and "-" in key:
                locator = match.group("locator") or ""
                return self.crossref(key, bool(match.group("minus")), before, locator + after) + locator
            if key not in self.bib_keys:
                return match.group(0)  # an @handle or a decorator, not a citation
            return self._cite(" ".join(match.group("bare").split()), match.group(0), collect)

        return _PROSE_TOKEN.sub(replace, text)

    def _bracket(self, match, before, after, collect):
        body = match.group("body")
        parts = body.split(";")
        items = [_CITE_ITEM.search(_INLINE_CODE.sub("", part)) and _CITE_ITEM.search(part) for part in parts]
        if not all(items):  # [text with an @ in it] is not a citation: look inside it
            return "[" + self.rewrite(body, collect) + "]"
        xrefs = [m for m in items if "-" in m.group("key") and m.group("key").split("-", 1)[0] in CROSSREF_KINDS]
        if not xrefs:
            return self._cite(" ".join(match.group(0).split()), match.group(0), collect)
        texts = []
        for n, (part, m) in enumerate(zip(parts, items)):
            if m in xrefs:  # [Table @tbl-x]: a prefix that names the kind replaces ours
                prefix = part[: m.start()].lstrip()
                minus = bool(m.group("minus")) or _NAMES_KIND.search(prefix) is not None
                text = self.crossref(m.group("key"), minus, before if n == 0 else "x", part[m.end() :] + after)
                texts.append(prefix + text + part[m.end() :].rstrip())
        cites = [part.strip() for part, m in zip(parts, items) if m not in xrefs]
        if not cites:
            return "; ".join(texts)
        citation = "[" + " ".join("; ".join(cites).split()) + "]"
        return self._cite(citation, citation, collect) + " (" + "; ".join(texts) + ")"

    def _cite(self, citation: str, original: str, collect: bool) -> str:
        """`citation` (pandoc's input) as rendered; `original` where nothing was rendered."""
        if collect:
            if citation not in self.citations:
                self.citations.append(citation)
                for m in _CITE_ITEM.finditer(citation):
                    if m.group("key") not in self.bib_keys:
                        self.report(f"citation key {m.group('key')} is not in the bibliography")
            return original
        if citation not in self.rendered:
            self.report(f"{citation} left as written: no bibliography file to render it from")
        return self.rendered.get(citation, original)


def bibliography_keys(paths) -> set[str]:
    """The entry keys of BibTeX files (`@type{key,`), @string/@comment/@preamble aside."""
    keys = set()
    for path in paths:
        for kind, key in re.findall(r"^\s*@(\w+)\s*[{(]\s*([^,\s]+)\s*,", Path(path).read_text(encoding="utf-8"), re.M):
            if kind.lower() not in ("string", "comment", "preamble"):
                keys.add(key)
    return keys


def pandoc_path() -> str:
    """The pandoc binary of the pypandoc_binary wheel (so every machine renders citations
    with the same pandoc version), else whatever pandoc pypandoc finds."""
    try:
        import pypandoc
    except ImportError as error:
        raise RuntimeError(
            "rendering citations needs pandoc from the pypandoc_binary package: "
            "pip install 'pypandoc_binary>=1.17,<2' (in sftlab's book extra: pip install -e '.[book]')"
        ) from error
    bundled = sorted(Path(pypandoc.__file__).parent.joinpath("files").glob("pandoc*"))
    return str(bundled[0]) if bundled else pypandoc.get_pandoc_path()


def render_citations(citations: list[str], bibliography, csl=None) -> tuple[list[str], str]:
    """Render citations (`[@a; @b, p. 3]`, `@a`) with pandoc's citeproc in one call: their
    author-year text, in order, and the bibliography of the works they cite as markdown,
    one entry per paragraph."""

    marker = "CITATION-{:04d}"
    document = "\n\n".join(f"{marker.format(n)} {text}" for n, text in enumerate(citations))
    document += "\n\n::: {#refs}\n:::\n"
    command = [pandoc_path(), "--from", "markdown", "--to", "markdown-citations-smart", "--wrap=none", "--citeproc"]
    for path in [bibliography] if isinstance(bibliography, (str, Path)) else bibliography:
        command += ["--bibliography", str(path)]
    if csl:
        command += ["--csl", str(csl)]
    done = subprocess.run(command, input=document, capture_output=True, text=True, encoding="utf-8", check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pandoc failed to render the citations:\n{done.stderr}")
    rendered: dict[int, str] = {}
    blocks = done.stdout.split("\n\n")
    refs_at = len(blocks)
    for n, block in enumerate(blocks):
        found = re.fullmatch(r"CITATION-(\d{4}) (.*)", block.strip(), re.S)
        if found:
            rendered[int(found.group(1))] = " ".join(found.group(2).split())
        elif block.lstrip().startswith(":::"):
            refs_at = min(refs_at, n)
    if sorted(rendered) != list(range(len(citations))):
        raise RuntimeError(f"could not read pandoc's rendering of the citations:\n{done.stdout}")
    entries = []
    for block in blocks[refs_at:]:
        text = "\n".join(line for line in block.splitlines() if not re.match(r"^:{3,}", line)).strip()
        if text:
            entries.append(_plain_links(text))
    return [_plain_links(rendered[n]) for n in range(len(citations))], "\n\n".join(entries)


def _plain_links(text: str) -> str:
    """Pandoc's `[url](url){.uri}` as `<url>`; other link attributes dropped (Jupyter shows them raw)."""
    def link(match):
        label, url = match.group(1), match.group(2)
        return f"<{url}>" if label.lower() == url.lower() else f"[{label}]({url})"

    return re.sub(r"\[([^\[\]]*)\]\(([^()\s]*)\)(?:\{[^{}]*\})?", link, text)


def resolve_references(cells, *, stem: str, labels: dict, bibliography=None, csl=None, unresolved: list | None = None):
    """Rewrite the markdown cells' citations and cross-references in place (see the section
    comment); add a "References" cell when anything is cited and a bibliography is given.
    Problems are appended to `unresolved` as readable lines."""
    import nbformat.v4 as v4

    unresolved = unresolved if unresolved is not None else []
    bibliographies = [bibliography] if isinstance(bibliography, (str, Path)) else list(bibliography or [])
    refs = _Refs(stem, labels, bibliography_keys(bibliographies), unresolved)
    markdown = [cell for cell in cells if cell.cell_type == "markdown"]
    if bibliographies:
        for cell in markdown:
            refs.rewrite(cell.source, collect=True)
    if refs.citations:
        texts, bib = render_citations(refs.citations, bibliographies, csl)
        refs.rendered = dict(zip(refs.citations, texts))
    else:
        refs.bib_keys, bib = set(), ""  # nothing to render: bracketed citations stay as written
    for cell in markdown:
        cell.source = refs.rewrite(cell.source, collect=False)
    if bib:
        cells.append(v4.new_markdown_cell("## References\n\n" + bib))
    return cells
