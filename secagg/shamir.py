"""t-of-n Shamir secret sharing over GF(2^521 - 1), with Reed-Solomon (Gao) error correction.

Field
-----
The prime is the Mersenne prime p = 2^521 - 1 (the NIST P-521 field prime): its primality is classical
and easy to check, and it comfortably holds a 256-bit seed or X25519 private key. Field elements are
serialised as 66 big-endian bytes.

Secrets
-------
A secret is either an ``int`` in [0, p) or ``bytes`` of length 1..64. Bytes are embedded as
``int.from_bytes(b"\\x01" + secret, "big")``: the 0x01 sentinel keeps leading zero bytes (so a 32-byte
seed comes back as 32 bytes) and 1 + 64 bytes = 520 bits < 521 keeps the value below p. Reconstruction
returns ``bytes`` by default and the raw field element with ``as_int=True``.

Shares
------
The share for a party is ``(id, f(id))`` where f has the secret as constant term and ``threshold - 1``
coefficients drawn uniformly from GF(p) with :func:`secrets.randbelow`. Share ids are the client ids,
ints in 1..2^64-1 (nonzero, distinct; 0 would be the secret itself). All loops run over coefficients
and ids, never over bytes of a secret: Python ints do the 521-bit arithmetic.

Reconstruction
--------------
* :func:`reconstruct` / :func:`reconstruct_many` are strict: given more than ``threshold`` shares they
  check that *all* of them lie on one polynomial of degree < threshold and raise
  :class:`~secagg.errors.ReconstructionError` otherwise -- silently ignoring a bad share would hide an
  attack.
* :func:`reconstruct_robust` / :func:`reconstruct_many_robust` treat m >= threshold shares as a
  Reed-Solomon codeword of dimension ``threshold`` and decode it with Gao's algorithm (extended Euclid on
  polynomials, O(m^2) field operations), correcting up to ``floor((m - threshold) / 2)`` wrong shares
  and reporting their ids. This is the information-theoretic limit: with more wrong shares, decoding
  fails (ReconstructionError) unless the wrong shares were *crafted* to lie close to another polynomial,
  in which case no decoder can tell which polynomial is genuine. With m == threshold there is no
  redundancy and nothing can be checked.
* Batch variants share the Lagrange coefficients between secrets that were shared to the same ids, which
  is the common case (the server reconstructs one secret per client from the same set of responders).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from secrets import randbelow
from typing import Final, Literal, TypeAlias, overload

from secagg.errors import EncodingError, ParameterError, ReconstructionError

__all__ = [
    "FIELD_BYTES",
    "MAX_SECRET_BYTES",
    "MAX_SHARE_ID",
    "PRIME",
    "SHARE_BYTES",
    "reconstruct",
    "reconstruct_many",
    "reconstruct_many_robust",
    "reconstruct_robust",
    "share_from_bytes",
    "share_to_bytes",
    "split",
    "split_many",
]

#: The field modulus, the Mersenne prime 2^521 - 1.
PRIME: Final = (1 << 521) - 1
#: Bytes of one serialised field element.
FIELD_BYTES: Final = 66
#: Longest byte-string secret (1 sentinel byte + 64 bytes stays below 2^521 - 1).
MAX_SECRET_BYTES: Final = 64
#: Share ids are client ids in 1..MAX_SHARE_ID; they serialise as 8 bytes.
MAX_SHARE_ID: Final = (1 << 64) - 1
_ID_BYTES: Final = 8
#: Bytes of one serialised share: 8-byte big-endian id, then the 66-byte big-endian value.
SHARE_BYTES: Final = _ID_BYTES + FIELD_BYTES

_SENTINEL: Final = b"\x01"

Secret: TypeAlias = bytes | int
# Polynomials: coefficients lowest degree first, no trailing zeros ([] is the zero polynomial).
_Poly: TypeAlias = list[int]


# --------------------------------------------------------------------------------------------------
# Validation and secret encoding


def _is_int(value: object) -> bool:
    # bool is an int subclass; True as an id or threshold is a bug, not a 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_threshold(threshold: object) -> int:
    if not _is_int(threshold):
        raise TypeError(f"threshold must be an int, got {type(threshold).__name__}")
    assert isinstance(threshold, int)
    if threshold < 1:
        raise ParameterError(f"threshold must be >= 1, got {threshold}")
    return threshold


def _check_ids(ids: Sequence[object]) -> list[int]:
    out: list[int] = []
    for share_id in ids:
        if not _is_int(share_id):
            raise TypeError(f"share ids must be ints, got {type(share_id).__name__}")
        assert isinstance(share_id, int)
        if not 1 <= share_id <= MAX_SHARE_ID:
            # Ids are public client ids, so naming the offending one is safe and useful.
            raise ParameterError(f"share id {share_id} is outside 1..2^64-1")
        out.append(share_id)
    if len(set(out)) != len(out):
        raise ParameterError("share ids must be distinct")
    return out


def _secret_to_int(secret: object) -> int:
    # Messages describe the secret's type/length only, never its value.
    if isinstance(secret, bytes):
        if not 1 <= len(secret) <= MAX_SECRET_BYTES:
            raise ParameterError(
                f"a bytes secret must be 1..{MAX_SECRET_BYTES} bytes, got {len(secret)} bytes"
            )
        return int.from_bytes(_SENTINEL + secret, "big")
    if _is_int(secret):
        assert isinstance(secret, int)
        if not 0 <= secret < PRIME:
            raise ParameterError("an int secret must lie in [0, 2^521 - 1)")
        return secret
    raise TypeError(f"a secret must be bytes or int, got {type(secret).__name__}")


def _int_to_secret_bytes(value: int) -> bytes:
    length = (value.bit_length() + 7) // 8
    raw = value.to_bytes(length, "big")
    if not 2 <= length <= MAX_SECRET_BYTES + 1 or raw[:1] != _SENTINEL:
        raise ReconstructionError(
            "the reconstructed value is not a byte-string secret (shares of an int secret, or wrong shares)"
        )
    return raw[1:]


def _check_shares(shares: Mapping[int, int], threshold: int) -> tuple[list[int], list[int]]:
    """Validated (ids, values), ids sorted so results do not depend on dict order."""
    if not isinstance(shares, Mapping):
        raise TypeError(f"shares must be a mapping id -> value, got {type(shares).__name__}")
    ids = sorted(_check_ids(list(shares)))
    if len(ids) < threshold:
        raise ReconstructionError(f"{len(ids)} shares given, {threshold} needed")
    values = [_check_value(shares[i]) for i in ids]
    return ids, values


def _check_value(value: object) -> int:
    if not _is_int(value):
        raise TypeError(f"share values must be ints, got {type(value).__name__}")
    assert isinstance(value, int)
    if not 0 <= value < PRIME:
        raise EncodingError("a share value lies outside the field [0, 2^521 - 1)")
    return value


# --------------------------------------------------------------------------------------------------
# Field and polynomial arithmetic


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Inverses of nonzero field elements with one modular exponentiation (Montgomery's trick)."""
    prefix = [1] * (len(values) + 1)
    for i, v in enumerate(values):
        prefix[i + 1] = prefix[i] * v % PRIME
    inv = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = prefix[i] * inv % PRIME
        inv = inv * values[i] % PRIME
    return out


