"""Where the book and its notebooks are: the project root, `_quarto.yml`'s repository URL and
branch, the chapters that become notebooks, and the "Open in Colab" badge each chapter carries
(`badge_block`: a badge in HTML, the link written out in the PDF)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

CHAPTERS_DIR = "chapters"
NOTEBOOKS_DIR = "notebooks"
NOT_NOTEBOOKS = {"references"}  # chapters with no code: the bibliography page
# The badge is a text link styled as a badge (`.colab-link` in chapters/book.css), not Colab's
# remote SVG: offline, an image would show as a broken picture, a link still reads as text. The
# PDF writes the link out instead (a printed badge cannot be clicked): Quarto's conditional content.
COLAB_LINK_TEXT = "Open this chapter as a notebook in Colab"
COLAB_LINK_CLASS = "colab-link"
HTML_ONLY = '::: {.content-visible when-format="html"}'
PDF_ONLY = '::: {.content-visible when-format="pdf"}'
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

# Quarto cell options that change how nbclient runs a cell, as nbclient's own cell tags.
SKIP_TAG = "skip-execution"  # `#| eval: false`: Quarto shows the code but never runs it
ERROR_TAG = "raises-exception"  # `#| error: true`: the chapter shows an error on purpose

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class NotebookError(Exception):
    """A notebook failed to execute; the message names the notebook, cell and error."""


def book_root(start: Path | str | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) that holds
    `_quarto.yml`, else the checkout this module lives in."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents, Path(__file__).resolve().parents[3]):
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
    return f"[{COLAB_LINK_TEXT}]({colab_url(chapter_stem, root)}){{.{COLAB_LINK_CLASS}}}"


def pdf_link_line(chapter_stem: str, root: Path | None = None) -> str:
    """The PDF's version of the badge: the Colab link written out, since a printed badge cannot be clicked."""
    return f"This chapter runs as a notebook in Colab: <{colab_url(chapter_stem, root)}>"


def badge_block(chapter_stem: str, root: Path | None = None) -> str:
    """What each chapter carries near its top: its badge line in HTML, its Colab link written out in the PDF."""
    return (f"{HTML_ONLY}\n{badge_line(chapter_stem, root)}\n:::\n\n"
            f"{PDF_ONLY}\n{pdf_link_line(chapter_stem, root)}\n:::")


def chapter_files(root: Path | None = None) -> list[Path]:
    """The chapters that become notebooks: the preface (`index.qmd`, which Quarto wants beside
    `_quarto.yml`) first, then `chapters/*.qmd` without the references page and partials
    (`_name.qmd`, Quarto's convention for included files)."""
    root = root or book_root()
    files = [
        p
        for p in (root / CHAPTERS_DIR).glob("*.qmd")
        if p.stem not in NOT_NOTEBOOKS and not p.name.startswith("_") and p.stem != "index"
    ]
    preface = [root / "index.qmd"] if (root / "index.qmd").is_file() else []
    return preface + sorted(files, key=lambda p: p.name)


def chapter_source(path: Path, root: Path | None = None) -> str:
    """A chapter's path as `_quarto.yml` names it, relative to the project root (`index.qmd`,
    `chapters/01-background.qmd`)."""
    root = root or book_root()
    return Path(path).resolve().relative_to(root.resolve()).as_posix()


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
