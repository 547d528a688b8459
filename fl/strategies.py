"""Server-side strategies: what clients run and how the server applies the aggregate.

FedAvg / FedProx / FedSGD apply ``w <- w + lr * Δ`` (McMahan et al. 2017; Li et al. 2020). The FedOpt
family (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2) treats the aggregate Δ as a
pseudo-gradient for Adam, Yogi or Adagrad on the server, without bias correction, with ``v`` started at τ².
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fl.errors import CheckpointError, ConfigError

STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox", "fedsgd", "fedadam", "fedyogi", "fedadagrad")
ClientMode = Literal["train", "gradient"]


class ServerOptimizer(ABC):
    """Applies an aggregate update Δ (a pseudo-gradient pointing downhill) to the global weights."""

    @abstractmethod
    def step(self, weights: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Return the new float32 weights (``weights`` is not modified)."""

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if state:
            raise CheckpointError(f"{type(self).__name__} has no state, got keys {sorted(state)}")


class ServerSGD(ServerOptimizer):
    """``w <- w + lr * Δ``; lr = 1 is FedAvg, lr = client lr with gradient updates is FedSGD."""

    def __init__(self, lr: float = 1.0) -> None:
        self.lr = lr

    def step(self, weights: np.ndarray, delta: np.ndarray) -> np.ndarray:
        if self.lr == 1.0:
            return weights + delta
        return weights + np.float32(self.lr) * delta


class _Adaptive(ServerOptimizer):
    def __init__(self, lr: float, beta1: float, beta2: float, tau: float) -> None:
        self.lr, self.beta1, self.beta2, self.tau = lr, beta1, beta2, tau
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    @abstractmethod
    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray: ...

    def step(self, weights: np.ndarray, delta: np.ndarray) -> np.ndarray:
        d = delta.astype(np.float64)
        if self.m is None or self.v is None:
            self.m = np.zeros_like(d)
            self.v = np.full_like(d, self.tau**2)
        self.m = self.beta1 * self.m + (1.0 - self.beta1) * d
        self.v = self._second_moment(self.v, d * d)
        new = weights.astype(np.float64) + self.lr * self.m / (np.sqrt(self.v) + self.tau)
        return new.astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.m is None or self.v is None:
            return {}
        return {"m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if not state:
            self.m = self.v = None
            return
        if set(state) != {"m", "v"}:
            raise CheckpointError(f"{type(self).__name__} state needs keys m, v; got {sorted(state)}")
        self.m, self.v = np.array(state["m"], dtype=np.float64), np.array(state["v"], dtype=np.float64)


class FedAdam(_Adaptive):
    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1.0 - self.beta2) * delta_sq


class FedYogi(_Adaptive):
    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.beta2) * delta_sq * np.sign(v - delta_sq)


class FedAdagrad(_Adaptive):
    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v + delta_sq


@dataclass(frozen=True)
class Strategy:
    """A named combination of client mode, FedProx μ and server optimiser factory settings."""

    name: str
    client_mode: ClientMode
    prox_mu: float
    server_lr: float
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def make_optimizer(self) -> ServerOptimizer:
        if self.name in ("fedavg", "fedprox", "fedsgd"):
            return ServerSGD(self.server_lr)
        adaptive: dict[str, type[FedAdam] | type[FedYogi] | type[FedAdagrad]] = {
            "fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad,
        }
        return adaptive[self.name](self.server_lr, self.beta1, self.beta2, self.tau)


def build_strategy(
    name: str,
    *,
    server_lr: float | None = None,
    client_lr: float = 0.1,
    mu: float = 0.0,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
) -> Strategy:
    """Resolve a strategy name and its defaults (FedSGD's server lr defaults to the client lr)."""
    if name not in STRATEGIES:
        raise ConfigError("server.strategy", f"unknown strategy {name!r}; allowed: {', '.join(STRATEGIES)}")
    if name == "fedprox" and mu <= 0:
        raise ConfigError("client.mu", "strategy 'fedprox' needs client.mu > 0")
    if name == "fedsgd":
        return Strategy(name, "gradient", 0.0, client_lr if server_lr is None else server_lr)
    default_lr = 1.0 if name in ("fedavg", "fedprox") else 0.01
    return Strategy(name, "train", mu, default_lr if server_lr is None else server_lr, beta1, beta2, tau)
