from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch

from dp.accountants import PLDAccountant, RDPAccountant
from dp.events import GaussianEvent, PoissonSampledEvent
from dp.rng import CryptoRNG
from fl.client import Task, TrainConfig, local_gradient, local_train
from fl.dpsgd import DPSGDConfig, SampleLevelAccountant, local_train_dpsgd, sampling_plan
from fl.errors import ConfigError
from fl.layout import ParamLayout
from fl.models import build_model
from fl.types import ClientUpdate

SAMPLERS = ("opacus", "functorch")


def _data(n: int = 48, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    return x, y


def _setup(name: str = "mlp", shape: tuple[int, ...] = (5,), outputs: int = 2) -> tuple[torch.nn.Module, ParamLayout, np.ndarray]:
    model = build_model(name, shape, outputs, hidden=(8,), seed=1)
    layout = ParamLayout.from_module(model)
    return model, layout, layout.flatten(model)


def _dpsgd(
    model: torch.nn.Module,
    layout: ParamLayout,
    w: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    dp: DPSGDConfig,
    *,
    rng_seed: int = 0,
    task: Task = "classification",
    **kwargs: Any,
) -> tuple[ClientUpdate, int, float]:
    return local_train_dpsgd(
        model, layout, w, x, y, cfg, dp, task=task, client_id=3, seed=0,
        noise_rng=CryptoRNG.from_int_seed(rng_seed), **kwargs,
    )


# --------------------------------------------------------------------------- #
# The per-example-gradient path computes the true gradient
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(epochs=1, batch_size=0, lr=0.3),
        # the data-independent terms and momentum follow torch.optim.SGD as local_train uses it
        TrainConfig(epochs=4, batch_size=0, lr=0.2, momentum=0.9, weight_decay=0.01, mu=0.5),
    ],
)
def test_no_noise_no_clipping_full_batch_equals_local_train(sampler: str, cfg: TrainConfig) -> None:
    x, y = _data()
    model, layout, w = _setup()
    expected = local_train(model, layout, w, x, y, cfg, task="classification", client_id=3, seed=0)
    update, steps, q = _dpsgd(model, layout, w, x, y, cfg, DPSGDConfig(0.0, 1e6), grad_sampler=sampler)
    assert (steps, q) == (cfg.epochs, 1.0)
    assert update.client_id == 3 and update.num_examples == 48 and update.delta.dtype == np.float32
    assert np.abs(expected.delta).max() > 1e-2  # a real step was taken
    np.testing.assert_allclose(update.delta, expected.delta, rtol=1e-5, atol=1e-6)


def test_regression_task_matches_local_train() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 5)).astype(np.float32)
    y = (x @ np.arange(1, 6, dtype=np.float32) + 0.3).astype(np.float32)
    model, layout, w = _setup("logreg", outputs=1)
    cfg = TrainConfig(epochs=1, batch_size=0, lr=0.05)
    expected = local_train(model, layout, w, x, y, cfg, task="regression", client_id=3, seed=0)
    update, _, _ = _dpsgd(model, layout, w, x, y, cfg, DPSGDConfig(0.0, 1e6), task="regression")
    np.testing.assert_allclose(update.delta, expected.delta, rtol=1e-5, atol=1e-6)


