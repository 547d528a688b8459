from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from scipy import stats

from attacks.audit import (
    _cp_lower,
    _cp_upper,
    audit_from_scores,
    audit_gaussian_mechanism,
    clopper_pearson_interval,
    epsilon_lower_bound,
    one_run_audit,
    one_run_epsilon_lower_bound,
    one_run_p_value,
)
from attacks.metrics import AttackParameterError
from dp.accountants import PLDAccountant
from dp.events import GaussianEvent


def _any(value: object) -> Any:
    """Pass a deliberately ill-typed argument past the type checker."""
    return value


# --------------------------------------------------------------------------- #
# Clopper–Pearson and the two-sample bound
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.999])
@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (0, 50), (50, 50), (7, 50), (480, 1000), (3, 10_000)])
def test_clopper_pearson_matches_scipy(k: int, n: int, confidence: float) -> None:
    # scipy finds the ends by root-finding (tolerance ~1e-8 relative); ours invert the beta CDF.
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    low, high = clopper_pearson_interval(k, n, confidence)
    assert low == pytest.approx(expected.low, rel=1e-7, abs=1e-15)
    assert high == pytest.approx(expected.high, rel=1e-7, abs=1e-15)
    # Each end solves its defining tail equation P = (1 − confidence)/2.
    tail = (1 - confidence) / 2
    if k > 0:
        assert stats.binom.sf(k - 1, n, low) == pytest.approx(tail, rel=1e-10)
    if k < n:
        assert stats.binom.cdf(k, n, high) == pytest.approx(tail, rel=1e-10)


def test_epsilon_lower_bound_uses_the_two_sided_exact_interval_ends() -> None:
    result = epsilon_lower_bound(tp=180, fp=20, positives=200, negatives=200, delta=1e-5, confidence=0.95)
    tpr = stats.binomtest(180, 200).proportion_ci(0.95, "exact")
    fpr = stats.binomtest(20, 200).proportion_ci(0.95, "exact")
    assert result.tpr_lower == pytest.approx(tpr.low, rel=1e-7)
    assert result.fpr_upper == pytest.approx(fpr.high, rel=1e-7)
    assert result.tpr_significance == result.fpr_significance == pytest.approx(0.025)
    direct = math.log((tpr.low - 1e-5) / fpr.high)
    reverse = math.log((1 - 1e-5 - fpr.high) / (1 - tpr.low))
    assert result.epsilon_lb == pytest.approx(max(direct, reverse), rel=1e-7)
    assert result.threshold is None and result.selection == "counts"


def test_epsilon_lower_bound_reverse_form_and_clipping() -> None:
    # Every positive flagged, half the negatives too: only TNR/FNR is informative.
    result = epsilon_lower_bound(tp=1000, fp=500, positives=1000, negatives=1000, delta=0.0)
    assert math.log(result.tpr_lower / result.fpr_upper) < 1.0
    expected = math.log((1 - result.fpr_upper) / (1 - result.tpr_lower))
    assert result.epsilon_lb == pytest.approx(expected) and result.epsilon_lb > 4
    # No separation: clipped at zero.
    assert epsilon_lower_bound(50, 50, 100, 100, 1e-5).epsilon_lb == 0.0
    assert epsilon_lower_bound(0, 100, 100, 100, 0.0).epsilon_lb == 0.0


def test_epsilon_lower_bound_monotonicity() -> None:
    def eps(tp: int = 90, fp: int = 5, delta: float = 1e-5, confidence: float = 0.95) -> float:
        return epsilon_lower_bound(tp, fp, 100, 100, delta, confidence).epsilon_lb

    assert eps(tp=80) < eps(tp=90) < eps(tp=100)
    assert eps(fp=10) < eps(fp=5) < eps(fp=0)
    assert eps(delta=0.1) < eps(delta=1e-3) < eps(delta=0.0)
    assert eps(confidence=0.999) < eps(confidence=0.95) < eps(confidence=0.5)


