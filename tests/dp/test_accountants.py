"""Tests of dp.events and dp.accountants against dp_accounting, Opacus and published values."""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import optimize, stats

from dp.accountants import (
    DEFAULT_RDP_ORDERS,
    PLD_EPSILON_RTOL,
    PLDAccountant,
    PrivacyAccountant,
    RDPAccountant,
    _pld_delta,
    _pld_epsilon,
    epsilon_from_rdp,
    noise_multiplier_for_epsilon,
    rounds_for_budget,
)
from dp.errors import DPError, DPParameterError
from dp.events import (
    ComposedEvent,
    Event,
    FixedSizeSampledEvent,
    GaussianEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
    event_from_dict,
    event_to_dict,
)

dpa = pytest.importorskip("dp_accounting")
from dp_accounting.pld import pld_pmf as ref_pmf  # noqa: E402
from dp_accounting.pld import pld_privacy_accountant as ref_pld  # noqa: E402
from dp_accounting.pld import privacy_loss_mechanism as ref_mech  # noqa: E402
from dp_accounting.rdp import rdp_privacy_accountant as ref_rdp  # noqa: E402

REF_ORDERS = list(ref_rdp.DEFAULT_RDP_ORDERS)

# (sampling rate q, noise multiplier σ, rounds T, δ): q from 1e-3 to 1, σ from 0.5 to 5, T up to 10^4.
POISSON_GRID = [
    (1e-3, 0.5, 10_000, 1e-5),
    (0.01, 1.0, 10_000, 1e-5),
    (0.01, 4.0, 10_000, 1e-5),
    (0.1, 2.0, 1_000, 1e-5),
    (0.05, 5.0, 10_000, 1e-6),
    (0.3, 1.5, 100, 1e-5),
    (1.0, 5.0, 10, 1e-5),
    (1.0, 2.0, 1, 1e-5),
]


def loose(value: object) -> Any:
    """Pass a deliberately ill-typed value past the type checker."""
    return value


def poisson(q: float, sigma: float) -> PoissonSampledEvent:
    return PoissonSampledEvent(q, GaussianEvent(sigma))


def ref_poisson(q: float, sigma: float) -> object:
    return dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma))


def epsilon_of(accountant: PrivacyAccountant, event: Event, count: int, delta: float) -> float:
    accountant.compose(event, count)
    return accountant.get_epsilon(delta)


def ref_epsilon(accountant: object, event: object, count: int, delta: float) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        accountant.compose(event, count)  # type: ignore[attr-defined]
        return float(accountant.get_epsilon(delta))  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- #
# Against dp_accounting
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def poisson_table() -> list[dict[str, float]]:
    """ε of ours and dp_accounting's accountants on POISSON_GRID (computed once)."""
    rows = []
    for q, sigma, rounds, delta in POISSON_GRID:
        rows.append(
            {
                "q": q,
                "sigma": sigma,
                "T": rounds,
                "delta": delta,
                "pld": epsilon_of(PLDAccountant(), poisson(q, sigma), rounds, delta),
                "ref_pld": ref_epsilon(ref_pld.PLDAccountant(), ref_poisson(q, sigma), rounds, delta),
                "rdp": epsilon_of(
                    RDPAccountant(orders=REF_ORDERS, fractional_series="absolute"),
                    poisson(q, sigma),
                    rounds,
                    delta,
                ),
                "rdp_signed": epsilon_of(RDPAccountant(orders=REF_ORDERS), poisson(q, sigma), rounds, delta),
                "ref_rdp": ref_epsilon(
                    ref_rdp.RdpAccountant(REF_ORDERS), ref_poisson(q, sigma), rounds, delta
                ),
                "rdp_default_orders": epsilon_of(RDPAccountant(), poisson(q, sigma), rounds, delta),
            }
        )
    return rows


def test_pld_matches_dp_accounting_pld(poisson_table: list[dict[str, float]]) -> None:
    for row in poisson_table:
        ours, ref = row["pld"], row["ref_pld"]
        assert abs(ours - ref) <= 0.01 * ref, row
        # Both are pessimistic upper bounds of the same construction: ours may not undercut
        # theirs by more than the discretisation error we state.
        assert ours >= ref * (1 - PLD_EPSILON_RTOL), row
        # Same algorithm, so in practice they agree far more closely; catches subtle regressions.
        assert ours == pytest.approx(ref, rel=1e-6), row


