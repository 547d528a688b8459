"""Adapters that embed fedshield into other federated-learning stacks.

Each adapter depends on its host stack only as an optional extra and is imported from its own module, so
``import fl`` and ``import fl.integrations`` never import a host stack:

* :mod:`fl.integrations.flower` -- Flower (``pip install fedshield[flower]``): a SecAgg / SecAgg+ server
  workflow and client mod over Flower's Message API, a CKKS client mod and strategy, and a client-level DP
  strategy wrapper with fedshield's accountant and budget ledger.
"""

from __future__ import annotations

__all__: list[str] = []