def test_audit_from_scores_bonferroni_is_the_best_threshold_under_simultaneous_bands() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(300, bool), np.zeros(200, bool)]
    scores = np.round(rng.normal(labels * 2.0, 1.0), 2)
    result = audit_from_scores(scores, labels, delta=1e-5, confidence=0.9)
    alpha = 0.1
    assert result.tpr_significance == pytest.approx(alpha / 600)
    assert result.fpr_significance == pytest.approx(alpha / 400)
    # The per-threshold bounds are the ends of two-sided exact intervals at level 1 − α/n.
    tpr = stats.binomtest(result.tp, 300).proportion_ci(1 - alpha / 300, "exact")
    fpr = stats.binomtest(result.fp, 200).proportion_ci(1 - alpha / 200, "exact")
    assert result.tpr_lower == pytest.approx(tpr.low, rel=1e-7)
    assert result.fpr_upper == pytest.approx(fpr.high, rel=1e-7)
    assert result.tp == np.sum(scores[labels] >= result.threshold)
    assert result.fp == np.sum(scores[~labels] >= result.threshold)
    # Brute force over every distinct threshold gives the same maximum.
    best = 0.0
    for t in np.unique(scores):
        tp, fp = int(np.sum(scores[labels] >= t)), int(np.sum(scores[~labels] >= t))
        lo = stats.binomtest(tp, 300).proportion_ci(1 - alpha / 300, "exact").low
        hi = stats.binomtest(fp, 200).proportion_ci(1 - alpha / 200, "exact").high
        candidates = [0.0]
        if lo > 1e-5:
            candidates.append(math.log((lo - 1e-5) / hi))
        if 1 - 1e-5 - hi > 0:
            candidates.append(math.log((1 - 1e-5 - hi) / (1 - lo)))
        best = max(best, *candidates)
    assert result.epsilon_lb == pytest.approx(best, rel=1e-7)
    assert result.epsilon_lb > 0.5


def test_bonferroni_band_covers_every_threshold_at_once() -> None:
    # Null scores ~ U(0, 1): the true FPR of "score >= t" is 1 − t.  The band fails if at some threshold
    # the true FPR exceeds the bound on the observed count; the worst thresholds sit just above each
    # order statistic s_(i), where the count is n − i and the true FPR tends to 1 − s_(i).
    rng = np.random.default_rng(1)
    n, reps, alpha_half = 40, 4000, 0.025
    counts = np.arange(n, -1, -1)  # n − i for i = 0..n (s_(0) = 0)
    sorted_scores = np.sort(rng.random((reps, n)), axis=1)
    true_fpr = 1.0 - np.concatenate([np.zeros((reps, 1)), sorted_scores], axis=1)
    banded = _cp_upper(counts, n, alpha_half / n)
    naive = _cp_upper(counts, n, alpha_half)
    band_failures = np.mean(np.any(true_fpr > banded, axis=1))
    naive_failures = np.mean(np.any(true_fpr > naive, axis=1))
    assert band_failures <= alpha_half + 3 * math.sqrt(alpha_half / reps)
    assert naive_failures > 4 * alpha_half  # scanning thresholds without correction is optimistic
    # Same for the TPR lower band: true TPR of "score >= t" is 1 − t, worst just below s_(i).
    lower_counts = np.arange(n, 0, -1)  # count n − i + 1 at t = s_(i), i = 1..n
    true_tpr = 1.0 - sorted_scores
    lower_failures = np.mean(np.any(true_tpr < _cp_lower(lower_counts, n, alpha_half / n), axis=1))
    assert lower_failures <= alpha_half + 3 * math.sqrt(alpha_half / reps)


