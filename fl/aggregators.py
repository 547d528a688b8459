"""The aggregator seam: a round's client updates in, one aggregate out.

Aggregators compose by wrapping, in the manner of TFF's aggregation factories: a DP aggregator wraps a
secure-sum aggregator, which replaces the plain weighted mean. Each layer sees only what it needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.linalg.blas import saxpy

from fl.errors import ConfigError, UpdateError
from fl.types import Aggregate, ClientUpdate

if TYPE_CHECKING:
    from fl.he import CKKSSettings
    from fl.secure import SecAggSettings

Weighting = Literal["examples", "uniform"]


class Aggregator(ABC):
    """Turns one round's updates into the aggregate update applied by the server optimiser."""

    @abstractmethod
    def aggregate(
        self, updates: Sequence[ClientUpdate], *, dim: int, round_index: int, late_dropouts: Sequence[int] = ()
    ) -> Aggregate:
        """Aggregate ``updates`` (all of length ``dim``). ``updates`` may be empty (everyone dropped).

        ``late_dropouts`` are clients that were in the round but vanished before delivering their update;
        a plain mean ignores them, a secure-aggregation protocol has to recover from them.
        """


def check_updates(updates: Sequence[ClientUpdate], dim: int) -> None:
    """Reject a cohort with mismatched lengths or repeated client ids before any arithmetic."""
    seen: set[int] = set()
    for u in updates:
        if not isinstance(u, ClientUpdate):
            raise UpdateError(f"expected ClientUpdate, got {type(u).__name__}")
        if u.delta.shape != (dim,):
            raise UpdateError(f"client {u.client_id}: delta has shape {u.delta.shape}, expected ({dim},)")
        if u.client_id in seen:
            raise UpdateError(f"client {u.client_id} sent two updates in one round")
        seen.add(u.client_id)


def client_weights(updates: Sequence[ClientUpdate], weighting: Weighting) -> np.ndarray:
    """FedAvg's n_k (``"examples"``) or 1 per client (``"uniform"``), as float64."""
    if weighting == "examples":
        return np.array([u.num_examples for u in updates], dtype=np.float64)
    return np.ones(len(updates), dtype=np.float64)


def bounded_weight(update: ClientUpdate, weighting: Weighting, max_weight: float, key: str) -> float:
    """The client's weight as a fraction of the public bound ``max_weight`` (config key ``key``), in [0, 1].

    Encrypted and masked aggregation need a public bound on every weight (to size the encoding), so a client
    with more examples than the bound is an error, not a silent truncation.
    """
    weight = (update.num_examples if weighting == "examples" else 1.0) / max_weight
    if weight > 1.0:
        raise UpdateError(
            f"client {update.client_id} has {update.num_examples} examples, more than {key} "
            f"({max_weight:g}); raise {key}"
        )
    return weight


class WeightedMean(Aggregator):
    """Σ_k w_k Δ_k / Σ_k w_k in plaintext: the server sees every update (no privacy).

    Accumulates with BLAS ``saxpy`` into one float32 buffer, so aggregating m updates costs m streaming
    passes and no m×d stack is ever built.
    """

    def __init__(self, weighting: Weighting = "examples") -> None:
        if weighting not in ("examples", "uniform"):
            raise UpdateError(f"weighting must be 'examples' or 'uniform', got {weighting!r}")
        self.weighting: Weighting = weighting

    def aggregate(
        self, updates: Sequence[ClientUpdate], *, dim: int, round_index: int, late_dropouts: Sequence[int] = ()
    ) -> Aggregate:
        check_updates(updates, dim)
        weights = client_weights(updates, self.weighting)
        total = float(weights.sum())
        acc = np.zeros(dim, dtype=np.float32)
        if total <= 0:
            return Aggregate(acc, 0.0, len(updates), {"num_aggregated": float(len(updates))})
        for u, w in zip(updates, weights / total, strict=True):
            acc = saxpy(u.delta, acc, a=float(w))
        # One check of the output instead of one per input: NaN or inf in any input with non-zero weight
        # propagates into the weighted sum (inf - inf and 0 * inf are NaN), so a finite sum proves finite inputs.
        if not np.isfinite(acc).all():
            bad = [u.client_id for u in updates if not np.isfinite(u.delta).all()]
            raise UpdateError(f"non-finite values in updates of clients {bad}" if bad else "weighted sum overflowed")
        return Aggregate(acc, total, len(updates), {"num_aggregated": float(len(updates))})


class UpdateTransform(Aggregator):
    """Base for aggregators that transform each update and then delegate to an inner aggregator.

    Client-side stages (clipping, local noise, compression) are written as subclasses overriding
    :meth:`transform`, so that ``Clip(WeightedMean())`` reads as the pipeline it is.
    """

    def __init__(self, inner: Aggregator) -> None:
        self.inner = inner

    @abstractmethod
    def transform(self, update: ClientUpdate, *, round_index: int) -> ClientUpdate:
        """Return the update as it leaves the client after this stage."""

    def aggregate(
        self, updates: Sequence[ClientUpdate], *, dim: int, round_index: int, late_dropouts: Sequence[int] = ()
    ) -> Aggregate:
        return self.inner.aggregate(
            [self.transform(u, round_index=round_index) for u in updates],
            dim=dim,
            round_index=round_index,
            late_dropouts=late_dropouts,
        )


AGGREGATIONS: tuple[str, ...] = ("plain", "secagg", "secagg+", "ckks")


def build_aggregator(
    name: str,
    *,
    weighting: Weighting = "examples",
    secagg: SecAggSettings | None = None,
    ckks: CKKSSettings | None = None,
    num_clients: int = 0,
    seed: int = 0,
) -> Aggregator:
    """The aggregator that ``run.aggregation`` names in a config."""
    if name == "plain":
        return WeightedMean(weighting)
    if name == "ckks":
        from fl.he import CKKSAggregator

        return CKKSAggregator(num_clients, ckks, weighting=weighting)
    if name in ("secagg", "secagg+"):
        from fl.secure import SecAggAggregator

        return SecAggAggregator(name, secagg, weighting=weighting, seed=seed)  # type: ignore[arg-type]
    raise ConfigError("run.aggregation", f"unknown aggregation {name!r}; allowed: {', '.join(AGGREGATIONS)}")
