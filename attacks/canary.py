"""End-to-end canary audit of fedshield's client-level DP aggregator, next to the accountant's ε.

Canary *clients* (in the style of Andrew et al. 2024, "One-shot Empirical Privacy Estimation for Federated
Learning") each own a random unit direction u_i; each canary is included in the population with probability
1/2 (independently, the one-run design of Steinke, Nasr, Jagielski 2023). Every round, the real
:class:`fl.privacy.DPAggregator` (clipping, noise, ledger — the code path training uses) is run on the
canaries that Poisson sampling picked, each submitting ``clip · u_i``. The adversary sees every released
aggregate and scores canary i by Σ_r ⟨released_r, u_i⟩; it guesses "in" for the top-k scores and "out" for
the bottom-k. The one-run audit turns the correct guesses into an ε lower bound, reported beside the ε the
ledger recorded for the same releases.

Leaving out the real clients only *helps* the auditor (their updates would act as extra noise), so the bound
stays a valid lower bound for the mechanism with real clients. A correct mechanism never gets a lower bound
above its accountant ε (up to the audit's confidence); a mechanism whose noise is smaller than claimed does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attacks.audit import OneRunAuditResult, one_run_audit
from attacks.metrics import AttackParameterError
from fl.aggregators import WeightedMean
from fl.privacy import DPAggregator, DPSettings, SamplingInfo
from fl.types import ClientUpdate

__all__ = ["CanaryAuditResult", "canary_audit"]


@dataclass(frozen=True)
class CanaryAuditResult:
    """The audit's ε lower bound next to the accountant's ε for the same releases."""

    epsilon_lower_bound: float
    accountant_epsilon: float
    noise_multiplier: float
    rounds: int
    num_canaries: int
    audit: OneRunAuditResult

    @property
    def flagged(self) -> bool:
        """True when the measured lower bound exceeds the claimed ε: the mechanism leaks more than claimed."""
        return self.epsilon_lower_bound > self.accountant_epsilon


def canary_audit(
    settings: DPSettings,
    *,
    sampling_rate: float,
    rounds: int,
    num_canaries: int = 1000,
    dim: int = 2000,
    guess_fraction: float = 0.1,
    confidence: float = 0.95,
    seed: int = 0,
) -> CanaryAuditResult:
    """Audit client-level DP as configured by ``settings`` (Poisson sampling at ``sampling_rate``).

    ``settings.mode``: ``"central"`` (the real :class:`DPAggregator`: clip, Gaussian noise, ledger),
    ``"distributed"`` (the real distributed-DP encoding: rotation, conditional rounding, discrete noise shares,
    modular sum and decoding; the pairwise masks, which cancel exactly, are left out so that hundreds of
    canary clients need no key agreement) or ``"none"`` (an exact sum of clipped updates, what plain averaging,
    SecAgg and CKKS release; the accountant ε is then infinite and the bound is the design's ceiling).
    """
    if settings.mode not in ("central", "distributed", "none"):
        raise AttackParameterError(f"the canary audit covers dp modes none, central and distributed, got {settings.mode!r}")
    if num_canaries < 10 or dim < 2:
        raise AttackParameterError("need num_canaries >= 10 and dim >= 2")
    if not 0 < guess_fraction <= 0.5:
        raise AttackParameterError(f"guess_fraction must be in (0, 0.5], got {guess_fraction}")
    rng = np.random.default_rng(seed)  # canary directions and inclusion: public audit design, not DP noise
    directions = rng.standard_normal((num_canaries, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    included = rng.random(num_canaries) < 0.5
    # the population is the included canaries: the others never exist in the audited run
    sampling = SamplingInfo("poisson", max(int(included.sum()), 1), sampling_rate)
    aggregator: DPAggregator | None = None
    if settings.mode != "none":
        aggregator = DPAggregator(
            WeightedMean("uniform"), settings, sampling, rounds=rounds, dim=dim, run_id=f"canary-audit-{seed}",
            seed=seed, secagg_mode="sum",
        )
    try:
        scores = np.zeros(num_canaries)
        for r in range(rounds):
            picked = np.flatnonzero(included & (rng.random(num_canaries) < sampling_rate))
            updates = [
                ClientUpdate(int(i), (settings.clip * directions[i]).astype(np.float32), 1) for i in picked
            ]
            if aggregator is not None:
                released = aggregator.aggregate(updates, dim=dim, round_index=r).vector
            else:
                released = WeightedMean("uniform").aggregate(updates, dim=dim, round_index=r).vector
            scores += directions @ released.astype(np.float64)
        epsilon = aggregator.ledger.spent_epsilon() if aggregator is not None else float("inf")
        noise_multiplier = aggregator.noise_multiplier if aggregator is not None else 0.0
    finally:
        if aggregator is not None:
            aggregator.close()
    k = max(1, int(guess_fraction * num_canaries))
    audit = one_run_audit(scores, included, settings.delta, confidence, k_positive=k, k_negative=k)
    return CanaryAuditResult(audit.epsilon_lb, epsilon, noise_multiplier, rounds, num_canaries, audit)
