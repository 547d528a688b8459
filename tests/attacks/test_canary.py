from __future__ import annotations

import numpy as np
import pytest

import fl.privacy
from attacks.canary import canary_audit
from attacks.metrics import AttackParameterError
from dp.mechanisms import CentralGaussian
from fl.privacy import DPSettings


@pytest.mark.parametrize("epsilon", [1.0, 4.0])
def test_correct_mechanism_is_never_flagged(epsilon: float) -> None:
    result = canary_audit(DPSettings(mode="central", target_epsilon=epsilon, clip=1.0), sampling_rate=0.5,
                          rounds=20, num_canaries=1000, dim=2000, seed=1)
    assert 0.9 * epsilon < result.accountant_epsilon <= epsilon
    assert result.epsilon_lower_bound <= result.accountant_epsilon and not result.flagged
    assert result.audit.guesses_correct > result.audit.guesses_made / 2  # the audit is not blind


def test_noise_ten_times_smaller_than_claimed_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    release = CentralGaussian.release

    def broken(self: CentralGaussian, clipped_sum: np.ndarray, rng: object) -> np.ndarray:
        # the bug under audit: the mechanism adds a tenth of the noise the ledger accounts for
        return release(CentralGaussian(self.clip, self.noise_multiplier / 10, self.denominator), clipped_sum, rng)

    monkeypatch.setattr(fl.privacy.CentralGaussian, "release", broken)
    result = canary_audit(DPSettings(mode="central", target_epsilon=1.0, clip=1.0), sampling_rate=0.5,
                          rounds=20, num_canaries=1000, dim=2000, seed=1)
    assert result.flagged and result.epsilon_lower_bound > 2 * result.accountant_epsilon


def test_without_noise_the_canaries_are_found_and_the_bound_hits_the_design_ceiling() -> None:
    result = canary_audit(DPSettings(mode="none", clip=1.0), sampling_rate=0.5, rounds=5, num_canaries=400, dim=4000)
    assert result.accountant_epsilon == float("inf") and result.noise_multiplier == 0.0
    # every guess right: canaries in 4000 dimensions barely interfere, and nothing else hides them
    assert result.audit.guesses_correct == result.audit.guesses_made == 80
    assert result.epsilon_lower_bound > 1.5


def test_distributed_mechanism_audit_stays_below_its_accountant_epsilon() -> None:
    settings = DPSettings(mode="distributed", target_epsilon=2.0, clip=1.0, accountant="rdp")
    result = canary_audit(settings, sampling_rate=0.5, rounds=10, num_canaries=400, dim=100, seed=2)
    assert 1.0 < result.accountant_epsilon <= 2.5  # priced at the actual number of canaries each round
    assert result.epsilon_lower_bound <= result.accountant_epsilon and not result.flagged
    assert result.audit.guesses_correct > result.audit.guesses_made / 2


def test_rejects_other_modes_and_bad_sizes() -> None:
    with pytest.raises(AttackParameterError, match="central"):
        canary_audit(DPSettings(mode="local"), sampling_rate=0.5, rounds=2)
    with pytest.raises(AttackParameterError, match="num_canaries"):
        canary_audit(DPSettings(mode="central"), sampling_rate=0.5, rounds=2, num_canaries=5)