def test_grad_samplers_agree_on_cnn_and_mlp() -> None:
    rng = np.random.default_rng(3)
    images = rng.random((24, 1, 8, 8), dtype=np.float32)
    labels = rng.integers(0, 10, 24)
    cases = [(build_model("cnn", (1, 8, 8), 10, seed=0), images, labels), (_setup()[0], *_data(24))]
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.1, momentum=0.5)
    dp = DPSGDConfig(noise_multiplier=0.7, max_grad_norm=0.5)
    for model, x, y in cases:
        layout = ParamLayout.from_module(model)
        w = layout.flatten(model)
        a, _, _ = _dpsgd(model, layout, w, x, y, cfg, dp, rng_seed=9, grad_sampler="opacus")
        b, _, _ = _dpsgd(model, layout, w, x, y, cfg, dp, rng_seed=9, grad_sampler="functorch")
        np.testing.assert_allclose(a.delta, b.delta, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- #
# Clipping
# --------------------------------------------------------------------------- #


def _clip_rows(g: np.ndarray, c: float) -> np.ndarray:
    norms = np.linalg.norm(g, axis=-1, keepdims=True)
    return g * np.minimum(1.0, c / norms)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_example_is_clipped_not_the_batch(sampler: str) -> None:
    # one outlier with a huge gradient along its input, the rest small and pointing elsewhere
    rng = np.random.default_rng(4)
    x = np.concatenate([[[60.0, 0.0, 0.0]], 0.1 * rng.standard_normal((7, 3))]).astype(np.float32)
    x[1:, 1] += 0.5
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0])
    model, layout, w = _setup("logreg", (3,))
    lr, clip = 0.5, 2.0
    # reference per-example gradients: fl.client.local_gradient on each single example (returns -g)
    g = -np.stack([local_gradient(model, layout, w, x[i : i + 1], y[i : i + 1], task="classification",
                                  client_id=0).delta for i in range(len(x))]).astype(np.float64)
    norms = np.linalg.norm(g, axis=1)
    assert norms[0] > 10 * clip and norms[1:].max() < clip  # only the outlier is clipped
    per_example = -lr * _clip_rows(g, clip).mean(0)
    batch_clipped = -lr * _clip_rows(g.sum(0), clip) / len(x)  # clipping the summed gradient instead
    update, _, _ = _dpsgd(model, layout, w, x, y, TrainConfig(epochs=1, batch_size=0, lr=lr), DPSGDConfig(0.0, clip),
                          grad_sampler=sampler)
    np.testing.assert_allclose(update.delta, per_example, rtol=1e-5, atol=1e-7)
    cosine = per_example @ batch_clipped / (np.linalg.norm(per_example) * np.linalg.norm(batch_clipped))
    assert cosine < 0.9  # the two clipping rules really give different updates here


def test_update_norm_respects_the_clipping_bound() -> None:
    x, y = _data(40)
    model, layout, w = _setup()
    lr, clip = 0.5, 1e-3
    # q = 1: every step averages n clipped gradients, so each moves w by at most lr·C
    cfg = TrainConfig(epochs=3, batch_size=0, lr=lr)
    update, steps, _ = _dpsgd(model, layout, w, x, y, cfg, DPSGDConfig(0.0, clip))
    norm = float(np.linalg.norm(update.delta))
    assert 0.5 * lr * clip < norm <= lr * steps * clip * (1 + 1e-5)
    # q < 1: step t moves w by at most lr·C·|B_t|/(q·n); the batch sizes are replayed from the same stream
    cfg = TrainConfig(epochs=2, batch_size=8, lr=lr)
    update, steps, q = _dpsgd(model, layout, w, x, y, cfg, DPSGDConfig(0.0, clip), rng_seed=5)
    replay = CryptoRNG.from_int_seed(5)
    batch_sizes = [int(replay.bernoulli(q, len(x)).sum()) for _ in range(steps)]
    assert (steps, q) == (10, 0.2) and len(set(batch_sizes)) > 1
    bound = lr * clip * sum(batch_sizes) / (q * len(x))
    assert float(np.linalg.norm(update.delta)) <= bound * (1 + 1e-5)
    assert bound <= lr * steps * clip / q  # the crude bound |B_t| <= n


# --------------------------------------------------------------------------- #
# Noise
# --------------------------------------------------------------------------- #


def _zero_gradient_problem(dim: int = 4000, n: int = 64) -> tuple[torch.nn.Module, ParamLayout, np.ndarray, np.ndarray, np.ndarray]:
    # linear regression at a minimum: x = 0 and y = the bias, so every example's gradient is exactly 0
    model, layout, w = _setup("logreg", (dim,), outputs=1)
    x = np.zeros((n, dim), dtype=np.float32)
    y = np.full(n, float(layout.unflatten(w)["linear.bias"][0]), dtype=np.float32)
    return model, layout, w, x, y


@pytest.mark.parametrize(("batch_size", "epochs"), [(0, 1), (16, 1)])
def test_noise_has_the_calibrated_standard_deviation(batch_size: int, epochs: int) -> None:
    model, layout, w, x, y = _zero_gradient_problem()
    lr, sigma, clip = 0.1, 3.0, 0.5
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr)
    update, steps, q = _dpsgd(model, layout, w, x, y, cfg, DPSGDConfig(sigma, clip), task="regression")
    # the weights' gradient stays 0 (x = 0); the bias (last coordinate) gets a data gradient after step 1
    noise = update.delta[:-1].astype(np.float64)
    expected = lr * sigma * clip * math.sqrt(steps) / (q * len(x))  # steps independent N(0, (σC)²)/(qn) draws
    assert (steps, q) == ((1, 1.0) if batch_size == 0 else (4, 0.25))
    assert noise.std() == pytest.approx(expected, rel=0.05)  # 4000 draws: the std's standard error is 1.1 %
    assert abs(noise.mean()) < 5 * expected / math.sqrt(noise.size)


