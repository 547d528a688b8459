from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fl.aggregators import UpdateTransform, WeightedMean, build_aggregator
from fl.errors import ConfigError, UpdateError
from fl.types import ClientUpdate


def _update(cid: int, values: list[float], n: int) -> ClientUpdate:
    return ClientUpdate(cid, np.array(values, dtype=np.float32), n)


@given(
    st.integers(1, 12).flatmap(
        lambda k: st.tuples(
            st.lists(st.integers(1, 10_000), min_size=k, max_size=k),
            st.lists(
                st.lists(st.integers(-1000, 1000), min_size=5, max_size=5), min_size=k, max_size=k
            ),
        )
    )
)
def test_weighted_mean_matches_exact_hand_computation(data: tuple[list[int], list[list[int]]]) -> None:
    counts, vectors = data
    # inputs are multiples of 1/8: exactly representable, so the exact rational mean is the reference
    updates = [_update(i, [v / 8 for v in vec], n) for i, (vec, n) in enumerate(zip(vectors, counts, strict=True))]
    agg = WeightedMean().aggregate(updates, dim=5, round_index=0)
    total = sum(counts)
    exact = [
        float(sum(Fraction(n, total) * Fraction(vec[j], 8) for vec, n in zip(vectors, counts, strict=True)))
        for j in range(5)
    ]
    # float32 accumulation of k terms: relative error bounded by ~k * 2^-24 of the magnitude sum
    scale = max(abs(v) for vec in vectors for v in vec) / 8 + 1e-9
    np.testing.assert_allclose(agg.vector, exact, atol=len(counts) * 2.0**-22 * scale)
    assert agg.total_weight == total and agg.num_clients == len(counts)


def test_uniform_weighting_and_empty_round() -> None:
    ups = [_update(0, [1.0, 0.0], 1), _update(1, [3.0, 2.0], 99)]
    np.testing.assert_array_equal(WeightedMean("uniform").aggregate(ups, dim=2, round_index=0).vector, [2.0, 1.0])
    np.testing.assert_allclose(WeightedMean().aggregate(ups, dim=2, round_index=0).vector, [2.98, 1.98], rtol=1e-6)
    empty = WeightedMean().aggregate([], dim=2, round_index=0)
    assert empty.total_weight == 0 and not empty.vector.any()


def test_rejects_bad_cohorts() -> None:
    agg = WeightedMean()
    with pytest.raises(UpdateError, match=r"expected \(3,\)"):
        agg.aggregate([_update(0, [1.0, 2.0], 1)], dim=3, round_index=0)
    with pytest.raises(UpdateError, match="two updates"):
        agg.aggregate([_update(0, [1.0], 1), _update(0, [1.0], 1)], dim=1, round_index=0)
    with pytest.raises(UpdateError, match=r"clients \[1\]"):
        agg.aggregate([_update(0, [1.0], 1), _update(1, [np.nan], 1)], dim=1, round_index=0)
    with pytest.raises(UpdateError, match=r"clients \[0\]"):
        agg.aggregate([_update(0, [np.inf], 1), _update(1, [1.0], 1)], dim=1, round_index=0)
    with pytest.raises(UpdateError, match="weighting"):
        WeightedMean("median")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="allowed: plain"):
        build_aggregator("fancy")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"delta": np.zeros(2, np.float64), "num_examples": 1}, "float32"),
        ({"delta": np.zeros((2, 2), np.float32), "num_examples": 1}, "1-D"),
        ({"delta": [0.0], "num_examples": 1}, "numpy array"),
        ({"delta": np.zeros(2, np.float32), "num_examples": -1}, ">= 0"),
        ({"delta": np.zeros(2, np.float32), "num_examples": 1.5}, "int"),
    ],
)
def test_client_update_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(UpdateError, match=match):
        ClientUpdate(client_id=4, **kwargs)  # type: ignore[arg-type]


def test_client_update_repr_hides_values() -> None:
    u = _update(3, [123.456, 789.25], 7)
    assert "123.456" not in repr(u) and "789.25" not in repr(u) and "dim=2" in repr(u)


class _Scale(UpdateTransform):
    def transform(self, update: ClientUpdate, *, round_index: int) -> ClientUpdate:
        return ClientUpdate(update.client_id, update.delta * np.float32(round_index), update.num_examples)


def test_wrapping_composes_with_inner_aggregator() -> None:
    ups = [_update(0, [1.0, 2.0], 1), _update(1, [3.0, 4.0], 3)]
    out = _Scale(WeightedMean()).aggregate(ups, dim=2, round_index=2)
    np.testing.assert_allclose(out.vector, [5.0, 7.0])
