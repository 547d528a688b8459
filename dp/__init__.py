"""Client-level differential privacy: mechanisms, accountants and a durable budget ledger.

numpy/scipy only (no torch, no :mod:`fl`), so other FL stacks can embed it.
"""

from __future__ import annotations

from dp.errors import BudgetExceededError, DPError, DPParameterError

__all__ = ["BudgetExceededError", "DPError", "DPParameterError"]
