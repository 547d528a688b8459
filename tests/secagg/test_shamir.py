from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg import shamir
from secagg.errors import EncodingError, ParameterError, ReconstructionError
from secagg.shamir import (
    MAX_SHARE_ID,
    PRIME,
    SHARE_BYTES,
    reconstruct,
    reconstruct_many,
    reconstruct_many_robust,
    reconstruct_robust,
    share_from_bytes,
    share_to_bytes,
    split,
    split_many,
)

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "vectors" / "shamir.json").read_text())

secret_bytes = st.binary(min_size=1, max_size=64)
share_id = st.integers(1, MAX_SHARE_ID)


@st.composite
def sharing_setup(draw: st.DrawFn, max_n: int = 12) -> tuple[bytes, int, list[int]]:
    n = draw(st.integers(1, max_n))
    ids = draw(st.lists(st.integers(1, 50) | share_id, min_size=n, max_size=n, unique=True))
    threshold = draw(st.integers(1, n))
    return draw(secret_bytes), threshold, ids


# ------------------------------------------------------------------------------------------------
# Independent reference arithmetic (deliberately naive; no code shared with secagg.shamir)


def poly_eval(coefficients: Sequence[int], x: int) -> int:
    return sum(c * pow(x, k, PRIME) for k, c in enumerate(coefficients)) % PRIME


def naive_interpolate(points: Sequence[tuple[int, int]]) -> list[int]:
    """Coefficients of the polynomial of degree < len(points) through the points (Lagrange, expanded)."""
    out = [0] * len(points)
    for i, (xi, yi) in enumerate(points):
        basis = [1]
        denominator = 1
        for j, (xj, _) in enumerate(points):
            if j == i:
                continue
            basis = [(a - xj * b) % PRIME for a, b in zip([0, *basis], [*basis, 0], strict=True)]
            denominator = denominator * (xi - xj) % PRIME
        factor = yi * pow(denominator, -1, PRIME) % PRIME
        out = [(o + factor * b) % PRIME for o, b in zip(out, basis, strict=True)]
    return out


def encode_secret(secret: bytes) -> int:
    return int.from_bytes(b"\x01" + secret, "big")


# ------------------------------------------------------------------------------------------------
# Known answers


def test_prime_is_the_documented_mersenne_prime() -> None:
    assert PRIME == 2**521 - 1 == int(VECTORS["prime_hex"], 16)
    assert pow(3, PRIME - 1, PRIME) == 1  # Fermat sanity check (2^521 - 1 is a known Mersenne prime)


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: f"t{c['threshold']}-n{len(c['share_ids'])}")
def test_split_known_answers(case: dict[str, Any]) -> None:
    secret: bytes | int
    if "secret_bytes" in case:
        secret = bytes.fromhex(case["secret_bytes"])
        constant = encode_secret(secret)
    else:
        secret = constant = int(case["secret_int"])
    coefficients = [int(c, 16) for c in case["coefficients"]]
    expected = {int(i): int(v, 16) for i, v in case["shares"].items()}
    got = shamir._split_with_coefficients(secret, coefficients, case["share_ids"])
    assert got == expected
    assert list(got) == case["share_ids"]  # order of the ids is kept
    # The vectors themselves satisfy the documented formula.
    assert all(v == poly_eval([constant, *coefficients], i) for i, v in expected.items())
    for i, blob in case["share_bytes"].items():
        assert share_to_bytes(int(i), expected[int(i)]).hex() == blob
        assert share_from_bytes(bytes.fromhex(blob)) == (int(i), expected[int(i)])
    as_int = isinstance(secret, int)
    first = dict(list(expected.items())[: case["threshold"]])
    assert reconstruct(first, case["threshold"], as_int=as_int) == secret
    assert reconstruct(expected, case["threshold"], as_int=as_int) == secret


# ------------------------------------------------------------------------------------------------
# Correctness and privacy


@given(sharing_setup(), st.randoms(use_true_random=False))
def test_any_threshold_subset_reconstructs(setup: tuple[bytes, int, list[int]], rnd: Any) -> None:
    secret, t, ids = setup
    shares = split(secret, t, ids)
    assert list(shares) == ids and all(0 <= v < PRIME for v in shares.values())
    chosen = rnd.sample(ids, rnd.randint(t, len(ids)))
    subset = {i: shares[i] for i in chosen}
    assert reconstruct(subset, t) == secret
    assert reconstruct(subset, t, as_int=True) == encode_secret(secret)
    assert reconstruct_robust(subset, t) == (secret, frozenset())


