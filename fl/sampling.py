"""Client sampling and dropout schedules.

DP accounting must know how clients were chosen: fixed-size sampling without replacement and Poisson
sampling (each client independently with rate q) have different privacy amplification.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fl.errors import ConfigError
from fl.types import RoundPlan

SAMPLERS: tuple[str, ...] = ("fixed", "poisson")
DROPOUT_PHASES: tuple[str, ...] = ("before_training", "after_training")


@dataclass(frozen=True)
class Sampler:
    """``fixed``: ``clients_per_round`` clients uniformly without replacement; ``poisson``: each with ``rate``."""

    method: Literal["fixed", "poisson"]
    clients_per_round: int = 10
    rate: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in SAMPLERS:
            raise ConfigError("sampling.method", f"unknown method {self.method!r}; allowed: {', '.join(SAMPLERS)}")
        if self.method == "fixed" and self.clients_per_round < 1:
            raise ConfigError("sampling.clients_per_round", f"must be >= 1, got {self.clients_per_round}")
        if self.method == "poisson" and not 0 < self.rate <= 1:
            raise ConfigError("sampling.rate", f"must be in (0, 1], got {self.rate}")

    def sample(self, num_clients: int, rng: np.random.Generator) -> np.ndarray:
        if self.method == "fixed":
            if self.clients_per_round > num_clients:
                raise ConfigError(
                    "sampling.clients_per_round",
                    f"{self.clients_per_round} exceeds the number of clients ({num_clients})",
                )
            return np.sort(rng.choice(num_clients, size=self.clients_per_round, replace=False))
        return np.flatnonzero(rng.random(num_clients) < self.rate)


@dataclass(frozen=True)
class Dropout:
    """Each sampled client independently drops with probability ``rate`` at ``phase``."""

    rate: float = 0.0
    phase: Literal["before_training", "after_training"] = "before_training"

    def __post_init__(self) -> None:
        if not 0 <= self.rate < 1:
            raise ConfigError("dropout.rate", f"must be in [0, 1), got {self.rate}")
        if self.phase not in DROPOUT_PHASES:
            raise ConfigError("dropout.phase", f"unknown phase {self.phase!r}; allowed: {', '.join(DROPOUT_PHASES)}")

    def drops(self, sampled: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return sampled[rng.random(sampled.shape[0]) < self.rate]


def plan_round(
    round_index: int, num_clients: int, sampler: Sampler, dropout: Dropout, seed: int
) -> RoundPlan:
    """Who is sampled and who drops in round ``round_index``; a pure function of (seed, round)."""
    # Sampling is public protocol randomness, not a secret: a seeded numpy generator keeps runs reproducible.
    rng = np.random.default_rng([seed, round_index, 0x5A4D])
    sampled = sampler.sample(num_clients, rng)
    dropped = dropout.drops(sampled, rng)
    as_tuple = tuple(int(c) for c in sampled)
    gone = tuple(int(c) for c in dropped)
    if dropout.phase == "before_training":
        return RoundPlan(round_index, as_tuple, gone, ())
    return RoundPlan(round_index, as_tuple, (), gone)
