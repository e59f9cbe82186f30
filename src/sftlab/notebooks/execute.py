"""Run the exported notebooks (CI's check that every chapter executes), each in a fresh kernel of
this interpreter, and say which cell failed and how."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .layout import ERROR_TAG, KERNELSPEC, NotebookError, _ANSI, book_root

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
            client.execute(cleanup_kc=True)  # shut the kernel down after: its model would stay in memory
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
