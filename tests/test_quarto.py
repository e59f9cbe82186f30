"""The book as `quarto render` runs it: each chapter's cells in a fresh kernel, in the working
directory `_quarto.yml` gives it, with nothing of ours run first (sftlab.notebooks.quarto).

Quarto itself cannot be installed on these machines; what it does with a chapter is reproduced
here from its documented behaviour and source (quarto-cli, src/resources/jupyter/notebook.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sftlab.notebooks import NotebookError, chapter_files
from sftlab.notebooks.quarto import execute_dir, execute_like_quarto, inline_expressions, quarto_notebook

ROOT = Path(__file__).resolve().parents[1]

QUARTO_YML = """\
project:
  type: book
{extra}
book:
  title: t
  repo-url: https://github.com/sftlab/sftlab
  chapters: [index.qmd, chapters/01-reads.qmd]
"""

READS_A_PROJECT_FILE = """\
# Reads

```{python}
from pathlib import Path
text = Path("configs/x.yaml").read_text()
```

The file says `{python} text.strip()`.
"""


def tiny_book(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "chapters").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "x.yaml").write_text("hello\n")
    (tmp_path / "_quarto.yml").write_text(QUARTO_YML.format(extra=extra))
    (tmp_path / "index.qmd").write_text("# Preface {.unnumbered}\n")
    (tmp_path / "chapters" / "01-reads.qmd").write_text(READS_A_PROJECT_FILE)
    return tmp_path


def test_without_execute_dir_a_chapter_runs_in_its_own_folder_and_a_root_relative_path_fails(tmp_path):
    # The bug of the first real render: chapter 5 read configs/ablations.yaml from chapters/.
    book = tiny_book(tmp_path)
    assert execute_dir(book, book / "chapters" / "01-reads.qmd") == book / "chapters"
    with pytest.raises(NotebookError) as failure:
        execute_like_quarto(book / "chapters" / "01-reads.qmd", book, timeout=60)
    message = str(failure.value)
    assert "01-reads.qmd" in message and "FileNotFoundError" in message and 'Path("configs/x.yaml")' in message


def test_with_execute_dir_project_the_same_chapter_runs_and_its_inline_code_is_evaluated(tmp_path):
    book = tiny_book(tmp_path, "  execute-dir: project")
    assert execute_dir(book, book / "chapters" / "01-reads.qmd") == book
    assert execute_like_quarto(book / "chapters" / "01-reads.qmd", book, timeout=60) > 0


def test_a_failing_inline_expression_is_named(tmp_path):
    book = tiny_book(tmp_path, "  execute-dir: project")
    chapter = book / "chapters" / "01-reads.qmd"
    chapter.write_text(READS_A_PROJECT_FILE.replace("text.strip()", "undefined_name"))
    with pytest.raises(NotebookError, match=r"01-reads.qmd: inline expression `\{python\} undefined_name` failed: NameError"):
        execute_like_quarto(chapter, book, timeout=60)


def test_nothing_runs_before_the_chapters_own_cells(tmp_path):
    # The exported Colab notebooks start with a setup cell that moves to the project root;
    # Quarto runs no such cell, so the Quarto-like notebook must not have one either.
    book = tiny_book(tmp_path)
    nb = quarto_notebook(book / "chapters" / "01-reads.qmd")
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    assert code == ['from pathlib import Path\ntext = Path("configs/x.yaml").read_text()']
    assert inline_expressions(nb) == ["text.strip()"]


def test_the_kernel_is_shut_down_after_the_chapter(tmp_path):
    # Each chapter's kernel holds its models (GBs); eight of them left running fill the memory.
    import time

    import psutil

    book = tiny_book(tmp_path, "  execute-dir: project")
    chapter = book / "chapters" / "01-reads.qmd"
    chapter.write_text("```{python}\nimport os\nopen('pid', 'w').write(str(os.getpid()))\n```\n")
    execute_like_quarto(chapter, book, timeout=60)
    pid = int((book / "pid").read_text())
    for _ in range(50):
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.1)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_an_unknown_execute_dir_is_an_error(tmp_path):
    book = tiny_book(tmp_path, "  execute-dir: somewhere")
    with pytest.raises(ValueError, match="execute-dir must be 'file' or 'project'"):
        execute_dir(book, book / "chapters" / "01-reads.qmd")


# -----------------------------------------------------------------------------
# The real book's settings


def quarto_config() -> dict:
    return yaml.safe_load((ROOT / "_quarto.yml").read_text())


def test_the_book_runs_every_chapter_from_the_project_root():
    assert quarto_config()["project"]["execute-dir"] == "project"
    for chapter in chapter_files(ROOT):
        assert execute_dir(ROOT, chapter) == ROOT


def test_one_execution_serves_both_formats():
    # Quarto's Jupyter cache keys a notebook on its code cells plus the setup cell Quarto puts
    # first, which is written from these four options: equal in both formats, the PDF pass finds
    # the HTML pass's execution in the cache instead of running the chapter again.
    config = quarto_config()
    assert config["execute"]["cache"] is True
    html, pdf = config["format"]["html"], config["format"]["pdf"]
    for key in ("fig-width", "fig-height", "fig-format", "fig-dpi"):
        assert key in html and html.get(key) == pdf.get(key), key
    # A cache hit restores code cells only, never inline `{python}` results (quarto-cli
    # notebook.py, nb_from_cache), so a chapter with inline code would lose its numbers.
    inline = {p.name: inline_expressions(quarto_notebook(p)) for p in chapter_files(ROOT)}
    assert {name: found for name, found in inline.items() if found} == {}


@pytest.mark.parametrize("chapter", chapter_files(ROOT), ids=lambda p: p.stem)
def test_every_cells_options_are_valid_yaml(chapter):
    # Quarto reads a cell's `#|` lines as YAML and stops on an error; a backslash in a
    # double-quoted caption ("$\\alpha$") is one. sftlab's own reader only skips such a cell.
    for cell in quarto_notebook(chapter).cells:
        lines = [line[2:] for line in cell.source.splitlines() if line.startswith("#|")] if cell.cell_type == "code" else []
        if lines:
            options = yaml.safe_load("\n".join(lines))
            assert isinstance(options, dict), cell.source[:80]


def test_html_reads_offline():
    html = quarto_config()["format"]["html"]
    assert html["html-math-method"] == "mathml"  # no MathJax from a CDN
    assert (ROOT / html["css"]).is_file()


def test_the_preface_is_unnumbered_so_the_chapters_are_numbered_from_one():
    first = (ROOT / "index.qmd").read_text().lstrip().splitlines()[0]
    assert first.startswith("# Preface") and ".unnumbered" in first


@pytest.mark.slow
@pytest.mark.parametrize("chapter", chapter_files(ROOT), ids=lambda p: p.stem)
def test_every_chapter_executes_as_quarto_runs_it(chapter):
    """The acceptance test: every chapter, from its .qmd, in a fresh kernel in Quarto's
    working directory, runs top to bottom, and nothing it shows would print wrong in the PDF or
    the offline HTML (sftlab.book.checks: glyphs, eaten <<brackets>>, backticks in tables,
    progress bars, HTML-only outputs)."""
    from sftlab.book.checks import output_faults

    executed = []
    execute_like_quarto(chapter, ROOT, timeout=900, executed=executed)
    assert output_faults(executed[0]) == []
