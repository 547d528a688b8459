"""Privacy accountants: Rényi DP (RDP) and privacy-loss distributions (PLD).

Both accountants implement :class:`PrivacyAccountant` and accept the events of
:mod:`dp.events`, so a recorded sequence of events can be replayed through
either.  ``compose`` validates the whole event tree before touching any state
(validate-then-apply): an invalid or unsupported event raises
:class:`~dp.errors.DPParameterError` and leaves the accountant unchanged.

Adjacency.  Poisson sampling is analysed under add/remove-one, fixed-size
sampling without replacement under replace-one (population size public).  An
accountant is bound to one relation: either given at construction or adopted
from the first sampled event; mixing the two raises.  A bare
:class:`~dp.events.GaussianEvent` is valid under both (its ``noise_multiplier``
is relative to the sensitivity under the accountant's relation).

RDP (:class:`RDPAccountant`)
    Poisson-subsampled Gaussian: Mironov, Talwar & Zhang (2019), integer
    orders by the binomial expansion, fractional orders by the two-sided series
    of their Sec. 3.3, summed with signs as TF-Privacy's ``_compute_log_a_frac``
    and Opacus do (or, optionally, in absolute value as dp_accounting does).
    Fixed-size sampling: Wang, Balle & Kasiviswanathan (2019), Theorem 27 of the
    arXiv version (the bound dp_accounting uses for
    ``SampledWithoutReplacementDpEvent``), fractional orders by their
    Corollary 10 interpolation.  RDP→(ε, δ): the conversion of Balle et al.
    (2020) / Canonne, Kamath & Steinke (2020),
    ε = rdp + log((α−1)/α) − (log δ + log α)/(α−1), minimised over the orders.

PLD (:class:`PLDAccountant`)
    See the class docstring for the discretisation and its guarantee.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt
from scipy import fft as sp_fft
from scipy import special

from dp.errors import DPParameterError
from dp.events import (
    ComposedEvent,
    DistributedNoiseEvent,
    Event,
    FixedSizeSampledEvent,
    GaussianEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
)

__all__ = [
    "DEFAULT_RDP_ORDERS",
    "Neighbouring",
    "PLDAccountant",
    "PLD_EPSILON_RTOL",
    "PrivacyAccountant",
    "RDPAccountant",
    "delta_from_rdp",
    "epsilon_from_rdp",
    "noise_multiplier_for_epsilon",
    "rounds_for_budget",
]

FloatArray: TypeAlias = npt.NDArray[np.float64]
Neighbouring: TypeAlias = Literal["add_remove", "replace_one"]
_RELATIONS: tuple[str, ...] = ("add_remove", "replace_one")

# Dense where the optimum usually lies (small ε ↔ large α, large ε ↔ α near 1);
# a superset of dp_accounting's and Opacus' default orders.
DEFAULT_RDP_ORDERS: tuple[float, ...] = tuple(
    float(a)
    for a in np.unique(
        np.round(
            np.concatenate(
                [
                    np.arange(1.05, 11.0, 0.05),
                    np.arange(11.0, 20.0, 0.5),
                    np.arange(20.0, 64.0, 1.0),
                    np.arange(64.0, 256.0, 8.0),
                    [256.0, 320.0, 384.0, 448.0, 512.0, 768.0, 1024.0, 1536.0, 2048.0, 4096.0],
                ]
            ),
            10,
        )
    )
)


# --------------------------------------------------------------------------- #
# Event decomposition (shared by both accountants)
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, order=True)
class _Atom:
    """One round of a (sub)sampled Gaussian: the unit both accountants price.

    ``kind`` is "gaussian" (no sampling), "poisson" (rate ``rate``) or "fixed"
    (sampling without replacement, ``rate`` = m/N).
    """

    kind: str
    noise_multiplier: float
    rate: float
    # for kinds "dist" / "dist_poisson": the fields of the DistributedNoiseEvent (hashable and orderable)
    mechanism: tuple[str, float, float, float, int, int] | None = None

    @property
    def relation(self) -> Neighbouring | None:
        if self.kind in ("poisson", "dist_poisson"):
            return "add_remove"
        if self.kind == "fixed":
            return "replace_one"
        return None


def _check_count(count: object) -> int:
    if isinstance(count, bool) or not isinstance(count, int | np.integer):
        raise DPParameterError(f"count must be an integer, got {type(count).__name__}")
    if count < 0:
        raise DPParameterError(f"count must be >= 0, got {count}")
    return int(count)


def _effective_noise(event: Event, path: str) -> float | None:
    """σ of the single Gaussian equivalent to a tree of Gaussians; None if it releases nothing.

    k Gaussian queries of sensitivity 1 with noise σ_i on the same data are
    exactly one Gaussian query with σ = (Σ σ_i⁻²)^(-1/2) (Mironov et al. 2019,
    Sec. 3; dp_accounting's ``_effective_gaussian_noise_multiplier``).
    """
    if isinstance(event, GaussianEvent):
        return event.noise_multiplier
    if isinstance(event, SelfComposedEvent):
        if event.count == 0:
            return None
        sigma = _effective_noise(event.event, f"{path}.event")
        return None if sigma is None else sigma / math.sqrt(event.count)
    if isinstance(event, ComposedEvent):
        precision = 0.0
        for i, part in enumerate(event.events):
            sigma = _effective_noise(part, f"{path}.events[{i}]")
            if sigma is not None:
                precision += sigma**-2
        return None if precision == 0 else precision**-0.5
    raise DPParameterError(
        f"{path}: a sampled event must wrap Gaussian events only, found {type(event).__name__}"
    )


def _mechanism_key(event: DistributedNoiseEvent) -> tuple[str, float, float, float, int, int]:
    return (event.noise, event.l2_sensitivity, event.l1_sensitivity, event.local_stddev, event.num_clients, event.dim)


def _decompose(event: Event, count: int, path: str, out: Counter[_Atom]) -> None:
    if count == 0:
        # Still validate the tree: an accountant must not accept what it cannot price.
        _decompose(event, 1, path, Counter())
        return
    if isinstance(event, GaussianEvent):
        out[_Atom("gaussian", event.noise_multiplier, 1.0)] += count
    elif isinstance(event, DistributedNoiseEvent):
        out[_Atom("dist", 0.0, 1.0, _mechanism_key(event))] += count
    elif isinstance(event, SelfComposedEvent):
        _decompose(event.event, count * event.count, f"{path}.event", out)
    elif isinstance(event, ComposedEvent):
        for i, part in enumerate(event.events):
            _decompose(part, count, f"{path}.events[{i}]", out)
    elif isinstance(event, PoissonSampledEvent) and isinstance(event.event, DistributedNoiseEvent):
        out[_Atom("dist_poisson", 0.0, event.sampling_rate, _mechanism_key(event.event))] += count
    elif isinstance(event, PoissonSampledEvent):
        sigma = _effective_noise(event.event, f"{path}.event")
        if sigma is not None:
            out[_Atom("poisson", sigma, event.sampling_rate)] += count
    elif isinstance(event, FixedSizeSampledEvent):
        sigma = _effective_noise(event.event, f"{path}.event")
        if sigma is not None:
            out[_Atom("fixed", sigma, event.sample_size / event.population)] += count
    else:
        raise DPParameterError(f"{path}: unsupported event type {type(event).__name__}")


# --------------------------------------------------------------------------- #
# The interface
# --------------------------------------------------------------------------- #


class PrivacyAccountant(ABC):
    """Tracks the privacy spent by a sequence of composed events."""

    def __init__(self, neighbouring: Neighbouring | None = None) -> None:
        if neighbouring is not None and neighbouring not in _RELATIONS:
            raise DPParameterError(f"neighbouring must be one of {_RELATIONS} or None, got {neighbouring!r}")
        self._neighbouring: Neighbouring | None = neighbouring
        self._history: list[tuple[Event, int]] = []

    @property
    def neighbouring(self) -> Neighbouring | None:
        """The adjacency relation the guarantees refer to (None until a sampled event fixes it)."""
        return self._neighbouring

    @property
    def history(self) -> tuple[tuple[Event, int], ...]:
        """Every successfully composed ``(event, count)``, in order."""
        return tuple(self._history)

    def supports(self, event: Event) -> bool:
        """Whether :meth:`compose` would accept ``event`` in the current state."""
        try:
            self._plan(event, 1)
        except DPParameterError:
            return False
        return True

    def compose(self, event: Event, count: int = 1) -> None:
        """Account for ``event`` run ``count`` times; all-or-nothing."""
        count = _check_count(count)
        atoms, relation = self._plan(event, count)
        self._apply(atoms)
        if relation is not None:
            self._neighbouring = relation
        self._history.append((event, count))

    @abstractmethod
    def get_epsilon(self, delta: float) -> float:
        """Smallest ε ≥ 0 this accountant certifies for the given δ."""

    @abstractmethod
    def get_delta(self, epsilon: float) -> float:
        """Smallest δ this accountant certifies for the given ε."""

    def _plan(self, event: Event, count: int) -> tuple[dict[_Atom, int], Neighbouring | None]:
        """Validate ``event`` and price-check it, without mutating anything."""
        atoms: Counter[_Atom] = Counter()
        _decompose(event, count, "event", atoms)
        relation = self._neighbouring
        for atom in atoms:
            wanted = atom.relation
            if wanted is None:
                continue
            if relation is None:
                relation = wanted
            elif relation != wanted:
                raise DPParameterError(
                    f"{atom.kind}-sampled events are analysed under {wanted!r} adjacency, "
                    f"but this accountant is bound to {relation!r}"
                )
        self._check_atoms(atoms)
        return dict(atoms), relation

    def _check_atoms(self, atoms: Mapping[_Atom, int]) -> None:  # noqa: B027 - optional hook
        """Hook: raise DPParameterError if an atom cannot be priced (no mutation allowed)."""

    @abstractmethod
    def _apply(self, atoms: Mapping[_Atom, int]) -> None:
        """Add validated atoms to the state; must not raise."""


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, int | float | np.floating):
        raise DPParameterError(f"delta must be a number, got {type(delta).__name__}")
    delta = float(delta)
    if not 0 < delta < 1:
        raise DPParameterError(f"delta must be in (0, 1), got {delta}")
    return delta


def _check_epsilon(epsilon: float) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float | np.floating):
        raise DPParameterError(f"epsilon must be a number, got {type(epsilon).__name__}")
    epsilon = float(epsilon)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise DPParameterError(f"epsilon must be finite and >= 0, got {epsilon}")
    return epsilon


# --------------------------------------------------------------------------- #
# RDP
# --------------------------------------------------------------------------- #


def _log_comb(n: FloatArray, k: FloatArray) -> FloatArray:
    # log |C(n, k)|, generalised to real n through the Gamma function.
    result: FloatArray = special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
    return result


def _rdp_gaussian(sigma: float, orders: FloatArray) -> FloatArray:
    result: FloatArray = orders / (2 * sigma**2)
    return result


def _log_a_poisson_int(q: float, sigma: float, alphas: FloatArray) -> FloatArray:
    """log E_{μ0}[(μ/μ0)^α] for integer α, μ = (1−q)μ0 + qμ1, by the binomial expansion."""
    i = np.arange(int(alphas.max()) + 1, dtype=np.float64)[None, :]
    a = alphas[:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        terms = _log_comb(a, i) + i * math.log(q) + (a - i) * math.log1p(-q) + (i * i - i) / (2 * sigma**2)
    terms = np.where(i <= a, terms, -np.inf)
    result: FloatArray = special.logsumexp(terms, axis=1)
    return result


FractionalSeries: TypeAlias = Literal["signed", "absolute"]

_MAX_ABSOLUTE_TERMS = 1000  # dp_accounting: an order not converged by then is dropped
_MAX_SIGNED_TERMS = 2**17
_SIGNED_CHUNK = 2048


def _log_a_frac_terms(
    q: float, sigma: float, alphas: FloatArray, start: int, stop: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The two binomial series of Mironov, Talwar & Zhang (2019, Sec. 3.3), terms start..stop−1.

    The integral A_α = E_μ0[(μ/μ0)^α] is split at z0 where (1−q)μ0 = qμ1; on each
    side ((1−q) + q·μ1/μ0)^α is expanded in a binomial series.  Returns the log
    magnitudes of the two parts' terms and the sign of C(α, i) (rows: orders).
    """
    i = np.arange(start, stop, dtype=np.float64)[None, :]
    a = alphas[:, None]
    j = a - i
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    log_q, log_1mq = math.log(q), math.log1p(-q)
    log_coef = _log_comb(a, i)
    log_s0 = (
        log_coef + i * log_q + j * log_1mq + (i * i - i) / (2 * sigma**2) + special.log_ndtr((z0 - i) / sigma)
    )
    log_s1 = (
        log_coef + j * log_q + i * log_1mq + (j * j - j) / (2 * sigma**2) + special.log_ndtr((j - z0) / sigma)
    )
    sign: FloatArray = special.gammasgn(a - i + 1)
    return log_s0, log_s1, sign


def _log_a_poisson_frac_signed(q: float, sigma: float, alphas: FloatArray) -> FloatArray:
    """log A_α for fractional α: the alternating series summed with its signs (exact).

    As TF-Privacy's original ``_compute_log_a_frac`` and Opacus: terms are added
    until both parts are below e^-30 in absolute value (the tail of the alternating
    series is smaller than that, and A_α ≥ 1).  Vectorised over orders, in chunks.
    """
    result = np.full(len(alphas), np.inf)
    acc_mag = np.full(len(alphas), -np.inf)
    acc_sign = np.ones(len(alphas))
    pending = np.arange(len(alphas))
    start = 0
    while pending.size and start < _MAX_SIGNED_TERMS:
        stop = start + _SIGNED_CHUNK
        log_s0, log_s1, sign = _log_a_frac_terms(q, sigma, alphas[pending], start, stop)
        small = np.maximum(log_s0, log_s1) < -30
        finished = small.any(axis=1)
        # Include the first negligible term, as the reference loop does.
        count = np.where(finished, np.argmax(small, axis=1) + 1, _SIGNED_CHUNK)
        used = np.arange(_SIGNED_CHUNK)[None, :] < count[:, None]
        terms = np.where(used, np.logaddexp(log_s0, log_s1), -np.inf)
        mag, sgn = special.logsumexp(terms, b=sign, axis=1, return_sign=True)
        mag, sgn = special.logsumexp(
            np.stack([acc_mag[pending], mag], axis=1),
            b=np.stack([acc_sign[pending], sgn], axis=1),
            axis=1,
            return_sign=True,
        )
        acc_mag[pending], acc_sign[pending] = mag, sgn
        done = pending[finished]
        # A non-positive sum can only come from round-off: drop that order (infinite RDP).
        result[done] = np.where(acc_sign[done] > 0, acc_mag[done], np.inf)
        pending = pending[~finished]
        start = stop
    return result


def _log_a_poisson_frac_absolute(q: float, sigma: float, alphas: FloatArray) -> FloatArray:
    """log A_α for fractional α as dp_accounting computes it: the series of absolute values.

    An upper bound on the signed series (looser for α near 1), stopped once both
    parts decrease and the latest terms are e^-30 below the running total.
    """
    log_s0, log_s1, _ = _log_a_frac_terms(q, sigma, alphas, 0, _MAX_ABSOLUTE_TERMS)
    total = np.logaddexp.accumulate(np.logaddexp(log_s0, log_s1), axis=1)
    decreasing = np.zeros_like(log_s0, dtype=bool)
    decreasing[:, 1:] = (log_s0[:, 1:] < log_s0[:, :-1]) & (log_s1[:, 1:] < log_s1[:, :-1])
    done = decreasing & (np.maximum(log_s0, log_s1) < total - 30)
    converged = done.any(axis=1)
    stop = np.argmax(done, axis=1)
    result: FloatArray = np.where(converged, total[np.arange(len(alphas)), stop], np.inf)
    return result


def _rdp_poisson(
    q: float, sigma: float, orders: FloatArray, series: FractionalSeries = "signed"
) -> FloatArray:
    if q == 1.0:
        return _rdp_gaussian(sigma, orders)
    rdp = np.empty_like(orders)
    is_int = orders == np.floor(orders)
    if is_int.any():
        rdp[is_int] = _log_a_poisson_int(q, sigma, orders[is_int]) / (orders[is_int] - 1)
    if (~is_int).any():
        frac = _log_a_poisson_frac_signed if series == "signed" else _log_a_poisson_frac_absolute
        rdp[~is_int] = frac(q, sigma, orders[~is_int]) / (orders[~is_int] - 1)
    return rdp


_WOR_EXACT_MAX_ORDER = 256  # beyond this the O(α²) forward differences are replaced by a cruder term


def _log_forward_differences(log_values: FloatArray, count: int) -> FloatArray:
    """log |Δ^k g(0)| for k = 1..count, from log g(0..count); signed log arithmetic, vectorised per pass."""
    mag = log_values.astype(np.float64).copy()
    positive = np.ones(mag.shape, dtype=bool)
    out = np.empty(count)
    for k in range(count):
        m = len(mag) - 1 - k  # entries that still have a right neighbour
        x, y = mag[:m], mag[1 : m + 1]
        sx, sy = positive[:m], positive[1 : m + 1]
        hi, lo = np.maximum(x, y), np.minimum(x, y)
        with np.errstate(invalid="ignore", divide="ignore"):
            sub = np.where(hi == lo, -np.inf, hi + np.log1p(-np.exp(lo - hi)))
            add = np.logaddexp(x, y)
        same = sx == sy
        new_mag = np.where(same, sub, add)
        new_sign = np.where(same, (y >= x) == sy, sy)
        mag[:m], positive[:m] = new_mag, new_sign
        out[k] = mag[0]
    return out


def _log_a_wor_int(q: float, sigma: float, alphas: FloatArray) -> FloatArray:
    """Wang, Balle & Kasiviswanathan (2019) Thm 27 bound on log A_α for integer α ≥ 1."""

    def cgf(x: FloatArray) -> FloatArray:  # (α−1)·ε_Gauss(α) at α = x + 1
        result: FloatArray = x * (x + 1) / (2 * sigma**2)
        return result

    amax = int(alphas.max())
    log_q = math.log(q)
    eps2 = 2.0 / (2 * sigma**2)
    term2_core = 2 * log_q + min(math.log(4) + eps2 + math.log1p(-math.exp(-eps2)), eps2 + math.log(2))
    i = np.arange(3, max(amax, 3) + 1, dtype=np.float64)
    crude = math.log(2) + cgf(i - 1)
    exact_max = min(amax, _WOR_EXACT_MAX_ORDER)
    if exact_max >= 3:
        # g(0) = 1 and g(k) = exp(cgf(k − 1)) for k ≥ 1: the moment sequence of the theorem.
        seq = np.concatenate([[0.0], cgf(np.arange(exact_max + 2, dtype=np.float64))])
        deltas = _log_forward_differences(seq, exact_max + 2)  # deltas[k] = log|Δ^{k+1} g(0)|
        ie = i[i <= exact_max].astype(np.int64)
        lo = deltas[2 * (ie // 2) - 1]
        hi = deltas[2 * ((ie + 1) // 2) - 1]
        exact = np.minimum(math.log(4) + 0.5 * (lo + hi), crude[: len(ie)])
    else:
        exact = np.empty(0)
    result = np.zeros_like(alphas)
    for use_exact in (True, False):
        rows = (alphas <= _WOR_EXACT_MAX_ORDER) if use_exact else (alphas > _WOR_EXACT_MAX_ORDER)
        rows &= alphas >= 2
        if not rows.any():
            continue
        a = alphas[rows][:, None]
        core = np.full(len(i), -np.inf)
        if use_exact:
            core[: len(exact)] = exact
        else:
            core = crude
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = core[None, :] + i[None, :] * log_q + _log_comb(a, i[None, :])
        terms = np.where(i[None, :] <= a, terms, -np.inf)
        term2 = term2_core + _log_comb(a[:, 0], np.full(len(a), 2.0))
        stacked = np.concatenate([np.zeros((len(a), 1)), term2[:, None], terms], axis=1)
        result[rows] = special.logsumexp(stacked, axis=1)
    return result


def _rdp_fixed_size(q: float, sigma: float, orders: FloatArray) -> FloatArray:
    if q == 1.0:
        return _rdp_gaussian(sigma, orders)
    floor, ceil = np.floor(orders), np.ceil(orders)
    needed = np.unique(np.concatenate([floor, ceil]))
    log_a = _log_a_wor_int(q, sigma, needed)
    x = log_a[np.searchsorted(needed, floor)]
    y = log_a[np.searchsorted(needed, ceil)]
    t = orders - floor
    # Corollary 10 of WBK19: the CGF (α−1)·rdp(α) is convex, so interpolate it between integers.
    result: FloatArray = ((1 - t) * x + t * y) / (orders - 1)
    return result


_GENERIC_MAX_ORDER = 256  # the generic subsampling bound is O(α) per order; beyond this order: +inf


def _rdp_poisson_generic(q: float, rdp_of: Callable[[float], float], orders: FloatArray) -> FloatArray:
    """Poisson-subsampled RDP of an arbitrary mechanism with RDP ``rdp_of`` (Zhu & Wang 2019, "Poisson
    Subsampled Rényi Differential Privacy", the general upper bound of their Theorem 5, as in Kairouz et al.'s
    accounting code), at integer orders 2..256; other orders
    get +inf (never chosen by the conversion). The unsampled curve is a valid bound too: take the min."""
    out = np.full(orders.shape, np.inf)
    integer = (orders == np.floor(orders)) & (orders >= 2) & (orders <= _GENERIC_MAX_ORDER)
    if not integer.any():
        return out
    top = int(orders[integer].max())
    ls = np.arange(2, top + 1, dtype=np.float64)
    base = np.array([rdp_of(float(a)) for a in ls])  # ε(l), l = 2..top
    log_q, log_1q = math.log(q), (math.log1p(-q) if q < 1 else -np.inf)
    for i in np.flatnonzero(integer):
        a = int(orders[i])
        if q == 1.0:
            out[i] = base[a - 2]
            continue
        ll = ls[: a - 1]  # l = 2..a
        with np.errstate(invalid="ignore"):
            terms = special.gammaln(a + 1) - special.gammaln(ll + 1) - special.gammaln(a - ll + 1)
            terms = terms + (a - ll) * log_1q + ll * log_q + (ll - 1) * base[: a - 1]
        first = (a - 1) * log_1q + math.log(a * q - q + 1)
        weights = np.where(ll == 2, 1.0, 3.0)
        # l = 2 carries e^{ε(2)} with weight 1: (l - 1) ε(l) = ε(2) there, consistent with the formula
        total = special.logsumexp(np.concatenate([[first], terms]), b=np.concatenate([[1.0], weights]))
        out[i] = min(total / (a - 1), float(rdp_of(float(a))))
    return out


@functools.lru_cache(maxsize=256)
def _rdp_atom_cached(
    kind: str,
    sigma: float,
    rate: float,
    orders: tuple[float, ...],
    series: FractionalSeries,
    mechanism: tuple[str, float, float, float, int, int] | None = None,
) -> FloatArray:
    grid = np.asarray(orders, dtype=np.float64)
    if kind in ("dist", "dist_poisson"):
        assert mechanism is not None
        event = DistributedNoiseEvent(*mechanism)
        if kind == "dist":
            rdp = np.array([event.rdp(float(a)) for a in grid])
        else:
            rdp = _rdp_poisson_generic(rate, event.rdp, grid)
        rdp.setflags(write=False)
        return rdp
    if kind == "poisson":
        rdp = _rdp_poisson(rate, sigma, grid, series)
    elif kind == "fixed":
        rdp = _rdp_fixed_size(rate, sigma, grid)
    else:
        rdp = _rdp_gaussian(sigma, grid)
    rdp.setflags(write=False)
    return rdp


def epsilon_from_rdp(
    orders: Sequence[float] | FloatArray,
    rdp: Sequence[float] | FloatArray,
    delta: float,
    *,
    improved: bool = True,
) -> tuple[float, float]:
    """(ε, optimal order) from RDP values; ``improved=False`` gives Mironov's (2017) classic bound.

    Improved: ε = rdp + log1p(−1/α) − log(δα)/(α−1) (Balle et al. 2020, Prop. 12 of
    arXiv:2004.00010), used for α > 1.01, plus the KL bound δ ≥ sqrt(1 − e^−rdp) ⇒ ε = 0.
    Classic: ε = rdp − log(δ)/(α−1), the moments-accountant conversion.
    """
    delta = _check_delta(delta)
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    if a.shape != r.shape or a.ndim != 1 or a.size == 0:
        raise DPParameterError("orders and rdp must be non-empty 1-D arrays of equal length")
    if np.any(a <= 1):
        raise DPParameterError("RDP orders must be > 1")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if improved:
            eps = np.where(a > 1.01, r + np.log1p(-1 / a) - np.log(delta * a) / (a - 1), np.inf)
            eps = np.where(delta**2 + np.expm1(-r) > 0, 0.0, eps)
        else:
            eps = r - math.log(delta) / (a - 1)
        eps = np.where(r < 0, 0.0, eps)  # negative RDP only arises from round-off
    eps = np.where(np.isnan(eps), np.inf, eps)
    best = int(np.argmin(eps))
    return max(0.0, float(eps[best])), float(a[best])


def delta_from_rdp(
    orders: Sequence[float] | FloatArray, rdp: Sequence[float] | FloatArray, epsilon: float
) -> tuple[float, float]:
    """(δ, optimal order) from RDP values, the inverse conversion of :func:`epsilon_from_rdp`."""
    epsilon = _check_epsilon(epsilon)
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    if a.shape != r.shape or a.ndim != 1 or a.size == 0:
        raise DPParameterError("orders and rdp must be non-empty 1-D arrays of equal length")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_delta = np.where(r > 0, 0.5 * np.log1p(-np.exp(-r)), -np.inf)
        rdp_bound = (a - 1) * (r - epsilon + np.log1p(-1 / a)) - np.log(a)
        log_delta = np.where(a > 1.01, np.minimum(log_delta, rdp_bound), log_delta)
    log_delta = np.where(np.isnan(log_delta), np.inf, log_delta)
    best = int(np.argmin(log_delta))
    return min(math.exp(min(float(log_delta[best]), 0.0)), 1.0), float(a[best])


class RDPAccountant(PrivacyAccountant):
    """Rényi-DP accountant over a fixed grid of orders (composition adds RDP curves).

    ``fractional_series`` chooses how A_α is summed at fractional orders for Poisson
    sampling: "signed" (default) sums the alternating binomial series with its signs,
    i.e. the exact value, as TF-Privacy's original code and Opacus do; "absolute"
    sums absolute values and stops after 1000 terms, as dp_accounting does — an upper
    bound that is looser for orders near 1, which matter when ε is large (e.g. q = 0.3,
    σ = 1.5, T = 100: ε = 13.10 vs 12.94 signed).  Integer orders are identical.
    """

    def __init__(
        self,
        orders: Sequence[float] | None = None,
        neighbouring: Neighbouring | None = None,
        *,
        fractional_series: FractionalSeries = "signed",
    ) -> None:
        super().__init__(neighbouring)
        if fractional_series not in ("signed", "absolute"):
            raise DPParameterError(
                f"fractional_series must be 'signed' or 'absolute', got {fractional_series!r}"
            )
        self._series: FractionalSeries = fractional_series
        grid = np.asarray(DEFAULT_RDP_ORDERS if orders is None else orders, dtype=np.float64)
        if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 1):
            raise DPParameterError("orders must be a non-empty sequence of finite numbers > 1")
        self._orders_key: tuple[float, ...] = tuple(float(a) for a in grid)
        self._orders = grid
        self._rdp = np.zeros_like(grid)

    @property
    def orders(self) -> FloatArray:
        return self._orders.copy()

    @property
    def rdp(self) -> FloatArray:
        """Current RDP ε(α) at each order (a copy)."""
        return self._rdp.copy()

    def _apply(self, atoms: Mapping[_Atom, int]) -> None:
        increment = np.zeros_like(self._rdp)
        for atom, count in atoms.items():
            increment += count * _rdp_atom_cached(
                atom.kind, atom.noise_multiplier, atom.rate, self._orders_key, self._series, atom.mechanism
            )
        self._rdp = self._rdp + increment

    def get_epsilon_and_order(self, delta: float) -> tuple[float, float]:
        return epsilon_from_rdp(self._orders, self._rdp, delta)

    def get_epsilon(self, delta: float) -> float:
        return self.get_epsilon_and_order(delta)[0]

    def get_delta(self, epsilon: float) -> float:
        return delta_from_rdp(self._orders, self._rdp, epsilon)[0]


# --------------------------------------------------------------------------- #
# PLD
# --------------------------------------------------------------------------- #


PLD_EPSILON_RTOL = 2e-4
"""Relative over-estimate of ε by :class:`PLDAccountant` at the default grid (see its docstring)."""


class _GridTooLargeError(DPParameterError):
    """The loss grid would exceed ``max_grid_points`` (the mechanism leaks enormously, or h is tiny)."""


@dataclass(frozen=True)
class _PLD:
    """A privacy-loss distribution on the grid h·ℤ: mass ``probs[k]`` at loss (lower + k)·h."""

    lower: int
    probs: FloatArray
    infinity_mass: float


_IDENTITY = _PLD(0, np.ones(1), 0.0)

# The noise is truncated where its tail mass is below e^-50 (dp_accounting's
# log_mass_truncation_bound); the truncated losses go to +∞, i.e. into δ.
_NOISE_TAIL_Z = float(special.ndtri(0.5 * math.exp(-50.0)))


def _gaussian_hockey_stick(eps: FloatArray, mu: float) -> FloatArray:
    """δ(ε) of N(μ, 1) vs N(0, 1) (Balle & Wang 2018), with relative accuracy in the tails."""
    log_a = special.log_ndtr(mu / 2 - eps / mu)
    log_b = special.log_ndtr(-mu / 2 - eps / mu)
    with np.errstate(over="ignore", invalid="ignore"):
        result: FloatArray = np.exp(log_a) * -np.expm1(np.minimum(eps + log_b - log_a, 0.0))
    return np.nan_to_num(result, nan=0.0)


def _remove_delta(eps: FloatArray, q: float, mu: float) -> FloatArray:
    """δ(ε) of ((1−q)N(0,1) + qN(−μ,1)) vs N(0,1): removing a record under Poisson sampling."""
    if q == 1.0:
        return _gaussian_hockey_stick(eps, mu)
    out = -np.expm1(eps)  # below log(1−q) the ratio P/Q ≥ e^ε everywhere
    above = eps > math.log1p(-q)
    e = eps[above]
    # P − e^ε Q = q·(N(−μ) − e^ε' N(0)) with e^ε' = (e^ε − 1 + q)/q.
    shifted = np.log(np.expm1(e) + q) - math.log(q)
    out[above] = q * _gaussian_hockey_stick(shifted, mu)
    return np.clip(out, 0.0, 1.0)


def _add_delta(eps: FloatArray, q: float, mu: float) -> FloatArray:
    """δ(ε) of N(0,1) vs ((1−q)N(0,1) + qN(μ,1)): adding a record under Poisson sampling."""
    if q == 1.0:
        return _gaussian_hockey_stick(eps, mu)
    out = np.zeros_like(eps)  # above −log(1−q) the divergence vanishes
    below = eps < -math.log1p(-q)
    e = eps[below]
    # P − e^ε Q = (1 − e^ε(1−q))·(N(0) − e^{−c} N(μ)) with e^c = (e^{−ε} − 1 + q)/q.
    with np.errstate(divide="ignore"):
        c = np.log(np.expm1(-e) + q) - math.log(q)
    out[below] = -np.expm1(e + math.log1p(-q)) * _gaussian_hockey_stick(-c, mu)
    return np.clip(out, 0.0, 1.0)


def _loss_range(kind: str, q: float, mu: float) -> tuple[float, float]:
    """[ε_lower, ε_upper] of the privacy loss over the non-truncated noise range."""
    z = _NOISE_TAIL_Z  # negative
    if q == 1.0:
        top = -mu * z + mu * mu / 2
        return -top, top
    log_1mq, log_q = math.log1p(-q), math.log(q)
    top = float(np.logaddexp(log_1mq, log_q - mu * z + mu * mu / 2))  # remove, noise at z − μ
    bottom = float(np.logaddexp(log_1mq, log_q + mu * z - mu * mu / 2))  # remove, noise at −z
    if kind == "remove":
        return bottom, top
    if kind == "add":
        return -top, -bottom
    return min(bottom, -top), max(top, -bottom)  # symmetric (fixed-size)


@functools.lru_cache(maxsize=64)
def _single_pld(kind: str, q: float, mu: float, h: float, max_points: int) -> _PLD:
    """Pessimistic connect-the-dots PLD (Doroshenko et al. 2022) of one round.

    ``kind``: "remove", "add" (Poisson directions) or "symmetric" — the pointwise
    maximum of both curves, a valid dominating pair for replace-one under
    sampling without replacement (see :class:`PLDAccountant`).
    """
    lo_eps, hi_eps = _loss_range(kind, q, mu)
    lower, upper = math.floor(lo_eps / h), math.ceil(hi_eps / h)
    if upper - lower + 1 > max_points:
        raise _GridTooLargeError(
            f"one round needs {upper - lower + 1} loss grid points (> {max_points}); "
            "increase value_discretization_interval or the noise"
        )
    eps = np.arange(lower, upper + 1, dtype=np.float64) * h
    if kind == "remove":
        deltas = _remove_delta(eps, q, mu)
    elif kind == "add":
        deltas = _add_delta(eps, q, mu)
    else:
        deltas = np.maximum(_remove_delta(eps, q, mu), _add_delta(eps, q, mu))
    deltas = np.minimum.accumulate(deltas)  # a hockey-stick curve is non-increasing; remove round-off
    if len(deltas) == 1:
        probs = np.array([1.0 - deltas[0]])
    else:
        # Mass on the grid whose hockey-stick curve, as a function of e^ε, is the chord
        # interpolation of the true (convex) curve between grid points: an upper bound.
        diffs = np.diff(deltas)
        probs = np.empty_like(deltas)
        probs[0] = 1 - deltas[0] + diffs[0] / math.expm1(h)
        probs[1:-1] = (diffs[1:] - diffs[:-1] * math.exp(h)) / math.expm1(h)
        probs[-1] = diffs[-1] / math.expm1(-h)
        probs = np.maximum(probs, 0.0)
    probs.setflags(write=False)
    return _PLD(lower, probs, float(deltas[-1]))


def _chernoff_window(probs: FloatArray, n: int, tail: float) -> tuple[int, int]:
    """Index range [lo, hi] holding all but ≤ tail/2 mass on each side of the n-fold sum."""
    size = len(probs)
    # Coarse bins bound the MGF from above (bin max for t > 0, bin min for t < 0): still a valid bound.
    width = max(1, size // 4096)
    nbins = -(-size // width)
    padded = np.zeros(nbins * width)
    padded[:size] = probs
    mass = padded.reshape(nbins, width).sum(axis=1)
    starts = np.arange(nbins, dtype=np.float64) * width
    ends = np.minimum(starts + width - 1, size - 1)
    index = np.arange(size, dtype=np.float64)
    total = probs.sum()
    mean = float(np.dot(index, probs) / total)
    std = math.sqrt(max(float(np.dot((index - mean) ** 2, probs) / total), 1e-12))
    scales = np.geomspace(1e-2, 1e3, 64) / (std * math.sqrt(n))
    with np.errstate(divide="ignore"):
        log_mass = np.log(mass)
    log_target = math.log(2 / tail)
    hi, lo = n * (size - 1), 0
    for sign, edge in ((1.0, ends), (-1.0, starts)):
        t = sign * scales[:, None]
        log_mgf = special.logsumexp(log_mass[None, :] + t * (edge[None, :] - mean), axis=1)
        bound = (n * log_mgf + log_target) / scales  # distance from n·mean
        finite = np.isfinite(bound)
        if not finite.any():
            continue
        reach = float(bound[finite].min())
        if sign > 0:
            hi = min(hi, math.ceil(n * mean + reach))
        else:
            lo = max(lo, math.floor(n * mean - reach))
    return lo, max(hi, lo)


def _self_compose(pld: _PLD, n: int, tail: float, max_points: int) -> _PLD:
    """n-fold composition by exponentiation in the Fourier domain.

    Only a Chernoff window of the result is kept; everything outside it (≤ tail in
    total, and what the cyclic FFT folds back) is charged to the infinite-loss mass.
    """
    if n == 1:
        return pld
    lo, hi = _chernoff_window(pld.probs, n, tail)
    out_len = hi - lo + 1
    if out_len > max_points:
        raise _GridTooLargeError(
            f"{n}-fold composition needs {out_len} loss grid points (> {max_points}); "
            "increase value_discretization_interval"
        )
    fft_len = sp_fft.next_fast_len(max(out_len, len(pld.probs)), real=True)
    spectrum = sp_fft.rfft(pld.probs, fft_len, workers=-1)
    cyclic = sp_fft.irfft(spectrum**n, fft_len, workers=-1)
    window = np.roll(cyclic, -(lo % fft_len))[:out_len]
    window = np.maximum(window, 0.0)
    infinity = -math.expm1(n * math.log1p(-pld.infinity_mass)) if pld.infinity_mass < 1 else 1.0
    return _PLD(n * pld.lower + lo, window, min(1.0, infinity + tail))


def _convolve(a: _PLD, b: _PLD, tail: float) -> _PLD:
    """Composition of two PLDs; tails of ≤ tail/2 are cut pessimistically."""
    if a is _IDENTITY:
        return b
    if b is _IDENTITY:
        return a
    full = len(a.probs) + len(b.probs) - 1
    fft_len = sp_fft.next_fast_len(full, real=True)
    spectrum = sp_fft.rfft(a.probs, fft_len, workers=-1) * sp_fft.rfft(b.probs, fft_len, workers=-1)
    probs = np.maximum(sp_fft.irfft(spectrum, fft_len, workers=-1)[:full], 0.0)
    # Cut the lowest losses onto the first kept point (moving loss up is pessimistic)
    # and the highest into the infinite-loss mass.
    left = int(np.searchsorted(np.cumsum(probs), tail / 2, side="right"))
    right = full - int(np.searchsorted(np.cumsum(probs[::-1]), tail / 2, side="right"))
    right = max(right, left + 1)
    kept = probs[left:right].copy()
    kept[0] += probs[:left].sum()
    infinity = a.infinity_mass + b.infinity_mass - a.infinity_mass * b.infinity_mass + probs[right:].sum()
    return _PLD(a.lower + b.lower + left, kept, min(1.0, float(infinity)))


def _pld_delta(pld: _PLD, h: float, epsilon: float) -> float:
    losses = (pld.lower + np.arange(len(pld.probs))) * h
    above = losses > epsilon
    return min(1.0, pld.infinity_mass + float(np.dot(pld.probs[above], -np.expm1(epsilon - losses[above]))))


def _pld_epsilon(pld: _PLD, h: float, delta: float) -> float:
    """Smallest ε ≥ 0 with δ(ε) ≤ delta, where δ(ε) = p_∞ + Σ_{ℓ>ε} p_ℓ (1 − e^{ε−ℓ})."""
    if pld.infinity_mass > delta:
        return math.inf
    losses = (pld.lower + np.arange(len(pld.probs))) * h
    positive = losses > 0
    if not positive.any():
        return 0.0
    # Descending losses ℓ_0 > ℓ_1 > ... > 0; mass[k], weight[k] sum over ℓ ≥ ℓ_k.
    desc_losses = losses[positive][::-1]
    desc_probs = pld.probs[positive][::-1]
    mass = pld.infinity_mass + np.cumsum(desc_probs)
    weight = np.cumsum(desc_probs * np.exp(-desc_losses))
    # δ at ε = ℓ_k uses only losses strictly above ℓ_k, i.e. the sums up to k − 1.
    prev_mass = np.concatenate([[pld.infinity_mass], mass[:-1]])
    prev_weight = np.concatenate([[0.0], weight[:-1]])
    with np.errstate(divide="ignore", over="ignore"):
        delta_at = prev_mass - np.exp(desc_losses + np.log(prev_weight))
    delta_at = np.where(prev_weight > 0, delta_at, prev_mass)
    exceeded = np.nonzero(delta_at > delta)[0]
    if exceeded.size == 0:
        # δ ≤ target at every positive grid loss: check the interval (0, smallest positive loss).
        if mass[-1] - weight[-1] <= delta:
            return 0.0
        return max(0.0, math.log((mass[-1] - delta) / weight[-1]))
    k = int(exceeded[0])
    if k == 0:
        return float(desc_losses[0])  # only the infinite mass is above; δ(ℓ_0) ≤ p_∞ ≤ delta
    # On [ℓ_k, ℓ_{k−1}] δ(ε) = mass[k−1] − e^ε weight[k−1]; solve δ(ε) = delta.
    return max(0.0, math.log((mass[k - 1] - delta) / weight[k - 1]))


class PLDAccountant(PrivacyAccountant):
    """Privacy-loss-distribution accountant (tight; FFT composition on a loss grid).

    Mechanisms.  A Poisson-sampled Gaussian is analysed in both directions —
    removing a record, P = (1−q)N(0,σ²) + qN(−1,σ²) vs Q = N(0,σ²), and adding
    one (the pair reversed with roles of mixture and base swapped) — each
    direction is composed separately and the larger ε (δ) is reported, as in
    dp_accounting.  Fixed-size sampling without replacement under replace-one
    adjacency uses, for the sampling ratio γ = m/N, the pair whose hockey-stick
    curve is max(δ_remove,γ(ε), δ_add,γ(ε)) for every ε: by Balle, Barthe &
    Gaboardi (2018, Thm 10, advanced joint convexity) the mechanism's curve is
    below δ_remove,γ for ε ≥ 0, and by symmetry of replace-one below δ_add,γ for
    ε < 0, so this symmetrised pair dominates for all ε and may be composed.

    Discretisation (pessimistic).  Every round's PLD lives on the grid h·ℤ
    (h = ``value_discretization_interval``) and is built with the pessimistic
    "connect-the-dots" rule of Doroshenko, Ghazi, Kamath, Kumar & Manurangsi
    (2022) — the refinement of Meiser & Mohammadi's privacy buckets and of
    Koskela et al.'s grid rounding that dp_accounting uses by default: its δ(ε)
    equals the exact one at the grid points and interpolates it by chords in e^ε
    in between (the exact curve is convex there), so it dominates the exact
    mechanism.  Losses above the noise truncation (noise tail mass e^-50) are put
    at +∞, losses below the grid at its first point.  Rounding every loss up
    instead (privacy buckets) biases ε upwards by up to h per round — 1.0 after
    10⁴ rounds at h = 1e-4 — which connect-the-dots avoids.

    Composition is an exact convolution on the grid (FFT; self-composition by
    raising the spectrum to the power T).  What falls outside the kept window —
    at most ``tail_mass_truncation`` per composition step, bounded by a Chernoff
    bound — is added to δ as infinite-loss mass.

    Guarantee.  For every ε ≥ 0, the reported δ(ε) is at least the exact δ(ε) of
    the composed mechanism, and get_epsilon(δ) is at least the exact ε(δ),
    up to floating-point round-off (≈1e-12 absolute in δ).  It is never below the
    truth; how far above is the chord-interpolation error of one round, composed
    T times, which shrinks as h².  At the default h = 1e-4 and T ≤ 10⁴ it is at
    most :data:`PLD_EPSILON_RTOL` (2e-4) relative on our test grid — measured
    against the same computation at h = 1e-5 — and our ε agrees with
    dp_accounting's PLD accountant (same construction) to 1e-7 relative.
    """

    def __init__(
        self,
        value_discretization_interval: float = 1e-4,
        *,
        tail_mass_truncation: float = 1e-15,
        neighbouring: Neighbouring | None = None,
        max_grid_points: int = 2**23,
    ) -> None:
        super().__init__(neighbouring)
        h = float(value_discretization_interval)
        if not (math.isfinite(h) and 0 < h <= 1):
            raise DPParameterError(f"value_discretization_interval must be in (0, 1], got {h}")
        tail = float(tail_mass_truncation)
        if not 0 <= tail < 1e-3:
            raise DPParameterError(f"tail_mass_truncation must be in [0, 1e-3), got {tail}")
        if isinstance(max_grid_points, bool) or not isinstance(max_grid_points, int) or max_grid_points < 2:
            raise DPParameterError(f"max_grid_points must be an integer >= 2, got {max_grid_points!r}")
        self._h = h
        self._tail = tail
        self._max_points = max_grid_points
        self._atoms: Counter[_Atom] = Counter()
        self._pending: Counter[_Atom] = Counter()  # composed but not yet folded into the PLDs
        self._remove: _PLD = _IDENTITY
        self._add: _PLD | None = None  # None: identical to the remove direction

    @property
    def value_discretization_interval(self) -> float:
        return self._h

    def _single(self, kind: str, q: float, sigma: float) -> _PLD:
        return _single_pld(kind, q, 1.0 / sigma, self._h, self._max_points)

    def _check_atoms(self, atoms: Mapping[_Atom, int]) -> None:
        # Build (and cache) each round's PLD now, so an unpriceable event is rejected
        # before any state changes.
        for atom in atoms:
            if atom.mechanism is not None:
                raise DPParameterError(
                    "the PLD accountant prices Gaussian mechanisms only; use the RDP accountant for "
                    "distributed_noise (discrete Gaussian / Skellam) events"
                )
            for kind, q in self._round_kinds(atom):
                self._single(kind, q, atom.noise_multiplier)

    @staticmethod
    def _round_kinds(atom: _Atom) -> list[tuple[str, float]]:
        if atom.kind == "gaussian" or atom.rate == 1.0:
            return [("remove", 1.0)]
        if atom.kind == "poisson":
            return [("remove", atom.rate), ("add", atom.rate)]
        return [("symmetric", atom.rate)]

    def _apply(self, atoms: Mapping[_Atom, int]) -> None:
        for atom, count in atoms.items():
            if count:
                self._atoms[atom] += count
                self._pending[atom] += count

    def _compose_atoms(self, atoms: Mapping[_Atom, int]) -> tuple[_PLD, _PLD | None]:
        """(remove, add) PLDs of the atoms; add is None when every round is symmetric."""
        # Unsampled Gaussians (and q = 1) on the same data: one Gaussian of summed precision.
        precision = 0.0
        sampled: list[tuple[_Atom, int]] = []
        for atom, count in sorted(atoms.items()):
            if atom.kind == "gaussian" or atom.rate == 1.0:
                precision += count / atom.noise_multiplier**2
            else:
                sampled.append((atom, count))
        remove = _IDENTITY
        add: _PLD | None = None
        if precision > 0:
            remove = self._single("remove", 1.0, precision**-0.5)
        for atom, count in sampled:
            kinds = ("remove", "add") if atom.kind == "poisson" else ("symmetric", "symmetric")
            rounds = self._power(self._single(kinds[0], atom.rate, atom.noise_multiplier), count)
            if atom.kind == "poisson":
                other = self._power(self._single(kinds[1], atom.rate, atom.noise_multiplier), count)
                add = _convolve(remove if add is None else add, other, self._tail)
            elif add is not None:
                add = _convolve(add, rounds, self._tail)
            remove = _convolve(remove, rounds, self._tail)
        return remove, add

    def _power(self, pld: _PLD, count: int) -> _PLD:
        return _self_compose(pld, count, self._tail, self._max_points)

    def _plds(self) -> tuple[_PLD, ...]:
        """The composed PLD of each direction (one if every round is symmetric).

        Composition is commutative, so events composed since the last query are
        folded into the cached result instead of recomputing from scratch.
        """
        if self._pending:
            remove, add = self._compose_atoms(self._pending)
            new_remove = _convolve(self._remove, remove, self._tail)
            if self._add is None and add is None:
                new_add = None
            else:
                new_add = _convolve(
                    self._remove if self._add is None else self._add,
                    remove if add is None else add,
                    self._tail,
                )
            self._remove, self._add = new_remove, new_add
            self._pending.clear()
        return (self._remove,) if self._add is None else (self._remove, self._add)

    def get_epsilon(self, delta: float) -> float:
        delta = _check_delta(delta)
        if not self._atoms:
            return 0.0
        return max(_pld_epsilon(pld, self._h, delta) for pld in self._plds())

    def get_delta(self, epsilon: float) -> float:
        epsilon = _check_epsilon(epsilon)
        if not self._atoms:
            return 0.0
        return max(_pld_delta(pld, self._h, epsilon) for pld in self._plds())


# --------------------------------------------------------------------------- #
# Calibration
# --------------------------------------------------------------------------- #

AccountantSpec: TypeAlias = Literal["pld", "rdp"] | Callable[[], PrivacyAccountant]


def _make_accountant(spec: AccountantSpec) -> PrivacyAccountant:
    if spec == "pld":
        return PLDAccountant()
    if spec == "rdp":
        return RDPAccountant()
    if callable(spec):
        return spec()
    raise DPParameterError(f"accountant must be 'pld', 'rdp' or a factory, got {spec!r}")


def _round_event(
    noise_multiplier: float, sampling_rate: float | None, sample_size: int | None, population: int | None
) -> Event:
    if sampling_rate is not None:
        if sample_size is not None or population is not None:
            raise DPParameterError("give either sampling_rate or (sample_size, population), not both")
        return PoissonSampledEvent(sampling_rate, GaussianEvent(noise_multiplier))
    if sample_size is None or population is None:
        raise DPParameterError("give sampling_rate, or both sample_size and population")
    return FixedSizeSampledEvent(sample_size, population, GaussianEvent(noise_multiplier))


def _epsilon_after(spec: AccountantSpec, event: Event, rounds: int, delta: float) -> float:
    accountant = _make_accountant(spec)
    accountant.compose(event, rounds)
    return accountant.get_epsilon(delta)


def noise_multiplier_for_epsilon(
    target_epsilon: float,
    delta: float,
    *,
    rounds: int,
    sampling_rate: float | None = None,
    sample_size: int | None = None,
    population: int | None = None,
    accountant: AccountantSpec = "pld",
    tol: float = 1e-3,
    min_noise_multiplier: float = 0.05,
    max_noise_multiplier: float = 1e3,
) -> float:
    """Smallest noise multiplier (up to relative ``tol``) reaching ``target_epsilon`` at ``delta``.

    Bisection on σ, keeping the invariant ε(σ_hi) ≤ target < ε(σ_lo): the returned
    σ_hi satisfies ε(σ) ≤ target, and σ·(1 − tol) lies below the minimal σ of this
    accountant.  If even ``min_noise_multiplier`` meets the target it is returned.
    """
    target = _check_epsilon(target_epsilon)
    delta = _check_delta(delta)
    rounds = _check_count(rounds)
    if rounds == 0:
        raise DPParameterError("rounds must be >= 1")
    if not 0 < tol < 1:
        raise DPParameterError(f"tol must be in (0, 1), got {tol}")
    if not 0 < min_noise_multiplier < max_noise_multiplier:
        raise DPParameterError("need 0 < min_noise_multiplier < max_noise_multiplier")
    _round_event(1.0, sampling_rate, sample_size, population)  # argument check before the search

    def meets(sigma: float) -> bool:
        event = _round_event(sigma, sampling_rate, sample_size, population)
        try:
            return _epsilon_after(accountant, event, rounds, delta) <= target
        except _GridTooLargeError:
            return False  # the loss spread is enormous: far too little noise

    hi = 1.0
    while not meets(hi):
        if hi >= max_noise_multiplier:
            raise DPParameterError(
                f"epsilon {target} unreachable with noise_multiplier <= {max_noise_multiplier}"
            )
        hi = min(2 * hi, max_noise_multiplier)
    lo = hi / 2
    while meets(lo):
        hi = lo
        if lo <= min_noise_multiplier:
            return min_noise_multiplier
        lo = max(lo / 2, min_noise_multiplier)
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        if meets(mid):
            hi = mid
        else:
            lo = mid
    return hi


def rounds_for_budget(
    epsilon: float,
    delta: float,
    noise_multiplier: float,
    *,
    sampling_rate: float | None = None,
    sample_size: int | None = None,
    population: int | None = None,
    accountant: AccountantSpec = "pld",
    max_rounds: int = 10**6,
) -> int:
    """Largest T ≤ ``max_rounds`` with ε(T rounds) ≤ ``epsilon`` at ``delta`` (0 if one round exceeds it)."""
    budget = _check_epsilon(epsilon)
    delta = _check_delta(delta)
    max_rounds = _check_count(max_rounds)
    event = _round_event(noise_multiplier, sampling_rate, sample_size, population)

    def fits(rounds: int) -> bool:
        try:
            return _epsilon_after(accountant, event, rounds, delta) <= budget
        except _GridTooLargeError:
            return False

    if max_rounds == 0 or not fits(1):
        return 0
    good, bad = 1, 2
    while bad <= max_rounds and fits(bad):
        good, bad = bad, 2 * bad
    if bad > max_rounds:
        if fits(max_rounds):
            return max_rounds
        bad = max_rounds
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good
