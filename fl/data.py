"""Data sets, federated partitions and train-statistics standardisation.

Everything here is reproducible from an explicit seed: randomness is drawn from a
:class:`numpy.random.Generator` passed in (partitioners) or derived from ``seed`` via
:class:`numpy.random.SeedSequence` (:func:`federate`). This randomness decides who holds which
example; it is not a secret, so a non-cryptographic generator is appropriate.

Three small data sets ship with scikit-learn and load offline. MNIST and CIFAR-10 are read from
files the user provides (this module never downloads anything).
"""

from __future__ import annotations

import gzip
import math
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast, get_args

import numpy as np

from fl.errors import DataError, DataNotFoundError

__all__ = [
    "DATASETS",
    "PARTITIONS",
    "ClientData",
    "Dataset",
    "FederatedData",
    "Standardizer",
    "Task",
    "federate",
    "load_breast_cancer",
    "load_cifar10",
    "load_dataset",
    "load_diabetes",
    "load_digits",
    "load_mnist",
    "partition_dirichlet",
    "partition_iid",
    "partition_quantity_skew",
    "partition_shards",
]

Task = Literal["classification", "regression"]
DATASETS: tuple[str, ...] = ("breast_cancer", "digits", "diabetes", "mnist", "cifar10")
PARTITIONS: tuple[str, ...] = ("iid", "dirichlet", "shards", "quantity_skew")

_TASKS: tuple[str, ...] = get_args(Task)
# A standard deviation below this is treated as a constant feature (see Standardizer.fit).
_STD_FLOOR = 1e-8
# Rows per chunk when computing variances, so a float64 temporary never spans a whole image set.
_VAR_CHUNK_ROWS = 2048


