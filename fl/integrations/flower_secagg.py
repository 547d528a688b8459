"""fedshield's SecAgg / SecAgg+ over Flower's Message API: a server workflow and a client mod.

The protocol itself is :mod:`secagg.protocol`'s sans-IO :class:`~secagg.protocol.ServerSession` and
:class:`~secagg.protocol.ClientSession`; this module only moves their messages over Flower, one Flower
message exchange (``Grid.send_and_receive``) per protocol phase, in the manner of Flower's own
``SecAggPlusWorkflow`` / ``secaggplus_mod``:

====================  ==========================================  ========================================
exchange              server → client (``TRAIN`` message)         client → server (reply)
====================  ==========================================  ========================================
1 setup / advertise   :class:`RoundSetup` (public round params)   ``AdvertiseKeys``
2 share keys          ``KeyDirectory``                            ``EncryptedShares``
3 masked input        ``ForwardedShares`` + the strategy's FitIns  ``MaskedInput`` + FitRes status/metrics
4 unmask              ``UnmaskRequest``                           ``UnmaskResponse``
====================  ==========================================  ========================================

Every protocol message travels as fedshield's versioned wire bytes (:func:`secagg.messages.encode`) in the
``payload`` of one :class:`flwr.app.ConfigRecord` (key :data:`RECORD_KEY`), next to a ``phase`` tag; the
receiving side decodes with the strict codec and checks the tag, the round and the sender against the
Flower node the reply came from, so malformed or tampered bytes are rejected with :mod:`secagg.errors`.
The setup record holds only public parameters; each client re-derives the :class:`ProtocolConfig` (graph,
threshold) and the fixed-point codec from them with :func:`secagg.api.plan_round` and refuses a setup
whose stated modulus or threshold it cannot reproduce.

Client side. In exchange 3 the mod calls the user's ClientApp (``call_next``) with the FitIns, takes the
update ``Δ = w_local - w_global`` from its FitRes, optionally clips it to an L2 bound (client-level DP),
encodes ``[w·clip(Δ), w]`` with :class:`secagg.quantize.FixedPointCodec` (``w = n_k / max_weight``, or 1
under uniform weighting) and masks it -- or, for distributed DP (:class:`SecAggEncoding` with
:class:`dp.distributed.DistributedParams`), clips, rotates, rounds and adds its own discrete-noise share
(:func:`dp.distributed.encode_client`, the client's own CSPRNG), so the server only ever sees a noised sum.
The reply carries the FitRes status and metrics but no parameters and ``num_examples = 0``: the weight is
inside the masked vector. Between exchanges the session (its key pairs, self-mask seed and the shares it
holds) is persisted in the node's ``context.state`` (versioned bytes, key :data:`STATE_KEY`), as Flower's
own ``secaggplus_mod`` keeps its keys there, because a Flower ClientApp may run each message in a
different worker or process; it is deleted when the round ends or fails.

Server side. :class:`SecAggWorkflow` is a Flower fit workflow (``DefaultWorkflow(fit_workflow=...)``,
with a ``LegacyContext``); :func:`run_secure_round` is the same round as a function of a ``Grid``. A
client that does not answer an exchange (timeout, error reply, rejected bytes) is simply absent when the
server session closes the phase (:meth:`ServerSession.close_phase`); clients that vanish after sharing keys
are recovered by the protocol. The strategy receives the decoded weighted mean of the survivors' updates
as one FitRes per survivor (identical parameters, ``num_examples = 1``), as Flower's SecAgg+ workflow does,
so Flower's stock FedAvg, FedAvgM or FedOpt strategies work unchanged; a strategy implementing
:class:`SecureSumStrategy` (fedshield's DP wrapper) gets the revealed sum itself instead.

Trust model: honest-but-curious server and at most ``t - 1`` colluding clients (see
:mod:`secagg.protocol`); the active-adversary variant (identity keys, consistency round) needs a PKI and
is not offered over Flower. Node ids and the round's participant count are visible to the server, as in
any SecAgg deployment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, NDArrays, Parameters, Scalar, Status, ndarrays_to_parameters
from flwr.common import parameters_to_ndarrays as _parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp.grid import Grid

from dp.distributed import DistributedParams, decode_sum, encode_client
from dp.errors import DPError
from dp.mechanisms import clip_l2
from dp.rng import CryptoRNG
from fl.errors import UpdateError
from fl.secure import SecAggSettings
from secagg.api import Mode, plan_round
from secagg.errors import AbortError, LocalProtocolError, RemoteProtocolError, SecAggError
from secagg.messages import (
    AdvertiseKeys,
    ClientMessage,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShares,
    ForwardedShares,
    KeyDirectory,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
    decode,
    encode,
)
from secagg.prg import KeystreamUniforms
from secagg.protocol import (
    ClientSession,
    ClientState,
    ProtocolConfig,
    ServerPhase,
    ServerSession,
)
from secagg.quantize import FixedPointCodec

__all__ = [
    "RECORD_KEY",
    "STATE_KEY",
    "RoundSetup",
    "SecAggClientMod",
    "SecAggEncoding",
    "SecAggWorkflow",
    "SecureAggregate",
    "SecureRoundOutcome",
    "SecureSumStrategy",
    "add_delta",
    "delta_vector",
    "run_secure_round",
    "secagg_mod",
]

log = logging.getLogger(__name__)

#: ConfigRecord (in a message's content) that carries fedshield's secure-aggregation traffic.
RECORD_KEY: Final = "fedshield.secagg"
#: ConfigRecord in a client's ``context.state`` holding its session between exchanges.
STATE_KEY: Final = "fedshield.secagg.state"
_PHASE: Final = "phase"
_LEGACY_FITINS: Final = "fitins.parameters"  # the ArrayRecord a legacy FitIns travels in
_PAYLOAD: Final = "payload"

# The exchange a server message opens, as named in the record's phase tag.
_PHASE_OF: Final[dict[type[Any], str]] = {
    KeyDirectory: "share_keys",
    ForwardedShares: "masked_input",
    ConsistencyRequest: "consistency",
    UnmaskRequest: "unmask",
}
_CLIENT_TYPES: Final = (AdvertiseKeys, EncryptedShares, MaskedInput, ConsistencySignature, UnmaskResponse)
_SERVER_TYPES: Final = (KeyDirectory, ForwardedShares, ConsistencyRequest, UnmaskRequest)


# -- model parameters <-> flat update vectors ------------------------------------------------------------
def _check_float_arrays(arrays: Sequence[object], what: str) -> list[npt.NDArray[np.floating[Any]]]:
    out: list[npt.NDArray[np.floating[Any]]] = []
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating):
            kind = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise UpdateError(f"{what}: array {i} must be a floating-point numpy array, got {kind}")
        out.append(a)
    return out


def delta_vector(local: Sequence[np.ndarray], global_arrays: Sequence[np.ndarray]) -> npt.NDArray[np.float32]:
    """The flat float32 update ``local - global`` (model layout: arrays in order, C order).

    Raises:
        UpdateError: a different number of arrays, a shape mismatch, non-float arrays or non-finite values.
    """
    loc = _check_float_arrays(local, "fit result")
    glo = _check_float_arrays(global_arrays, "global model")
    if len(loc) != len(glo):
        raise UpdateError(f"fit result has {len(loc)} arrays, the global model {len(glo)}")
    for i, (a, b) in enumerate(zip(loc, glo, strict=True)):
        if a.shape != b.shape:
            raise UpdateError(f"fit result array {i} has shape {a.shape}, the global model {b.shape}")
    if not glo:
        raise UpdateError("the global model has no arrays")
    flat = np.concatenate([a.astype(np.float64).ravel() - b.astype(np.float64).ravel() for a, b in zip(loc, glo, strict=True)])
    if not np.isfinite(flat).all():
        raise UpdateError("fit result contains NaN or infinity")
    return flat.astype(np.float32)


def add_delta(global_arrays: Sequence[np.ndarray], delta: npt.NDArray[np.floating[Any]]) -> NDArrays:
    """``global + delta`` split back into the global model's arrays (their shapes and dtypes)."""
    glo = _check_float_arrays(global_arrays, "global model")
    total = sum(int(a.size) for a in glo)
    if delta.shape != (total,):
        raise UpdateError(f"delta has shape {delta.shape}, the global model has {total} parameters")
    out: NDArrays = []
    pos = 0
    for a in glo:
        piece = delta[pos : pos + a.size].reshape(a.shape)
        out.append((a.astype(np.float64) + piece).astype(a.dtype))
        pos += a.size
    return out


