"""The exception hierarchy of :mod:`dp`."""

from __future__ import annotations


class DPError(Exception):
    """Base of every error raised by :mod:`dp`."""


class DPParameterError(DPError, ValueError):
    """A mechanism or accountant parameter is invalid."""


class BudgetExceededError(DPError):
    """A release would spend more privacy budget than configured."""
