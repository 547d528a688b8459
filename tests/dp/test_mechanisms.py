from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from dp.errors import DPParameterError
from dp.mechanisms import (
    AdaptiveClipping,
    CentralGaussian,
    clip_l2,
    clip_per_layer,
    effective_noise_multiplier,
    local_gaussian,
)
from dp.rng import CryptoRNG


@given(arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e6, 1e6)), st.floats(1e-3, 1e3))
def test_clipping_never_increases_norm_and_bounds_it(x: np.ndarray, c: float) -> None:
    clipped, norm = clip_l2(x, c)
    assert norm == pytest.approx(np.linalg.norm(x))
    assert np.linalg.norm(clipped) <= min(norm, c) * (1 + 1e-12) + 1e-300
    if norm <= c:
        np.testing.assert_array_equal(clipped, x)
    else:  # direction preserved
        np.testing.assert_allclose(clipped * norm / c, x, rtol=1e-9, atol=1e-9 * norm)


def test_per_layer_clipping() -> None:
    x = np.array([3.0, 4.0, 0.0, 0.5, 12.0])
    out, norms = clip_per_layer(x, [(0, 2), (2, 5)], [1.0, 13.0])
    np.testing.assert_allclose(out, [0.6, 0.8, 0.0, 0.5, 12.0])
    assert norms == pytest.approx([5.0, math.sqrt(144.25)])
    with pytest.raises(DPParameterError, match="tile"):
        clip_per_layer(x, [(0, 2), (3, 5)], [1.0, 1.0])
    with pytest.raises(DPParameterError, match="cover"):
        clip_per_layer(x, [(0, 2)], [1.0])


def test_central_gaussian_noise_scale_and_denominator() -> None:
    mech = CentralGaussian(clip=0.5, noise_multiplier=2.0, denominator=10.0)
    out = mech.release(np.zeros(200_000), CryptoRNG.from_int_seed(7))
    # noise N(0, (zC)^2) on the sum, divided by 10: std 0.1; chi-square CI on the variance, fixed seed
    assert abs(out.std() - 0.1) < 0.001 and abs(out.mean()) < 0.001
    assert stats.kstest(out / 0.1, "norm").pvalue > 1e-3
    np.testing.assert_array_equal(CentralGaussian(1.0, 0.0, 4.0).release(np.full(3, 8.0), CryptoRNG()), [2.0] * 3)


def test_local_gaussian() -> None:
    rng = CryptoRNG.from_int_seed(1)
    x = np.full(100_000, 10.0)
    out = local_gaussian(x, clip=1.0, noise_multiplier=0.5, rng=rng)
    clipped = x / np.linalg.norm(x)
    assert abs((out - clipped).std() - 0.5) < 0.01


def test_effective_noise_multiplier_andrew_et_al() -> None:
    # z_eff^-2 = z^-2 + (2 sigma_b)^-2 (Andrew et al. 2021, Theorem 1)
    assert effective_noise_multiplier(1.0, 10.0) == pytest.approx((1 + 1 / 400) ** -0.5)
    assert effective_noise_multiplier(2.0, 1e9) == pytest.approx(2.0)


def test_adaptive_clipping_tracks_the_quantile() -> None:
    rng = CryptoRNG.from_int_seed(3)
    norms_rng = np.random.default_rng(0)
    ac = AdaptiveClipping(clip=10.0, target_quantile=0.5, learning_rate=0.2, count_noise_multiplier=1.0)
    for _ in range(300):
        norms = norms_rng.lognormal(0.0, 0.5, 200)  # median 1.0
        ac.update(norms, 200.0, rng)
    assert 0.85 < ac.clip < 1.15
    assert len(ac.history) == 300 and ac.history[0] == 10.0


@pytest.mark.parametrize(
    "factory",
    [
        lambda: clip_l2(np.zeros(3), 0.0),
        lambda: clip_l2(np.array([np.nan]), 1.0),
        lambda: clip_l2(np.zeros((2, 2)), 1.0),
        lambda: CentralGaussian(1.0, -1.0, 1.0),
        lambda: CentralGaussian(1.0, 1.0, 0.0),
        lambda: AdaptiveClipping(1.0, target_quantile=1.0),
    ],
)
def test_rejections(factory: object) -> None:
    with pytest.raises(DPParameterError):
        factory()  # type: ignore[operator]
