"""Execute a chapter the way `quarto render` does, without Quarto (CI machines have none).

Quarto turns a `.qmd` into a notebook of its code and markdown cells, starts a fresh kernel for
it, and runs the cells in the working directory `_quarto.yml`'s `project: execute-dir` names:
`project` is the project root; `file` (Quarto's default) is the chapter's own folder. It runs
nothing of ours first: no setup cell, no `os.chdir`. The Colab notebooks (`export`) do add a
setup cell that moves to the project root, so executing them cannot catch a chapter that only
works from the root; `execute_like_quarto` can.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import yaml

from .execute import _failure, _kernel_manager
from .layout import KERNELSPEC, NotebookError, book_root
from .qmd import qmd_cells, split_front_matter

# Quarto's inline code: `{python} expr` in markdown (quarto-cli notebook.py, cell_execute_inline).
INLINE_PYTHON = re.compile(r"(?:^|[^`])`\{python\}[ \t]([^`]+)`", re.M)


def execute_dir(root: Path, chapter: Path) -> Path:
    """The working directory Quarto gives a chapter's kernel: the project root with
    `project: execute-dir: project` in `_quarto.yml`, else the chapter's folder."""
    config = yaml.safe_load((root / "_quarto.yml").read_text(encoding="utf-8")) or {}
    where = (config.get("project") or {}).get("execute-dir", "file")
    if where not in ("file", "project"):
        raise ValueError(f"_quarto.yml: project.execute-dir must be 'file' or 'project', got {where!r}")
    return root if where == "project" else Path(chapter).resolve().parent


def quarto_notebook(path: Path):
    """The notebook Quarto executes for a chapter: its code cells (with their `#|` options,
    `eval: false` and `error: true` as nbclient tags) and markdown cells, in order, and nothing
    else."""
    import nbformat.v4 as v4

    _, body = split_front_matter(Path(path).read_text(encoding="utf-8"))
    cells = [v4.new_code_cell(source, metadata={"tags": tags} if tags else {}) if kind == "code"
             else v4.new_markdown_cell(source) for kind, source, tags in qmd_cells(body)]
    return v4.new_notebook(cells=cells, metadata={"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}})


def inline_expressions(nb) -> list[str]:
    """Every inline `{python} expr` in the notebook's markdown cells."""
    return [expr for cell in nb.cells if cell.cell_type == "markdown" for expr in INLINE_PYTHON.findall(cell.source)]


def execute_like_quarto(path: Path, root: Path | None = None, *, timeout: int = 900, executed: list | None = None) -> float:
    """Run a chapter as `quarto render` would (`quarto_notebook`, a fresh kernel, `execute_dir`);
    return the wall time in seconds, and append the executed notebook to `executed` if given.
    Raises NotebookError naming the chapter, the failing cell's source and its error. Inline
    `{python}` expressions are evaluated too, after the cells before them, as Quarto does."""
    from nbclient import NotebookClient

    root = Path(root or book_root())
    path = Path(path)
    nb = quarto_notebook(path)
    start = time.perf_counter()
    with _kernel_manager() as km:
        client = NotebookClient(nb, km=km, timeout=timeout, resources={"metadata": {"path": str(execute_dir(root, path))}})
        try:
            with client.setup_kernel(cleanup_kc=True):  # shut the kernel down after (we own it)
                for index, cell in enumerate(nb.cells):
                    if cell.cell_type == "code":
                        client.execute_cell(cell, index)
                    else:
                        _evaluate_inline(client, path, cell)
        except NotebookError:
            raise
        except Exception as error:  # CellExecutionError, CellTimeoutError, DeadKernelError, ...
            raise NotebookError(_failure(path, nb, error)) from error
    if executed is not None:
        executed.append(nb)
    return time.perf_counter() - start


def _evaluate_inline(client, path: Path, cell) -> None:
    """Evaluate a markdown cell's inline expressions in the kernel (Jupyter's user_expressions);
    an expression that fails is a NotebookError naming it."""
    expressions = INLINE_PYTHON.findall(cell.source)
    if not expressions:
        return
    msg_id = client.kc.execute("", silent=True, user_expressions={str(i): e for i, e in enumerate(expressions)})
    reply = client.wait_for_reply(msg_id)
    results = (reply or {}).get("content", {}).get("user_expressions", {})
    for i, expression in enumerate(expressions):
        result = results.get(str(i), {})
        if result.get("status") != "ok":
            raise NotebookError(f"{path.name}: inline expression `{{python}} {expression}` failed: "
                                f"{result.get('ename', '?')}: {result.get('evalue', '')}")