def _horner(coefficients: Sequence[int], x: int) -> int:
    acc = 0
    for c in reversed(coefficients):
        acc = (acc * x + c) % PRIME
    return acc


def _trim(a: _Poly) -> _Poly:
    while a and a[-1] == 0:
        a.pop()
    return a


def _poly_sub(a: _Poly, b: _Poly) -> _Poly:
    n = max(len(a), len(b))
    a_ext = a + [0] * (n - len(a))
    b_ext = b + [0] * (n - len(b))
    return _trim([(x - y) % PRIME for x, y in zip(a_ext, b_ext, strict=True)])


def _poly_mul(a: _Poly, b: _Poly) -> _Poly:
    if not a or not b:
        return []
    out = [0] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] = (out[i + j] + x * y) % PRIME
    return _trim(out)


def _poly_divmod(a: _Poly, b: _Poly) -> tuple[_Poly, _Poly]:
    """Quotient and remainder of a / b for a nonzero (trimmed) divisor b."""
    rem = list(a)
    db = len(b) - 1
    if len(rem) <= db:
        return [], _trim(rem)
    inv_lead = pow(b[-1], -1, PRIME)
    quot = [0] * (len(rem) - db)
    for i in range(len(rem) - 1 - db, -1, -1):
        coef = rem[i + db] * inv_lead % PRIME
        quot[i] = coef
        if coef:
            for j in range(db + 1):
                rem[i + j] = (rem[i + j] - coef * b[j]) % PRIME
    return _trim(quot), _trim(rem[:db])


