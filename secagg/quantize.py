"""Fixed-point encoding of float vectors into Z_{2^b}, so that masked modular sums decode exactly.

Parametrisation
---------------
``FixedPointCodec(clip, scale_bits, modulus_bits, num_clients, max_weight=None)``:

* every input coordinate is clipped to ``[-clip, clip]``;
* it is multiplied by the scale ``2**scale_bits`` -- a power of two, so scaling is *exact* in binary
  floating point and the only error in the whole pipeline is the rounding step below;
* it is rounded stochastically to an integer q with ``E[q] = y`` and ``|q - y| < 1``;
* q is embedded in Z_{2^b} two's-complement style (``q mod 2^b``), and a residue r of a sum is read back
  as the signed integer in ``[-2^(b-1), 2^(b-1))``.

Bound (why ``modulus_bits`` must be at least :meth:`FixedPointCodec.required_modulus_bits`)
-----------------------------------------------------------------------------------------
Let ``Q = ceil(M * 2**scale_bits)`` be the largest magnitude a single encoded slot can take, where
``M = clip`` (unweighted) or ``M = max(max_weight * clip, max_weight)`` (weighted: the products
``w * x`` and the weight slot itself). Q is attained: a client at the clip rounds up to Q with positive
probability (with certainty when ``M * 2**scale_bits`` is an integer). The sum of n encodings therefore
lies in ``[-n*Q, n*Q]``, and it is recovered exactly from its residue iff ``n*Q <= 2^(b-1) - 1``, i.e.::

    b >= required_modulus_bits = (n * Q).bit_length() + 1

Anything smaller can wrap in the worst case, so the constructor rejects it and names the safe b. We
additionally require ``n * Q < 2**53`` so that every legitimate sum converts to float64 without rounding:
``decode_sum`` is then exact and the end-to-end error is only the rounding, strictly less than
``num_summands / 2**scale_bits`` in every coordinate (each of the n roundings moves by < 1 unit).

Stochastic rounding randomness
------------------------------
Rounding takes its uniforms from a caller-provided source: :class:`secagg.prg.KeystreamUniforms` (AES-CTR,
the default of :func:`secagg.secure_sum`) or a :class:`numpy.random.Generator`. They need not be secret:
rounding exists to make the quantiser unbiased (so quantisation error averages out over clients and
rounds instead of accumulating a drift), not to hide anything. The rounded values themselves are hidden
by the pairwise masks, and privacy against the server comes from masking and any DP noise, which must be
drawn from a CSPRNG elsewhere. Knowing the uniforms tells an observer nothing about ``x`` without also
seeing the client's unmasked encoding. fedshield still draws them from the CSPRNG by default, so no
randomness that touches a private value comes from a non-cryptographic generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from secagg.errors import EncodingError, ParameterError
from secagg.prg import KeystreamUniforms

__all__ = ["MAX_MODULUS_BITS", "MAX_SCALE_BITS", "FixedPointCodec"]

#: Encodings are uint64 words, so the ring is Z_{2^b} with b <= 64.
MAX_MODULUS_BITS: Final = 64
#: Keeps ``x / 2**scale_bits`` far from float64 underflow and the scale itself exact.
MAX_SCALE_BITS: Final = 62
# float64 represents every integer of magnitude < 2^53 exactly; sums beyond that would not decode exactly.
_FLOAT64_EXACT_INT: Final = 1 << 53


def _slot_bound(magnitude: float, scale_bits: int) -> int:
    """Q = ceil(magnitude * 2^scale_bits), computed exactly (the product by a power of two is exact)."""
    try:
        scaled = math.ldexp(magnitude, scale_bits)
    except OverflowError:  # ldexp raises instead of returning inf
        scaled = math.inf
    if not math.isfinite(scaled):
        raise ParameterError("the clipping bound times 2**scale_bits overflows float64")
    return math.ceil(scaled)


def _check_int(name: str, value: object) -> int:
    # bool is an int subclass; a stray True would silently mean 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


def _check_positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        as_float = float(value)
    except OverflowError:
        as_float = math.inf
    if not math.isfinite(as_float) or as_float <= 0.0:
        raise ParameterError(f"{name} must be finite and > 0, got {value!r}")
    return as_float


def _stochastic_round(y: npt.NDArray[np.float64], u: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Round each y to floor(y) or floor(y)+1, upwards iff u < frac(y); so E[q] = y when u ~ U[0, 1).

    ``y - floor(y)`` is exact in float64, hence P(round up) = frac(y) up to the 2^-53 grid of the
    uniforms. Callers guarantee |y| < 2^53 so floor and the int64 cast are exact.
    """
    low = np.floor(y)
    up = u < (y - low)
    return low.astype(np.int64) + up.astype(np.int64)