def test_audit_from_scores_split() -> None:
    rng = np.random.default_rng(2)
    labels = np.r_[np.ones(401, bool), np.zeros(400, bool)]
    scores = rng.normal(labels * 3.0, 1.0)
    result = audit_from_scores(scores, labels, 1e-5, selection="split", seed=7)
    again = audit_from_scores(scores, labels, 1e-5, selection="split", seed=7)
    assert result == again
    assert result.selection == "split"
    assert (result.positives, result.negatives) == (201, 200)  # the held-out halves
    direct = epsilon_lower_bound(result.tp, result.fp, 201, 200, 1e-5)
    assert result.epsilon_lb == direct.epsilon_lb
    assert result.tpr_significance == pytest.approx(0.025)
    assert result.epsilon_lb > 1.0
    # Held-out counts are consistent with the threshold on exactly half of each class.
    assert result.tp <= np.sum(scores[labels] >= result.threshold)
    assert result.fp <= np.sum(scores[~labels] >= result.threshold)


# --------------------------------------------------------------------------- #
# one-run audit
# --------------------------------------------------------------------------- #


def _paper_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Scalar loop transcribing Steinke et al.'s p-value routine (independent of the vectorised code)."""
    q = 1 / (1 + math.exp(-eps))
    beta = stats.binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += stats.binom.pmf(v - i, r, q)
        if total > i * alpha:
            alpha = total / i
    return min(beta + alpha * delta * 2 * m, 1.0)


@pytest.mark.parametrize(
    ("m", "r", "v", "eps", "delta"),
    [
        (1000, 100, 90, 1.0, 1e-5),
        (1000, 100, 90, 2.5, 1e-4),
        (50, 50, 50, 3.0, 1e-3),
        (200, 20, 11, 0.1, 0.0),
    ],
)
def test_one_run_p_value_matches_the_paper_routine(m: int, r: int, v: int, eps: float, delta: float) -> None:
    assert one_run_p_value(v, r, m, eps, delta) == pytest.approx(
        _paper_p_value(m, r, v, eps, delta), rel=1e-10
    )


def test_one_run_pure_dp_bound_is_exact_inversion() -> None:
    eps = one_run_epsilon_lower_bound(95, 100, 1000, delta=0.0, confidence=0.95)
    assert one_run_p_value(95, 100, 1000, eps, 0.0) == pytest.approx(0.05, rel=1e-9)
    # Perfect guesses: P[Bin(r, q) = r] = q^r = α  ->  ε = logit(α^(1/r)).
    q = 0.05 ** (1 / 500)
    assert one_run_epsilon_lower_bound(500, 500, 500, 0.0) == pytest.approx(math.log(q / (1 - q)), rel=1e-9)


@pytest.mark.parametrize(
    ("v", "r", "m", "delta"), [(95, 100, 1000, 1e-5), (1000, 1000, 10_000, 1e-6), (60, 80, 80, 1e-3)]
)
def test_one_run_approximate_dp_bound_is_the_last_rejected_epsilon(
    v: int, r: int, m: int, delta: float
) -> None:
    eps = one_run_epsilon_lower_bound(v, r, m, delta)
    assert 0 < eps <= one_run_epsilon_lower_bound(v, r, m, 0.0)
    assert one_run_p_value(v, r, m, eps, delta) < 0.05
    assert one_run_p_value(v, r, m, eps + 1e-6, delta) >= 0.05


def test_one_run_perfect_guesses_grow_with_m_and_random_guessing_gives_zero() -> None:
    bounds = [one_run_epsilon_lower_bound(m, m, m, 1e-6) for m in (10, 100, 1000, 10_000)]
    assert all(a < b for a, b in zip(bounds, bounds[1:], strict=False))
    assert bounds[0] > 0 and bounds[-1] > 7
    # Exactly chance-level accuracy, and a guesser that ignores the run.
    assert one_run_epsilon_lower_bound(500, 1000, 1000, 1e-6) == 0.0
    rng = np.random.default_rng(3)
    included = rng.random(2000) < 0.5
    random_scores = rng.random(2000)
    result = one_run_audit(random_scores, included, 1e-6, k_positive=200, k_negative=200)
    assert result.epsilon_lb < 0.2


