from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from secagg.errors import EncodingError, ParameterError
from secagg.prg import expand_mask
from secagg.quantize import FixedPointCodec

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "vectors" / "quantize.json").read_text())


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def exact_clipped_sum(rows: list[npt.NDArray[np.float64]], clip: float) -> list[Fraction]:
    """sum_i clip(x_i) per coordinate, with no rounding at all."""
    return [
        sum((Fraction(float(min(max(v, -clip), clip))) for v in col), Fraction(0))
        for col in zip(*rows, strict=True)
    ]


def modular_sum(codec: FixedPointCodec, encodings: list[npt.NDArray[np.uint64]]) -> npt.NDArray[np.uint64]:
    total = np.zeros_like(encodings[0])
    for e in encodings:
        total = codec.add(total, e)
    return total


# ------------------------------------------------------------------------------------------------
# Known answers


@pytest.mark.parametrize("case", VECTORS["encode"], ids=lambda c: f"b{c['codec']['modulus_bits']}")
def test_encode_known_answers(case: dict[str, Any]) -> None:
    codec = FixedPointCodec(**case["codec"])
    x = np.array([float.fromhex(v) for v in case["x"]])
    u = np.array([float.fromhex(v) for v in case["uniforms"]])
    got = codec._encode_scaled(np.clip(x, -codec.clip, codec.clip), u)
    assert got.dtype == np.uint64
    assert [int(v) for v in got] == case["encoded"]


@pytest.mark.parametrize("case", VECTORS["decode_sum"], ids=lambda c: f"b{c['codec']['modulus_bits']}")
def test_decode_known_answers(case: dict[str, Any]) -> None:
    codec = FixedPointCodec(**case["codec"])
    got = codec.decode_sum(np.array(case["sum"], dtype=np.uint64), case["num_summands"])
    assert [float(v).hex() for v in got] == case["decoded"]


@pytest.mark.parametrize("case", VECTORS["required_modulus_bits"], ids=str)
def test_required_modulus_bits_known_answers(case: dict[str, Any]) -> None:
    got = FixedPointCodec.required_modulus_bits(
        case["clip"], case["scale_bits"], case["num_clients"], case["max_weight"]
    )
    assert got == case["required_modulus_bits"]


def test_encode_known_answer_by_hand() -> None:
    # clip 1, scale 2^8, Z_{2^16}: exact inputs do not depend on the rounding randomness at all.
    codec = FixedPointCodec(clip=1.0, scale_bits=8, modulus_bits=16, num_clients=10)
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 7.0, -7.0, 2.0**-8, -(2.0**-8)])
    for seed in range(3):
        assert codec.encode(x, rng=rng(seed)).tolist() == [0, 128, 65408, 256, 65280, 256, 65280, 1, 65535]


# ------------------------------------------------------------------------------------------------
# Correctness of the sum, with the exact error bound


@st.composite
def codec_and_inputs(draw: st.DrawFn) -> tuple[FixedPointCodec, list[npt.NDArray[np.float64]], bool]:
    clip = draw(st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False))
    scale_bits = draw(st.integers(0, 30))
    num_clients = draw(st.integers(1, 40))
    weighted_max = None
    needed = FixedPointCodec.required_modulus_bits(clip, scale_bits, num_clients, weighted_max)
    assume(needed <= 64 and num_clients * math.ceil(clip * 2**scale_bits) < 2**53)
    bits = draw(st.integers(max(needed, 2), 64))
    codec = FixedPointCodec(clip, scale_bits, bits, num_clients)
    n = draw(st.integers(1, num_clients))
    dim = draw(st.integers(0, 12))
    values = st.floats(-3 * clip, 3 * clip, allow_nan=False, allow_infinity=False) | st.sampled_from(
        [clip, -clip, 0.0, 1e300, -1e300]
    )
    rows = [np.array(draw(st.lists(values, min_size=dim, max_size=dim)), dtype=np.float64) for _ in range(n)]
    return codec, rows, draw(st.booleans())


