"""Attack harnesses that measure leakage (gradient inversion, membership inference, audits)."""

from __future__ import annotations

__all__: list[str] = []
