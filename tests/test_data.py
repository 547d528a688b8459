"""Tests of fl.data: loaders, partitioners, standardisation and the federated split."""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl.data import (
    DATASETS,
    PARTITIONS,
    Dataset,
    FederatedData,
    Standardizer,
    federate,
    load_breast_cancer,
    load_cifar10,
    load_dataset,
    load_diabetes,
    load_digits,
    load_mnist,
    partition_dirichlet,
    partition_iid,
    partition_quantity_skew,
    partition_shards,
)
from fl.errors import DataError, DataNotFoundError

HYPO = settings(max_examples=75, deadline=None)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="module")
def diabetes() -> Dataset:
    return load_diabetes()


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_valid_partition(parts: list[np.ndarray], n: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
        assert p.size >= 1, "every client must be non-empty"
        assert np.all(np.diff(p) > 0), "indices must be sorted and unique"
    # Disjoint and covering: the concatenation is a permutation of 0..n-1.
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def same_partition(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def label_tv(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    """Mean total-variation distance of client label distributions from the global one."""
    glob = np.bincount(labels, minlength=num_classes) / labels.size
    tvs = [0.5 * np.abs(np.bincount(labels[p], minlength=num_classes) / p.size - glob).sum() for p in parts]
    return float(np.mean(tvs))


def indexed_dataset(n: int, *, num_classes: int = 3, task: str = "classification", seed: int = 0) -> Dataset:
    """Tabular data whose first feature is the example's index, so splits can be traced back."""
    g = rng(seed)
    x = np.column_stack([np.arange(n), g.normal(size=(n, 2))]).astype(np.float32)
    if task == "regression":
        return Dataset("indexed", x, g.normal(5.0, 2.0, size=n).astype(np.float32), "regression", 0, (3,))
    return Dataset("indexed", x, g.integers(0, num_classes, size=n), "classification", num_classes, (3,))


def client_indices(fed: FederatedData) -> tuple[list[np.ndarray], list[np.ndarray]]:
    train = [c.x_train[:, 0].astype(np.int64) for c in fed.clients]
    test = [c.x_test[:, 0].astype(np.int64) for c in fed.clients]
    return train, test


# ---------------------------------------------------------------------------------------------
# Shipped loaders and Dataset validation
# ---------------------------------------------------------------------------------------------


def test_breast_cancer() -> None:
    ds = load_breast_cancer()
    assert ds.x.shape == (569, 30) and ds.x.dtype == np.float32
    assert ds.y.dtype == np.int64 and ds.task == "classification" and ds.num_classes == 2
    assert ds.feature_shape == (30,)
    np.testing.assert_array_equal(np.bincount(ds.y), [212, 357])


def test_digits(digits: Dataset) -> None:
    assert digits.x.shape == (1797, 1, 8, 8) and digits.x.dtype == np.float32
    assert digits.feature_shape == (1, 8, 8) and digits.num_classes == 10
    assert digits.x.min() == 0.0 and digits.x.max() == 1.0
    assert digits.y.dtype == np.int64 and set(np.unique(digits.y)) == set(range(10))


def test_diabetes(diabetes: Dataset) -> None:
    assert diabetes.x.shape == (442, 10) and diabetes.x.dtype == np.float32
    assert diabetes.task == "regression" and diabetes.num_classes == 0
    assert diabetes.y.dtype == np.float32 and diabetes.y.shape == (442,)
    # Raw target (disease progression 25..346) and raw, unscaled features (age in years).
    assert diabetes.y.min() == 25.0 and diabetes.y.max() == 346.0
    assert diabetes.x[:, 0].max() > 50


def test_load_dataset_dispatch() -> None:
    assert load_dataset("breast_cancer").name == "breast_cancer"
    assert load_dataset("diabetes").task == "regression"
    assert DATASETS == ("breast_cancer", "digits", "diabetes", "mnist", "cifar10")


def test_load_dataset_unknown_name_lists_allowed() -> None:
    with pytest.raises(
        DataError, match=r"unknown dataset 'iris'.*breast_cancer, digits, diabetes, mnist, cifar10"
    ):
        load_dataset("iris")


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_load_dataset_file_backed_needs_root(name: str) -> None:
    with pytest.raises(DataError, match=r"read from local files: pass root="):
        load_dataset(name)


def _tab(n: int = 4) -> np.ndarray:
    return np.zeros((n, 2), dtype=np.float32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "ranking"}, r"task must be one of"),
        ({"x": np.array([["a", "b"]] * 4)}, r"x must be numeric"),
        ({"x": np.zeros(4, dtype=np.float32)}, r"x must have shape \(n >= 1"),
        ({"feature_shape": (3,)}, r"feature shape \(2,\), but feature_shape is \(3,\)"),
        ({"y": np.zeros(3, dtype=np.int64)}, r"y must have shape \(4,\)"),
        ({"x": np.full((4, 2), np.nan, dtype=np.float32)}, r"x contains NaN"),
        ({"num_classes": 0}, r"classification needs num_classes >= 1"),
        ({"y": np.zeros(4, dtype=np.float32)}, r"class labels must have an integer dtype"),
        ({"y": np.array([0, 1, 2, 3])}, r"class labels must lie in \[0, 2\), got range \[0, 3\]"),
        ({"task": "regression", "num_classes": 2}, r"regression data must have num_classes=0"),
        (
            {"task": "regression", "num_classes": 0, "y": np.array(["a"] * 4)},
            r"regression targets must be numeric",
        ),
        (
            {"task": "regression", "num_classes": 0, "y": np.array([0, np.inf, 0, 0])},
            r"regression targets contain NaN",
        ),
    ],
)
def test_dataset_validation(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {
        "name": "t",
        "x": _tab(),
        "y": np.array([0, 1, 0, 1]),
        "task": "classification",
        "num_classes": 2,
        "feature_shape": (2,),
    }
    args.update(kwargs)
    with pytest.raises(DataError, match=match):
        Dataset(**args)


def test_dataset_converts_dtypes() -> None:
    ds = Dataset(
        "t", np.ones((2, 2), dtype=np.float64), np.array([0, 1], dtype=np.int8), "classification", 2, (2,)
    )
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64


# ---------------------------------------------------------------------------------------------
# Partitioners: invariants (hypothesis)
# ---------------------------------------------------------------------------------------------


@HYPO
@given(n=st.integers(1, 400), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_iid_invariants(n: int, data: st.DataObject, seed: int) -> None:
    k = data.draw(st.integers(1, min(n, 30)))
    parts = partition_iid(n, k, rng(seed))
    assert_valid_partition(parts, n, k)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert same_partition(parts, partition_iid(n, k, rng(seed)))


@HYPO
@given(n=st.integers(2, 600), data=st.data(), seed=st.integers(0, 2**32 - 1), alpha=st.floats(0.05, 100))
def test_quantity_skew_invariants(n: int, data: st.DataObject, seed: int, alpha: float) -> None:
    k = data.draw(st.integers(1, min(n // 2, 30)))
    parts = partition_quantity_skew(n, k, alpha, rng(seed))
    assert_valid_partition(parts, n, k)
    assert min(p.size for p in parts) >= 2
    assert same_partition(parts, partition_quantity_skew(n, k, alpha, rng(seed)))


@HYPO
@given(
    k=st.integers(1, 8),
    num_classes=st.integers(1, 6),
    per_client=st.integers(30, 60),
    seed=st.integers(0, 2**32 - 1),
    alpha=st.floats(1.0, 10.0),
)
def test_dirichlet_invariants(k: int, num_classes: int, per_client: int, seed: int, alpha: float) -> None:
    n = k * per_client
    labels = rng(seed).integers(0, num_classes, size=n)
    parts = partition_dirichlet(labels, k, alpha, rng(seed))
    assert_valid_partition(parts, n, k)
    assert min(p.size for p in parts) >= 2
    assert same_partition(parts, partition_dirichlet(labels, k, alpha, rng(seed)))


@HYPO
@given(
    k=st.integers(1, 10),
    labels_per_client=st.integers(1, 3),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
)
def test_shards_invariants(k: int, labels_per_client: int, data: st.DataObject, seed: int) -> None:
    num_shards = k * labels_per_client
    num_classes = data.draw(st.integers(1, min(num_shards, 10)))
    n = data.draw(st.integers(num_shards, 300))
    labels = rng(seed).integers(0, num_classes, size=n)
    parts = partition_shards(labels, k, labels_per_client, rng(seed))
    assert_valid_partition(parts, n, k)
    assert max(np.unique(labels[p]).size for p in parts) <= labels_per_client
    assert same_partition(parts, partition_shards(labels, k, labels_per_client, rng(seed)))


@HYPO
@given(n=st.integers(100, 500), k=st.integers(2, 10), seed=st.integers(0, 2**31))
def test_different_seeds_give_different_partitions(n: int, k: int, seed: int) -> None:
    labels = rng(seed).integers(0, 4, size=n)
    make: list[Callable[[np.random.Generator], list[np.ndarray]]] = [
        lambda g: partition_iid(n, k, g),
        lambda g: partition_quantity_skew(n, k, 1.0, g),
        lambda g: partition_dirichlet(labels, k, 1.0, g),
    ]
    for fn in make:
        assert not same_partition(fn(rng(seed)), fn(rng(seed + 1)))


def test_shards_different_seeds_differ(digits: Dataset) -> None:
    a = partition_shards(digits.y, 10, 2, rng(0))
    b = partition_shards(digits.y, 10, 2, rng(1))
    assert not same_partition(a, b)


# ---------------------------------------------------------------------------------------------
# Partitioners: statistical behaviour
# ---------------------------------------------------------------------------------------------


def test_dirichlet_small_alpha_is_more_skewed(digits: Dataset) -> None:
    skewed = [label_tv(digits.y, partition_dirichlet(digits.y, 10, 0.1, rng(s)), 10) for s in range(5)]
    near_iid = [label_tv(digits.y, partition_dirichlet(digits.y, 10, 100.0, rng(s)), 10) for s in range(5)]
    assert np.mean(skewed) > 0.5
    assert np.mean(near_iid) < 0.1
    assert min(skewed) > 3 * max(near_iid)


def test_dirichlet_respects_min_size(digits: Dataset) -> None:
    for seed in range(5):
        parts = partition_dirichlet(digits.y, 20, 0.1, rng(seed), min_size=15)
        assert min(p.size for p in parts) >= 15


def test_shards_on_digits_two_labels_each(digits: Dataset) -> None:
    parts = partition_shards(digits.y, 10, 2, rng(0))
    assert_valid_partition(parts, digits.num_examples, 10)
    distinct = [np.unique(digits.y[p]).size for p in parts]
    assert max(distinct) <= 2
    # Shards are nearly equal (~1797 / 20 each), so client sizes are too.
    assert max(p.size for p in parts) <= 2 * min(p.size for p in parts)


def test_quantity_skew_sizes_and_labels(digits: Dataset) -> None:
    n = digits.num_examples
    skewed = partition_quantity_skew(n, 10, 0.5, rng(0))
    even = partition_quantity_skew(n, 10, 1000.0, rng(0))
    cv = [np.std([p.size for p in ps]) / np.mean([p.size for p in ps]) for ps in (skewed, even)]
    assert cv[0] > 0.5
    assert cv[1] < 0.15
    # Labels stay roughly IID: far closer to the global mix than a label-skewed partition.
    assert label_tv(digits.y, even, 10) < 0.15
    assert (
        label_tv(digits.y, even, 10)
        < label_tv(digits.y, partition_dirichlet(digits.y, 10, 0.1, rng(0)), 10) / 3
    )


# ---------------------------------------------------------------------------------------------
# Partitioners: errors
# ---------------------------------------------------------------------------------------------


def test_iid_too_few_examples() -> None:
    with pytest.raises(DataError, match=r"too few examples: 5 cannot give each of 10 clients at least 1"):
        partition_iid(5, 10, rng())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: partition_iid(10, 0, rng()), r"num_clients must be >= 1, got 0"),
        (lambda: partition_iid(10, 2.5, rng()), r"num_clients must be an integer, got 2.5"),  # type: ignore[arg-type]
        (lambda: partition_iid(10, True, rng()), r"num_clients must be an integer, got True"),
        (lambda: partition_iid(-1, 1, rng()), r"n must be >= 0, got -1"),
        (lambda: partition_quantity_skew(10, 2, 0.0, rng()), r"alpha must be a finite number > 0, got 0.0"),
        (lambda: partition_quantity_skew(10, 2, -1, rng()), r"alpha must be a finite number > 0, got -1"),
        (lambda: partition_quantity_skew(10, 2, float("inf"), rng()), r"alpha must be a finite number > 0"),
        (lambda: partition_quantity_skew(10, 2, "1", rng()), r"alpha must be a positive number, got '1'"),  # type: ignore[arg-type]
        (lambda: partition_quantity_skew(10, 2, 1.0, rng(), min_size=0), r"min_size must be >= 1"),
        (lambda: partition_quantity_skew(5, 3, 1.0, rng()), r"too few examples: 5 .* 3 clients at least 2"),
        (lambda: partition_dirichlet(np.zeros(10, dtype=np.int64), 2, 0.0, rng()), r"alpha must be a finite"),
        (lambda: partition_dirichlet(np.zeros(10, dtype=np.int64), 2, 1.0, rng(), max_tries=0), r"max_tries"),
        (lambda: partition_dirichlet(np.zeros(10, dtype=np.int64), 6, 1.0, rng()), r"too few examples: 10"),
        (
            lambda: partition_dirichlet(np.zeros(10), 2, 1.0, rng()),
            r"integer class labels.*'iid' or 'quantity_skew'",
        ),
        (
            lambda: partition_dirichlet(np.zeros((5, 2), dtype=np.int64), 2, 1.0, rng()),
            r"labels must be a 1-D array",
        ),
        (
            lambda: partition_shards(np.zeros(10, dtype=np.int64), 2, 0, rng()),
            r"labels_per_client must be >= 1",
        ),
        (lambda: partition_shards(np.arange(5), 3, 2, rng()), r"too few examples: 5 cannot fill 6 shards"),
        (lambda: partition_shards(np.arange(20) % 10, 2, 2, rng()), r"4 shards .* cannot cover 10 classes"),
    ],
)
def test_partition_argument_errors(call: Callable[[], object], match: str) -> None:
    with pytest.raises(DataError, match=match):
        call()


def test_dirichlet_impossible_min_size() -> None:
    labels = np.arange(100) % 5
    with pytest.raises(DataError, match=r"too few examples: 100 .* 51 clients at least 2"):
        partition_dirichlet(labels, 51, 1.0, rng())
    with pytest.raises(DataError, match=r"too few examples: 100 .* 11 clients at least 10"):
        partition_dirichlet(labels, 11, 1.0, rng(), min_size=10)


def test_dirichlet_gives_up_after_max_tries() -> None:
    # With 2 classes and a tiny alpha each class lands on one client, so 5 clients can never all
    # be filled: every draw fails.
    labels = np.arange(100) % 2
    with pytest.raises(DataError, match=r"Dirichlet partition failed: no draw in 3 tries"):
        partition_dirichlet(labels, 5, 1e-4, rng(), max_tries=3)


class _UnderflowRng:
    """Stands in for a Generator whose Dirichlet draw underflows (older numpy returned NaN)."""

    def dirichlet(self, alpha: np.ndarray) -> np.ndarray:
        return np.full(len(alpha), np.nan)


def test_quantity_skew_dirichlet_underflow() -> None:
    with pytest.raises(DataError, match=r"Dirichlet draw underflowed for alpha=0.001"):
        partition_quantity_skew(10, 2, 1e-3, _UnderflowRng())  # type: ignore[arg-type]


def test_dirichlet_underflow_counts_as_failed_draw() -> None:
    with pytest.raises(DataError, match=r"no draw in 2 tries"):
        partition_dirichlet(np.arange(10) % 2, 2, 1e-3, _UnderflowRng(), max_tries=2)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Standardizer
# ---------------------------------------------------------------------------------------------


def test_standardizer_per_feature_and_constant_feature() -> None:
    x = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]], dtype=np.float32)
    s = Standardizer.fit(x, None, per_channel=False, regression=False)
    np.testing.assert_allclose(s.mean, [3.0, 5.0])
    np.testing.assert_allclose(s.std, np.array([np.std([1, 3, 5]), 1.0]))  # constant feature: std 1, not 0
    z = s.transform_x(x)
    assert z.dtype == np.float32 and np.isfinite(z).all()
    np.testing.assert_allclose(z[:, 0].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(z[:, 1], 0.0)
    assert s.target_mean is None and s.transform_y(np.array([1, 2])).tolist() == [1, 2]


def test_standardizer_per_channel() -> None:
    x = rng().normal(size=(50, 3, 4, 4)).astype(np.float32) * np.array([1, 2, 3]).reshape(1, 3, 1, 1)
    s = Standardizer.fit(x, None, per_channel=True, regression=False)
    assert s.mean.shape == (3, 1, 1)
    np.testing.assert_allclose(s.mean.ravel(), x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.std.ravel(), x.std(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(s.transform_x(x).std(axis=(0, 2, 3)), 1.0, rtol=1e-4)


def test_standardizer_target_roundtrip() -> None:
    y = np.array([10.0, 20.0, 30.0], dtype=np.float32)
    s = Standardizer.fit(np.zeros((3, 1), dtype=np.float32), y, per_channel=False, regression=True)
    assert s.target_mean == pytest.approx(20.0) and s.target_std == pytest.approx(np.std(y))
    np.testing.assert_allclose(s.inverse_transform_y(s.transform_y(y)), y, rtol=1e-6)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((np.zeros((0, 2)), None), {"per_channel": False, "regression": False}, r"shape \(n >= 1"),
        (
            (np.zeros((4, 2)), None),
            {"per_channel": True, "regression": False},
            r"per-channel .* \(n, C, \.\.\.\)",
        ),
        (
            (np.zeros((4, 2)), None),
            {"per_channel": False, "regression": True},
            r"needs y_train of shape \(4,\), got None",
        ),
        ((np.zeros((4, 2)), np.zeros(3)), {"per_channel": False, "regression": True}, r"got \(3,\)"),
    ],
)
def test_standardizer_fit_errors(args: tuple[Any, Any], kwargs: dict[str, bool], match: str) -> None:
    with pytest.raises(DataError, match=match):
        Standardizer.fit(args[0], args[1], per_channel=kwargs["per_channel"], regression=kwargs["regression"])


def test_standardizer_transform_shape_mismatch() -> None:
    s = Standardizer.fit(np.ones((4, 3, 2, 2), dtype=np.float32), None, per_channel=True, regression=False)
    with pytest.raises(
        DataError, match=r"examples of shape \(3, 1, 1\) cannot transform x of shape \(2, 1, 2, 2\)"
    ):
        s.transform_x(np.ones((2, 1, 2, 2)))


# ---------------------------------------------------------------------------------------------
# federate
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("partition", PARTITIONS)
def test_federate_disjoint_and_complete(partition: str) -> None:
    ds = indexed_dataset(600, num_classes=4)
    fed = federate(ds, 8, partition=partition, standardize=False, seed=3)
    assert fed.num_clients == 8 and fed.scaler is None
    train, test = client_indices(fed)
    everything = np.concatenate(train + test)
    assert everything.size == 600 and np.unique(everything).size == 600  # nothing appears twice
    xtr, ytr = fed.pooled_train()
    xte, yte = fed.pooled_test()
    assert xtr.shape[0] + xte.shape[0] == 600 and ytr.size + yte.size == 600
    for c, tr, te in zip(fed.clients, train, test, strict=True):
        assert c.num_train >= 1 and c.num_test >= 1
        np.testing.assert_array_equal(c.y_train, ds.y[tr])
        np.testing.assert_array_equal(c.y_test, ds.y[te])
        total = tr.size + te.size
        assert te.size == min(max(round(0.2 * total), 1), total - 1)


def test_federate_standardizes_with_train_statistics_only(digits: Dataset) -> None:
    raw = federate(digits, 10, standardize=False, seed=1)
    fed = federate(digits, 10, standardize=True, seed=1)
    assert fed.scaler is not None
    xtr_raw, _ = raw.pooled_train()
    # Per channel for images: one scalar mean/std over all pooled train pixels.
    assert fed.scaler.mean.shape == (1, 1, 1)
    assert fed.scaler.mean.item() == pytest.approx(float(xtr_raw.astype(np.float64).mean()), rel=1e-6)
    assert fed.scaler.std.item() == pytest.approx(float(xtr_raw.astype(np.float64).std()), rel=1e-6)
    xtr, ytr = fed.pooled_train()
    assert xtr.dtype == np.float32 and ytr.dtype == np.int64
    assert float(xtr.mean()) == pytest.approx(0.0, abs=1e-5) and float(xtr.std()) == pytest.approx(
        1.0, rel=1e-4
    )
    xte_raw, _ = raw.pooled_test()
    np.testing.assert_allclose(fed.pooled_test()[0], fed.scaler.transform_x(xte_raw), rtol=1e-6)


def test_federate_regression_standardizes_features_and_target(diabetes: Dataset) -> None:
    raw = federate(diabetes, 5, partition="iid", standardize=False)
    fed = federate(diabetes, 5, partition="iid")
    assert fed.scaler is not None
    xtr_raw, ytr_raw = raw.pooled_train()
    np.testing.assert_allclose(fed.scaler.mean, xtr_raw.astype(np.float64).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(fed.scaler.std, xtr_raw.astype(np.float64).std(axis=0), rtol=1e-5)
    assert fed.scaler.target_mean == pytest.approx(float(ytr_raw.astype(np.float64).mean()))
    assert fed.scaler.target_std == pytest.approx(float(ytr_raw.astype(np.float64).std()))
    _, ytr = fed.pooled_train()
    assert ytr.dtype == np.float32 and float(ytr.mean()) == pytest.approx(0.0, abs=1e-5)


def _with_row_changed(ds: Dataset, row: int) -> Dataset:
    x, y = ds.x.copy(), ds.y.copy()
    x[row, 1:] += 1000.0
    y[row] += 1000.0
    return Dataset(ds.name, x, y, ds.task, ds.num_classes, ds.feature_shape)


def test_federate_test_data_do_not_leak_into_scaler() -> None:
    ds = indexed_dataset(200, task="regression")
    base = federate(ds, 4, partition="iid", seed=5)
    train, test = client_indices(federate(ds, 4, partition="iid", seed=5, standardize=False))
    assert base.scaler is not None
    changed_test = federate(_with_row_changed(ds, int(test[0][0])), 4, partition="iid", seed=5).scaler
    assert changed_test is not None
    np.testing.assert_array_equal(changed_test.mean, base.scaler.mean)
    np.testing.assert_array_equal(changed_test.std, base.scaler.std)
    assert changed_test.target_mean == base.scaler.target_mean
    # Control: the same change to a train row does move the statistics.
    changed_train = federate(_with_row_changed(ds, int(train[0][0])), 4, partition="iid", seed=5).scaler
    assert changed_train is not None
    assert not np.array_equal(changed_train.mean, base.scaler.mean)
    assert changed_train.target_mean != base.scaler.target_mean


@pytest.mark.parametrize("partition", PARTITIONS)
def test_federate_test_fraction_keeps_partition(partition: str) -> None:
    ds = indexed_dataset(500, num_classes=5)
    a_train, a_test = client_indices(
        federate(ds, 6, partition=partition, test_fraction=0.1, standardize=False)
    )
    b_train, b_test = client_indices(
        federate(ds, 6, partition=partition, test_fraction=0.5, standardize=False)
    )
    for atr, ate, btr, bte in zip(a_train, a_test, b_train, b_test, strict=True):
        np.testing.assert_array_equal(
            np.sort(np.concatenate([atr, ate])), np.sort(np.concatenate([btr, bte]))
        )
        assert bte.size >= ate.size
        assert set(ate) <= set(bte)  # one shuffle per client: larger test sets extend smaller ones


def test_federate_reproducible_and_seed_sensitive() -> None:
    ds = indexed_dataset(300)
    a = client_indices(federate(ds, 5, seed=7, standardize=False))
    b = client_indices(federate(ds, 5, seed=7, standardize=False))
    c = client_indices(federate(ds, 5, seed=8, standardize=False))
    assert all(np.array_equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a[0] + a[1], c[0] + c[1], strict=True))


@pytest.mark.parametrize("test_fraction", [0.01, 0.99])
def test_federate_every_client_keeps_train_and_test(test_fraction: float) -> None:
    # Two examples per client: rounding alone would give 0 (or 2) test examples.
    fed = federate(indexed_dataset(20), 10, partition="iid", test_fraction=test_fraction, standardize=False)
    assert [(c.num_train, c.num_test) for c in fed.clients] == [(1, 1)] * 10


def test_federate_single_example_client_keeps_it_for_training() -> None:
    ds = indexed_dataset(3)
    fed = federate(ds, 3, partition="iid", standardize=False)
    assert [(c.num_train, c.num_test) for c in fed.clients] == [(1, 0)] * 3
    assert fed.pooled_test()[0].shape == (0, 3)


def test_federate_shards_metadata(digits: Dataset) -> None:
    fed = federate(digits, 10, partition="shards", labels_per_client=2)
    assert (fed.name, fed.task, fed.num_classes, fed.feature_shape) == (
        "digits",
        "classification",
        10,
        (1, 8, 8),
    )
    assert [c.client_id for c in fed.clients] == list(range(10))
    for c in fed.clients:
        assert np.unique(np.concatenate([c.y_train, c.y_test])).size <= 2


@pytest.mark.parametrize("partition", ["dirichlet", "shards"])
def test_federate_regression_label_partition_rejected(diabetes: Dataset, partition: str) -> None:
    with pytest.raises(
        DataError, match=rf"partition '{partition}' needs class labels.*use 'iid' or 'quantity_skew'"
    ):
        federate(diabetes, 4, partition=partition)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"partition": "random"},
            r"unknown partition 'random'; allowed: iid, dirichlet, shards, quantity_skew",
        ),
        ({"test_fraction": 0.0}, r"test_fraction must lie strictly between 0 and 1, got 0.0"),
        ({"test_fraction": 1.0}, r"test_fraction must lie strictly between 0 and 1, got 1.0"),
        ({"test_fraction": "0.2"}, r"test_fraction must be a number"),
        ({"seed": -1}, r"seed must be >= 0"),
        ({"alpha": 0.0}, r"alpha must be a finite number > 0"),
    ],
)
def test_federate_argument_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DataError, match=match):
        federate(indexed_dataset(50), 2, **kwargs)


