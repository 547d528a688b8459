"""CKKS homomorphic aggregation: the server adds ciphertexts it cannot read (``secagg.ckks``).

An alternative to pairwise masking for cross-silo deployments. Compared with the usual recipe (NVFlare's
HE filters: N = 8192, primes (60, 40, 40), one ciphertext per layer, every client holding the secret key
and encrypting symmetrically, the server multiplying each client's ciphertext by its plaintext weight)
this module packs the whole flattened update into as few ciphertexts as the slot count allows, keeps the
secret key with one key holder, hands the public context out once per training, hides the weights inside
the ciphertexts and floods every decryption that leaves the key holder.

Roles and keys
--------------
* :class:`KeyHolder` creates the TenSEAL context and is the only party that ever holds the secret key.
  :meth:`KeyHolder.public_context_bytes` is the one public blob (parameters + public key, no secret key,
  no relinearisation or Galois keys) handed to every client and to the server, once per training.
* :class:`ClientEncryptor` (public blob only) encrypts ``weight * update`` and the weight itself.
* :class:`CiphertextAggregator` (the same public blob) adds ciphertexts and, with the
  :data:`SCALAR_MUL` preset, multiplies the sum by a public scalar. Its context cannot decrypt:
  ``is_private()`` is false and TenSEAL refuses to decrypt without a secret key. Both constructors refuse
  a context that holds a secret key.

Packing
-------
A client with update ``x`` (length m) and weight ``w`` packs ``p = [w*x_0, ..., w*x_{m-1}, w]`` (the
weight in the last slot) and encrypts it in ``ceil((m+1) / (N/2))`` ciphertexts of N/2 slots each
(:attr:`CkksParams.slot_count`); only the last one is partly filled. The server learns m, the number of
chunks and who contributed -- neither the update nor the weight. The key holder decrypts
``[sum_k w_k x_k, sum_k w_k]`` and divides.

Parameters and the 128-bit check
--------------------------------
Every :class:`CkksParams` (presets and custom ones alike) is checked against the 128-bit-security maximum
of the total coefficient-modulus bits in the HomomorphicEncryption.org standard (uniform ternary secret,
:data:`HE_STANDARD_128_MAX_BITS`: N=1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881);
anything above is refused with a :class:`~secagg.errors.ParameterError` naming the limit. The last prime of
``coeff_mod_bit_sizes`` is SEAL's special (key-level) prime; the others are the data primes.

* :data:`COMPACT` (= :data:`DEFAULT`, the recommended preset for add-only aggregation) -- N = 4096, primes
  (60, 49) = 109 bits, scale 2^44, no rescaling ever: a single data prime, q ~ 2^60, 2048 slots per
  ciphertext. A ciphertext is two polynomials of N coefficients for N/2 slots, so it costs about
  ``(data-modulus bits) / 2`` bytes per value whatever N is: the data-modulus bits are the only lever on
  size. 60 bits (SEAL's largest prime) are the least that allow range >= 1e4 and an error bound <= 1e-8
  together (``4 * 2^14 * 2^44 = 2^60``), and 60-bit coefficients fill SEAL's 64-bit words, so the wire
  cost is 32.1 bytes per value (8.0x float32) against ADD_ONLY's 46.2 (its 40-bit primes leave 24 of
  every 64 bits to zstd, which recovers only part of them). Scale 2^44 is the largest that keeps the range
  >= 1e4 and the smallest that keeps the error bound below 1e-8 (n = 10, m = 10^6: 8.2e-9); 2^40 would
  give range 2.6e5 but a bound of 1.3e-7. The special prime only has to absorb the public-key encryption
  noise (SEAL encrypts at the key level and divides by it; ~2^8 per coefficient before the division,
  negligible after it for any special prime of 20+ bits); 49 bits is what the 109-bit budget leaves, and
  it costs nothing on the wire (it is not part of the ciphertext).
* :data:`ADD_ONLY` -- N = 4096, primes (40, 40, 29) = 109 bits, scale 2^50, no rescaling ever: the data
  modulus is q ~ 2^80 and the special prime only needs to absorb the public-key encryption noise, so 29
  bits suffice. 2048 slots per ciphertext. For ranges above COMPACT's 16384, or 64x finer flooded output.
* :data:`SCALAR_MUL` -- N = 8192, primes (40, 40, 50, 50) = 180 bits, scale 2^50, one plaintext-scalar
  multiplication (the 50-bit data prime is dropped by the rescale, so the scale returns to ~2^50 with
  q ~ 2^80 left). 4096 slots per ciphertext.

Range (CKKS wraps silently)
---------------------------
Decryption is correct only while every coefficient of the encoded sum stays below q/2 in magnitude, and a
coefficient of the encoding is at most ``2^s * max_slot |value|`` (canonical-embedding bound). With the
public per-coordinate clip ``max_abs``, weight cap ``max_weight`` and client cap ``max_clients`` every slot
of every partial sum is at most ``V = max_clients * max_weight * max(max_abs, 1)`` (the ``1`` covers the
weight slot), so setup requires::

    V * 2^s <= q / 4                       (one bit of headroom above the q/2 wrap for noise and rounding)

where q is the data modulus at the decryption level (after the rescales the preset allows; for a
multiplication we require ``|multiplier| <= 1``, and the product before the rescale then fits too).
ADD_ONLY and SCALAR_MUL give ``V <= q / 2^52 ~ 2^28 ~ 2.7e8``; COMPACT gives ``V <= q / 2^46 ~ 2^14 =
16384`` -- e.g. 10 clients with weights up to 1000 (sample counts) and ``max_abs = 1``, or weights
normalised to <= 1 with ``max_clients * max_abs <= 16384``. Inputs are checked: finite, ``|x_i| <= max_abs``,
``0 <= w <= max_weight``, and the server refuses more than ``max_clients`` contributions.

Error bound
-----------
Fresh public-key encryption in SEAL ends with a division by the special prime, so the decryption error of
a fresh ciphertext is, per coefficient, ``r_0 + r_1 * s`` plus the encoding rounding ``r_e`` (all ``r``
uniform on [-1/2, 1/2], s the ternary secret key with Hamming weight h). Mapped to slot t by the canonical
embedding, its real part has variance ``N (2 + |s(zeta_t)|^2) / 24`` (in units of 2^-s); averaged over
slots this is ``N (2 + h) / 24``, i.e. a standard deviation of ``2^-s * 683`` for N = 4096 and
``2^-s * 1366`` for N = 8192 (:func:`fresh_noise_std`; measured 685 and 1372). The sum of n ciphertexts
adds n independent such errors, a rescale adds one more. We bound the worst slot with h <= N and
``|s(zeta_t)|^2 <= N (ln(N/2) + 40 ln 2)`` (the maximum over the N/2 slots of an approximately exponential
variable, failure 2^-40), and the worst of the k released slots with a Gaussian tail factor
``tau(k) = sqrt(2 (ln(2k) + 40 ln 2))`` (failure 2^-40); float64 FFTs in encoding and decoding add a
relative error measured below 2^-50, for which we allow 2^-44. With ``n' = n + (rescales)``::

    B_sum(n, N, s, k, W) = 2^-s * tau(k) * sqrt(n' * N * (2 + N (ln(N/2) + 40 ln 2)) / 24)
                           + 2^-44 * W * max(max_abs, 1)

bounds every coordinate of the decrypted ``[sum w x, sum w]`` (W the total weight; :func:`sum_error_bound`)
-- this is the CLT-based analysis of Costache, Curtis, Hales, Murphy, Ogilvie and Player ("On the precision
loss in approximate homomorphic encryption", 2022) specialised to one fresh encryption per client. For
ADD_ONLY, n = 8, k = 10^4, max_abs = 1 and W = 8 it is 1.1e-10 (n = 1: 3.8e-11); COMPACT has 2^6 = 64x
the noise term: 6.9e-9 (n = 1: 2.5e-9; n = 10, k = 10^6: 8.2e-9); SCALAR_MUL 2.2e-10. Measured worst
errors over random n, m, weights and vectors stay 8-12x below the bound (ADD_ONLY and COMPACT alike). For the mean ``S/W`` it becomes
``B_sum (1 + max_abs) / (W - B_sum)`` (:func:`mean_error_bound`).

Costs (one client, measured)
----------------------------
Bytes of :attr:`EncryptedUpdate.nbytes` per value (expansion over float32) at m = 10^4 / 10^5 / 10^6:

* COMPACT: 32.8 / 32.2 / 32.1 bytes (8.21x / 8.05x / 8.03x), 125 kB public blob;
* ADD_ONLY: 47.2 / 46.2 / 46.2 bytes (11.8x / 11.6x / 11.5x), 134 kB public blob;
* SCALAR_MUL: 94.7 / 78.9 / 77.3 bytes (23.7x / 19.7x / 19.3x; 130 data bits, 4096-slot chunks), 434 kB.

NVFlare's one-ciphertext-per-layer recipe (N = 8192, primes (60, 40, 40)) costs 14.8x at m = 10^6 and
65x at m = 10^4 for a 10-tensor CNN (every bias vector is a full ciphertext); ``benchmarks/bench_ckks.py``
measures all of them, with timings.

IND-CPA^D: who may see a raw decryption
---------------------------------------
Li and Micciancio (EUROCRYPT 2021, "On the Security of Homomorphic Encryption on Approximate Numbers")
showed that the *raw* CKKS decryption ``m + e / Delta`` of a ciphertext (c_0, c_1) leaks its error e, and
``c_0 + c_1 s = Delta m + e (mod q)`` is then linear in the secret key s: whoever holds the ciphertexts --
the server here -- and one raw decryption can solve for s and then decrypt every individual client update.
Therefore **only the key holder itself may see a raw decryption** (``flood=False``), and only for values
that never leave it, not even after further processing (a model update derived from a raw decryption
leaves!). Everything released is flooded: :meth:`KeyHolder.decrypt_mean` and :meth:`KeyHolder.decrypt_sum`
add, to every released coordinate (the m sums and the weight slot, in the decoded domain), independent
Gaussian noise of standard deviation::

    sigma_flood = 2^(lambda/2) * E_2,    lambda = 40 by default,
    E_2 = 2^-s * sqrt(n_max') * ( sqrt(C * N * N (2 + N) / 48)
                                  + sqrt(N (2 + N (ln(N/2) + lambda ln 2)) / 24) * sqrt(2 lambda ln 2) )

where C is the number of ciphertext chunks and n_max' = max_clients (+ rescales). E_2 bounds the l2 norm
of the whole decryption error vector (Parseval: the per-slot variances of one ciphertext sum to
``N^2 (2 + h) / 48``, h <= N; plus a Gaussian-concentration term with failure 2^-lambda). For two error
vectors e (the real one) and 0 (the ideal, exact result, which carries no information on s) the KL
divergence between the released distributions is ``|e|^2 / (2 sigma^2) <= 2^-(lambda+1)`` per decryption
(statistical distance <= 2^-(lambda/2+1) by Pinsker). KL <= 2^-lambda is what the bit-security framework
of Micciancio and Walter (EUROCRYPT 2018) needs to keep lambda bits of security for search problems such as
recovering s -- the 2^(lambda/2) noise-flooding rule that Li, Micciancio, Schultz and Sorrell (CRYPTO 2022)
use for IND-CPA^D. KL adds up over decryptions (R rounds: R * 2^-(lambda+1)). The noise is added to the
decoded values rather than to the encoded polynomial, which the analysis above covers since only decoded
values are released; Box-Muller in float64 truncates the Gaussian beyond ~8.6 sigma (probability
< 2^-53 per sample). sigma_flood depends only on public
setup values (N, s, max_clients, m, lambda), never on data, and is reported by
:meth:`KeyHolder.flooding_sigma` / :func:`flooding_sigma`: for ADD_ONLY, max_clients = 10 it is 3.6e-4,
8.9e-4 and 2.6e-3 at m = 10^4, 10^5 and 10^6 on the *sum*; COMPACT's is 2^6 = 64x larger (2.3e-2, 5.7e-2
and 0.16), since sigma scales with 2^-s. The mean sees ``sigma_flood * sqrt(1 + mean^2) / W``, so use
large weights: with COMPACT, max_clients = 10, max_abs = 1 and sample counts up to 1000 as weights
(W ~ 5000), the flooded mean at m = 10^6 is off by ~3e-5 per coordinate (std), while weights normalised
to sum ~1 would leave ~0.16 -- there ADD_ONLY (or larger weights) is needed. Flooding, not the raw CKKS
error, sets the precision of everything released.
The noise comes from a CSPRNG (a fresh ``secrets.token_bytes(32)`` seed expanded by
:func:`secagg.prg.keystream_bytes`, then Box-Muller), never from ``random`` or ``numpy.random``.

Threat model and limits
-----------------------
The server is honest-but-curious: it sees every ciphertext, m, the chunk count and who contributed. CKKS
gives no integrity: a malicious client can encrypt out-of-range values and corrupt the sum (as with
masking without proofs), and a malicious server can forward one client's ciphertext as "the sum" or
craft ciphertexts whose noise exceeds the bound above, which flooding then does not hide. A key holder
that colludes with the server breaks all privacy.

Wire formats
------------
:class:`EncryptedUpdate` and :class:`EncryptedSum` have a versioned, strictly length-checked encoding
(``to_bytes`` / ``from_bytes``); every chunk is TenSEAL's serialised CKKSVector (SEAL's zstd-compressed
ciphertext). All integers are big-endian. The parties bind to one training by a 16-byte context id (SHA-256
of the public blob), which every update and sum carries and every party checks.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import tenseal as ts

from secagg.errors import CryptoError, EncodingError, ParameterError, RemoteProtocolError
from secagg.prg import SEED_BYTES, keystream_bytes

__all__ = [
    "ADD_ONLY",
    "COMPACT",
    "DEFAULT",
    "HE_STANDARD_128_MAX_BITS",
    "SCALAR_MUL",
    "AggregationConfig",
    "CiphertextAggregator",
    "CkksParams",
    "ClientEncryptor",
    "EncryptedSum",
    "EncryptedUpdate",
    "KeyHolder",
    "flooding_sigma",
    "fresh_noise_std",
    "mean_error_bound",
    "sum_error_bound",
]

#: Maximum total coefficient-modulus bits for 128-bit security (HomomorphicEncryption.org standard,
#: uniform ternary secret; the same table SEAL enforces).
HE_STANDARD_128_MAX_BITS: Final[dict[int, int]] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}

_MAX_PRIME_BITS: Final = 60  # SEAL's limit for one RNS prime
_MIN_SCALE_BITS: Final = 20
_BOUND_FAILURE_BITS: Final = 40  # failure probability 2^-40 of the documented error bounds
_FLOAT_REL_ERROR: Final = 2.0**-44  # float64 FFT error in encode/decode, measured below 2^-50
_DEFAULT_FLOOD_BITS: Final = 40
_LN2: Final = math.log(2.0)

_MAGIC: Final = b"FSCK"
_VERSION: Final = 1
_KIND_SETUP: Final = 0x53  # "S"
_KIND_UPDATE: Final = 0x55  # "U"
_KIND_SUM: Final = 0x41  # "A"
_CONTEXT_ID_BYTES: Final = 16
_CONTEXT_ID_DOMAIN: Final = b"fedshield/secagg/v1/ckks/context-id"
_FLOOD_DOMAIN: Final = b"fedshield/secagg/v1/ckks/flood"
_MAX_CHUNKS: Final = 1 << 24
_MAX_CHUNK_BYTES: Final = 1 << 26  # far above any real ciphertext (N = 32768 with 881 bits is < 8 MiB)
_MAX_ID: Final = 2**64 - 1

FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    # bool is an int subclass; a stray True would silently mean 1.
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    result = int(value)
    if result < low or (high is not None and result > high):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        raise ParameterError(f"{name} must be {allowed}, got {result}")
    return result


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}")
    return float(value)


@dataclass(frozen=True, slots=True)
class CkksParams:
    """CKKS parameters for aggregation, validated against the 128-bit HE standard on construction.

    Args:
        poly_modulus_degree: N, a power of two in 1024..32768; a ciphertext holds N/2 slots.
        coeff_mod_bit_sizes: bit sizes of the RNS primes, data primes first and SEAL's special prime last.
            Their sum must not exceed :data:`HE_STANDARD_128_MAX_BITS` ``[N]``.
        scale_bits: s, the encoding scale is 2^s.
        scalar_mul_depth: how many plaintext-scalar multiplications the server may apply; each rescale
            drops the last remaining data prime, which must therefore have exactly ``scale_bits`` bits.

    Raises:
        ParameterError: an unsupported N, more bits than the 128-bit limit (the message names it), a prime
            size outside 1..60, no data prime left at the decryption level, or a rescale prime whose size
            differs from ``scale_bits``.
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    scalar_mul_depth: int = 0

    def __post_init__(self) -> None:
        n = _check_int("poly_modulus_degree", self.poly_modulus_degree, 1)
        if n not in HE_STANDARD_128_MAX_BITS:
            raise ParameterError(
                f"poly_modulus_degree must be one of {sorted(HE_STANDARD_128_MAX_BITS)} (the degrees of the "
                f"HomomorphicEncryption.org 128-bit table), got {n}"
            )
        if not isinstance(self.coeff_mod_bit_sizes, tuple | list):
            raise TypeError("coeff_mod_bit_sizes must be a tuple of ints")
        bits = tuple(
            _check_int("coeff_mod_bit_sizes entry", b, 1, _MAX_PRIME_BITS) for b in self.coeff_mod_bit_sizes
        )
        object.__setattr__(self, "coeff_mod_bit_sizes", bits)
        limit = HE_STANDARD_128_MAX_BITS[n]
        total = sum(bits)
        if total > limit:
            raise ParameterError(
                f"coeff_mod_bit_sizes {list(bits)} total {total} bits, above the 128-bit security limit of "
                f"{limit} bits for N={n} (HomomorphicEncryption.org standard)"
            )
        _check_int("scale_bits", self.scale_bits, _MIN_SCALE_BITS, _MAX_PRIME_BITS)
        depth = _check_int("scalar_mul_depth", self.scalar_mul_depth, 0)
        if len(bits) < 2 + depth:
            raise ParameterError(
                f"coeff_mod_bit_sizes needs at least {2 + depth} primes for scalar_mul_depth={depth}: "
                "the data prime(s) left after every rescale, one per rescale, and the special prime last"
            )
        rescale_primes = bits[len(bits) - 1 - depth : len(bits) - 1]
        if any(b != self.scale_bits for b in rescale_primes):
            raise ParameterError(
                f"the last {depth} data prime(s) are dropped by rescaling and must have scale_bits="
                f"{self.scale_bits} bits, got {list(rescale_primes)}"
            )

    @property
    def slot_count(self) -> int:
        """Values per ciphertext: N/2."""
        return self.poly_modulus_degree // 2

    @property
    def total_bits(self) -> int:
        """Total coefficient-modulus bits (the quantity the 128-bit check limits)."""
        return sum(self.coeff_mod_bit_sizes)

    @property
    def data_prime_count(self) -> int:
        """Number of data primes of a fresh ciphertext."""
        return len(self.coeff_mod_bit_sizes) - 1

    @property
    def decryption_bits(self) -> int:
        """Nominal bits of the data modulus left after every allowed rescale (q at the decryption level)."""
        return sum(self.coeff_mod_bit_sizes[: self.data_prime_count - self.scalar_mul_depth])

    @property
    def security_limit_bits(self) -> int:
        """The 128-bit maximum total coefficient-modulus bits for this N."""
        return HE_STANDARD_128_MAX_BITS[self.poly_modulus_degree]


