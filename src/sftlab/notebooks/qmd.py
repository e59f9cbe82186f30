"""Reading Quarto markdown without Quarto: front matter, ```{python} cells with their `#|`
options, fenced code, div fences and heading attributes (jupytext reads `.qmd` only through the
Quarto CLI, which CI machines do not have)."""

from __future__ import annotations

import re

import yaml

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)?(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S)
_PY_CELL = re.compile(r"^(?P<fence>`{3,})\s*\{(?:python3?)(?:[\s,][^}]*)?\}\s*$")
_OTHER_CELL = re.compile(r"^(?P<fence>`{3,})\s*\{(?P<lang>[A-Za-z][\w-]*)[^}]*\}\s*$")
_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})")
_DIV = re.compile(r"^:{3,}")
_HEADING_ATTRS = re.compile(r"^(#{1,6}\s.*?)\s*\{[^{}]*\}\s*$")
_TABLE_CAPTION = re.compile(r"^:\s+(?P<text>.*?)\s*\{#(?P<label>tbl-[^\s}]+)[^{}]*\}\s*$")


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
        caption = _TABLE_CAPTION.match(line)  # `: caption {#tbl-x}` under a pipe table
        if caption:
            out.append(f"Table: {caption.group('text')}")
            continue
        out.append(_HEADING_ATTRS.sub(r"\1", line))
    return "\n".join(out).strip("\n")


def qmd_cells(body: str, *, drop=frozenset()) -> list[tuple[str, str, list[str]]]:
    """A chapter's body (front matter removed) as cells, in order: `("code", source, tags)` for
    each ```{python} cell, its `#|` options kept as comments (`eval: false` tagged
    `skip-execution`, `error: true` tagged `raises-exception`, nbclient's own tags), and
    `("markdown", text, [])` for the text between them (`_markdown`; lines in `drop` removed).
    Markdown fences, including ones that show a ```{python} cell literally, stay markdown."""
    from .layout import ERROR_TAG, SKIP_TAG

    cells: list[tuple[str, str, list[str]]] = []
    markdown: list[str] = []
    lines = body.splitlines()
    i, md_fence = 0, None

    def flush():
        source = _markdown(markdown, set(drop))
        if source.strip():
            cells.append(("markdown", source, []))
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
            cells.append(("code", source, tags))
            continue
        if md_fence is None:
            match = _FENCE.match(line)
            md_fence = match.group("fence") if match else None
        elif _closes(line, md_fence):
            md_fence = None
        markdown.append(line)
        i += 1
    flush()
    return cells


# Quarto's `{{< var key >}}` shortcode: a value from `_variables.yml` beside `_quarto.yml` (dotted
# keys reach into mappings). Jupyter does not know it, so the export writes the value out.
VARIABLES_FILE = "_variables.yml"
VAR_SHORTCODE = re.compile(r"\{\{<\s*var\s+([^\s>]+)\s*>\}\}")


def read_variables(root) -> dict:
    """The book's `_variables.yml` as a mapping (empty when the file does not exist)."""
    from pathlib import Path

    path = Path(root) / VARIABLES_FILE
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must be a mapping of variable names to values")
    return data


def variable(variables: dict, key: str):
    """The value of a dotted `key` in `variables`; KeyError naming the key when it is not there."""
    value = variables
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"no variable {key!r} in {VARIABLES_FILE}")
        value = value[part]
    if isinstance(value, dict):
        raise KeyError(f"{key!r} in {VARIABLES_FILE} is a group of variables, not a value")
    return value


def substitute_variables(text: str, variables: dict, unresolved: list | None = None) -> str:
    """`text` with every `{{< var key >}}` replaced by its value; an unknown key stays as written
    and is appended to `unresolved`."""
    def one(match):
        try:
            return str(variable(variables, match.group(1)))
        except KeyError as err:
            if unresolved is not None:
                unresolved.append(str(err.args[0]))
            return match.group(0)

    return VAR_SHORTCODE.sub(one, text)