def test_rdp_matches_dp_accounting_rdp(poisson_table: list[dict[str, float]]) -> None:
    for row in poisson_table:
        # dp_accounting's summation of the fractional-order series: the same numbers.
        assert abs(row["rdp"] - row["ref_rdp"]) <= 0.01 * row["ref_rdp"], row
        assert row["rdp"] == pytest.approx(row["ref_rdp"], rel=1e-9), row
        # The exact (signed) series can only be tighter than dp_accounting's absolute-value
        # bound; on this grid by at most 1.3 % (q = 0.3, σ = 1.5, T = 100, optimum at α = 2.7).
        assert row["ref_rdp"] * (1 - 0.013) <= row["rdp_signed"] <= row["ref_rdp"] * (1 + 1e-12), row
        # Our default grid is a superset of dp_accounting's orders, so it can only be tighter.
        assert row["rdp_default_orders"] <= row["rdp_signed"] * (1 + 1e-12), row


def test_pld_is_tighter_than_rdp(poisson_table: list[dict[str, float]]) -> None:
    for row in poisson_table:
        assert row["pld"] < row["rdp"], row


def test_rdp_curve_matches_dp_accounting_at_every_order() -> None:
    for q, sigma in [(1e-3, 0.5), (0.02, 0.9), (0.3, 3.0), (1.0, 1.5)]:
        ours = RDPAccountant(orders=REF_ORDERS, fractional_series="absolute")
        ours.compose(poisson(q, sigma))
        ref = ref_rdp.RdpAccountant(REF_ORDERS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref.compose(ref_poisson(q, sigma))
        finite = np.isfinite(ref.rdp)
        np.testing.assert_array_equal(np.isfinite(ours.rdp), finite)
        np.testing.assert_allclose(ours.rdp[finite], ref.rdp[finite], rtol=1e-10)


def test_get_delta_matches_references() -> None:
    event, ref_event = poisson(0.01, 1.0), ref_poisson(0.01, 1.0)
    pld, rdp = PLDAccountant(), RDPAccountant(orders=REF_ORDERS, fractional_series="absolute")
    pld.compose(event, 2000)
    rdp.compose(event, 2000)
    rpld, rrdp = ref_pld.PLDAccountant(), ref_rdp.RdpAccountant(REF_ORDERS)
    rpld.compose(ref_event, 2000)
    rrdp.compose(ref_event, 2000)
    for eps in [0.5, 1.0, 2.0, 4.0]:
        assert pld.get_delta(eps) == pytest.approx(rpld.get_delta(eps), rel=1e-6)
        assert rdp.get_delta(eps) == pytest.approx(rrdp.get_delta(eps), rel=1e-9)
        assert pld.get_delta(eps) < rdp.get_delta(eps)


FIXED_GRID = [
    (100, 10_000, 1.0, 1_000),
    (10, 1_000, 0.7, 5_000),
    (500, 1_000, 3.0, 100),
    (300, 60_000, 2.0, 3_000),
]


@pytest.mark.parametrize(("m", "n", "sigma", "rounds"), FIXED_GRID)
def test_fixed_size_rdp_matches_dp_accounting_without_replacement(
    m: int, n: int, sigma: float, rounds: int
) -> None:
    ours = RDPAccountant(orders=REF_ORDERS)
    ours.compose(FixedSizeSampledEvent(m, n, GaussianEvent(sigma)), rounds)
    ref = ref_rdp.RdpAccountant(REF_ORDERS, dpa.NeighboringRelation.REPLACE_ONE)
    ref.compose(dpa.SampledWithoutReplacementDpEvent(n, m, dpa.GaussianDpEvent(sigma)), rounds)
    np.testing.assert_allclose(ours.rdp, ref.rdp, rtol=1e-10)
    assert ours.get_epsilon(1e-5) == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    assert ours.neighbouring == "replace_one"


@pytest.mark.parametrize(("m", "n", "sigma", "rounds"), FIXED_GRID)
def test_fixed_size_pld_between_poisson_pld_and_rdp(m: int, n: int, sigma: float, rounds: int) -> None:
    event = FixedSizeSampledEvent(m, n, GaussianEvent(sigma))
    pld = epsilon_of(PLDAccountant(), event, rounds, 1e-5)
    rdp = epsilon_of(RDPAccountant(neighbouring="replace_one"), event, rounds, 1e-5)
    # Our fixed-size pair dominates both Poisson(γ = m/N) directions pointwise, so composing it
    # cannot certify less than the Poisson PLD; RDP's looser bound should be larger still.
    gamma = m / n
    poisson_pld = ref_epsilon(ref_pld.PLDAccountant(), ref_poisson(gamma, sigma), rounds, 1e-5)
    assert poisson_pld * (1 - PLD_EPSILON_RTOL) <= pld < rdp


def _reference_connect_dots(delta_fn: Any, lower_eps: float, upper_eps: float, rounds: int) -> Any:
    """The same construction assembled from dp_accounting's primitives: connect-the-dots, then compose."""
    h = 1e-4
    lower, upper = math.floor(lower_eps / h), math.ceil(upper_eps / h)
    deltas = delta_fn(np.arange(lower, upper + 1) * h)
    pmf = ref_pmf.create_pmf_pessimistic_connect_dots_fixed_gap(h, lower, upper, deltas)
    return pmf.self_compose(rounds) if rounds > 1 else pmf


def _gaussian_loss(sigma: float, q: float, adjacency: str) -> Any:
    kind = getattr(ref_mech.AdjacencyType, adjacency)
    return ref_mech.GaussianPrivacyLoss(sigma, sampling_prob=q, adjacency_type=kind)


@pytest.mark.parametrize(("q", "sigma", "rounds"), [(0.2, 0.8, 30), (0.6, 1.5, 5), (0.05, 1.0, 300)])
def test_each_poisson_direction_matches_the_reference_construction(
    q: float, sigma: float, rounds: int
) -> None:
    # For the Gaussian the remove direction happens to dominate at ε ≥ 0, so the add
    # direction is invisible in get_epsilon; check it on its own.
    accountant = PLDAccountant()
    accountant.compose(poisson(q, sigma), rounds)
    ours_remove, ours_add = accountant._plds()
    for ours, adjacency in ((ours_remove, "REMOVE"), (ours_add, "ADD")):
        loss = _gaussian_loss(sigma, q, adjacency)
        bounds = loss.connect_dots_bounds()
        ref = _reference_connect_dots(
            loss.get_delta_for_epsilon, bounds.epsilon_lower, bounds.epsilon_upper, rounds
        )
        for eps in (0.0, 0.1, 0.5, 1.0, 2.0):
            assert _pld_delta(ours, 1e-4, eps) == pytest.approx(
                ref.get_delta_for_epsilon(eps), rel=1e-6, abs=1e-14
            )
        for delta in (1e-2, 1e-5):
            assert _pld_epsilon(ours, 1e-4, delta) == pytest.approx(
                ref.get_epsilon_for_delta(delta), rel=1e-6
            )


@pytest.mark.parametrize(("m", "n", "sigma", "rounds"), [(100, 1_000, 0.9, 200), (10, 1_000, 0.7, 2_000)])
def test_fixed_size_pld_matches_the_symmetrised_reference_pair(
    m: int, n: int, sigma: float, rounds: int
) -> None:
    """Replace-one under sampling without replacement: δ(ε) = max(δ_remove,γ(ε), δ_add,γ(ε)) per round."""
    gamma = m / n
    remove, add = _gaussian_loss(sigma, gamma, "REMOVE"), _gaussian_loss(sigma, gamma, "ADD")
    lower = min(remove.connect_dots_bounds().epsilon_lower, add.connect_dots_bounds().epsilon_lower)
    upper = max(remove.connect_dots_bounds().epsilon_upper, add.connect_dots_bounds().epsilon_upper)
    ref = _reference_connect_dots(
        lambda eps: np.maximum(remove.get_delta_for_epsilon(eps), add.get_delta_for_epsilon(eps)),
        lower,
        upper,
        rounds,
    )
    accountant = PLDAccountant()
    accountant.compose(FixedSizeSampledEvent(m, n, GaussianEvent(sigma)), rounds)
    assert accountant.get_epsilon(1e-5) == pytest.approx(ref.get_epsilon_for_delta(1e-5), rel=1e-6)
    assert accountant.get_delta(1.0) == pytest.approx(ref.get_delta_for_epsilon(1.0), rel=1e-6)
    # Composing the remove curve alone (ignoring ε < 0) would be unsound here and certifies less.
    remove_only = _reference_connect_dots(
        remove.get_delta_for_epsilon,
        remove.connect_dots_bounds().epsilon_lower,
        remove.connect_dots_bounds().epsilon_upper,
        rounds,
    )
    assert remove_only.get_epsilon_for_delta(1e-5) < accountant.get_epsilon(1e-5) * (1 - 1e-3)


def test_heterogeneous_composition_two_phases() -> None:
    phase1, phase2 = poisson(0.01, 1.0), poisson(0.05, 2.5)
    pld, rdp = PLDAccountant(), RDPAccountant(orders=REF_ORDERS, fractional_series="absolute")
    for accountant in (pld, rdp):
        accountant.compose(phase1, 3000)
        accountant.compose(phase2, 2000)
    rpld, rrdp = ref_pld.PLDAccountant(), ref_rdp.RdpAccountant(REF_ORDERS)
    for ref in (rpld, rrdp):
        ref.compose(ref_poisson(0.01, 1.0), 3000)
        ref.compose(ref_poisson(0.05, 2.5), 2000)
    assert pld.get_epsilon(1e-5) == pytest.approx(rpld.get_epsilon(1e-5), rel=1e-6)
    assert rdp.get_epsilon(1e-5) == pytest.approx(rrdp.get_epsilon(1e-5), rel=1e-9)
    # Any event tree with the same rounds gives the same answer (composition is commutative).
    tree = ComposedEvent((SelfComposedEvent(phase2, 2000), SelfComposedEvent(phase1, 3000)))
    assert epsilon_of(PLDAccountant(), tree, 1, 1e-5) == pytest.approx(pld.get_epsilon(1e-5), rel=1e-8)
    assert epsilon_of(
        RDPAccountant(orders=REF_ORDERS, fractional_series="absolute"), tree, 1, 1e-5
    ) == pytest.approx(rdp.get_epsilon(1e-5), rel=1e-12)
    # Each phase alone costs less than both together.
    assert epsilon_of(PLDAccountant(), phase1, 3000, 1e-5) < pld.get_epsilon(1e-5)


def test_incremental_queries_match_bulk_composition() -> None:
    event = poisson(0.02, 1.2)
    incremental = PLDAccountant()
    for _ in range(40):
        incremental.compose(event)
        incremental.get_epsilon(1e-5)
    incremental.compose(GaussianEvent(4.0))
    bulk = PLDAccountant()
    bulk.compose(ComposedEvent((SelfComposedEvent(event, 40), GaussianEvent(4.0))))
    assert incremental.get_epsilon(1e-5) == pytest.approx(bulk.get_epsilon(1e-5), rel=1e-7)


# --------------------------------------------------------------------------- #
# Exact and published values
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 5.0])
def test_pld_reproduces_the_analytic_gaussian_mechanism(sigma: float) -> None:
    """Balle & Wang (ICML 2018), Thm 8: δ(ε) = Φ(1/2σ − εσ) − e^ε Φ(−1/2σ − εσ), exactly."""
    delta = 1e-5

    def excess(eps: float) -> float:
        return (
            float(
                stats.norm.cdf(0.5 / sigma - eps * sigma)
                - math.exp(eps) * stats.norm.cdf(-0.5 / sigma - eps * sigma)
            )
            - delta
        )

    exact = optimize.brentq(excess, 0.0, 100.0, xtol=1e-14)
    ours = epsilon_of(PLDAccountant(), GaussianEvent(sigma), 1, delta)
    assert exact <= ours <= exact * (1 + 1e-6)


