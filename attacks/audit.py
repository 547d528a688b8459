"""Empirical privacy auditing: lower bounds on the ε a mechanism actually provides.

An (ε, δ)-DP mechanism bounds every membership test: TPR ≤ e^ε·FPR + δ and, applying it to the
complementary test, TNR ≤ e^ε·FNR + δ.  An audit runs a distinguishing attack, bounds its TPR from
below and FPR from above with confidence, and reports the smallest ε compatible with both.  If that
lower bound exceeds the ε the accountant claims, the implementation (or the analysis) is wrong.

* :func:`epsilon_lower_bound` — Jagielski, Ullman & Oprea (2020), "Auditing Differentially Private
  Machine Learning: How Private is Private SGD?": Clopper–Pearson bounds on counts from independent
  trials with the canary in (positives) and out (negatives).
* :func:`audit_from_scores` — the same from attack scores, choosing the threshold honestly.
* :func:`one_run_epsilon_lower_bound`, :func:`one_run_audit` — Steinke, Nasr & Jagielski (2023),
  "Privacy Auditing with One (1) Training Run": m canaries in one run, each included with
  probability ½.
* :func:`audit_gaussian_mechanism` — a self-contained 1-D Gaussian mechanism under audit, for tests
  and as a worked example.

All bounds hold with probability at least ``confidence`` over the randomness of the trials.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from attacks.metrics import (
    ArrayInput,
    AttackParameterError,
    FloatArray,
    _roc_counts,
    _scores_and_labels,
)
from dp.accountants import PLDAccountant
from dp.events import GaussianEvent

__all__ = [
    "AuditResult",
    "GaussianAuditReport",
    "OneRunAuditResult",
    "audit_from_scores",
    "audit_gaussian_mechanism",
    "clopper_pearson_interval",
    "epsilon_lower_bound",
    "one_run_audit",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
]

ThresholdSelection = Literal["bonferroni", "split"]

# Bisection stops when the bracket on ε is this narrow; the reported ε is the bracket's low end.
_EPSILON_TOLERANCE = 1e-10
_EPSILON_GRID = 128
# Bound on the binomial pmf values held at once by the one-run p-value.
_PMF_BLOCK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #


def _count(value: object, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise AttackParameterError(f"{name} must be an integer, got {type(value).__name__}")
    result = int(value)
    if result < minimum:
        raise AttackParameterError(f"{name} must be >= {minimum}, got {result}")
    return result


def _real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise AttackParameterError(f"{name} must be a real number, got {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result):
        raise AttackParameterError(f"{name} must be finite, got {result}")
    return result


def _confidence(value: object) -> float:
    confidence = _real(value, "confidence")
    if not 0.0 < confidence < 1.0:
        raise AttackParameterError(f"confidence must be in (0, 1), got {confidence}")
    return confidence


def _delta(value: object) -> float:
    delta = _real(value, "delta")
    if not 0.0 <= delta < 1.0:
        raise AttackParameterError(f"delta must be in [0, 1), got {delta}")
    return delta


# --------------------------------------------------------------------------- #
# Clopper–Pearson
# --------------------------------------------------------------------------- #


def _cp_lower(successes: npt.ArrayLike, trials: int, significance: float) -> FloatArray:
    """One-sided exact lower bound: P[Bin(n, p) ≥ k] = significance (0 when k = 0)."""
    k = np.asarray(successes, dtype=np.float64)
    safe = np.maximum(k, 1.0)
    bound = stats.beta.ppf(significance, safe, trials - safe + 1.0)
    return np.asarray(np.where(k > 0, bound, 0.0), dtype=np.float64)


def _cp_upper(successes: npt.ArrayLike, trials: int, significance: float) -> FloatArray:
    """One-sided exact upper bound: P[Bin(n, p) ≤ k] = significance (1 when k = n)."""
    k = np.asarray(successes, dtype=np.float64)
    safe = np.minimum(k, trials - 1.0)
    bound = stats.beta.ppf(1.0 - significance, safe + 1.0, trials - safe)
    return np.asarray(np.where(k < trials, bound, 1.0), dtype=np.float64)


def clopper_pearson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval: each end is one-sided at level ``1 − (1 − confidence)/2``.

    Identical to ``scipy.stats.binomtest(successes, trials).proportion_ci(confidence, "exact")``.
    """
    n = _count(trials, "trials", minimum=1)
    k = _count(successes, "successes")
    if k > n:
        raise AttackParameterError(f"successes must be <= trials ({n}), got {k}")
    tail = (1.0 - _confidence(confidence)) / 2.0
    return float(_cp_lower(k, n, tail)), float(_cp_upper(k, n, tail))