#: Compact add-only aggregation: N = 4096, 109 of 109 bits, one 60-bit data prime, 2048 slots, scale 2^44,
#: range 2^14 = 16384, ~8.0x float32 on the wire.
COMPACT: Final = CkksParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 49), scale_bits=44)
#: Add-only aggregation with more range and precision: N = 4096, 109 of 109 bits, 2048 slots, scale 2^50,
#: range ~2^28, ~11.6x float32.
ADD_ONLY: Final = CkksParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(40, 40, 29), scale_bits=50)
#: The recommended preset for add-only aggregation.
DEFAULT: Final = COMPACT
#: One plaintext-scalar multiplication: N = 8192, 180 of 218 bits, 4096 slots, scale 2^50, range ~2^28.
SCALAR_MUL: Final = CkksParams(
    poly_modulus_degree=8192, coeff_mod_bit_sizes=(40, 40, 50, 50), scale_bits=50, scalar_mul_depth=1
)


@dataclass(frozen=True, slots=True)
class AggregationConfig:
    """The public description of one training's CKKS aggregation (part of the public context blob).

    Args:
        params: CKKS parameters (:data:`COMPACT` = :data:`DEFAULT`, :data:`ADD_ONLY`, :data:`SCALAR_MUL` or
            custom :class:`CkksParams`).
        max_clients: most contributions one sum may hold (the server enforces it).
        max_abs: public per-coordinate clip; clients refuse ``|x_i| > max_abs``.
        max_weight: public weight cap; clients refuse weights outside ``[0, max_weight]``.

    Raises:
        ParameterError: non-positive or non-finite bounds, or ``max_clients * max_weight * max(max_abs, 1)
            * 2^s`` above ``2^(D-2)`` with D the nominal decryption-level modulus bits (the message names
            the limit); :class:`KeyHolder` repeats the check with the exact modulus.
    """

    params: CkksParams
    max_clients: int
    max_abs: float
    max_weight: float

    def __post_init__(self) -> None:
        if not isinstance(self.params, CkksParams):
            raise TypeError(f"params must be CkksParams, not {type(self.params).__name__}")
        _check_int("max_clients", self.max_clients, 1, 2**32 - 1)
        for name in ("max_abs", "max_weight"):
            value = _check_real(name, getattr(self, name))
            if not (math.isfinite(value) and value > 0.0):
                raise ParameterError(f"{name} must be finite and > 0")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "max_clients", int(self.max_clients))
        limit = self.range_limit(2 ** (self.params.decryption_bits))
        if self.value_bound > limit:
            raise ParameterError(self._range_message(limit, self.params.decryption_bits))

    @property
    def value_bound(self) -> float:
        """V = max_clients * max_weight * max(max_abs, 1): the largest |slot| of any partial sum."""
        return self.max_clients * self.max_weight * max(self.max_abs, 1.0)

    def range_limit(self, modulus: int) -> float:
        """Largest admissible V for a decryption-level modulus q: ``q / (4 * 2^s)``."""
        return math.ldexp(float(modulus), -(self.params.scale_bits + 2))

    def _range_message(self, limit: float, modulus_bits: int) -> str:
        return (
            f"max_clients*max_weight*max(max_abs, 1) = {self.value_bound:.6g} exceeds the encoding range "
            f"{limit:.6g} = q/(4*2^{self.params.scale_bits}) of these parameters (q: the {modulus_bits}-bit "
            "data modulus at the decryption level); CKKS would wrap silently. Lower max_clients, max_weight "
            "or max_abs, or choose parameters with fewer scale bits or more data-modulus bits"
        )