def test_abadi_2016_mnist_setting() -> None:
    """Abadi et al. (CCS 2016), Sec. 3.1: q = 0.01, σ = 4, δ = 1e-5, T = 10 000 → ε ≈ 1.26.

    Their moments accountant is RDP at integer orders α = λ + 1, λ ≤ 32, with the
    classic conversion ε = min_λ (T·α(λ) + log 1/δ)/λ; the paper prints two
    decimals, so we allow ±0.005.  The improved conversion with fractional orders
    and the PLD accountant must give less.
    """
    event = poisson(0.01, 4.0)
    moments = RDPAccountant(orders=list(range(2, 34)))
    moments.compose(event, 10_000)
    eps_moments, _ = epsilon_from_rdp(moments.orders, moments.rdp, 1e-5, improved=False)
    assert eps_moments == pytest.approx(1.26, abs=0.005)
    eps_rdp = epsilon_of(RDPAccountant(), event, 10_000, 1e-5)
    eps_pld = epsilon_of(PLDAccountant(), event, 10_000, 1e-5)
    assert 0.9 < eps_pld < eps_rdp < eps_moments


def test_discretisation_error_is_within_the_stated_bound() -> None:
    for q, sigma, rounds in [(0.01, 4.0, 10_000), (0.1, 2.0, 1_000)]:
        coarse = epsilon_of(PLDAccountant(), poisson(q, sigma), rounds, 1e-5)
        fine = epsilon_of(PLDAccountant(1e-5), poisson(q, sigma), rounds, 1e-5)
        assert fine <= coarse <= fine * (1 + PLD_EPSILON_RTOL)