def _epsilon_from_rates(tpr_lower: FloatArray, fpr_upper: FloatArray, delta: float) -> FloatArray:
    """max(log((TPR−δ)/FPR), log((TNR−δ)/FNR), 0) at the pessimistic ends of the intervals."""
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = np.where(tpr_lower > delta, np.log(tpr_lower - delta) - np.log(fpr_upper), -np.inf)
        complement = 1.0 - delta - fpr_upper
        reverse = np.where(complement > 0, np.log(complement) - np.log1p(-tpr_lower), -np.inf)
    return np.asarray(np.maximum(np.maximum(direct, reverse), 0.0), dtype=np.float64)


# --------------------------------------------------------------------------- #
# Jagielski et al. (2020): two-sample audits
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class AuditResult:
    """An ε lower bound from ``tp`` of ``positives`` canary-in and ``fp`` of ``negatives`` canary-out
    trials flagged "member".

    ``tpr_lower`` / ``fpr_upper`` are one-sided Clopper–Pearson bounds at significance
    ``tpr_significance`` / ``fpr_significance``; the two together fail with probability at most
    ``1 − confidence``.  ``threshold`` is the score threshold (``score >= threshold`` = member) when the
    counts came from scores, ``selection`` says how it was chosen: ``"counts"`` (counts given
    directly), ``"bonferroni"`` or ``"split"`` (see :func:`audit_from_scores`).
    """

    epsilon_lb: float
    tpr_lower: float
    fpr_upper: float
    tp: int
    fp: int
    positives: int
    negatives: int
    delta: float
    confidence: float
    tpr_significance: float
    fpr_significance: float
    threshold: float | None
    selection: str


def _check_counts(tp: object, fp: object, positives: object, negatives: object) -> tuple[int, int, int, int]:
    n_pos = _count(positives, "positives", minimum=1)
    n_neg = _count(negatives, "negatives", minimum=1)
    true_pos = _count(tp, "tp")
    false_pos = _count(fp, "fp")
    if true_pos > n_pos:
        raise AttackParameterError(f"tp must be <= positives ({n_pos}), got {true_pos}")
    if false_pos > n_neg:
        raise AttackParameterError(f"fp must be <= negatives ({n_neg}), got {false_pos}")
    return true_pos, false_pos, n_pos, n_neg


def epsilon_lower_bound(
    tp: int,
    fp: int,
    positives: int,
    negatives: int,
    delta: float,
    confidence: float = 0.95,
) -> AuditResult:
    """Jagielski–Ullman–Oprea ε lower bound for one fixed test.

    ``tp`` of ``positives`` independent trials with the canary were flagged, and ``fp`` of ``negatives``
    without.  With α = 1 − ``confidence`` split evenly, TPR_lo is the one-sided Clopper–Pearson lower
    bound at significance α/2 and FPR_hi the upper bound at α/2 (the ends of the two-sided exact
    intervals at level ``confidence``); by the union bound both hold with probability ≥ ``confidence``.
    Then ε_lb = max(log((TPR_lo − δ)/FPR_hi), log((1 − FPR_hi − δ)/(1 − TPR_lo)), 0).

    The test (threshold) must not have been chosen on these same trials; see :func:`audit_from_scores`.
    """
    true_pos, false_pos, n_pos, n_neg = _check_counts(tp, fp, positives, negatives)
    delta = _delta(delta)
    confidence = _confidence(confidence)
    tail = (1.0 - confidence) / 2.0
    return _result(true_pos, false_pos, n_pos, n_neg, delta, confidence, tail, tail, None, "counts")


