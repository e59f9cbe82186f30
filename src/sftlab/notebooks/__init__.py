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

from .crossrefs import (  # noqa: F401 (the public API, one import away)
    UnresolvedReferenceWarning,
    bibliography_keys,
    book_labels,
    chapter_labels,
    pandoc_path,
    render_citations,
    resolve_references,
    short_caption,
)
from .execute import execute_notebook, execute_notebooks  # noqa: F401
from .export import book_bibliography, chapter_notebook, export_notebooks, qmd_to_notebook, setup_source  # noqa: F401
from .layout import (  # noqa: F401
    CHAPTERS_DIR,
    COLAB_LINK_CLASS,
    COLAB_LINK_TEXT,
    ERROR_TAG,
    HTML_ONLY,
    KERNELSPEC,
    NOT_NOTEBOOKS,
    NOTEBOOKS_DIR,
    PDF_ONLY,
    SKIP_TAG,
    NotebookError,
    badge_block,
    badge_line,
    book_config,
    book_root,
    chapter_files,
    chapter_source,
    colab_url,
    missing_badges,
    pdf_link_line,
    repo_branch,
    repo_url,
)
from .qmd import cell_options, split_front_matter  # noqa: F401