# --------------------------------------------------------------------------------------------------
# Error bounds and flooding
# --------------------------------------------------------------------------------------------------


def fresh_noise_std(params: CkksParams) -> float:
    """Average per-slot standard deviation of one fresh encryption's decryption error.

    ``2^-s * sqrt(N (2 + 2N/3) / 24)`` (h = 2N/3 is the expected Hamming weight of SEAL's ternary secret):
    about 6.07e-13 for :data:`ADD_ONLY` and 3.88e-11 for :data:`COMPACT`. Descriptive; the bounds below use worst-case slot factors.
    """
    n = params.poly_modulus_degree
    return math.ldexp(math.sqrt(n * (2.0 + 2.0 * n / 3.0) / 24.0), -params.scale_bits)


def _tail_factor(count: int, bits: float) -> float:
    """Gaussian tail factor: all of ``count`` slots within tau sigma except with probability 2^-bits."""
    return math.sqrt(2.0 * (math.log(2.0 * max(count, 1)) + bits * _LN2))


def _worst_slot_variance(n: int, bits: float) -> float:
    """N (2 + |s(zeta)|^2_max) / 24 with |s(zeta_t)|^2 <= N (ln(N/2) + bits ln 2) for every slot t."""
    return n * (2.0 + n * (math.log(n / 2.0) + bits * _LN2)) / 24.0