def _result(
    tp: int,
    fp: int,
    positives: int,
    negatives: int,
    delta: float,
    confidence: float,
    tpr_significance: float,
    fpr_significance: float,
    threshold: float | None,
    selection: str,
) -> AuditResult:
    tpr_lower = _cp_lower(tp, positives, tpr_significance)
    fpr_upper = _cp_upper(fp, negatives, fpr_significance)
    return AuditResult(
        epsilon_lb=float(_epsilon_from_rates(tpr_lower, fpr_upper, delta)),
        tpr_lower=float(tpr_lower),
        fpr_upper=float(fpr_upper),
        tp=tp,
        fp=fp,
        positives=positives,
        negatives=negatives,
        delta=delta,
        confidence=confidence,
        tpr_significance=tpr_significance,
        fpr_significance=fpr_significance,
        threshold=threshold,
        selection=selection,
    )


def audit_from_scores(
    scores: ArrayInput,
    labels: ArrayInput,
    delta: float,
    confidence: float = 0.95,
    *,
    selection: ThresholdSelection = "bonferroni",
    seed: int = 0,
) -> AuditResult:
    """The best Jagielski ε lower bound over score thresholds, with an honest threshold choice.

    ``scores`` come from independent trials (higher = canary present), ``labels`` say whether the
    canary was present (boolean or 0/1).  Picking the best threshold on the data that evaluates it is
    optimistic, so one of two corrections is applied:

    ``"bonferroni"`` (default; deterministic, uses every trial).  The Clopper–Pearson bounds are made
    simultaneous over *all* thresholds: the FPR upper bound at significance α/(2·negatives) and the
    TPR lower bound at α/(2·positives), α = 1 − ``confidence``.  This is a union bound over count
    levels, not over the (data-dependent) thresholds: the FPR bound can only fail at a threshold where
    fp ≤ k and the true FPR exceeds U(k) for some k < negatives, and for each k that event has
    probability ≤ α/(2·negatives) because the true FPR is monotone in the threshold — so a union over
    ``negatives`` levels (and ``positives`` for the TPR) covers every threshold at once.  The returned
    result is the threshold that maximises ε_lb under these bands.

    ``"split"``.  Each class is shuffled with ``seed`` and halved; the threshold maximising the
    (plain, α/2 per side) ε_lb on the first half is evaluated with :func:`epsilon_lower_bound` on the
    second half only, whose counts are then exactly binomial.  Needs at least 2 trials per class.
    """
    values, members = _scores_and_labels(scores, labels)
    delta = _delta(delta)
    confidence = _confidence(confidence)
    if selection == "bonferroni":
        return _audit_bonferroni(values, members, delta, confidence)
    if selection == "split":
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise AttackParameterError(f"seed must be an integer, got {type(seed).__name__}")
        return _audit_split(values, members, delta, confidence, int(seed))
    raise AttackParameterError(f"selection must be 'bonferroni' or 'split', got {selection!r}")


def _audit_bonferroni(
    values: FloatArray, members: npt.NDArray[np.bool_], delta: float, confidence: float
) -> AuditResult:
    false_pos, true_pos, thresholds = _roc_counts(values, members)
    positives, negatives = int(true_pos[-1]), int(false_pos[-1])
    alpha = 1.0 - confidence
    tpr_significance = alpha / (2.0 * positives)
    fpr_significance = alpha / (2.0 * negatives)
    epsilons = _epsilon_from_rates(
        _cp_lower(true_pos, positives, tpr_significance),
        _cp_upper(false_pos, negatives, fpr_significance),
        delta,
    )
    best = int(np.argmax(epsilons))
    return _result(
        int(true_pos[best]),
        int(false_pos[best]),
        positives,
        negatives,
        delta,
        confidence,
        tpr_significance,
        fpr_significance,
        float(thresholds[best]),
        "bonferroni",
    )


