from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

from dp.discrete import (
    _gamma_as_rationals,
    _poisson_ratio,
    _poisson_tables,
    discrete_gaussian_pmf,
    discrete_gaussian_variance,
    discrete_laplace_pmf,
    discrete_laplace_variance,
    sample_bernoulli_exp,
    sample_discrete_gaussian,
    sample_discrete_laplace,
    sample_poisson,
    sample_skellam,
    skellam_pmf,
)
from dp.errors import DPParameterError
from dp.rng import CryptoRNG

ALPHA = 1e-4  # significance level; every test uses a fixed seed, so each outcome is deterministic
N = 100_000
N_BIG = 500_000  # for the noise distributions: variance resolved to ~0.2%

Pmf = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float64]]


def rng(*parts: int) -> CryptoRNG:
    return CryptoRNG.from_int_seed(2020, *parts)


def exact_moments(pmf: Pmf, lo: int, hi: int) -> tuple[float, float, float]:
    """Mass, variance and 4th central moment of a symmetric-or-not pmf over [lo, hi] (mean from the pmf)."""
    ks = np.arange(lo, hi + 1)
    p = pmf(ks)
    mass = float(p.sum())
    mean = float((ks * p).sum()) / mass
    var = float(((ks - mean) ** 2 * p).sum()) / mass
    m4 = float(((ks - mean) ** 4 * p).sum()) / mass
    return mass, var, m4


def chi_square_pvalue(samples: npt.NDArray[np.int64], pmf: Pmf, lo: int, hi: int) -> float:
    """Chi-square of the histogram against a unimodal pmf on [lo, hi] (which holds essentially all the
    mass): bins with expected count >= 5 stay, the tails beyond them are merged into one bin each."""
    ks = np.arange(lo, hi + 1)
    expected = pmf(ks) * samples.size
    counts = np.bincount(np.clip(samples, lo, hi) - lo, minlength=ks.size).astype(np.float64)
    big = np.flatnonzero(expected >= 5)
    first, last = int(big[0]), int(big[-1])
    if 0 < expected[:first].sum() < 5:
        first += 1
    if 0 < expected[last + 1 :].sum() < 5:
        last -= 1
    exp_bins = [expected[:first].sum(), *expected[first : last + 1], expected[last + 1 :].sum()]
    obs_bins = [counts[:first].sum(), *counts[first : last + 1], counts[last + 1 :].sum()]
    keep = [i for i, e in enumerate(exp_bins) if e > 0]
    e = np.array([exp_bins[i] for i in keep])
    o = np.array([obs_bins[i] for i in keep])
    assert e.min() >= 5 and o.sum() == samples.size
    return float(stats.chisquare(o, e * o.sum() / e.sum()).pvalue)


def assert_moments(samples: npt.NDArray[np.int64], mean: float, var: float, m4: float) -> None:
    n = samples.size
    assert abs(float(samples.mean()) - mean) < 5 * math.sqrt(var / n)
    assert abs(float(samples.var()) - var) < 5 * math.sqrt((m4 - var**2) / n)


# -- Bernoulli(exp(-gamma)) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0, 0.3, 1, 2.7, 10, Fraction(27, 10), Fraction(1, 3), 1e-9])
def test_bernoulli_exp_frequency(gamma: float | Fraction) -> None:
    n = 200_000 if gamma != 10 else 2_000_000
    x = sample_bernoulli_exp(gamma, rng(1, n), n)
    assert x.dtype == np.bool_ and x.shape == (n,)
    p = math.exp(-float(gamma))
    if gamma == 0:
        assert x.all()
    else:
        assert stats.binomtest(int(x.sum()), n, p).pvalue > ALPHA