def sum_error_bound(
    config: AggregationConfig,
    num_clients: int,
    length: int,
    *,
    total_weight: float | None = None,
    rescales: int = 0,
) -> float:
    """``B_sum``: per-coordinate bound on the decryption error of ``[sum w x, sum w]`` (no flooding).

    Holds except with probability about 2^-39 (2^-40 over key generation, 2^-40 over encryption).

    Args:
        config: the public configuration.
        num_clients: n, the number of summed encryptions.
        length: m, the update length (m + 1 slots are released).
        total_weight: W for the floating-point term; defaults to its maximum ``n * max_weight``.
        rescales: plaintext-scalar multiplications applied by the server (each adds one rounding term).
    """
    params = config.params
    n_eff = _check_int("num_clients", num_clients, 1) + _check_int("rescales", rescales, 0)
    k = _check_int("length", length, 1) + 1
    weight = num_clients * config.max_weight if total_weight is None else abs(float(total_weight))
    noise = _tail_factor(k, _BOUND_FAILURE_BITS) * math.sqrt(
        n_eff * _worst_slot_variance(params.poly_modulus_degree, _BOUND_FAILURE_BITS)
    )
    return math.ldexp(noise, -params.scale_bits) + _FLOAT_REL_ERROR * weight * max(config.max_abs, 1.0)


def mean_error_bound(config: AggregationConfig, total_weight: float, sum_bound: float) -> float:
    """Bound on ``|S'/W' - S/W|`` given per-coordinate errors ``<= sum_bound`` on S and on W.

    ``sum_bound * (1 + max_abs) / (W - sum_bound)`` (uses ``|S| <= max_abs * W``); infinite when
    ``W <= sum_bound``. Pass ``sum_error_bound(...)`` (+ a few ``flooding_sigma`` when flooded).
    """
    slack = float(total_weight) - sum_bound
    if slack <= 0.0:
        return math.inf
    return sum_bound * (1.0 + config.max_abs) / slack