def _vanishing_poly(xs: Sequence[int]) -> _Poly:
    """prod_i (X - x_i), built one linear factor at a time (O(m^2))."""
    poly = [1]
    for x in xs:
        shifted = [0, *poly]  # X * poly
        for i, c in enumerate(poly):
            shifted[i] = (shifted[i] - x * c) % PRIME
        poly = shifted
    return poly


def _inverse_barycentric_weights(xs: Sequence[int]) -> list[int]:
    """1 / prod_{j != i} (x_i - x_j) for each i: the id-only part of every Lagrange coefficient."""
    dens = []
    for i, xi in enumerate(xs):
        d = 1
        for j, xj in enumerate(xs):
            if j != i:
                d = d * (xi - xj) % PRIME
        dens.append(d)
    return _batch_inverse(dens)


def _lagrange_at(xs: Sequence[int], inv_weights: Sequence[int], z: int) -> list[int]:
    """Coefficients c_i with f(z) = sum_i c_i f(x_i) for every f of degree < len(xs); z not in xs."""
    diffs = [(z - x) % PRIME for x in xs]
    full = 1
    for d in diffs:
        full = full * d % PRIME
    return [full * a % PRIME * w % PRIME for a, w in zip(_batch_inverse(diffs), inv_weights, strict=True)]


def _interpolate(xs: Sequence[int], ys: Sequence[int]) -> _Poly:
    """The unique polynomial of degree < len(xs) through the points (Lagrange form expanded, O(m^2))."""
    vanishing = _vanishing_poly(xs)
    out = [0] * len(xs)
    for x, y, w in zip(xs, ys, _inverse_barycentric_weights(xs), strict=True):
        scale = y * w % PRIME
        if not scale:
            continue
        # Synthetic division: basis = vanishing / (X - x), coefficients from the top down.
        carry = 0
        for k in range(len(xs) - 1, -1, -1):
            carry = (vanishing[k + 1] + carry * x) % PRIME
            out[k] = (out[k] + scale * carry) % PRIME
    return _trim(out)


def _gao_decode(xs: Sequence[int], ys: Sequence[int], threshold: int) -> tuple[int, frozenset[int]]:
    """Reed-Solomon decoding (Gao 2003): the polynomial of degree < threshold within distance
    floor((m - threshold) / 2) of the received shares, as (f(0), ids that disagree with it)."""
    m = len(xs)
    r0, r1 = _vanishing_poly(xs), _interpolate(xs, ys)
    v0: _Poly = []
    v1: _Poly = [1]
    # Partial extended Euclid on (g0, g1) until the remainder degree drops below (m + threshold) / 2.
    while 2 * (len(r1) - 1) >= m + threshold:
        quot, rem = _poly_divmod(r0, r1)
        r0, r1 = r1, rem
        v0, v1 = v1, _poly_sub(v0, _poly_mul(quot, v1))
    f, rem = _poly_divmod(r1, v1)
    if rem or len(f) > threshold:
        raise ReconstructionError(
            f"shares are inconsistent beyond the correction bound ({(m - threshold) // 2} of {m} shares)"
        )
    bad = frozenset(x for x, y in zip(xs, ys, strict=True) if _horner(f, x) != y)
    if len(bad) > (m - threshold) // 2:  # cannot happen for a correct decoder; cheap to re-check
        raise ReconstructionError(
            f"shares are inconsistent beyond the correction bound ({(m - threshold) // 2} of {m} shares)"
        )
    return (f[0] if f else 0), bad