def test_one_run_monotonicity() -> None:
    def eps(v: int = 90, r: int = 100, m: int = 1000, delta: float = 1e-5, confidence: float = 0.95) -> float:
        return one_run_epsilon_lower_bound(v, r, m, delta, confidence)

    assert eps(v=70) < eps(v=80) < eps(v=90) < eps(v=100)
    assert eps(delta=1e-4) < eps(delta=1e-5) <= eps(delta=0.0)
    assert eps(m=10_000) < eps(m=1000)  # the δ term grows with m
    assert eps(confidence=0.99) < eps(confidence=0.95) < eps(confidence=0.8)
    assert eps(v=0) == 0.0


def test_one_run_audit_counts_guesses() -> None:
    scores = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    included = [1, 0, 1, 0, 0, 1]
    # "in" for canaries 0, 1 (one right), "out" for canaries 4, 5 (one right).
    result = one_run_audit(scores, included, 0.0, k_positive=2, k_negative=2)
    assert (result.guesses_correct, result.guesses_made, result.m) == (2, 4, 6)
    assert result.epsilon_lb == one_run_epsilon_lower_bound(2, 4, 6, 0.0)
    # Everything included is allowed (the inclusion bits are random, not labels to balance).
    assert one_run_audit([1.0, 2.0], [True, True], 0.0, k_positive=2).guesses_correct == 2


# --------------------------------------------------------------------------- #
# the Gaussian mechanism under audit
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correct_gaussian_mechanism_is_never_flagged(sigma: float, seed: int) -> None:
    report = audit_gaussian_mechanism(sigma, sigma, 1.0, 5000, 1e-5, seed)
    accountant = PLDAccountant()
    accountant.compose(GaussianEvent(sigma))
    assert report.claimed_epsilon == accountant.get_epsilon(1e-5)
    assert report.two_sample.epsilon_lb <= report.claimed_epsilon
    assert report.one_run.epsilon_lb <= report.claimed_epsilon
    assert not report.flagged
    assert report.two_sample.epsilon_lb > 0  # the audit has power, it is not trivially zero


@pytest.mark.parametrize("sigma", [1.0, 2.0, 4.0])
def test_ten_times_too_little_noise_is_flagged(sigma: float) -> None:
    report = audit_gaussian_mechanism(sigma, sigma / 10, 1.0, 5000, 1e-5, rng_seed=11)
    assert report.flagged
    assert report.two_sample.epsilon_lb > report.claimed_epsilon
    assert report.one_run.epsilon_lb > report.claimed_epsilon
    assert report.empirical_epsilon == max(report.two_sample.epsilon_lb, report.one_run.epsilon_lb)


def test_gaussian_audit_is_deterministic_and_scales_with_sensitivity() -> None:
    a = audit_gaussian_mechanism(2.0, 2.0, 1.0, 500, 1e-5, rng_seed=5)
    b = audit_gaussian_mechanism(2.0, 2.0, 1.0, 500, 1e-5, rng_seed=5)
    assert a == b
    scaled = audit_gaussian_mechanism(6.0, 6.0, 3.0, 500, 1e-5, rng_seed=5)
    assert scaled.claimed_epsilon == pytest.approx(a.claimed_epsilon)
    assert scaled.two_sample.epsilon_lb == pytest.approx(a.two_sample.epsilon_lb)
    assert scaled.one_run.epsilon_lb == pytest.approx(a.one_run.epsilon_lb)


# --------------------------------------------------------------------------- #
# every rejection path
# --------------------------------------------------------------------------- #

