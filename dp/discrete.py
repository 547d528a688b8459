"""Exact samplers for integer-valued DP noise, driven by :class:`dp.rng.CryptoRNG`.

References: C. Canonne, G. Kamath, T. Steinke, "The Discrete Gaussian for Differential Privacy",
NeurIPS 2020 (CKS20), Algorithms 1-3; J. von Neumann (1951) for the small-mean Poisson sampler.

Exactness. Every sampler here outputs *exactly* the stated distribution, given an ideal uniform random
source (the AES-CTR keystream), with no floating-point step in any accept/reject decision:

* Parameters are converted to exact rationals: ``Fraction(x)`` is the exact binary value of a float, so
  pass a :class:`~fractions.Fraction` (e.g. ``Fraction(27, 10)``) when the decimal value is what you mean.
* Every Bernoulli(p) with rational (or exactly bounded) p compares the first 64 bits of a uniform with
  ``p * 2**64``; a tie in those bits (probability <= 2**-63) is finished with exact :class:`Fraction`
  arithmetic and further random words (:func:`dp.rng._lazy_bernoulli`). The common case is integer
  numpy code; Python-level loops run only over rejection rounds, chain lengths and the tie set.
* Floats are used only to size batches (expected acceptance rates) and in the reference pmfs.

Two caps keep results representable, and are the only deviations from the ideal distributions:

* int64 output: a discrete Laplace draw whose value would exceed 2**62 raises :class:`DPError` instead of
  wrapping (probability < exp(-2**62 / scale) <= exp(-512) per draw for the allowed scales); likewise a
  Poisson proposal beyond 2**60 (probability < 2**-(2**40)). Means are capped at 2**32 and sigma^2 at
  2**100, so the distributions' real mass beyond int64 is of the same negligible order.
* The integer part of gamma in Bernoulli(exp(-gamma)) is capped at 2**62: the cap changes the output only
  if 2**62 consecutive Bernoulli(exp(-1)) draws succeed (probability exp(-2**62)), which would also take
  2**62 loop rounds.

Samplers (all exact in the sense above; all vectorised over ``size`` and returning int64 / bool):

* :func:`sample_bernoulli_exp` -- Bernoulli(exp(-gamma)), CKS20 Algorithm 1.
* :func:`sample_discrete_laplace` -- CKS20 Algorithm 2, rational scale.
* :func:`sample_discrete_gaussian` -- CKS20 Algorithm 3, rational sigma^2.
* :func:`sample_poisson` -- von Neumann's method for mu <= 1; for mu > 1 rejection from a
  uniform-centre / geometric-tail envelope whose acceptance probabilities are bounded to 64 bits by
  192-bit interval arithmetic (tables of O(sqrt(mu)) entries, cached) and decided exactly on ties.
* :func:`sample_skellam` -- Poisson(mu) - Poisson(mu).

Reference pmfs and variances (:func:`discrete_gaussian_pmf`, ...) are float64 computations for tests
and accounting; they are not used by the samplers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import stats

from dp.errors import DPError, DPParameterError
from dp.rng import CryptoRNG, _check_size, _lazy_bernoulli

__all__ = [
    "MAX_POISSON_MU",
    "MAX_SIGMA2",
    "discrete_gaussian_pmf",
    "discrete_gaussian_variance",
    "discrete_laplace_pmf",
    "discrete_laplace_variance",
    "sample_bernoulli_exp",
    "sample_discrete_gaussian",
    "sample_discrete_laplace",
    "sample_poisson",
    "sample_skellam",
    "skellam_pmf",
]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
U64Array = npt.NDArray[np.uint64]
IndexArray = npt.NDArray[np.intp]
ObjectArray = npt.NDArray[np.object_]
#: ``draw(idx)`` returns one independent Bernoulli(r_i) draw for each i in ``idx``.
DrawFn = Callable[[IndexArray], BoolArray]

#: Largest discrete-Laplace scale numerator (scale = numerator / denominator).
MAX_LAPLACE_NUMERATOR: Final = 1 << 53
#: Largest discrete-Laplace scale denominator.
MAX_LAPLACE_DENOMINATOR: Final = 1 << 62
#: Largest sigma^2 accepted by :func:`sample_discrete_gaussian` (sigma <= 2**50).
MAX_SIGMA2: Final = Fraction(1 << 100)
#: Largest Poisson/Skellam mean; the large-mean sampler precomputes tables of O(sqrt(mu)) entries.
MAX_POISSON_MU: Final = Fraction(1 << 32)
#: Means up to this use von Neumann's sampler on ceil(2 mu) pieces; above it, table-driven rejection
#: (which needs mode - half_width >= 0, i.e. mu >= 1).
POISSON_SMALL_MU: Final = Fraction(1)

_INT64_SAFE: Final = 1 << 62
_INT_PART_CAP: Final = 1 << 62
_TWO64: Final = 1 << 64
# Fixed-point precision (bits) of the interval arithmetic behind the Poisson tables.
_PRECISION: Final = 192
_SHIFT: Final = _PRECISION - 64
_ONE: Final = 1 << _PRECISION
# Proposal weights of the Poisson envelope are integers in units of 2**-16 of one centre point.
_WEIGHT_UNIT: Final = 1 << 16


# -- parameter handling -----------------------------------------------------------------------------


def _to_fraction(value: object, name: str) -> Fraction:
    """The exact rational value of an int, float or Fraction (floats: their exact binary value)."""
    if isinstance(value, bool):
        raise DPParameterError(f"{name} must be an int, float or Fraction, not bool")
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int | np.integer):
        return Fraction(int(value))
    if isinstance(value, float | np.floating):
        as_float = float(value)
        if not math.isfinite(as_float):
            raise DPParameterError(f"{name} must be finite, got {as_float}")
        return Fraction(as_float)
    raise DPParameterError(f"{name} must be an int, float or Fraction, not {type(value).__name__}")


def _exact_ratio(value: object) -> tuple[int, int]:
    fraction = _to_fraction(value, "gamma")
    return fraction.numerator, fraction.denominator


def _gamma_as_rationals(gamma: object, size: int) -> tuple[ObjectArray, ObjectArray | int]:
    """Exact numerators and denominators (Python ints) of gamma, broadcast to ``size``."""
    if not isinstance(gamma, np.ndarray | list | tuple):
        num, den = _exact_ratio(gamma)
        if num < 0:
            raise DPParameterError(f"gamma must be >= 0, got {Fraction(num, den)}")
        return np.full(size, num, dtype=object), den
    array = np.asarray(gamma)
    if array.shape != (size,):
        raise DPParameterError(f"gamma must be a scalar or have shape ({size},), got shape {array.shape}")
    if array.dtype.kind == "f":
        floats = array.astype(np.float64)
        if not bool(np.all(np.isfinite(floats) & (floats >= 0.0))):
            raise DPParameterError("gamma must be finite and >= 0")
        # A float is mantissa * 2**exponent with an integer 53-bit mantissa: exact, vectorised.
        mantissa, exponent = np.frexp(floats)
        integer_mantissa = np.ldexp(mantissa, 53).astype(np.int64).astype(object)
        shift = exponent.astype(np.int64) - 53
        nums = np.left_shift(integer_mantissa, np.maximum(shift, 0).astype(object))
        dens = np.left_shift(np.ones(size, dtype=object), np.maximum(-shift, 0).astype(object))
        return nums, dens
    if array.dtype.kind in "iu":
        if array.size and int(array.min()) < 0:
            raise DPParameterError("gamma must be >= 0")
        return array.astype(object), 1
    if array.dtype.kind == "O":  # e.g. Fractions: converting the caller's Python objects is per element
        nums, dens = np.frompyfunc(_exact_ratio, 1, 2)(array)
        if bool(np.any(nums < 0)):
            raise DPParameterError("gamma must be >= 0")
        return np.asarray(nums, dtype=object), np.asarray(dens, dtype=object)
    raise DPParameterError(f"gamma must be numeric, got dtype {array.dtype}")


# -- exact Bernoulli building blocks ------------------------------------------------------------------


def _bernoulli_fraction(p: Fraction, size: int, rng: CryptoRNG) -> BoolArray:
    """``size`` exact Bernoulli(p) draws for a fixed rational p."""
    if p <= 0:
        return np.zeros(size, dtype=np.bool_)
    if p >= 1:
        return np.ones(size, dtype=np.bool_)
    lo, rem = divmod(p.numerator << 64, p.denominator)
    return _lazy_bernoulli(
        rng,
        np.full(size, lo, dtype=np.uint64),
        np.full(size, int(rem != 0), dtype=np.uint64),
        lambda pos: [p] * len(pos),
    )


def _bernoulli_exp_unit(draw: DrawFn, size: int, rng: CryptoRNG) -> BoolArray:
    """Bernoulli(exp(-r_i)) for r_i in [0, 1], given Bernoulli(r_i) draws (CKS20 Algorithm 1, gamma <= 1).

    K counts the steps of the chain A_k ~ Bernoulli(r / k), k = 1, 2, ..., up to the first A_k = 0;
    P(K odd) = exp(-r). Bernoulli(r / k) is drawn as Bernoulli(r) AND Bernoulli(1 / k), so no
    denominator grows with k. All elements advance in lockstep, so k is shared by the whole batch.
    """
    out = np.empty(size, dtype=np.bool_)
    active = np.arange(size, dtype=np.intp)
    k = 1
    while active.size:  # P(chain longer than k) = r^k / k!, so this ends after a few rounds
        a = draw(active)
        if k > 1:
            a &= rng.integers(k, active.size) == 0
        out[active[~a]] = k % 2 == 1
        active = active[a]
        k += 1
    return out


def _always(idx: IndexArray) -> BoolArray:
    return np.ones(idx.size, dtype=np.bool_)


def _bernoulli_exp_one(size: int, rng: CryptoRNG) -> BoolArray:
    """Exact Bernoulli(exp(-1))."""
    return _bernoulli_exp_unit(_always, size, rng)


def _count_exp_one_successes(size: int, rng: CryptoRNG) -> IntArray:
    """Number of Bernoulli(exp(-1)) successes before the first failure: P(V >= v) = exp(-v)."""
    counts = np.zeros(size, dtype=np.int64)
    active = np.arange(size, dtype=np.intp)
    while active.size:
        active = active[_bernoulli_exp_one(active.size, rng)]
        counts[active] += 1
    return counts


def _bernoulli_exp_integer(m: IntArray, rng: CryptoRNG) -> BoolArray:
    """Bernoulli(exp(-m_i)) for integers m_i >= 0: all of m_i Bernoulli(exp(-1)) draws succeed."""
    ok = np.ones(m.size, dtype=np.bool_)
    remaining = m.copy()
    active = np.flatnonzero(remaining > 0)
    while active.size:  # survivors shrink by a factor e per round
        success = _bernoulli_exp_one(active.size, rng)
        ok[active[~success]] = False
        active = active[success]
        remaining[active] -= 1
        active = active[remaining[active] > 0]
    return ok


def _ratio_draw(rng: CryptoRNG, numerators: IntArray, denominator: int) -> DrawFn:
    """Bernoulli(numerators[i] / denominator) as ``integers(denominator) < numerators[i]``."""
    return lambda idx: rng.integers(denominator, idx.size) < numerators[idx]


def _bernoulli_exp_rational(num: ObjectArray, den: ObjectArray | int, rng: CryptoRNG) -> BoolArray:
    """Exact Bernoulli(exp(-num_i / den_i)) for Python-int object arrays (den may be one int).

    CKS20 Algorithm 1: exp(-gamma) = exp(-1)^floor(gamma) * exp(-frac(gamma)); the integer part is
    checked first and the fractional part only for the survivors.
    """
    quotient = num // den
    remainder = num - quotient * den
    out = _bernoulli_exp_integer(np.minimum(quotient, _INT_PART_CAP).astype(np.int64), rng)
    survivors = np.flatnonzero(out)
    if survivors.size == 0:
        return out
    rem = remainder[survivors]
    dens = den[survivors] if isinstance(den, np.ndarray) else np.full(survivors.size, den, dtype=object)
    scaled = rem * _TWO64
    lo_exact = scaled // dens
    lo = lo_exact.astype(np.uint64)  # rem < den, so lo < 2**64
    width = (scaled != lo_exact * dens).astype(np.uint64)

    def exact(pos: IndexArray) -> list[Fraction]:
        return [Fraction(int(rem[i]), int(dens[i])) for i in pos]

    def draw(sub: IndexArray) -> BoolArray:
        return _lazy_bernoulli(rng, lo[sub], width[sub], lambda pos: exact(sub[pos]))

    out[survivors] = _bernoulli_exp_unit(draw, survivors.size, rng)
    return out


def sample_bernoulli_exp(gamma: float | Fraction | npt.ArrayLike, rng: CryptoRNG, size: int) -> BoolArray:
    """``size`` exact Bernoulli(exp(-gamma)) draws (CKS20 Algorithm 1).

    Args:
        gamma: gamma >= 0 as an int, float or Fraction, or an array of ``size`` of them (float and int
            arrays are converted exactly and vectorised; object arrays of Fractions elementwise).
            Floats mean their exact binary value.
        rng: the random source.
        size: number of draws (>= 0).

    For gamma in [0, 1] the chain K (Bernoulli(gamma / k) for k = 1, 2, ... until the first failure)
    has P(K odd) = exp(-gamma); for gamma > 1, floor(gamma) Bernoulli(exp(-1)) draws must all succeed and
    then Bernoulli(exp(-(gamma - floor(gamma)))). Bernoulli(gamma / k) is Bernoulli(frac) AND
    Bernoulli(1 / k), each exact (see the module docstring); the integer part is capped at 2**62.
    """
    size = _check_size(size)
    num, den = _gamma_as_rationals(gamma, size)
    if size == 0:
        return np.zeros(0, dtype=np.bool_)
    return _bernoulli_exp_rational(num, den, rng)


# -- discrete Laplace and discrete Gaussian -------------------------------------------------------------


def _laplace_scale(t: object) -> Fraction:
    scale = _to_fraction(t, "t")
    if scale <= 0:
        raise DPParameterError(f"the discrete Laplace scale t must be > 0, got {scale}")
    if scale.numerator > MAX_LAPLACE_NUMERATOR or scale.denominator > MAX_LAPLACE_DENOMINATOR:
        raise DPParameterError(
            "the discrete Laplace scale must be a rational with numerator <= 2**53 and denominator <= 2**62"
            " (pass a Fraction with smaller terms)"
        )
    return scale


def _discrete_laplace(t: int, s: int, size: int, rng: CryptoRNG) -> IntArray:
    """CKS20 Algorithm 2: ``size`` draws with P(y) proportional to exp(-|y| s / t), vectorised."""
    out = np.empty(size, dtype=np.int64)
    # Expected acceptance, used only to size batches: P(D = 1) * (1 - P(Y = 0) / 2).
    p_keep = (1.0 - math.exp(-1.0)) / (t * -math.expm1(-1.0 / t))
    p_accept = p_keep * (1.0 + math.expm1(-s / t) / 2.0)
    v_max = (_INT64_SAFE - t) // t
    filled = 0
    while filled < size:  # rejection rounds
        need = size - filled
        draw = int(need / p_accept * 1.05) + 16
        u = rng.integers(t, draw)
        if t > 1:  # D ~ Bernoulli(exp(-U / t)); keep U when D = 1
            u = u[_bernoulli_exp_unit(_ratio_draw(rng, u, t), draw, rng)]
        v = _count_exp_one_successes(u.size, rng)
        if v.size and int(v.max()) > v_max:
            raise DPError("a discrete Laplace draw would overflow int64 (probability < exp(-512))")
        x = u + t * v  # geometric: P(X = x) proportional to exp(-x / t)
        y = x // s if s > 1 else x
        negative = rng.random_signs(y.size)
        keep = ~(negative & (y == 0))  # reject "-0" so that 0 is not counted twice
        values = np.where(negative, -y, y)[keep]
        take = min(values.size, need)
        out[filled : filled + take] = values[:take]
        filled += take
    return out


def sample_discrete_laplace(t: float | Fraction, rng: CryptoRNG, size: int) -> IntArray:
    """``size`` exact discrete Laplace draws: P(X = x) = (1 - e^(-1/t)) / (1 + e^(-1/t)) * e^(-|x| / t).

    CKS20 Algorithm 2 with scale ``t = num / den`` (an int, float or Fraction > 0, with ``num <= 2**53``
    and ``den <= 2**62``): U uniform on [0, num) kept with Bernoulli(exp(-U / num)), V the number of
    Bernoulli(exp(-1)) successes, X = U + num * V, Y = floor(X / den), a random sign, and "-0" rejected.
    Returns int64.
    """
    scale = _laplace_scale(t)
    size = _check_size(size)
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    return _discrete_laplace(scale.numerator, scale.denominator, size, rng)


def _sigma2(sigma2: object) -> Fraction:
    value = _to_fraction(sigma2, "sigma2")
    if value <= 0:
        raise DPParameterError(f"sigma2 must be > 0, got {value}")
    if value > MAX_SIGMA2:
        raise DPParameterError("sigma2 must be <= 2**100")
    return value


def sample_discrete_gaussian(sigma2: float | Fraction, rng: CryptoRNG, size: int) -> IntArray:
    """``size`` exact discrete Gaussian draws: P(X = x) proportional to exp(-x^2 / (2 sigma2)).

    CKS20 Algorithm 3: with t = floor(sigma) + 1, draw Y from the discrete Laplace with scale t and
    accept it with probability exp(-(|Y| - sigma2 / t)^2 / (2 sigma2)). With sigma2 = a / b exactly, the
    exponent is the rational (|Y| t b - a)^2 / (2 a b t^2), evaluated in Python integers and fed to the
    exact Bernoulli(exp(-gamma)) sampler. ``sigma2`` is an int, float (its exact binary value) or Fraction
    in (0, 2**100]. Returns int64. Note that the variance is slightly below sigma2
    (:func:`discrete_gaussian_variance`).
    """
    s2 = _sigma2(sigma2)
    size = _check_size(size)
    out = np.empty(size, dtype=np.int64)
    a, b = s2.numerator, s2.denominator
    t = math.isqrt(a // b) + 1  # floor(sqrt(a / b)) = isqrt(floor(a / b))
    tb = t * b
    den = 2 * a * b * t * t
    p_accept = 0.6
    filled = 0
    while filled < size:  # rejection rounds
        need = size - filled
        draw = int(need / p_accept * 1.05) + 16
        y = _discrete_laplace(t, 1, draw, rng)
        num = (np.abs(y).astype(object) * tb - a) ** 2
        values = y[_bernoulli_exp_rational(num, den, rng)]
        p_accept = max(values.size / draw, 0.05)
        take = min(values.size, need)
        out[filled : filled + take] = values[:take]
        filled += take
    return out


# -- Poisson and Skellam ------------------------------------------------------------------------------


def _poisson_von_neumann(lam: Fraction, size: int, rng: CryptoRNG) -> IntArray:
    """Exact Poisson(lam) for rational lam in (0, 1/2] (von Neumann's method).

    K = number of Bernoulli(lam) successes before the first failure, P(K = k) = (1 - lam) lam^k, is
    accepted with probability 1/K! (the AND of Bernoulli(1/j), j = 2..K); then
    P(K = k | accepted) = e^-lam lam^k / k!. Acceptance is (1 - lam) e^lam >= 0.82 for lam <= 1/2.
    """
    out = np.empty(size, dtype=np.int64)
    pending = np.arange(size, dtype=np.intp)
    while pending.size:  # rejection rounds
        n = pending.size
        k = np.zeros(n, dtype=np.int64)
        alive = np.arange(n, dtype=np.intp)
        while alive.size:
            alive = alive[_bernoulli_fraction(lam, alive.size, rng)]
            k[alive] += 1
        accepted = np.ones(n, dtype=np.bool_)
        testing = np.flatnonzero(k >= 2)
        j = 2
        while testing.size:
            passed = rng.integers(j, testing.size) == 0
            accepted[testing[~passed]] = False
            testing = testing[passed]
            testing = testing[k[testing] > j]
            j += 1
        out[pending[accepted]] = k[accepted]
        pending = pending[~accepted]
    return out


def _ceil_div(x: int, y: int) -> int:
    return -((-x) // y)


def _bounds64(lo: int, hi: int) -> tuple[int, int]:
    """(L, W) with L <= A * 2**64 <= L + W, for A in [lo, hi] / 2**_PRECISION and A <= 1."""
    low = min(lo >> _SHIFT, _TWO64 - 1)
    high = min(_ceil_div(hi, 1 << _SHIFT), _TWO64)
    return low, high - low


def _poisson_ratio(mu: Fraction, mode: int, k: int) -> Fraction:
    """p(k) / p(mode) = mu^(k - mode) mode! / k! for the Poisson(mu) pmf p, exactly."""
    a, b = mu.numerator, mu.denominator
    if k >= mode:
        return Fraction(a ** (k - mode), b ** (k - mode) * math.prod(range(mode + 1, k + 1)))
    return Fraction(math.prod(range(k + 1, mode + 1)) * b ** (mode - k), a ** (mode - k))


@dataclass(frozen=True)
class _PoissonTables:
    """Envelope and acceptance tables for table-driven rejection sampling of Poisson(mu), mu > 1.

    With m = floor(mu) (the mode), r(k) = p(k) / p(m) and a half-width w ~ 1.3 sqrt(mu), the proposal is

    * centre (weight (2w + 1) S, S = 2**16): k uniform on [m - w, m + w], accepted with probability
      r(k) <= 1;
    * right tail (integer weight W_R >= 2 T_R S r(m + w)): k = m + w + j, j = 1 + T_R V + U with
      V ~ Geometric(1/2) (P(V = v) = 2^-(v+1)) and U uniform on [0, T_R), accepted with probability
      A_R(j) = 2 T_R S r(m + w + j) 2^V / W_R;
    * left tail likewise with k = m - w - j (k < 0 rejected).

    The component is chosen by one uniform integer below the total weight.

    Log-concavity of the Poisson pmf gives r(m + w + j) <= r(m + w) rho^j with rho = mu / (m + w + 1)
    (the ratio at the edge), and T_R = ceil(0.7 (m + w + 1) / (m + w + 1 - mu)) makes rho^T_R <= e^-0.7
    < 1/2 (since -ln rho >= 1 - rho), so every acceptance probability is <= 1: this is exact rejection
    sampling from p. The acceptance rate is about 0.37 (mu ~ 3) to 0.71 (mu >= 1e5).

    The tables hold 64-bit bounds (L, W) on each acceptance probability, computed by fixed-point interval
    arithmetic with 192 bits; the exact value (a rational) is only computed on a tie. A tail table ends at
    the first multiple J of T with r(m + w + J) 2^(J / T) < 2^-64 r(m + w): beyond it every acceptance
    probability is < 2^-64 (log-concavity), which the last entry (L = 0, W = 1) encodes.
    """

    mu: Fraction
    mode: int
    half_width: int
    block_right: int
    block_left: int
    weight_center: int
    weight_right: int
    weight_left: int
    center_lo: U64Array
    center_width: U64Array
    right_lo: U64Array
    right_width: U64Array
    left_lo: U64Array
    left_width: U64Array
    accept_rate: float

    def exact_acceptance(self, kind: int, k: int, j: int) -> Fraction:
        """The exact acceptance probability of a proposal (kind 0 centre, 1 right tail, 2 left tail)."""
        if kind == 0:
            return _poisson_ratio(self.mu, self.mode, k)
        if k < 0:
            return Fraction(0)
        block, weight = (
            (self.block_right, self.weight_right) if kind == 1 else (self.block_left, self.weight_left)
        )
        return (
            _poisson_ratio(self.mu, self.mode, k) * (2 * block * _WEIGHT_UNIT << ((j - 1) // block)) / weight
        )


def _interval_chain(steps: int, factor: Callable[[int], tuple[int, int]]) -> list[tuple[int, int]]:
    """Intervals [lo, hi] / 2**_PRECISION of the running products of factor(1..steps), from 1."""
    lo = hi = _ONE
    out = [(lo, hi)]
    for d in range(1, steps + 1):
        num, den = factor(d)
        lo, hi = lo * num // den, _ceil_div(hi * num, den)
        out.append((lo, hi))
    return out


def _tail_table(
    start: tuple[int, int],
    factor: Callable[[int], tuple[int, int]],
    block: int,
    weight: int,
    last_j: int | None,
) -> tuple[U64Array, U64Array]:
    """(L, W) bounds of A(j) = 2 block S r_j 2^((j-1)//block) / weight for j >= 1 (index 0 unused).

    ``r_j = r_0 * prod(factor(1..j))``; ``start`` bounds r_0. Entries past ``last_j`` (k < 0) are 0.
    """
    lo, hi = start
    lo_start = lo
    los, widths = [0], [0]
    j = 0
    while True:  # over table entries (O(sqrt(mu)) of them), computed once per mu
        j += 1
        if last_j is not None and j > last_j:
            los.append(0)
            widths.append(0)
            break
        num, den = factor(j)
        lo, hi = lo * num // den, _ceil_div(hi * num, den)
        scale = (2 * block * _WEIGHT_UNIT) << ((j - 1) // block)
        low, width = _bounds64(lo * scale // weight, _ceil_div(hi * scale, weight))
        los.append(low)
        widths.append(width)
        if j % block == 0 and (hi << (j // block + 64)) < lo_start:
            los.append(0)
            widths.append(1)
            break
    return np.array(los, dtype=np.uint64), np.array(widths, dtype=np.uint64)


@functools.lru_cache(maxsize=8)  # about 20 MB per table set at mu = 2**32
def _poisson_tables(mu: Fraction) -> _PoissonTables:
    a, b = mu.numerator, mu.denominator
    m = a // b
    w = max(1, math.isqrt(m) * 13 // 10)
    right = _interval_chain(w, lambda d: (a, b * (m + d)))  # r(m + d) = r(m + d - 1) * mu / (m + d)
    left = _interval_chain(w, lambda d: ((m - d + 1) * b, a))  # r(m - d) = r(m - d + 1) * (m - d + 1) / mu
    center = [_bounds64(lo, hi) for lo, hi in left[:0:-1] + right]  # d = -w .. w
    block_right = math.ceil(Fraction(7, 10) * (m + w + 1) / (m + w + 1 - mu))
    block_left = math.ceil(Fraction(7, 10) * mu / (mu - m + w))
    # Integer weights in units of 1/_WEIGHT_UNIT of a centre point, rounded up (finely, so that the
    # rounding costs no acceptance to speak of).
    weight_right = max(1, _ceil_div(2 * block_right * right[w][1] * _WEIGHT_UNIT, _ONE))
    weight_left = max(1, _ceil_div(2 * block_left * left[w][1] * _WEIGHT_UNIT, _ONE))
    right_lo, right_width = _tail_table(
        right[w], lambda j: (a, b * (m + w + j)), block_right, weight_right, None
    )
    left_lo, left_width = _tail_table(
        left[w], lambda j: ((m - w - j + 1) * b, a), block_left, weight_left, m - w
    )
    weight_center = (2 * w + 1) * _WEIGHT_UNIT
    log_p_mode = m * math.log(float(mu)) - float(mu) - math.lgamma(m + 1)
    accept_rate = _WEIGHT_UNIT / (math.exp(log_p_mode) * (weight_center + weight_right + weight_left))
    return _PoissonTables(
        mu=mu,
        mode=m,
        half_width=w,
        block_right=block_right,
        block_left=block_left,
        weight_center=weight_center,
        weight_right=weight_right,
        weight_left=weight_left,
        center_lo=np.array([lo for lo, _ in center], dtype=np.uint64),
        center_width=np.array([width for _, width in center], dtype=np.uint64),
        right_lo=right_lo,
        right_width=right_width,
        left_lo=left_lo,
        left_width=left_width,
        accept_rate=min(max(accept_rate, 0.05), 1.0),
    )


def _geometric_half(size: int, rng: CryptoRNG) -> IntArray:
    """Geometric(1/2) on {0, 1, ...}: the number of trailing one bits of a random bit string."""
    counts = np.zeros(size, dtype=np.int64)
    active = np.arange(size, dtype=np.intp)
    while active.size:  # a further word only when all 64 bits were ones
        zeros_at = ~rng.bits64(active.size)  # trailing ones of the word = trailing zeros of its complement
        all_ones = zeros_at == 0
        lowest = zeros_at & (~zeros_at + np.uint64(1))  # lowest set bit, a power of two (exact as float)
        _, exponent = np.frexp(lowest.astype(np.float64))
        counts[active] += np.where(all_ones, 64, exponent.astype(np.int64) - 1)
        active = active[all_ones]
    return counts


def _tail_offsets(block: int, size: int, rng: CryptoRNG) -> IntArray:
    """j = 1 + block * V + U with V ~ Geometric(1/2), U uniform on [0, block)."""
    v = _geometric_half(size, rng)
    if v.size and int(v.max()) > _INT64_SAFE // (4 * block):
        raise DPError("a Poisson proposal would overflow int64 (probability < 2**-(2**30))")
    return 1 + block * v + rng.integers(block, size)


def _poisson_rejection(tab: _PoissonTables, size: int, rng: CryptoRNG) -> IntArray:
    """Exact Poisson(mu) for mu > 1 by table-driven rejection (see :class:`_PoissonTables`)."""
    out = np.empty(size, dtype=np.int64)
    m, w = tab.mode, tab.half_width
    split_right = tab.weight_center + tab.weight_right
    total = split_right + tab.weight_left
    filled = 0
    while filled < size:  # rejection rounds
        need = size - filled
        draw = int(need / tab.accept_rate * 1.05) + 16
        v = rng.integers(total, draw)
        k = np.empty(draw, dtype=np.int64)
        j = np.zeros(draw, dtype=np.int64)
        kind = np.zeros(draw, dtype=np.int8)
        lo = np.empty(draw, dtype=np.uint64)
        width = np.empty(draw, dtype=np.uint64)

        center = np.flatnonzero(v < tab.weight_center)
        point = v[center] // _WEIGHT_UNIT
        k[center] = m - w + point
        lo[center] = tab.center_lo[point]
        width[center] = tab.center_width[point]

        for code, members, block, tab_lo, tab_width, sign in (
            (
                1,
                (v >= tab.weight_center) & (v < split_right),
                tab.block_right,
                tab.right_lo,
                tab.right_width,
                1,
            ),
            (2, v >= split_right, tab.block_left, tab.left_lo, tab.left_width, -1),
        ):
            idx = np.flatnonzero(members)
            offsets = _tail_offsets(block, idx.size, rng)
            row = np.minimum(offsets, tab_lo.size - 1)
            k[idx] = m + sign * (w + offsets)
            j[idx] = offsets
            kind[idx] = code
            lo[idx] = tab_lo[row]
            width[idx] = tab_width[row]

        def exact(
            pos: IndexArray, k: IntArray = k, j: IntArray = j, kind: npt.NDArray[np.int8] = kind
        ) -> list[Fraction]:
            return [tab.exact_acceptance(int(kind[i]), int(k[i]), int(j[i])) for i in pos]

        values = k[_lazy_bernoulli(rng, lo, width, exact)]
        take = min(values.size, need)
        out[filled : filled + take] = values[:take]
        filled += take
    return out


def _poisson_mean(mu: object) -> Fraction:
    value = _to_fraction(mu, "mu")
    if value < 0:
        raise DPParameterError(f"mu must be >= 0, got {value}")
    if value > MAX_POISSON_MU:
        raise DPParameterError("mu must be <= 2**32")
    return value


def sample_poisson(mu: float | Fraction, rng: CryptoRNG, size: int) -> IntArray:
    """``size`` exact Poisson(mu) draws (int64), for mu an int, float or Fraction in [0, 2**32].

    * mu <= 1: the sum of ceil(2 mu) <= 2 independent Poisson(mu / ceil(2 mu)) draws, each by von
      Neumann's method (geometric proposal, accepted with probability 1/K!); only rational Bernoulli draws.
    * mu > 1: rejection from a uniform-centre / geometric-tail envelope of the log-concave pmf with
      exact acceptance probabilities (:class:`_PoissonTables`); O(1) expected cost per sample after a
      one-off O(sqrt(mu)) table computation (cached per mu).

    Both are exact: no floating-point step decides any draw.
    """
    lam = _poisson_mean(mu)
    size = _check_size(size)
    out = np.zeros(size, dtype=np.int64)
    if size == 0 or lam == 0:
        return out
    if lam <= POISSON_SMALL_MU:
        pieces = math.ceil(2 * lam)
        for _ in range(pieces):  # at most 2 pieces, each vectorised over the samples
            out += _poisson_von_neumann(lam / pieces, size, rng)
        return out
    return _poisson_rejection(_poisson_tables(lam), size, rng)


def sample_skellam(mu: float | Fraction, rng: CryptoRNG, size: int) -> IntArray:
    """``size`` exact Skellam(mu, mu) draws: Poisson(mu) - Poisson(mu), variance 2 mu (int64)."""
    lam = _poisson_mean(mu)
    size = _check_size(size)
    both = sample_poisson(lam, rng, 2 * size)
    return both[:size] - both[size:]


# -- reference pmfs -------------------------------------------------------------------------------------

_DIRECT_SUM_MAX_SIGMA: Final = 1.0e4


def _theta_sums(s2: float) -> tuple[float, float]:
    """(sum_k e^(-k^2/2s2), sum_k k^2 e^(-k^2/2s2)) over all integers k."""
    sigma = math.sqrt(s2)
    if sigma <= _DIRECT_SUM_MAX_SIGMA:
        ks = np.arange(1, math.ceil(40.0 * sigma) + 2, dtype=np.float64)
        terms = np.exp(-(ks * ks) / (2.0 * s2))
        return 1.0 + 2.0 * math.fsum(terms.tolist()), 2.0 * math.fsum((ks * ks * terms).tolist())
    # Poisson summation; the n >= 1 terms carry exp(-2 pi^2 s2) and underflow for sigma > 1e4.
    root = math.sqrt(2.0 * math.pi * s2)
    return root, root * s2


def discrete_gaussian_pmf(k: npt.ArrayLike, sigma2: float | Fraction) -> npt.NDArray[np.float64]:
    """P(X = k) for the discrete Gaussian with parameter sigma2, normalised by summing over |k| <= 40 sigma."""
    s2 = float(_sigma2(sigma2))
    kk = np.asarray(k, dtype=np.float64)
    normaliser, _ = _theta_sums(s2)
    return np.asarray(np.exp(-(kk * kk) / (2.0 * s2)) / normaliser, dtype=np.float64)


def discrete_gaussian_variance(sigma2: float | Fraction) -> float:
    """Var X for the discrete Gaussian (by the sum over |k| <= 40 sigma); it is below sigma2."""
    normaliser, second_moment = _theta_sums(float(_sigma2(sigma2)))
    return second_moment / normaliser


def discrete_laplace_pmf(k: npt.ArrayLike, t: float | Fraction) -> npt.NDArray[np.float64]:
    """P(X = k) = (1 - e^(-1/t)) / (1 + e^(-1/t)) e^(-|k|/t) for the discrete Laplace with scale t."""
    scale = float(_laplace_scale(t))
    q = math.exp(-1.0 / scale)
    kk = np.abs(np.asarray(k, dtype=np.float64))
    return np.asarray(-math.expm1(-1.0 / scale) / (1.0 + q) * np.exp(-kk / scale), dtype=np.float64)


def discrete_laplace_variance(t: float | Fraction) -> float:
    """Var X = 2 e^(-1/t) / (1 - e^(-1/t))^2 for the discrete Laplace with scale t."""
    scale = float(_laplace_scale(t))
    return 2.0 * math.exp(-1.0 / scale) / math.expm1(-1.0 / scale) ** 2


def skellam_pmf(k: npt.ArrayLike, mu: float | Fraction) -> npt.NDArray[np.float64]:
    """P(X = k) for Skellam(mu, mu) (scipy.stats.skellam); mu = 0 is the point mass at 0."""
    lam = float(_poisson_mean(mu))
    kk = np.asarray(k)
    if lam == 0.0:
        return np.asarray(kk == 0, dtype=np.float64)
    pmf: Any = stats.skellam.pmf(kk, lam, lam)
    return np.asarray(pmf, dtype=np.float64)