def flooding_sigma(
    config: AggregationConfig,
    length: int,
    *,
    security_bits: int = _DEFAULT_FLOOD_BITS,
    rescales: int = 0,
) -> float:
    """Standard deviation of the Gaussian flooding noise added to each released coordinate.

    ``2^(lambda/2) * E_2`` with E_2 the l2 bound of the decryption error vector of a sum of
    ``max_clients`` (+ ``rescales``) encryptions over all ``C = ceil((m+1) / (N/2))`` chunks (see the
    module docstring). Depends only on public values.
    """
    params = config.params
    lam = _check_int("security_bits", security_bits, 1, 128)
    n = params.poly_modulus_degree
    chunks = -(-(_check_int("length", length, 1) + 1) // params.slot_count)
    n_eff = config.max_clients + _check_int("rescales", rescales, 0)
    total_variance = chunks * n * n * (2.0 + n) / 48.0  # Parseval over all slots, h <= N
    concentration = math.sqrt(_worst_slot_variance(n, lam)) * math.sqrt(2.0 * lam * _LN2)
    e2 = math.sqrt(n_eff) * (math.sqrt(total_variance) + concentration)
    return math.ldexp(e2, lam // 2 - params.scale_bits) * (math.sqrt(2.0) if lam % 2 else 1.0)


def _gaussian_noise(count: int) -> FloatArray:
    """``count`` iid N(0, 1) samples from a fresh CSPRNG seed (AES-CTR keystream, Box-Muller)."""
    pairs = (count + 1) // 2
    stream = keystream_bytes(secrets.token_bytes(SEED_BYTES), 16 * pairs, domain=_FLOOD_DOMAIN)
    words = np.frombuffer(stream, dtype="<u8")
    # 53 random bits per uniform, shifted by half an ulp: u lies in (0, 1), so log(u) is finite.
    uniforms = ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    radius = np.sqrt(-2.0 * np.log(uniforms[:pairs]))
    angle = (2.0 * math.pi) * uniforms[pairs:]
    out: FloatArray = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]
    return out


# --------------------------------------------------------------------------------------------------
# Public context blob and TenSEAL helpers
# --------------------------------------------------------------------------------------------------

_SETUP_HEAD: Final = struct.Struct(">4sBBIBBB")  # magic, kind, version, N, depth, scale_bits, #primes
_SETUP_TAIL: Final = struct.Struct(">IddQ")  # max_clients, max_abs, max_weight, context length


def _encode_setup(config: AggregationConfig, context_bytes: bytes) -> bytes:
    p = config.params
    return b"".join(
        (
            _SETUP_HEAD.pack(
                _MAGIC,
                _KIND_SETUP,
                _VERSION,
                p.poly_modulus_degree,
                p.scalar_mul_depth,
                p.scale_bits,
                len(p.coeff_mod_bit_sizes),
            ),
            bytes(p.coeff_mod_bit_sizes),
            _SETUP_TAIL.pack(config.max_clients, config.max_abs, config.max_weight, len(context_bytes)),
            context_bytes,
        )
    )


def _decode_setup(blob: bytes) -> tuple[AggregationConfig, bytes]:
    if not isinstance(blob, bytes):
        raise TypeError(f"public_context must be bytes, not {type(blob).__name__}")
    if len(blob) < _SETUP_HEAD.size:
        raise EncodingError("public context blob is truncated")
    magic, kind, version, n, depth, scale_bits, count = _SETUP_HEAD.unpack_from(blob)
    if magic != _MAGIC or kind != _KIND_SETUP:
        raise EncodingError("not a fedshield CKKS public context blob")
    if version != _VERSION:
        raise EncodingError(f"unsupported public context version {version}")
    pos = _SETUP_HEAD.size
    if len(blob) < pos + count + _SETUP_TAIL.size:
        raise EncodingError("public context blob is truncated")
    bits = tuple(blob[pos : pos + count])
    pos += count
    max_clients, max_abs, max_weight, ctx_len = _SETUP_TAIL.unpack_from(blob, pos)
    pos += _SETUP_TAIL.size
    if len(blob) != pos + ctx_len:
        raise EncodingError("public context blob has the wrong length")
    # Parameter checks re-run here: a client refuses insecure or out-of-range parameters (ParameterError).
    params = CkksParams(n, bits, scale_bits, depth)
    config = AggregationConfig(params, max_clients, max_abs, max_weight)
    return config, blob[pos:]


def _context_id(setup_blob: bytes) -> bytes:
    return hashlib.sha256(_CONTEXT_ID_DOMAIN + setup_blob).digest()[:_CONTEXT_ID_BYTES]


def _coeff_primes(context: Any, params: CkksParams) -> tuple[int, ...]:
    """The exact RNS primes (data primes, then the special prime) of a TenSEAL context.

    TenSEAL exposes only the low 64-bit limb of each level's modulus product; walking the chain from the
    last level up and dividing out the primes already known (modulo 2^64, where they are odd hence
    invertible) recovers every prime exactly, since each is below 2^60. Each is then checked to have the
    configured bit size and to be 1 mod 2N, so a mismatched or unexpected context is refused.
    """
    mask = (1 << 64) - 1
    try:
        level = context.seal_context().data.last_context_data()
        limbs: list[int] = []
        while level is not None:
            limbs.append(int(level.total_coeff_modulus()) & mask)
            level = level.prev_context_data()
    except (AttributeError, RuntimeError, TypeError, ValueError) as exc:
        raise ParameterError("cannot read the coefficient modulus of this TenSEAL context") from exc
    primes: list[int] = []
    product = 1
    for limb in limbs:
        prime = (limb * pow(product, -1, 1 << 64)) & mask
        primes.append(prime)
        product *= prime
    two_n = 2 * params.poly_modulus_degree
    expected = params.coeff_mod_bit_sizes
    if len(primes) != len(expected) or any(
        q.bit_length() != b or q % two_n != 1 for q, b in zip(primes, expected, strict=True)
    ):
        raise EncodingError("the TenSEAL context does not match its declared CKKS parameters")
    return tuple(primes)


def _check_exact_range(config: AggregationConfig, primes: Sequence[int]) -> None:
    params = config.params
    bottom = math.prod(primes[: params.data_prime_count - params.scalar_mul_depth])
    limit = config.range_limit(bottom)
    if config.value_bound > limit:
        raise ParameterError(config._range_message(limit, bottom.bit_length()))


def _load_public_context(public_context: bytes, role: str) -> tuple[AggregationConfig, Any, bytes]:
    config, context_bytes = _decode_setup(public_context)
    try:
        context = ts.context_from(context_bytes)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise EncodingError("malformed TenSEAL context bytes in the public context blob") from exc
    if context.is_private() or context.has_secret_key():
        raise ParameterError(
            f"the context given to a {role} holds a secret key; hand out KeyHolder.public_context_bytes()"
        )
    _check_exact_range(config, _coeff_primes(context, config.params))
    context.global_scale = math.ldexp(1.0, config.params.scale_bits)
    return config, context, _context_id(public_context)


def _chunk_sizes(length: int, slots: int) -> list[int]:
    packed = length + 1
    full, rest = divmod(packed, slots)
    return [slots] * full + ([rest] if rest else [])


def _load_chunk(context: Any, data: object, *, size: int, primes: int, scale: float, where: str) -> Any:
    """Deserialise one ciphertext chunk and check its shape, level and scale (EncodingError otherwise)."""
    if not isinstance(data, bytes):
        raise TypeError(f"{where} must be bytes, not {type(data).__name__}")
    if len(data) > _MAX_CHUNK_BYTES:
        raise EncodingError(f"{where} is longer than {_MAX_CHUNK_BYTES} bytes")
    try:
        vector = ts.ckks_vector_from(context, data)
        ciphertexts = vector.ciphertext()
        ok = (
            vector.size() == size
            and len(ciphertexts) == 1
            and ciphertexts[0].size() == 2
            and ciphertexts[0].coeff_modulus_size() == primes
            and ciphertexts[0].is_ntt_form()
            and ciphertexts[0].scale == scale
        )
    except (ValueError, RuntimeError, TypeError, IndexError) as exc:
        raise EncodingError(f"{where}: malformed ciphertext bytes") from exc
    if not ok:
        raise EncodingError(f"{where}: ciphertext does not have the expected slot count, level or scale")
    return vector


# --------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------

_UPDATE_HEAD: Final = struct.Struct(">4sBB16sQQI")  # magic, kind, version, context id, client, m, chunks
_SUM_HEAD: Final = struct.Struct(">4sBB16sQdBI")  # ..., context id, m, multiplier, rescales, #clients
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")


def _pack_chunks(chunks: Sequence[bytes]) -> bytes:
    return _U32.pack(len(chunks)) + b"".join(_U32.pack(len(c)) + c for c in chunks)


def _unpack_chunks(data: bytes, pos: int, count: int) -> tuple[tuple[bytes, ...], int]:
    if count > _MAX_CHUNKS:
        raise EncodingError(f"more than {_MAX_CHUNKS} chunks")
    chunks: list[bytes] = []
    for _ in range(count):  # loops over ciphertext chunks, not over vector elements
        if len(data) < pos + _U32.size:
            raise EncodingError("truncated chunk length")
        (size,) = _U32.unpack_from(data, pos)
        pos += _U32.size
        if size > _MAX_CHUNK_BYTES or len(data) < pos + size:
            raise EncodingError("truncated or oversized chunk")
        chunks.append(data[pos : pos + size])
        pos += size
    return tuple(chunks), pos


def _check_chunks(chunks: object) -> tuple[bytes, ...]:
    if not isinstance(chunks, tuple) or not all(isinstance(c, bytes) for c in chunks):
        raise TypeError("chunks must be a tuple of bytes")
    return chunks


@dataclass(frozen=True, slots=True, repr=False)
class EncryptedUpdate:
    """One client's encrypted, weighted update: ciphertext bytes per chunk plus public metadata.

    ``chunks[i]`` encrypts slots ``[i*N/2, (i+1)*N/2)`` of ``[w*x, w]``. Nothing here reveals x or w.
    """

    context_id: bytes
    client_id: int
    length: int
    chunks: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.context_id, bytes) or len(self.context_id) != _CONTEXT_ID_BYTES:
            raise EncodingError(f"context_id must be {_CONTEXT_ID_BYTES} bytes")
        _check_int("client_id", self.client_id, 0, _MAX_ID)
        _check_int("length", self.length, 1, _MAX_ID)
        _check_chunks(self.chunks)

    @property
    def num_chunks(self) -> int:
        return len(self.chunks)

    @property
    def nbytes(self) -> int:
        """Size of :meth:`to_bytes` (ciphertexts plus a 46-byte header and 4 bytes per chunk)."""
        return _UPDATE_HEAD.size + _U32.size * len(self.chunks) + sum(len(c) for c in self.chunks)

    def to_bytes(self) -> bytes:
        head = _UPDATE_HEAD.pack(
            _MAGIC, _KIND_UPDATE, _VERSION, self.context_id, self.client_id, self.length, len(self.chunks)
        )
        return head + b"".join(_U32.pack(len(c)) + c for c in self.chunks)

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedUpdate:
        """Parse :meth:`to_bytes` output; truncation, trailing bytes or a wrong tag raise EncodingError."""
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if len(data) < _UPDATE_HEAD.size:
            raise EncodingError("encrypted update is truncated")
        magic, kind, version, context_id, client_id, length, count = _UPDATE_HEAD.unpack_from(data)
        if magic != _MAGIC or kind != _KIND_UPDATE or version != _VERSION:
            raise EncodingError("not a version-1 fedshield CKKS encrypted update")
        chunks, pos = _unpack_chunks(data, _UPDATE_HEAD.size, count)
        if pos != len(data):
            raise EncodingError("trailing bytes after the encrypted update")
        return cls(context_id, client_id, length, chunks)

    def __repr__(self) -> str:
        return (
            f"EncryptedUpdate(client_id={self.client_id}, length={self.length}, "
            f"num_chunks={self.num_chunks}, nbytes={self.nbytes})"
        )


