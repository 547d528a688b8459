"""Secure aggregation: pairwise-mask SecAgg (Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020).

numpy/cryptography only (no torch, no :mod:`fl`), so other FL stacks can embed it. Layers, safest first:

* :func:`secure_sum` — float vectors in, their (weighted) secure sum out, with sound parameters.
* :class:`ClientSession` / :class:`ServerSession` + :class:`ProtocolConfig` — the sans-IO protocol, driven
  over any transport; :func:`encode` / :func:`decode` give the versioned wire format.
* Building blocks that can be misused: :mod:`secagg.keys`, :mod:`secagg.prg`, :mod:`secagg.shamir`,
  :mod:`secagg.quantize`, :mod:`secagg.graph`.
"""

from __future__ import annotations

from secagg.api import SecureRound, SecureSumResult, plan_round, secure_round, secure_sum
from secagg.errors import (
    AbortError,
    CryptoError,
    EncodingError,
    LocalProtocolError,
    ParameterError,
    ProtocolError,
    ReconstructionError,
    RemoteProtocolError,
    SecAggError,
)
from secagg.graph import NeighbourGraph, SecAggPlusParams, choose_params, failure_probabilities
from secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShares,
    ForwardedShares,
    KeyDirectory,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
    WireError,
    decode,
    encode,
)
from secagg.protocol import (
    AggregationResult,
    ClientSession,
    ClientState,
    ProtocolConfig,
    ServerPhase,
    ServerSession,
)
from secagg.quantize import FixedPointCodec
from secagg.simulate import RoundStats, run_round

__all__ = [
    "AbortError",
    "AdvertiseKeys",
    "ConsistencyRequest",
    "ConsistencySignature",
    "EncryptedShares",
    "ForwardedShares",
    "KeyDirectory",
    "MaskedInput",
    "UnmaskRequest",
    "UnmaskResponse",
    "AggregationResult",
    "ClientSession",
    "ClientState",
    "CryptoError",
    "EncodingError",
    "FixedPointCodec",
    "LocalProtocolError",
    "NeighbourGraph",
    "ParameterError",
    "ProtocolConfig",
    "ProtocolError",
    "ReconstructionError",
    "RemoteProtocolError",
    "RoundStats",
    "SecAggError",
    "SecAggPlusParams",
    "SecureRound",
    "SecureSumResult",
    "ServerPhase",
    "ServerSession",
    "WireError",
    "choose_params",
    "decode",
    "encode",
    "failure_probabilities",
    "plan_round",
    "run_round",
    "secure_round",
    "secure_sum",
]
