from __future__ import annotations

import numpy as np
import pytest

from fl.client import TrainConfig, evaluate, local_gradient, local_train
from fl.errors import ConfigError
from fl.layout import ParamLayout
from fl.models import build_model


def _data(n: int = 64, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    return x, y


def _setup(name: str = "mlp") -> tuple[object, ParamLayout, np.ndarray]:
    model = build_model(name, (5,), 2, hidden=(8,), seed=1)
    layout = ParamLayout.from_module(model)
    return model, layout, layout.flatten(model)


def test_local_training_is_deterministic_per_seed() -> None:
    x, y = _data()
    model, layout, w = _setup()
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.1)
    a = local_train(model, layout, w, x, y, cfg, task="classification", client_id=0, seed=5)
    b = local_train(model, layout, w, x, y, cfg, task="classification", client_id=0, seed=5)
    c = local_train(model, layout, w, x, y, cfg, task="classification", client_id=0, seed=6)
    np.testing.assert_array_equal(a.delta, b.delta)
    assert not np.array_equal(a.delta, c.delta)  # another minibatch order
    assert a.num_examples == 64 and a.delta.dtype == np.float32


def test_one_full_batch_step_is_minus_lr_times_gradient() -> None:
    x, y = _data()
    model, layout, w = _setup()
    step = local_train(
        model, layout, w, x, y, TrainConfig(epochs=1, batch_size=0, lr=0.3), task="classification", client_id=0, seed=0
    )
    grad = local_gradient(model, layout, w, x, y, task="classification", client_id=0)
    np.testing.assert_allclose(step.delta, 0.3 * grad.delta, rtol=1e-5, atol=1e-7)


def test_training_reduces_loss() -> None:
    x, y = _data(256)
    model, layout, w = _setup()
    before = evaluate(model, x, y, task="classification")
    u = local_train(model, layout, w, x, y, TrainConfig(epochs=20, batch_size=32, lr=0.2), task="classification",
                    client_id=0, seed=0)
    layout.load_into(model, w + u.delta)
    after = evaluate(model, x, y, task="classification")
    assert after["loss"] < 0.5 * before["loss"] and after["accuracy"] > 0.9


def test_fedprox_term_pulls_towards_global_model() -> None:
    x, y = _data()
    model, layout, w = _setup()
    norms = []
    for mu in (0.0, 1.0, 10.0):
        cfg = TrainConfig(epochs=5, batch_size=8, lr=0.05, mu=mu)
        u = local_train(model, layout, w, x, y, cfg, task="classification", client_id=0, seed=3)
        norms.append(float(np.linalg.norm(u.delta)))
    assert norms[0] > norms[1] > norms[2] > 0


def test_regression_metrics() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.standard_normal(200)).astype(np.float32)
    model = build_model("logreg", (3,), 1, seed=0)
    layout = ParamLayout.from_module(model)
    w = layout.flatten(model)
    u = local_train(model, layout, w, x, y, TrainConfig(epochs=30, batch_size=20, lr=0.05), task="regression",
                    client_id=0, seed=0)
    layout.load_into(model, w + u.delta)
    m = evaluate(model, x, y, task="regression")
    assert m["r2"] > 0.99 and m["loss"] < 0.05


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"epochs": 0}, "client.epochs"),
        ({"batch_size": -1}, "client.batch_size"),
        ({"lr": 0.0}, "client.lr"),
        ({"momentum": 1.0}, "client.momentum"),
        ({"mu": -0.1}, "client.mu"),
        ({"weight_decay": -1.0}, "client.weight_decay"),
    ],
)
def test_train_config_validation(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key
