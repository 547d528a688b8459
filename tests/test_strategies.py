from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fl.errors import CheckpointError, ConfigError
from fl.strategies import FedAdagrad, FedAdam, FedYogi, ServerSGD, build_strategy


def test_fedadam_matches_hand_computation() -> None:
    # Reddi et al. 2021, Algorithm 2 with v_{-1} = tau^2, no bias correction.
    opt = FedAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=0.01)
    w = np.array([1.0, -2.0], dtype=np.float32)
    d1 = np.array([0.5, -1.0], dtype=np.float32)
    w1 = opt.step(w, d1)
    m = 0.1 * d1.astype(np.float64)
    v = 0.99 * 1e-4 + 0.01 * d1.astype(np.float64) ** 2
    expected1 = w + 0.1 * m / (np.sqrt(v) + 0.01)
    np.testing.assert_allclose(w1, expected1, rtol=1e-6)
    d2 = np.array([0.1, 0.2], dtype=np.float32)
    w2 = opt.step(w1, d2)
    m = 0.9 * m + 0.1 * d2
    v = 0.99 * v + 0.01 * d2.astype(np.float64) ** 2
    np.testing.assert_allclose(w2, w1 + 0.1 * m / (np.sqrt(v) + 0.01), rtol=1e-6)


def test_fedyogi_and_fedadagrad_second_moments() -> None:
    d = np.array([2.0, 0.001], dtype=np.float32)
    yogi = FedYogi(lr=1.0, beta1=0.0, beta2=0.9, tau=0.01)
    yogi.step(np.zeros(2, np.float32), d)
    v0 = 1e-4
    dsq = d.astype(np.float64) ** 2
    # Yogi: v - (1 - b2) d^2 sign(v - d^2): grows where d^2 > v, shrinks where d^2 < v
    np.testing.assert_allclose(yogi.v, v0 - 0.1 * dsq * np.sign(v0 - dsq))
    assert yogi.v[0] > v0 and yogi.v[1] < v0
    ada = FedAdagrad(lr=1.0, beta1=0.0, beta2=0.0, tau=0.01)
    ada.step(np.zeros(2, np.float32), d)
    ada.step(np.zeros(2, np.float32), d)
    np.testing.assert_allclose(ada.v, v0 + 2 * dsq)


@given(arrays(np.float32, 8, elements=st.floats(-10, 10, width=32)), arrays(np.float32, 8, elements=st.floats(-1, 1, width=32)))
def test_server_sgd_lr_one_is_plain_addition(w: np.ndarray, d: np.ndarray) -> None:
    np.testing.assert_array_equal(ServerSGD(1.0).step(w, d), w + d)


def test_optimizer_state_roundtrip() -> None:
    a = FedAdam(0.1, 0.9, 0.99, 1e-3)
    w = np.ones(3, np.float32)
    rng = np.random.default_rng(0)
    deltas = [rng.standard_normal(3).astype(np.float32) for _ in range(4)]
    for d in deltas[:2]:
        w = a.step(w, d)
    b = FedAdam(0.1, 0.9, 0.99, 1e-3)
    b.load_state_dict(a.state_dict())
    wa, wb = w.copy(), w.copy()
    for d in deltas[2:]:
        wa, wb = a.step(wa, d), b.step(wb, d)
    np.testing.assert_array_equal(wa, wb)
    with pytest.raises(CheckpointError, match="needs keys m, v"):
        b.load_state_dict({"m": np.zeros(3)})
    with pytest.raises(CheckpointError, match="no state"):
        ServerSGD().load_state_dict({"m": np.zeros(3)})


def test_build_strategy_defaults_and_errors() -> None:
    assert build_strategy("fedsgd", client_lr=0.3).server_lr == 0.3
    assert build_strategy("fedsgd", client_lr=0.3).client_mode == "gradient"
    assert build_strategy("fedavg").server_lr == 1.0
    assert build_strategy("fedprox", mu=0.1).prox_mu == 0.1
    assert isinstance(build_strategy("fedyogi").make_optimizer(), FedYogi)
    with pytest.raises(ConfigError, match="allowed: fedavg"):
        build_strategy("fedavgg")
    with pytest.raises(ConfigError, match="client.mu"):
        build_strategy("fedprox", mu=0.0)
