from __future__ import annotations

import copy
import hashlib
import pickle
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from scipy import stats

from dp.errors import DPParameterError
from dp.rng import CryptoRNG, _lazy_bernoulli
from secagg.prg import keystream_bytes

SEED = bytes(range(32))
ALPHA = 1e-4  # significance level of the distribution tests (fixed seeds: each test is deterministic)


def independent_stream(seed: bytes, nbytes: int, info: bytes = b"fedshield/dp/rng/v1") -> bytes:
    """The documented construction, written out directly against cryptography."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(seed)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(b"\x00" * 16)).encryptor()
    return encryptor.update(b"\x00" * nbytes) + encryptor.finalize()


def le_words(data: bytes, width: int) -> list[int]:
    return [int.from_bytes(data[i : i + width], "little") for i in range(0, len(data), width)]


# -- known answers ---------------------------------------------------------------------------------------

FROZEN_BYTES = "a65021884976d05d0fff1834b7ccb0a8"
FROZEN_WORDS = [14054275248269499596, 5842749188109198588]
FROZEN_UNIFORM = ["0x1.2f5252c7f84c8p-3", "0x1.0fbaf263b3a20p-6"]
FROZEN_INTEGERS_256 = [176, 62, 13, 251]
FROZEN_INTEGERS_10 = [5, 8, 1, 4, 8]
FROZEN_SPAWN = "6a5768fb21f5d14e861dc150aa668c0a"
FROZEN_INT_SEED = "d68abeb04d7f93c34e7fd656bedeab73"


def test_known_answers_match_frozen_values_and_independent_construction() -> None:
    rng = CryptoRNG(SEED)
    stream = independent_stream(SEED, 160)

    first = rng.random_bytes(16)
    assert first.hex() == FROZEN_BYTES
    assert first == stream[:16]

    words = rng.bits64(2)
    assert words.dtype == np.uint64
    assert words.tolist() == FROZEN_WORDS == le_words(stream[16:32], 8)

    uniform = rng.uniform(2)
    assert [float(x).hex() for x in uniform] == FROZEN_UNIFORM
    assert uniform.tolist() == [(w >> 11) * 2.0**-53 for w in le_words(stream[32:48], 8)]

    # high = 256 is a power of two: 4-byte words masked to 8 bits, no rejection.
    small = rng.integers(256, 4)
    assert small.tolist() == FROZEN_INTEGERS_256 == [w & 0xFF for w in le_words(stream[48:64], 4)]
    assert rng.bytes_used == 64

    # high = 10: 4-bit masked uint32 words, values >= 10 rejected, in stream order.
    tens = rng.integers(10, 5)
    assert tens.tolist() == FROZEN_INTEGERS_10
    candidates = [w & 0xF for w in le_words(stream[64:160], 4)]
    assert tens.tolist() == [c for c in candidates if c < 10][:5]


def test_spawn_and_int_seed_known_answers() -> None:
    context = b"i" + (1).to_bytes(8, "big") + b"\x07" + b"b" + (6).to_bytes(8, "big") + b"client"
    child_seed = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedshield/dp/rng/v1/spawn" + context
    ).derive(SEED)
    child = CryptoRNG(SEED).spawn(7, b"client")
    out = child.random_bytes(16)
    assert out.hex() == FROZEN_SPAWN
    assert out == independent_stream(child_seed, 16)

    parts = (
        b"i" + (2).to_bytes(8, "big") + (2024).to_bytes(2, "big") + b"i" + (1).to_bytes(8, "big") + b"\x01"
    )
    int_seed = hashlib.sha256(b"fedshield/dp/rng/v1/int-seed" + parts).digest()
    out = CryptoRNG.from_int_seed(2024, 1).random_bytes(16)
    assert out.hex() == FROZEN_INT_SEED
    assert out == independent_stream(int_seed, 16)


def test_stream_is_consumed_sequentially_across_calls_and_chunks() -> None:
    n = (1 << 20) + 37  # crosses the 1 MiB chunk boundary
    stream = independent_stream(SEED, 2 * n)
    rng = CryptoRNG(SEED)
    assert rng.random_bytes(10) + rng.random_bytes(n - 10) + rng.random_bytes(n) == stream
    assert rng.bytes_used == 2 * n


def test_differs_from_secagg_prg_for_the_same_seed() -> None:
    ours = CryptoRNG(SEED).random_bytes(64)
    for domain in (b"", b"fedshield/dp/rng/v1", b"/dp/rng/v1"):
        assert keystream_bytes(SEED, 64, domain=domain) != ours


# -- determinism and independence ----------------------------------------------------------------------


def draw_everything(rng: CryptoRNG) -> list[object]:
    return [
        rng.random_bytes(5),
        rng.uniform(7).tolist(),
        rng.integers(1000, 9).tolist(),
        rng.bernoulli(0.25, 11).tolist(),
        rng.normal(3, scale=2.0).tolist(),
        rng.integers(3 << 60, 4).tolist(),
    ]


def test_same_seed_same_outputs_different_seed_different_outputs() -> None:
    assert draw_everything(CryptoRNG(SEED)) == draw_everything(CryptoRNG(SEED))
    assert draw_everything(CryptoRNG.from_int_seed(3, 4)) == draw_everything(CryptoRNG.from_int_seed(3, 4))
    assert draw_everything(CryptoRNG(SEED)) != draw_everything(CryptoRNG(bytes(32)))
    # The int-seed encoding is injective: (1, 2), (12,), (2, 1), (-1,) and (255,) are all different.
    firsts = {CryptoRNG.from_int_seed(*p).random_bytes(16) for p in [(1, 2), (12,), (2, 1), (-1,), (255,)]}
    assert len(firsts) == 5


def test_unseeded_generators_differ() -> None:
    assert CryptoRNG().random_bytes(32) != CryptoRNG().random_bytes(32)


def test_spawn_is_deterministic_distinct_and_independent_of_parent_position() -> None:
    parent = CryptoRNG(SEED)
    child_a = parent.spawn(1, 2).random_bytes(32)
    parent.random_bytes(1000)  # consuming the parent does not change its children
    assert parent.spawn(1, 2).random_bytes(32) == child_a
    contexts: list[tuple[int | bytes, ...]] = [(), (1,), (2,), (1, 2), (12,), (b"\x01",), (1, 2, 0), (-1,)]
    outputs = {CryptoRNG(SEED).spawn(*c).random_bytes(32) for c in contexts}
    outputs.add(CryptoRNG(SEED).random_bytes(32))
    assert len(outputs) == len(contexts) + 1
    assert CryptoRNG(SEED).spawn(1).spawn(2).random_bytes(32) != CryptoRNG(SEED).spawn(1, 2).random_bytes(32)


def test_spawned_streams_are_uncorrelated() -> None:
    n = 100_000
    parent = CryptoRNG(SEED)
    streams = [parent.uniform(n), parent.spawn(0).uniform(n), parent.spawn(1).uniform(n)]
    for i in range(3):
        for j in range(i + 1, 3):
            r = np.corrcoef(streams[i], streams[j])[0, 1]
            assert abs(r) < 5 / np.sqrt(n)


# -- distributions ---------------------------------------------------------------------------------------


def test_uniform_is_uniform_on_the_53_bit_grid() -> None:
    u = CryptoRNG.from_int_seed(11).uniform(200_000)
    assert u.dtype == np.float64
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert np.all(np.ldexp(u, 53) == np.floor(np.ldexp(u, 53)))
    assert stats.kstest(u, "uniform").pvalue > ALPHA


@pytest.mark.parametrize("high", [2, 3, 10, 1000, 2**32 + 15])
def test_integers_chi_square(high: int) -> None:
    n = 100_000
    x = CryptoRNG.from_int_seed(12, high).integers(high, n)
    assert x.dtype == np.int64
    assert int(x.min()) >= 0 and int(x.max()) < high
    bins = min(high, 20)
    counts = np.bincount(x * bins // high, minlength=bins)
    # bin b holds the values v with floor(v * bins / high) = b: ceil((b+1) high / bins) - ceil(b high / bins)
    sizes = np.array(
        [((b + 1) * high + bins - 1) // bins - (b * high + bins - 1) // bins for b in range(bins)]
    )
    assert stats.chisquare(counts, n * sizes / high).pvalue > ALPHA


def test_integers_has_no_modulo_bias() -> None:
    high = 3 << 60  # 2**64 mod high = 2**60: naive "word % high" puts 6/16 of the mass in the first third
    n = 60_000
    rng = CryptoRNG.from_int_seed(13)
    thirds = np.bincount(rng.integers(high, n) // (1 << 60), minlength=3)
    assert stats.chisquare(thirds).pvalue > ALPHA
    # the same test has the power to see the bias of the naive reduction
    naive = rng.bits64(n) % np.uint64(high)
    naive_thirds = np.bincount((naive // np.uint64(1 << 60)).astype(np.int64), minlength=3)
    assert stats.chisquare(naive_thirds).pvalue < 1e-12


def test_integers_edge_highs() -> None:
    rng = CryptoRNG.from_int_seed(14)
    assert rng.integers(1, 5).tolist() == [0] * 5
    top = rng.integers(2**63, 1000)
    assert int(top.min()) >= 0 and (top >= 2**62).mean() > 0.4
    big = rng.integers(2**62 + 1, 1000)  # worst-case acceptance (just over 1/2)
    assert int(big.max()) <= 2**62
    for bad in (0, -3, 2**63 + 1, 2.0, True, "7"):
        with pytest.raises(DPParameterError):
            rng.integers(bad, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("p", [0.0, 0.05, 0.3, 0.5, 0.999, 1.0])
def test_bernoulli_frequency(p: float) -> None:
    n = 100_000
    x = CryptoRNG.from_int_seed(15).bernoulli(p, n)
    assert x.dtype == np.bool_
    k = int(x.sum())
    if p in (0.0, 1.0):
        assert k == n * p
    else:
        assert stats.binomtest(k, n, p).pvalue > ALPHA


def test_bernoulli_with_array_of_probabilities() -> None:
    n = 50_000
    p = np.where(np.arange(2 * n) < n, 0.2, 0.7)
    x = CryptoRNG.from_int_seed(16).bernoulli(p, 2 * n)
    assert stats.binomtest(int(x[:n].sum()), n, 0.2).pvalue > ALPHA
    assert stats.binomtest(int(x[n:].sum()), n, 0.7).pvalue > ALPHA


def test_bernoulli_rejects_bad_probabilities() -> None:
    rng = CryptoRNG(SEED)
    for bad in (-0.1, 1.5, float("nan"), np.array([0.5, 0.5])):
        with pytest.raises(DPParameterError):
            rng.bernoulli(bad, 3)


def test_lazy_bernoulli_tie_resolution_is_exact() -> None:
    # lo = 0 and width = 2**64 - 1 make (almost) every draw a tie, so the exact fallback decides them all.
    n = 20_000
    p = Fraction(1, 3)
    rng = CryptoRNG.from_int_seed(17)
    lo = np.zeros(n, dtype=np.uint64)
    width = np.full(n, 2**64 - 1, dtype=np.uint64)
    x = _lazy_bernoulli(rng, lo, width, lambda pos: [p] * len(pos))
    assert stats.binomtest(int(x.sum()), n, 1 / 3).pvalue > ALPHA
    # a probability that is an exact multiple of 2**-64 needs no second word; a tie at it must say False
    half = _lazy_bernoulli(rng, lo[:4000], width[:4000], lambda pos: [Fraction(1, 2)] * len(pos))
    assert stats.binomtest(int(half.sum()), 4000, 0.5).pvalue > ALPHA
    # p = 2**-70 is below the first word's resolution: True only if the first word is 0
    assert not _lazy_bernoulli(
        rng, lo[:100], np.ones(100, np.uint64), lambda pos: [Fraction(1, 2**70)] * len(pos)
    ).any()


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_normal_ks(scale: float) -> None:
    z = CryptoRNG.from_int_seed(18).normal(100_001, scale=scale)
    assert z.shape == (100_001,)
    assert stats.kstest(z, "norm", args=(0.0, scale)).pvalue > ALPHA
    assert float(np.abs(z).max()) <= 8.58 * scale


def test_normal_pairs_are_independent() -> None:
    z = CryptoRNG.from_int_seed(19).normal(200_000)
    assert abs(np.corrcoef(z[0::2], z[1::2])[0, 1]) < 5 / np.sqrt(100_000)


def test_normal_scale_validation() -> None:
    rng = CryptoRNG(SEED)
    assert rng.normal(4, scale=0.0).tolist() == [0.0] * 4
    for bad in (-1.0, float("inf"), float("nan"), "1"):
        with pytest.raises(DPParameterError):
            rng.normal(3, scale=bad)  # type: ignore[arg-type]


def test_random_signs_are_fair() -> None:
    s = CryptoRNG.from_int_seed(20).random_signs(100_003)
    assert s.shape == (100_003,)
    assert stats.binomtest(int(s.sum()), s.size, 0.5).pvalue > ALPHA


# -- sizes, validation, secrecy -----------------------------------------------------------------------------


def test_sizes_zero_and_one() -> None:
    rng = CryptoRNG(SEED)
    assert rng.random_bytes(0) == b""
    for method in (rng.uniform, rng.bits64, rng.normal, rng.random_signs):
        assert method(0).shape == (0,)
        assert method(1).shape == (1,)
    assert rng.integers(7, 0).shape == (0,)
    assert rng.integers(7, 1).shape == (1,)
    assert rng.bernoulli(0.5, 0).shape == (0,)
    assert rng.bernoulli(0.5, 1).shape == (1,)


@pytest.mark.parametrize("size", [-1, 2.0, True, None, "3"])
def test_bad_sizes_rejected(size: object) -> None:
    rng = CryptoRNG(SEED)
    with pytest.raises(DPParameterError):
        rng.uniform(size)  # type: ignore[arg-type]
    with pytest.raises(DPParameterError):
        rng.random_bytes(size)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33), bytearray(32), "a" * 32, 12345, [0] * 32])
def test_bad_seeds_rejected(seed: object) -> None:
    with pytest.raises(DPParameterError):
        CryptoRNG(seed)  # type: ignore[arg-type]


def test_bad_int_seeds_and_contexts_rejected() -> None:
    for parts in [(), (True,), (1.0,), (b"x",), ("1",)]:
        with pytest.raises(DPParameterError):
            CryptoRNG.from_int_seed(*parts)  # type: ignore[arg-type]
    for context in [(True,), (1.5,), ("a",)]:
        with pytest.raises(DPParameterError):
            CryptoRNG(SEED).spawn(*context)  # type: ignore[arg-type]


def test_repr_and_errors_do_not_reveal_the_seed() -> None:
    seed = bytes(range(100, 132))
    rng = CryptoRNG(seed)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedshield/dp/rng/v1").derive(seed)
    text = repr(rng) + str(rng)
    for secret in (seed, key):
        assert secret.hex() not in text
        assert secret.hex()[:8] not in text
        assert repr(secret) not in text
    with pytest.raises(DPParameterError) as info:
        CryptoRNG(seed + b"\x00")
    assert seed.hex()[:8] not in str(info.value) and repr(seed)[:12] not in str(info.value)


def test_cannot_be_copied_or_pickled() -> None:
    rng = CryptoRNG(SEED)
    for duplicate in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError):
            duplicate(rng)


def test_dp_sources_never_use_non_cryptographic_randomness() -> None:
    root = Path(__file__).resolve().parents[2] / "dp"
    forbidden = [
        r"^\s*import random\b",
        r"^\s*from random import",
        r"\b(np|numpy)\.random\.\w+",
        r"^\s*import numpy\.random",
        r"^\s*from numpy(\.random)? import random",
        r"^\s*from numpy\.random import",
        r"^\s*(import|from) (torch|fl|attacks)\b",
    ]
    for name in ("rng.py", "discrete.py"):
        source = (root / name).read_text()
        for pattern in forbidden:
            assert not re.search(pattern, source, re.MULTILINE), (name, pattern)