@pytest.mark.parametrize(("n", "batch_size", "epochs"), [(40, 10, 2), (5, 1, 2)])
def test_noise_is_the_documented_stream_over_the_expected_batch_size(n: int, batch_size: int, epochs: int) -> None:
    # per step: bernoulli(q, n) for the batch, then normal(dim, scale=σC); the sum is divided by q·n
    # (the expected batch size), never by the realised one -- also when a Poisson batch is empty
    model, layout, w, x, y = _zero_gradient_problem(dim=50, n=n)
    lr, sigma, clip = 0.2, 1.5, 0.7
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr)
    update, steps, q = _dpsgd(model, layout, w, x, y, cfg, DPSGDConfig(sigma, clip), task="regression", rng_seed=11)
    replay = CryptoRNG.from_int_seed(11)
    noise_sum = np.zeros(layout.size)
    batch_sizes = []
    for _ in range(steps):
        batch_sizes.append(int(replay.bernoulli(q, n).sum()))
        noise_sum += replay.normal(layout.size, scale=sigma * clip)
    assert (steps, q) == (epochs * n // batch_size, batch_size / n) and len(set(batch_sizes)) > 1
    assert n > 5 or 0 in batch_sizes  # the small case exercises empty batches
    np.testing.assert_allclose(update.delta[:-1], -lr * noise_sum[:-1] / (q * n), rtol=1e-5, atol=1e-6)


def test_deterministic_and_the_noise_comes_from_noise_rng() -> None:
    x, y = _data()
    model, layout, w = _setup()
    cfg = TrainConfig(epochs=2, batch_size=12, lr=0.2, momentum=0.5)
    dp = DPSGDConfig(1.1, 1.0)
    torch_state = torch.get_rng_state()
    a, steps, q = _dpsgd(model, layout, w, x, y, cfg, dp, rng_seed=1)
    b, _, _ = _dpsgd(model, layout, w, x, y, cfg, dp, rng_seed=1)
    c, _, _ = _dpsgd(model, layout, w, x, y, cfg, dp, rng_seed=2)
    np.testing.assert_array_equal(a.delta, b.delta)
    assert not np.allclose(a.delta, c.delta)
    assert (steps, q) == (8, 0.25)
    # torch's global RNG was not touched (sampling and noise both come from the CSPRNG)
    assert torch.equal(torch.get_rng_state(), torch_state)
    with pytest.raises(TypeError, match="CryptoRNG"):
        local_train_dpsgd(model, layout, w, x, y, cfg, dp, task="classification", client_id=0, seed=0,
                          noise_rng=np.random.default_rng(0))  # type: ignore[arg-type]


def test_train_loss_is_reported_only_on_request_and_model_is_left_clean() -> None:
    x, y = _data()
    model, layout, w = _setup()
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.2)
    update, _, _ = _dpsgd(model, layout, w, x, y, cfg, DPSGDConfig(1.0, 1.0))
    assert "train_loss" not in update.metrics  # not privatised: kept off the wire by default
    update, _, _ = _dpsgd(model, layout, w, x, y, cfg, DPSGDConfig(1.0, 1.0), report_train_loss=True)
    assert 0 < update.metrics["train_loss"] < 5
    # Opacus' hooks are gone: the scratch model still trains normally afterwards
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    plain = local_train(model, layout, w, x, y, cfg, task="classification", client_id=0, seed=0)
    assert np.isfinite(plain.delta).all()


def test_dpsgd_with_moderate_noise_still_learns() -> None:
    x, y = _data(400, seed=7)
    model, layout, w = _setup("logreg")
    cfg = TrainConfig(epochs=8, batch_size=50, lr=0.5)
    update, _, _ = _dpsgd(model, layout, w, x, y, cfg, DPSGDConfig(1.0, 1.0))
    layout.load_into(model, w + update.delta)
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    assert accuracy > 0.9