@dataclass(frozen=True, slots=True, repr=False)
class EncryptedSum:
    """The server's encrypted sum (optionally times a public ``multiplier``) and who contributed."""

    context_id: bytes
    length: int
    client_ids: tuple[int, ...]
    chunks: tuple[bytes, ...]
    multiplier: float = 1.0
    rescales: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.context_id, bytes) or len(self.context_id) != _CONTEXT_ID_BYTES:
            raise EncodingError(f"context_id must be {_CONTEXT_ID_BYTES} bytes")
        _check_int("length", self.length, 1, _MAX_ID)
        if not isinstance(self.client_ids, tuple):
            raise TypeError("client_ids must be a tuple of ints")
        for client in self.client_ids:
            _check_int("client id", client, 0, _MAX_ID)
        if len(set(self.client_ids)) != len(self.client_ids) or not self.client_ids:
            raise EncodingError("client_ids must be non-empty and distinct")
        _check_chunks(self.chunks)
        multiplier = _check_real("multiplier", self.multiplier)
        if not (math.isfinite(multiplier) and 0.0 < abs(multiplier) <= 1.0):
            raise EncodingError("multiplier must be finite with 0 < |multiplier| <= 1")
        _check_int("rescales", self.rescales, 0, 255)

    @property
    def count(self) -> int:
        """Number of contributions in the sum."""
        return len(self.client_ids)

    @property
    def num_chunks(self) -> int:
        return len(self.chunks)

    @property
    def nbytes(self) -> int:
        """Size of :meth:`to_bytes`."""
        return (
            _SUM_HEAD.size
            + _U64.size * len(self.client_ids)
            + _U32.size * (1 + len(self.chunks))
            + sum(len(c) for c in self.chunks)
        )

    def to_bytes(self) -> bytes:
        head = _SUM_HEAD.pack(
            _MAGIC,
            _KIND_SUM,
            _VERSION,
            self.context_id,
            self.length,
            self.multiplier,
            self.rescales,
            len(self.client_ids),
        )
        ids = b"".join(_U64.pack(c) for c in self.client_ids)
        return head + ids + _pack_chunks(self.chunks)

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedSum:
        """Parse :meth:`to_bytes` output; truncation, trailing bytes or a wrong tag raise EncodingError."""
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if len(data) < _SUM_HEAD.size:
            raise EncodingError("encrypted sum is truncated")
        magic, kind, version, context_id, length, multiplier, rescales, n = _SUM_HEAD.unpack_from(data)
        if magic != _MAGIC or kind != _KIND_SUM or version != _VERSION:
            raise EncodingError("not a version-1 fedshield CKKS encrypted sum")
        pos = _SUM_HEAD.size
        if len(data) < pos + _U64.size * n + _U32.size:
            raise EncodingError("encrypted sum is truncated")
        ids = tuple(int(i) for i in np.frombuffer(data, dtype=">u8", count=n, offset=pos))
        pos += _U64.size * n
        (count,) = _U32.unpack_from(data, pos)
        chunks, pos = _unpack_chunks(data, pos + _U32.size, count)
        if pos != len(data):
            raise EncodingError("trailing bytes after the encrypted sum")
        return cls(context_id, length, ids, chunks, multiplier, rescales)

    def __repr__(self) -> str:
        return (
            f"EncryptedSum(count={self.count}, length={self.length}, num_chunks={self.num_chunks}, "
            f"multiplier={self.multiplier}, rescales={self.rescales}, nbytes={self.nbytes})"
        )


# --------------------------------------------------------------------------------------------------
# Parties
# --------------------------------------------------------------------------------------------------


class _PublicRole:
    """What clients and the server share: the public blob's configuration and a key-less context."""

    __slots__ = ("_config", "_context", "_context_id")

    def __init__(self, public_context: bytes, role: str) -> None:
        self._config, self._context, self._context_id = _load_public_context(public_context, role)

    @property
    def config(self) -> AggregationConfig:
        return self._config

    @property
    def context_id(self) -> bytes:
        return self._context_id

    @property
    def holds_secret_key(self) -> bool:
        """Always False: the constructor refuses private contexts."""
        return bool(self._context.is_private() or self._context.has_secret_key())