def test_federate_too_many_clients() -> None:
    with pytest.raises(DataError, match=r"too few examples: 10 cannot give each of 11 clients"):
        federate(indexed_dataset(10), 11, partition="iid")
    with pytest.raises(DataError, match=r"num_clients must be >= 1"):
        federate(indexed_dataset(10), 0, partition="iid")


# ---------------------------------------------------------------------------------------------
# MNIST (IDX files written into tmp_path)
# ---------------------------------------------------------------------------------------------

MNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray, *, dtype_code: int = 0x08) -> bytes:
    header = bytes([0, 0, dtype_code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_file(path: Path, payload: bytes, *, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def mnist_like(n: int, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Real digit shapes: 8x8 scikit-learn digits upscaled x3 and padded to 28x28."""
    d = load_digits()
    small = np.rint(d.x[start : start + n, 0] * 255).astype(np.uint8)
    images = np.pad(np.kron(small, np.ones((3, 3), dtype=np.uint8)), ((0, 0), (2, 2), (2, 2)))
    return images, d.y[start : start + n].astype(np.uint8)


def write_mnist(
    directory: Path, *, gz: bool, n_train: int = 6, n_test: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    tr_x, tr_y = mnist_like(n_train, 0)
    te_x, te_y = mnist_like(n_test, 100)
    for name, arr in zip(MNIST_NAMES, (tr_x, tr_y, te_x, te_y), strict=True):
        write_file(directory / name, idx_bytes(arr), gz=gz)
    return np.concatenate([tr_x, te_x]), np.concatenate([tr_y, te_y])


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", [(), ("MNIST", "raw")])
def test_load_mnist(tmp_path: Path, gz: bool, layout: tuple[str, ...]) -> None:
    images, labels = write_mnist(tmp_path.joinpath(*layout), gz=gz)
    ds = load_mnist(tmp_path)
    assert ds.x.shape == (10, 1, 28, 28) and ds.x.dtype == np.float32 and ds.feature_shape == (1, 28, 28)
    np.testing.assert_allclose(ds.x[:, 0], images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y, labels)
    assert ds.y.dtype == np.int64 and ds.num_classes == 10 and 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    assert load_dataset("mnist", root=str(tmp_path)).num_examples == 10


def test_load_mnist_missing(tmp_path: Path) -> None:
    with pytest.raises(
        DataNotFoundError, match=r"train-images-idx3-ubyte.*t10k-labels-idx1-ubyte.*torchvision"
    ) as info:
        load_mnist(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_load_mnist_partially_missing(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    (tmp_path / MNIST_NAMES[3]).unlink()
    with pytest.raises(DataNotFoundError, match=r"MNIST files not found"):
        load_mnist(tmp_path)


def _corrupt(tmp_path: Path, name: str, payload: bytes, *, gz: bool = False) -> None:
    write_mnist(tmp_path, gz=False)
    (tmp_path / name).unlink()
    write_file(tmp_path / name, payload, gz=gz)


@pytest.mark.parametrize(
    ("name", "payload", "match"),
    [
        (
            MNIST_NAMES[0],
            idx_bytes(mnist_like(6, 0)[0])[:-10],
            r"train-images-idx3-ubyte: truncated: .* need 4704 data bytes, found 4694",
        ),
        (MNIST_NAMES[0], idx_bytes(mnist_like(6, 0)[0]) + b"\0", r"has trailing data"),
        (MNIST_NAMES[1], b"\0\0", r"train-labels-idx1-ubyte: truncated, only 2 bytes"),
        (MNIST_NAMES[0], b"\0\0\x08\x03\0\0", r"truncated header \(6 bytes, need 16\)"),
        (MNIST_NAMES[0], b"\x1f\x8b" + idx_bytes(mnist_like(6, 0)[0])[2:], r"bad magic number 0x1f8b0803"),
        (MNIST_NAMES[0], idx_bytes(mnist_like(6, 0)[0], dtype_code=0x0D), r"dtype code 0x0d, expected 0x08"),
        (
            MNIST_NAMES[1],
            idx_bytes(np.zeros((6, 1), dtype=np.uint8)),
            r"2 dimensions in the magic number, expected 1",
        ),
        (
            MNIST_NAMES[2],
            idx_bytes(np.zeros((4, 28, 27), dtype=np.uint8)),
            r"t10k-images-idx3-ubyte: images must be 28 x 28",
        ),
        (MNIST_NAMES[3], idx_bytes(np.zeros(5, dtype=np.uint8)), r"4 images but 5 labels"),
        (
            MNIST_NAMES[1],
            idx_bytes(np.full(6, 10, dtype=np.uint8)),
            r"labels must be digits 0\.\.9, found 10",
        ),
    ],
)
def test_load_mnist_bad_files(tmp_path: Path, name: str, payload: bytes, match: str) -> None:
    _corrupt(tmp_path, name, payload)
    with pytest.raises(DataError, match=match):
        load_mnist(tmp_path)


def test_load_mnist_truncated_gzip(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    path = tmp_path / (MNIST_NAMES[0] + ".gz")
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"cannot read .*train-images-idx3-ubyte\.gz"):
        load_mnist(tmp_path)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (pickle batches written into tmp_path)
# ---------------------------------------------------------------------------------------------

CIFAR_NAMES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def cifar_blob(data: Any, labels: Any, *, protocol: int = 4, legacy: bool = False) -> bytes:
    blob = pickle.dumps(
        {b"batch_label": b"x", b"data": data, b"labels": labels, b"filenames": [b"a.png"]}, protocol
    )
    if legacy:
        # The original batches were written by numpy 1.x, whose reconstructor lives in numpy.core.
        blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert b"numpy.core.multiarray\n_reconstruct" in blob
    return blob


def write_cifar(
    directory: Path, *, rows: int = 3, protocol: int = 4, legacy: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    g = rng(11)
    xs, ys = [], []
    for name in CIFAR_NAMES:
        data = g.integers(0, 256, size=(rows, 3072), dtype=np.uint8)
        labels = [int(v) for v in g.integers(0, 10, size=rows)]
        (directory / name).write_bytes(cifar_blob(data, labels, protocol=protocol, legacy=legacy))
        xs.append(data)
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize(
    ("sub", "protocol", "legacy"),
    [("cifar-10-batches-py", 4, False), ("", 5, False), ("cifar-10-batches-py", 2, True)],
)
def test_load_cifar10(tmp_path: Path, sub: str, protocol: int, legacy: bool) -> None:
    data, labels = write_cifar(tmp_path / sub, protocol=protocol, legacy=legacy)
    ds = load_cifar10(tmp_path)
    assert ds.x.shape == (18, 3, 32, 32) and ds.x.dtype == np.float32 and ds.feature_shape == (3, 32, 32)
    np.testing.assert_allclose(ds.x.reshape(18, -1), data / 255.0, rtol=1e-6)
    # Row layout is channel-major: the first 1024 values are the red plane.
    np.testing.assert_allclose(ds.x[0, 0].ravel(), data[0, :1024] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y, labels)
    assert ds.y.dtype == np.int64 and ds.num_classes == 10
    assert load_dataset("cifar10", root=tmp_path).num_examples == 18


def test_load_cifar10_missing(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataNotFoundError, match=r"data_batch_1, .*data_batch_5, test_batch.*torchvision"):
        load_cifar10(tmp_path)


def test_cifar_rejects_forbidden_globals(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    # Hand-written protocol-0 pickles: os.system("true") and builtins.open(marker, "w").
    (tmp_path / "data_batch_2").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(
        DataError, match=r"data_batch_2 refers to the global os\.system, which is not allowed"
    ):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(b"cbuiltins\nopen\n(S'" + str(marker).encode() + b"'\nS'w'\ntR.")
    with pytest.raises(DataError, match=r"global builtins\.open, which is not allowed"):
        load_cifar10(tmp_path)
    assert not marker.exists()


def test_cifar_rejects_pickled_object_of_other_class(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Path("x"), b"labels": []}))
    with pytest.raises(DataError, match=r"global pathlib\.PosixPath|global pathlib\.\w*Path"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"not a pickle", r"cannot unpickle .*test_batch"),
        (pickle.dumps([1, 2]), r"test_batch: expected a dict, got list"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), r"missing key 'labels'"),
        (
            cifar_blob(np.zeros((2, 3071), np.uint8), [0, 1]),
            r"'data' must be a uint8 array of shape \(m, 3072\)",
        ),
        (cifar_blob(np.zeros((2, 3072), np.float32), [0, 1]), r"got float32 with shape \(2, 3072\)"),
        (cifar_blob([[0] * 3072] * 2, [0, 1]), r"'data' must be a uint8 array"),
        (cifar_blob(np.zeros((2, 3072), np.uint8), [0]), r"2 images but labels of shape \(1,\)"),
        (cifar_blob(np.zeros((2, 3072), np.uint8), [0, 10]), r"labels must be in 0\.\.9, got \[0, 10\]"),
        (
            cifar_blob(np.zeros((2, 3072), np.uint8), [b"cat", b"dog"]),
            r"'labels' is not a sequence of integers",
        ),
    ],
)
def test_cifar_bad_batches(tmp_path: Path, payload: bytes, match: str) -> None:
    write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(payload)
    with pytest.raises(DataError, match=match):
        load_cifar10(tmp_path)


def test_cifar_accepts_str_keys(tmp_path: Path) -> None:
    write_cifar(tmp_path, rows=1)
    (tmp_path / "test_batch").write_bytes(
        pickle.dumps({"data": np.full((2, 3072), 255, np.uint8), "labels": [3, 4]})
    )
    ds = load_cifar10(tmp_path)
    assert ds.num_examples == 7 and ds.y[-2:].tolist() == [3, 4] and ds.x[-1].min() == 1.0
