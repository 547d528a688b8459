"""A cryptographically secure, seedable random source for differential-privacy noise.

DP guarantees assume the noise is unpredictable to the adversary, so :mod:`dp` never draws noise from
:mod:`random` or :mod:`numpy.random` (Mersenne Twister / PCG are not cryptographic: their state can be
recovered from outputs). :class:`CryptoRNG` is a stream cipher used as a CSPRNG, and it can be seeded so
that simulations and tests are reproducible.

Construction (version 1, frozen by the known-answer test in ``tests/dp/test_rng.py``)::

    seed   = 32 bytes (from :mod:`secrets` by default)
    key    = HKDF-SHA256(ikm=seed, salt=None, info=b"fedshield/dp/rng/v1", length=32)
    stream = AES-256-CTR(key, initial counter block = 16 zero bytes) applied to zero bytes

The stream is consumed strictly sequentially: the object keeps one encryptor and a count of the bytes
used, and every draw takes the next bytes of the stream. Integer words are read little-endian on every
platform:

* ``random_bytes(n)``: the next n bytes.
* ``bits64(n)``: the next 8n bytes as n little-endian ``uint64`` words.
* ``random_signs(n)``: the bits of the next ceil(n / 8) bytes, least significant bit first.
* ``uniform(n)``: ``(word >> 11) * 2**-53`` for n ``uint64`` words, i.e. the top 53 bits of each word as a
  float64 in [0, 1); every multiple of 2**-53 in [0, 1) has probability exactly 2**-53.
* ``integers(high, n)``: rejection sampling on words masked to ``bits = (high - 1).bit_length()`` bits
  (``uint32`` words when ``bits <= 32``, else ``uint64``); a masked word ``< high`` is accepted, so every
  value in [0, high) has probability exactly 1/high (no modulo bias). Each round draws a batch sized from
  the acceptance rate ``high / 2**bits >= 1/2`` and keeps the first accepted words in stream order.
* ``bernoulli(p, n)``: exact for the binary value of ``p``: a lazy comparison of an infinite-precision
  uniform with ``p`` (64 bits at a time, see :func:`_lazy_bernoulli`).
* ``normal(n)``: Box-Muller on ``uniform`` (see the method for its floating-point caveats).

Domain separation. The HKDF ``info`` differs from the secure-aggregation PRG (``secagg.prg`` uses
``b"fedshield/secagg/v1/prg" || domain``; the strings already differ at byte 10, so no secagg domain can
produce this info), so one 32-byte seed never yields the same keystream for DP noise and for masks.
``spawn`` derives child seeds with ``info = b"fedshield/dp/rng/v1/spawn" || encode(context)`` where
``encode`` is an injective, length-prefixed encoding of the context parts; a child's stream is
independent of its parent's (different HKDF outputs of the same PRK) and does not depend on how much of
the parent's stream was used.

Each HKDF key encrypts exactly one stream starting at counter block 0, so a fixed initial block is safe;
the 128-bit CTR counter cannot wrap for any amount of output this object can produce.
"""

from __future__ import annotations

import hashlib
import math
import operator
import secrets
import threading
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Final, NoReturn

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dp.errors import DPParameterError

__all__ = [
    "INT_SEED_PREFIX",
    "MAX_INTEGERS_HIGH",
    "RNG_INFO",
    "SEED_BYTES",
    "SPAWN_INFO",
    "CryptoRNG",
]

#: Length of every seed: 256 bits, the HKDF-SHA256 output and AES-256 key size.
SEED_BYTES: Final = 32
#: HKDF ``info`` of the noise stream; bump the version if the construction ever changes.
RNG_INFO: Final = b"fedshield/dp/rng/v1"
#: HKDF ``info`` prefix for :meth:`CryptoRNG.spawn`.
SPAWN_INFO: Final = b"fedshield/dp/rng/v1/spawn"
#: SHA-256 prefix for :meth:`CryptoRNG.from_int_seed`.
INT_SEED_PREFIX: Final = b"fedshield/dp/rng/v1/int-seed"
#: ``integers(high, n)`` supports ``1 <= high <= 2**63`` (results are int64).
MAX_INTEGERS_HIGH: Final = 1 << 63

_AES_BLOCK_BYTES: Final = 16
_CTR_INITIAL_BLOCK: Final = bytes(_AES_BLOCK_BYTES)
# The cipher is fed bounded chunks of one shared all-zero plaintext; the CTR state carries across calls.
_CHUNK_BYTES: Final = 1 << 20
_ZEROS: Final = memoryview(bytes(_CHUNK_BYTES))
_TWO64: Final = 1 << 64