class ClientEncryptor(_PublicRole):
    """Encrypts one client's weighted update with the public context (it cannot decrypt anything).

    Args:
        public_context: :meth:`KeyHolder.public_context_bytes`, received once per training.
        client_id: this client's id (the server rejects a second update with the same id).

    Raises:
        EncodingError: malformed blob; ParameterError: insecure parameters, out-of-range configuration or
            a context holding a secret key.
    """

    __slots__ = ("_client_id",)

    def __init__(self, public_context: bytes, *, client_id: int) -> None:
        super().__init__(public_context, "client")
        self._client_id = _check_int("client_id", client_id, 0, _MAX_ID)

    def encrypt_update(self, vector: npt.ArrayLike, weight: float) -> EncryptedUpdate:
        """Encrypt ``[weight * vector, weight]`` in ``ceil((m+1) / (N/2))`` ciphertexts.

        Raises:
            TypeError: a non-real vector or weight.
            EncodingError: an empty or non-1-D vector, non-finite values, ``|x_i| > max_abs`` or a weight
                outside ``[0, max_weight]``. Messages never quote the values.
        """
        values = np.asarray(vector)
        if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.number):
            raise TypeError(f"vector must hold real numbers, not {values.dtype}")
        if np.issubdtype(values.dtype, np.complexfloating):
            raise TypeError("vector must be real, not complex")
        values = values.astype(np.float64, copy=False)
        if values.ndim != 1 or values.size == 0:
            raise EncodingError(f"vector must be 1-D and non-empty, got shape {values.shape}")
        w = _check_real("weight", weight)
        config = self._config
        if not math.isfinite(w) or not 0.0 <= w <= config.max_weight:
            raise EncodingError(f"weight must be finite and in [0, max_weight={config.max_weight:g}]")
        finite = np.isfinite(values)
        if not finite.all():
            raise EncodingError(f"vector has {int(values.size - finite.sum())} non-finite entries")
        over = int(np.count_nonzero(np.abs(values) > config.max_abs))
        if over:
            raise EncodingError(f"{over} entries exceed max_abs={config.max_abs:g} in magnitude; clip first")
        packed = np.empty(values.size + 1, dtype=np.float64)
        np.multiply(values, w, out=packed[:-1])
        packed[-1] = w
        slots = config.params.slot_count
        chunks = tuple(
            ts.ckks_vector(self._context, packed[start : start + slots].tolist()).serialize()
            for start in range(0, packed.size, slots)  # one iteration per ciphertext
        )
        return EncryptedUpdate(self._context_id, self._client_id, int(values.size), chunks)

    def for_client(self, client_id: int) -> ClientEncryptor:
        """An encryptor for another client sharing this one's loaded public context (no secret in it).

        For simulations holding many clients in one process: loading the context rebuilds SEAL's NTT
        tables (~15 ms for ``COMPACT``), which a real client does once per training and a simulated
        process need not repeat per client. The result is the same as ``ClientEncryptor(blob, client_id=...)``.
        """
        other = ClientEncryptor.__new__(ClientEncryptor)
        other._config, other._context, other._context_id = self._config, self._context, self._context_id
        other._client_id = _check_int("client_id", client_id, 0, _MAX_ID)
        return other

    def __repr__(self) -> str:
        return f"ClientEncryptor(client_id={self._client_id}, params={self._config.params})"


class CiphertextAggregator(_PublicRole):
    """The server: a streaming sum of encrypted updates, computed without any secret key.

    Args:
        public_context: :meth:`KeyHolder.public_context_bytes`.
        length: expected update length m; ``None`` takes it from the first update.

    Every :meth:`add` validates the whole update (context id, duplicate id, length, chunk count, each
    ciphertext's slot count, level and scale) before touching the running sum, so a rejected update leaves
    the aggregator unchanged.
    """

    __slots__ = ("_length", "_sum", "_client_ids")

    def __init__(self, public_context: bytes, *, length: int | None = None) -> None:
        super().__init__(public_context, "server")
        self._length = None if length is None else _check_int("length", length, 1, _MAX_ID)
        self._sum: list[Any] = []
        self._client_ids: list[int] = []

    @property
    def count(self) -> int:
        return len(self._client_ids)

    @property
    def client_ids(self) -> tuple[int, ...]:
        return tuple(self._client_ids)

    def add(self, update: EncryptedUpdate) -> None:
        """Validate ``update`` and add it to the running sum.

        Raises:
            TypeError: not an :class:`EncryptedUpdate`.
            EncodingError: another context, a length or chunk count that does not match, malformed or
                mismatched ciphertext bytes, or more than ``max_clients`` contributions.
            RemoteProtocolError: a second update from the same client id.
        """
        if not isinstance(update, EncryptedUpdate):
            raise TypeError(f"expected EncryptedUpdate, not {type(update).__name__}")
        if update.context_id != self._context_id:
            raise EncodingError("update was encrypted under another context (context id mismatch)")
        if update.client_id in self._client_ids:
            raise RemoteProtocolError(f"duplicate update from client {update.client_id}")
        if self.count >= self._config.max_clients:
            raise EncodingError(
                f"the sum already holds max_clients={self._config.max_clients} updates; more could "
                "exceed the encoding range"
            )
        length = update.length if self._length is None else self._length
        if update.length != length:
            raise EncodingError(f"update length {update.length} does not match the round's {length}")
        params = self._config.params
        sizes = _chunk_sizes(length, params.slot_count)
        if update.num_chunks != len(sizes):
            raise EncodingError(f"update has {update.num_chunks} chunks, expected {len(sizes)}")
        scale = math.ldexp(1.0, params.scale_bits)
        vectors = [
            _load_chunk(
                self._context, chunk, size=size, primes=params.data_prime_count, scale=scale, where=f"chunk {i}"
            )
            for i, (chunk, size) in enumerate(zip(update.chunks, sizes, strict=True))
        ]
        # validate-then-apply: nothing above mutated state
        if self._sum:
            for acc, vector in zip(self._sum, vectors, strict=True):
                acc.add_(vector)
        else:
            self._sum = vectors
        self._length = length
        self._client_ids.append(update.client_id)

    def result(self, *, multiplier: float = 1.0) -> EncryptedSum:
        """Serialise the current sum, optionally times a public scalar (:data:`SCALAR_MUL`-style params).

        The running sum is not consumed; later :meth:`add` calls continue it.

        Raises:
            EncodingError: nothing was added yet, or ``multiplier`` is not finite with
                ``0 < |multiplier| <= 1``.
            ParameterError: ``multiplier != 1`` with parameters that allow no scalar multiplication.
        """
        if not self._sum or self._length is None:
            raise EncodingError("no update was added; there is no sum to return")
        c = _check_real("multiplier", multiplier)
        if not (math.isfinite(c) and 0.0 < abs(c) <= 1.0):
            raise EncodingError("multiplier must be finite with 0 < |multiplier| <= 1 (range guarantee)")
        rescales = 0
        if c == 1.0:
            chunks = tuple(acc.serialize() for acc in self._sum)
        else:
            if self._config.params.scalar_mul_depth < 1:
                raise ParameterError(
                    "these parameters allow no plaintext-scalar multiplication (scalar_mul_depth=0); "
                    "use the SCALAR_MUL preset"
                )
            chunks = tuple(acc.mul(c).serialize() for acc in self._sum)  # TenSEAL rescales automatically
            rescales = 1
        return EncryptedSum(
            self._context_id, self._length, tuple(self._client_ids), chunks, c, rescales
        )

    def __repr__(self) -> str:
        return f"CiphertextAggregator(count={self.count}, length={self._length}, params={self._config.params})"