# --------------------------------------------------------------------------------------------------
# Sharing


def _split_with_coefficients(
    secret: Secret, coefficients: Sequence[int], share_ids: Sequence[int]
) -> dict[int, int]:
    """Shares of ``secret`` under f(X) = secret + sum_k coefficients[k-1] X^k (threshold = len + 1).

    The public functions draw the coefficients; this one takes them explicitly so the arithmetic can be
    pinned by known-answer vectors. It does not insist on at least ``threshold`` ids (tests evaluate a
    polynomial at fewer points); :func:`split` does.
    """
    for c in coefficients:
        _check_value(c)
    poly = [_secret_to_int(secret), *coefficients]
    return {i: _horner(poly, i) for i in _check_ids(share_ids)}


def split(secret: Secret, threshold: int, share_ids: Sequence[int]) -> dict[int, int]:
    """Share ``secret`` so that any ``threshold`` of the returned shares reconstruct it.

    Args:
        secret: 1..64 bytes, or an int in [0, 2^521 - 1).
        threshold: t with 1 <= t <= len(share_ids).
        share_ids: distinct ints in 1..2^64-1 (the client ids).

    Returns:
        ``{id: f(id)}`` in the order of ``share_ids``.

    Raises:
        TypeError: wrongly typed arguments.
        ParameterError: bad secret length/range, threshold, or ids (zero, duplicate, out of range).
    """
    t = _check_threshold(threshold)
    if t > len(share_ids):
        raise ParameterError(f"threshold {t} exceeds the number of share ids ({len(share_ids)})")
    return _split_with_coefficients(secret, [randbelow(PRIME) for _ in range(t - 1)], share_ids)


def split_many(secrets: Sequence[Secret], threshold: int, share_ids: Sequence[int]) -> dict[int, list[int]]:
    """Share several secrets to the same ids at once: ``{id: [share of secrets[0], ...]}``.

    Each secret gets its own independent random polynomial; see :func:`split` for the arguments.
    """
    t = _check_threshold(threshold)
    ids = _check_ids(share_ids)
    if t > len(ids):
        raise ParameterError(f"threshold {t} exceeds the number of share ids ({len(ids)})")
    polys = [[_secret_to_int(s), *(randbelow(PRIME) for _ in range(t - 1))] for s in secrets]
    return {i: [_horner(poly, i) for poly in polys] for i in ids}


# --------------------------------------------------------------------------------------------------
# Reconstruction


class _Plan:
    """Lagrange coefficients for one id set: f(0) and f(extra id) from the first ``threshold`` ids."""

    __slots__ = ("base", "extra", "at_zero", "at_extra")

    def __init__(self, ids: Sequence[int], threshold: int) -> None:
        self.base = list(ids[:threshold])
        self.extra = list(ids[threshold:])
        inv_weights = _inverse_barycentric_weights(self.base)
        self.at_zero = _lagrange_at(self.base, inv_weights, 0)
        self.at_extra = [_lagrange_at(self.base, inv_weights, z) for z in self.extra]

    def evaluate(self, values: Sequence[int]) -> int | None:
        """f(0) if all values lie on one polynomial of degree < threshold, else None."""
        t = len(self.base)
        base_values = values[:t]
        for coeffs, observed in zip(self.at_extra, values[t:], strict=True):
            if sum(c * y for c, y in zip(coeffs, base_values, strict=True)) % PRIME != observed:
                return None
        return sum(c * y for c, y in zip(self.at_zero, base_values, strict=True)) % PRIME


def _finish(value: int, as_int: bool) -> bytes | int:
    return value if as_int else _int_to_secret_bytes(value)