def test_pld_is_fast_for_ten_thousand_rounds() -> None:
    start = time.perf_counter()
    eps = epsilon_of(PLDAccountant(value_discretization_interval=1e-4), poisson(0.01, 1.0), 10_000, 1e-5)
    assert time.perf_counter() - start < 10.0
    assert 6.0 < eps < 6.4


# --------------------------------------------------------------------------- #
# Inverse functions
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_calibrated_noise_reaches_its_target(accountant: Literal["pld", "rdp"]) -> None:
    tol, delta, rounds, q = 1e-3, 1e-5, 10_000, 0.01
    make = PLDAccountant if accountant == "pld" else RDPAccountant
    sigma = noise_multiplier_for_epsilon(
        2.0, delta, rounds=rounds, sampling_rate=q, accountant=accountant, tol=tol
    )
    assert epsilon_of(make(), poisson(q, sigma), rounds, delta) <= 2.0
    assert epsilon_of(make(), poisson(q, sigma * (1 - tol)), rounds, delta) > 2.0


def test_calibration_pld_needs_less_noise_than_rdp_and_fixed_size_works() -> None:
    kwargs: dict[str, Any] = {"rounds": 500, "sample_size": 100, "population": 5_000}
    sigma_pld = noise_multiplier_for_epsilon(3.0, 1e-5, accountant="pld", **kwargs)
    sigma_rdp = noise_multiplier_for_epsilon(3.0, 1e-5, accountant="rdp", **kwargs)
    assert sigma_pld < sigma_rdp
    event = FixedSizeSampledEvent(100, 5_000, GaussianEvent(sigma_pld))
    assert epsilon_of(PLDAccountant(), event, 500, 1e-5) <= 3.0
    assert (
        epsilon_of(
            PLDAccountant(), dataclasses.replace(event, event=GaussianEvent(sigma_pld * 0.999)), 500, 1e-5
        )
        > 3.0
    )


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_rounds_for_budget_is_the_largest_feasible_count(accountant: Literal["pld", "rdp"]) -> None:
    make = PLDAccountant if accountant == "pld" else RDPAccountant
    rounds = rounds_for_budget(3.0, 1e-5, 1.0, sampling_rate=0.01, accountant=accountant)
    assert rounds > 1
    assert epsilon_of(make(), poisson(0.01, 1.0), rounds, 1e-5) <= 3.0
    assert epsilon_of(make(), poisson(0.01, 1.0), rounds + 1, 1e-5) > 3.0


