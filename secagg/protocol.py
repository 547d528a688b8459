"""SecAgg (Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020) as sans-IO state machines.

:class:`ClientSession` and :class:`ServerSession` take typed messages in and return the messages to send
out; they never open sockets, sleep or read clocks (the h11 discipline). The caller owns transport and
timeouts: the server collects messages with :meth:`ServerSession.receive` and the caller decides when a
phase's collection window ends by calling :meth:`ServerSession.close_phase`.

Phases (paper numbering)::

    0 advertise keys   client → server   AdvertiseKeys          server → client  KeyDirectory
    1 share keys       client → server   EncryptedShares        server → client  ForwardedShares
    2 masked input     client → server   MaskedInput            server → client  UnmaskRequest | ConsistencyRequest
    3 consistency      client → server   ConsistencySignature   server → client  UnmaskRequest   (active variant)
    4 unmasking        client → server   UnmaskResponse         server: the sum of the survivors' inputs

Each client u holds two X25519 key pairs (``enc`` for share encryption, ``mask`` for pairwise masks) and a
fresh 32-byte self-mask seed b_u. Its secrets (mask private key, b_u) are t-of-(k+1) Shamir shared among
its *holders* = its k graph neighbours plus itself (the complete graph gives plain SecAgg). The masked input
is ``y_u = x_u + PRG(b_u) + Σ_{v ∈ U2 ∩ N(u)} sign(u, v) · PRG(s_{u,v})  (mod 2^b)`` with sign +1 for u < v,
-1 for u > v, so pairwise masks cancel in the sum over survivors. For every client the server asks
survivors either for shares of b_u (u survived) or of u's mask key (u dropped after sharing) — never
both: a client refuses a request that names itself as dropped, overlaps the two sets, or does not cover
exactly the clients it shared with.

Errors follow h11: a :class:`~secagg.errors.ProtocolError` pins a *client* session in ``ERROR``. The
server rejects a bad message from one client with :class:`~secagg.errors.RemoteProtocolError` and excludes
that client from the round without failing the others; it pins itself in ``ERROR`` only when the round
aborts (:class:`~secagg.errors.AbortError`, fewer than t parties left), and then reveals nothing.
"""

from __future__ import annotations

import enum
import secrets
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from secagg.errors import (
    AbortError,
    CryptoError,
    EncodingError,
    LocalProtocolError,
    ParameterError,
    ProtocolError,
    ReconstructionError,
    RemoteProtocolError,
)
from secagg.graph import NeighbourGraph
from secagg.keys import KeyPair, SigningKey, open_sealed, seal, verify
from secagg.messages import (
    AdvertiseKeys,
    ClientMessage,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShares,
    ForwardedShares,
    KeyDirectory,
    KeyEntry,
    MaskedInput,
    ServerMessage,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.prg import expand_mask, mask_dtype
from secagg.shamir import (
    FIELD_BYTES,
    SHARE_BYTES,
    reconstruct_many_robust,
    share_from_bytes,
    share_to_bytes,
    split_many,
)

__all__ = ["AggregationResult", "ClientSession", "ClientState", "ProtocolConfig", "ServerPhase", "ServerSession"]

_PREFIX: Final = b"fedshield/secagg/v1/"
_SHARE_PURPOSE: Final = b"shares"
_SEED_BYTES: Final = 32

Vector = npt.NDArray[Any]


# -- public configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProtocolConfig:
    """Public parameters every party of one aggregation round agrees on.

    ``threshold`` t: any t holders reconstruct a client's secrets; it must exceed half of the k+1
    holders, so two disjoint groups of responders can never both reconstruct (Bonawitz et al. §4).
    ``identity_keys`` (Ed25519 public keys by client id, from a PKI) switches on the active-adversary
    variant: signed key advertisements and the consistency round.
    """

    round_id: int
    graph: NeighbourGraph
    threshold: int
    vector_length: int
    modulus_bits: int
    identity_keys: Mapping[int, bytes] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.round_id, bool) or not isinstance(self.round_id, int) or not 0 <= self.round_id < 2**64:
            raise ParameterError("round_id must be an integer in [0, 2^64)")
        if not isinstance(self.graph, NeighbourGraph):
            raise TypeError(f"graph must be a NeighbourGraph, got {type(self.graph).__name__}")
        holders = self.graph.degree + 1
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int):
            raise TypeError("threshold must be an int")
        if not holders // 2 < self.threshold <= holders:
            raise ParameterError(
                f"threshold must be in ({holders / 2:g}, {holders}] for {holders} share holders "
                f"(degree {self.graph.degree} + self), got {self.threshold}"
            )
        if isinstance(self.vector_length, bool) or not isinstance(self.vector_length, int) or self.vector_length < 1:
            raise ParameterError(f"vector_length must be a positive int, got {self.vector_length!r}")
        if isinstance(self.modulus_bits, bool) or not isinstance(self.modulus_bits, int):
            raise TypeError("modulus_bits must be an int")
        if not 1 <= self.modulus_bits <= 64:
            raise ParameterError(f"modulus_bits must be in 1..64, got {self.modulus_bits}")
        if self.identity_keys is not None:
            missing = [i for i in self.client_ids if i not in self.identity_keys]
            if missing:
                raise ParameterError(f"identity_keys lacks clients {missing[:5]} (active variant needs all)")

    @property
    def num_clients(self) -> int:
        return self.graph.num_clients

    @property
    def client_ids(self) -> range:
        return range(1, self.graph.num_clients + 1)

    @property
    def active(self) -> bool:
        return self.identity_keys is not None

    @property
    def dtype(self) -> np.dtype[Any]:
        return mask_dtype(self.modulus_bits)

    def holders(self, client_id: int) -> tuple[int, ...]:
        """The clients holding shares of ``client_id``'s secrets: its neighbours and itself."""
        return tuple(sorted((*self.graph.of(client_id), client_id)))

    def check_vector(self, vector: object, what: str) -> Vector:
        if not isinstance(vector, np.ndarray) or vector.dtype != self.dtype or vector.shape != (self.vector_length,):
            raise EncodingError(
                f"{what} must be a {self.dtype} array of shape ({self.vector_length},) "
                f"for modulus 2^{self.modulus_bits}"
            )
        if self.modulus_bits < 8 * self.dtype.itemsize and (vector >> self.modulus_bits).any():
            raise EncodingError(f"{what} has elements outside [0, 2^{self.modulus_bits})")
        return vector