def _parameters_to_arrays(parameters: Parameters) -> NDArrays:
    return list(_parameters_to_ndarrays(parameters))


# -- public round parameters ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoundSetup:
    """The public parameters of one round, sent to each client in exchange 1 (only ``client_id`` differs).

    A client rebuilds the protocol configuration and the codec from these with :meth:`protocol`.
    """

    client_id: int  # protocol id 1..n of the receiver
    num_clients: int
    vector_length: int  # model size + 1 (the weight slot)
    modulus_bits: int
    threshold: int
    round_id: int
    graph_seed: bytes
    mode: str
    threshold_fraction: float
    target_dropout: float
    corrupt_fraction: float
    clip_range: float  # per-coordinate range of the fixed-point encoding
    scale_bits: int
    headroom_bits: int
    l2_clip: float  # L2 bound each client applies to its update first (client-level DP); 0: none
    weighting: str  # "examples" (w = n_k / max_weight), "uniform" (w = 1) or "distributed" (distributed DP)
    max_weight: float
    # distributed DP only (weighting "distributed"; zero/empty otherwise): dp.distributed.DistributedParams
    # with dim = dd_dim, clip = l2_clip, bits = modulus_bits, and the round's public rotation seed
    dd_dim: int = 0
    dd_gamma: float = 0.0
    dd_noise_std: float = 0.0
    dd_beta: float = 0.0
    dd_noise: str = ""
    dd_rotation: bytes = b""

    def __repr__(self) -> str:
        return (
            f"RoundSetup(client_id={self.client_id}, num_clients={self.num_clients}, mode={self.mode}, "
            f"threshold={self.threshold}, modulus_bits={self.modulus_bits})"
        )

    def to_record(self) -> ConfigRecord:
        values: dict[str, Any] = {_PHASE: "setup"}
        values.update(dataclasses.asdict(self))
        return ConfigRecord(values)

    @classmethod
    def from_record(cls, record: ConfigRecord) -> RoundSetup:
        """Validate a setup record strictly: exact key set, exact types, ranges.

        Raises:
            RemoteProtocolError: naming the key that is missing, unknown, of the wrong type or out of range.
        """
        types: dict[str, type] = {f.name: _FIELD_TYPES[f.type if isinstance(f.type, str) else f.type.__name__]
                                  for f in dataclasses.fields(cls)}
        present = set(record.keys()) - {_PHASE}
        unknown = sorted(present - set(types))
        if unknown:
            raise RemoteProtocolError(f"setup record has unknown keys {unknown[:5]}")
        values: dict[str, Any] = {}
        for name, kind in types.items():
            if name not in record:
                raise RemoteProtocolError(f"setup record lacks key {name!r}")
            value = record[name]
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise RemoteProtocolError(f"setup key {name!r} must be an int, got {type(value).__name__}")
            if kind is float:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise RemoteProtocolError(f"setup key {name!r} must be a number, got {type(value).__name__}")
                value = float(value)
            if kind in (str, bytes) and not isinstance(value, kind):
                raise RemoteProtocolError(f"setup key {name!r} must be {kind.__name__}, got {type(value).__name__}")
            values[name] = value
        setup = cls(**values)
        setup._check_ranges()
        return setup

    def _check_ranges(self) -> None:
        def bad(key: str, allowed: str, value: object) -> RemoteProtocolError:
            return RemoteProtocolError(f"setup key {key!r} must be {allowed}, got {value!r}")

        if not 2 <= self.num_clients <= 1 << 24:
            raise bad("num_clients", "in 2..2^24", self.num_clients)
        if not 1 <= self.client_id <= self.num_clients:
            raise bad("client_id", f"in 1..{self.num_clients}", self.client_id)
        if not 2 <= self.vector_length <= 1 << 31:
            raise bad("vector_length", "in 2..2^31", self.vector_length)
        if not 2 <= self.modulus_bits <= 64:
            raise bad("modulus_bits", "in 2..64", self.modulus_bits)
        if not 0 <= self.round_id < 1 << 63:
            raise bad("round_id", "in [0, 2^63)", self.round_id)
        if len(self.graph_seed) != 32:
            raise bad("graph_seed", "32 bytes", f"{len(self.graph_seed)} bytes")
        if self.mode not in ("secagg", "secagg+"):
            raise bad("mode", "'secagg' or 'secagg+'", self.mode)
        if self.weighting not in ("examples", "uniform", "distributed"):
            raise bad("weighting", "'examples', 'uniform' or 'distributed'", self.weighting)
        for key, lo, hi in (("threshold_fraction", 0.5, 1.0), ("target_dropout", 0.0, 0.5),
                            ("corrupt_fraction", 0.0, 0.5)):
            value = getattr(self, key)
            if not (math.isfinite(value) and lo <= value <= hi):
                raise bad(key, f"in [{lo}, {hi}]", value)
        for key in ("clip_range", "max_weight"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise bad(key, "finite and > 0", value)
        if not (math.isfinite(self.l2_clip) and self.l2_clip >= 0):
            raise bad("l2_clip", "finite and >= 0", self.l2_clip)
        if not 0 <= self.scale_bits <= 40:
            raise bad("scale_bits", "in 0..40", self.scale_bits)
        if not 0 <= self.headroom_bits <= 16:
            raise bad("headroom_bits", "in 0..16", self.headroom_bits)
        if self.weighting == "distributed":
            if len(self.dd_rotation) != 32:
                raise bad("dd_rotation", "32 bytes", f"{len(self.dd_rotation)} bytes")
            if self.l2_clip <= 0:
                raise bad("l2_clip", "> 0 under distributed DP", self.l2_clip)
            params = self.distributed_params()
            if params.padded_dim != self.vector_length:
                raise bad("vector_length", f"the padded dimension {params.padded_dim}", self.vector_length)
        elif (self.dd_dim, self.dd_gamma, self.dd_noise_std, self.dd_beta, self.dd_noise, self.dd_rotation) != (
            0, 0.0, 0.0, 0.0, "", b""
        ):
            raise RemoteProtocolError("setup has distributed-DP keys set without weighting 'distributed'")

    def distributed_params(self) -> DistributedParams:
        """The public distributed-DP parameters of the round (weighting "distributed" only)."""
        try:
            return DistributedParams(
                self.dd_dim, self.l2_clip, self.dd_gamma, self.dd_noise_std, self.modulus_bits, self.dd_beta,
                self.dd_noise,  # type: ignore[arg-type]
            )
        except DPError as exc:
            raise RemoteProtocolError(f"setup's distributed-DP parameters are invalid: {exc}") from None

    def codec(self) -> FixedPointCodec:
        """The fixed-point codec of the round: weighted encodings, weights in [0, 1], n summands."""
        return FixedPointCodec.with_safe_modulus(
            self.clip_range, self.scale_bits, self.num_clients, max_weight=1.0, headroom_bits=self.headroom_bits
        )

    def protocol(self) -> ProtocolConfig:
        """Re-derive the protocol configuration (and the codec's modulus) and check them against the setup.

        Raises:
            RemoteProtocolError: the stated modulus or threshold differs from the derived one (the server
                runs other parameters or another fedshield version), or the parameters are invalid.
        """
        try:
            bits = self.codec().modulus_bits if self.weighting != "distributed" else self.modulus_bits
            if bits != self.modulus_bits:
                raise RemoteProtocolError(
                    f"setup states modulus 2^{self.modulus_bits}, this client derives 2^{bits} "
                    "from the same parameters (fedshield versions differ?)"
                )
            config, _ = plan_round(
                self.num_clients, self.vector_length, self.modulus_bits, mode=self.mode,  # type: ignore[arg-type]
                round_id=self.round_id, graph_seed=self.graph_seed, threshold_fraction=self.threshold_fraction,
                target_dropout=self.target_dropout, corrupt_fraction=self.corrupt_fraction,
            )
        except (SecAggError, ValueError) as exc:
            if isinstance(exc, RemoteProtocolError):
                raise
            raise RemoteProtocolError(f"setup parameters are invalid: {exc}") from None
        if config.threshold != self.threshold:
            raise RemoteProtocolError(
                f"setup states threshold {self.threshold}, this client derives {config.threshold} "
                "from the same parameters (fedshield versions differ?)"
            )
        return config


_FIELD_TYPES: Final[dict[str, type]] = {"int": int, "float": float, "str": str, "bytes": bytes}


# -- the client mod ------------------------------------------------------------------------------------------
def _reply_record(phase: str, message: ClientMessage) -> ConfigRecord:
    return ConfigRecord({_PHASE: phase, _PAYLOAD: encode(message)})


def _payload(record: ConfigRecord, who: str) -> tuple[str, bytes]:
    phase, payload = record.get(_PHASE), record.get(_PAYLOAD)
    if not isinstance(phase, str):
        raise RemoteProtocolError(f"{who}: record lacks a str {_PHASE!r}")
    if not isinstance(payload, bytes):
        raise RemoteProtocolError(f"{who}: record lacks bytes {_PAYLOAD!r}")
    if set(record.keys()) != {_PHASE, _PAYLOAD}:
        raise RemoteProtocolError(f"{who}: record has unknown keys")
    return phase, payload


class SecAggClientMod:
    """Flower client mod running fedshield's client session (use the instance :data:`secagg_mod`).

    ``ClientApp(client_fn=..., mods=[secagg_mod])``. Only ``TRAIN`` messages are touched; evaluate and
    query messages pass through. Args:

    * ``min_clients`` -- refuse rounds with fewer participants (the sum of two updates reveals each to the
      other; default 3).
    * ``allow_plain_fit`` -- pass a ``TRAIN`` message without fedshield's record to the ClientApp, i.e. send
      an unmasked update to a server that does not run :class:`SecAggWorkflow`. Off by default: a client
      that installed this mod does not silently fall back to plaintext.
    * ``weight_key`` -- Message API rounds (:class:`~fl.integrations.flower_message.SecureGrid`): the key of
      the reply's MetricRecord holding the FedAvg weight (the strategy's ``weighted_by_key``, Flower's
      default ``"num-examples"``). It goes into the masked vector; the reply says 1.
    * ``min_noise_multiplier`` -- distributed DP without trusting the server's noise choice: refuse a round
      unless it is distributed DP whose noise, summed over the fewest survivors the protocol accepts
      (the threshold t), is at least this multiple of the rounded L2 sensitivity (0: no floor).

    Both Flower server APIs are served: a Strategy/LegacyContext round (FitIns in, FitRes out) and a Message
    API round (``flwr.serverapp.strategy``: the train message's one ArrayRecord in, the ClientApp's reply with
    one ArrayRecord and one MetricRecord out).

    Raises (inside Flower: becomes the error reply, and the server treats the client as dropped):
        RemoteProtocolError / secagg.messages.WireError: malformed, tampered, misaddressed or out-of-order
            server messages, or a setup this client refuses.
        UpdateError: the ClientApp's FitRes does not fit the global model.
        LocalProtocolError: the ClientApp's fit failed.
    """

    def __init__(
        self, *, min_clients: int = 3, allow_plain_fit: bool = False, weight_key: str = "num-examples",
        min_noise_multiplier: float = 0.0,
    ) -> None:
        if isinstance(min_clients, bool) or not isinstance(min_clients, int) or min_clients < 2:
            raise ValueError(f"min_clients must be an int >= 2, got {min_clients!r}")
        if not isinstance(weight_key, str) or not weight_key:
            raise ValueError(f"weight_key must be a non-empty str, got {weight_key!r}")
        if (isinstance(min_noise_multiplier, bool) or not isinstance(min_noise_multiplier, (int, float))
                or not math.isfinite(min_noise_multiplier) or min_noise_multiplier < 0):
            raise ValueError(f"min_noise_multiplier must be a finite number >= 0, got {min_noise_multiplier!r}")
        self.min_clients = min_clients
        self.allow_plain_fit = allow_plain_fit
        self.weight_key = weight_key
        self.min_noise_multiplier = float(min_noise_multiplier)

    def __repr__(self) -> str:
        return (f"SecAggClientMod(min_clients={self.min_clients}, allow_plain_fit={self.allow_plain_fit}, "
                f"weight_key={self.weight_key!r}, min_noise_multiplier={self.min_noise_multiplier:g})")

    def _check_noise_floor(self, setup: RoundSetup) -> None:
        """Refuse a round whose distributed noise, summed over the fewest survivors the protocol accepts
        (t), is below ``min_noise_multiplier`` times the rounded sensitivity -- or that has no client noise."""
        if self.min_noise_multiplier <= 0:
            return
        if setup.weighting != "distributed":
            raise RemoteProtocolError(
                f"this client requires distributed DP with noise multiplier >= {self.min_noise_multiplier:g}; "
                "the round adds no client noise"
            )
        params = setup.distributed_params()
        z = math.sqrt(setup.threshold) * params.noise_std / params.l2_sensitivity
        if z < self.min_noise_multiplier:
            raise RemoteProtocolError(
                f"the round's noise multiplier over its t={setup.threshold} minimum survivors is {z:.4g}, "
                f"below this client's floor {self.min_noise_multiplier:g}"
            )

    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctxt)
        if RECORD_KEY not in msg.content.config_records:
            if self.allow_plain_fit:
                return call_next(msg, ctxt)
            raise RemoteProtocolError(
                "fit request without fedshield secure aggregation; this client only sends masked updates "
                "(SecAggClientMod(allow_plain_fit=True) to allow plaintext)"
            )
        record = msg.content.config_records[RECORD_KEY]
        try:
            if record.get(_PHASE) == "setup":
                content = self._setup(record, ctxt)
            else:
                content = self._step(msg, record, ctxt, call_next)
        except Exception:
            self._forget(ctxt)
            raise
        return Message(content, reply_to=msg)

    @staticmethod
    def _forget(ctxt: Context) -> None:
        if STATE_KEY in ctxt.state.config_records:
            del ctxt.state.config_records[STATE_KEY]

    def _setup(self, record: ConfigRecord, ctxt: Context) -> RecordDict:
        setup = RoundSetup.from_record(record)
        if setup.num_clients < self.min_clients:
            raise RemoteProtocolError(
                f"round has {setup.num_clients} participants, this client requires at least {self.min_clients}"
            )
        protocol = setup.protocol()  # re-derives and checks the stated threshold and modulus
        self._check_noise_floor(setup)
        session = ClientSession(protocol, setup.client_id)
        advert = session.start()
        self._save(ctxt, setup, session)
        return RecordDict({RECORD_KEY: _reply_record("advertise", advert)})

    @staticmethod
    def _save(ctxt: Context, setup: RoundSetup, session: ClientSession) -> None:
        stored = setup.to_record()
        stored["session"] = session.to_bytes()
        ctxt.state.config_records[STATE_KEY] = stored

    @staticmethod
    def _load(ctxt: Context) -> tuple[RoundSetup, ClientSession]:
        if STATE_KEY not in ctxt.state.config_records:
            raise RemoteProtocolError("no secure-aggregation round in progress on this client (no setup received)")
        stored = ConfigRecord(dict(ctxt.state.config_records[STATE_KEY].items()))
        blob = stored.pop("session", None)
        if not isinstance(blob, bytes):
            raise LocalProtocolError("the persisted secure-aggregation state lacks its session")
        try:
            setup = RoundSetup.from_record(stored)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(f"the persisted secure-aggregation state is corrupt: {exc}") from None
        return setup, ClientSession.from_bytes(blob, setup.protocol())

    def _step(self, msg: Message, record: ConfigRecord, ctxt: Context, call_next: ClientAppCallable) -> RecordDict:
        phase, payload = _payload(record, "server message")
        message = decode(payload)
        if not isinstance(message, _SERVER_TYPES):
            raise RemoteProtocolError(f"a client cannot receive {type(message).__name__}")
        if _PHASE_OF[type(message)] != phase:
            raise RemoteProtocolError(f"record says phase {phase!r} but holds {type(message).__name__}")
        setup, session = self._load(ctxt)
        content = RecordDict()
        if isinstance(message, ForwardedShares):
            del msg.content.config_records[RECORD_KEY]  # the ClientApp sees the plain FitIns
            content = self._train_and_encode(msg, ctxt, call_next, setup, session)
        replies = session.receive(message)
        if len(replies) != 1:
            raise LocalProtocolError(f"session produced {len(replies)} replies to {type(message).__name__}")
        content.config_records[RECORD_KEY] = _reply_record(phase, replies[0])  # a reply carries its exchange's tag
        if session.state is ClientState.DONE:
            self._forget(ctxt)
        else:
            self._save(ctxt, setup, session)
        return content

    def _train_and_encode(
        self, msg: Message, ctxt: Context, call_next: ClientAppCallable, setup: RoundSetup, session: ClientSession
    ) -> RecordDict:
        if _LEGACY_FITINS in msg.content.array_records:  # a Strategy/LegacyContext round (FitIns, FitRes)
            fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
            global_arrays = _parameters_to_arrays(fitins.parameters)
            out = self._call_app(msg, ctxt, call_next)
            fitres = compat.recorddict_to_fitres(out.content, keep_input=True)
            if fitres.status.code != Code.OK:
                raise LocalProtocolError("the ClientApp's fit returned a failure status; this client drops out")
            local, num_examples = _parameters_to_arrays(fitres.parameters), float(fitres.num_examples)
            hidden = _hidden_fitres(fitres)
        else:  # a Message API round (flwr.serverapp.strategy): one ArrayRecord in, ArrayRecord + MetricRecord out
            global_arrays = _single(msg.content.array_records, "the server's train message", "ArrayRecord") \
                .to_numpy_ndarrays()
            out = self._call_app(msg, ctxt, call_next)
            local, metric_key, metrics, num_examples = _read_train_reply(
                out, self.weight_key, need_weight=setup.weighting == "examples"
            )
            hidden = RecordDict({metric_key: metrics})
        self._encode(delta_vector(local, global_arrays), num_examples, setup, session)
        return hidden

    @staticmethod
    def _call_app(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        out = call_next(msg, ctxt)
        if out.has_error():
            raise LocalProtocolError("the ClientApp's fit failed; this client drops out of the round")
        return out

    @staticmethod
    def _encode(delta: npt.NDArray[np.float32], num_examples: float, setup: RoundSetup, session: ClientSession) -> None:
        config = session.config
        if setup.weighting == "distributed":
            params = setup.distributed_params()
            if delta.shape[0] != params.dim:
                raise UpdateError(f"update has {delta.shape[0]} entries, the round expects {params.dim}")
            # the noise share comes from this client's own CSPRNG: nobody else can subtract it
            noised = encode_client(delta.astype(np.float64), params, setup.dd_rotation, CryptoRNG())
            session.set_input(noised.astype(config.dtype, copy=False))
            return
        if delta.shape[0] + 1 != setup.vector_length:
            raise UpdateError(f"update has {delta.shape[0]} entries, the round expects {setup.vector_length - 1}")
        if setup.l2_clip > 0:
            delta = clip_l2(delta, setup.l2_clip)[0].astype(np.float32)
        if setup.weighting == "uniform":
            weight = 1.0
        else:
            weight = num_examples / setup.max_weight
            if not 0 <= weight <= 1:
                raise UpdateError(
                    f"num_examples={num_examples:g} exceeds the round's public max_weight={setup.max_weight:g}"
                )
        encoded = setup.codec().encode_weighted(delta, weight, rng=KeystreamUniforms())
        session.set_input(encoded.astype(config.dtype, copy=False))


def _read_train_reply(
    out: Message, weight_key: str, *, need_weight: bool
) -> tuple[NDArrays, str, MetricRecord, float]:
    """A Message API ClientApp's train reply: its arrays, its MetricRecord's key, the metrics the server may
    see (the FedAvg weight replaced by 1: the real one travels inside the masked or encrypted vector) and
    that weight (``weight_key``; required when ``need_weight``, else 0 when absent)."""
    local = _single(out.content.array_records, "the ClientApp's train reply", "ArrayRecord").to_numpy_ndarrays()
    metric_key = _single_key(out.content.metric_records, "the ClientApp's train reply", "MetricRecord")
    metrics = dict(out.content.metric_records[metric_key])
    weight = metrics.get(weight_key)
    numeric = isinstance(weight, (int, float)) and not isinstance(weight, bool)
    if need_weight and not numeric:
        raise UpdateError(f"the ClientApp's MetricRecord lacks a numeric {weight_key!r} (the FedAvg weight)")
    metrics[weight_key] = 1
    return local, metric_key, MetricRecord(metrics), float(weight) if numeric else 0.0  # type: ignore[arg-type]


def _single_key(records: Mapping[str, Any], where: str, kind: str) -> str:
    if len(records) != 1:
        raise UpdateError(f"{where} must hold exactly one {kind}, found {len(records)}")
    return next(iter(records))


def _single(records: Mapping[str, ArrayRecord], where: str, kind: str) -> ArrayRecord:
    return records[_single_key(records, where, kind)]


def _hidden_fitres(fitres: FitRes) -> RecordDict:
    """The FitRes a client sends back: status and metrics, but neither parameters nor num_examples (both
    are inside the masked vector)."""
    hidden = FitRes(status=fitres.status, parameters=Parameters(tensors=[], tensor_type=""), num_examples=0,
                    metrics=fitres.metrics)
    return compat.fitres_to_recorddict(hidden, keep_input=False)


#: The client mod with default settings: ``ClientApp(client_fn=..., mods=[secagg_mod])``.
secagg_mod: Final = SecAggClientMod()


# -- the server ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class SecureAggregate:
    """What a secure round reveals: the weighted sum of the survivors' updates and the sum of their weights.

    ``weighted_sum`` is ``Σ_k w_k clip(Δ_k)`` over the survivors (float64, model layout), ``total_weight``
    is ``Σ_k w_k`` (``w_k = n_k / max_weight``, or 1 under uniform weighting); each coordinate is within
    ``len(survivors) · 2^-scale_bits`` of the exact value. Under distributed DP (``weighting ==
    "distributed"``) ``weighted_sum`` is the decoded sum of the survivors' noised encodings -- already
    differentially private -- and ``total_weight`` the number of survivors.
    """

    weighted_sum: npt.NDArray[np.float64]
    total_weight: float
    survivors: tuple[int, ...]  # Flower node ids whose masked input is in the sum
    dropped: tuple[int, ...]  # shared keys, then vanished: recovered by the protocol
    global_arrays: tuple[np.ndarray, ...]  # the round's global model, which the updates are relative to
    weighting: str
    max_weight: float
    resolution: float  # 2^-scale_bits

    def __repr__(self) -> str:
        return (
            f"SecureAggregate(length={self.weighted_sum.shape[0]}, survivors={len(self.survivors)}, "
            f"dropped={len(self.dropped)})"
        )

    @property
    def num_survivors(self) -> int:
        return len(self.survivors)

    def mean_delta(self) -> npt.NDArray[np.float64] | None:
        """The weighted mean update, or None when the total weight is not positive."""
        if not self.total_weight > 0:
            return None
        return self.weighted_sum / self.total_weight

    def parameters_for(self, delta: npt.NDArray[np.floating[Any]]) -> Parameters:
        """Flower parameters ``global + delta`` in the global model's shapes and dtypes."""
        return ndarrays_to_parameters(add_delta(self.global_arrays, delta))


@dataclass
class SecureRoundOutcome:
    """Everything one secure round produced, for the workflow and for inspection."""

    aggregate: SecureAggregate | None  # None: the round aborted (see ``aborted``)
    fit_results: dict[int, FitRes] = field(default_factory=dict)  # survivors' FitRes status and metrics
    contents: dict[int, RecordDict] = field(default_factory=dict)  # survivors' masked-input reply, less our record
    failures: list[BaseException] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)  # node id -> why its message was rejected
    aborted: str = ""
    description: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SecAggEncoding:
    """How the clients of one round encode their update (what a :class:`SecureSumStrategy` asks of them).

    ``l2_clip`` alone: clip to that L2 norm, weight 1, fixed point with the clip as range (central DP).
    ``distributed`` (with ``l2_clip = distributed.clip`` implied and a public 32-byte ``rotation_seed``):
    :func:`dp.distributed.encode_client` -- rotate, round, add a discrete-noise share -- modulus
    ``distributed.bits``. Neither: FedAvg weights ``n_k / max_weight`` and the workflow's settings.
    """

    l2_clip: float | None = None
    distributed: DistributedParams | None = None
    rotation_seed: bytes = b""