def test_rounds_for_budget_edges() -> None:
    assert rounds_for_budget(0.01, 1e-5, 0.5, sampling_rate=1.0, accountant="rdp") == 0
    assert rounds_for_budget(100.0, 1e-5, 5.0, sampling_rate=1e-3, accountant="rdp", max_rounds=1000) == 1000
    with pytest.raises(DPParameterError):
        rounds_for_budget(1.0, 1e-5, 1.0)  # no sampling given
    with pytest.raises(DPParameterError):
        rounds_for_budget(1.0, 1e-5, 1.0, sampling_rate=0.1, sample_size=1, population=10)
    with pytest.raises(DPParameterError):
        noise_multiplier_for_epsilon(1.0, 1e-5, rounds=0, sampling_rate=0.1)


# --------------------------------------------------------------------------- #
# Opacus (imports torch: tests only)
# --------------------------------------------------------------------------- #

OPACUS_GRID = [(0.01, 1.0, 10_000), (0.004, 1.1, 5_000), (0.1, 2.0, 1_000)]


@pytest.mark.parametrize(("q", "sigma", "rounds"), OPACUS_GRID)
def test_opacus_rdp_and_prv_agree(q: float, sigma: float, rounds: int) -> None:
    accountants = pytest.importorskip("opacus.accountants")
    delta = 1e-5
    opacus_rdp = accountants.RDPAccountant()
    opacus_prv = accountants.PRVAccountant()
    for _ in range(rounds):  # the public API: one step per round (history merges equal steps)
        opacus_rdp.step(noise_multiplier=sigma, sample_rate=q)
        opacus_prv.step(noise_multiplier=sigma, sample_rate=q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps_opacus_rdp = opacus_rdp.get_epsilon(delta, alphas=list(DEFAULT_RDP_ORDERS))
    ours_rdp = epsilon_of(RDPAccountant(), poisson(q, sigma), rounds, delta)
    # Same series (signed, summed to convergence) and the same conversion formula.
    assert ours_rdp == pytest.approx(eps_opacus_rdp, rel=1e-7)

    eps_error = 0.01
    prv_upper = opacus_prv.get_epsilon(delta, eps_error=eps_error)  # δ_error defaults to δ/1000
    ours_pld = epsilon_of(PLDAccountant(), poisson(q, sigma), rounds, delta)
    # PRV's bracket is [estimate − eps_error, estimate + eps_error] (plus the δ_error shift).
    assert prv_upper - 2 * eps_error - 0.01 <= ours_pld <= prv_upper


# --------------------------------------------------------------------------- #
# Validate-then-apply
# --------------------------------------------------------------------------- #

INVALID_FOR_ADD_REMOVE: list[object] = [
    PoissonSampledEvent(0.1, PoissonSampledEvent(0.5, GaussianEvent(1.0))),  # nested sampling
    FixedSizeSampledEvent(10, 100, GaussianEvent(1.0)),  # replace-one in an add/remove accountant
    ComposedEvent((poisson(0.1, 1.0), FixedSizeSampledEvent(1, 10, GaussianEvent(1.0)))),  # partly bad
    "gaussian",
    None,
]


def _state(accountant: PrivacyAccountant) -> tuple[object, ...]:
    extra = accountant.rdp.tolist() if isinstance(accountant, RDPAccountant) else None
    return (
        accountant.history,
        accountant.neighbouring,
        accountant.get_epsilon(1e-5),
        accountant.get_delta(1.0),
        extra,
    )


@pytest.mark.parametrize("make", [PLDAccountant, RDPAccountant])
def test_invalid_compose_leaves_the_accountant_unchanged(make: type[PrivacyAccountant]) -> None:
    accountant = make()
    accountant.compose(poisson(0.05, 1.3), 50)
    before = _state(accountant)
    for bad in INVALID_FOR_ADD_REMOVE:
        assert not accountant.supports(bad)  # type: ignore[arg-type]
        with pytest.raises(DPParameterError):
            accountant.compose(bad)  # type: ignore[arg-type]
        assert _state(accountant) == before
    for bad_count in (-1, True, 1.5, "3"):
        with pytest.raises(DPParameterError):
            accountant.compose(poisson(0.05, 1.3), bad_count)  # type: ignore[arg-type]
        assert _state(accountant) == before
    assert accountant.supports(poisson(0.5, 2.0))


def test_pld_rejects_unpriceable_event_before_mutating() -> None:
    accountant = PLDAccountant(max_grid_points=500_000)
    accountant.compose(poisson(0.05, 1.3), 50)
    before = _state(accountant)
    # A nearly noiseless Gaussian needs a loss grid far beyond the limit: rejected at compose.
    with pytest.raises(DPParameterError, match="grid"):
        accountant.compose(ComposedEvent((GaussianEvent(2.0), GaussianEvent(1e-3))))
    assert _state(accountant) == before


def test_relation_is_bound_by_the_first_sampled_event() -> None:
    accountant = RDPAccountant()
    accountant.compose(GaussianEvent(3.0))
    assert accountant.neighbouring is None
    accountant.compose(FixedSizeSampledEvent(5, 50, GaussianEvent(2.0)))
    assert accountant.neighbouring == "replace_one"
    assert not accountant.supports(poisson(0.1, 1.0))
    assert PLDAccountant(neighbouring="add_remove").supports(poisson(0.1, 1.0))
    assert not PLDAccountant(neighbouring="add_remove").supports(
        FixedSizeSampledEvent(5, 50, GaussianEvent(2.0))
    )
    with pytest.raises(DPParameterError):
        RDPAccountant(neighbouring=loose("swap"))


@pytest.mark.parametrize("make", [PLDAccountant, RDPAccountant])
def test_trivial_events_and_queries(make: type[PrivacyAccountant]) -> None:
    accountant = make()
    assert accountant.get_epsilon(1e-5) == 0.0
    assert accountant.get_delta(0.5) == 0.0
    accountant.compose(poisson(0.1, 1.0), 0)
    accountant.compose(PoissonSampledEvent(0.1, ComposedEvent(())))  # releases nothing
    accountant.compose(SelfComposedEvent(GaussianEvent(1.0), 0))
    assert accountant.get_epsilon(1e-5) == 0.0
    for bad_delta in (0.0, 1.0, -1e-5, float("nan"), True):
        with pytest.raises(DPParameterError):
            accountant.get_epsilon(bad_delta)
    for bad_eps in (-0.1, float("inf")):
        with pytest.raises(DPParameterError):
            accountant.get_delta(bad_eps)


def test_nested_gaussians_use_the_effective_noise() -> None:
    # Two Gaussian queries σ = 2 on the same sample ≡ one query with σ = √2.
    nested = PoissonSampledEvent(
        0.1, ComposedEvent((GaussianEvent(2.0), SelfComposedEvent(GaussianEvent(2.0), 1)))
    )
    single = poisson(0.1, math.sqrt(2.0))
    for make in (PLDAccountant, RDPAccountant):
        assert epsilon_of(make(), nested, 100, 1e-5) == pytest.approx(
            epsilon_of(make(), single, 100, 1e-5), rel=1e-12
        )


def test_epsilon_and_delta_are_mutually_consistent() -> None:
    for make in (PLDAccountant, RDPAccountant):
        accountant = make()
        accountant.compose(poisson(0.02, 0.9), 3_000)
        eps = accountant.get_epsilon(1e-6)
        assert accountant.get_delta(eps) <= 1e-6 * (1 + 1e-6)
        assert accountant.get_delta(eps * 0.99) > 1e-6
        deltas = [accountant.get_delta(e) for e in np.linspace(0.0, 2 * eps, 9)]
        assert all(a >= b for a, b in zip(deltas, deltas[1:], strict=False))


@given(
    q=st.floats(1e-3, 1.0),
    sigma=st.floats(0.5, 5.0),
    rounds=st.integers(1, 2_000),
)
def test_property_rdp_matches_reference_on_random_events(q: float, sigma: float, rounds: int) -> None:
    ours = RDPAccountant(orders=REF_ORDERS, fractional_series="absolute")
    ours.compose(poisson(q, sigma), rounds)
    ref = ref_epsilon(ref_rdp.RdpAccountant(REF_ORDERS), ref_poisson(q, sigma), rounds, 1e-5)
    assert ours.get_epsilon(1e-5) == pytest.approx(ref, rel=1e-8)
    signed = RDPAccountant(orders=REF_ORDERS)
    signed.compose(poisson(q, sigma), rounds)
    assert np.all(signed.rdp <= ours.rdp * (1 + 1e-9) + 1e-300)


# --------------------------------------------------------------------------- #
# Events
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "build",
    [
        lambda: GaussianEvent(0.0),
        lambda: GaussianEvent(-1.0),
        lambda: GaussianEvent(float("nan")),
        lambda: GaussianEvent(float("inf")),
        lambda: GaussianEvent(loose(True)),
        lambda: GaussianEvent(loose("1.0")),
        lambda: PoissonSampledEvent(0.0, GaussianEvent(1.0)),
        lambda: PoissonSampledEvent(1.5, GaussianEvent(1.0)),
        lambda: PoissonSampledEvent(0.5, loose("gaussian")),
        lambda: FixedSizeSampledEvent(0, 10, GaussianEvent(1.0)),
        lambda: FixedSizeSampledEvent(11, 10, GaussianEvent(1.0)),
        lambda: FixedSizeSampledEvent(loose(1.0), 10, GaussianEvent(1.0)),
        lambda: SelfComposedEvent(GaussianEvent(1.0), -1),
        lambda: SelfComposedEvent(GaussianEvent(1.0), loose(2.0)),
        lambda: ComposedEvent(loose((GaussianEvent(1.0), 3))),
        lambda: ComposedEvent(loose(GaussianEvent(1.0))),
    ],
)
def test_events_are_validated_at_construction(build: object) -> None:
    with pytest.raises(DPParameterError):
        build()  # type: ignore[operator]
    assert issubclass(DPParameterError, ValueError) and issubclass(DPParameterError, DPError)