# -- derivations shared by both sides ---------------------------------------------------------------------
def _pair(a: int, b: int) -> bytes:
    lo, hi = (a, b) if a < b else (b, a)
    return struct.pack(">II", lo, hi)


def _round(config: ProtocolConfig) -> bytes:
    return struct.pack(">Q", config.round_id)


def _enc_info(config: ProtocolConfig, a: int, b: int) -> bytes:
    return b"enc" + _round(config) + _pair(a, b)


def _pair_info(config: ProtocolConfig, a: int, b: int) -> bytes:
    return b"pair" + _round(config) + _pair(a, b)


def _self_domain(config: ProtocolConfig, u: int) -> bytes:
    return b"self" + _round(config) + struct.pack(">I", u)


def _pair_mask(config: ProtocolConfig, seed: bytes, a: int, b: int, scratch: Vector) -> Vector:
    return expand_mask(seed, config.vector_length, config.modulus_bits, domain=_pair_info(config, a, b), out=scratch)


def _self_mask(config: ProtocolConfig, seed: bytes, u: int, scratch: Vector) -> Vector:
    return expand_mask(seed, config.vector_length, config.modulus_bits, domain=_self_domain(config, u), out=scratch)


def _reduce(config: ProtocolConfig, vector: Vector) -> Vector:
    if config.modulus_bits < 8 * config.dtype.itemsize:
        np.bitwise_and(vector, config.dtype.type((1 << config.modulus_bits) - 1), out=vector)
    return vector


def _advert_bytes(config: ProtocolConfig, u: int, enc_public: bytes, mask_public: bytes) -> bytes:
    return _PREFIX + b"advertise" + _round(config) + struct.pack(">I", u) + enc_public + mask_public


def _consistency_bytes(config: ProtocolConfig, survivors: Iterable[int]) -> bytes:
    ids = tuple(survivors)
    return _PREFIX + b"consistency" + _round(config) + struct.pack(f">I{len(ids)}I", len(ids), *ids)


# -- client -----------------------------------------------------------------------------------------------
class ClientState(enum.Enum):
    IDLE = "idle"
    WAIT_KEYS = "wait_keys"
    WAIT_SHARES = "wait_shares"
    WAIT_CONSISTENCY = "wait_consistency"
    WAIT_UNMASK = "wait_unmask"
    DONE = "done"
    ERROR = "error"


# Event-triggered transitions: (state, message type) -> (handler name, next state). Anything else is illegal.
_CLIENT_TRANSITIONS: Final[dict[tuple[ClientState, type[Any]], tuple[str, ClientState]]] = {
    (ClientState.WAIT_KEYS, KeyDirectory): ("_on_keys", ClientState.WAIT_SHARES),
    (ClientState.WAIT_SHARES, ForwardedShares): ("_on_shares", ClientState.WAIT_UNMASK),
    (ClientState.WAIT_CONSISTENCY, ConsistencyRequest): ("_on_consistency", ClientState.WAIT_UNMASK),
    (ClientState.WAIT_UNMASK, UnmaskRequest): ("_on_unmask", ClientState.DONE),
}


