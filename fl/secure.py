"""Secure aggregation inside the federated loop: SecAgg / SecAgg+ behind the :class:`Aggregator` seam.

Each client clips its update to ``[-clip_range, clip_range]`` per coordinate, scales it by its FedAvg weight
``w_k = n_k / max_weight``, appends ``w_k`` as one more slot, and encodes the vector into Z_{2^b} with
unbiased stochastic rounding (:class:`secagg.quantize.FixedPointCodec`, b chosen so the sum of all
participants cannot wrap). The sessions of :mod:`secagg.protocol` then reveal only
``(Σ w_k Δ_k, Σ w_k)`` over the survivors, so the server learns neither any update nor any weight.
Clients that trained but vanish before sending their masked input (``late_dropouts``) take part in the key
phases and are recovered by the protocol's dropout handling.

Nothing is silently truncated: the fraction of coordinates that hit the clipping range is reported in the
round metrics (``secagg_clipped_fraction``); choose ``clip_range`` so it stays 0.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fl.aggregators import Aggregator, Weighting, bounded_weight, check_updates
from fl.errors import ConfigError
from fl.types import Aggregate, ClientUpdate
from secagg.api import Mode, secure_sum
from secagg.errors import AbortError


@dataclass(frozen=True)
class SecAggSettings:
    """Public parameters of secure aggregation in a training run (the ``[secagg]`` config section)."""

    clip_range: float = 1.0
    scale_bits: int = 16
    headroom_bits: int = 2
    threshold_fraction: float = 2 / 3
    target_dropout: float = 0.1
    corrupt_fraction: float = 0.05
    active: bool = False
    max_weight: float = 1000.0

    def __post_init__(self) -> None:
        if not self.clip_range > 0:
            raise ConfigError("secagg.clip_range", f"must be > 0, got {self.clip_range}")
        if not 0 <= self.scale_bits <= 40:
            raise ConfigError("secagg.scale_bits", f"must be in 0..40, got {self.scale_bits}")
        if not 0 <= self.headroom_bits <= 16:
            raise ConfigError("secagg.headroom_bits", f"must be in 0..16, got {self.headroom_bits}")
        if not 0.5 < self.threshold_fraction <= 1:
            raise ConfigError("secagg.threshold_fraction", f"must be in (0.5, 1], got {self.threshold_fraction}")
        if not 0 <= self.target_dropout < 0.5:
            raise ConfigError("secagg.target_dropout", f"must be in [0, 0.5), got {self.target_dropout}")
        if not 0 <= self.corrupt_fraction < 0.5:
            raise ConfigError("secagg.corrupt_fraction", f"must be in [0, 0.5), got {self.corrupt_fraction}")
        if not self.max_weight > 0:
            raise ConfigError("secagg.max_weight", f"must be > 0, got {self.max_weight}")


def _graph_seed(round_index: int, salt: bytes) -> bytes:
    # The graph is public; deriving it from (run salt, round) makes runs reproducible and auditable.
    return hashlib.sha256(b"fedshield/fl/secagg-graph" + salt + struct.pack(">Q", round_index)).digest()


class SecAggAggregator(Aggregator):
    """Weighted FedAvg mean computed with pairwise-mask secure aggregation (SecAgg or SecAgg+)."""

    def __init__(
        self,
        mode: Mode = "secagg",
        settings: SecAggSettings | None = None,
        *,
        weighting: Weighting = "examples",
        seed: int = 0,
    ) -> None:
        if mode not in ("secagg", "secagg+"):
            raise ConfigError("run.aggregation", f"unknown secure aggregation {mode!r}; allowed: secagg, secagg+")
        self.mode: Mode = mode
        self.settings = settings or SecAggSettings()
        self.weighting: Weighting = weighting
        self.seed = seed
        self._salt = struct.pack(">Q", seed)
        self.last_description = ""

    def aggregate(
        self, updates: Sequence[ClientUpdate], *, dim: int, round_index: int, late_dropouts: Sequence[int] = ()
    ) -> Aggregate:
        check_updates(updates, dim)
        s = self.settings
        if len({u.client_id for u in updates} | set(late_dropouts)) < 2 or not updates:
            # A "sum" of one input is that input: secure aggregation refuses rather than reveal it.
            return Aggregate(np.zeros(dim, np.float32), 0.0, 0, {"secagg_aborted": 1.0})
        weights = {u.client_id: bounded_weight(u, self.weighting, s.max_weight, "secagg.max_weight") for u in updates}
        round_id = int.from_bytes(hashlib.sha256(self._salt + struct.pack(">Q", round_index)).digest()[:8], "big")
        try:
            out = secure_sum(
                {u.client_id: u.delta for u in updates},
                clip=s.clip_range,
                scale_bits=s.scale_bits,
                weights=weights,
                max_weight=1.0,
                mode=self.mode,
                late_dropouts=late_dropouts,
                round_id=round_id,
                graph_seed=_graph_seed(round_index, self._salt),
                threshold_fraction=s.threshold_fraction,
                target_dropout=s.target_dropout,
                corrupt_fraction=s.corrupt_fraction,
                active=s.active,
                headroom_bits=s.headroom_bits,
                # rounding randomness is not secret (masks hide each encoding); seeding keeps runs reproducible
                rounding_seed=[self.seed, round_index, 0x5EC],
            )
        except AbortError:
            return Aggregate(np.zeros(dim, np.float32), 0.0, 0, {"secagg_aborted": 1.0})
        self.last_description = out.description
        metrics = {
            "secagg_aborted": 0.0,
            "secagg_modulus_bits": float(out.config.modulus_bits),
            "secagg_threshold": float(out.config.threshold),
            "secagg_degree": float(out.config.graph.degree),
            "secagg_clipped_fraction": out.clipped_fraction,
            "secagg_client_time_s": out.stats.mean_client_seconds(),
            "secagg_server_time_s": out.stats.server_seconds,
            "secagg_upload_bytes_per_client": out.stats.mean_upload_bytes(),
            "secagg_recovered_dropouts": float(len(out.dropped)),
        }
        total = out.total_weight or 0.0
        if total <= 0:
            return Aggregate(np.zeros(dim, np.float32), 0.0, len(out.survivors), metrics)
        mean = (out.sum / total).astype(np.float32)
        return Aggregate(mean, total * s.max_weight, len(out.survivors), metrics)