def test_events_are_frozen_hashable_and_normalised() -> None:
    event = PoissonSampledEvent(0.1, GaussianEvent(2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.sampling_rate = 0.2  # type: ignore[misc]
    assert event == PoissonSampledEvent(0.1, GaussianEvent(2.0))
    assert isinstance(event.event.noise_multiplier, float)  # type: ignore[union-attr]
    assert len({event, PoissonSampledEvent(0.1, GaussianEvent(2.0))}) == 1
    assert ComposedEvent(loose([GaussianEvent(1.0)])).events == (GaussianEvent(1.0),)


NESTED = ComposedEvent(
    (
        SelfComposedEvent(PoissonSampledEvent(0.01, GaussianEvent(1.1)), 500),
        FixedSizeSampledEvent(32, 1000, ComposedEvent((GaussianEvent(2.0), GaussianEvent(3.5)))),
        GaussianEvent(10.0),
    )
)


def test_event_dict_round_trip_through_json() -> None:
    encoded = json.dumps(event_to_dict(NESTED))
    assert event_from_dict(json.loads(encoded)) == NESTED


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"type": "gaussian", "noise_multiplier": 1.0, "sensitivity": 2.0}, "sensitivity"),
        ({"type": "gaussian"}, "noise_multiplier"),
        ({"noise_multiplier": 1.0}, "type"),
        ({"type": "laplace", "scale": 1.0}, "type"),
        ({"type": "gaussian", "noise_multiplier": "1.0"}, "noise_multiplier"),
        ({"type": "gaussian", "noise_multiplier": True}, "noise_multiplier"),
        ({"type": "gaussian", "noise_multiplier": -1.0}, "noise_multiplier"),
        (
            {"type": "self_composed", "event": {"type": "gaussian", "noise_multiplier": 1.0}, "count": 2.0},
            "count",
        ),
        (
            {
                "type": "poisson_sampled",
                "sampling_rate": 0.1,
                "event": {"type": "gaussian", "noise_multiplier": 1.0, "x": 1},
            },
            "x",
        ),
        ({"type": "composed", "events": {"type": "gaussian"}}, "events"),
        ({"type": "composed", "events": [{"type": "gaussian", "noise_multiplier": 1.0}, 7]}, "events[1]"),
        (
            {
                "type": "fixed_size_sampled",
                "sample_size": 3,
                "population": 2,
                "event": {"type": "gaussian", "noise_multiplier": 1.0},
            },
            "sample_size",
        ),
    ],
)
def test_event_from_dict_is_strict(data: dict[str, object], key: str) -> None:
    with pytest.raises(DPParameterError, match=key.replace("[", r"\[").replace("]", r"\]")):
        event_from_dict(data)


def test_event_from_dict_rejects_absurd_nesting() -> None:
    data: dict[str, object] = {"type": "gaussian", "noise_multiplier": 1.0}
    for _ in range(200):
        data = {"type": "self_composed", "event": data, "count": 1}
    with pytest.raises(DPParameterError, match="nested"):
        event_from_dict(data)


def _events(depth: int) -> st.SearchStrategy[Event]:
    gaussian = st.builds(GaussianEvent, st.floats(0.1, 100.0))
    if depth == 0:
        return gaussian
    inner = _events(depth - 1)
    return st.one_of(
        gaussian,
        st.builds(PoissonSampledEvent, st.floats(1e-6, 1.0, exclude_min=True), inner),
        st.integers(1, 1000).flatmap(
            lambda n: st.builds(FixedSizeSampledEvent, st.integers(1, n), st.just(n), inner)
        ),
        st.builds(ComposedEvent, st.lists(inner, max_size=3).map(tuple)),
        st.builds(SelfComposedEvent, inner, st.integers(0, 10**6)),
    )


@given(_events(3))
def test_property_event_round_trip(event: Event) -> None:
    assert event_from_dict(json.loads(json.dumps(event_to_dict(event)))) == event