def _audit_split(
    values: FloatArray, members: npt.NDArray[np.bool_], delta: float, confidence: float, seed: int
) -> AuditResult:
    rng = np.random.default_rng(seed)
    member_idx = rng.permutation(np.flatnonzero(members))
    outsider_idx = rng.permutation(np.flatnonzero(~members))
    if member_idx.size < 2 or outsider_idx.size < 2:
        raise AttackParameterError(
            "selection='split' needs at least 2 members and 2 non-members, "
            f"got {member_idx.size} and {outsider_idx.size}"
        )
    half_in, half_out = member_idx.size // 2, outsider_idx.size // 2
    choose = np.concatenate([member_idx[:half_in], outsider_idx[:half_out]])
    false_pos, true_pos, thresholds = _roc_counts(values[choose], members[choose])
    tail = (1.0 - confidence) / 2.0
    epsilons = _epsilon_from_rates(
        _cp_lower(true_pos, half_in, tail), _cp_upper(false_pos, half_out, tail), delta
    )
    # Ties in ε (often all zero) go to the threshold with the largest empirical TPR − FPR.
    advantage = true_pos / half_in - false_pos / half_out
    best = int(np.lexsort((-advantage, -epsilons))[0])
    threshold = float(thresholds[best])
    held_in, held_out = values[member_idx[half_in:]], values[outsider_idx[half_out:]]
    return _result(
        int(np.count_nonzero(held_in >= threshold)),
        int(np.count_nonzero(held_out >= threshold)),
        held_in.size,
        held_out.size,
        delta,
        confidence,
        tail,
        tail,
        threshold,
        "split",
    )


# --------------------------------------------------------------------------- #
# Steinke, Nasr & Jagielski (2023): one training run
# --------------------------------------------------------------------------- #


def _check_one_run(guesses_correct: object, guesses_made: object, m: object) -> tuple[int, int, int]:
    canaries = _count(m, "m", minimum=1)
    made = _count(guesses_made, "guesses_made")
    correct = _count(guesses_correct, "guesses_correct")
    if made > canaries:
        raise AttackParameterError(f"guesses_made must be <= m ({canaries}), got {made}")
    if correct > made:
        raise AttackParameterError(f"guesses_correct must be <= guesses_made ({made}), got {correct}")
    return correct, made, canaries


