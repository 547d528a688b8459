"""The one-call safe layer: float vectors in, their secure (weighted) sum out.

:func:`secure_sum` picks sound parameters (modulus from the number of clients, threshold a strict
majority of share holders, SecAgg+ degree from :func:`secagg.graph.choose_params`), encodes each vector in
fixed point, runs a full SecAgg/SecAgg+ round between in-memory sessions and decodes the sum. It is what
an FL stack calls when its clients and server live in one process (simulation, tests); a deployment drives
:class:`~secagg.protocol.ClientSession` / :class:`~secagg.protocol.ServerSession` over its own transport
with the same parameters (see :func:`plan_round`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from secagg.errors import EncodingError, ParameterError
from secagg.graph import NeighbourGraph, choose_params
from secagg.keys import SigningKey
from secagg.prg import KeystreamUniforms
from secagg.protocol import ProtocolConfig
from secagg.quantize import FixedPointCodec
from secagg.simulate import Phase, RoundStats, identity_keys_for, run_round

__all__ = ["Mode", "SecureRound", "SecureSumResult", "plan_round", "secure_round", "secure_sum"]

Mode = Literal["secagg", "secagg+"]


@dataclass(frozen=True)
class SecureSumResult:
    """The decoded sum over the survivors, and what the round cost."""

    sum: npt.NDArray[np.float64]
    total_weight: float | None  # Σ weights of the survivors (weighted sums only)
    survivors: tuple[int, ...]  # the caller's client ids
    dropped: tuple[int, ...]  # sent keys but no masked input: recovered by the protocol
    config: ProtocolConfig
    codec: FixedPointCodec
    stats: RoundStats
    clipped_fraction: float  # share of coordinates that hit [-clip, clip]; 0 unless inputs exceeded it
    description: str

    def __repr__(self) -> str:
        return f"SecureSumResult(length={self.sum.shape[0]}, survivors={len(self.survivors)}, {self.description})"


def _seed_bytes(seed: int | Sequence[int] | None) -> bytes | None:
    if seed is None:
        return None
    parts = [seed] if isinstance(seed, int) else list(seed)
    return hashlib.sha256(b"fedshield/secagg/rounding-seed" + b"".join(p.to_bytes(16, "big", signed=True) for p in parts)).digest()


def plan_round(
    num_clients: int,
    vector_length: int,
    modulus_bits: int,
    *,
    mode: Mode = "secagg",
    round_id: int = 0,
    graph_seed: bytes = bytes(32),
    threshold_fraction: float = 2 / 3,
    target_dropout: float = 0.1,
    corrupt_fraction: float = 0.05,
    identity_keys: Mapping[int, bytes] | None = None,
) -> tuple[ProtocolConfig, str]:
    """Public round parameters for ``num_clients`` (ids 1..n) and a one-line description of them.

    SecAgg: complete graph, t = max(ceil(threshold_fraction * n), strict majority of the n holders).
    SecAgg+: Harary graph of degree k and threshold from :func:`choose_params` for the target dropout
    rate and corrupted fraction (raised to a strict majority of the k + 1 holders if needed).
    ``graph_seed`` must be public randomness all parties agree on (32 bytes).
    """
    if mode not in ("secagg", "secagg+"):
        raise ParameterError(f"mode must be 'secagg' or 'secagg+', got {mode!r}")
    if num_clients < 2:
        raise ParameterError(f"secure aggregation needs at least 2 clients, got {num_clients}")
    if not 0.5 < threshold_fraction <= 1:
        raise ParameterError(f"threshold_fraction must be in (0.5, 1], got {threshold_fraction}")
    if mode == "secagg+":
        params = choose_params(num_clients, dropout_rate=target_dropout, corrupt_fraction=corrupt_fraction)
        graph = params.graph(graph_seed)
        threshold, note = params.threshold, params.describe()
    else:
        graph = NeighbourGraph.complete(num_clients)
        threshold = math.ceil(threshold_fraction * num_clients)
        note = f"SecAgg n={num_clients} (complete graph)"
    holders = graph.degree + 1
    threshold = min(max(threshold, holders // 2 + 1), holders)
    config = ProtocolConfig(round_id, graph, threshold, vector_length, modulus_bits, identity_keys)
    return config, f"{note}; protocol t={threshold} of {holders} holders, modulus 2^{modulus_bits}"


@dataclass(frozen=True)
class SecureRound:
    """One secure round over already-encoded inputs: the sum mod 2^b and who it covers (caller ids)."""

    vector: npt.NDArray[np.uint64]
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    config: ProtocolConfig
    stats: RoundStats
    description: str


def secure_round(
    inputs: Mapping[int, npt.NDArray[np.unsignedinteger[Any]]],
    modulus_bits: int,
    *,
    mode: Mode = "secagg",
    late_dropouts: Sequence[int] = (),
    drops: Mapping[int, Phase] | None = None,
    round_id: int = 0,
    graph_seed: bytes = bytes(32),
    threshold_fraction: float = 2 / 3,
    target_dropout: float = 0.1,
    corrupt_fraction: float = 0.05,
    active: bool = False,
) -> SecureRound:
    """Run a full SecAgg/SecAgg+ round between in-memory sessions on integer vectors in Z_{2^modulus_bits}.

    The caller's client ids are mapped to protocol ids 1..n; ``late_dropouts`` take part in key sharing and
    vanish before the masked-input phase. Raises :class:`~secagg.errors.AbortError` if the round cannot
    complete. :func:`secure_sum` is this plus fixed-point encoding; distributed DP feeds its own encoding.
    """
    if not inputs:
        raise ParameterError("no inputs to aggregate")
    lengths = {np.shape(v) for v in inputs.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise EncodingError(f"all inputs must be 1-D of one length, got shapes {sorted(lengths)}")
    (length,) = next(iter(lengths))
    overlap = set(late_dropouts) & set(inputs)
    if overlap:
        raise ParameterError(f"clients {sorted(overlap)[:5]} are both late dropouts and contributors")
    participants = sorted({*inputs, *late_dropouts})
    n = len(participants)
    identities: dict[int, SigningKey] | None = None
    identity_public: dict[int, bytes] | None = None
    if active:
        identities, identity_public = identity_keys_for(n)
    config, note = plan_round(
        n, length, modulus_bits, mode=mode, round_id=round_id, graph_seed=graph_seed,
        threshold_fraction=threshold_fraction, target_dropout=target_dropout,
        corrupt_fraction=corrupt_fraction, identity_keys=identity_public,
    )
    pid = {c: i + 1 for i, c in enumerate(participants)}
    encoded = {pid[c]: np.asarray(v).astype(config.dtype, copy=False) for c, v in inputs.items()}
    for c in late_dropouts:  # never sent: they vanish before the masked-input phase
        encoded[pid[c]] = np.zeros(config.vector_length, dtype=config.dtype)
    schedule: dict[int, Phase] = {pid[c]: "mask" for c in late_dropouts}
    schedule.update({pid[c]: p for c, p in (drops or {}).items()})
    result, stats = run_round(config, encoded, drops=schedule, identities=identities)
    return SecureRound(
        result.vector.astype(np.uint64),
        tuple(participants[i - 1] for i in result.survivors),
        tuple(participants[i - 1] for i in result.dropped),
        config, stats, note,
    )


def secure_sum(
    vectors: Mapping[int, npt.NDArray[np.floating[Any]]],
    *,
    clip: float,
    scale_bits: int = 20,
    weights: Mapping[int, float] | None = None,
    max_weight: float = 1.0,
    mode: Mode = "secagg",
    late_dropouts: Sequence[int] = (),
    drops: Mapping[int, Phase] | None = None,
    round_id: int = 0,
    graph_seed: bytes = bytes(32),
    threshold_fraction: float = 2 / 3,
    target_dropout: float = 0.1,
    corrupt_fraction: float = 0.05,
    active: bool = False,
    headroom_bits: int = 2,
    rounding_seed: int | Sequence[int] | None = None,
) -> SecureSumResult:
    """Securely sum ``vectors`` (client id → 1-D float array, all the same length).

    With ``weights`` (client id → w in [0, max_weight]) the result is ``Σ w_u clip(x_u)`` and
    ``total_weight = Σ w_u`` over the survivors — weighted FedAvg after one division. Clients in
    ``late_dropouts`` take part in key sharing and vanish before sending a masked input; ``drops`` scripts
    vanishing in any phase (see :func:`secagg.simulate.run_round`). The decoded sum differs from the exact
    sum of the clipped (weighted) inputs by less than ``n * 2**-scale_bits`` per coordinate.
    ``rounding_seed`` seeds the stochastic rounding's AES-CTR stream (reproducible simulations); None draws a
    fresh secret seed.

    Raises:
        AbortError: fewer than t clients remain in some phase (nothing is revealed).
        EncodingError / ParameterError: malformed vectors, weights or parameters.
    """
    if not vectors:
        raise ParameterError("no vectors to aggregate")
    lengths = {np.shape(v) for v in vectors.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise EncodingError(f"all vectors must be 1-D of one length, got shapes {sorted(lengths)}")
    (length,) = next(iter(lengths))
    if weights is not None and set(weights) != set(vectors):
        raise ParameterError("weights must name exactly the clients that have vectors")
    n = len({*vectors, *late_dropouts})
    codec = FixedPointCodec.with_safe_modulus(
        clip, scale_bits, n, max_weight=max_weight if weights is not None else None, headroom_bits=headroom_bits
    )
    rng = KeystreamUniforms(_seed_bytes(rounding_seed))
    encoded: dict[int, npt.NDArray[np.uint64]] = {}
    clipped = 0
    for c in sorted(vectors):
        x = vectors[c]
        if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating) and np.isfinite(x).all():
            clipped += int(np.count_nonzero(np.abs(x) > clip))
        encoded[c] = codec.encode(x, rng=rng) if weights is None else codec.encode_weighted(x, weights[c], rng=rng)
    outcome = secure_round(
        encoded, codec.modulus_bits, mode=mode, late_dropouts=late_dropouts, drops=drops, round_id=round_id,
        graph_seed=graph_seed, threshold_fraction=threshold_fraction, target_dropout=target_dropout,
        corrupt_fraction=corrupt_fraction, active=active,
    )
    survivors, dropped = outcome.survivors, outcome.dropped
    total: float | None = None
    if weights is None:
        values = codec.decode_sum(outcome.vector, len(survivors))
    else:
        values, total = codec.decode_weighted(outcome.vector, len(survivors))
    return SecureSumResult(
        values, total, survivors, dropped, outcome.config, codec, outcome.stats,
        clipped / max(len(vectors) * length, 1), outcome.description,
    )
