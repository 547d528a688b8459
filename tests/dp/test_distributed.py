from __future__ import annotations

import math

import numpy as np
import pytest

from dp.accountants import RDPAccountant
from dp.discrete import discrete_gaussian_variance
from dp.distributed import (
    DistributedParams,
    ddg_rdp,
    decode_sum,
    encode_client,
    hadamard,
    rounded_l2_bound,
    skellam_rdp,
)
from dp.errors import DPParameterError
from dp.events import DistributedNoiseEvent, GaussianEvent, PoissonSampledEvent
from dp.rng import CryptoRNG

SEED = b"r" * 32


def test_hadamard_is_orthogonal_up_to_scale() -> None:
    x = np.random.default_rng(0).standard_normal((3, 64))
    np.testing.assert_allclose(hadamard(hadamard(x)) / 64, x, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(hadamard(x), axis=-1) / 8, np.linalg.norm(x, axis=-1))
    with pytest.raises(DPParameterError, match="power-of-two"):
        hadamard(np.zeros(6))


def test_rounded_bound_formula() -> None:
    # Kairouz et al. Theorem 1 with beta = exp(-1/2): sqrt(2 ln(1/beta)) = 1
    c, d = 100.0, 64
    assert rounded_l2_bound(c, d, math.exp(-0.5)) == pytest.approx(min(c + 8, math.sqrt(c * c + 16 + (c + 4))))
    assert rounded_l2_bound(c, d, 0.0) == c + 8


def _params(noise: str = "discrete_gaussian", n: int = 30) -> DistributedParams:
    return DistributedParams.for_noise_multiplier(
        dim=100, clip=1.0, noise_multiplier=0.8, expected_clients=n, bits=24, noise=noise  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("noise", ["discrete_gaussian", "skellam"])
def test_noised_sum_is_unbiased_with_the_variance_the_accountant_assumes(noise: str) -> None:
    n = 30
    p = _params(noise, n)
    rng = CryptoRNG.from_int_seed(11)
    xs = [np.random.default_rng(i).standard_normal(100) * 0.05 for i in range(n)]
    errors = []
    for trial in range(40):  # 40 rounds × 128 rotated coordinates
        total = np.zeros(p.padded_dim, dtype=np.uint64)
        for i, x in enumerate(xs):
            total = (total + encode_client(x, p, SEED, rng.spawn(trial, i))) & np.uint64((1 << p.bits) - 1)
        errors.append(decode_sum(total, p, SEED) - sum(xs))
    err = np.concatenate(errors)
    # per-client share variance: discrete Gaussian (slightly below sigma^2) or Skellam (exactly sigma^2)
    share = discrete_gaussian_variance(p.noise_std**2) if noise == "discrete_gaussian" else p.noise_std**2
    # the rotation is orthonormal, so coordinate noise keeps its variance; rounding adds <= gamma^2/4 per client
    expected_var = n * share * p.gamma**2
    rounding_var = n * p.gamma**2 / 4
    assert abs(err.mean()) < 4 * math.sqrt((expected_var + rounding_var) / err.size)
    assert expected_var * 0.9 < err.var() < (expected_var + rounding_var) * 1.1
    # the accountant prices it as noise of std sqrt(n)·sigma against sensitivity l2_sensitivity
    assert math.sqrt(n) * p.noise_std / p.l2_sensitivity == pytest.approx(0.8, rel=1e-9)


def test_modular_wrap_decodes_negative_sums() -> None:
    p = DistributedParams(dim=4, clip=1.0, gamma=1e-3, noise_std=1.0, bits=16)
    x = np.array([-0.5, 0.0, 0.0, 0.0])
    enc = encode_client(x, p, SEED, CryptoRNG.from_int_seed(0))
    est = decode_sum(enc, p, SEED)
    assert abs(est[0] + 0.5) < 0.02 and np.abs(est[1:]).max() < 0.02


def test_rdp_curves() -> None:
    p = _params("discrete_gaussian")
    z2 = 0.8**2
    for alpha in (2.0, 8.0, 32.0):
        gauss = alpha / (2 * z2)
        assert ddg_rdp(alpha, p, 30) == pytest.approx(gauss, rel=1e-9)  # tau is negligible at this sigma
        assert skellam_rdp(alpha, p, 30) >= gauss
        assert skellam_rdp(alpha, p, 30) == pytest.approx(gauss, rel=1e-3)
    # dropped clients' missing noise: fewer survivors => larger epsilon
    assert ddg_rdp(8.0, p, 20) > ddg_rdp(8.0, p, 30)
    small = DistributedParams(dim=4, clip=1.0, gamma=0.5, noise_std=0.3, bits=16)
    assert ddg_rdp(2.0, small, 10) > 2.0 / 2 * (small.l2_sensitivity / (math.sqrt(10) * 0.3)) ** 2  # tau > 0


def test_event_accounting_is_at_least_gaussian() -> None:
    p = _params()
    ev = DistributedNoiseEvent("discrete_gaussian", p.l2_sensitivity, p.l1_sensitivity, p.noise_std, 30, p.padded_dim)
    assert ev.rdp(4.0) == pytest.approx(ddg_rdp(4.0, p, 30))
    a, g = RDPAccountant(), RDPAccountant()
    a.compose(PoissonSampledEvent(0.05, ev), 500)
    g.compose(PoissonSampledEvent(0.05, GaussianEvent(0.8)), 500)
    # the generic subsampling bound (Zhu & Wang Thm 5) is sound but looser than the Gaussian-specific one
    assert a.get_epsilon(1e-5) >= g.get_epsilon(1e-5)
    assert a.get_epsilon(1e-5) < 1.5 * g.get_epsilon(1e-5)
