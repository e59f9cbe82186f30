"""Errors that sftlab raises on purpose, each with a message that names the bad thing."""


class SftlabError(Exception):
    """Base class: anything sftlab reports to the user as a clear error."""


class ConfigError(SftlabError, ValueError):
    """A run configuration is invalid (unknown key, wrong type, bad value)."""


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