@given(codec_and_inputs(), st.integers(0, 2**32))
def test_decoded_sum_within_exact_bound(
    data: tuple[FixedPointCodec, list[npt.NDArray[np.float64]], bool], seed: int
) -> None:
    codec, rows, as_float32 = data
    if as_float32:
        # Inputs the caller holds as float32 (first brought into float32 range; clip <= 1e3 anyway).
        rows = [np.clip(r, -1e38, 1e38).astype(np.float32).astype(np.float64) for r in rows]
    generator = rng(seed)
    encodings = [codec.encode(r.astype(np.float32) if as_float32 else r, rng=generator) for r in rows]
    for e in encodings:
        assert e.dtype == np.uint64
        assert all(int(v) < 2**codec.modulus_bits for v in e)
    decoded = codec.decode_sum(modular_sum(codec, encodings), len(rows))
    assert decoded.dtype == np.float64
    bound = Fraction(len(rows), 2**codec.scale_bits)
    for got, want in zip(decoded.tolist(), exact_clipped_sum(rows, codec.clip), strict=True):
        # Each of the n roundings moves by strictly less than one unit 2^-k; decoding itself is exact.
        assert abs(Fraction(got) - want) < bound
        # ... and the decoded value is on the fixed-point grid.
        assert (Fraction(got) * 2**codec.scale_bits).denominator == 1


def test_encodings_are_reduced_mod_2b() -> None:
    codec = FixedPointCodec(clip=2.0, scale_bits=10, modulus_bits=20, num_clients=100)
    enc = codec.encode(np.linspace(-3, 3, 1001), rng=rng())
    assert enc.dtype == np.uint64 and int(enc.max()) < 2**20


def test_float32_input_encodes_like_its_float64_value() -> None:
    codec = FixedPointCodec(clip=1.0, scale_bits=20, modulus_bits=40, num_clients=10)
    x32 = np.linspace(-1.5, 1.5, 257, dtype=np.float32)
    np.testing.assert_array_equal(
        codec.encode(x32, rng=rng(5)), codec.encode(x32.astype(np.float64), rng=rng(5))
    )


def test_masks_cancel_and_leftover_mask_is_detected() -> None:
    # End-to-end with the PRG: +m / -m pairwise masks vanish in the modular sum.
    codec = FixedPointCodec(clip=1.0, scale_bits=16, modulus_bits=64, num_clients=3)
    xs = [
        np.array([0.25, -0.5, 1.0, -1.0]),
        np.array([0.125, 0.5, -0.75, 2.0]),
        np.array([0.0, 0.0, 0.5, -2.0]),
    ]
    plain = [codec.encode(x, rng=rng(i)) for i, x in enumerate(xs)]
    mask = expand_mask(bytes(range(32)), 4, 64, domain=b"pair=0,1")
    masked = [codec.add(plain[0], mask), plain[1] - mask, plain[2]]  # uint64 subtraction wraps mod 2^64
    expected = codec.decode_sum(modular_sum(codec, plain), 3)
    np.testing.assert_array_equal(codec.decode_sum(modular_sum(codec, masked), 3), expected)
    np.testing.assert_array_equal(expected, np.array([0.375, 0.0, 0.75, -1.0]))
    with pytest.raises(EncodingError):  # a dropped client's mask left in the sum
        codec.decode_sum(modular_sum(codec, [masked[0], plain[1], plain[2]]), 3)


# ------------------------------------------------------------------------------------------------
# Unbiasedness of stochastic rounding


def test_stochastic_rounding_is_unbiased() -> None:
    codec = FixedPointCodec(clip=1.0, scale_bits=4, modulus_bits=8, num_clients=1)
    unit = 2.0**-4
    fracs = np.array([0.0, 0.01, 0.1, 0.25, 0.5, 0.7, 0.9, 0.99])
    x = np.concatenate([(3 + fracs) * unit, (-5 + fracs) * unit])
    draws = 40_000
    decoded = codec.decode_sum(codec.encode(np.tile(x, draws), rng=rng(2024)), 1).reshape(draws, -1)
    # Every draw is one of the two neighbouring grid points ...
    assert (np.abs(decoded - x) < unit).all()
    # ... and the mean is x: the rounding error is Bernoulli(f) * unit, so its mean has standard error
    # sqrt(f (1 - f) / draws) * unit; allow 5 standard errors (false alarm ~ 6e-7 per coordinate).
    f = np.concatenate([fracs, fracs])
    tolerance = 5 * np.sqrt(f * (1 - f) / draws) * unit
    assert (np.abs(decoded.mean(axis=0) - x) <= tolerance).all()
    # Exact grid points never move.
    assert (decoded[:, f == 0] == x[f == 0]).all()


def test_rounding_uses_the_given_generator() -> None:
    codec = FixedPointCodec(clip=1.0, scale_bits=8, modulus_bits=16, num_clients=1)
    x = np.full(64, 1 / 3)
    np.testing.assert_array_equal(codec.encode(x, rng=rng(1)), codec.encode(x, rng=rng(1)))
    assert not np.array_equal(codec.encode(x, rng=rng(1)), codec.encode(x, rng=rng(2)))