SCORES = np.array([0.1, 0.2, 0.3, 0.4])
LABELS = np.array([1, 0, 1, 0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: clopper_pearson_interval(3, 2), r"successes must be <= trials \(2\)"),
        (lambda: clopper_pearson_interval(0, 0), "trials must be >= 1"),
        (lambda: clopper_pearson_interval(-1, 5), "successes must be >= 0"),
        (lambda: clopper_pearson_interval(_any(1.0), 5), "successes must be an integer"),
        (lambda: clopper_pearson_interval(1, 5, 1.0), r"confidence must be in \(0, 1\)"),
        (lambda: epsilon_lower_bound(11, 0, 10, 10, 0.0), r"tp must be <= positives \(10\)"),
        (lambda: epsilon_lower_bound(0, 11, 10, 10, 0.0), r"fp must be <= negatives \(10\)"),
        (lambda: epsilon_lower_bound(0, 0, 0, 10, 0.0), "positives must be >= 1"),
        (lambda: epsilon_lower_bound(0, 0, 10, _any(True), 0.0), "negatives must be an integer"),
        (lambda: epsilon_lower_bound(0, 0, 10, 10, 1.0), r"delta must be in \[0, 1\)"),
        (lambda: epsilon_lower_bound(0, 0, 10, 10, math.nan), "delta must be finite"),
        (lambda: epsilon_lower_bound(0, 0, 10, 10, _any("0")), "delta must be a real number"),
        (lambda: epsilon_lower_bound(0, 0, 10, 10, 0.0, 0.0), r"confidence must be in \(0, 1\)"),
        (lambda: audit_from_scores(SCORES, LABELS, 0.0, selection=_any("best")), "selection must be"),
        (
            lambda: audit_from_scores(SCORES, LABELS, 0.0, selection="split", seed=_any(1.5)),
            "seed must be an integer",
        ),
        (lambda: audit_from_scores([0.1, 0.2, 0.3], [1, 0, 0], 0.0, selection="split"), "at least 2 members"),
        (lambda: audit_from_scores(SCORES, [1, 1, 1, 1], 0.0), "both members and non-members"),
        (
            lambda: one_run_epsilon_lower_bound(5, 4, 10, 0.0),
            r"guesses_correct must be <= guesses_made \(4\)",
        ),
        (lambda: one_run_epsilon_lower_bound(1, 11, 10, 0.0), r"guesses_made must be <= m \(10\)"),
        (lambda: one_run_epsilon_lower_bound(1, 1, 0, 0.0), "m must be >= 1"),
        (lambda: one_run_epsilon_lower_bound(1, 1, 1, -0.1), r"delta must be in \[0, 1\)"),
        (lambda: one_run_p_value(1, 1, 1, -1.0, 0.0), "epsilon must be >= 0"),
        (lambda: one_run_p_value(1, 1, 1, math.inf, 0.0), "epsilon must be finite"),
        (
            lambda: one_run_audit(SCORES, LABELS, 0.0, k_positive=3, k_negative=2),
            r"must be <= the number of canaries \(4\)",
        ),
        (lambda: one_run_audit(SCORES, LABELS, 0.0, k_positive=-1), "k_positive must be >= 0"),
        (lambda: one_run_audit(SCORES, [1, 0], 0.0, k_positive=1), "same length"),
        (lambda: audit_gaussian_mechanism(0.0, 1.0, 1.0, 10, 1e-5, 0), "sigma_claimed must be > 0"),
        (lambda: audit_gaussian_mechanism(1.0, -1.0, 1.0, 10, 1e-5, 0), "sigma_actual must be > 0"),
        (lambda: audit_gaussian_mechanism(1.0, 1.0, 0.0, 10, 1e-5, 0), "sensitivity must be > 0"),
        (lambda: audit_gaussian_mechanism(1.0, 1.0, 1.0, 1, 1e-5, 0), "trials must be >= 2"),
        (lambda: audit_gaussian_mechanism(1.0, 1.0, 1.0, 10, 0.0, 0), "delta must be > 0"),
        (lambda: audit_gaussian_mechanism(1.0, 1.0, 1.0, 10, 1e-5, _any("0")), "rng_seed must be an integer"),
        (
            lambda: audit_gaussian_mechanism(1.0, 1.0, 1.0, 10, 1e-5, 0, guess_fraction=0.0),
            "guess_fraction must be",
        ),
    ],
)
def test_rejections(call: Callable[[], object], message: str) -> None:
    with pytest.raises(AttackParameterError, match=message):
        call()
