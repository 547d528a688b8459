from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from fl.errors import ConfigError
from fl.sampling import Dropout, Sampler, plan_round


@given(st.integers(1, 200), st.data())
def test_fixed_size_sampling_without_replacement(n: int, data: st.DataObject) -> None:
    m = data.draw(st.integers(1, n))
    picked = Sampler("fixed", m).sample(n, np.random.default_rng(data.draw(st.integers(0, 2**32))))
    assert len(picked) == m == len(set(picked.tolist()))
    assert picked.min() >= 0 and picked.max() < n and np.all(np.diff(picked) > 0)


def test_fixed_size_sampling_is_uniform() -> None:
    # each of 20 clients should be picked 5/20 of the time: chi-square goodness of fit, fixed seed
    rng = np.random.default_rng(0)
    counts = np.zeros(20)
    for _ in range(4000):
        counts[Sampler("fixed", 5).sample(20, rng)] += 1
    assert stats.chisquare(counts).pvalue > 0.01


def test_poisson_sampling_rate() -> None:
    rng = np.random.default_rng(1)
    sizes = np.array([len(Sampler("poisson", rate=0.1).sample(1000, rng)) for _ in range(400)])
    # Binomial(1000, 0.1): mean 100, sd 9.49; the mean of 400 draws has sd 0.47
    assert abs(sizes.mean() - 100) < 3 * 0.47
    assert 8 < sizes.std() < 11


def test_plan_is_reproducible_and_dropout_phases() -> None:
    s, d = Sampler("fixed", 30), Dropout(0.3, "after_training")
    a, b = plan_round(5, 50, s, d, seed=9), plan_round(5, 50, s, d, seed=9)
    assert a == b
    assert a != plan_round(6, 50, s, d, seed=9)
    assert a.dropped_before_training == () and set(a.dropped_after_training) <= set(a.sampled)
    assert set(a.training) == set(a.sampled)
    assert set(a.contributing) == set(a.sampled) - set(a.dropped_after_training)
    before = plan_round(5, 50, s, Dropout(0.3, "before_training"), seed=9)
    assert before.dropped_before_training == a.dropped_after_training  # same draws, different phase
    assert set(before.training) == set(before.contributing)
    rates = [len(plan_round(r, 50, s, d, seed=0).dropped_after_training) / 30 for r in range(300)]
    assert abs(np.mean(rates) - 0.3) < 0.02


@pytest.mark.parametrize(
    ("factory", "key"),
    [
        (lambda: Sampler("fixed", 0), "sampling.clients_per_round"),
        (lambda: Sampler("poisson", rate=0.0), "sampling.rate"),
        (lambda: Sampler("stratified"), "sampling.method"),  # type: ignore[arg-type]
        (lambda: Dropout(1.0), "dropout.rate"),
        (lambda: Dropout(0.1, "midway"), "dropout.phase"),  # type: ignore[arg-type]
        (lambda: Sampler("fixed", 5).sample(3, np.random.default_rng(0)), "sampling.clients_per_round"),
    ],
)
def test_sampling_errors(factory: object, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        factory()  # type: ignore[operator]
    assert info.value.key == key
