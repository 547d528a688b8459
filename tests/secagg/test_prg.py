from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from secagg.errors import ParameterError
from secagg.prg import PRG_INFO_PREFIX, SEED_BYTES, expand_mask, keystream_bytes, mask_dtype

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "vectors" / "prg.json").read_text())
SEED = bytes(range(32))


def independent_keystream(seed: bytes, nbytes: int, domain: bytes) -> bytes:
    """The documented construction, written out directly against cryptography."""
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedshield/secagg/v1/prg" + domain
    ).derive(seed)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(b"\x00" * 16)).encryptor()
    return encryptor.update(b"\x00" * nbytes) + encryptor.finalize()


def word_bytes(bits: int) -> int:
    """Documented word width: 4-byte words for b <= 32, 8-byte words for 33 <= b <= 64."""
    return 4 if bits <= 32 else 8


def expected_dtype(bits: int) -> np.dtype[Any]:
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


@pytest.mark.parametrize(
    "case", VECTORS["expand_mask"], ids=lambda c: f"len{c['length']}-b{c['modulus_bits']}"
)
def test_expand_mask_known_answers(case: dict[str, Any]) -> None:
    out = expand_mask(
        bytes.fromhex(case["seed"]),
        case["length"],
        case["modulus_bits"],
        domain=bytes.fromhex(case["domain"]),
    )
    w = case["word_bytes"]
    assert w == word_bytes(case["modulus_bits"])
    assert out.dtype == expected_dtype(case["modulus_bits"])
    assert out.dtype.itemsize == w
    assert out.shape == (case["length"],)
    assert [int(v) for v in out[:8]] == case["first"]
    assert hashlib.sha256(out.astype(f"<u{w}").tobytes()).hexdigest() == case["sha256_le_words"]


@pytest.mark.parametrize("case", VECTORS["keystream_bytes"], ids=lambda c: f"n{c['nbytes']}")
def test_keystream_known_answers(case: dict[str, Any]) -> None:
    seed, domain = bytes.fromhex(case["seed"]), bytes.fromhex(case["domain"])
    assert keystream_bytes(seed, case["nbytes"], domain=domain).hex() == case["keystream"]


@given(
    seed=st.binary(min_size=32, max_size=32),
    domain=st.binary(max_size=40),
    length=st.integers(0, 300),
    bits=st.integers(1, 64),
)
def test_matches_independent_hkdf_aes_ctr(seed: bytes, domain: bytes, length: int, bits: int) -> None:
    w = word_bytes(bits)
    stream = independent_keystream(seed, w * length, domain)
    expected = [int.from_bytes(stream[w * i : w * i + w], "little") % (1 << bits) for i in range(length)]
    out = expand_mask(seed, length, bits, domain=domain)
    assert out.dtype == expected_dtype(bits)
    assert out.tolist() == expected
    assert keystream_bytes(seed, w * length, domain=domain) == stream


@pytest.mark.parametrize(("bits", "le_dtype"), [(64, "<u8"), (32, "<u4")])
def test_independent_check_crosses_chunk_boundary(bits: int, le_dtype: str) -> None:
    # 16 MiB chunks inside _fill_keystream: make sure the counter carries over between update calls,
    # for both word widths (the boundary falls at a different element index for each).
    w = np.dtype(le_dtype).itemsize
    n = (1 << 24) // w + 3
    stream = independent_keystream(SEED, w * n, b"chunk")
    expected = np.frombuffer(stream, dtype=le_dtype)
    out = expand_mask(SEED, n, bits, domain=b"chunk")
    assert out.dtype == expected_dtype(bits)
    np.testing.assert_array_equal(out, expected)


