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
from typing import Literal

import numpy as np

from fl.aggregators import Aggregator, Weighting, check_updates
from fl.errors import ConfigError, UpdateError
from fl.types import Aggregate, ClientUpdate
from secagg.errors import AbortError
from secagg.graph import NeighbourGraph, choose_params
from secagg.protocol import ProtocolConfig
from secagg.quantize import FixedPointCodec
from secagg.simulate import identity_keys_for, run_round

Mode = Literal["secagg", "secagg+"]


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

    def _protocol(self, n: int, length: int, bits: int, round_index: int) -> tuple[ProtocolConfig, str]:
        s = self.settings
        if self.mode == "secagg+":
            params = choose_params(n, dropout_rate=s.target_dropout, corrupt_fraction=s.corrupt_fraction)
            graph = params.graph(_graph_seed(round_index, self._salt))
            note = params.describe()
            threshold = params.threshold
        else:
            graph = NeighbourGraph.complete(n)
            threshold = int(np.ceil(s.threshold_fraction * n))
            note = f"SecAgg n={n} t={threshold} (complete graph)"
        holders = graph.degree + 1
        # the protocol needs a strict majority of the k + 1 holders (see secagg.protocol.ProtocolConfig)
        threshold = min(max(threshold, holders // 2 + 1), holders)
        identity = None
        if s.active:
            private, public = identity_keys_for(n)
            identity = public
            self._identities = private
        round_id = int.from_bytes(hashlib.sha256(self._salt + struct.pack(">Q", round_index)).digest()[:8], "big")
        return ProtocolConfig(round_id, graph, threshold, length, bits, identity), note

    def aggregate(
        self, updates: Sequence[ClientUpdate], *, dim: int, round_index: int, late_dropouts: Sequence[int] = ()
    ) -> Aggregate:
        check_updates(updates, dim)
        s = self.settings
        participants = sorted({u.client_id for u in updates} | set(late_dropouts))
        n = len(participants)
        if n < 2 or not updates:
            # A "sum" of one input is that input: secure aggregation refuses rather than reveal it.
            return Aggregate(np.zeros(dim, np.float32), 0.0, 0, {"secagg_aborted": 1.0})
        protocol_id = {c: i + 1 for i, c in enumerate(participants)}
        codec = FixedPointCodec.with_safe_modulus(
            s.clip_range, s.scale_bits, n, max_weight=1.0, headroom_bits=s.headroom_bits
        )
        config, note = self._protocol(n, dim + 1, codec.modulus_bits, round_index)
        inputs = {}
        clipped = 0
        for u in updates:
            weight = (u.num_examples if self.weighting == "examples" else 1.0) / s.max_weight
            if weight > 1.0:
                raise UpdateError(
                    f"client {u.client_id} has {u.num_examples} examples, more than secagg.max_weight "
                    f"({s.max_weight:g}); raise secagg.max_weight"
                )
            clipped += int(np.count_nonzero(np.abs(u.delta) > s.clip_range))
            # Rounding randomness is not secret (the masks hide each encoding); seeding keeps runs reproducible.
            rng = np.random.default_rng([self.seed, round_index, u.client_id, 0x5EC])
            encoded = codec.encode_weighted(u.delta, weight, rng=rng)
            inputs[protocol_id[u.client_id]] = encoded.astype(config.dtype, copy=False)
        late = {protocol_id[c]: "mask" for c in late_dropouts}
        # late dropouts have no input of their own; give them a placeholder they never send
        for pid in late:
            inputs[pid] = np.zeros(config.vector_length, config.dtype)
        identities = getattr(self, "_identities", None) if s.active else None
        metrics: dict[str, float] = {
            "secagg_modulus_bits": float(codec.modulus_bits),
            "secagg_threshold": float(config.threshold),
            "secagg_degree": float(config.graph.degree),
            "secagg_clipped_fraction": clipped / max(len(updates) * dim, 1),
        }
        try:
            result, stats = run_round(config, inputs, drops=late, identities=identities)  # type: ignore[arg-type]
        except AbortError:
            metrics["secagg_aborted"] = 1.0
            return Aggregate(np.zeros(dim, np.float32), 0.0, 0, metrics)
        values, total = codec.decode_weighted(result.vector.astype(np.uint64), len(result.survivors))
        metrics.update(
            {
                "secagg_client_time_s": stats.mean_client_seconds(),
                "secagg_server_time_s": stats.server_seconds,
                "secagg_upload_bytes_per_client": stats.mean_upload_bytes(),
                "secagg_recovered_dropouts": float(len(result.dropped)),
                "secagg_aborted": 0.0,
            }
        )
        self.last_note = note
        if total <= 0:
            return Aggregate(np.zeros(dim, np.float32), 0.0, len(result.survivors), metrics)
        mean = (values / total).astype(np.float32)
        return Aggregate(mean, total * s.max_weight, len(result.survivors), metrics)
