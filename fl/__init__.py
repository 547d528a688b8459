"""fedshield's federated core: data, models, clients, strategies, aggregators, simulation, CLI.

Heavy pieces (torch models, simulation) are imported from their modules (``fl.simulation``); importing
``fl`` itself stays cheap.
"""

from __future__ import annotations

from fl.errors import CheckpointError, ConfigError, DataError, DataNotFoundError, FLError, UpdateError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "FLError",
    "UpdateError",
    "__version__",
]
