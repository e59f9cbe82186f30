"""The package stays readable: modules a reader takes in at once, one home for each function."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "sftlab"
MAX_LINES = 500


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "metrics" not in p.relative_to(SRC).parts[:-1])


def test_no_module_is_longer_than_a_reader_takes_in_at_once():
    long = {str(p.relative_to(SRC)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by what they hold): {long}"


def test_no_function_is_defined_in_two_modules():
    homes = defaultdict(list)
    for path in _modules():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                homes[node.name].append(str(path.relative_to(SRC)))
    twice = {name: where for name, where in homes.items() if len(where) > 1}
    assert not twice, f"defined in more than one module (keep one and import it): {twice}"


def test_chapters_import_the_book_package_not_the_old_modules():
    chapters = Path(__file__).resolve().parents[1] / "chapters"
    for qmd in chapters.glob("*.qmd"):
        text = qmd.read_text()
        for old in ("sftlab.report", "sftlab.explain", "sftlab.plots", "sftlab.figures",
                    "from sftlab import report", "from sftlab import explain", "from sftlab import plots"):
            assert old not in text, f"{qmd.name} imports {old}; use sftlab.book"