class KeyHolder:
    """Creates the CKKS keys, hands out the public context once, and decrypts (flooded) sums.

    Construct with :meth:`generate`. Nothing secret is printable, and no method returns the secret key.
    """

    __slots__ = ("_config", "_context", "_public", "_context_id", "_primes", "_flood_bits")

    def __init__(self, config: AggregationConfig, context: Any, *, flood_security_bits: int) -> None:
        if not isinstance(config, AggregationConfig):
            raise TypeError(f"config must be AggregationConfig, not {type(config).__name__}")
        if not context.is_private():
            raise ParameterError("a KeyHolder needs a context holding the secret key")
        self._config = config
        self._context = context
        self._primes = _coeff_primes(context, config.params)
        _check_exact_range(config, self._primes)
        context.global_scale = math.ldexp(1.0, config.params.scale_bits)
        public = context.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
        self._public = _encode_setup(config, public)
        self._context_id = _context_id(self._public)
        self._flood_bits = _check_int("flood_security_bits", flood_security_bits, 1, 128)

    @classmethod
    def generate(
        cls, config: AggregationConfig, *, flood_security_bits: int = _DEFAULT_FLOOD_BITS
    ) -> KeyHolder:
        """Generate a fresh key pair for ``config`` (SEAL's CSPRNG).

        Args:
            config: public configuration; its range is re-checked against the exact primes.
            flood_security_bits: lambda of the noise flooding (default 40).

        Raises:
            ParameterError: the configuration is out of range for the exact modulus, or SEAL refuses the
                parameters (e.g. no prime of a requested size is 1 mod 2N).
        """
        if not isinstance(config, AggregationConfig):
            raise TypeError(f"config must be AggregationConfig, not {type(config).__name__}")
        params = config.params
        try:
            context = ts.context(
                ts.SCHEME_TYPE.CKKS,
                poly_modulus_degree=params.poly_modulus_degree,
                coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            )
        except (ValueError, RuntimeError) as exc:
            raise ParameterError(f"SEAL refused the parameters {params}") from exc
        return cls(config, context, flood_security_bits=flood_security_bits)

    @property
    def config(self) -> AggregationConfig:
        return self._config

    @property
    def context_id(self) -> bytes:
        return self._context_id

    @property
    def flood_security_bits(self) -> int:
        return self._flood_bits

    def public_context_bytes(self) -> bytes:
        """The public blob for clients and the server (config + TenSEAL context without secret key).

        Serialised once at construction; every call returns the same bytes.
        """
        return self._public

    def flooding_sigma(self, length: int, *, rescales: int = 0) -> float:
        """sigma of the flooding noise per released coordinate for updates of length m (see module doc)."""
        return flooding_sigma(self._config, length, security_bits=self._flood_bits, rescales=rescales)

    def sum_error_bound(self, num_clients: int, length: int, *, total_weight: float | None = None,
                        rescales: int = 0) -> float:
        """:func:`sum_error_bound` for this configuration (raw decryption, no flooding)."""
        return sum_error_bound(
            self._config, num_clients, length, total_weight=total_weight, rescales=rescales
        )

    def _decrypt(self, total: EncryptedSum, flood: bool) -> FloatArray:
        if not isinstance(total, EncryptedSum):
            raise TypeError(f"expected EncryptedSum, not {type(total).__name__}")
        if not isinstance(flood, bool):
            raise TypeError("flood must be a bool")
        config, params = self._config, self._config.params
        if total.context_id != self._context_id:
            raise EncodingError("sum was computed under another context (context id mismatch)")
        if total.count > config.max_clients:
            raise EncodingError(f"sum claims {total.count} contributions, above max_clients={config.max_clients}")
        if total.rescales > params.scalar_mul_depth or (total.rescales == 0) != (total.multiplier == 1.0):
            raise EncodingError("sum's multiplier/rescale metadata is inconsistent with the parameters")
        sizes = _chunk_sizes(total.length, params.slot_count)
        if total.num_chunks != len(sizes):
            raise EncodingError(f"sum has {total.num_chunks} chunks, expected {len(sizes)}")
        scale = math.ldexp(1.0, params.scale_bits)
        primes = params.data_prime_count - total.rescales
        vectors = [
            _load_chunk(self._context, chunk, size=size, primes=primes, scale=scale, where=f"chunk {i}")
            for i, (chunk, size) in enumerate(zip(total.chunks, sizes, strict=True))
        ]
        try:
            values = np.concatenate([np.asarray(v.decrypt(), dtype=np.float64) for v in vectors])
        except (ValueError, RuntimeError, TypeError):
            raise CryptoError("decryption failed") from None
        # TenSEAL labels a rescaled ciphertext with the nominal scale 2^s, but its true scale is
        # 2^(2s) / q_dropped: undo that exactly (q / 2^s is exact in float64 for q < 2^53).
        for dropped in range(total.rescales):
            prime = self._primes[params.data_prime_count - 1 - dropped]
            values *= math.ldexp(float(prime), -params.scale_bits)
        if flood:
            sigma = self.flooding_sigma(total.length, rescales=total.rescales)
            values += sigma * _gaussian_noise(values.size)
        return values

    def decrypt_sum(self, total: EncryptedSum, *, flood: bool = True) -> tuple[FloatArray, float]:
        """Decrypt ``(multiplier * sum_k w_k x_k, multiplier * sum_k w_k)``.

        Args:
            total: the server's :class:`EncryptedSum`.
            flood: add the IND-CPA^D flooding noise (``sigma = self.flooding_sigma(m)``) to every
                coordinate. Turn it off **only** when the result (and anything derived from it) never
                leaves the key holder; see the module docstring.

        Raises:
            EncodingError: another context, inconsistent metadata, or malformed/mismatched ciphertexts.
            CryptoError: TenSEAL failed to decrypt.
        """
        values = self._decrypt(total, flood)
        return values[:-1], float(values[-1])

    def decrypt_mean(self, total: EncryptedSum, *, flood: bool = True) -> tuple[FloatArray, float]:
        """Decrypt the weighted mean ``sum_k w_k x_k / sum_k w_k`` and the total weight ``sum_k w_k``.

        The multiplier cancels in the mean; the returned total weight has it divided out. Flooding as in
        :meth:`decrypt_sum` (on by default).

        Raises:
            EncodingError: as :meth:`decrypt_sum`, or a total weight not distinguishable from zero
                (at most its error bound, flooding included).
            CryptoError: TenSEAL failed to decrypt.
        """
        values = self._decrypt(total, flood)
        weight = float(values[-1])
        bound = sum_error_bound(
            self._config, total.count, total.length, total_weight=weight, rescales=total.rescales
        )
        if flood:
            tail = _tail_factor(values.size, _BOUND_FAILURE_BITS)
            bound += tail * self.flooding_sigma(total.length, rescales=total.rescales)
        if abs(weight) <= bound:
            raise EncodingError("the total weight is not distinguishable from zero; no mean to return")
        mean: FloatArray = values[:-1] / weight
        return mean, weight / total.multiplier

    def __repr__(self) -> str:
        return f"KeyHolder(params={self._config.params}, max_clients={self._config.max_clients})"