@dataclass
class _ClientSecrets:
    enc: KeyPair
    mask: KeyPair
    self_seed: bytes = b""
    own_shares: tuple[int, int] = (0, 0)  # this client's share of its own (mask key, self seed)
    enc_keys: dict[int, bytes] = field(default_factory=dict)  # share-encryption key per holder (phase 1 → 2)
    # shares others sent us: owner -> (share of owner's mask key, share of owner's self seed)
    received: dict[int, tuple[int, int]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return "_ClientSecrets(<hidden>)"


# -- client session persistence (ClientSession.to_bytes / from_bytes) -----------------------------------------
_SNAPSHOT_MAGIC: Final = b"FSFS\x01"
_SESSION_FIELDS: Final = frozenset(
    {"config", "client_id", "state", "_identity", "_secrets", "_input", "_directory", "_u2_view", "_signed_survivors"}
)
_SECRET_FIELDS: Final = frozenset({"enc", "mask", "self_seed", "own_shares", "enc_keys", "received"})
_PERSISTED_STATES: Final = (ClientState.WAIT_KEYS, ClientState.WAIT_SHARES, ClientState.WAIT_UNMASK)


def _check_session_shape(session: ClientSession) -> None:
    # the format covers exactly these fields: a new field must be added to it, never silently dropped
    if set(vars(session)) != _SESSION_FIELDS or {f.name for f in fields(_ClientSecrets)} != _SECRET_FIELDS:
        raise LocalProtocolError("ClientSession has fields its persistence format does not cover")


class _SnapshotReader:
    def __init__(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise LocalProtocolError(f"a persisted session must be bytes, got {type(data).__name__}")
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise LocalProtocolError("the persisted secure-aggregation session is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple[int, ...]:
        return tuple(struct.unpack(fmt, self.take(struct.calcsize(fmt))))

    def field(self) -> int:
        return int.from_bytes(self.take(FIELD_BYTES), "big")

    def blob(self) -> bytes:
        (n,) = self.unpack(">H")
        return self.take(n)


class ClientSession:
    """One client's side of one aggregation round."""

    def __init__(self, config: ProtocolConfig, client_id: int, *, identity_key: SigningKey | None = None) -> None:
        if client_id not in config.client_ids:
            raise ParameterError(f"client_id must be in 1..{config.num_clients}, got {client_id!r}")
        if config.active and identity_key is None:
            raise ParameterError("the active variant (identity_keys set) needs this client's identity_key")
        self.config = config
        self.client_id = client_id
        self.state = ClientState.IDLE
        self._identity = identity_key
        self._secrets = _ClientSecrets(KeyPair.generate(), KeyPair.generate())
        self._input: Vector | None = None
        self._directory: dict[int, KeyEntry] = {}
        self._u2_view: tuple[int, ...] = ()  # holders (incl. self) that completed key sharing
        self._signed_survivors: tuple[int, ...] | None = None

    def __repr__(self) -> str:
        return f"ClientSession(client_id={self.client_id}, round_id={self.config.round_id}, state={self.state.value})"

    # ---- caller API
    def start(self) -> AdvertiseKeys:
        """Phase 0: generate key pairs and advertise their public halves."""
        if self.state is not ClientState.IDLE:
            raise self._fail(LocalProtocolError(f"start() called in state {self.state.value}"))
        enc_pk, mask_pk = self._secrets.enc.public_bytes(), self._secrets.mask.public_bytes()
        signature = b""
        if self._identity is not None:
            signature = self._identity.sign(_advert_bytes(self.config, self.client_id, enc_pk, mask_pk))
        self.state = ClientState.WAIT_KEYS
        return AdvertiseKeys(self.config.round_id, self.client_id, enc_pk, mask_pk, signature)

    def set_input(self, vector: Vector) -> None:
        """The encoded input in Z_{2^b} (``config.dtype``, length ``config.vector_length``)."""
        if self.state not in (ClientState.IDLE, ClientState.WAIT_KEYS, ClientState.WAIT_SHARES):
            raise self._fail(LocalProtocolError(f"set_input() too late (state {self.state.value})"))
        try:
            self._input = self.config.check_vector(vector, "input").copy()
        except EncodingError as exc:
            raise self._fail(exc) from None

    # ---- persistence between exchanges
    def to_bytes(self) -> bytes:
        """The session between two exchanges, for a host that handles each message in a fresh worker or process
        (a Flower ClientApp keeps it in ``context.state``, as Flower's own SecAgg+ mod keeps its keys).

        The bytes hold this client's private keys and shares: store them like a private key, and delete them when
        the round ends. Only the passive protocol in the states between exchanges (waiting for keys, shares or
        the unmask request, input not yet set) can be persisted; anything else raises
        :class:`~secagg.errors.LocalProtocolError`. The format is versioned and exact.
        """
        _check_session_shape(self)
        if self.state not in _PERSISTED_STATES or self._identity is not None or self._input is not None:
            raise LocalProtocolError(f"cannot persist a session in state {self.state.value} between exchanges")
        sec = self._secrets
        parts = [
            _SNAPSHOT_MAGIC,
            struct.pack(">BIQ", _PERSISTED_STATES.index(self.state), self.client_id, self.config.round_id),
            sec.enc.private_bytes(),
            sec.mask.private_bytes(),
            struct.pack(">B", len(sec.self_seed)),
            sec.self_seed,
            sec.own_shares[0].to_bytes(FIELD_BYTES, "big"),
            sec.own_shares[1].to_bytes(FIELD_BYTES, "big"),
            struct.pack(">I", len(sec.enc_keys)),
        ]
        for v, key in sorted(sec.enc_keys.items()):
            parts += [struct.pack(">IH", v, len(key)), key]
        parts.append(struct.pack(">I", len(sec.received)))
        for v, (a, b) in sorted(sec.received.items()):
            parts += [struct.pack(">I", v), a.to_bytes(FIELD_BYTES, "big"), b.to_bytes(FIELD_BYTES, "big")]
        parts.append(struct.pack(">I", len(self._directory)))
        for v, entry in sorted(self._directory.items()):
            parts.append(struct.pack(">I", v))
            for blob in (entry.enc_public, entry.mask_public, entry.signature):
                parts += [struct.pack(">H", len(blob)), blob]
        parts.append(struct.pack(f">I{len(self._u2_view)}I", len(self._u2_view), *self._u2_view))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, config: ProtocolConfig) -> ClientSession:
        """Rebuild a session saved by :meth:`to_bytes` (``config``: the round's protocol config, re-derived)."""
        r = _SnapshotReader(data)
        if r.take(len(_SNAPSHOT_MAGIC)) != _SNAPSHOT_MAGIC:
            raise LocalProtocolError("the persisted secure-aggregation session has an unknown format")
        state_index, client_id, round_id = r.unpack(">BIQ")
        if state_index >= len(_PERSISTED_STATES) or round_id != config.round_id:
            raise LocalProtocolError("the persisted secure-aggregation session does not belong to this round")
        secrets_ = _ClientSecrets(KeyPair.from_private_bytes(r.take(32)), KeyPair.from_private_bytes(r.take(32)))
        (seed_len,) = r.unpack(">B")
        secrets_.self_seed = r.take(seed_len)
        secrets_.own_shares = (r.field(), r.field())
        (count,) = r.unpack(">I")
        for _ in range(count):
            v, n = r.unpack(">IH")
            secrets_.enc_keys[v] = r.take(n)
        (count,) = r.unpack(">I")
        for _ in range(count):
            (v,) = r.unpack(">I")
            secrets_.received[v] = (r.field(), r.field())
        directory: dict[int, KeyEntry] = {}
        (count,) = r.unpack(">I")
        for _ in range(count):
            (v,) = r.unpack(">I")
            directory[v] = KeyEntry(v, r.blob(), r.blob(), r.blob())
        (count,) = r.unpack(">I")
        u2_view = r.unpack(f">{count}I")
        if r.pos != len(data):
            raise LocalProtocolError("the persisted secure-aggregation session has trailing bytes")
        if client_id not in config.client_ids:
            raise LocalProtocolError("the persisted secure-aggregation session names a client outside this round")
        session = cls.__new__(cls)
        session.config, session.client_id, session.state = config, client_id, _PERSISTED_STATES[state_index]
        session._identity, session._secrets, session._input = None, secrets_, None
        session._directory, session._u2_view, session._signed_survivors = directory, tuple(u2_view), None
        _check_session_shape(session)
        return session

    def receive(self, message: ServerMessage) -> list[ClientMessage]:
        """Feed one message from the server; returns the messages to send back."""
        if self.state is ClientState.ERROR:
            raise ProtocolError("session is in ERROR state after an earlier failure")
        transition = _CLIENT_TRANSITIONS.get((self.state, type(message)))
        if transition is None:
            raise self._fail(
                RemoteProtocolError(f"unexpected {type(message).__name__} in state {self.state.value}")
            )
        handler, next_state = transition
        if getattr(message, "round_id", None) != self.config.round_id:
            raise self._fail(RemoteProtocolError(f"{type(message).__name__} is for another round"))
        if getattr(message, "receiver", None) != self.client_id:
            raise self._fail(RemoteProtocolError(f"{type(message).__name__} is addressed to another client"))
        try:
            out: list[ClientMessage] = getattr(self, handler)(message)
        except ProtocolError as exc:
            raise self._fail(exc) from None
        except (CryptoError, EncodingError, ReconstructionError, ParameterError) as exc:
            raise self._fail(RemoteProtocolError(f"{type(message).__name__} rejected: {exc}")) from None
        if handler == "_on_shares" and self.config.active:
            next_state = ClientState.WAIT_CONSISTENCY
        self.state = next_state
        if next_state is ClientState.DONE:
            self._secrets = _ClientSecrets(self._secrets.enc, self._secrets.mask)  # forget shares and seed
        return out

    def _fail(self, exc: Exception) -> Exception:
        self.state = ClientState.ERROR
        return exc

    # ---- phase handlers
    def _on_keys(self, msg: KeyDirectory) -> list[ClientMessage]:
        u, cfg = self.client_id, self.config
        allowed = set(cfg.holders(u))
        entries = {e.client_id: e for e in msg.entries}
        if not set(entries) <= allowed:
            raise RemoteProtocolError("key directory lists clients that are not this client's neighbours")
        own = entries.get(u)
        if own is None or (own.enc_public, own.mask_public) != (
            self._secrets.enc.public_bytes(),
            self._secrets.mask.public_bytes(),
        ):
            raise RemoteProtocolError("key directory does not relay this client's own keys unchanged")
        if len(entries) < cfg.threshold:
            raise AbortError(f"only {len(entries)} of this client's share holders advertised keys, need {cfg.threshold}")
        publics = [e.enc_public for e in entries.values()] + [e.mask_public for e in entries.values()]
        if len(set(publics)) != len(publics):
            raise RemoteProtocolError("key directory contains repeated public keys")
        if cfg.identity_keys is not None:
            for e in entries.values():
                verify(cfg.identity_keys[e.client_id], _advert_bytes(cfg, e.client_id, e.enc_public, e.mask_public),
                       e.signature)
        self._directory = entries
        holders = sorted(entries)
        self._secrets.self_seed = secrets.token_bytes(_SEED_BYTES)
        shares = split_many([self._secrets.mask.private_bytes(), self._secrets.self_seed], cfg.threshold, holders)
        ciphertexts = []
        for v in holders:
            key_share, seed_share = shares[v]
            if v == u:
                self._secrets.own_shares = (key_share, seed_share)
                continue
            key = self._secrets.enc.agree(entries[v].enc_public, info=_enc_info(cfg, u, v))
            self._secrets.enc_keys[v] = key  # the same key opens v's shares for us in the next phase
            plaintext = share_to_bytes(v, key_share) + share_to_bytes(v, seed_share)
            ciphertexts.append(
                (v, seal(key, plaintext, sender=u, receiver=v, round_id=cfg.round_id, purpose=_SHARE_PURPOSE))
            )
        return [EncryptedShares(cfg.round_id, u, tuple(ciphertexts))]

    def _on_shares(self, msg: ForwardedShares) -> list[ClientMessage]:
        u, cfg = self.client_id, self.config
        if self._input is None:
            raise LocalProtocolError("set_input() must be called before the masked-input phase")
        senders = [s for s, _ in msg.ciphertexts]
        if len(set(senders)) != len(senders):
            raise RemoteProtocolError("forwarded shares repeat a sender")
        if u in senders or not set(senders) <= set(self._directory):
            raise RemoteProtocolError("forwarded shares come from clients outside this client's key directory")
        if len(senders) + 1 < cfg.threshold:
            raise AbortError(f"only {len(senders) + 1} share holders completed key sharing, need {cfg.threshold}")
        for v, ciphertext in msg.ciphertexts:
            key = self._secrets.enc_keys[v]
            plaintext = open_sealed(key, ciphertext, sender=v, receiver=u, round_id=cfg.round_id, purpose=_SHARE_PURPOSE)
            if len(plaintext) != 2 * SHARE_BYTES:
                raise RemoteProtocolError(f"share plaintext from client {v} has the wrong length")
            (id_a, key_share), (id_b, seed_share) = (
                share_from_bytes(plaintext[:SHARE_BYTES]),
                share_from_bytes(plaintext[SHARE_BYTES:]),
            )
            if id_a != u or id_b != u:
                raise RemoteProtocolError(f"shares from client {v} are evaluated at the wrong point")
            self._secrets.received[v] = (key_share, seed_share)
        self._u2_view = tuple(sorted((*senders, u)))
        masked = self._input  # owned copy (set_input copied it); consumed here
        scratch = np.empty_like(masked)  # one buffer reused for every mask: no per-mask allocation
        masked += _self_mask(cfg, self._secrets.self_seed, u, scratch)
        for v in senders:
            seed = self._secrets.mask.agree(self._directory[v].mask_public, info=_pair_info(cfg, u, v))
            if u < v:
                masked += _pair_mask(cfg, seed, u, v, scratch)
            else:
                masked -= _pair_mask(cfg, seed, u, v, scratch)
        self._input = None
        self._secrets.enc_keys.clear()
        return [MaskedInput(cfg.round_id, u, _reduce(cfg, masked))]

    def _on_consistency(self, msg: ConsistencyRequest) -> list[ClientMessage]:
        self._check_survivors(msg.survivors, global_list=True)
        assert self._identity is not None  # guaranteed by __init__ in the active variant
        signature = self._identity.sign(_consistency_bytes(self.config, msg.survivors))
        self._signed_survivors = msg.survivors
        return [ConsistencySignature(self.config.round_id, self.client_id, signature)]

    def _check_survivors(self, survivors: tuple[int, ...], *, global_list: bool) -> None:
        cfg = self.config
        if self.client_id not in survivors:
            raise RemoteProtocolError("survivor list omits this client, which sent its masked input")
        if global_list and len(survivors) < cfg.threshold:
            raise AbortError(f"only {len(survivors)} survivors, need {cfg.threshold}")
        if survivors[0] < 1 or survivors[-1] > cfg.num_clients:
            raise RemoteProtocolError("survivor list names unknown clients")

    def _on_unmask(self, msg: UnmaskRequest) -> list[ClientMessage]:
        cfg, u = self.config, self.client_id
        view = set(self._u2_view)
        survivors = set(msg.survivors) & view
        dropped = set(msg.dropped)
        if cfg.active:
            if msg.survivors != self._signed_survivors:
                raise RemoteProtocolError("unmask request's survivor list differs from the one this client signed")
            self._check_signatures(msg)
        else:
            self._check_survivors(msg.survivors, global_list=False)
            if not set(msg.survivors) <= view:
                raise RemoteProtocolError("unmask request names survivors this client never shared with")
        if u in dropped:
            raise RemoteProtocolError("unmask request says this client dropped, but it is answering")
        if survivors & dropped:
            # The one request that would reveal both secrets of a client: refuse it (double-masking's point).
            raise RemoteProtocolError("unmask request lists a client as both survivor and dropped")
        if not dropped <= view:
            raise RemoteProtocolError("unmask request names dropped clients this client never shared with")
        if survivors | dropped != view:
            raise RemoteProtocolError("unmask request does not account for every client this client shared with")
        if len(survivors) < 1:
            raise RemoteProtocolError("unmask request lists no survivors")
        sec = self._secrets

        def share(owner: int, index: int) -> bytes:
            value = sec.own_shares[index] if owner == u else sec.received[owner][index]
            return share_to_bytes(u, value)

        return [
            UnmaskResponse(
                cfg.round_id,
                u,
                tuple((v, share(v, 1)) for v in sorted(survivors)),
                tuple((v, share(v, 0)) for v in sorted(dropped)),
            )
        ]

    def _check_signatures(self, msg: UnmaskRequest) -> None:
        cfg = self.config
        assert cfg.identity_keys is not None
        payload = _consistency_bytes(cfg, msg.survivors)
        signers = set()
        for signer, signature in msg.signatures:
            if signer not in msg.survivors:
                raise RemoteProtocolError(f"consistency signature from client {signer}, which is not a survivor")
            verify(cfg.identity_keys[signer], payload, signature)
            signers.add(signer)
        if len(signers) < cfg.threshold:
            raise AbortError(f"only {len(signers)} valid consistency signatures, need {cfg.threshold}")


# -- server -----------------------------------------------------------------------------------------------
class ServerPhase(enum.Enum):
    COLLECT_KEYS = "collect_keys"
    COLLECT_SHARES = "collect_shares"
    COLLECT_MASKED = "collect_masked"
    COLLECT_SIGNATURES = "collect_signatures"
    COLLECT_UNMASK = "collect_unmask"
    DONE = "done"
    ERROR = "error"


_SERVER_ACCEPTS: Final[dict[ServerPhase, type[Any]]] = {
    ServerPhase.COLLECT_KEYS: AdvertiseKeys,
    ServerPhase.COLLECT_SHARES: EncryptedShares,
    ServerPhase.COLLECT_MASKED: MaskedInput,
    ServerPhase.COLLECT_SIGNATURES: ConsistencySignature,
    ServerPhase.COLLECT_UNMASK: UnmaskResponse,
}


@dataclass(frozen=True)
class AggregationResult:
    """The revealed sum (mod 2^b) of the survivors' inputs and who took part."""

    vector: Vector
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    excluded: tuple[int, ...]
    bad_shares: tuple[int, ...]

    def __repr__(self) -> str:
        return (
            f"AggregationResult(length={self.vector.shape[0]}, survivors={len(self.survivors)}, "
            f"dropped={len(self.dropped)}, excluded={self.excluded}, bad_shares={self.bad_shares})"
        )


class ServerSession:
    """The server's side of one aggregation round. Holds no secret of any client."""

    def __init__(self, config: ProtocolConfig) -> None:
        self.config = config
        self.phase = ServerPhase.COLLECT_KEYS
        self.result: AggregationResult | None = None
        self.excluded: set[int] = set()
        self._keys: dict[int, AdvertiseKeys] = {}
        self._shares: dict[int, EncryptedShares] = {}
        self._masked_senders: dict[int, None] = {}  # arrival order, O(1) membership
        self._sum: Vector | None = None
        self._signatures: dict[int, bytes] = {}
        self._responses: dict[int, UnmaskResponse] = {}
        self.u1: tuple[int, ...] = ()
        self.u2: tuple[int, ...] = ()
        self.u3: tuple[int, ...] = ()
        self.u4: tuple[int, ...] = ()
        self._requests: dict[int, UnmaskRequest] = {}
        self._expected_phase: ServerPhase | None = None
        self._expected_members: frozenset[int] = frozenset()

    def __repr__(self) -> str:
        return f"ServerSession(round_id={self.config.round_id}, phase={self.phase.value})"

    @property
    def expected(self) -> tuple[int, ...]:
        """Clients whose message the current phase waits for (a phase may close once all arrived)."""
        return {
            ServerPhase.COLLECT_KEYS: tuple(self.config.client_ids),
            ServerPhase.COLLECT_SHARES: self.u1,
            ServerPhase.COLLECT_MASKED: self.u2,
            ServerPhase.COLLECT_SIGNATURES: self.u3,
            ServerPhase.COLLECT_UNMASK: self.u4 if self.config.active else self.u3,
        }.get(self.phase, ())

    @property
    def received(self) -> tuple[int, ...]:
        return tuple(sorted(self._store()))

    def _store(self) -> Mapping[int, object]:
        """The current phase's messages by sender (membership in O(1))."""
        stores: dict[ServerPhase, Mapping[int, object]] = {
            ServerPhase.COLLECT_KEYS: self._keys,
            ServerPhase.COLLECT_SHARES: self._shares,
            ServerPhase.COLLECT_MASKED: self._masked_senders,
            ServerPhase.COLLECT_SIGNATURES: self._signatures,
            ServerPhase.COLLECT_UNMASK: self._responses,
        }
        return stores.get(self.phase, {})

    def _expected_set(self) -> frozenset[int]:
        # built once per phase: checking every message against the tuple made a round O(n^2) in the clients
        if self._expected_phase is not self.phase:
            self._expected_phase, self._expected_members = self.phase, frozenset(self.expected)
        return self._expected_members

    @property
    def phase_complete(self) -> bool:
        """State-triggered: every expected client has answered (the caller need not wait longer)."""
        return set(self.received) >= set(self.expected) - self.excluded

    # ---- receiving
    def receive(self, message: ClientMessage) -> None:
        """Validate and store one client message. A bad message raises RemoteProtocolError and the
        sender is excluded from the rest of the round; the session itself stays usable."""
        if self.phase in (ServerPhase.DONE, ServerPhase.ERROR):
            raise ProtocolError(f"server session is in state {self.phase.value}")
        expected_type = _SERVER_ACCEPTS[self.phase]
        sender = getattr(message, "sender", None)
        if not isinstance(message, expected_type):
            raise RemoteProtocolError(
                f"unexpected {type(message).__name__} from client {sender} in phase {self.phase.value}"
            )
        if message.round_id != self.config.round_id:
            raise RemoteProtocolError(f"{type(message).__name__} from client {sender} is for another round")
        if sender in self.excluded:
            raise RemoteProtocolError(f"client {sender} was excluded from this round")
        if sender not in self._expected_set():
            raise RemoteProtocolError(f"client {sender} is not expected in phase {self.phase.value}")
        if sender in self._store():
            # A retransmission must not let one client abort everyone's round: the first message stands.
            raise RemoteProtocolError(f"client {sender} sent a second {type(message).__name__}; ignored")
        handler: Callable[[Any], None] = getattr(self, f"_take_{self.phase.value}")
        try:
            handler(message)
        except (RemoteProtocolError, CryptoError, EncodingError, ReconstructionError, ParameterError) as exc:
            raise self._exclude(sender, RemoteProtocolError(f"client {sender}: {exc}")) from None

    def _exclude(self, sender: int, exc: RemoteProtocolError) -> RemoteProtocolError:
        self.excluded.add(sender)
        return exc

    def _take_collect_keys(self, msg: AdvertiseKeys) -> None:
        if len(msg.enc_public) != 32 or len(msg.mask_public) != 32:
            raise RemoteProtocolError("public keys must be 32 bytes")
        if self.config.identity_keys is not None:
            verify(
                self.config.identity_keys[msg.sender],
                _advert_bytes(self.config, msg.sender, msg.enc_public, msg.mask_public),
                msg.signature,
            )
        self._keys[msg.sender] = msg

    def _take_collect_shares(self, msg: EncryptedShares) -> None:
        addressed = tuple(v for v, _ in msg.ciphertexts)
        u1 = self._expected_set()  # the clients that advertised keys
        expected = tuple(v for v in self.config.holders(msg.sender) if v in u1 and v != msg.sender)
        if addressed != expected:
            raise RemoteProtocolError("encrypted shares are not addressed to exactly its neighbours that advertised")
        self._shares[msg.sender] = msg

    def _take_collect_masked(self, msg: MaskedInput) -> None:
        vector = self.config.check_vector(msg.vector, "masked input")
        # Sum on arrival: the server never needs to keep n vectors, only the running sum (wrap-around
        # arithmetic of the unsigned dtype is exactly addition mod 2^b before the final reduction).
        if self._sum is None:
            self._sum = vector.copy()
        else:
            self._sum += vector
        self._masked_senders[msg.sender] = None

    def _take_collect_signatures(self, msg: ConsistencySignature) -> None:
        assert self.config.identity_keys is not None
        verify(self.config.identity_keys[msg.sender], _consistency_bytes(self.config, self.u3), msg.signature)
        self._signatures[msg.sender] = msg.signature

    def _take_collect_unmask(self, msg: UnmaskResponse) -> None:
        request = self._requests[msg.sender]
        view = set(self.config.holders(msg.sender))
        want_self = tuple(v for v in request.survivors if v in view)
        if tuple(v for v, _ in msg.self_mask_shares) != want_self:
            raise RemoteProtocolError("self-mask shares do not match the survivors it was asked about")
        if tuple(v for v, _ in msg.mask_key_shares) != request.dropped:
            raise RemoteProtocolError("mask-key shares do not match the dropped clients it was asked about")
        for _, data in (*msg.self_mask_shares, *msg.mask_key_shares):
            share_id, _value = share_from_bytes(data)
            if share_id != msg.sender:
                raise RemoteProtocolError("a share is not evaluated at the responder's own id")
        self._responses[msg.sender] = msg

    # ---- closing phases (validate everything, then commit)
    def close_phase(self) -> list[ServerMessage]:
        """End the current collection window; returns the messages for the next phase.

        Raises AbortError (and pins ERROR) when fewer than t clients remain for the round to complete.
        After the unmasking phase closes, :attr:`result` holds the sum.
        """
        if self.phase in (ServerPhase.DONE, ServerPhase.ERROR):
            raise ProtocolError(f"server session is in state {self.phase.value}")
        closer: Callable[[], tuple[list[ServerMessage], ServerPhase]] = getattr(self, f"_close_{self.phase.value}")
        try:
            out, next_phase = closer()
        except AbortError:
            self.phase = ServerPhase.ERROR
            self._sum = None
            raise
        self.phase = next_phase
        return out

    def _live(self, ids: Iterable[int]) -> tuple[int, ...]:
        return tuple(sorted(set(ids) - self.excluded))

    def _need(self, ids: tuple[int, ...], what: str) -> None:
        if len(ids) < self.config.threshold:
            raise AbortError(f"only {len(ids)} clients {what}, need at least {self.config.threshold}; round aborted")

    def _close_collect_keys(self) -> tuple[list[ServerMessage], ServerPhase]:
        u1 = self._live(self._keys)
        self._need(u1, "advertised keys")
        publics = [self._keys[u].enc_public for u in u1] + [self._keys[u].mask_public for u in u1]
        if len(set(publics)) != len(publics):
            raise AbortError("two clients advertised the same public key; round aborted")
        self.u1 = u1
        u1_set = set(u1)
        out: list[ServerMessage] = []
        for u in u1:
            entries = tuple(
                KeyEntry(v, self._keys[v].enc_public, self._keys[v].mask_public, self._keys[v].signature)
                for v in self.config.holders(u)
                if v in u1_set
            )
            out.append(KeyDirectory(self.config.round_id, u, entries))
        return out, ServerPhase.COLLECT_SHARES

    def _close_collect_shares(self) -> tuple[list[ServerMessage], ServerPhase]:
        u2 = self._live(self._shares)
        self._need(u2, "shared their keys")
        self.u2 = u2
        inbox: dict[int, list[tuple[int, bytes]]] = {v: [] for v in u2}
        for u in u2:
            for v, ciphertext in self._shares[u].ciphertexts:
                if v in inbox:
                    inbox[v].append((u, ciphertext))
        self._shares.clear()  # ciphertexts are forwarded; the server keeps nothing it does not need
        out: list[ServerMessage] = [
            ForwardedShares(self.config.round_id, v, tuple(sorted(inbox[v]))) for v in u2
        ]
        return out, ServerPhase.COLLECT_MASKED

    def _close_collect_masked(self) -> tuple[list[ServerMessage], ServerPhase]:
        u3 = self._live(self._masked_senders)
        self._need(u3, "sent masked inputs")
        if len(u3) != len(self._masked_senders):
            # an excluded client's vector is already in the running sum: the round cannot be unmasked
            raise AbortError("a client was excluded after its masked input was summed; round aborted")
        self.u3 = u3
        if self.config.active:
            return (
                [ConsistencyRequest(self.config.round_id, u, u3) for u in u3],
                ServerPhase.COLLECT_SIGNATURES,
            )
        return self._unmask_requests(u3, global_survivors=False), ServerPhase.COLLECT_UNMASK

    def _close_collect_signatures(self) -> tuple[list[ServerMessage], ServerPhase]:
        u4 = self._live(self._signatures)
        self._need(u4, "signed the survivor list")
        self.u4 = u4
        return self._unmask_requests(u4, global_survivors=True), ServerPhase.COLLECT_UNMASK

    def _unmask_requests(self, recipients: tuple[int, ...], *, global_survivors: bool) -> list[ServerMessage]:
        u2, u3 = set(self.u2), set(self.u3)
        signatures = tuple(sorted(self._signatures.items())) if global_survivors else ()
        out: list[ServerMessage] = []
        for u in recipients:
            view = [v for v in self.config.holders(u) if v in u2]
            survivors = self.u3 if global_survivors else tuple(v for v in view if v in u3)
            dropped = tuple(v for v in view if v not in u3)
            request = UnmaskRequest(self.config.round_id, u, survivors, dropped, signatures)
            self._requests[u] = request
            out.append(request)
        return out

    def _close_collect_unmask(self) -> tuple[list[ServerMessage], ServerPhase]:
        cfg = self.config
        responders = self._live(self._responses)
        self._need(responders, "answered the unmasking request")
        u3 = self.u3
        survived = set(u3)
        dropped = tuple(v for v in self.u2 if v not in survived)
        # Gather shares per owner: owner -> {holder id: value}
        self_shares: dict[int, dict[int, int]] = {u: {} for u in u3}
        key_shares: dict[int, dict[int, int]] = {v: {} for v in dropped}
        for r in responders:
            msg = self._responses[r]
            for owner, data in msg.self_mask_shares:
                self_shares[owner][r] = share_from_bytes(data)[1]
            for owner, data in msg.mask_key_shares:
                key_shares[owner][r] = share_from_bytes(data)[1]
        bad: set[int] = set()
        seeds = self._reconstruct_all(self_shares, "self-mask seed", bad)
        mask_keys = self._reconstruct_all(key_shares, "mask key", bad)
        # Check every reconstructed mask key against the public key it advertised: a wrong key would
        # otherwise silently corrupt the sum.
        key_pairs: dict[int, KeyPair] = {}
        for v, private in mask_keys.items():
            try:
                key_pairs[v] = KeyPair.from_private_bytes(private)
            except (ParameterError, CryptoError, EncodingError, ValueError):
                raise AbortError(f"reconstructed mask key of client {v} is malformed") from None
            if key_pairs[v].public_bytes() != self._keys[v].mask_public:
                raise AbortError(f"reconstructed mask key of client {v} does not match its public key")
        assert self._sum is not None
        total = self._sum.copy()
        scratch = np.empty_like(total)
        for u, seed in seeds.items():
            total -= _self_mask(cfg, seed, u, scratch)
        u3_set = set(u3)
        for v, key_pair in key_pairs.items():
            for u in cfg.graph.of(v):
                if u not in u3_set:
                    continue  # u never masked with v (it dropped too, or never shared keys)
                seed = key_pair.agree(self._keys[u].mask_public, info=_pair_info(cfg, u, v))
                # u added +mask if u < v and -mask if u > v; undo what u did
                if u < v:
                    total -= _pair_mask(cfg, seed, u, v, scratch)
                else:
                    total += _pair_mask(cfg, seed, u, v, scratch)
        self.result = AggregationResult(
            _reduce(cfg, total), u3, dropped, tuple(sorted(self.excluded)), tuple(sorted(bad))
        )
        self._sum = None
        return [], ServerPhase.DONE

    def _reconstruct_all(self, shares: dict[int, dict[int, int]], what: str, bad: set[int]) -> dict[int, bytes]:
        """Reconstruct each owner's secret, batching owners whose shares come from the same holders so
        the Lagrange coefficients are computed once per holder set (one set for plain SecAgg)."""
        t = self.config.threshold
        groups: dict[tuple[int, ...], list[int]] = {}
        for owner, held in shares.items():
            if len(held) < t:
                raise AbortError(f"only {len(held)} shares of client {owner}'s {what}, need {t}; round aborted")
            groups.setdefault(tuple(sorted(held)), []).append(owner)
        out: dict[int, bytes] = {}
        for holders, owners in groups.items():
            batch = {h: [shares[o][h] for o in owners] for h in holders}
            try:
                decoded = reconstruct_many_robust(batch, t)
            except ReconstructionError:
                raise AbortError(f"shares of some client's {what} are inconsistent beyond correction") from None
            for owner, (secret, wrong) in zip(owners, decoded, strict=True):
                bad.update(wrong)
                if len(secret) != _SEED_BYTES:
                    raise AbortError(f"reconstructed {what} of client {owner} has the wrong length")
                out[owner] = secret
        return out
