"""Simulation backends: where client work runs.

The default backend is :class:`fl.simulation.Simulation` itself (every client, one after another, in this
process). :mod:`fl.backends.ray` spreads client work over Ray actors on this machine's cores or a Ray
cluster, with bit-identical results; it needs the optional extra (``pip install 'fedshield[ray]'``).
Importing :mod:`fl` or this package never imports Ray: the Ray names below load it on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from fl.errors import FLError

if TYPE_CHECKING:
    from fl.backends.ray import ClientWorker, ClientWorkerPool, RaySecAggDriver, RaySimulation

__all__ = [
    "BackendError",
    "BackendParameterError",
    "BackendUnavailableError",
    "ClientWorker",
    "ClientWorkerPool",
    "RaySecAggDriver",
    "RaySimulation",
    "ray_available",
]

_RAY_NAMES = frozenset({"ClientWorker", "ClientWorkerPool", "RaySecAggDriver", "RaySimulation"})


class BackendError(FLError):
    """A simulation backend cannot run as asked."""


class BackendUnavailableError(BackendError, ImportError):
    """The backend's optional dependency is not installed."""


class BackendParameterError(BackendError, ValueError):
    """A backend argument (``num_workers``, ``chunks_per_worker``, ...) is outside its allowed values.

    ``name`` is the argument that was wrong.
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"backend argument '{name}': {message}")
        self.name = name


def ray_available() -> bool:
    """Whether Ray is installed (found without importing it; an import can still fail on a broken install)."""
    return importlib.util.find_spec("ray") is not None


def __getattr__(name: str) -> Any:
    if name in _RAY_NAMES:
        # import_module, not `from fl.backends import ray`: the latter would accept a stale attribute
        ray_backend = importlib.import_module("fl.backends.ray")  # BackendUnavailableError without Ray
        return getattr(ray_backend, name)
    raise AttributeError(f"module 'fl.backends' has no attribute {name!r}")