# --------------------------------------------------------------------------------------------
# Data set container
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """A whole (centralised) data set before it is split among clients.

    ``x`` is float32 of shape ``(n, *feature_shape)``. ``y`` holds int64 class labels in
    ``[0, num_classes)`` for classification, or float32 targets for regression (``num_classes``
    is then 0). Construction validates these invariants; integer/float inputs of another width
    are converted (labels only from integer dtypes, so float labels are never silently truncated).
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    task: Task
    num_classes: int
    feature_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.task not in _TASKS:
            raise DataError(f"dataset '{self.name}': task must be one of {_TASKS}, got {self.task!r}")
        x = np.asarray(self.x)
        y = np.asarray(self.y)
        if x.dtype.kind not in "biuf":
            raise DataError(f"dataset '{self.name}': x must be numeric, got dtype {x.dtype}")
        if x.ndim < 2 or x.shape[0] == 0:
            raise DataError(f"dataset '{self.name}': x must have shape (n >= 1, *features), got {x.shape}")
        if tuple(x.shape[1:]) != tuple(self.feature_shape):
            raise DataError(
                f"dataset '{self.name}': x has feature shape {x.shape[1:]}, "
                f"but feature_shape is {tuple(self.feature_shape)}"
            )
        if y.shape != (x.shape[0],):
            raise DataError(f"dataset '{self.name}': y must have shape ({x.shape[0]},), got {y.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"dataset '{self.name}': x contains NaN or infinite values")
        y = _checked_targets(self.name, y, self.task, self.num_classes)
        # Frozen dataclass: normalised arrays are stored through object.__setattr__.
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "feature_shape", tuple(int(d) for d in self.feature_shape))

    @property
    def num_examples(self) -> int:
        return int(self.x.shape[0])


def _checked_targets(name: str, y: np.ndarray, task: str, num_classes: int) -> np.ndarray:
    if task == "regression":
        if num_classes != 0:
            raise DataError(f"dataset '{name}': regression data must have num_classes=0, got {num_classes}")
        if y.dtype.kind not in "biuf":
            raise DataError(f"dataset '{name}': regression targets must be numeric, got dtype {y.dtype}")
        y = np.ascontiguousarray(y, dtype=np.float32)
        if not np.isfinite(y).all():
            raise DataError(f"dataset '{name}': regression targets contain NaN or infinite values")
        return y
    if num_classes < 1:
        raise DataError(f"dataset '{name}': classification needs num_classes >= 1, got {num_classes}")
    if y.dtype.kind not in "iu":
        raise DataError(f"dataset '{name}': class labels must have an integer dtype, got {y.dtype}")
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(
            f"dataset '{name}': class labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]"
        )
    return np.ascontiguousarray(y, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Shipped (scikit-learn) data sets
# --------------------------------------------------------------------------------------------


def load_breast_cancer() -> Dataset:
    """Wisconsin breast cancer: 569 x 30 features, labels 0 = malignant (212), 1 = benign (357)."""
    from sklearn.datasets import load_breast_cancer as _sk_load

    x, y = _sk_load(return_X_y=True)
    return Dataset("breast_cancer", x.astype(np.float32), y.astype(np.int64), "classification", 2, (30,))


def load_digits() -> Dataset:
    """UCI handwritten digits: 1797 images of 1 x 8 x 8, pixels rescaled from 0..16 to [0, 1]."""
    from sklearn.datasets import load_digits as _sk_load

    x, y = _sk_load(return_X_y=True)
    images = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return Dataset("digits", images, y.astype(np.int64), "classification", 10, (1, 8, 8))


def load_diabetes() -> Dataset:
    """Diabetes regression: 442 x 10 features, raw disease-progression target (float32).

    Features are loaded unscaled (``scaled=False``): scikit-learn's default pre-scaling uses
    statistics of the whole data set, test rows included, which :func:`federate` avoids.
    """
    from sklearn.datasets import load_diabetes as _sk_load

    x, y = _sk_load(return_X_y=True, scaled=False)
    return Dataset("diabetes", x.astype(np.float32), y.astype(np.float32), "regression", 0, (10,))


def load_dataset(name: str, *, root: str | Path | None = None) -> Dataset:
    """Load a data set by name; ``mnist`` and ``cifar10`` read local files under ``root``."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; allowed names: {', '.join(DATASETS)}")
    shipped: dict[str, Callable[[], Dataset]] = {
        "breast_cancer": load_breast_cancer,
        "digits": load_digits,
        "diabetes": load_diabetes,
    }
    if name in shipped:
        return shipped[name]()
    if root is None:
        raise DataError(f"dataset {name!r} is read from local files: pass root=<directory holding them>")
    return load_mnist(root) if name == "mnist" else load_cifar10(root)


# --------------------------------------------------------------------------------------------
# MNIST (IDX files)
# --------------------------------------------------------------------------------------------

_MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_UBYTE = 0x08


