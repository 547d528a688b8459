"""Frozen data that crosses the seams between clients, aggregators, strategies and the server."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fl.errors import UpdateError


@dataclass(frozen=True, slots=True)
class ClientUpdate:
    """What one client sends for one round: a flat float32 model delta and its example count.

    ``delta`` is ``w_local - w_global`` (or ``-gradient`` for FedSGD), always a 1-D float32 vector in
    the layout of :class:`fl.layout.ParamLayout`. ``num_examples`` is n_k, the FedAvg weight.
    """

    client_id: int
    delta: np.ndarray
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.delta, np.ndarray):
            raise UpdateError(f"client {self.client_id}: delta must be a numpy array, got {type(self.delta).__name__}")
        if self.delta.dtype != np.float32:
            raise UpdateError(f"client {self.client_id}: delta dtype must be float32, got {self.delta.dtype}")
        if self.delta.ndim != 1:
            raise UpdateError(f"client {self.client_id}: delta must be 1-D, got shape {self.delta.shape}")
        if isinstance(self.num_examples, bool) or not isinstance(self.num_examples, int | np.integer):
            raise UpdateError(f"client {self.client_id}: num_examples must be an int")
        if self.num_examples < 0:
            raise UpdateError(f"client {self.client_id}: num_examples must be >= 0, got {self.num_examples}")

    def __repr__(self) -> str:
        # An update is private data: never print its values.
        return (
            f"ClientUpdate(client_id={self.client_id}, dim={self.delta.shape[0]}, "
            f"num_examples={self.num_examples})"
        )


@dataclass(frozen=True, slots=True)
class Aggregate:
    """An aggregator's output: the (weighted) mean update and what was learned about the cohort."""

    vector: np.ndarray
    total_weight: float
    num_clients: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """Who takes part in a round: sampled clients and the ones that drop before/after training."""

    round_index: int
    sampled: tuple[int, ...]
    dropped_before_training: tuple[int, ...]
    dropped_after_training: tuple[int, ...]

    @property
    def contributing(self) -> tuple[int, ...]:
        gone = set(self.dropped_before_training) | set(self.dropped_after_training)
        return tuple(c for c in self.sampled if c not in gone)

    @property
    def training(self) -> tuple[int, ...]:
        gone = set(self.dropped_before_training)
        return tuple(c for c in self.sampled if c not in gone)


@dataclass(frozen=True, slots=True)
class RoundResult:
    """The record of one completed round, as stored in ``results.json``."""

    round_index: int
    sampled: tuple[int, ...]
    contributing: tuple[int, ...]
    dropped: tuple[int, ...]
    metrics: Mapping[str, float]

    def to_dict(self) -> dict[str, object]:
        return {
            "round": self.round_index,
            "sampled": list(self.sampled),
            "contributing": list(self.contributing),
            "dropped": list(self.dropped),
            **{k: float(v) for k, v in self.metrics.items()},
        }
