"""One contract every aggregator passes: the same weighted mean as a float64 reference, within the error
bound each aggregator states (exact for the plain mean up to float32 rounding; fixed-point rounding for
secure aggregation)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl.aggregators import Aggregator, WeightedMean
from fl.secure import SecAggAggregator, SecAggSettings
from fl.types import ClientUpdate

SCALE_BITS = 20
MAX_WEIGHT = 500.0


def _secagg_bound(updates: list[ClientUpdate], n_participants: int) -> float:
    # decode error per coordinate < n * 2^-k for Σ w x and for Σ w (w = n_k / W); the mean is their ratio
    w = np.array([u.num_examples for u in updates], dtype=np.float64) / MAX_WEIGHT
    eps = n_participants * 2.0**-SCALE_BITS
    total = w.sum()
    return eps / (total - eps) * (1 + 1.0)  # |x| <= clip_range = 1: (e1 + |mean| e2) / (W - e2)


AGGREGATORS: dict[str, tuple[Callable[[], Aggregator], Callable[[list[ClientUpdate], int], float]]] = {
    "plain": (WeightedMean, lambda ups, n: 1e-6),
    "secagg": (
        lambda: SecAggAggregator("secagg", SecAggSettings(scale_bits=SCALE_BITS, max_weight=MAX_WEIGHT)),
        _secagg_bound,
    ),
    "secagg+": (
        lambda: SecAggAggregator("secagg+", SecAggSettings(scale_bits=SCALE_BITS, max_weight=MAX_WEIGHT)),
        _secagg_bound,
    ),
}


@pytest.mark.parametrize("name", list(AGGREGATORS))
@settings(max_examples=15, deadline=None)
@given(st.integers(2, 12), st.integers(1, 64), st.integers(0, 2), st.integers(0, 2**32 - 1))
def test_weighted_mean_within_stated_error(name: str, n: int, dim: int, late: int, seed: int) -> None:
    factory, bound = AGGREGATORS[name]
    rng = np.random.default_rng(seed)
    updates = [
        ClientUpdate(c, rng.uniform(-1, 1, dim).astype(np.float32), int(rng.integers(1, int(MAX_WEIGHT))))
        for c in range(n)
    ]
    late_ids = list(range(100, 100 + late))
    out = factory().aggregate(updates, dim=dim, round_index=3, late_dropouts=late_ids)
    counts = np.array([u.num_examples for u in updates], dtype=np.float64)
    reference = (counts[:, None] * np.stack([u.delta for u in updates]).astype(np.float64)).sum(0) / counts.sum()
    assert out.num_clients == n
    np.testing.assert_allclose(out.vector, reference, rtol=0, atol=bound(updates, n + late))
    np.testing.assert_allclose(out.total_weight, counts.sum(), rtol=1e-4)