def load_mnist(root: str | Path) -> Dataset:
    """Read MNIST from its original IDX files: 70 000 images (train then t10k) of 1 x 28 x 28.

    Files are looked up in ``root/`` and in ``root/MNIST/raw/`` (torchvision's layout), each
    either plain or gzip-compressed (``.gz``). Pixels are scaled to [0, 1].
    """
    paths = _find_mnist_files(Path(root))
    train_x = _read_idx(paths[0], expected_ndim=3)
    train_y = _read_idx(paths[1], expected_ndim=1)
    test_x = _read_idx(paths[2], expected_ndim=3)
    test_y = _read_idx(paths[3], expected_ndim=1)
    for images, labels, img_path, lbl_path in (
        (train_x, train_y, paths[0], paths[1]),
        (test_x, test_y, paths[2], paths[3]),
    ):
        if images.shape[1:] != (28, 28):
            raise DataError(f"MNIST file {img_path}: images must be 28 x 28, got {images.shape[1:]}")
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"MNIST files {img_path} and {lbl_path}: {images.shape[0]} images but {labels.shape[0]} labels"
            )
        if labels.size and labels.max() > 9:
            raise DataError(f"MNIST file {lbl_path}: labels must be digits 0..9, found {labels.max()}")
    x = (np.concatenate([train_x, test_x]).astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    y = np.concatenate([train_y, test_y]).astype(np.int64)
    return Dataset("mnist", x, y, "classification", 10, (1, 28, 28))


def _find_mnist_files(root: Path) -> list[Path]:
    candidates = [root, root / "MNIST" / "raw"]
    for directory in candidates:
        found = [_plain_or_gz(directory / name) for name in _MNIST_FILES]
        if all(p is not None for p in found):
            return [p for p in found if p is not None]
    raise DataNotFoundError(
        f"MNIST files not found in {root} (also looked in {candidates[1]}): expected "
        f"{', '.join(_MNIST_FILES)} (each optionally with a .gz suffix). To get them, run "
        f"torchvision.datasets.MNIST('<dir>', download=True) on a machine with internet access "
        f"and copy <dir>/MNIST/raw here, or download them from http://yann.lecun.com/exdb/mnist/"
    )


def _plain_or_gz(path: Path) -> Path | None:
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, *, expected_ndim: int) -> np.ndarray:
    """Parse one IDX file of unsigned bytes (big-endian header: 0, 0, dtype code, ndim, dims)."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"IDX file {path}: truncated, only {len(raw)} bytes (header needs at least 4)")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(
            f"IDX file {path}: bad magic number 0x{raw[:4].hex()} (must start with two zero bytes)"
        )
    if raw[2] != _IDX_UBYTE:
        raise DataError(f"IDX file {path}: dtype code 0x{raw[2]:02x}, expected 0x08 (unsigned byte)")
    if raw[3] != expected_ndim:
        raise DataError(f"IDX file {path}: {raw[3]} dimensions in the magic number, expected {expected_ndim}")
    header_len = 4 + 4 * expected_ndim
    if len(raw) < header_len:
        raise DataError(f"IDX file {path}: truncated header ({len(raw)} bytes, need {header_len})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=expected_ndim, offset=4))
    expected_len = math.prod(dims)
    body_len = len(raw) - header_len
    if body_len != expected_len:
        what = "truncated" if body_len < expected_len else "has trailing data"
        raise DataError(
            f"IDX file {path}: {what}: dimensions {dims} need {expected_len} data bytes, found {body_len}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# CIFAR-10 (python pickle batches)
# --------------------------------------------------------------------------------------------

_CIFAR_FILES: tuple[str, ...] = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
_CIFAR_ROW = 3 * 32 * 32


def _allowed_pickle_globals() -> dict[tuple[str, str], Any]:
    # numpy's array reconstructor lives in numpy.core (numpy 1.x, and the original CIFAR files)
    # or numpy._core (numpy 2.x); take the object from an actual array so both names resolve
    # without importing a private or deprecated module.
    reconstruct = cast(tuple[Any, ...], np.empty(0).__reduce__())[0]
    frombuffer = cast(tuple[Any, ...], np.empty(0, dtype=np.uint8).__reduce_ex__(5))[0]
    import _codecs

    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Protocol <= 2 pickles written by Python 3 encode ``bytes`` objects through this call.
        ("_codecs", "encode"): _codecs.encode,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only resolves the globals needed to rebuild dicts of numpy arrays."""

    def __init__(self, file: BinaryIO, *, source: Path) -> None:
        # encoding="bytes" reads the original Python 2 CIFAR pickles (keys become bytes).
        super().__init__(file, encoding="bytes")
        self._source = source
        self._allowed = _allowed_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"pickle {self._source} refers to the global {module}.{name}, which is not allowed "
                f"(only numpy array reconstruction is); refusing to load it"
            ) from None


