"""Protocol messages of SecAgg / SecAgg+ as frozen dataclasses, and their strict byte encoding.

Every message names the round it belongs to and the client it comes from (``sender``) or goes to
(``receiver``); client ids are 1..n. The wire format is versioned and length-checked::

    magic b"FSA" | version u8 | type u8 | fields in the message's fixed order

with integers big-endian (ids u32, round u64), byte strings and lists length-prefixed (u32), and vectors as
``dtype u8 | length u64 | little-endian data``. Decoding rejects an unknown version or type, a wrong length,
trailing bytes, unsorted/duplicate ids and out-of-range values with :class:`WireError` — never with a message
that quotes key material.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeAlias

import numpy as np
import numpy.typing as npt

from secagg.errors import EncodingError

MAGIC = b"FSA"
VERSION = 1
MAX_ID = 2**32 - 1
MAX_ITEMS = 1 << 24
MAX_BYTES = 1 << 16  # no single key, share ciphertext or signature is anywhere near 64 KiB
MAX_VECTOR = 1 << 31

Uint = np.uint32 | np.uint64
Vector: TypeAlias = npt.NDArray[Any]


class WireError(EncodingError):
    """Bytes that are not a valid encoding of a protocol message."""


def _short(data: bytes) -> str:
    return f"<{len(data)} bytes>"


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One client's public keys as the server relays them (``signature`` empty without identities)."""

    client_id: int
    enc_public: bytes
    mask_public: bytes
    signature: bytes = b""

    def __repr__(self) -> str:
        return f"KeyEntry(client_id={self.client_id}, enc_public={_short(self.enc_public)}, ...)"


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    """Round 0, client → server: two X25519 public keys (share encryption, pairwise masking)."""

    TYPE: ClassVar[int] = 1
    round_id: int
    sender: int
    enc_public: bytes
    mask_public: bytes
    signature: bytes = b""

    def __repr__(self) -> str:
        return f"AdvertiseKeys(round_id={self.round_id}, sender={self.sender})"


@dataclass(frozen=True, slots=True)
class KeyDirectory:
    """Round 0 → 1, server → client: the public keys of the receiver's neighbours that advertised."""

    TYPE: ClassVar[int] = 2
    round_id: int
    receiver: int
    entries: tuple[KeyEntry, ...]

    def __repr__(self) -> str:
        return f"KeyDirectory(round_id={self.round_id}, receiver={self.receiver}, n={len(self.entries)})"


@dataclass(frozen=True, slots=True)
class EncryptedShares:
    """Round 1, client → server: for each neighbour, the AEAD ciphertext of the sender's two shares."""

    TYPE: ClassVar[int] = 3
    round_id: int
    sender: int
    ciphertexts: tuple[tuple[int, bytes], ...]  # (receiver, ciphertext), sorted by receiver

    def __repr__(self) -> str:
        return f"EncryptedShares(round_id={self.round_id}, sender={self.sender}, n={len(self.ciphertexts)})"


@dataclass(frozen=True, slots=True)
class ForwardedShares:
    """Round 1 → 2, server → client: the ciphertexts addressed to the receiver (sorted by sender)."""

    TYPE: ClassVar[int] = 4
    round_id: int
    receiver: int
    ciphertexts: tuple[tuple[int, bytes], ...]  # (sender, ciphertext)

    def __repr__(self) -> str:
        return f"ForwardedShares(round_id={self.round_id}, receiver={self.receiver}, n={len(self.ciphertexts)})"


@dataclass(frozen=True, slots=True, eq=False)
class MaskedInput:
    """Round 2, client → server: the client's encoded input plus its self-mask and pairwise masks."""

    TYPE: ClassVar[int] = 5
    round_id: int
    sender: int
    vector: Vector

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, MaskedInput)
            and (self.round_id, self.sender) == (other.round_id, other.sender)
            and self.vector.dtype == other.vector.dtype
            and np.array_equal(self.vector, other.vector)
        )

    def __hash__(self) -> int:
        return hash((self.round_id, self.sender, self.vector.shape))

    def __repr__(self) -> str:
        return f"MaskedInput(round_id={self.round_id}, sender={self.sender}, length={self.vector.shape[0]})"


