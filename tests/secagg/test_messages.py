"""Tests of :mod:`secagg.messages`: round trips, frozen known-answer bytes, every rejection path, fuzzing
and key-free reprs."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from secagg.errors import EncodingError
from secagg.messages import (
    MAGIC,
    MAX_BYTES,
    MAX_ID,
    MAX_ITEMS,
    MAX_VECTOR,
    MESSAGE_TYPES,
    VERSION,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShares,
    ForwardedShares,
    KeyDirectory,
    KeyEntry,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
    WireError,
    decode,
    encode,
)

MAX_ROUND = 2**64 - 1


def bad(value: object) -> Any:
    """An ill-typed value on purpose (keeps mypy quiet where a test feeds the codec garbage)."""
    return value


# -- hand-written wire helpers (independent of the codec under test) ------------------------------------
def u8(v: int) -> bytes:
    return struct.pack(">B", v)


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def u64(v: int) -> bytes:
    return struct.pack(">Q", v)


def blob(b: bytes) -> bytes:
    return u32(len(b)) + b


def header(type_: int, version: int = 1, magic: bytes = b"FSA") -> bytes:
    return magic + u8(version) + u8(type_)


def id_list(ids: list[int]) -> bytes:
    return u32(len(ids)) + b"".join(u32(i) for i in ids)


def pair_list(pairs: list[tuple[int, bytes]]) -> bytes:
    return u32(len(pairs)) + b"".join(u32(i) + blob(b) for i, b in pairs)


# -- known-answer vectors: bytes written out by hand from the documented layout -------------------------
# magic "FSA" = 46 53 41 | version 01 | type | fields (ids u32 BE, round u64 BE, u32 length prefixes,
# vectors as itemsize u8 | length u64 BE | little-endian data)
KAT: list[tuple[str, Any, str]] = [
    (
        "AdvertiseKeys",
        AdvertiseKeys(round_id=7, sender=3, enc_public=b"\x01\x02", mask_public=b"\xaa", signature=b""),
        "465341 01 01  0000000000000007  00000003  00000002 0102  00000001 aa  00000000",
    ),
    (
        "KeyDirectory",
        KeyDirectory(
            round_id=1,
            receiver=2,
            entries=(KeyEntry(1, b"\x10", b"\x20\x21", b""), KeyEntry(5, b"", b"", b"\x5a")),
        ),
        "465341 01 02  0000000000000001  00000002  00000002"
        "  00000001 00000001 10 00000002 2021 00000000"
        "  00000005 00000000 00000000 00000001 5a",
    ),
    (
        "EncryptedShares",
        EncryptedShares(round_id=MAX_ROUND, sender=MAX_ID, ciphertexts=((1, b"\xc0"), (9, b""))),
        "465341 01 03  ffffffffffffffff  ffffffff  00000002  00000001 00000001 c0  00000009 00000000",
    ),
    (
        "ForwardedShares",
        ForwardedShares(round_id=0x0102030405060708, receiver=0, ciphertexts=((2, b"ab"),)),
        "465341 01 04  0102030405060708  00000000  00000001  00000002 00000002 6162",
    ),
    (
        "MaskedInput-u32",
        MaskedInput(round_id=3, sender=1, vector=np.array([1, 0x01020304], dtype=np.uint32)),
        "465341 01 05  0000000000000003  00000001  04 0000000000000002 01000000 04030201",
    ),
    (
        "MaskedInput-u64",
        MaskedInput(round_id=3, sender=2, vector=np.array([0x0102030405060708], dtype=np.uint64)),
        "465341 01 05  0000000000000003  00000002  08 0000000000000001 0807060504030201",
    ),
    (
        "MaskedInput-empty",
        MaskedInput(round_id=0, sender=4, vector=np.array([], dtype=np.uint32)),
        "465341 01 05  0000000000000000  00000004  04 0000000000000000",
    ),
    (
        "ConsistencyRequest",
        ConsistencyRequest(round_id=5, receiver=6, survivors=(1, 2, 300)),
        "465341 01 06  0000000000000005  00000006  00000003 00000001 00000002 0000012c",
    ),
    (
        "ConsistencySignature",
        ConsistencySignature(round_id=5, sender=2, signature=b"\xde\xad"),
        "465341 01 07  0000000000000005  00000002  00000002 dead",
    ),
    (
        "UnmaskRequest",
        UnmaskRequest(round_id=8, receiver=1, survivors=(2, 3), dropped=(4,), signatures=((2, b"\x01"),)),
        "465341 01 08  0000000000000008  00000001  00000002 00000002 00000003  00000001 00000004"
        "  00000001 00000002 00000001 01",
    ),
    (
        "UnmaskResponse",
        UnmaskResponse(round_id=8, sender=3, self_mask_shares=((2, b"\x11\x22"),), mask_key_shares=()),
        "465341 01 09  0000000000000008  00000003  00000001 00000002 00000002 1122  00000000",
    ),
]
KAT_IDS = [name for name, _, _ in KAT]
KAT_BYTES = [bytes.fromhex(h) for _, _, h in KAT]


def test_kat_covers_every_message_type() -> None:
    assert {type(m) for _, m, _ in KAT} == set(MESSAGE_TYPES)
    assert MAGIC == b"FSA" and VERSION == 1
    assert sorted(cls.TYPE for cls in MESSAGE_TYPES) == list(range(1, 10))


@pytest.mark.parametrize(("name", "message", "hexstr"), KAT, ids=KAT_IDS)
def test_known_answer_encode(name: str, message: Any, hexstr: str) -> None:
    assert encode(message).hex() == bytes.fromhex(hexstr).hex()


@pytest.mark.parametrize(("name", "message", "hexstr"), KAT, ids=KAT_IDS)
def test_known_answer_decode(name: str, message: Any, hexstr: str) -> None:
    decoded = decode(bytes.fromhex(hexstr))
    assert type(decoded) is type(message)
    assert decoded == message


def test_known_answer_advertise_default_signature_is_encoded_empty() -> None:
    m = AdvertiseKeys(round_id=1, sender=1, enc_public=b"", mask_public=b"")
    assert encode(m) == header(1) + u64(1) + u32(1) + blob(b"") + blob(b"") + blob(b"")


# -- hypothesis strategies for valid messages -----------------------------------------------------------
rounds = st.integers(0, MAX_ROUND)
client_ids = st.integers(0, MAX_ID)
blobs = st.binary(max_size=300)
sorted_ids = st.lists(client_ids, unique=True, max_size=8).map(lambda xs: tuple(sorted(xs)))
pairs = st.lists(st.tuples(client_ids, blobs), unique_by=lambda p: p[0], max_size=6).map(
    lambda xs: tuple(sorted(xs, key=lambda p: p[0]))
)
key_entries = st.lists(
    st.builds(KeyEntry, client_ids, blobs, blobs, st.binary(max_size=100)),
    unique_by=lambda e: e.client_id,
    max_size=5,
).map(lambda xs: tuple(sorted(xs, key=lambda e: e.client_id)))
vectors = st.sampled_from([np.uint32, np.uint64]).flatmap(
    lambda dt: hnp.arrays(
        dt, st.integers(0, 64), elements=st.integers(0, 2 ** (8 * np.dtype(dt).itemsize) - 1)
    )
)

messages = st.one_of(
    st.builds(AdvertiseKeys, rounds, client_ids, blobs, blobs, blobs),
    st.builds(KeyDirectory, rounds, client_ids, key_entries),
    st.builds(EncryptedShares, rounds, client_ids, pairs),
    st.builds(ForwardedShares, rounds, client_ids, pairs),
    st.builds(MaskedInput, rounds, client_ids, vectors),
    st.builds(ConsistencyRequest, rounds, client_ids, sorted_ids),
    st.builds(ConsistencySignature, rounds, client_ids, blobs),
    st.builds(UnmaskRequest, rounds, client_ids, sorted_ids, sorted_ids, pairs),
    st.builds(UnmaskResponse, rounds, client_ids, pairs, pairs),
)


# -- 1. round trips -------------------------------------------------------------------------------------
@settings(max_examples=300)
@given(messages)
def test_round_trip(message: Any) -> None:
    data = encode(message)
    assert isinstance(data, bytes)
    assert data[:5] == MAGIC + bytes([VERSION, type(message).TYPE])
    decoded = decode(data)
    assert type(decoded) is type(message)
    assert decoded == message
    assert encode(decoded) == data
    # bytearray and memoryview inputs decode to the same message
    assert decode(bad(bytearray(data))) == message
    assert decode(bad(memoryview(data))) == message


@given(rounds, client_ids, vectors)
def test_decoded_vector_is_native_writable_and_owned(round_id: int, sender: int, vector: Any) -> None:
    data = bytearray(encode(MaskedInput(round_id, sender, vector)))
    decoded = decode(bad(data))
    assert isinstance(decoded, MaskedInput)
    v = decoded.vector
    assert v.dtype == vector.dtype and v.dtype.isnative
    assert v.ndim == 1 and v.shape == vector.shape
    assert v.flags.writeable
    assert v.flags.owndata and v.base is None
    np.testing.assert_array_equal(v, vector)
    # not a view of the input buffer: scribbling over it leaves the vector unchanged
    data[:] = b"\xff" * len(data)
    np.testing.assert_array_equal(v, vector)
    if v.size:
        v[0] ^= 1  # writable in place
        assert v[0] != vector[0]


def test_masked_input_equality_checks_dtype_and_values() -> None:
    a = MaskedInput(1, 2, np.array([1, 2], dtype=np.uint32))
    assert a == MaskedInput(1, 2, np.array([1, 2], dtype=np.uint32))
    assert a != MaskedInput(1, 2, np.array([1, 2], dtype=np.uint64))
    assert a != MaskedInput(1, 2, np.array([1, 3], dtype=np.uint32))
    assert a != MaskedInput(1, 3, np.array([1, 2], dtype=np.uint32))
    assert decode(encode(a)) != MaskedInput(1, 2, np.array([1, 2], dtype=np.uint64))


def test_strided_vector_encodes_its_logical_elements() -> None:
    base = np.arange(10, dtype=np.uint64)
    strided = base[::3]
    assert not strided.flags.c_contiguous
    assert encode(MaskedInput(1, 1, strided)) == encode(MaskedInput(1, 1, strided.copy()))
    assert decode(encode(MaskedInput(1, 1, strided))) == MaskedInput(1, 1, np.array([0, 3, 6, 9], np.uint64))


def test_limits_are_inclusive() -> None:
    big = b"\x5a" * MAX_BYTES
    m = ConsistencySignature(round_id=MAX_ROUND, sender=MAX_ID, signature=big)
    assert decode(encode(m)) == m
    # MAX_ITEMS / MAX_VECTOR themselves pass the count checks (and only then fail for lack of data)
    with pytest.raises(WireError, match="truncated"):
        decode(header(6) + u64(1) + u32(1) + u32(MAX_ITEMS))
    with pytest.raises(WireError, match="truncated"):
        decode(header(5) + u64(1) + u32(1) + u8(8) + u64(MAX_VECTOR))


# -- 3. rejection paths ---------------------------------------------------------------------------------
def test_wire_error_is_an_encoding_value_error() -> None:
    assert issubclass(WireError, EncodingError)
    assert issubclass(WireError, ValueError)


VALID = KAT_BYTES[KAT_IDS.index("ConsistencyRequest")]


@pytest.mark.parametrize("magic", [b"FSB", b"fsa", b"\x00\x00\x00", b"ASF"])
def test_bad_magic(magic: bytes) -> None:
    with pytest.raises(WireError, match="bad magic"):
        decode(magic + VALID[3:])


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unsupported_version(version: int) -> None:
    with pytest.raises(WireError, match=f"unsupported protocol version {version}"):
        decode(VALID[:3] + u8(version) + VALID[4:])


@pytest.mark.parametrize("type_", [0, 10, 11, 128, 255])
def test_unknown_type(type_: int) -> None:
    with pytest.raises(WireError, match=f"unknown message type {type_}"):
        decode(VALID[:4] + u8(type_) + VALID[5:])


TRUNCATIONS = [
    (name, data[:cut]) for name, data in zip(KAT_IDS, KAT_BYTES, strict=True) for cut in range(len(data))
]


@pytest.mark.parametrize(("name", "prefix"), TRUNCATIONS, ids=[f"{n}-{len(p)}" for n, p in TRUNCATIONS])
def test_truncation_at_every_cut(name: str, prefix: bytes) -> None:
    with pytest.raises(WireError, match="truncated message"):
        decode(prefix)


@pytest.mark.parametrize("data", KAT_BYTES, ids=KAT_IDS)
@pytest.mark.parametrize("extra", [b"\x00", b"\x01\x02\x03", b"FSA\x01\x06"])
def test_trailing_bytes(data: bytes, extra: bytes) -> None:
    with pytest.raises(WireError, match=f"{len(extra)} trailing bytes after"):
        decode(data + extra)


def _id_list_message(field: str, ids: list[int]) -> bytes:
    if field == "ConsistencyRequest.survivors":
        return header(6) + u64(1) + u32(1) + id_list(ids)
    if field == "UnmaskRequest.survivors":
        return header(8) + u64(1) + u32(1) + id_list(ids) + id_list([]) + pair_list([])
    assert field == "UnmaskRequest.dropped"
    return header(8) + u64(1) + u32(1) + id_list([]) + id_list(ids) + pair_list([])


def _pair_list_message(field: str, ids: list[int]) -> bytes:
    ps = pair_list([(i, b"\xc1" * 3) for i in ids])
    return {
        "EncryptedShares.ciphertexts": header(3) + u64(1) + u32(1) + ps,
        "ForwardedShares.ciphertexts": header(4) + u64(1) + u32(1) + ps,
        "UnmaskRequest.signatures": header(8) + u64(1) + u32(1) + id_list([]) + id_list([]) + ps,
        "UnmaskResponse.self_mask_shares": header(9) + u64(1) + u32(1) + ps + pair_list([]),
        "UnmaskResponse.mask_key_shares": header(9) + u64(1) + u32(1) + pair_list([]) + ps,
    }[field]


def _entries_message(ids: list[int]) -> bytes:
    body = b"".join(u32(i) + blob(b"\x01" * 4) + blob(b"\x02" * 4) + blob(b"") for i in ids)
    return header(2) + u64(1) + u32(1) + u32(len(ids)) + body


ID_FIELDS = ["ConsistencyRequest.survivors", "UnmaskRequest.survivors", "UnmaskRequest.dropped"]
PAIR_FIELDS = [
    "EncryptedShares.ciphertexts",
    "ForwardedShares.ciphertexts",
    "UnmaskRequest.signatures",
    "UnmaskResponse.self_mask_shares",
    "UnmaskResponse.mask_key_shares",
]


@pytest.mark.parametrize("field", ID_FIELDS)
def test_id_lists_sorted_unique(field: str) -> None:
    assert decode(_id_list_message(field, [1, 2, 7]))  # the well-formed control decodes
    with pytest.raises(WireError, match=rf"{field}: ids must be sorted ascending \(2 before 1\)"):
        decode(_id_list_message(field, [2, 1]))
    with pytest.raises(WireError, match=rf"{field}: ids must be sorted ascending \(9 before 3\)"):
        decode(_id_list_message(field, [1, 9, 3]))
    with pytest.raises(WireError, match=rf"{field}: duplicate id 4"):
        decode(_id_list_message(field, [1, 4, 4]))


@pytest.mark.parametrize("field", PAIR_FIELDS)
def test_pair_lists_sorted_unique(field: str) -> None:
    assert decode(_pair_list_message(field, [1, 2, 7]))
    with pytest.raises(WireError, match=rf"{field}: ids must be sorted ascending \(5 before 3\)"):
        decode(_pair_list_message(field, [5, 3]))
    with pytest.raises(WireError, match=rf"{field}: duplicate id 6"):
        decode(_pair_list_message(field, [6, 6]))


def test_key_directory_entries_sorted_unique() -> None:
    assert decode(_entries_message([1, 2]))
    with pytest.raises(WireError, match=r"KeyDirectory.entries: ids must be sorted ascending \(3 before 2\)"):
        decode(_entries_message([3, 2]))
    with pytest.raises(WireError, match=r"KeyDirectory.entries: duplicate id 8"):
        decode(_entries_message([1, 8, 8]))


@pytest.mark.parametrize(
    "field",
    ["enc_public", "mask_public", "signature"],
)
def test_blob_longer_than_max_bytes(field: str) -> None:
    fields = {"enc_public": blob(b""), "mask_public": blob(b""), "signature": blob(b"")}
    fields[field] = u32(MAX_BYTES + 1) + b"\x00" * (MAX_BYTES + 1)
    data = header(1) + u64(1) + u32(1) + fields["enc_public"] + fields["mask_public"] + fields["signature"]
    with pytest.raises(WireError, match=rf"AdvertiseKeys.{field}: length {MAX_BYTES + 1} exceeds the limit"):
        decode(data)


def test_blob_length_prefix_huge_is_rejected_before_reading() -> None:
    with pytest.raises(
        WireError, match="ConsistencySignature.signature: length 4294967295 exceeds the limit"
    ):
        decode(header(7) + u64(1) + u32(1) + u32(0xFFFFFFFF))
    with pytest.raises(WireError, match="EncryptedShares.ciphertexts: length 65537 exceeds the limit"):
        decode(header(3) + u64(1) + u32(1) + u32(1) + u32(2) + u32(MAX_BYTES + 1))


@pytest.mark.parametrize(
    ("prefix", "what"),
    [
        (header(6) + u64(1) + u32(1), "ConsistencyRequest.survivors"),
        (header(3) + u64(1) + u32(1), "EncryptedShares.ciphertexts"),
        (header(2) + u64(1) + u32(1), "KeyDirectory.entries"),
        (header(8) + u64(1) + u32(1) + id_list([]), "UnmaskRequest.dropped"),
        (header(9) + u64(1) + u32(1) + pair_list([]), "UnmaskResponse.mask_key_shares"),
    ],
)
@pytest.mark.parametrize("count", [MAX_ITEMS + 1, 0xFFFFFFFF])
def test_item_count_above_max_items(prefix: bytes, what: str, count: int) -> None:
    with pytest.raises(WireError, match=rf"{what}: {count} items exceeds the limit {MAX_ITEMS}"):
        decode(prefix + u32(count))


MASKED_PREFIX = header(5) + u64(1) + u32(1)


@pytest.mark.parametrize("itemsize", [0, 1, 2, 3, 5, 7, 16, 255])
def test_vector_element_size_other_than_4_or_8(itemsize: int) -> None:
    with pytest.raises(
        WireError, match=rf"MaskedInput.vector: unknown element size {itemsize} \(allowed: 4, 8\)"
    ):
        decode(MASKED_PREFIX + u8(itemsize) + u64(0))


@pytest.mark.parametrize("itemsize", [4, 8])
@pytest.mark.parametrize("length", [MAX_VECTOR + 1, 2**63, 2**64 - 1])
def test_vector_length_above_max_vector(itemsize: int, length: int) -> None:
    with pytest.raises(
        WireError, match=rf"MaskedInput.vector: length {length} exceeds the limit {MAX_VECTOR}"
    ):
        decode(MASKED_PREFIX + u8(itemsize) + u64(length))


def test_vector_data_shorter_than_length() -> None:
    with pytest.raises(WireError, match="truncated message: MaskedInput.vector needs 12 bytes, 8 left"):
        decode(MASKED_PREFIX + u8(4) + u64(3) + b"\x00" * 8)


@pytest.mark.parametrize("data", ["FSA\x01\x06", None, 0, 1.5, [70, 83, 65], (b"FSA",), object()])
def test_decode_non_bytes(data: Any) -> None:
    with pytest.raises(WireError, match=f"expected bytes, got {type(data).__name__}"):
        decode(data)


@pytest.mark.parametrize(
    "obj",
    [object(), None, b"FSA\x01\x06", {"round_id": 1}, KeyEntry(1, b"", b"", b""), (1, 2)],
    ids=["object", "None", "bytes", "dict", "KeyEntry", "tuple"],
)
def test_encode_non_message(obj: Any) -> None:
    with pytest.raises(WireError, match=f"not a protocol message: {type(obj).__name__}"):
        encode(obj)


def test_encode_lookalikes_and_subclasses_are_not_messages() -> None:
    class Sub(ConsistencySignature):
        __slots__ = ()

    with pytest.raises(WireError, match="not a protocol message: Sub"):
        encode(Sub(1, 1, b""))

    class Fake:
        TYPE = 7
        round_id = 1
        sender = 1
        signature = b""

    with pytest.raises(WireError, match="not a protocol message: Fake"):
        encode(bad(Fake()))


U32_RANGE = r"must be an integer in \[0, 2\^32\)"


@pytest.mark.parametrize("bad", [-1, 2**32, 2**64, -(2**32)])
@pytest.mark.parametrize(
    ("build", "what"),
    [
        (lambda v: ConsistencySignature(1, v, b""), "ConsistencySignature.sender"),
        (lambda v: ConsistencyRequest(1, v, ()), "ConsistencyRequest.receiver"),
        (lambda v: ConsistencyRequest(1, 1, (v,)), "ConsistencyRequest.survivors"),
        (lambda v: UnmaskRequest(1, 1, (), (v,)), "UnmaskRequest.dropped"),
        (lambda v: EncryptedShares(1, 1, ((v, b"x"),)), "EncryptedShares.ciphertexts"),
        (lambda v: UnmaskResponse(1, 1, (), ((v, b"x"),)), "UnmaskResponse.mask_key_shares"),
        (lambda v: KeyDirectory(1, 1, (KeyEntry(v, b"", b""),)), "KeyDirectory.entries"),
    ],
    ids=["sender", "receiver", "survivors", "dropped", "ciphertexts", "mask_key_shares", "entry"],
)
def test_encode_out_of_range_id(build: Any, what: str, bad: int) -> None:
    with pytest.raises(WireError, match=rf"{what} {U32_RANGE}, got int"):
        encode(build(bad))


@pytest.mark.parametrize("bad", [-1, 2**64, 2**80])
def test_encode_out_of_range_round(bad: int) -> None:
    with pytest.raises(WireError, match=r"ConsistencySignature.round_id must be an integer in \[0, 2\^64\)"):
        encode(ConsistencySignature(bad, 1, b""))


@pytest.mark.parametrize(
    ("message", "pattern"),
    [
        (ConsistencySignature(1, True, b""), rf"ConsistencySignature.sender {U32_RANGE}, got bool"),
        (ConsistencySignature(False, 1, b""), r"ConsistencySignature.round_id must be an integer"),
        (ConsistencyRequest(1, 1, (True,)), rf"ConsistencyRequest.survivors {U32_RANGE}, got bool"),
        (EncryptedShares(1, 1, ((True, b""),)), rf"EncryptedShares.ciphertexts {U32_RANGE}, got bool"),
        (KeyDirectory(1, 1, (KeyEntry(False, b"", b""),)), rf"KeyDirectory.entries {U32_RANGE}, got bool"),
        (
            ConsistencySignature(1, bad(np.uint32(1)), b""),
            rf"ConsistencySignature.sender {U32_RANGE}, got uint32",
        ),
        (ConsistencySignature(1, bad(1.0), b""), rf"ConsistencySignature.sender {U32_RANGE}, got float"),
        (ConsistencySignature(1, bad("1"), b""), rf"ConsistencySignature.sender {U32_RANGE}, got str"),
        (ConsistencySignature(bad(1.0), 1, b""), r"ConsistencySignature.round_id must be an integer"),
    ],
    ids=[
        "bool-sender",
        "bool-round",
        "bool-survivor",
        "bool-pair",
        "bool-entry",
        "np-int",
        "float",
        "str",
        "float-round",
    ],
)
def test_encode_non_int_where_int_expected(message: Any, pattern: str) -> None:
    with pytest.raises(WireError, match=pattern):
        encode(message)


@pytest.mark.parametrize(
    ("message", "pattern"),
    [
        (
            ConsistencySignature(1, 1, bad(bytearray(b"ab"))),
            "ConsistencySignature.signature must be bytes, got bytearray",
        ),
        (ConsistencySignature(1, 1, bad("ab")), "ConsistencySignature.signature must be bytes, got str"),
        (
            AdvertiseKeys(1, 1, b"", bad(memoryview(b""))),
            "AdvertiseKeys.mask_public must be bytes, got memoryview",
        ),
        (EncryptedShares(1, 1, bad(((1, None),))), "EncryptedShares.ciphertexts must be bytes, got NoneType"),
        (KeyDirectory(1, 1, (KeyEntry(1, b"", b"", bad(0)),)), "KeyDirectory.entries must be bytes, got int"),
    ],
    ids=["bytearray", "str", "memoryview", "None", "int"],
)
def test_encode_non_bytes_blob(message: Any, pattern: str) -> None:
    with pytest.raises(WireError, match=pattern):
        encode(message)


def test_encode_blob_longer_than_max_bytes() -> None:
    with pytest.raises(
        WireError, match=rf"AdvertiseKeys.enc_public is {MAX_BYTES + 1} bytes, more than the limit"
    ):
        encode(AdvertiseKeys(1, 1, b"\x00" * (MAX_BYTES + 1), b""))
    with pytest.raises(WireError, match=rf"UnmaskResponse.self_mask_shares is {MAX_BYTES + 1} bytes"):
        encode(UnmaskResponse(1, 1, ((1, b"\x00" * (MAX_BYTES + 1)),), ()))


@pytest.mark.parametrize(
    ("message", "pattern"),
    [
        (ConsistencyRequest(1, 1, (2, 1)), r"ConsistencyRequest.survivors: ids must be sorted ascending"),
        (ConsistencyRequest(1, 1, (1, 1)), r"ConsistencyRequest.survivors: duplicate id 1"),
        (UnmaskRequest(1, 1, (), (3, 3)), r"UnmaskRequest.dropped: duplicate id 3"),
        (UnmaskRequest(1, 1, (), (), ((2, b""), (1, b""))), r"UnmaskRequest.signatures: ids must be sorted"),
        (ForwardedShares(1, 1, ((4, b"a"), (4, b"b"))), r"ForwardedShares.ciphertexts: duplicate id 4"),
        (
            KeyDirectory(1, 1, (KeyEntry(2, b"", b""), KeyEntry(1, b"", b""))),
            r"KeyDirectory.entries: ids must be sorted ascending \(2 before 1\)",
        ),
    ],
    ids=["unsorted-ids", "dup-ids", "dup-dropped", "unsorted-pairs", "dup-pairs", "unsorted-entries"],
)
def test_encode_rejects_unsorted_or_duplicate_ids(message: Any, pattern: str) -> None:
    with pytest.raises(WireError, match=pattern):
        encode(message)


@pytest.mark.parametrize(
    "vector",
    [
        np.array([1, 2], dtype=np.int32),
        np.array([1, 2], dtype=np.int64),
        np.array([1, 2], dtype=np.uint16),
        np.array([1, 2], dtype=np.uint8),
        np.array([1.0, 2.0], dtype=np.float64),
        np.array([True], dtype=np.bool_),
        np.array([1, 2], dtype=object),
        np.zeros((2, 2), dtype=np.uint32),
        np.zeros((0, 3), dtype=np.uint64),
        np.array(5, dtype=np.uint64),
        [1, 2, 3],
        b"\x00\x00\x00\x00",
        None,
    ],
    ids=[
        "int32",
        "int64",
        "uint16",
        "uint8",
        "float64",
        "bool",
        "object",
        "2d",
        "2d-empty",
        "0d",
        "list",
        "bytes",
        "None",
    ],
)
def test_encode_vector_of_wrong_dtype_or_ndim(vector: Any) -> None:
    with pytest.raises(WireError, match="MaskedInput.vector must be a 1-D uint32 or uint64 array"):
        encode(MaskedInput(1, 1, vector))


@pytest.mark.parametrize(
    "message",
    [
        ConsistencyRequest(1, 1, bad((1, "a"))),
        UnmaskRequest(1, 1, bad((None, 2)), ()),
        EncryptedShares(1, 1, bad((("a", b""), (1, b"")))),
    ],
    ids=["str-id", "None-id", "str-pair-id"],
)
def test_encode_non_int_id_in_list_raises_wire_error(message: Any) -> None:
    with pytest.raises(WireError):
        encode(message)


# -- 4. fuzzing -----------------------------------------------------------------------------------------
def _decode_or_wire_error(data: bytes) -> None:
    try:
        message = decode(data)
    except WireError:
        return
    # anything accepted is canonical: it re-encodes to exactly the same bytes
    assert type(message) in MESSAGE_TYPES
    assert encode(message) == data


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _decode_or_wire_error(data)


@settings(max_examples=300)
@given(st.integers(0, 12), st.binary(max_size=120))
def test_fuzz_bytes_after_a_valid_header(type_: int, tail: bytes) -> None:
    _decode_or_wire_error(header(type_) + tail)


@settings(max_examples=300)
@given(messages, st.data())
def test_fuzz_single_byte_mutation(message: Any, data: st.DataObject) -> None:
    encoded = bytearray(encode(message))
    pos = data.draw(st.integers(0, len(encoded) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != encoded[pos]))
    encoded[pos] = value
    _decode_or_wire_error(bytes(encoded))


def test_exhaustive_single_byte_mutation_of_known_answers() -> None:
    for data in KAT_BYTES:
        for pos in range(len(data)):
            for value in {data[pos] ^ 0x01, data[pos] ^ 0x80, 0x00, 0xFF, 0x7F} - {data[pos]}:
                _decode_or_wire_error(data[:pos] + bytes([value]) + data[pos + 1 :])


def test_wire_errors_do_not_quote_key_material() -> None:
    key = bytes(range(0xA0, 0xC0))
    data = encode(AdvertiseKeys(1, 2, key, key, key))
    for bad in (data + b"\x00", data[:-1], data[:-40]):
        with pytest.raises(WireError) as info:
            decode(bad)
        text = str(info.value)
        assert key.hex() not in text and key[:8].hex() not in text
        assert repr(key)[2:-1] not in text and repr(key[:8])[2:-1] not in text


# -- 5. reprs never show key material, ciphertexts or vector values -------------------------------------
K1 = bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f90")
K2 = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
K3 = bytes.fromhex("deadbeefcafef00dfeedfacebaadc0de")
SECRETS = [K1, K2, K3]
VEC = np.array([987654321, 123456789, 4000000007], dtype=np.uint64)

SECRET_MESSAGES = [
    AdvertiseKeys(11, 12, K1, K2, K3),
    KeyEntry(13, K1, K2, K3),
    KeyDirectory(14, 15, (KeyEntry(1, K1, K2, K3), KeyEntry(2, K3, K2, K1))),
    EncryptedShares(16, 17, ((1, K1), (2, K2), (3, K3))),
    ForwardedShares(18, 19, ((1, K1), (2, K2), (3, K3))),
    ConsistencySignature(20, 21, K1 + K2 + K3),
    UnmaskRequest(22, 23, (1,), (2,), ((1, K1), (2, K2), (3, K3))),
    UnmaskResponse(24, 25, ((1, K1), (2, K2)), ((3, K3),)),
    MaskedInput(26, 27, VEC),
]


def _assert_no_secrets(text: str) -> None:
    lowered = text.lower()
    for secret in SECRETS:
        for chunk in (secret, secret[:4], secret[-4:]):
            assert chunk.hex() not in lowered
            assert repr(chunk)[2:-1] not in text
    for value in VEC:
        assert str(int(value)) not in text
        assert f"{int(value):x}" not in lowered


@pytest.mark.parametrize("message", SECRET_MESSAGES, ids=lambda m: type(m).__name__)
def test_repr_hides_secrets(message: Any) -> None:
    for text in (repr(message), str(message), f"{message}", f"{message!r}"):
        _assert_no_secrets(text)
        assert text.startswith(type(message).__name__ + "(")


def test_repr_shows_non_secret_identifiers() -> None:
    assert repr(AdvertiseKeys(11, 12, K1, K2, K3)) == "AdvertiseKeys(round_id=11, sender=12)"
    assert repr(MaskedInput(26, 27, VEC)) == "MaskedInput(round_id=26, sender=27, length=3)"
    assert "n=3" in repr(EncryptedShares(16, 17, ((1, K1), (2, K2), (3, K3))))


@given(
    rounds.filter(lambda r: r < 10**6),
    st.integers(0, 10**6),
    st.binary(min_size=12, max_size=64),
    st.binary(min_size=12, max_size=64),
)
def test_repr_hides_random_key_bytes(round_id: int, sender: int, a: bytes, b: bytes) -> None:
    for message in (
        AdvertiseKeys(round_id, sender, a, b, a),
        KeyEntry(sender, a, b, a),
        EncryptedShares(round_id, sender, ((1, a), (2, b))),
        ForwardedShares(round_id, sender, ((1, a),)),
        ConsistencySignature(round_id, sender, a),
        UnmaskResponse(round_id, sender, ((1, a),), ((2, b),)),
    ):
        text = repr(message)
        for secret in (a, b):
            assert secret.hex() not in text.lower()
            assert repr(secret)[2:-1] not in text