def _load_trusted_pickle(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            return _RestrictedUnpickler(fh, source=path).load()
    except DataError:
        raise
    except Exception as exc:  # any unpickling failure means a corrupt or foreign file
        raise DataError(f"cannot unpickle {path}: {type(exc).__name__}: {exc}") from exc


def load_cifar10(root: str | Path) -> Dataset:
    """Read CIFAR-10 from the "python version" batches: 60 000 images (train then test) of 3 x 32 x 32.

    Files ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` are looked up in
    ``root/cifar-10-batches-py/`` and in ``root/``. Pixels are scaled to [0, 1].

    Security: these files are pickles, and unpickling can execute code. ``root`` must be a
    trusted directory. As a second line of defence the files are read with a restricted
    unpickler that only resolves numpy's array-reconstruction globals and rejects any other
    global with :class:`DataError`.
    """
    root = Path(root)
    paths = _find_cifar_files(root)
    images, labels = zip(*(_read_cifar_batch(p) for p in paths), strict=True)
    x = (np.concatenate(images).astype(np.float32) / np.float32(255.0)).reshape(-1, 3, 32, 32)
    y = np.concatenate(labels)
    return Dataset("cifar10", x, y, "classification", 10, (3, 32, 32))


def _find_cifar_files(root: Path) -> list[Path]:
    candidates = [root / "cifar-10-batches-py", root]
    for directory in candidates:
        paths = [directory / name for name in _CIFAR_FILES]
        if all(p.is_file() for p in paths):
            return paths
    raise DataNotFoundError(
        f"CIFAR-10 files not found in {candidates[0]} or {root}: expected {', '.join(_CIFAR_FILES)}. "
        f"To get them, run torchvision.datasets.CIFAR10('<dir>', download=True) on a machine with "
        f"internet access and copy <dir>/cifar-10-batches-py here, or download and extract "
        f"cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"
    )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_trusted_pickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR-10 batch {path}: expected a dict, got {type(batch).__name__}")
    data = _dict_get(batch, "data", path)
    labels_raw = _dict_get(batch, "labels", path)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != _CIFAR_ROW
    ):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(
            f"CIFAR-10 batch {path}: 'data' must be a uint8 array of shape (m, {_CIFAR_ROW}), "
            f"got {dtype} with shape {shape}"
        )
    try:
        labels = np.asarray(labels_raw, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"CIFAR-10 batch {path}: 'labels' is not a sequence of integers") from exc
    if labels.shape != (data.shape[0],):
        raise DataError(f"CIFAR-10 batch {path}: {data.shape[0]} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(
            f"CIFAR-10 batch {path}: labels must be in 0..9, got [{labels.min()}, {labels.max()}]"
        )
    return data, labels


def _dict_get(batch: dict[Any, Any], key: str, path: Path) -> Any:
    # Original (Python 2) batches have bytes keys; accept str keys from re-pickled copies too.
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataError(f"CIFAR-10 batch {path}: missing key {key!r} (found {sorted(map(repr, batch))})")


# --------------------------------------------------------------------------------------------
# Partitioners
# --------------------------------------------------------------------------------------------


def _check_int(value: int, what: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise DataError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise DataError(f"{what} must be >= {minimum}, got {value}")


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.floating | np.integer):
        raise DataError(f"alpha must be a positive number, got {alpha!r}")
    if not math.isfinite(alpha) or alpha <= 0:
        raise DataError(f"alpha must be a finite number > 0, got {alpha}")


def _check_enough(n: int, num_clients: int, min_size: int) -> None:
    if n < num_clients * min_size:
        raise DataError(
            f"too few examples: {n} cannot give each of {num_clients} clients at least "
            f"{min_size} example(s) (need {num_clients * min_size}); use fewer clients"
        )


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be a 1-D array, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise DataError(
            f"labels must be integer class labels, got dtype {labels.dtype}; "
            f"for regression targets use the 'iid' or 'quantity_skew' partition"
        )
    return labels


