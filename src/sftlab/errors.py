"""Errors that sftlab raises on purpose, each with a message that names the bad thing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class SftlabError(Exception):
    """Base class: anything sftlab reports to the user as a clear error."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe (or a run folder): where it is, which key, what is expected."""

    where: str  # the file: "configs/x.yaml", or "ablations.yaml: variant rank-4"
    key: str  # the key path, "training.learning_rate"; "" for the file as a whole
    message: str  # what is wrong and what is expected

    def __str__(self) -> str:
        return ": ".join(part for part in (self.where, self.key, self.message) if part)


class ConfigError(SftlabError, ValueError):
    """A run configuration is invalid (unknown key, wrong type, bad value).

    Raised with a message, or with `problems` (every `Problem` a check found, reported
    together: one line each); `problems` is always a list, empty for a message alone."""

    def __init__(self, message: str = "", *, problems: Sequence[Problem] = ()):
        self.problems = list(problems)
        if not message and self.problems:
            lines = [str(p) for p in self.problems]
            files = sorted({p.where for p in self.problems if p.where})
            head = f"{files[0]}: " if len(files) == 1 else ""
            message = lines[0] if len(lines) == 1 else (
                f"{head}{len(lines)} problems:\n" + "\n".join(f"  {line}" for line in lines))
        super().__init__(message)


class DataError(SftlabError, ValueError):
    """A dataset file or record cannot be read."""


class SourceError(SftlabError):
    """A model or dataset source cannot be resolved or loaded."""


class HubUnavailableError(SourceError):
    """A Hugging Face Hub id was asked for, but the Hub does not answer."""


class MissingPackageError(SourceError, ImportError):
    """An optional package (offline model or data) is not installed."""


class TemplateError(SftlabError, ValueError):
    """A conversation cannot be rendered with the chosen chat template."""