def test_values_in_range_and_smaller_moduli_are_reductions() -> None:
    # Within one word width, the b-bit mask is the full-width mask reduced mod 2^b.
    full32 = expand_mask(SEED, 5000, 32, domain=b"d")
    full64 = expand_mask(SEED, 5000, 64, domain=b"d")
    assert full32.dtype == np.uint32 and full64.dtype == np.uint64
    for bits in (1, 7, 20, 31, 32):
        out = expand_mask(SEED, 5000, bits, domain=b"d")
        assert out.dtype == np.uint32
        assert int(out.max()) < 1 << bits
        np.testing.assert_array_equal(out, full32 & np.uint32((1 << bits) - 1))
    for bits in (33, 40, 63, 64):
        out = expand_mask(SEED, 5000, bits, domain=b"d")
        assert out.dtype == np.uint64
        assert int(out.max()) < 1 << bits
        np.testing.assert_array_equal(out, full64 & np.uint64((1 << bits) - 1))
    # Across widths it is NOT a reduction: both read the same stream, so the 4-byte words are the low
    # and high halves of the 8-byte words (little-endian), i.e. element i of b=32 is not full64[i] mod 2^32.
    np.testing.assert_array_equal(full32[0::2], (full64[:2500] & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    np.testing.assert_array_equal(full32[1::2], (full64[:2500] >> np.uint64(32)).astype(np.uint32))
    assert not np.array_equal(full32[:2500], (full64[:2500] & np.uint64(0xFFFFFFFF)).astype(np.uint32))


@pytest.mark.parametrize(("bits", "le_dtype"), [(32, "<u4"), (20, "<u4"), (33, "<u8"), (64, "<u8")])
def test_prefix_property_and_fresh_writable_output(bits: int, le_dtype: str) -> None:
    long = expand_mask(SEED, 1000, bits, domain=b"d")
    short = expand_mask(SEED, 10, bits, domain=b"d")
    assert short.dtype == long.dtype == expected_dtype(bits)
    np.testing.assert_array_equal(short, long[:10])
    assert long.flags.writeable and long.flags.c_contiguous
    original = int(long[0])
    long[0] = ~long[0]  # the caller owns it: mutating must not affect later expansions
    first_word = np.frombuffer(
        keystream_bytes(SEED, np.dtype(le_dtype).itemsize, domain=b"d"), dtype=le_dtype
    )[0]
    again = expand_mask(SEED, 1, bits, domain=b"d")[0]
    assert int(again) == original == int(first_word) % (1 << bits)


def test_domains_and_seeds_separate() -> None:
    a = expand_mask(SEED, 64, 64, domain=b"round=1")
    b = expand_mask(SEED, 64, 64, domain=b"round=2")
    c = expand_mask(bytes(32), 64, 64, domain=b"round=1")
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # The empty domain is a domain like any other (prefix alone).
    assert not np.array_equal(expand_mask(SEED, 64, 64, domain=b""), a)


def test_output_looks_uniform() -> None:
    # Sanity, not a proof: chi-square of 16 buckets over 2^16 samples, and balanced bits.
    out = expand_mask(SEED, 1 << 16, 4, domain=b"uniformity")
    counts = np.bincount(out.astype(np.int64), minlength=16)
    assert stats.chisquare(counts).pvalue > 1e-4
    assert out.dtype == np.uint32
    # Low bits of 8-byte words (b > 32) too.
    out36 = expand_mask(SEED, 1 << 16, 36, domain=b"uniformity")
    assert stats.chisquare(np.bincount((out36 & np.uint64(15)).astype(np.int64), minlength=16)).pvalue > 1e-4
    for width_bits in (32, 64):
        bits = expand_mask(SEED, 1 << 14, width_bits, domain=b"bits")
        assert bits.dtype.itemsize * 8 == width_bits
        ones = np.unpackbits(bits.view(np.uint8)).mean()
        assert abs(ones - 0.5) < 0.005


@pytest.mark.parametrize("bits", [1, 16, 32, 33, 64])
def test_zero_length(bits: int) -> None:
    out = expand_mask(SEED, 0, bits, domain=b"")
    assert out.dtype == expected_dtype(bits) and out.shape == (0,)
    assert keystream_bytes(SEED, 0, domain=b"") == b""


@pytest.mark.parametrize(
    ("bits", "dtype"), [(1, np.uint32), (32, np.uint32), (33, np.uint64), (64, np.uint64)]
)
def test_mask_dtype_boundaries(bits: int, dtype: type[np.unsignedinteger[Any]]) -> None:
    assert mask_dtype(bits) == np.dtype(dtype)
    assert expand_mask(SEED, 3, bits, domain=b"").dtype == np.dtype(dtype)


def test_mask_dtype_matches_expand_mask_for_every_width() -> None:
    for bits in range(1, 65):
        assert mask_dtype(bits) == expected_dtype(bits)
        assert expand_mask(SEED, 2, bits, domain=b"w").dtype == mask_dtype(bits)


@pytest.mark.parametrize("bad_len", [0, 16, 31, 33, 64])
def test_seed_length_rejected_without_leaking_seed(bad_len: int) -> None:
    seed = bytes(range(7, 7 + bad_len))
    for call in (
        lambda: expand_mask(seed, 4, 32, domain=b""),
        lambda: keystream_bytes(seed, 4, domain=b""),
    ):
        with pytest.raises(ParameterError) as info:
            call()
        message = str(info.value)
        assert str(SEED_BYTES) in message
        if bad_len:
            assert seed.hex() not in message
            assert base64.b64encode(seed).decode() not in message
            assert repr(seed) not in message


@pytest.mark.parametrize("bits", [0, -1, 65, 128])
def test_modulus_bits_out_of_range(bits: int) -> None:
    with pytest.raises(ParameterError):
        expand_mask(SEED, 4, bits, domain=b"")


def test_negative_length_and_wrong_types() -> None:
    with pytest.raises(ParameterError):
        expand_mask(SEED, -1, 32, domain=b"")
    with pytest.raises(ParameterError):
        keystream_bytes(SEED, -1, domain=b"")
    with pytest.raises(TypeError):
        expand_mask(SEED.hex(), 4, 32, domain=b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        expand_mask(SEED, 4, 32, domain="round")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        expand_mask(SEED, 4.0, 32, domain=b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        expand_mask(SEED, True, 32, domain=b"")
    with pytest.raises(TypeError):
        expand_mask(bytearray(SEED), 4, 32, domain=b"")  # type: ignore[arg-type]


def test_info_prefix_is_the_documented_constant() -> None:
    # Changing it silently would desynchronise every deployed client; the KATs catch it too.
    assert PRG_INFO_PREFIX == b"fedshield/secagg/v1/prg"


def test_keystream_uniforms_are_uniform_reproducible_and_hidden() -> None:
    from scipy import stats

    from secagg.prg import KeystreamUniforms

    seed = bytes(range(32))
    a, b = KeystreamUniforms(seed), KeystreamUniforms(seed)
    first = a.random(50_000)
    np.testing.assert_array_equal(first, b.random(50_000))
    assert not np.array_equal(first, a.random(50_000))  # the stream moves on
    assert first.min() >= 0 and first.max() < 1 and stats.kstest(first, "uniform").pvalue > 1e-3
    assert seed.hex() not in repr(a) and "hidden" in repr(a)
    assert not np.array_equal(KeystreamUniforms().random(8), KeystreamUniforms().random(8))  # fresh secret seeds
    with pytest.raises(ParameterError):
        KeystreamUniforms(b"short")