@dataclass(frozen=True, slots=True)
class ConsistencyRequest:
    """Round 3 (active-adversary variant), server → client: the survivor set U3 each client must sign."""

    TYPE: ClassVar[int] = 6
    round_id: int
    receiver: int
    survivors: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ConsistencySignature:
    """Round 3, client → server: the sender's Ed25519 signature over (round, U3)."""

    TYPE: ClassVar[int] = 7
    round_id: int
    sender: int
    signature: bytes

    def __repr__(self) -> str:
        return f"ConsistencySignature(round_id={self.round_id}, sender={self.sender})"


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Round 4, server → client: who survived (reveal self-mask shares) and who dropped (reveal mask-key
    shares), restricted to the receiver's neighbours, plus the round-3 signatures in the active variant."""

    TYPE: ClassVar[int] = 8
    round_id: int
    receiver: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...] = ()

    def __repr__(self) -> str:
        return (
            f"UnmaskRequest(round_id={self.round_id}, receiver={self.receiver}, "
            f"survivors={len(self.survivors)}, dropped={len(self.dropped)})"
        )


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    """Round 4, client → server: Shamir shares of survivors' self-mask seeds and dropped clients' mask keys."""

    TYPE: ClassVar[int] = 9
    round_id: int
    sender: int
    self_mask_shares: tuple[tuple[int, bytes], ...]  # (owner, share bytes)
    mask_key_shares: tuple[tuple[int, bytes], ...]

    def __repr__(self) -> str:
        return (
            f"UnmaskResponse(round_id={self.round_id}, sender={self.sender}, "
            f"self_mask_shares={len(self.self_mask_shares)}, mask_key_shares={len(self.mask_key_shares)})"
        )


Message: TypeAlias = (
    AdvertiseKeys
    | KeyDirectory
    | EncryptedShares
    | ForwardedShares
    | MaskedInput
    | ConsistencyRequest
    | ConsistencySignature
    | UnmaskRequest
    | UnmaskResponse
)
#: What a server sends to one client (each has a ``receiver``).
ServerMessage: TypeAlias = KeyDirectory | ForwardedShares | ConsistencyRequest | UnmaskRequest
#: What a client sends to the server (each has a ``sender``).
ClientMessage: TypeAlias = AdvertiseKeys | EncryptedShares | MaskedInput | ConsistencySignature | UnmaskResponse
MESSAGE_TYPES: tuple[type[Any], ...] = (
    AdvertiseKeys,
    KeyDirectory,
    EncryptedShares,
    ForwardedShares,
    MaskedInput,
    ConsistencyRequest,
    ConsistencySignature,
    UnmaskRequest,
    UnmaskResponse,
)
_BY_TYPE: dict[int, type[Any]] = {cls.TYPE: cls for cls in MESSAGE_TYPES}

# -- encoding ---------------------------------------------------------------------------------------
_VECTOR_DTYPES: dict[int, np.dtype[Any]] = {4: np.dtype("<u4"), 8: np.dtype("<u8")}


class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u32(self, v: int, what: str) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_ID:
            raise WireError(f"{what} must be an integer in [0, 2^32), got {type(v).__name__}")
        self.parts.append(struct.pack(">I", v))

    def u64(self, v: int, what: str) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**64:
            raise WireError(f"{what} must be an integer in [0, 2^64)")
        self.parts.append(struct.pack(">Q", v))

    def blob(self, v: bytes, what: str) -> None:
        if not isinstance(v, bytes):
            raise WireError(f"{what} must be bytes, got {type(v).__name__}")
        if len(v) > MAX_BYTES:
            raise WireError(f"{what} is {len(v)} bytes, more than the limit {MAX_BYTES}")
        self.u32(len(v), what)
        self.parts.append(v)

    # Lists: each element is type-checked (u32/blob) before the ordering check compares ids.
    def ids(self, v: tuple[int, ...], what: str) -> None:
        self.u32(len(v), what)
        for i in v:
            self.u32(i, what)
        _check_sorted_unique(list(v), what)

    def pairs(self, v: tuple[tuple[int, bytes], ...], what: str) -> None:
        self.u32(len(v), what)
        for pair in v:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise WireError(f"{what} must hold (id, bytes) pairs")
            self.u32(pair[0], what)
            self.blob(pair[1], what)
        _check_sorted_unique([p[0] for p in v], what)

    def entries(self, v: tuple[KeyEntry, ...], what: str) -> None:
        self.u32(len(v), what)
        for e in v:
            if not isinstance(e, KeyEntry):
                raise WireError(f"{what} must hold KeyEntry items")
            self.u32(e.client_id, what)
            self.blob(e.enc_public, what)
            self.blob(e.mask_public, what)
            self.blob(e.signature, what)
        _check_sorted_unique([e.client_id for e in v], what)

    def vector(self, v: Vector, what: str) -> None:
        if not isinstance(v, np.ndarray) or v.ndim != 1 or v.dtype not in (np.uint32, np.uint64):
            raise WireError(f"{what} must be a 1-D uint32 or uint64 array")
        self.parts.append(struct.pack(">BQ", v.dtype.itemsize, v.shape[0]))
        self.parts.append(v.astype(v.dtype.newbyteorder("<"), copy=False).tobytes())


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.view):
            raise WireError(f"truncated message: {what} needs {n} bytes, {len(self.view) - self.pos} left")
        out = self.view[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        return int(struct.unpack(">I", self.take(4, what))[0])

    def u64(self, what: str) -> int:
        return int(struct.unpack(">Q", self.take(8, what))[0])

    def count(self, what: str) -> int:
        n = self.u32(what)
        if n > MAX_ITEMS:
            raise WireError(f"{what}: {n} items exceeds the limit {MAX_ITEMS}")
        return n

    def blob(self, what: str) -> bytes:
        n = self.u32(what)
        if n > MAX_BYTES:
            raise WireError(f"{what}: length {n} exceeds the limit {MAX_BYTES}")
        return bytes(self.take(n, what))

    def ids(self, what: str) -> tuple[int, ...]:
        out = tuple(self.u32(what) for _ in range(self.count(what)))
        _check_sorted_unique(list(out), what)
        return out

    def pairs(self, what: str) -> tuple[tuple[int, bytes], ...]:
        out = tuple((self.u32(what), self.blob(what)) for _ in range(self.count(what)))
        _check_sorted_unique([p[0] for p in out], what)
        return out

    def entries(self, what: str) -> tuple[KeyEntry, ...]:
        out = tuple(
            KeyEntry(self.u32(what), self.blob(what), self.blob(what), self.blob(what)) for _ in range(self.count(what))
        )
        _check_sorted_unique([e.client_id for e in out], what)
        return out

    def vector(self, what: str) -> Vector:
        itemsize = int(self.take(1, what)[0])
        dtype = _VECTOR_DTYPES.get(itemsize)
        if dtype is None:
            raise WireError(f"{what}: unknown element size {itemsize} (allowed: 4, 8)")
        length = self.u64(what)
        if length > MAX_VECTOR:
            raise WireError(f"{what}: length {length} exceeds the limit {MAX_VECTOR}")
        raw = self.take(length * itemsize, what)
        return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True)