BoolArray = npt.NDArray[np.bool_]
IndexArray = npt.NDArray[np.intp]
#: ``exact(positions)`` returns the exact probabilities of the elements at ``positions``.
ExactProbabilities = Callable[[IndexArray], Sequence[Fraction]]


def _check_size(size: object, name: str = "size") -> int:
    """A non-negative count; bool and non-integers are rejected."""
    if isinstance(size, bool):
        raise DPParameterError(f"{name} must be an int, not bool")
    try:
        value = operator.index(size)  # type: ignore[arg-type]  # checked at runtime
    except TypeError:
        raise DPParameterError(f"{name} must be an int, not {type(size).__name__}") from None
    if value < 0:
        raise DPParameterError(f"{name} must be >= 0, got {value}")
    return value


def _encode_parts(parts: Sequence[int | bytes]) -> bytes:
    """Injective encoding of a sequence of ints and byte strings (tagged, length-prefixed)."""
    out = bytearray()
    for part in parts:
        if isinstance(part, bool):
            raise DPParameterError("context/seed parts must be int or bytes, not bool")
        if isinstance(part, int):
            payload = part.to_bytes((part.bit_length() + 8) // 8, "big", signed=True)
            out += b"i"
        elif isinstance(part, bytes):
            payload = part
            out += b"b"
        else:
            raise DPParameterError(f"context/seed parts must be int or bytes, not {type(part).__name__}")
        out += len(payload).to_bytes(8, "big") + payload
    return bytes(out)


def _hkdf(seed: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info).derive(seed)


class CryptoRNG:
    """AES-256-CTR keystream (key from HKDF-SHA256 of a 32-byte seed) used as a CSPRNG.

    Args:
        seed: ``None`` (default) for 32 fresh bytes from :mod:`secrets` -- what production noise must
            use -- or exactly 32 bytes for a reproducible stream. Treat a seed like a key: anyone who
            knows it can recompute, and so subtract, the noise.

    Raises:
        DPParameterError: ``seed`` is not ``None`` and not exactly 32 bytes.

    Draws are serialised by a lock, so one instance may be shared by threads, but then the order of
    draws (and hence reproducibility) depends on scheduling: give each thread its own :meth:`spawn` child.
    Instances cannot be copied or pickled (that would duplicate a noise stream).
    """

    __slots__ = ("_bytes_used", "_encryptor", "_lock", "_seed")

    def __init__(self, seed: bytes | None = None) -> None:
        if seed is None:
            seed = secrets.token_bytes(SEED_BYTES)
        # The messages never include the seed itself (errors end up in logs).
        if not isinstance(seed, bytes):
            raise DPParameterError(f"seed must be bytes or None, not {type(seed).__name__}")
        if len(seed) != SEED_BYTES:
            raise DPParameterError(f"seed must be exactly {SEED_BYTES} bytes, got {len(seed)} bytes")
        self._seed = seed
        key = _hkdf(seed, RNG_INFO)
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(_CTR_INITIAL_BLOCK)).encryptor()
        self._bytes_used = 0
        self._lock = threading.Lock()

    @classmethod
    def from_int_seed(cls, *parts: int) -> CryptoRNG:
        """A deterministic stream named by integers, e.g. ``from_int_seed(experiment, run)``.

        The seed is ``SHA-256(b"fedshield/dp/rng/v1/int-seed" || encode(parts))`` (injective encoding).
        This is for reproducible simulations and tests only: small integers are guessable, so the noise
        offers **no secrecy** against anyone who can guess them. Production noise uses ``CryptoRNG()``.
        """
        if not parts:
            raise DPParameterError("from_int_seed needs at least one integer")
        for part in parts:
            if isinstance(part, bool) or not isinstance(part, int):
                raise DPParameterError(f"seed parts must be int, not {type(part).__name__}")
        return cls(hashlib.sha256(INT_SEED_PREFIX + _encode_parts(parts)).digest())

    def spawn(self, *context: int | bytes) -> CryptoRNG:
        """An independent child stream for ``context`` (e.g. ``rng.spawn(round, client_id)``).

        The child seed is ``HKDF-SHA256(seed, info=b"fedshield/dp/rng/v1/spawn" || encode(context))``:
        it depends only on this generator's seed and the context (not on how much of this stream has been
        used), so the same context always gives the same child; use distinct contexts for distinct
        streams. Children of children are fine (``rng.spawn(r).spawn(c)``).
        """
        return CryptoRNG(_hkdf(self._seed, SPAWN_INFO + _encode_parts(context)))

    @property
    def bytes_used(self) -> int:
        """How many keystream bytes have been consumed so far."""
        return self._bytes_used

    def __repr__(self) -> str:
        return f"CryptoRNG(HKDF-SHA256 + AES-256-CTR, bytes_used={self._bytes_used})"

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "CryptoRNG cannot be copied or pickled (that would duplicate a noise stream); use spawn()"
        )

    # -- raw stream ---------------------------------------------------------------------------------

    def _keystream(self, nbytes: int) -> npt.NDArray[np.uint8]:
        """The next ``nbytes`` bytes of the stream, as a fresh uint8 array."""
        # update_into wants block_size - 1 bytes of slack after what it writes.
        buf = np.empty(nbytes + _AES_BLOCK_BYTES - 1, dtype=np.uint8)
        view = memoryview(buf)  # type: ignore[arg-type]  # numpy arrays support the buffer protocol
        with self._lock:
            pos = 0
            while pos < nbytes:  # loops over 1 MiB chunks, not over elements
                take = min(_CHUNK_BYTES, nbytes - pos)
                pos += self._encryptor.update_into(_ZEROS[:take], view[pos:])
            self._bytes_used += nbytes
        return buf[:nbytes]

    def random_bytes(self, n: int) -> bytes:
        """The next ``n`` bytes of the keystream."""
        n = _check_size(n, "n")
        return self._keystream(n).tobytes()

    def bits64(self, size: int) -> npt.NDArray[np.uint64]:
        """``size`` uniform 64-bit words (the next ``8 * size`` bytes, little-endian)."""
        size = _check_size(size)
        return np.frombuffer(self._keystream(8 * size), dtype="<u8").astype(np.uint64)

    def _bits32(self, size: int) -> npt.NDArray[np.uint32]:
        return np.frombuffer(self._keystream(4 * size), dtype="<u4").astype(np.uint32)

    def random_signs(self, size: int) -> BoolArray:
        """``size`` fair coin flips (one keystream bit each, least significant bit first)."""
        size = _check_size(size)
        packed = self._keystream((size + 7) // 8)
        return np.unpackbits(packed, count=size, bitorder="little").astype(np.bool_)

    # -- distributions ------------------------------------------------------------------------------

    def uniform(self, size: int) -> npt.NDArray[np.float64]:
        """``size`` floats uniform on the grid ``{k * 2**-53 : 0 <= k < 2**53}`` of [0, 1)."""
        words = self.bits64(size)
        return (words >> np.uint64(11)).astype(np.float64) * (2.0**-53)

    def integers(self, high: int, size: int) -> npt.NDArray[np.int64]:
        """``size`` integers uniform on ``[0, high)``, exactly (rejection sampling), ``1 <= high <= 2**63``."""
        if isinstance(high, bool) or not isinstance(high, int | np.integer):
            raise DPParameterError(f"high must be an int, not {type(high).__name__}")
        high = int(high)
        if not 1 <= high <= MAX_INTEGERS_HIGH:
            raise DPParameterError(f"high must be in 1..2**63, got {high}")
        size = _check_size(size)
        out = np.zeros(size, dtype=np.int64)
        if high == 1 or size == 0:
            return out
        bits = (high - 1).bit_length()
        power_of_two = high == 1 << bits
        filled = 0
        while filled < size:  # rejection rounds on the shrinking remainder
            need = size - filled
            draw = need if power_of_two else need * (1 << bits) // high + need // 32 + 16
            words: npt.NDArray[np.uint32] | npt.NDArray[np.uint64]
            if bits <= 32:
                words = self._bits32(draw) & np.uint32((1 << bits) - 1)
                accepted = words[words < np.uint32(high)] if high < 1 << 32 else words
            else:
                words = self.bits64(draw) & np.uint64((1 << bits) - 1)
                accepted = words[words < np.uint64(high)]
            take = min(accepted.size, need)
            out[filled : filled + take] = accepted[:take]
            filled += take
        return out

    def bernoulli(self, p: float | npt.ArrayLike, size: int) -> BoolArray:
        """``size`` booleans, True with probability exactly ``p`` (the binary value of the float).

        ``p`` is a float in [0, 1] or an array of ``size`` such floats. The draw compares a uniform with
        infinitely many bits, generated 64 at a time, with ``p``; a second word is needed only on a tie in
        the first 64 bits (probability <= 2**-64 per element).
        """
        size = _check_size(size)
        probs = np.asarray(p, dtype=np.float64)
        if probs.ndim == 0:
            probs = np.full(size, float(probs), dtype=np.float64)
        if probs.shape != (size,):
            raise DPParameterError(
                f"p must be a float or an array of shape ({size},), got shape {probs.shape}"
            )
        if not bool(np.all((probs >= 0.0) & (probs <= 1.0))):  # also rejects NaN
            raise DPParameterError("p must lie in [0, 1]")
        scaled = np.ldexp(probs, 64)  # exact
        floor = np.floor(scaled)
        one = probs == 1.0
        lo = np.where(one, 0.0, floor).astype(np.uint64)
        lo[one] = np.uint64(_TWO64 - 1)
        width = ((scaled != floor) | one).astype(np.uint64)
        return _lazy_bernoulli(self, lo, width, lambda pos: [Fraction(float(probs[i])) for i in pos])

    def normal(self, size: int, *, scale: float = 1.0) -> npt.NDArray[np.float64]:
        """``size`` Gaussian floats with standard deviation ``scale`` (Box-Muller on ``uniform``).

        Box-Muller uses ``u1 = 1 - uniform`` in (0, 1] and ``u2 = uniform``, and returns both
        ``sqrt(-2 ln u1) * cos(2 pi u2)`` and ``... * sin(2 pi u2)`` (interleaved). This is a floating-point
        approximation of the Gaussian: ``|z| <= sqrt(-2 ln 2**-53) ~ 8.57`` (the tails beyond are cut off)
        and the output lies on a non-uniform float grid. For a formally exact DP mechanism on integers use
        :func:`dp.discrete.sample_discrete_gaussian`.
        """
        size = _check_size(size)
        if not (isinstance(scale, int | float) and not isinstance(scale, bool)) or not (
            math.isfinite(scale) and scale >= 0.0
        ):
            raise DPParameterError(f"scale must be a finite float >= 0, got {scale!r}")
        pairs = (size + 1) // 2
        u = self.uniform(2 * pairs)
        radius = np.sqrt(-2.0 * np.log1p(-u[:pairs]))  # ln(1 - uniform), argument in (0, 1]
        angle = (2.0 * np.pi) * u[pairs:]
        out = np.empty(2 * pairs, dtype=np.float64)
        out[0::2] = radius * np.cos(angle)
        out[1::2] = radius * np.sin(angle)
        return out[:size] * float(scale)


def _resolve_tie(first_word: int, p: Fraction, rng: CryptoRNG) -> bool:
    """Is ``(first_word + V) / 2**64 < p`` for a fresh uniform V in [0, 1)? Decided exactly, 64 bits at a time."""
    x = p * _TWO64 - first_word  # U < p  <=>  V < x
    while 0 < x < 1:
        x = x * _TWO64 - int(rng.bits64(1)[0])
    return x >= 1


def _lazy_bernoulli(
    rng: CryptoRNG,
    lo: npt.NDArray[np.uint64],
    width: npt.NDArray[np.uint64],
    exact: ExactProbabilities,
) -> BoolArray:
    """Exact Bernoulli(p_i) from 64-bit bounds on ``p_i`` and an exact fallback.

    Requires ``lo_i <= p_i * 2**64`` and ``p_i * 2**64 <= lo_i + width_i`` (integers). With ``u`` a uniform
    64-bit word (the first 64 bits of a uniform U in [0, 1)), U < p_i is certain when ``u < lo_i`` and
    impossible when ``u >= lo_i + width_i``; otherwise (probability ``width_i / 2**64``) the comparison is
    finished exactly with ``exact([i])`` and further words. So the result is True with probability exactly
    ``p_i``. When ``p_i * 2**64`` is known exactly, ``lo = floor(p * 2**64)`` and ``width = 0`` if it is an
    integer, else 1. The fallback loops in Python, but only over the (almost always empty) tie set.
    """
    u = rng.bits64(lo.size)
    out: BoolArray = u < lo
    ties = np.flatnonzero((u >= lo) & ((u - lo) < width))
    if ties.size:
        for pos, p in zip(ties.tolist(), exact(ties), strict=True):
            out[pos] = _resolve_tie(int(u[pos]), p, rng)
    return out