@given(sharing_setup(max_n=10), st.integers(0, PRIME - 1))
def test_fewer_than_threshold_shares_fit_every_secret(
    setup: tuple[bytes, int, list[int]], other: int
) -> None:
    secret, t, ids = setup
    if t < 2:
        return
    shares = split(secret, t, ids)
    seen = [(i, shares[i]) for i in ids[: t - 1]]
    # For any candidate B there is a polynomial of degree < t with f(0) = B through the t-1 seen shares,
    # so the seen shares say nothing about the secret. Construct it and confirm split's arithmetic with
    # those very coefficients reproduces exactly what was seen.
    poly = naive_interpolate([(0, other), *seen])
    assert len(poly) == t and poly[0] == other
    assert shamir._split_with_coefficients(other, poly[1:], [i for i, _ in seen]) == dict(seen)


def test_fresh_coefficients_each_time() -> None:
    secret = bytes(32)
    a, b = split(secret, 3, [1, 2, 3]), split(secret, 3, [1, 2, 3])
    assert a != b
    many = split_many([secret, secret], 3, [1, 2, 3])
    assert many[1][0] != many[1][1]


def test_threshold_one_is_replication() -> None:
    shares = split(b"\x07", 1, [4, 9, 11])
    assert set(shares.values()) == {encode_secret(b"\x07")}
    assert reconstruct({9: shares[9]}, 1) == b"\x07"


@pytest.mark.parametrize(
    "secret", [b"\x00", bytes(32), b"\x00\x00\xff", b"\xff" * 64, b"\x01", bytes(range(32))]
)
def test_bytes_secrets_keep_their_length(secret: bytes) -> None:
    assert reconstruct(split(secret, 2, [1, 2, 3]), 2) == secret


@pytest.mark.parametrize("secret", [0, 1, 2**256 - 1, PRIME - 1])
def test_int_secrets(secret: int) -> None:
    shares = split(secret, 3, [5, 6, 7, 8])
    assert reconstruct(shares, 3, as_int=True) == secret
    assert reconstruct_robust(shares, 3, as_int=True) == (secret, frozenset())


def test_int_secret_read_back_as_bytes_is_refused() -> None:
    shares = split(2**300, 2, [1, 2])  # 2^300 has no 0x01 sentinel byte in front
    with pytest.raises(ReconstructionError):
        reconstruct(shares, 2)


# ------------------------------------------------------------------------------------------------
# Strict and robust reconstruction


def corrupt(shares: dict[int, int], ids: Sequence[int], rnd: Any) -> dict[int, int]:
    out = dict(shares)
    for i in ids:
        out[i] = (out[i] + rnd.randrange(1, PRIME)) % PRIME
    return out


def test_too_few_shares_message_has_counts_not_values() -> None:
    shares = split(b"secret", 3, [1, 2, 3, 4])
    with pytest.raises(ReconstructionError, match=r"^2 shares given, 3 needed$"):
        reconstruct({1: shares[1], 2: shares[2]}, 3)
    for fn in (reconstruct_robust,):
        with pytest.raises(ReconstructionError, match="2 shares given, 3 needed"):
            fn({1: shares[1], 2: shares[2]}, 3)
    with pytest.raises(ReconstructionError, match="0 shares given, 1 needed"):
        reconstruct({}, 1)


def test_strict_reconstruct_refuses_inconsistent_shares() -> None:
    shares = split(b"secret", 3, [1, 2, 3, 4, 5])
    bad = dict(shares)
    bad[4] = (bad[4] + 1) % PRIME
    with pytest.raises(ReconstructionError) as info:
        reconstruct(bad, 3)
    message = str(info.value)
    assert all(str(v) not in message and f"{v:x}" not in message for v in bad.values())
    # Exactly threshold shares carry no redundancy, so nothing can be detected there.
    assert reconstruct({i: bad[i] for i in (1, 2, 3)}, 3) == b"secret"


@given(
    st.integers(1, 8),
    st.integers(0, 10),
    st.binary(min_size=1, max_size=64),
    st.randoms(use_true_random=False),
)
def test_robust_corrects_up_to_the_bound(t: int, extra: int, secret: bytes, rnd: Any) -> None:
    n = t + extra
    ids = rnd.sample(range(1, 10_000), n)
    shares = split(secret, t, ids)
    bound = (n - t) // 2
    bad = rnd.sample(ids, rnd.randint(0, bound))
    got, excluded = reconstruct_robust(corrupt(shares, bad, rnd), t)
    assert got == secret
    assert excluded == frozenset(bad)