def test_sampling_plan() -> None:
    assert sampling_plan(45, TrainConfig(epochs=2, batch_size=16)) == (6, 16 / 45)
    assert sampling_plan(140, TrainConfig(epochs=1, batch_size=32)) == (5, 32 / 140)
    assert sampling_plan(40, TrainConfig(epochs=3, batch_size=0)) == (3, 1.0)
    assert sampling_plan(10, TrainConfig(epochs=1, batch_size=16)) == (1, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        sampling_plan(0, TrainConfig())


# --------------------------------------------------------------------------- #
# Sample-level accounting
# --------------------------------------------------------------------------- #


def test_accountant_matches_rdp_accountant_on_the_same_events() -> None:
    dp = DPSGDConfig(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5)
    accountant = SampleLevelAccountant(dp)
    reference = RDPAccountant()
    history = [(6, 16 / 45), (6, 16 / 45), (5, 0.25), (6, 16 / 45)]
    previous = 0.0
    for steps, q in history:
        accountant.record(7, steps, q)
        reference.compose(PoissonSampledEvent(q, GaussianEvent(1.1)), steps)
        eps = accountant.epsilon(7)
        assert eps == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)
        assert eps > previous  # grows with every round trained
        previous = eps
    assert accountant.epsilon(7) == accountant.epsilon(7)  # cached
    assert accountant.epsilon(8) == 0.0  # never trained
    accountant.record(2, 6, 16 / 45)
    low = accountant.epsilon(2)
    assert 0 < low < previous
    assert accountant.summary() == pytest.approx({"dpsgd_epsilon_max": previous, "dpsgd_epsilon_mean": (previous + low) / 2})
    assert accountant.clients == (2, 7)


def test_accountant_state_round_trip_and_edge_cases() -> None:
    dp = DPSGDConfig(1.0, 1.0)
    accountant = SampleLevelAccountant(dp)
    assert accountant.summary() == {"dpsgd_epsilon_max": 0.0, "dpsgd_epsilon_mean": 0.0}
    accountant.record(0, 6, 0.3)
    accountant.record(1, 2, 1.0)
    restored = SampleLevelAccountant(dp)
    restored.load_state_dict(accountant.state_dict())
    assert restored.summary() == accountant.summary()
    for steps, q in [(0, 0.5), (2, 0.0), (2, 1.5), (True, 0.5)]:
        with pytest.raises(ValueError):
            accountant.record(0, steps, q)
    no_noise = SampleLevelAccountant(DPSGDConfig(0.0, 1.0))
    no_noise.record(0, 1, 0.5)
    assert no_noise.epsilon(0) == math.inf and no_noise.epsilon(1) == 0.0


def test_pld_accountant_option() -> None:
    accountant = SampleLevelAccountant(DPSGDConfig(1.0, 1.0, delta=1e-5, accountant="pld"))
    accountant.record(0, 20, 0.1)
    accountant.record(0, 20, 0.1)
    reference = PLDAccountant()
    reference.compose(PoissonSampledEvent(0.1, GaussianEvent(1.0)), 40)
    assert accountant.epsilon(0) == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    rdp = SampleLevelAccountant(DPSGDConfig(1.0, 1.0, delta=1e-5))
    rdp.record(0, 40, 0.1)
    assert accountant.epsilon(0) < rdp.epsilon(0)  # PLD is tighter than RDP


def test_accountant_matches_opacus_rdp() -> None:
    opacus_accountants = pytest.importorskip("opacus.accountants")
    sigma, q, steps_per_round, rounds = 1.0, 16 / 45, 6, 10
    ours = SampleLevelAccountant(DPSGDConfig(sigma, 1.0, delta=1e-5))
    theirs = opacus_accountants.RDPAccountant()
    for _ in range(rounds):
        ours.record(0, steps_per_round, q)
        for _ in range(steps_per_round):
            theirs.step(noise_multiplier=sigma, sample_rate=q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = theirs.get_epsilon(1e-5)  # Opacus' default orders
    assert ours.epsilon(0) == pytest.approx(reference, rel=0.01)


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"noise_multiplier": -0.1, "max_grad_norm": 1.0}, "client.dpsgd_noise_multiplier"),
        ({"noise_multiplier": float("nan"), "max_grad_norm": 1.0}, "client.dpsgd_noise_multiplier"),
        ({"noise_multiplier": "1", "max_grad_norm": 1.0}, "client.dpsgd_noise_multiplier"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 0.0}, "client.dpsgd_max_grad_norm"),
        ({"noise_multiplier": 1.0, "max_grad_norm": float("inf")}, "client.dpsgd_max_grad_norm"),
        ({"noise_multiplier": 1.0, "max_grad_norm": True}, "client.dpsgd_max_grad_norm"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 0.0}, "client.dpsgd_delta"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1.0}, "client.dpsgd_delta"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "accountant": "prv"}, "client.dpsgd_accountant"),
    ],
)
def test_config_errors_name_the_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        DPSGDConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key and key in str(info.value)


def test_config_normalises_numbers() -> None:
    dp = DPSGDConfig(noise_multiplier=1, max_grad_norm=2)
    assert isinstance(dp.noise_multiplier, float) and dp.max_grad_norm == 2.0
    assert (dp.delta, dp.accountant) == (1e-5, "rdp")