def test_bernoulli_exp_vectorised_gammas() -> None:
    gammas = [0.0, 0.3, 1.0, 2.7]
    n = 50_000
    for array in (np.repeat(gammas, n), np.repeat(np.array([Fraction(g) for g in gammas], dtype=object), n)):
        x = sample_bernoulli_exp(array, rng(2), 4 * n)
        for i, g in enumerate(gammas):
            block = x[i * n : (i + 1) * n]
            if g == 0:
                assert block.all()
            else:
                assert stats.binomtest(int(block.sum()), n, math.exp(-g)).pvalue > ALPHA
    ints = sample_bernoulli_exp(np.full(n, 2, dtype=np.int64), rng(3), n)
    assert stats.binomtest(int(ints.sum()), n, math.exp(-2)).pvalue > ALPHA


def test_float_gammas_are_converted_exactly() -> None:
    values = np.array([0.0, 1e-300, 5e-324, 0.3, 1.0, 2.7, 1e10, 2.0**70, 123.456])
    nums, dens = _gamma_as_rationals(values, values.size)
    assert isinstance(dens, np.ndarray)
    for v, a, b in zip(values.tolist(), nums, dens, strict=True):
        assert Fraction(int(a), int(b)) == Fraction(v)


def test_bernoulli_exp_huge_gamma_is_false() -> None:
    assert not sample_bernoulli_exp(Fraction(10**30, 3), rng(4), 1000).any()
    assert not sample_bernoulli_exp(1e300, rng(4), 10).any()


@pytest.mark.parametrize("bad", [-0.1, Fraction(-1, 2), float("nan"), float("inf"), "1", None, True])
def test_bernoulli_exp_rejects_bad_gamma(bad: object) -> None:
    with pytest.raises(DPParameterError):
        sample_bernoulli_exp(bad, rng(5), 3)  # type: ignore[arg-type]


def test_bernoulli_exp_rejects_bad_shapes_and_arrays() -> None:
    with pytest.raises(DPParameterError):
        sample_bernoulli_exp(np.array([0.1, 0.2]), rng(5), 3)
    with pytest.raises(DPParameterError):
        sample_bernoulli_exp(np.array([0.1, -0.2, 0.3]), rng(5), 3)
    with pytest.raises(DPParameterError):
        sample_bernoulli_exp(np.array([1, -2, 3]), rng(5), 3)
    with pytest.raises(DPParameterError):
        sample_bernoulli_exp(np.array([0.1, np.nan, 0.3]), rng(5), 3)