@given(
    st.integers(1, 8),
    st.integers(1, 10),
    st.binary(min_size=1, max_size=64),
    st.randoms(use_true_random=False),
)
def test_robust_refuses_beyond_the_bound(t: int, extra: int, secret: bytes, rnd: Any) -> None:
    n = t + extra
    ids = rnd.sample(range(1, 10_000), n)
    shares = split(secret, t, ids)
    too_many = rnd.randint((n - t) // 2 + 1, n)
    # Random corruptions: the received word is then (with overwhelming probability over a 521-bit field)
    # far from every polynomial of degree < t, so decoding must fail rather than guess.
    with pytest.raises(ReconstructionError):
        reconstruct_robust(corrupt(shares, rnd.sample(ids, too_many), rnd), t)


def test_robust_at_the_exact_bound() -> None:
    ids = list(range(1, 12))  # n = 11
    shares = split(b"k" * 32, 5, ids)  # bound = (11 - 5) // 2 = 3
    rnd = __import__("random").Random(1)
    assert reconstruct_robust(corrupt(shares, [2, 7, 11], rnd), 5) == (b"k" * 32, frozenset({2, 7, 11}))
    with pytest.raises(ReconstructionError, match="correction bound"):
        reconstruct_robust(corrupt(shares, [2, 7, 11, 4], rnd), 5)


def test_crafted_majority_wins_which_is_the_information_theoretic_limit() -> None:
    # Documented behaviour: beyond the bound, colluding shares that lie on *another* polynomial can make
    # that polynomial the unique closest one. No decoder can do better; the caller must bound the number
    # of corrupt parties (t and n are chosen for exactly that).
    ids = [1, 2, 3, 4, 5]
    honest = shamir._split_with_coefficients(111, [5], ids)
    forged = shamir._split_with_coefficients(222, [9], ids)
    # n = 5, t = 2: up to 1 error is corrected. 4 forged shares are 4 errors from the genuine polynomial
    # but only 1 from the forged one, which is what decoding (correctly, by definition) returns.
    mixed = {i: (forged if i != 1 else honest)[i] for i in ids}
    assert reconstruct_robust(mixed, 2, as_int=True) == (222, frozenset({1}))
    # 3 forged shares: 3 errors from the genuine polynomial, 2 from the forged one; both beyond the bound.
    with pytest.raises(ReconstructionError):
        reconstruct_robust({i: (forged if i in (3, 4, 5) else honest)[i] for i in ids}, 2)


# ------------------------------------------------------------------------------------------------
# Batches


def test_split_many_and_reconstruct_many() -> None:
    secrets_ = [secrets.token_bytes(32) for _ in range(6)] + [b"\x00" * 32]
    ids = [3, 17, 4, 99, 1000, 6]
    shares = split_many(secrets_, 4, ids)
    assert list(shares) == ids and all(len(row) == len(secrets_) for row in shares.values())
    subset = {i: shares[i] for i in (17, 99, 1000, 6)}
    assert reconstruct_many(subset, 4) == secrets_
    assert reconstruct_many(shares, 4) == secrets_
    assert reconstruct_many(shares, 4, as_int=True) == [encode_secret(s) for s in secrets_]
    # Each column is an ordinary sharing.
    assert reconstruct({i: row[2] for i, row in shares.items()}, 4) == secrets_[2]
    assert split_many([], 2, [1, 2]) == {1: [], 2: []}
    assert reconstruct_many({1: [], 2: []}, 2) == []


def test_batch_robust_and_strict_on_corruption() -> None:
    secrets_ = [secrets.token_bytes(32) for _ in range(4)]
    ids = list(range(1, 10))
    shares = split_many(secrets_, 3, ids)  # bound (9 - 3) // 2 = 3
    shares[2][1] = (shares[2][1] + 5) % PRIME
    shares[8][1] = (shares[8][1] + 5) % PRIME
    shares[5][3] = 0 if shares[5][3] else 1
    with pytest.raises(ReconstructionError, match="secret #1"):
        reconstruct_many(shares, 3)
    result = reconstruct_many_robust(shares, 3)
    assert [s for s, _ in result] == secrets_
    assert [bad for _, bad in result] == [frozenset(), frozenset({2, 8}), frozenset(), frozenset({5})]
    as_int = reconstruct_many_robust(shares, 3, as_int=True)
    assert [s for s, _ in as_int] == [encode_secret(s) for s in secrets_]


def test_batch_validation() -> None:
    with pytest.raises(ParameterError, match="rows of different lengths"):
        reconstruct_many({1: [1, 2], 2: [1]}, 2)
    with pytest.raises(ReconstructionError, match="1 shares given, 2 needed"):
        reconstruct_many({1: [1]}, 2)
    with pytest.raises(EncodingError):
        reconstruct_many_robust({1: [PRIME], 2: [1]}, 2)


# ------------------------------------------------------------------------------------------------
# Parameter validation


@pytest.mark.parametrize(
    ("ids", "error"),
    [
        ([0, 1, 2], ParameterError),
        ([-1, 1, 2], ParameterError),
        ([1, 1, 2], ParameterError),
        ([1, 2, MAX_SHARE_ID + 1], ParameterError),
        ([1, 2, PRIME], ParameterError),
        ([1, 2, PRIME + 5], ParameterError),
        ([1, True, 3], TypeError),
        ([1, 2.0, 3], TypeError),
    ],
)
def test_bad_share_ids(ids: list[Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        split(b"s", 2, ids)
    with pytest.raises(error):
        split_many([b"s"], 2, ids)


@pytest.mark.parametrize(
    ("threshold", "error"),
    [(0, ParameterError), (-1, ParameterError), (4, ParameterError), (2.0, TypeError), (True, TypeError)],
)
def test_bad_threshold(threshold: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        split(b"s", threshold, [1, 2, 3])
    with pytest.raises(error):
        split_many([b"s"], threshold, [1, 2, 3])
    if threshold != 4:  # 4 > n is only a split-time error; reconstruct just reports too few shares
        with pytest.raises(error):
            reconstruct({1: 1, 2: 2, 3: 3}, threshold)


@pytest.mark.parametrize(
    ("secret", "error"),
    [
        (b"", ParameterError),
        (b"x" * 65, ParameterError),
        (-1, ParameterError),
        (PRIME, ParameterError),
        ("s", TypeError),
        (True, TypeError),
    ],
)
def test_bad_secrets(secret: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        split(secret, 2, [1, 2, 3])
    with pytest.raises(error):
        split_many([b"ok", secret], 2, [1, 2, 3])


def test_secret_errors_do_not_echo_the_secret() -> None:
    secret = b"TOP-SECRET-" * 6  # 66 bytes: too long
    with pytest.raises(ParameterError) as info:
        split(secret, 2, [1, 2])
    assert "TOP-SECRET" not in str(info.value) and secret.hex() not in str(info.value)
    big = PRIME + 12345
    with pytest.raises(ParameterError) as info:
        split(big, 2, [1, 2])
    assert str(big) not in str(info.value)


def test_bad_shares_in_reconstruct() -> None:
    with pytest.raises(EncodingError):
        reconstruct({1: PRIME, 2: 3}, 2)
    with pytest.raises(EncodingError):
        reconstruct({1: -1, 2: 3}, 2)
    with pytest.raises(ParameterError):
        reconstruct({0: 5, 2: 3}, 2)
    with pytest.raises(TypeError):
        reconstruct({1: "5", 2: 3}, 2)  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        reconstruct([(1, 5), (2, 3)], 2)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Serialisation


@given(share_id, st.integers(0, PRIME - 1))
def test_share_bytes_round_trip(i: int, value: int) -> None:
    blob = share_to_bytes(i, value)
    assert len(blob) == SHARE_BYTES == 74
    assert share_from_bytes(blob) == (i, value)


def test_share_bytes_validation() -> None:
    good = share_to_bytes(5, 12345)
    for blob in (good[:-1], good + b"\x00", b"", bytes(SHARE_BYTES)):  # bytes(74): id 0
        with pytest.raises(EncodingError):
            share_from_bytes(blob)
    with pytest.raises(EncodingError):  # value = 2^528 - 1 > p
        share_from_bytes(good[:8] + b"\xff" * 66)
    with pytest.raises(EncodingError):  # value = p exactly
        share_from_bytes(good[:8] + PRIME.to_bytes(66, "big"))
    for i, v in ((0, 1), (MAX_SHARE_ID + 1, 1), (1, PRIME), (1, -1)):
        with pytest.raises(EncodingError):
            share_to_bytes(i, v)
    with pytest.raises(TypeError):
        share_from_bytes(bytearray(good))  # type: ignore[arg-type]
    with pytest.raises(EncodingError) as info:
        share_to_bytes(3, PRIME + 99)
    assert str(PRIME + 99) not in str(info.value)


def test_moderate_size_is_fast_enough() -> None:
    # n = 100, t = 50: the full-graph SecAgg regime. Kept small so the suite stays fast.
    ids = list(range(1, 101))
    batch = [secrets.token_bytes(32) for _ in range(20)]
    shares = split_many(batch, 50, ids)
    assert reconstruct_many(shares, 50) == batch
    one = corrupt({i: row[0] for i, row in shares.items()}, [3, 40, 77], __import__("random").Random(0))
    assert reconstruct_robust(one, 50) == (batch[0], frozenset({3, 40, 77}))