def _inconsistent() -> ReconstructionError:
    return ReconstructionError(
        "shares are inconsistent (not all on one polynomial of degree < threshold); "
        "use reconstruct_robust to locate and exclude bad shares"
    )


@overload
def reconstruct(shares: Mapping[int, int], threshold: int, *, as_int: Literal[False] = False) -> bytes: ...
@overload
def reconstruct(shares: Mapping[int, int], threshold: int, *, as_int: Literal[True]) -> int: ...
@overload
def reconstruct(shares: Mapping[int, int], threshold: int, *, as_int: bool) -> bytes | int: ...
def reconstruct(shares: Mapping[int, int], threshold: int, *, as_int: bool = False) -> bytes | int:
    """The secret from ``{id: share}``; all given shares must be consistent.

    Raises:
        ReconstructionError: fewer than ``threshold`` shares (the message gives both counts), shares not
            on one polynomial of degree < threshold, or (bytes output) a value that is no bytes secret.
        ParameterError / TypeError / EncodingError: malformed ids, threshold or share values.
    """
    t = _check_threshold(threshold)
    ids, values = _check_shares(shares, t)
    secret = _Plan(ids, t).evaluate(values)
    if secret is None:
        raise _inconsistent()
    return _finish(secret, as_int)


@overload
def reconstruct_robust(
    shares: Mapping[int, int], threshold: int, *, as_int: Literal[False] = False
) -> tuple[bytes, frozenset[int]]: ...
@overload
def reconstruct_robust(
    shares: Mapping[int, int], threshold: int, *, as_int: Literal[True]
) -> tuple[int, frozenset[int]]: ...
@overload
def reconstruct_robust(
    shares: Mapping[int, int], threshold: int, *, as_int: bool
) -> tuple[bytes | int, frozenset[int]]: ...
def reconstruct_robust(
    shares: Mapping[int, int], threshold: int, *, as_int: bool = False
) -> tuple[bytes | int, frozenset[int]]:
    """The secret and the ids of the shares that had to be excluded.

    Corrects up to ``floor((m - threshold) / 2)`` wrong shares among m (see the module docstring).

    Raises:
        ReconstructionError: fewer than ``threshold`` shares, or more wrong shares than correctable.
    """
    t = _check_threshold(threshold)
    ids, values = _check_shares(shares, t)
    secret = _Plan(ids, t).evaluate(values)  # fast path: everything consistent
    if secret is not None:
        return _finish(secret, as_int), frozenset()
    value, bad = _gao_decode(ids, values, t)
    return _finish(value, as_int), bad


def _check_batch(shares: Mapping[int, Sequence[int]], threshold: int) -> tuple[list[int], list[list[int]]]:
    """Validated (ids, per-secret value columns)."""
    if not isinstance(shares, Mapping):
        raise TypeError(f"shares must be a mapping id -> list of values, got {type(shares).__name__}")
    ids = sorted(_check_ids(list(shares)))
    if len(ids) < threshold:
        raise ReconstructionError(f"{len(ids)} shares given, {threshold} needed")
    rows = [list(shares[i]) for i in ids]
    count = len(rows[0])
    if any(len(row) != count for row in rows):
        raise ParameterError("every id must hold one share per secret (rows of different lengths)")
    columns = [[_check_value(row[k]) for row in rows] for k in range(count)]
    return ids, columns