# ------------------------------------------------------------------------------------------------
# The no-wrap bound is exact


BOUNDARY_CASES = [
    (1.0, 8, 10, None),
    (1.0, 16, 1000, None),
    (0.1, 20, 100, None),  # 0.1 * 2^20 is not an integer: Q = ceil(...)
    (3.0, 0, 1, None),
    (4.0, 20, 1000, None),
    (1.0, 16, 100, 500.0),
    (0.01, 24, 50, 2.0),
    (0.3, 30, 7, 0.5),
]


@pytest.mark.parametrize(("clip", "k", "n", "w"), BOUNDARY_CASES)
def test_bound_check_rejects_exactly_below_the_safe_width(
    clip: float, k: int, n: int, w: float | None
) -> None:
    safe = FixedPointCodec.required_modulus_bits(clip, k, n, w)
    codec = FixedPointCodec(clip, k, safe, n, w)
    with pytest.raises(ParameterError, match=rf"modulus_bits >= {safe}\b"):
        FixedPointCodec(clip, k, safe - 1, n, w)
    worst = n * codec.slot_bound
    # At the safe width the worst case fits in the signed range ...
    assert worst <= 2 ** (safe - 1) - 1
    # ... and one bit less really wraps: the residue of the worst case decodes to something else.
    residue = worst % 2 ** (safe - 1)
    signed = residue - 2 ** (safe - 1) if residue >= 2 ** (safe - 2) else residue
    assert signed != worst


@pytest.mark.parametrize(("clip", "k", "n", "w"), BOUNDARY_CASES)
def test_worst_case_is_attained_and_decodes_at_the_safe_width(
    clip: float, k: int, n: int, w: float | None
) -> None:
    codec = FixedPointCodec(clip, k, FixedPointCodec.required_modulus_bits(clip, k, n, w), n, w)
    # Uniform 0 rounds every off-grid value up and the largest double below 1 rounds every one down,
    # so +clip reaches +ceil(C 2^k) and -clip reaches -ceil(C 2^k): the worst cases are attainable.
    up, down = 0.0, 1.0 - 2.0**-53
    x = np.array([clip, -clip, 10 * clip, -10 * clip])
    if w is None:
        enc = codec._encode_scaled(np.clip(x, -clip, clip), np.array([up, down, up, down]))
        per_slot = [codec.slot_bound, -codec.slot_bound, codec.slot_bound, -codec.slot_bound]
    else:
        weighted = np.concatenate([np.clip(x, -clip, clip) * w, [w]])
        enc = codec._encode_scaled(weighted, np.array([up, down, up, down, up]))
        v = math.ceil(math.ldexp(w * clip, k))
        per_slot = [v, -v, v, -v, math.ceil(math.ldexp(w, k))]
        assert max(per_slot) == codec.slot_bound
    decoded = codec.decode_sum(modular_sum(codec, [enc] * n), n)
    assert [Fraction(v) for v in decoded.tolist()] == [Fraction(n * q, 2**k) for q in per_slot]


def test_required_bits_formula() -> None:
    # b = bitlen(n * ceil(C * 2^k)) + 1
    assert FixedPointCodec.required_modulus_bits(1.0, 8, 10) == (10 * 256).bit_length() + 1 == 13
    assert (
        FixedPointCodec.required_modulus_bits(0.1, 20, 100) == (100 * math.ceil(0.1 * 2**20)).bit_length() + 1
    )
    # Weighted: max(W*C, W) is the per-slot magnitude.
    assert FixedPointCodec.required_modulus_bits(0.5, 10, 10, 4.0) == (10 * 4 * 1024).bit_length() + 1
    assert FixedPointCodec.required_modulus_bits(3.0, 10, 10, 4.0) == (10 * 12 * 1024).bit_length() + 1


def test_with_safe_modulus() -> None:
    codec = FixedPointCodec.with_safe_modulus(1.0, 16, 1000, headroom_bits=3)
    assert codec.modulus_bits == FixedPointCodec.required_modulus_bits(1.0, 16, 1000) + 3
    assert FixedPointCodec.with_safe_modulus(1.0, 16, 1000, headroom_bits=100).modulus_bits == 64
    with pytest.raises(ParameterError):
        FixedPointCodec.with_safe_modulus(1.0, 16, 1000, headroom_bits=-1)


