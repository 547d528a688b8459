from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import secagg
from secagg import AbortError, EncodingError, ParameterError, secure_sum


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 15), st.integers(1, 50), st.sampled_from(["secagg", "secagg+"]), st.integers(0, 2**31))
def test_secure_sum_equals_sum_within_bound(n: int, m: int, mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    vectors = {10 * c + 3: rng.uniform(-2, 2, m) for c in range(n)}  # arbitrary caller ids
    out = secure_sum(vectors, clip=2.0, scale_bits=16, mode=mode, rounding_seed=seed)  # type: ignore[arg-type]
    exact = np.sum(list(vectors.values()), axis=0)
    assert np.all(np.abs(out.sum - exact) < n * 2.0**-16)
    assert out.survivors == tuple(sorted(vectors)) and out.clipped_fraction == 0


def test_weighted_with_late_dropouts_and_phase_drops() -> None:
    rng = np.random.default_rng(1)
    vectors = {c: rng.uniform(-1, 1, 30) for c in range(1, 9)}
    weights = {c: float(c) for c in vectors}
    out = secure_sum(vectors, clip=1.0, weights=weights, max_weight=10.0, late_dropouts=[20, 21],
                     drops={3: "unmask"}, rounding_seed=0)
    assert set(out.dropped) == {20, 21} and 3 in out.survivors  # 3 sent its input before vanishing
    exact = sum(weights[c] * vectors[c] for c in vectors)
    np.testing.assert_allclose(out.sum, exact, atol=10 * 2.0**-20 * 2)
    assert out.total_weight == pytest.approx(sum(weights.values()), abs=10 * 2.0**-20)


def test_clipping_is_counted_and_active_variant_runs() -> None:
    vectors = {1: np.array([3.0, 0.0]), 2: np.array([0.5, -4.0]), 3: np.zeros(2)}
    out = secure_sum(vectors, clip=1.0, active=True, rounding_seed=0)
    np.testing.assert_allclose(out.sum, [1.5, -1.0], atol=3 * 2.0**-20)
    assert out.clipped_fraction == pytest.approx(2 / 6)


def test_abort_and_errors() -> None:
    v = {c: np.zeros(3) for c in range(1, 5)}
    with pytest.raises(AbortError):
        secure_sum(v, clip=1.0, drops={1: "share", 2: "share"})
    with pytest.raises(ParameterError, match="at least 2 clients"):
        secure_sum({1: np.zeros(3)}, clip=1.0)
    with pytest.raises(EncodingError, match="one length"):
        secure_sum({1: np.zeros(3), 2: np.zeros(4)}, clip=1.0)
    with pytest.raises(ParameterError, match="both late dropouts and contributors"):
        secure_sum(v, clip=1.0, late_dropouts=[1])
    with pytest.raises(ParameterError, match="weights must name"):
        secure_sum(v, clip=1.0, weights={1: 1.0}, max_weight=1.0)
    with pytest.raises(EncodingError):
        secure_sum({1: np.array([np.nan, 0, 0]), 2: np.zeros(3)}, clip=1.0)
    with pytest.raises(ParameterError, match="mode"):
        secure_sum(v, clip=1.0, mode="secagg++")  # type: ignore[arg-type]


def test_public_api_is_listed() -> None:
    for name in secagg.__all__:
        assert hasattr(secagg, name), name