# -- discrete Laplace ------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1, 3, Fraction(5, 2), 0.7])
def test_discrete_laplace_distribution(t: float | Fraction) -> None:
    x = sample_discrete_laplace(t, rng(6, int(float(t) * 10)), N_BIG)
    assert x.dtype == np.int64
    span = int(60 * float(t)) + 60

    def pmf(k: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        return discrete_laplace_pmf(k, t)

    mass, var, m4 = exact_moments(pmf, -span, span)
    assert mass == pytest.approx(1.0, abs=1e-12)
    assert var == pytest.approx(discrete_laplace_variance(t), rel=1e-9)
    assert_moments(x, 0.0, var, m4)
    assert chi_square_pvalue(x, pmf, -span, span) > ALPHA


# -- discrete Gaussian ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma2", [0.5, 1, Fraction(27, 10), 30.25, 4000])
def test_discrete_gaussian_distribution(sigma2: float | Fraction) -> None:
    x = sample_discrete_gaussian(sigma2, rng(7, int(float(sigma2) * 4)), N_BIG)
    assert x.dtype == np.int64 and x.shape == (N_BIG,)
    sigma = math.sqrt(float(sigma2))
    span = int(40 * sigma) + 10

    def pmf(k: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        return discrete_gaussian_pmf(k, sigma2)

    mass, var, m4 = exact_moments(pmf, -span, span)
    assert mass == pytest.approx(1.0, abs=1e-12)
    assert var == pytest.approx(discrete_gaussian_variance(sigma2), rel=1e-12)
    assert_moments(x, 0.0, var, m4)
    assert chi_square_pvalue(x, pmf, -span, span) > ALPHA
    # tail mass P(|X| > 3 sigma) against the exact sum
    ks = np.arange(-span, span + 1)
    tail = float(pmf(ks)[np.abs(ks) > 3 * sigma].sum())
    assert stats.binomtest(int((np.abs(x) > 3 * sigma).sum()), N_BIG, tail).pvalue > ALPHA


def test_discrete_gaussian_variance_is_below_sigma2() -> None:
    for s2 in (0.1, 0.5, 1.0, 2.0, 10.0):
        assert discrete_gaussian_variance(s2) < s2
    # small sigma: far below sigma2 (mass concentrates on 0); large sigma: equal to float precision
    e5, e20 = math.exp(-5), math.exp(-20)  # sigma2 = 0.1: the terms k = +-1, +-2 carry all the mass
    assert discrete_gaussian_variance(0.1) == pytest.approx(
        2 * (e5 + 4 * e20) / (1 + 2 * e5 + 2 * e20), rel=1e-9
    )
    assert discrete_gaussian_variance(1e6) == pytest.approx(1e6, rel=1e-12)
    # the direct sum (sigma <= 1e4) and the Poisson-summation branch agree at the switch
    assert discrete_gaussian_variance(1e8 * (1 - 1e-9)) == pytest.approx(1e8, rel=1e-8)
    assert discrete_gaussian_variance(1e8 * (1 + 1e-9)) == pytest.approx(1e8, rel=1e-8)
    assert float(discrete_gaussian_pmf(0, 1e8 * (1 + 1e-9))) == pytest.approx(
        float(discrete_gaussian_pmf(0, 1e8 * (1 - 1e-9))), rel=1e-8
    )


def test_discrete_gaussian_large_sigma_moments() -> None:
    s2 = Fraction(10**12)  # sigma = 1e6: exercises big Python-int exponents
    x = sample_discrete_gaussian(s2, rng(8), 50_000)
    assert_moments(x, 0.0, 1e12, 3e24)


# -- Poisson and Skellam ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.5, 1, 1.5, 3, 10, Fraction(21, 2), 50, 1000])
def test_poisson_distribution(mu: float | Fraction) -> None:
    x = sample_poisson(mu, rng(9, int(float(mu) * 10)), N_BIG)
    lam = float(mu)
    assert x.dtype == np.int64 and int(x.min()) >= 0
    assert_moments(x, lam, lam, lam + 3 * lam**2)
    hi = int(lam + 40 * math.sqrt(lam) + 40)

    def pmf(k: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        return np.asarray(stats.poisson.pmf(k, lam), dtype=np.float64)

    assert chi_square_pvalue(x, pmf, 0, hi) > ALPHA


def test_poisson_large_mean_moments() -> None:
    lam = 1e6
    x = sample_poisson(lam, rng(10), N)
    assert_moments(x, lam, lam, lam + 3 * lam**2)


@pytest.mark.parametrize("mu", [Fraction(3, 2), 3, Fraction(21, 2), 50, Fraction(2469, 2)])
def test_poisson_tables_bound_the_exact_acceptance_probabilities(mu: int | Fraction) -> None:
    """Every (L, W) table entry must satisfy L <= A * 2**64 <= L + W for the exact acceptance A <= 1."""
    tab = _poisson_tables(Fraction(mu))
    m, w = tab.mode, tab.half_width

    def check(lo: int, width: int, a: Fraction) -> None:
        assert 0 <= a <= 1
        assert lo <= a * 2**64 <= lo + width

    for v in range(2 * w + 1):
        k = m - w + v
        assert tab.exact_acceptance(0, k, 0) == _poisson_ratio(Fraction(mu), m, k)
        check(int(tab.center_lo[v]), int(tab.center_width[v]), tab.exact_acceptance(0, k, 0))
    for kind, los, widths, sign in (
        (1, tab.right_lo, tab.right_width, 1),
        (2, tab.left_lo, tab.left_width, -1),
    ):
        last = los.size - 1  # the last row also covers every larger j
        for j in range(1, last + 40):
            row = min(j, last)
            check(int(los[row]), int(widths[row]), tab.exact_acceptance(kind, m + sign * (w + j), j))
    # the envelope is a reasonable one: acceptance 0.37 (mu ~ 3) to 0.71 (large mu)
    assert 0.35 < tab.accept_rate < 0.8


@pytest.mark.parametrize("mu", [0.5, 3, 50])
def test_skellam_distribution(mu: float) -> None:
    x = sample_skellam(mu, rng(11, int(mu * 10)), N_BIG)
    assert x.dtype == np.int64 and x.shape == (N_BIG,)
    assert_moments(x, 0.0, 2 * mu, 2 * mu + 12 * mu**2)
    span = int(40 * math.sqrt(2 * mu)) + 30

    def pmf(k: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        return skellam_pmf(k, mu)

    assert chi_square_pvalue(x, pmf, -span, span) > ALPHA


def test_skellam_pmf_degenerate_at_zero_mean() -> None:
    assert skellam_pmf([-1, 0, 1], 0).tolist() == [0.0, 1.0, 0.0]
    assert sample_skellam(0, rng(12), 5).tolist() == [0] * 5


# -- sizes, determinism, validation ------------------------------------------------------------------------

SAMPLERS: list[tuple[str, Callable[[CryptoRNG, int], npt.NDArray[np.generic]]]] = [
    ("bernoulli_exp", lambda g, n: sample_bernoulli_exp(0.5, g, n)),
    ("laplace", lambda g, n: sample_discrete_laplace(2, g, n)),
    ("gaussian", lambda g, n: sample_discrete_gaussian(2.0, g, n)),
    ("poisson_small", lambda g, n: sample_poisson(2.5, g, n)),
    ("poisson_large", lambda g, n: sample_poisson(40, g, n)),
    ("skellam", lambda g, n: sample_skellam(3, g, n)),
]


@pytest.mark.parametrize("name,sampler", SAMPLERS, ids=[s[0] for s in SAMPLERS])
def test_sizes_zero_and_one_and_determinism(
    name: str, sampler: Callable[[CryptoRNG, int], npt.NDArray[np.generic]]
) -> None:
    assert sampler(rng(13), 0).shape == (0,)
    assert sampler(rng(13), 1).shape == (1,)
    assert np.array_equal(sampler(rng(14), 1000), sampler(rng(14), 1000))
    assert not np.array_equal(sampler(rng(14), 1000), sampler(rng(15), 1000))
    with pytest.raises(DPParameterError):
        sampler(rng(13), -1)
    with pytest.raises(DPParameterError):
        sampler(rng(13), 1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1.0, Fraction(-1, 3), float("nan"), float("inf"), "2", True, 2.0**101])
def test_discrete_gaussian_rejects_bad_sigma2(bad: object) -> None:
    with pytest.raises(DPParameterError):
        sample_discrete_gaussian(bad, rng(16), 3)  # type: ignore[arg-type]
    with pytest.raises(DPParameterError):
        discrete_gaussian_pmf(0, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -2, float("nan"), 2.0**60, Fraction(1, 2**63)])
def test_discrete_laplace_rejects_bad_scale(bad: object) -> None:
    with pytest.raises(DPParameterError):
        sample_discrete_laplace(bad, rng(17), 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, -0.5, Fraction(-1, 2), float("nan"), float("inf"), 2.0**33, "3", None])
def test_poisson_and_skellam_reject_bad_mu(bad: object) -> None:
    with pytest.raises(DPParameterError):
        sample_poisson(bad, rng(18), 3)  # type: ignore[arg-type]
    with pytest.raises(DPParameterError):
        sample_skellam(bad, rng(18), 3)  # type: ignore[arg-type]
    with pytest.raises(DPParameterError):
        skellam_pmf(0, bad)  # type: ignore[arg-type]
