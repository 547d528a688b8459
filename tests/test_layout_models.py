from __future__ import annotations

import numpy as np
import pytest
import torch

from fl.errors import ConfigError, UpdateError
from fl.layout import ParamLayout
from fl.models import build_model


@pytest.mark.parametrize(
    ("name", "shape", "outputs", "size"),
    [
        ("logreg", (30,), 2, 30 * 2 + 2),
        ("mlp", (30,), 2, 30 * 32 + 32 + 32 * 2 + 2),
        ("cnn", (1, 8, 8), 10, (1 * 16 * 9 + 16) + (16 * 32 * 9 + 32) + (32 * 4 * 4 * 64 + 64) + (64 * 10 + 10)),
    ],
)
def test_layout_size_and_roundtrip(name: str, shape: tuple[int, ...], outputs: int, size: int) -> None:
    model = build_model(name, shape, outputs, seed=3)
    layout = ParamLayout.from_module(model)
    assert layout.size == size == sum(p.numel() for p in model.parameters())
    flat = layout.flatten(model)
    assert flat.dtype == np.float32 and flat.shape == (size,)
    new = np.arange(size, dtype=np.float32) / size
    layout.load_into(model, new)
    np.testing.assert_array_equal(layout.flatten(model), new)
    # unflatten gives the same values as the module's named parameters, in order
    for (name_, arr), (pname, p) in zip(layout.unflatten(new).items(), model.named_parameters(), strict=True):
        assert name_ == pname
        np.testing.assert_array_equal(arr, p.detach().numpy())
    segs = layout.segments()
    assert segs[0][1] == 0 and segs[-1][2] == size
    assert all(a[2] == b[1] for a, b in zip(segs, segs[1:], strict=False))


def test_model_is_deterministic_and_isolated_from_global_rng() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    a = ParamLayout.from_module(m := build_model("mlp", (10,), 3, seed=7)).flatten(m)
    torch.manual_seed(123)
    b = ParamLayout.from_module(m2 := build_model("mlp", (10,), 3, seed=7)).flatten(m2)
    after = torch.rand(1)
    np.testing.assert_array_equal(a, b)
    assert torch.equal(before, after)  # building a model did not consume global RNG state
    c = ParamLayout.from_module(m3 := build_model("mlp", (10,), 3, seed=8)).flatten(m3)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("vector", "match"),
    [
        (np.zeros(3, dtype=np.float64), "dtype must be float32"),
        (np.zeros(4, dtype=np.float32), r"shape \(3,\)"),
        (np.zeros((3, 1), dtype=np.float32), r"shape \(3,\)"),
        ([0.0] * 3, "numpy array"),
    ],
)
def test_layout_rejects_bad_vectors(vector: object, match: str) -> None:
    model = build_model("logreg", (2,), 1)
    layout = ParamLayout.from_module(model)
    with pytest.raises(UpdateError, match=match):
        layout.load_into(model, vector)  # type: ignore[arg-type]


def test_layout_rejects_other_architecture() -> None:
    layout = ParamLayout.from_module(build_model("logreg", (4,), 2))
    with pytest.raises(UpdateError, match="shape"):
        layout.flatten(build_model("logreg", (5,), 2))


def test_unknown_model_and_cnn_on_tabular() -> None:
    with pytest.raises(ConfigError, match="allowed: logreg, mlp, cnn"):
        build_model("resnet", (4,), 2)
    with pytest.raises(ConfigError, match="image data"):
        build_model("cnn", (30,), 2)
