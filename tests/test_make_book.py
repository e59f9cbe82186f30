"""`make book` leaves both the HTML site and the PDF in _book/, and a failed PDF still leaves the
site. Quarto is not installable here, so a stub `quarto` on PATH records its calls and behaves
as a book render does: a single-format render empties its output folder first."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STUB = """\
#!/usr/bin/env bash
# a stand-in for quarto: logs its arguments, renders like a book render does
echo "$*" >> "$STUB_LOG"
if [ "$1" = "render" ]; then
  to=""; out="_book"
  while [ $# -gt 0 ]; do
    case "$1" in --to) to="$2"; shift;; --output-dir) out="$2"; shift;; esac; shift
  done
  rm -rf "$out"; mkdir -p "$out" .jupyter_cache   # a single-format render empties its folder
  if [ "$to" = "html" ]; then echo site > "$out/index.html"; fi
  if [ "$to" = "pdf" ]; then
    [ -n "$STUB_PDF_FAILS" ] && { echo "LaTeX error" >&2; exit 1; }
    echo pdf > "$out/sftlab.pdf"
  fi
fi
exit 0
"""


@pytest.fixture
def project(tmp_path):
    """A copy of the Makefile in a folder whose install step is already done."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    os.utime(tmp_path / "pyproject.toml", (1, 1))
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    (tmp_path / ".venv" / ".installed").touch()
    (venv / "sftlab").write_text('#!/bin/sh\necho "sftlab $*" >> "$STUB_LOG"\n')  # writes _variables.yml
    (venv / "sftlab").chmod(0o755)
    for folder in ("results", "src"):
        (tmp_path / folder).mkdir()
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in {"quarto": STUB, "xelatex": "#!/bin/sh\nexit 0\n"}.items():
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    return tmp_path


def make_book(project: Path, **env) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PATH": f"{project / 'stubs'}:{os.environ['PATH']}",
               "STUB_LOG": str(project / "quarto.log"), **env}
    return subprocess.run(["make", "book"], cwd=project, env=environ, capture_output=True, text=True, timeout=120)


def test_make_book_leaves_the_html_site_and_the_pdf(project):
    done = make_book(project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (project / "_book" / "index.html").is_file()
    assert (project / "_book" / "sftlab.pdf").is_file()
    assert not (project / ".book-pdf").exists()
    calls = (project / "quarto.log").read_text().splitlines()
    assert calls == ["sftlab book variables", "render --to html", "render --to pdf --output-dir .book-pdf"]


def test_a_failed_pdf_still_leaves_the_site_and_says_so(project):
    done = make_book(project, STUB_PDF_FAILS="1")
    assert done.returncode != 0
    assert (project / "_book" / "index.html").is_file()
    assert "The PDF failed" in done.stdout and "_book/" in done.stdout