@overload
def reconstruct_many(
    shares: Mapping[int, Sequence[int]], threshold: int, *, as_int: Literal[False] = False
) -> list[bytes]: ...
@overload
def reconstruct_many(
    shares: Mapping[int, Sequence[int]], threshold: int, *, as_int: Literal[True]
) -> list[int]: ...
@overload
def reconstruct_many(
    shares: Mapping[int, Sequence[int]], threshold: int, *, as_int: bool
) -> list[bytes] | list[int]: ...
def reconstruct_many(
    shares: Mapping[int, Sequence[int]], threshold: int, *, as_int: bool = False
) -> list[bytes] | list[int]:
    """Strict reconstruction of every secret in a :func:`split_many` output ``{id: [share_0, ...]}``.

    The Lagrange coefficients are computed once for the id set, so each further secret costs
    O(number of shares) field operations.

    Raises:
        ReconstructionError: too few ids, or secret #k's shares are inconsistent (k is named).
    """
    t = _check_threshold(threshold)
    ids, columns = _check_batch(shares, t)
    plan = _Plan(ids, t)
    out: list[int] = []
    for k, column in enumerate(columns):
        secret = plan.evaluate(column)
        if secret is None:
            raise ReconstructionError(
                f"the shares of secret #{k} are inconsistent; use reconstruct_many_robust"
            )
        out.append(secret)
    if as_int:
        return out
    return [_int_to_secret_bytes(v) for v in out]


@overload
def reconstruct_many_robust(
    shares: Mapping[int, Sequence[int]], threshold: int, *, as_int: Literal[False] = False
) -> list[tuple[bytes, frozenset[int]]]: ...
@overload
def reconstruct_many_robust(
    shares: Mapping[int, Sequence[int]], threshold: int, *, as_int: Literal[True]
) -> list[tuple[int, frozenset[int]]]: ...
@overload
def reconstruct_many_robust(
    shares: Mapping[int, Sequence[int]], threshold: int, *, as_int: bool
) -> list[tuple[bytes, frozenset[int]]] | list[tuple[int, frozenset[int]]]: ...
def reconstruct_many_robust(
    shares: Mapping[int, Sequence[int]], threshold: int, *, as_int: bool = False
) -> list[tuple[bytes, frozenset[int]]] | list[tuple[int, frozenset[int]]]:
    """:func:`reconstruct_robust` for every secret of a batch; consistent secrets take the fast path.

    Raises:
        ReconstructionError: too few ids, or some secret has more wrong shares than correctable.
    """
    t = _check_threshold(threshold)
    ids, columns = _check_batch(shares, t)
    plan = _Plan(ids, t)
    decoded: list[tuple[int, frozenset[int]]] = []
    for column in columns:
        secret = plan.evaluate(column)
        decoded.append((secret, frozenset()) if secret is not None else _gao_decode(ids, column, t))
    if as_int:
        return decoded
    return [(_int_to_secret_bytes(v), bad) for v, bad in decoded]


# --------------------------------------------------------------------------------------------------
# Serialisation


def share_to_bytes(share_id: int, value: int) -> bytes:
    """Serialise one share as ``id (8 bytes, big-endian) || value (66 bytes, big-endian)``.

    Raises:
        EncodingError: id outside 1..2^64-1 or value outside [0, p).
    """
    if not _is_int(share_id) or not _is_int(value):
        raise TypeError("share id and value must be ints")
    if not 1 <= share_id <= MAX_SHARE_ID:
        raise EncodingError(f"share id {share_id} is outside 1..2^64-1")
    if not 0 <= value < PRIME:
        raise EncodingError("a share value lies outside the field [0, 2^521 - 1)")
    return share_id.to_bytes(_ID_BYTES, "big") + value.to_bytes(FIELD_BYTES, "big")


def share_from_bytes(data: bytes) -> tuple[int, int]:
    """Parse :func:`share_to_bytes` output back into ``(id, value)``.

    Raises:
        EncodingError: wrong length (must be exactly 74 bytes), id 0, or value >= p.
    """
    if not isinstance(data, bytes):
        raise TypeError(f"a serialised share must be bytes, got {type(data).__name__}")
    if len(data) != SHARE_BYTES:
        raise EncodingError(f"a serialised share is {SHARE_BYTES} bytes, got {len(data)}")
    share_id = int.from_bytes(data[:_ID_BYTES], "big")
    value = int.from_bytes(data[_ID_BYTES:], "big")
    if share_id == 0:
        raise EncodingError("a serialised share has id 0")
    if value >= PRIME:
        raise EncodingError("a serialised share value lies outside the field [0, 2^521 - 1)")
    return share_id, value