def _groups(owner: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Turn a per-example owner array into one sorted int64 index array per client."""
    # A stable sort by owner keeps indices ascending inside each client's block.
    order = np.argsort(owner, kind="stable").astype(np.int64)
    sizes = np.bincount(owner, minlength=num_clients)
    return list(np.split(order, np.cumsum(sizes)[:-1]))


def _owner_from_sizes(perm: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    owner = np.empty(perm.size, dtype=np.int64)
    owner[perm] = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    return owner


def partition_iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``n`` indices and deal them into ``num_clients`` near-equal parts (sizes differ by <= 1)."""
    _check_int(num_clients, "num_clients", minimum=1)
    _check_int(n, "n", minimum=0)
    _check_enough(n, num_clients, 1)
    sizes = np.full(num_clients, n // num_clients, dtype=np.int64)
    sizes[: n % num_clients] += 1
    return _groups(_owner_from_sizes(rng.permutation(n), sizes), num_clients)


def partition_dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    min_size: int = 2,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label-skewed partition (Hsu et al., 2019): per class, client shares ~ Dir(alpha).

    Each class's examples are shuffled and cut among clients in proportions drawn from a
    symmetric Dirichlet; small ``alpha`` concentrates each class on few clients. The whole draw
    is repeated until every client holds at least ``min_size`` examples; after ``max_tries``
    failed draws a :class:`DataError` is raised.
    """
    labels = _check_labels(labels)
    _check_int(num_clients, "num_clients", minimum=1)
    _check_alpha(alpha)
    _check_int(min_size, "min_size", minimum=1)
    _check_int(max_tries, "max_tries", minimum=1)
    _check_enough(labels.size, num_clients, min_size)
    class_members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(max_tries):
        owner = _dirichlet_owner(class_members, labels.size, num_clients, alpha, rng)
        if owner is not None and np.bincount(owner, minlength=num_clients).min() >= min_size:
            return _groups(owner, num_clients)
    raise DataError(
        f"Dirichlet partition failed: no draw in {max_tries} tries gave each of {num_clients} clients "
        f">= {min_size} examples (alpha={alpha}); raise alpha or max_tries, or lower num_clients or min_size"
    )


def _dirichlet_owner(
    class_members: Sequence[np.ndarray], n: int, num_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray | None:
    owner = np.empty(n, dtype=np.int64)
    for members in class_members:
        shares = rng.dirichlet(np.full(num_clients, alpha))
        if not np.isfinite(shares).all():
            return None  # numerical underflow at tiny alpha: count it as a failed draw
        # Cut the shuffled class at the cumulative shares; the last cut is pinned to the class
        # size so float rounding can never drop or duplicate an example.
        cuts = np.floor(np.cumsum(shares)[:-1] * members.size).astype(np.int64)
        bounds = np.concatenate(([0], np.minimum(cuts, members.size), [members.size]))
        counts = np.diff(np.maximum.accumulate(bounds))
        owner[rng.permutation(members)] = np.repeat(np.arange(num_clients, dtype=np.int64), counts)
    return owner


def partition_shards(
    labels: np.ndarray, num_clients: int, labels_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Pathological non-IID partition (McMahan et al., 2017): each client gets a few label shards.

    The data are sorted by label and cut into ``num_clients * labels_per_client`` shards, and
    each client receives ``labels_per_client`` random shards. Unlike cutting the sorted array
    into equal slices, shards are cut *within* classes (each class gets a number of shards
    proportional to its size), so every shard holds a single label and every client sees at
    most ``labels_per_client`` distinct labels. This needs at least as many shards as classes.
    """
    labels = _check_labels(labels)
    _check_int(num_clients, "num_clients", minimum=1)
    _check_int(labels_per_client, "labels_per_client", minimum=1)
    num_shards = num_clients * labels_per_client
    classes, class_sizes = np.unique(labels, return_counts=True)
    if labels.size < num_shards:
        raise DataError(
            f"too few examples: {labels.size} cannot fill {num_shards} shards "
            f"({num_clients} clients x {labels_per_client} labels per client)"
        )
    if num_shards < classes.size:
        raise DataError(
            f"{num_shards} shards ({num_clients} clients x {labels_per_client} labels per client) "
            f"cannot cover {classes.size} classes without mixing labels; raise labels_per_client or num_clients"
        )
    shards_per_class = _allocate_shards(class_sizes, num_shards)
    # Shuffle first, then stable-sort by label: each class is a contiguous block in random order.
    perm = rng.permutation(labels.size)
    order = perm[np.argsort(labels[perm], kind="stable")]
    shard_sizes = np.concatenate(
        [_split_sizes(int(m), int(s)) for m, s in zip(class_sizes, shards_per_class, strict=True)]
    )
    shard_owner = np.empty(num_shards, dtype=np.int64)
    shard_owner[rng.permutation(num_shards)] = np.repeat(
        np.arange(num_clients, dtype=np.int64), labels_per_client
    )
    owner = np.empty(labels.size, dtype=np.int64)
    owner[order] = np.repeat(shard_owner, shard_sizes)
    return _groups(owner, num_clients)


def _allocate_shards(class_sizes: np.ndarray, num_shards: int) -> np.ndarray:
    """Shards per class: at least one each, the rest proportional to size (largest remainder).

    The extra shards are shared in proportion to ``size - 1`` so that no class gets more
    shards than examples (every shard must be non-empty).
    """
    extra = num_shards - class_sizes.size
    capacity = class_sizes - 1
    ideal = extra * capacity / max(int(capacity.sum()), 1)
    base = np.floor(ideal).astype(np.int64)
    leftover = extra - int(base.sum())
    # Classes with the largest fractional parts take the leftover; these all have a positive
    # remainder, so base + 1 <= ceil(ideal) <= capacity.
    base[np.argsort(-(ideal - base), kind="stable")[:leftover]] += 1
    return 1 + base


def _split_sizes(m: int, parts: int) -> np.ndarray:
    sizes = np.full(parts, m // parts, dtype=np.int64)
    sizes[: m % parts] += 1
    return sizes


def partition_quantity_skew(
    n: int, num_clients: int, alpha: float, rng: np.random.Generator, *, min_size: int = 2
) -> list[np.ndarray]:
    """Quantity-skewed partition: IID labels, client sizes ~ Dirichlet(alpha).

    Every client first gets ``min_size`` examples; the remaining ``n - num_clients * min_size``
    are shared out by a multinomial draw with Dirichlet(alpha) proportions. Examples are
    dealt from a random permutation, so each client's labels follow the global distribution.
    """
    _check_int(n, "n", minimum=0)
    _check_int(num_clients, "num_clients", minimum=1)
    _check_alpha(alpha)
    _check_int(min_size, "min_size", minimum=1)
    _check_enough(n, num_clients, min_size)
    shares = rng.dirichlet(np.full(num_clients, alpha))
    if not np.isfinite(shares).all() or shares.sum() <= 0:
        raise DataError(f"Dirichlet draw underflowed for alpha={alpha}; use a larger alpha")
    extra = rng.multinomial(n - num_clients * min_size, shares / shares.sum())
    sizes = min_size + extra.astype(np.int64)
    return _groups(_owner_from_sizes(rng.permutation(n), sizes), num_clients)


# --------------------------------------------------------------------------------------------
# Standardisation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Standardizer:
    """Fitted statistics applied as ``(x - mean) / std``.

    ``mean`` and ``std`` are float32 and broadcast against one example: shape
    ``feature_shape`` when fitted per feature, ``(C, 1, ..., 1)`` when fitted per channel.
    Standard deviations are population ones (ddof=0); a std below 1e-8 (a constant feature)
    is replaced by 1 so it neither divides by zero nor blows up unseen values.
    ``target_mean``/``target_std`` standardise regression targets and are ``None`` otherwise.
    """

    mean: np.ndarray
    std: np.ndarray
    target_mean: float | None = None
    target_std: float | None = None

    @classmethod
    def fit(
        cls, x_train: np.ndarray, y_train: np.ndarray | None, *, per_channel: bool, regression: bool
    ) -> Standardizer:
        x_train = np.asarray(x_train)
        if x_train.ndim < 2 or x_train.shape[0] == 0:
            raise DataError(
                f"Standardizer.fit needs x_train of shape (n >= 1, *features), got {x_train.shape}"
            )
        if per_channel and x_train.ndim < 3:
            raise DataError(
                f"per-channel standardisation needs x_train of shape (n, C, ...), got {x_train.shape}"
            )
        # Reduce over examples, and for images also over every spatial axis after the channel.
        axes = (0, *range(2, x_train.ndim)) if per_channel else (0,)
        mean, std = _moments(x_train, axes)
        target_mean: float | None = None
        target_std: float | None = None
        if regression:
            if y_train is None or np.shape(y_train) != (x_train.shape[0],):
                raise DataError(
                    f"regression standardisation needs y_train of shape ({x_train.shape[0]},), "
                    f"got {None if y_train is None else np.shape(y_train)}"
                )
            y64 = np.asarray(y_train, dtype=np.float64)
            target_mean = float(y64.mean())
            target_std = _floor_std(np.asarray(y64.std())).item()
        return cls(mean[0], std[0], target_mean, target_std)

    def transform_x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if not _broadcasts_to(self.mean.shape, x.shape[1:]):
            raise DataError(
                f"Standardizer fitted for examples of shape {self.mean.shape} cannot transform x of shape {x.shape}"
            )
        return np.asarray((x - self.mean) / self.std, dtype=np.float32)

    def transform_y(self, y: np.ndarray) -> np.ndarray:
        """Standardise regression targets; labels pass through unchanged when no target stats exist."""
        if self.target_mean is None or self.target_std is None:
            return np.asarray(y)
        return ((np.asarray(y, dtype=np.float64) - self.target_mean) / self.target_std).astype(np.float32)

    def inverse_transform_y(self, y: np.ndarray) -> np.ndarray:
        """Map standardised regression predictions back to original target units."""
        if self.target_mean is None or self.target_std is None:
            return np.asarray(y)
        return (np.asarray(y, dtype=np.float64) * self.target_std + self.target_mean).astype(np.float32)


def _broadcasts_to(stat_shape: tuple[int, ...], example_shape: tuple[int, ...]) -> bool:
    if len(stat_shape) != len(example_shape):
        return False
    return all(s in (1, e) for s, e in zip(stat_shape, example_shape, strict=True))


def _moments(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and floored std over ``axes`` in float64, keeping dims (float32 results)."""
    mean = np.asarray(np.mean(x, axis=axes, dtype=np.float64, keepdims=True))
    # Two-pass variance in row chunks: stable, and the float64 temporary stays small.
    sq_sum = np.zeros_like(mean)
    for start in range(0, x.shape[0], _VAR_CHUNK_ROWS):
        diff = x[start : start + _VAR_CHUNK_ROWS].astype(np.float64) - mean
        sq_sum += np.sum(diff * diff, axis=axes, keepdims=True)
    count = x.size // mean.size
    std = _floor_std(np.sqrt(sq_sum / count))
    return mean.astype(np.float32), std.astype(np.float32)


def _floor_std(std: np.ndarray) -> np.ndarray:
    return np.where(std < _STD_FLOOR, 1.0, std)


# --------------------------------------------------------------------------------------------
# Federated view
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientData:
    """One client's local train and test split (already standardised when the federation is)."""

    client_id: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.y_test.shape[0])


@dataclass(frozen=True)
class FederatedData:
    """A data set split among clients, each with its own train/test split."""

    name: str
    task: Task
    num_classes: int
    feature_shape: tuple[int, ...]
    clients: tuple[ClientData, ...]
    scaler: Standardizer | None = field(default=None)

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def pooled_train(self) -> tuple[np.ndarray, np.ndarray]:
        """All client train sets concatenated (the centralised baseline's training data)."""
        return (
            np.concatenate([c.x_train for c in self.clients]),
            np.concatenate([c.y_train for c in self.clients]),
        )

    def pooled_test(self) -> tuple[np.ndarray, np.ndarray]:
        """All client test sets concatenated (global evaluation data)."""
        return (
            np.concatenate([c.x_test for c in self.clients]),
            np.concatenate([c.y_test for c in self.clients]),
        )


def federate(
    dataset: Dataset,
    num_clients: int,
    *,
    partition: str = "dirichlet",
    alpha: float = 0.5,
    labels_per_client: int = 2,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool = True,
) -> FederatedData:
    """Split ``dataset`` among ``num_clients`` clients, each with a local train/test split.

    1. Partition with ``partition`` (one of :data:`PARTITIONS`); ``alpha`` drives
       ``dirichlet`` and ``quantity_skew``, ``labels_per_client`` drives ``shards``. The
       label-based ones (``dirichlet``, ``shards``) are unavailable for regression.
    2. Split each client's examples at random into train and test, ``test_fraction`` of them
       (rounded) going to test; a client with >= 2 examples keeps >= 1 of each, a client with
       a single example keeps it for training.
    3. If ``standardize``, fit a :class:`Standardizer` on the union of the client *train* sets
       only (per feature for tabular data, per channel for images, plus the target for
       regression) and apply it to every client's train and test data.

    The pooled-train statistics stand in for a federated mean/variance computation: each
    client's sums and sums of squares could be combined by secure aggregation (as fedshield
    can do), giving the same statistics without any client revealing its data.

    Seeds: the partition and the splits draw from separate children of
    ``np.random.SeedSequence(seed)``, and each client splits with its own generator, so
    changing ``test_fraction`` moves only train/test boundaries, never the partition.
    """
    _check_federate_args(dataset, partition, test_fraction, seed)
    partition_seq, split_seq = np.random.SeedSequence(seed).spawn(2)
    parts = _partition(
        dataset, num_clients, partition, alpha, labels_per_client, np.random.default_rng(partition_seq)
    )
    splits = [
        _train_test_split(idx, test_fraction, np.random.default_rng(s))
        for idx, s in zip(parts, split_seq.spawn(len(parts)), strict=True)
    ]
    x, y, scaler = dataset.x, dataset.y, None
    if standardize:
        train_idx = np.concatenate([train for train, _ in splits])
        scaler = Standardizer.fit(
            x[train_idx],
            y[train_idx],
            per_channel=len(dataset.feature_shape) >= 2,
            regression=dataset.task == "regression",
        )
        x, y = scaler.transform_x(x), scaler.transform_y(y)
    clients = tuple(
        ClientData(k, x[train], y[train], x[test], y[test]) for k, (train, test) in enumerate(splits)
    )
    return FederatedData(
        dataset.name, dataset.task, dataset.num_classes, dataset.feature_shape, clients, scaler
    )


def _check_federate_args(dataset: Dataset, partition: str, test_fraction: float, seed: int) -> None:
    if partition not in PARTITIONS:
        raise DataError(f"unknown partition {partition!r}; allowed: {', '.join(PARTITIONS)}")
    if dataset.task == "regression" and partition in ("dirichlet", "shards"):
        raise DataError(
            f"partition {partition!r} needs class labels, but dataset '{dataset.name}' is a regression "
            f"task; use 'iid' or 'quantity_skew'"
        )
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float | np.floating):
        raise DataError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    _check_int(seed, "seed", minimum=0)


def _partition(
    dataset: Dataset,
    num_clients: int,
    partition: str,
    alpha: float,
    labels_per_client: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    n = dataset.num_examples
    if partition == "iid":
        return partition_iid(n, num_clients, rng)
    if partition == "dirichlet":
        return partition_dirichlet(dataset.y, num_clients, alpha, rng)
    if partition == "shards":
        return partition_shards(dataset.y, num_clients, labels_per_client, rng)
    return partition_quantity_skew(n, num_clients, alpha, rng)


def _train_test_split(
    idx: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    m = idx.size
    n_test = min(max(math.floor(test_fraction * m + 0.5), 1), m - 1) if m >= 2 else 0
    # The permutation does not depend on test_fraction, so test sets for different fractions nest.
    shuffled = rng.permutation(idx)
    return np.sort(shuffled[n_test:]), np.sort(shuffled[:n_test])