def test_float64_exactness_limit() -> None:
    # n * Q must stay below 2^53 so decoded sums are exact floats.
    with pytest.raises(ParameterError, match="2\\*\\*53"):
        FixedPointCodec(clip=1.0, scale_bits=50, modulus_bits=64, num_clients=8)
    FixedPointCodec(clip=1.0, scale_bits=50, modulus_bits=64, num_clients=7)


# ------------------------------------------------------------------------------------------------
# Weighted FedAvg


def test_weighted_sum_and_total_weight() -> None:
    codec = FixedPointCodec(clip=1.0, scale_bits=20, modulus_bits=48, num_clients=5, max_weight=1000.0)
    xs = [np.array([0.5, -0.25, 2.0]), np.array([0.1, 0.2, -0.3]), np.array([-1.0, 1.0, 0.0])]
    ws = [10, 250.0, np.int64(1000)]
    generator = rng(7)
    encs = [codec.encode_weighted(x, w, rng=generator) for x, w in zip(xs, ws, strict=True)]
    assert all(e.shape == (4,) for e in encs)
    values, total = codec.decode_weighted(modular_sum(codec, encs), 3)
    assert total == 1260.0  # integer weights are on the grid: exact
    exact = [
        sum(Fraction(float(np.clip(x[j], -1, 1) * float(w))) for x, w in zip(xs, ws, strict=True))
        for j in range(3)
    ]
    for got, want in zip(values.tolist(), exact, strict=True):
        assert abs(Fraction(got) - want) < Fraction(3, 2**20)
    mean = values / total
    np.testing.assert_allclose(
        mean, [(5 + 25 - 1000) / 1260, (-2.5 + 50 + 1000) / 1260, (10 - 75) / 1260], atol=1e-8
    )


def test_weight_validation() -> None:
    codec = FixedPointCodec(clip=1.0, scale_bits=8, modulus_bits=32, num_clients=5, max_weight=10.0)
    x = np.zeros(3)
    for bad in (-1.0, 10.5, math.nan, math.inf, 10**400):
        with pytest.raises(EncodingError):
            codec.encode_weighted(x, bad, rng=rng())
    with pytest.raises(EncodingError):
        codec.encode_weighted(x, True, rng=rng())
    codec.encode_weighted(x, 0, rng=rng())
    codec.encode_weighted(x, 10, rng=rng())
    plain = FixedPointCodec(clip=1.0, scale_bits=8, modulus_bits=32, num_clients=5)
    with pytest.raises(ParameterError):
        plain.encode_weighted(x, 1.0, rng=rng())
    with pytest.raises(ParameterError):
        plain.decode_weighted(np.zeros(2, dtype=np.uint64), 1)
    with pytest.raises(EncodingError):
        codec.decode_weighted(np.zeros(0, dtype=np.uint64), 1)


# ------------------------------------------------------------------------------------------------
# Input validation


@pytest.mark.parametrize(
    "bad",
    [
        np.array([0.0, np.nan]),
        np.array([np.inf, 0.0]),
        np.array([-np.inf], dtype=np.float32),
        np.array([1, 2, 3]),
        np.array([1, 2], dtype=np.uint64),
        np.array([True]),
        np.array([1.0], dtype=np.float16),
        np.array([1 + 0j]),
        np.zeros((2, 2)),
        np.float64(1.0),
        np.zeros(()),
        [0.0, 1.0],
        "1.0",
    ],
    ids=lambda v: f"{type(v).__name__}-{getattr(v, 'dtype', '')}-{getattr(v, 'shape', '')}",
)
def test_encode_rejects_bad_input(bad: object) -> None:
    codec = FixedPointCodec(clip=1.0, scale_bits=8, modulus_bits=16, num_clients=4, max_weight=1.0)
    with pytest.raises(EncodingError):
        codec.encode(bad, rng=rng())  # type: ignore[arg-type]
    with pytest.raises(EncodingError):
        codec.encode_weighted(bad, 1.0, rng=rng())  # type: ignore[arg-type]


def test_encode_error_messages_do_not_echo_values() -> None:
    codec = FixedPointCodec(clip=1.0, scale_bits=8, modulus_bits=16, num_clients=4)
    with pytest.raises(EncodingError) as info:
        codec.encode(np.array([0.123456789, np.nan]), rng=rng())
    assert "0.123456789" not in str(info.value)