def _check_sorted_unique(ids: list[int], what: str) -> None:
    for a, b in zip(ids, ids[1:], strict=False):
        if a == b:
            raise WireError(f"{what}: duplicate id {a}")
        if a > b:
            raise WireError(f"{what}: ids must be sorted ascending ({a} before {b})")


# field name -> (writer method, reader method); the field order of each dataclass is the wire order
_CODECS: dict[str, tuple[Callable[[_Writer, Any, str], None], Callable[[_Reader, str], Any]]] = {
    "round_id": (_Writer.u64, _Reader.u64),
    "sender": (_Writer.u32, _Reader.u32),
    "receiver": (_Writer.u32, _Reader.u32),
    "enc_public": (_Writer.blob, _Reader.blob),
    "mask_public": (_Writer.blob, _Reader.blob),
    "signature": (_Writer.blob, _Reader.blob),
    "entries": (_Writer.entries, _Reader.entries),
    "ciphertexts": (_Writer.pairs, _Reader.pairs),
    "vector": (_Writer.vector, _Reader.vector),
    "survivors": (_Writer.ids, _Reader.ids),
    "dropped": (_Writer.ids, _Reader.ids),
    "signatures": (_Writer.pairs, _Reader.pairs),
    "self_mask_shares": (_Writer.pairs, _Reader.pairs),
    "mask_key_shares": (_Writer.pairs, _Reader.pairs),
}


def encode(message: Message) -> bytes:
    """The versioned wire bytes of ``message``."""
    cls = type(message)
    if cls not in _BY_TYPE.values():
        raise WireError(f"not a protocol message: {cls.__name__}")
    w = _Writer()
    w.parts.append(MAGIC + bytes([VERSION, cls.TYPE]))
    for f in fields(cls):
        _CODECS[f.name][0](w, getattr(message, f.name), f"{cls.__name__}.{f.name}")
    return b"".join(w.parts)


def decode(data: bytes) -> Message:
    """Parse wire bytes into a message; anything malformed raises :class:`WireError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    r = _Reader(bytes(data))
    header = bytes(r.take(5, "header"))
    if header[:3] != MAGIC:
        raise WireError("not a fedshield secagg message (bad magic)")
    if header[3] != VERSION:
        raise WireError(f"unsupported protocol version {header[3]} (this side speaks {VERSION})")
    cls = _BY_TYPE.get(header[4])
    if cls is None:
        raise WireError(f"unknown message type {header[4]}")
    values = {f.name: _CODECS[f.name][1](r, f"{cls.__name__}.{f.name}") for f in fields(cls)}
    if r.pos != len(r.view):
        raise WireError(f"{len(r.view) - r.pos} trailing bytes after {cls.__name__}")
    message: Message = cls(**values)
    return message
