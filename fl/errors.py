"""The exception hierarchy of :mod:`fl`.

Every error raised for bad input from outside (a config, a file, an array) is a subclass of
:class:`FLError` and also of the builtin it refines (``ValueError``, ``TypeError``,
``FileNotFoundError``), so callers may catch either.
"""

from __future__ import annotations


class FLError(Exception):
    """Base of every error raised by :mod:`fl`."""


class ConfigError(FLError, ValueError):
    """A configuration value is missing, of the wrong type or outside its allowed values.

    ``key`` is the dotted config key (``"client.epochs"``) that was wrong.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key '{key}': {message}")
        self.key = key


class DataError(FLError, ValueError):
    """A data set or partition request cannot be satisfied."""


class DataNotFoundError(DataError, FileNotFoundError):
    """Files of a data set that must be provided locally are absent."""


class UpdateError(FLError, ValueError):
    """A client update has the wrong shape, dtype or non-finite values."""


class CheckpointError(FLError, ValueError):
    """A checkpoint is unreadable or belongs to a different run configuration."""