def test_rng_must_be_a_generator() -> None:
    codec = FixedPointCodec(clip=1.0, scale_bits=8, modulus_bits=16, num_clients=4)
    with pytest.raises(TypeError):
        codec.encode(np.zeros(2), rng=np.random.RandomState(0))  # type: ignore[arg-type]  # noqa: NPY002
    with pytest.raises(TypeError):
        codec.encode(np.zeros(2), rng=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"clip": 0.0}, ParameterError),
        ({"clip": -1.0}, ParameterError),
        ({"clip": math.nan}, ParameterError),
        ({"clip": math.inf}, ParameterError),
        ({"clip": "1"}, TypeError),
        ({"scale_bits": -1}, ParameterError),
        ({"scale_bits": 63}, ParameterError),
        ({"scale_bits": 8.0}, TypeError),
        ({"modulus_bits": 1}, ParameterError),
        ({"modulus_bits": 65}, ParameterError),
        ({"modulus_bits": True}, TypeError),
        ({"num_clients": 0}, ParameterError),
        ({"num_clients": 2.0}, TypeError),
        ({"max_weight": 0.0}, ParameterError),
        ({"max_weight": -2.0}, ParameterError),
        ({"clip": 1e308, "scale_bits": 62}, ParameterError),
        ({"clip": 1e300, "max_weight": 1e300}, ParameterError),
    ],
)
def test_codec_parameter_validation(kwargs: dict[str, Any], error: type[Exception]) -> None:
    params: dict[str, Any] = {"clip": 1.0, "scale_bits": 8, "modulus_bits": 40, "num_clients": 4} | kwargs
    with pytest.raises(error):
        FixedPointCodec(**params)


def test_decode_validation() -> None:
    codec = FixedPointCodec(clip=1.0, scale_bits=8, modulus_bits=16, num_clients=4)
    ok = np.zeros(3, dtype=np.uint64)
    with pytest.raises(ParameterError):
        codec.decode_sum(ok, 0)
    with pytest.raises(ParameterError):
        codec.decode_sum(ok, 5)
    with pytest.raises(EncodingError):
        codec.decode_sum(ok.astype(np.int64), 1)  # type: ignore[arg-type]
    with pytest.raises(EncodingError):
        codec.decode_sum(np.zeros((1, 3), dtype=np.uint64), 1)
    with pytest.raises(EncodingError):  # not an element of Z_{2^16}
        codec.decode_sum(np.array([2**16], dtype=np.uint64), 1)
    # Range: one summand is at most 256 units; 257 cannot come from one encoding, but can from two.
    with pytest.raises(EncodingError):
        codec.decode_sum(np.array([257], dtype=np.uint64), 1)
    assert codec.decode_sum(np.array([257], dtype=np.uint64), 2).tolist() == [257 / 256]
    assert codec.decode_sum(np.array([2**16 - 256], dtype=np.uint64), 1).tolist() == [-1.0]


def test_decode_64_bit_extremes() -> None:
    codec = FixedPointCodec(clip=1.0, scale_bits=8, modulus_bits=64, num_clients=4)
    for residue in (2**63, 2**63 - 1, 2**63 + 1):  # int64 min/max: abs() would overflow here
        with pytest.raises(EncodingError):
            codec.decode_sum(np.array([residue], dtype=np.uint64), 4)
    assert codec.decode_sum(np.array([2**64 - 1024], dtype=np.uint64), 4).tolist() == [-4.0]


def test_add_validation() -> None:
    codec = FixedPointCodec(clip=1.0, scale_bits=8, modulus_bits=16, num_clients=4)
    a = np.array([65535, 1], dtype=np.uint64)
    assert codec.add(a, a).tolist() == [65534, 2]
    with pytest.raises(EncodingError):
        codec.add(a, a.astype(np.int64))  # type: ignore[arg-type]
    with pytest.raises(EncodingError):
        codec.add(a, a[:1])


def test_numpy_scalar_parameters_are_accepted() -> None:
    codec = FixedPointCodec(clip=np.float32(0.5), scale_bits=8, modulus_bits=16, num_clients=4)  # type: ignore[arg-type]
    assert codec.clip == 0.5 and type(codec.clip) is float


def test_codec_is_frozen_and_hashable() -> None:
    codec = FixedPointCodec(clip=1, scale_bits=8, modulus_bits=16, num_clients=4)
    assert codec == FixedPointCodec(clip=1.0, scale_bits=8, modulus_bits=16, num_clients=4)
    assert isinstance(codec.clip, float)
    assert hash(codec) == hash(FixedPointCodec(clip=1.0, scale_bits=8, modulus_bits=16, num_clients=4))
    with pytest.raises(dataclasses.FrozenInstanceError):
        codec.clip = 2.0  # type: ignore[misc]
    assert codec.resolution == 2.0**-8 and codec.scale == 256.0 and codec.slot_bound == 256