@runtime_checkable
class SecureSumStrategy(Protocol):
    """A strategy that consumes the secure sum itself rather than per-client FitRes (fedshield's DP wrapper)."""

    def secagg_encoding(self, server_round: int) -> SecAggEncoding:
        """How clients must encode their update this round (called after ``configure_fit``)."""

    def aggregate_secure_fit(
        self,
        server_round: int,
        aggregate: SecureAggregate,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Turn the revealed sum into the new global parameters and metrics."""


def _derive(label: bytes, salt: int, server_round: int) -> bytes:
    return hashlib.sha256(b"fedshield/fl/flower/" + label + struct.pack(">qQ", salt, server_round)).digest()


def run_secure_round(
    grid: Grid,
    fit_contents: Mapping[int, RecordDict],
    global_arrays: Sequence[np.ndarray],
    *,
    server_round: int,
    mode: Mode = "secagg+",
    settings: SecAggSettings | None = None,
    encoding: SecAggEncoding | None = None,
    seed: int = 0,
    timeout: float | None = None,
) -> SecureRoundOutcome:
    """Run one SecAgg/SecAgg+ round over ``grid`` with the nodes in ``fit_contents`` (node id → FitIns record).

    Exchanges: setup → share keys → masked input (the FitIns goes with the forwarded shares) → unmask; a
    node that does not answer an exchange is dropped from it. ``encoding`` switches to client-level DP
    encodings (:class:`SecAggEncoding`): clip to an L2 norm with weight 1 (central DP), or distributed DP
    with each client's own noise share. Returns the outcome; ``outcome.aggregate`` is None if the round
    aborted (fewer than t parties in some phase, or a sum that does not decode) -- nothing is revealed then.
    """
    s = settings or SecAggSettings()
    outcome = SecureRoundOutcome(aggregate=None)
    node_ids = sorted(fit_contents)
    n = len(node_ids)
    if n < 2:
        outcome.aborted = f"secure aggregation needs at least 2 clients, {n} sampled"
        return outcome
    pid = {nid: i + 1 for i, nid in enumerate(node_ids)}
    node_of = {p: nid for nid, p in pid.items()}
    arrays = _check_float_arrays(list(global_arrays), "global model")
    dim = sum(int(a.size) for a in arrays)
    enc = encoding or SecAggEncoding()
    dd = enc.distributed
    weighting = "distributed" if dd is not None else "uniform" if enc.l2_clip is not None else "examples"
    l2_clip = dd.clip if dd is not None else enc.l2_clip
    if dd is not None and dd.dim != dim:
        raise UpdateError(f"distributed-DP parameters are for {dd.dim} parameters, the model has {dim}")
    round_id = int.from_bytes(_derive(b"round-id", seed, server_round)[:8], "big") >> 1
    base = RoundSetup(
        client_id=1, num_clients=n, vector_length=dd.padded_dim if dd is not None else dim + 1, modulus_bits=2,
        threshold=2, round_id=round_id, graph_seed=_derive(b"graph", seed, server_round), mode=mode,
        threshold_fraction=float(s.threshold_fraction), target_dropout=float(s.target_dropout),
        corrupt_fraction=float(s.corrupt_fraction), clip_range=float(l2_clip or s.clip_range),
        scale_bits=s.scale_bits, headroom_bits=s.headroom_bits, l2_clip=float(l2_clip or 0.0), weighting=weighting,
        max_weight=float(s.max_weight) if weighting == "examples" else 1.0,
    )
    if dd is not None:
        base = dataclasses.replace(base, dd_dim=dd.dim, dd_gamma=float(dd.gamma), dd_noise_std=float(dd.noise_std),
                                   dd_beta=float(dd.beta), dd_noise=dd.noise, dd_rotation=enc.rotation_seed)
    codec = base.codec()
    modulus_bits = dd.bits if dd is not None else codec.modulus_bits
    config, note = plan_round(
        n, base.vector_length, modulus_bits, mode=mode, round_id=round_id, graph_seed=base.graph_seed,
        threshold_fraction=s.threshold_fraction, target_dropout=s.target_dropout, corrupt_fraction=s.corrupt_fraction,
    )
    base = dataclasses.replace(base, modulus_bits=modulus_bits, threshold=config.threshold)
    base._check_ranges()  # the server refuses to send what a client would refuse
    outcome.description = note
    session = ServerSession(config)
    group = str(server_round)
    upload = dict.fromkeys(node_ids, 0)

    def exchange(messages: list[Message], phase: str) -> None:
        for reply in grid.send_and_receive(messages, timeout=timeout):
            nid = reply.metadata.src_node_id
            if reply.has_error():
                reason = reply.error.reason or f"error code {reply.error.code}"
                outcome.failures.append(Exception(f"node {nid} failed in phase {phase}: {reason}"))
                continue
            try:
                if nid not in pid:
                    raise RemoteProtocolError(f"reply from node {nid}, which is not in this round")
                record = reply.content.config_records.get(RECORD_KEY)
                if record is None:
                    raise RemoteProtocolError("reply lacks fedshield's secure-aggregation record")
                tag, payload = _payload(record, f"node {nid}")
                upload[nid] += len(payload)
                message = decode(payload)
                if not isinstance(message, _CLIENT_TYPES):
                    raise RemoteProtocolError(f"a server cannot receive {type(message).__name__}")
                if tag != phase:
                    raise RemoteProtocolError(f"reply says phase {tag!r}, the server is in phase {phase!r}")
                if message.sender != pid[nid]:
                    # the protocol id must be the one assigned to the Flower node the reply came from
                    raise RemoteProtocolError(f"reply names sender {message.sender}, node {nid} is client {pid[nid]}")
                session.receive(message)
            except SecAggError as exc:
                log.warning("secure aggregation round %s: rejected node %s: %s", server_round, nid, exc)
                outcome.rejected[nid] = f"{type(exc).__name__}: {exc}"
                outcome.failures.append(exc)
                continue
            if isinstance(message, MaskedInput):
                outcome.contents[nid] = RecordDict(
                    {k: v for k, v in reply.content.items() if k != RECORD_KEY}
                )
                try:
                    outcome.fit_results[nid] = compat.recorddict_to_fitres(reply.content, keep_input=True)
                except (KeyError, TypeError, ValueError):
                    outcome.fit_results[nid] = FitRes(Status(Code.OK, ""), Parameters([], ""), 0, {})

    setups = [
        Message(RecordDict({RECORD_KEY: dataclasses.replace(base, client_id=pid[nid]).to_record()}),
                dst_node_id=nid, message_type=MessageType.TRAIN, group_id=group)
        for nid in node_ids
    ]
    exchange(setups, "advertise")
    while True:
        try:
            outbox = session.close_phase()
        except AbortError as exc:
            outcome.aborted = str(exc)
            log.warning("secure aggregation round %s aborted: %s", server_round, exc)
            return outcome
        if session.phase is ServerPhase.DONE:
            break
        messages: list[Message] = []
        phase = _PHASE_OF[type(outbox[0])] if outbox else ""
        for server_message in outbox:
            nid = node_of[server_message.receiver]
            content = RecordDict()
            if isinstance(server_message, ForwardedShares):  # the FitIns travels with the forwarded shares
                content = RecordDict(dict(fit_contents[nid].items()))  # (a copy: the caller's stays untouched)
            content.config_records[RECORD_KEY] = ConfigRecord({_PHASE: phase, _PAYLOAD: encode(server_message)})
            messages.append(Message(content, dst_node_id=nid, message_type=MessageType.TRAIN, group_id=group))
        exchange(messages, phase)
    result = session.result
    assert result is not None
    survivors = tuple(node_of[p] for p in result.survivors)
    try:
        if dd is not None:
            values, total = decode_sum(result.vector.astype(np.uint64), dd, enc.rotation_seed), float(len(survivors))
        else:
            values, total = codec.decode_weighted(result.vector.astype(np.uint64), len(result.survivors))
    except (SecAggError, DPError) as exc:
        outcome.aborted = f"the revealed sum does not decode: {exc}"
        log.error("secure aggregation round %s: %s", server_round, outcome.aborted)
        return outcome
    outcome.fit_results = {nid: outcome.fit_results[nid] for nid in survivors if nid in outcome.fit_results}
    outcome.contents = {nid: outcome.contents[nid] for nid in survivors if nid in outcome.contents}
    outcome.aggregate = SecureAggregate(
        weighted_sum=values, total_weight=total, survivors=survivors,
        dropped=tuple(node_of[p] for p in result.dropped), global_arrays=tuple(arrays), weighting=weighting,
        max_weight=base.max_weight, resolution=codec.resolution,
    )
    outcome.metrics = {
        "secagg_survivors": float(len(survivors)),
        "secagg_recovered_dropouts": float(len(result.dropped)),
        "secagg_rejected": float(len(outcome.rejected)),
        "secagg_modulus_bits": float(config.modulus_bits),
        "secagg_threshold": float(config.threshold),
        "secagg_degree": float(config.graph.degree),
        "secagg_upload_bytes_per_client": float(np.mean([upload[nid] for nid in survivors])),
    }
    return outcome


class SecAggWorkflow:
    """Flower fit workflow: fedshield's SecAgg (``mode="secagg"``) or SecAgg+ (``"secagg+"``) for one round.

    Use it where Flower's ``SecAggPlusWorkflow`` goes::

        context = LegacyContext(context=context, config=ServerConfig(num_rounds=5), strategy=FedAvg(...))
        DefaultWorkflow(fit_workflow=SecAggWorkflow("secagg+"))(grid, context)

    with :data:`secagg_mod` in the ClientApp's mods. The strategy's ``configure_fit`` picks the clients and
    their FitIns; its ``aggregate_fit`` receives the decoded weighted mean (see the module docstring), or,
    for a :class:`SecureSumStrategy`, ``aggregate_secure_fit`` receives the sum. ``settings`` are fl's
    :class:`~fl.secure.SecAggSettings` (encoding range and resolution of an update, threshold fraction,
    SecAgg+ targets, public bound ``max_weight`` on ``num_examples``); ``timeout`` bounds each exchange
    (None: wait for every reply); ``seed`` names the run's public round ids and graph seeds. The outcome of
    the latest round is kept in :attr:`last_outcome`.
    """

    def __init__(
        self, mode: Mode = "secagg+", settings: SecAggSettings | None = None, *, timeout: float | None = None,
        seed: int = 0,
    ) -> None:
        if mode not in ("secagg", "secagg+"):
            raise ValueError(f"mode must be 'secagg' or 'secagg+', got {mode!r}")
        if settings is not None and settings.active:
            raise ValueError("the active-adversary variant needs a PKI and is not offered over Flower")
        self.mode: Mode = mode
        self.settings = settings or SecAggSettings()
        self.timeout = timeout
        self.seed = seed
        self.last_outcome: SecureRoundOutcome | None = None

    def __repr__(self) -> str:
        return f"SecAggWorkflow(mode={self.mode!r}, settings={self.settings})"

    def __call__(self, grid: Grid, context: Context) -> None:
        if not isinstance(context, LegacyContext):
            raise TypeError(f"SecAggWorkflow needs a LegacyContext, got {type(context).__name__}")
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        server_round = int(cfg[WorkflowKey.CURRENT_ROUND])  # type: ignore[arg-type]
        parameters = compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
        strategy = context.strategy
        instructions = strategy.configure_fit(server_round, parameters, context.client_manager)
        if not instructions:
            log.info("configure_fit: no clients selected, round %s skipped", server_round)
            return
        proxies = {proxy.node_id: proxy for proxy, _ in instructions}
        contents = {proxy.node_id: compat.fitins_to_recorddict(fitins, True) for proxy, fitins in instructions}
        consumer = strategy if isinstance(strategy, SecureSumStrategy) else None
        outcome = run_secure_round(
            grid, contents, _parameters_to_arrays(parameters), server_round=server_round, mode=self.mode,
            settings=self.settings, encoding=consumer.secagg_encoding(server_round) if consumer else None,
            seed=self.seed, timeout=self.timeout,
        )
        self.last_outcome = outcome
        aggregate = outcome.aggregate
        if aggregate is None:
            return
        failures: list[tuple[ClientProxy, FitRes] | BaseException] = list(outcome.failures)
        if consumer is not None:
            results = [(proxies[nid], outcome.fit_results[nid]) for nid in aggregate.survivors
                       if nid in outcome.fit_results]
            new_parameters, metrics = consumer.aggregate_secure_fit(server_round, aggregate, results, failures)
        else:
            mean = aggregate.mean_delta()
            if mean is None:
                log.warning("round %s: total weight of the survivors is 0; the model is unchanged", server_round)
                return
            shared = aggregate.parameters_for(mean)
            results = [
                (proxies[nid], FitRes(Status(Code.OK, ""), shared, 1, dict(fr.metrics)))
                for nid, fr in ((nid, outcome.fit_results.get(nid)) for nid in aggregate.survivors)
                if fr is not None
            ]
            new_parameters, metrics = strategy.aggregate_fit(server_round, results, failures)
        if new_parameters:
            context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(new_parameters, True)
            context.history.add_metrics_distributed_fit(
                server_round=server_round, metrics={**dict(metrics), **outcome.metrics}
            )