@dataclass(frozen=True, slots=True)
class FixedPointCodec:
    """Clip, scale by ``2**scale_bits``, stochastically round and embed into Z_{2^modulus_bits}.

    Attributes:
        clip: per-coordinate clipping bound C > 0; inputs are clipped to [-C, C].
        scale_bits: k in 0..62; the fixed-point resolution is 2^-k.
        modulus_bits: b in 2..64; encodings and their sums live in Z_{2^b} (as uint64).
        num_clients: the most encodings that will ever be summed (n >= 1); sizes the headroom.
        max_weight: None for plain sums; W > 0 to allow :meth:`encode_weighted` with weights in [0, W].

    See the module docstring for the exact no-wrap bound that construction enforces.
    """

    clip: float
    scale_bits: int
    modulus_bits: int
    num_clients: int
    max_weight: float | None = None

    def __post_init__(self) -> None:
        # Normalise ints to floats so equal codecs compare and hash equal.
        object.__setattr__(self, "clip", _check_positive_float("clip", self.clip))
        if self.max_weight is not None:
            object.__setattr__(self, "max_weight", _check_positive_float("max_weight", self.max_weight))
        scale_bits = _check_int("scale_bits", self.scale_bits)
        modulus_bits = _check_int("modulus_bits", self.modulus_bits)
        num_clients = _check_int("num_clients", self.num_clients)
        if not 0 <= scale_bits <= MAX_SCALE_BITS:
            raise ParameterError(f"scale_bits must be in 0..{MAX_SCALE_BITS}, got {scale_bits}")
        if not 2 <= modulus_bits <= MAX_MODULUS_BITS:
            raise ParameterError(f"modulus_bits must be in 2..{MAX_MODULUS_BITS}, got {modulus_bits}")
        if num_clients < 1:
            raise ParameterError(f"num_clients must be >= 1, got {num_clients}")
        worst = num_clients * self.slot_bound
        if worst >= _FLOAT64_EXACT_INT:
            raise ParameterError(
                f"num_clients * ceil(bound * 2**scale_bits) = {worst} is not below 2**53, so sums would not "
                "decode exactly in float64; lower scale_bits or clip"
            )
        safe = worst.bit_length() + 1
        if modulus_bits < safe:
            raise ParameterError(
                f"modulus_bits={modulus_bits} is too small: the sum of {num_clients} encodings can reach "
                f"+/-{worst} and would wrap; use modulus_bits >= {safe}"
            )

    # ----------------------------------------------------------------------------------------------
    # Bounds

    @staticmethod
    def _magnitude(clip: float, max_weight: float | None) -> float:
        if max_weight is None:
            return clip
        # Products w*x are at most max_weight*clip (float multiplication is monotone, so the rounded
        # product of the extremes bounds every rounded product); the weight slot itself is at most W.
        return max(max_weight * clip, max_weight)

    @property
    def slot_bound(self) -> int:
        """Q: the largest magnitude of one encoded slot (as a signed integer before reduction)."""
        return _slot_bound(self._magnitude(self.clip, self.max_weight), self.scale_bits)

    @property
    def scale(self) -> float:
        """The fixed-point scale 2^scale_bits."""
        return math.ldexp(1.0, self.scale_bits)

    @property
    def resolution(self) -> float:
        """One fixed-point unit, 2^-scale_bits; each rounding errs by strictly less than this."""
        return math.ldexp(1.0, -self.scale_bits)

    @property
    def _mask(self) -> np.uint64:
        return np.uint64((1 << self.modulus_bits) - 1)

    @classmethod
    def required_modulus_bits(
        cls, clip: float, scale_bits: int, num_clients: int, max_weight: float | None = None
    ) -> int:
        """The smallest b such that the sum of ``num_clients`` encodings can never wrap in Z_{2^b}.

        Equals ``(num_clients * Q).bit_length() + 1`` with Q as in the module docstring. (It may exceed
        64, in which case no codec with these parameters exists.)
        """
        clip_f = _check_positive_float("clip", clip)
        weight_f = None if max_weight is None else _check_positive_float("max_weight", max_weight)
        k = _check_int("scale_bits", scale_bits)
        n = _check_int("num_clients", num_clients)
        if not 0 <= k <= MAX_SCALE_BITS:
            raise ParameterError(f"scale_bits must be in 0..{MAX_SCALE_BITS}, got {k}")
        if n < 1:
            raise ParameterError(f"num_clients must be >= 1, got {n}")
        return (n * _slot_bound(cls._magnitude(clip_f, weight_f), k)).bit_length() + 1

    @classmethod
    def with_safe_modulus(
        cls,
        clip: float,
        scale_bits: int,
        num_clients: int,
        max_weight: float | None = None,
        *,
        headroom_bits: int = 0,
    ) -> FixedPointCodec:
        """A codec with the smallest safe ``modulus_bits`` plus ``headroom_bits`` (capped at 64).

        Headroom is not needed for correctness, but it is what lets :meth:`decode_sum` notice a sum that
        still contains a mask: a uniform residue passes the range check with probability about
        ``2^(required - modulus_bits)``, so each headroom bit halves the chance that a protocol bug goes
        unnoticed.
        """
        bits = cls.required_modulus_bits(clip, scale_bits, num_clients, max_weight)
        if _check_int("headroom_bits", headroom_bits) < 0:
            raise ParameterError(f"headroom_bits must be >= 0, got {headroom_bits}")
        return cls(clip, scale_bits, min(bits + headroom_bits, MAX_MODULUS_BITS), num_clients, max_weight)

    # ----------------------------------------------------------------------------------------------
    # Encoding

    @staticmethod
    def _as_float_vector(x: object, name: str) -> npt.NDArray[np.float64]:
        if not isinstance(x, np.ndarray):
            raise EncodingError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
        if x.dtype not in (np.float32, np.float64):
            # Integers are refused rather than silently cast: an int array almost always means the caller
            # passed something already quantised, and encoding it again would double-scale it.
            raise EncodingError(f"{name} must have dtype float32 or float64, got {x.dtype}")
        if x.ndim != 1:
            raise EncodingError(f"{name} must be 1-D, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise EncodingError(f"{name} contains NaN or infinity")
        # float32 -> float64 is exact, so everything downstream works in float64.
        return x.astype(np.float64, copy=False)

    @staticmethod
    def _uniforms(rng: np.random.Generator | KeystreamUniforms, size: int) -> npt.NDArray[np.float64]:
        if not isinstance(rng, np.random.Generator | KeystreamUniforms):
            raise TypeError(f"rng must be a KeystreamUniforms or numpy.random.Generator, got {type(rng).__name__}")
        return rng.random(size, dtype=np.float64)

    def _embed(self, q: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
        # int64 -> uint64 is reduction mod 2^64 (two's complement); 2^b divides 2^64, so masking then
        # gives q mod 2^b.
        out = q.astype(np.uint64)
        if self.modulus_bits < MAX_MODULUS_BITS:
            np.bitwise_and(out, self._mask, out=out)
        return out

    def _encode_scaled(
        self, values: npt.NDArray[np.float64], uniforms: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.uint64]:
        """Encode already clipped (and weighted) values with explicit uniforms; pinned by the KAT file."""
        y = values * self.scale  # exact: multiplication by a power of two
        return self._embed(_stochastic_round(y, uniforms))

    def encode(
        self, x: npt.NDArray[np.floating[Any]], *, rng: np.random.Generator | KeystreamUniforms
    ) -> npt.NDArray[np.uint64]:
        """Clip ``x`` to [-clip, clip], scale, round stochastically and reduce into Z_{2^b}.

        Args:
            x: a 1-D float32/float64 array without NaN/inf.
            rng: source of the (non-secret) rounding uniforms; consumed ``len(x)`` doubles.

        Raises:
            EncodingError: not an ndarray, non-float dtype, not 1-D, or non-finite entries.
            TypeError: ``rng`` is not a numpy Generator.
        """
        values = np.clip(self._as_float_vector(x, "x"), -self.clip, self.clip)
        return self._encode_scaled(values, self._uniforms(rng, values.shape[0]))

    def encode_weighted(
        self, x: npt.NDArray[np.floating[Any]], weight: float, *, rng: np.random.Generator | KeystreamUniforms
    ) -> npt.NDArray[np.uint64]:
        """Encode ``weight * clip(x)`` followed by one extra slot holding ``weight``.

        Summing these over clients gives ``(sum_i w_i x_i, sum_i w_i)``, i.e. weighted FedAvg after one
        division (:meth:`decode_weighted`). Requires ``max_weight``; ``0 <= weight <= max_weight``. The
        product ``w * x`` is formed in float64 (relative error <= 2^-53) before the unbiased rounding.

        Raises:
            EncodingError: bad ``x`` (as :meth:`encode`) or a weight outside [0, max_weight] / non-finite.
            ParameterError: the codec has no ``max_weight``.
            TypeError: ``rng`` is not a numpy Generator.
        """
        if self.max_weight is None:
            raise ParameterError("encode_weighted needs a codec constructed with max_weight")
        if isinstance(weight, bool) or not isinstance(weight, int | float | np.integer | np.floating):
            raise EncodingError(f"weight must be a real number, got {type(weight).__name__}")
        try:
            w = float(weight)
        except OverflowError:
            w = math.inf
        if not math.isfinite(w) or not 0.0 <= w <= self.max_weight:
            raise EncodingError(f"weight must be finite and in [0, {self.max_weight}]")
        clipped = np.clip(self._as_float_vector(x, "x"), -self.clip, self.clip)
        values = np.concatenate([clipped * w, np.array([w], dtype=np.float64)])
        return self._encode_scaled(values, self._uniforms(rng, values.shape[0]))

    # ----------------------------------------------------------------------------------------------
    # Arithmetic and decoding

    def add(self, a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        """(a + b) mod 2^modulus_bits, element-wise (uint64 addition wraps mod 2^64, a multiple of 2^b).

        Raises:
            EncodingError: operands that are not uint64 arrays of one shape.
        """
        for operand in (a, b):
            if not isinstance(operand, np.ndarray) or operand.dtype != np.uint64:
                raise EncodingError("encodings must be numpy.ndarray of dtype uint64")
        if a.shape != b.shape:
            raise EncodingError(f"encodings have different shapes {a.shape} and {b.shape}")
        out = np.add(a, b, dtype=np.uint64)
        if self.modulus_bits < MAX_MODULUS_BITS:
            np.bitwise_and(out, self._mask, out=out)
        return out

    def _check_summands(self, num_summands: int) -> int:
        n = _check_int("num_summands", num_summands)
        if not 1 <= n <= self.num_clients:
            raise ParameterError(f"num_summands must be in 1..{self.num_clients}, got {n}")
        return n

    def _to_signed(self, s: object, num_summands: int) -> npt.NDArray[np.int64]:
        if not isinstance(s, np.ndarray) or s.dtype != np.uint64:
            raise EncodingError("the encoded sum must be a numpy.ndarray of dtype uint64")
        if s.ndim != 1:
            raise EncodingError(f"the encoded sum must be 1-D, got shape {s.shape}")
        bits = self.modulus_bits
        if bits == MAX_MODULUS_BITS:
            signed = s.view(np.int64).copy()
        else:
            if (s > self._mask).any():
                raise EncodingError(f"the encoded sum has entries outside Z_(2^{bits})")
            # Sign-extend b-bit values: shift the sign bit to bit 63, reinterpret, shift back arithmetically.
            # (Subtracting 2^b would not fit in int64 for b = 63.)
            shift = MAX_MODULUS_BITS - bits
            signed = (s << np.uint64(shift)).view(np.int64) >> np.int64(shift)
        # A legitimate sum of n encodings lies in [-n*Q, n*Q]. Anything else means masks did not
        # cancel, a summand came from another codec, or more than n vectors were added -- refuse rather
        # than return garbage. (With masks left in, this fires with overwhelming probability whenever
        # the headroom above n*Q is non-trivial.)
        limit = num_summands * self.slot_bound
        # (Two comparisons, not np.abs: abs(-2^63) overflows back to -2^63 in int64.)
        if ((signed > limit) | (signed < -limit)).any():
            raise EncodingError(
                f"the decoded sum is outside the range of {num_summands} encodings; masks did not cancel, "
                "the summands came from another codec, or num_summands is wrong"
            )
        return signed

    def decode_sum(self, s: npt.NDArray[np.uint64], num_summands: int) -> npt.NDArray[np.float64]:
        """Decode the modular sum of ``num_summands`` encodings into the float sum.

        Exact (signed interpretation, then a conversion that cannot round because |sum| < 2^53); the
        result differs from the sum of the clipped inputs by strictly less than
        ``num_summands * 2**-scale_bits`` per coordinate, and equals it in expectation.

        Raises:
            EncodingError: wrong dtype/shape, entries >= 2^b, or a value no legitimate sum can take.
            ParameterError: ``num_summands`` outside 1..num_clients.
        """
        n = self._check_summands(num_summands)
        return self._to_signed(s, n).astype(np.float64) * self.resolution

    def decode_weighted(
        self, s: npt.NDArray[np.uint64], num_summands: int
    ) -> tuple[npt.NDArray[np.float64], float]:
        """Split a sum of :meth:`encode_weighted` outputs into ``(sum_i w_i x_i, sum_i w_i)``.

        The weighted mean is ``values / total_weight`` (left to the caller, who decides what a zero
        total weight means).

        Raises:
            ParameterError: the codec has no ``max_weight``, or ``num_summands`` is out of range.
            EncodingError: as :meth:`decode_sum`, or ``s`` is empty (no weight slot).
        """
        if self.max_weight is None:
            raise ParameterError("decode_weighted needs a codec constructed with max_weight")
        decoded = self.decode_sum(s, num_summands)
        if decoded.shape[0] == 0:
            raise EncodingError("a weighted encoding has at least the weight slot")
        return decoded[:-1], float(decoded[-1])