def _one_run_p_values(correct: int, made: int, m: int, epsilons: FloatArray, delta: float) -> FloatArray:
    """The p-value bound f_ε(v) at each ε of ``epsilons`` (vectorised; see one_run_p_value)."""
    if correct == 0:
        return np.ones_like(epsilons)
    q = special.expit(epsilons)[:, None]
    tail = stats.binom.sf(correct - 1, made, q[:, 0])
    if delta == 0.0:
        return np.asarray(np.minimum(tail, 1.0), dtype=np.float64)
    # max_i P[v − i ≤ W' < v] / i over i = 1..v: cumulative sums of the pmf walking down from v − 1,
    # a block of ε values at a time so that memory stays bounded for large v.
    below_v = np.arange(correct - 1, -1, -1)[None, :]
    divisors = np.arange(1, correct + 1)[None, :]
    windows = np.empty(epsilons.size, dtype=np.float64)
    block = max(1, _PMF_BLOCK_ELEMENTS // correct)
    for start in range(0, epsilons.size, block):
        pmf = stats.binom.pmf(below_v, made, q[start : start + block])
        windows[start : start + block] = (np.cumsum(pmf, axis=1) / divisors).max(axis=1)
    p_values = tail + 2.0 * m * delta * windows
    return np.asarray(np.minimum(p_values, 1.0), dtype=np.float64)


def one_run_p_value(guesses_correct: int, guesses_made: int, m: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[≥ v correct of r guesses] for an (ε, δ)-DP mechanism (Steinke et al., Thm 3.1).

    With m canaries each included independently with probability ½ and an auditor making r guesses
    (abstaining on the rest), W' ~ Binomial(r, e^ε/(1 + e^ε)) and

        f_ε(v) = P[W' ≥ v] + 2·m·δ · max_{1 ≤ i ≤ v} P[v − i ≤ W' < v] / i       (capped at 1).

    For δ = 0 this is exactly the tail of the ε-DP randomised-response guesser, which attains it.
    """
    correct, made, canaries = _check_one_run(guesses_correct, guesses_made, m)
    eps = _real(epsilon, "epsilon")
    if eps < 0:
        raise AttackParameterError(f"epsilon must be >= 0, got {eps}")
    return float(_one_run_p_values(correct, made, canaries, np.array([eps]), _delta(delta))[0])


def one_run_epsilon_lower_bound(
    guesses_correct: int,
    guesses_made: int,
    m: int,
    delta: float,
    confidence: float = 0.95,
) -> float:
    """The largest ε rejected at significance α = 1 − ``confidence`` by a one-run audit.

    ``m`` canaries were each included independently with probability ½; the auditor guessed (in or
    out) for ``guesses_made`` of them — a number fixed before looking at the run — and was right
    ``guesses_correct`` times.  Returns sup{ε ≥ 0 : f_ε(v) < α} with f from :func:`one_run_p_value`
    (0 if no ε is rejected).  Any such ε is a valid lower bound: if the mechanism is (ε*, δ)-DP then it
    is (ε, δ)-DP for every ε ≥ ε*, and rejecting some ε ≥ ε* means W ≥ v_ε, an event of probability
    at most f_ε(v_ε) < α.

    Exact vs numerical.  δ = 0: closed form — P[Bin(r, q) ≥ v] = α is solved by the Clopper–Pearson
    lower bound q* = Beta⁻¹(α; v, r − v + 1), and ε_lb = max(0, logit q*); this is tight for
    randomised response.  δ > 0: f_ε(v) above is the paper's bound, evaluated exactly, but it is an
    upper bound (conservative) and is inverted numerically — a grid on [0, ε_lb(δ = 0)] (f only grows
    with δ) locates the last ε with f < α and bisection narrows it to 1e-10; the returned ε always
    satisfies f_ε(v) < α.  The δ term 2mδ must be well below α for the bound to be informative.
    """
    correct, made, canaries = _check_one_run(guesses_correct, guesses_made, m)
    delta = _delta(delta)
    alpha = 1.0 - _confidence(confidence)
    if correct == 0:
        return 0.0
    # q* < 1 for every finite r; the clip only keeps logit finite against round-off.
    q_star = min(float(stats.beta.ppf(alpha, correct, made - correct + 1)), math.nextafter(1.0, 0.0))
    pure = max(0.0, float(special.logit(q_star)))
    if delta == 0.0 or pure == 0.0:
        return pure
    grid = np.linspace(0.0, pure, _EPSILON_GRID + 1)
    rejected = np.flatnonzero(_one_run_p_values(correct, made, canaries, grid, delta) < alpha)
    if rejected.size == 0:
        return 0.0
    low_index = int(rejected[-1])
    if low_index == grid.size - 1:
        return float(grid[-1])
    low, high = float(grid[low_index]), float(grid[low_index + 1])
    while high - low > _EPSILON_TOLERANCE:
        middle = (low + high) / 2.0
        if _one_run_p_values(correct, made, canaries, np.array([middle]), delta)[0] < alpha:
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True, slots=True)
class OneRunAuditResult:
    """A one-run audit: ``guesses_correct`` of ``guesses_made`` guesses right among ``m`` canaries."""

    epsilon_lb: float
    guesses_correct: int
    guesses_made: int
    m: int
    delta: float
    confidence: float
    k_positive: int
    k_negative: int


def one_run_audit(
    scores: ArrayInput,
    included: ArrayInput,
    delta: float,
    confidence: float = 0.95,
    *,
    k_positive: int,
    k_negative: int = 0,
) -> OneRunAuditResult:
    """Audit one run from per-canary scores (higher = included) and the true inclusion bits.

    The auditor guesses "in" for the ``k_positive`` highest scores and "out" for the ``k_negative``
    lowest, abstaining on the rest (ties broken by canary index, which is independent of inclusion).
    ``k_positive`` and ``k_negative`` must be fixed before the run is seen; trying several and keeping
    the best needs a Bonferroni correction (divide 1 − ``confidence`` by the number tried).
    """
    values, bits = _scores_and_labels(scores, included, require_both=False)
    canaries = values.size
    positive = _count(k_positive, "k_positive")
    negative = _count(k_negative, "k_negative")
    if positive + negative > canaries:
        raise AttackParameterError(
            f"k_positive + k_negative must be <= the number of canaries ({canaries}), got {positive + negative}"
        )
    order = np.argsort(-values, kind="stable")
    correct = int(bits[order[:positive]].sum()) + int((~bits[order[canaries - negative :]]).sum())
    return OneRunAuditResult(
        epsilon_lb=one_run_epsilon_lower_bound(correct, positive + negative, canaries, delta, confidence),
        guesses_correct=correct,
        guesses_made=positive + negative,
        m=canaries,
        delta=_delta(delta),
        confidence=_confidence(confidence),
        k_positive=positive,
        k_negative=negative,
    )


# --------------------------------------------------------------------------- #
# a mechanism under audit
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class GaussianAuditReport:
    """Claimed vs empirically lower-bounded ε of a 1-D Gaussian mechanism."""

    sigma_claimed: float
    sigma_actual: float
    sensitivity: float
    trials: int
    delta: float
    claimed_epsilon: float
    two_sample: AuditResult
    one_run: OneRunAuditResult

    @property
    def empirical_epsilon(self) -> float:
        """The larger of the two audits' lower bounds."""
        return max(self.two_sample.epsilon_lb, self.one_run.epsilon_lb)

    @property
    def flagged(self) -> bool:
        """True when an audit proves the mechanism is less private than claimed."""
        return self.empirical_epsilon > self.claimed_epsilon


def audit_gaussian_mechanism(
    sigma_claimed: float,
    sigma_actual: float,
    sensitivity: float,
    trials: int,
    delta: float,
    rng_seed: int,
    *,
    confidence: float = 0.95,
    guess_fraction: float = 0.1,
) -> GaussianAuditReport:
    """Audit ``y = x + N(0, sigma_actual²)`` on neighbours x ∈ {0, sensitivity} against ``sigma_claimed``.

    The claimed ε is the PLD accountant's ε(δ) for one Gaussian release with noise multiplier
    ``sigma_claimed / sensitivity``.  Two audits, each at ``confidence``:

    * two-sample (Jagielski et al.): ``trials`` releases with the canary and ``trials`` without,
      scored by the output, :func:`audit_from_scores` with the Bonferroni threshold scan;
    * one run (Steinke et al.): one release of m = 2·``trials`` canary coordinates, each canary
      included with probability ½ (coordinate i is ``sensitivity·[included] + noise``, so each canary
      sees exactly the 1-D mechanism); the auditor guesses in/out for the ``guess_fraction·m/2``
      highest and lowest outputs each.

    Noise comes from a seeded ``numpy`` generator: this is a test harness, not a privacy mechanism.
    """
    claimed = _real(sigma_claimed, "sigma_claimed")
    actual = _real(sigma_actual, "sigma_actual")
    scale = _real(sensitivity, "sensitivity")
    for name, value in (("sigma_claimed", claimed), ("sigma_actual", actual), ("sensitivity", scale)):
        if value <= 0:
            raise AttackParameterError(f"{name} must be > 0, got {value}")
    runs = _count(trials, "trials", minimum=2)
    delta = _delta(delta)
    if delta == 0.0:
        raise AttackParameterError("delta must be > 0: the Gaussian mechanism is not (ε, 0)-DP for any ε")
    confidence = _confidence(confidence)
    fraction = _real(guess_fraction, "guess_fraction")
    if not 0.0 < fraction <= 1.0:
        raise AttackParameterError(f"guess_fraction must be in (0, 1], got {fraction}")
    if isinstance(rng_seed, bool) or not isinstance(rng_seed, numbers.Integral):
        raise AttackParameterError(f"rng_seed must be an integer, got {type(rng_seed).__name__}")

    accountant = PLDAccountant()
    accountant.compose(GaussianEvent(claimed / scale))
    claimed_epsilon = accountant.get_epsilon(delta)

    rng = np.random.default_rng(int(rng_seed))
    present = np.repeat([True, False], runs)
    outputs = scale * present + rng.normal(0.0, actual, size=2 * runs)
    two_sample = audit_from_scores(outputs, present, delta, confidence)

    canaries = 2 * runs
    included = rng.random(canaries) < 0.5
    release = scale * included + rng.normal(0.0, actual, size=canaries)
    per_side = max(1, round(fraction * canaries / 2))
    one_run = one_run_audit(release, included, delta, confidence, k_positive=per_side, k_negative=per_side)
    return GaussianAuditReport(
        sigma_claimed=claimed,
        sigma_actual=actual,
        sensitivity=scale,
        trials=runs,
        delta=delta,
        claimed_epsilon=claimed_epsilon,
        two_sample=two_sample,
        one_run=one_run,
    )
