"""What the attack literature reports: reconstruction quality and membership-inference ROC.

Reconstruction (gradient inversion) — every function takes *batches*: a leading batch axis ``N``,
images channel-first (``(N, H, W)`` grey or ``(N, C, H, W)``).  For one image pass ``x[None]``.

* :func:`mse`, :func:`psnr` — per item; ``psnr = 10·log10(data_range² / mse)`` (``inf`` when equal).
* :func:`ssim` — the Gaussian-window SSIM of Wang, Bovik, Sheikh & Simoncelli (2004): window σ = 1.5,
  K1 = 0.01, K2 = 0.03, weighted (population) moments, the SSIM map averaged over the positions where
  the window fits inside the image ("valid") and, for colour, over channels.  That is what
  ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=L)`` computes.  The window is 11×11 by default and shrinks to
  the largest odd size that fits (7×7 for the 8×8 digits); Wang et al.'s automatic downsampling of
  large images is not applied.
* :func:`match_reconstructions` — attacks return a batch in arbitrary order; pair reconstructions
  with ground truth by the optimal one-to-one assignment (Hungarian, :func:`scipy.optimize.
  linear_sum_assignment`) before reporting per-image scores.
* :func:`label_accuracy` — recovered labels as a multiset (iDLG / batch label recovery).

Membership inference — higher score means "member"; a threshold ``t`` predicts member iff
``score >= t``.  Ties are never split: the ROC has one point per distinct score, so all-equal
scores give the diagonal and AUC 0.5.  :func:`tpr_at_fpr` reads the empirical ROC without
interpolation (the largest TPR among thresholds whose FPR is at most the target), as Carlini et al.
(2022, "Membership Inference Attacks From First Principles") report it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage, optimize, spatial

__all__ = [
    "AttackError",
    "AttackParameterError",
    "MembershipReport",
    "ReconstructionMatch",
    "RocCurve",
    "auc",
    "balanced_accuracy",
    "label_accuracy",
    "match_reconstructions",
    "mse",
    "psnr",
    "roc_curve",
    "ssim",
    "tpr_at_fpr",
]


class AttackError(Exception):
    """Base of every error raised by :mod:`attacks`."""


class AttackParameterError(AttackError, ValueError):
    """An argument passed to an attack, metric or audit is invalid."""


FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
ArrayInput = npt.ArrayLike | torch.Tensor
ReconstructionMetric = Literal["mse", "psnr", "ssim"]

# SSIM constants of Wang et al. (2004).
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
_SSIM_SIGMA = 1.5
_SSIM_MAX_WINDOW = 11
# Bound on the floats held at once when scoring every (reconstruction, truth) pair with SSIM.
_PAIRWISE_CHUNK_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------- #
# input validation
# --------------------------------------------------------------------------- #


def _numeric_array(value: object, name: str) -> npt.NDArray[np.generic]:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nested sequences
        raise AttackParameterError(f"{name} must be a numeric array, got {type(value).__name__}") from exc
    if array.dtype.kind not in "biuf":
        raise AttackParameterError(f"{name} must be a numeric array, got dtype {array.dtype}")
    return array


def _float_array(value: object, name: str) -> FloatArray:
    array = _numeric_array(value, name).astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        raise AttackParameterError(f"{name} must contain only finite values")
    return array


def _data_range(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise AttackParameterError(f"data_range must be a real number, got {type(value).__name__}")
    result = float(value)
    if not (math.isfinite(result) and result > 0):
        raise AttackParameterError(f"data_range must be finite and > 0, got {result}")
    return result


def _batch_pair(a: object, b: object) -> tuple[FloatArray, FloatArray]:
    first = _float_array(a, "a")
    second = _float_array(b, "b")
    if first.shape != second.shape:
        raise AttackParameterError(f"a and b must have the same shape, got {first.shape} and {second.shape}")
    _check_batch(first, "a")
    return first, second


def _check_batch(array: FloatArray, name: str) -> None:
    if array.ndim < 2:
        raise AttackParameterError(
            f"{name} must be a batch of shape (N, ...) with at least 2 dims, got shape {array.shape}"
            " (pass x[None] for a single item)"
        )
    if array.size == 0:
        raise AttackParameterError(f"{name} must not be empty, got shape {array.shape}")


def _image_batch(array: FloatArray, name: str) -> FloatArray:
    """Return ``array`` as ``(N, C, H, W)``; accepts ``(N, H, W)`` and ``(N, C, H, W)``."""
    if array.ndim == 3:
        return array[:, None]
    if array.ndim == 4:
        return array
    raise AttackParameterError(
        f"{name} must be an image batch of shape (N, H, W) or (N, C, H, W), got shape {array.shape}"
    )


# --------------------------------------------------------------------------- #
# reconstruction quality
# --------------------------------------------------------------------------- #


def mse(a: ArrayInput, b: ArrayInput) -> FloatArray:
    """Mean squared error of each item of two batches of shape ``(N, ...)``; returns shape ``(N,)``."""
    first, second = _batch_pair(a, b)
    squared = np.square(first - second)
    return np.asarray(squared.reshape(first.shape[0], -1).mean(axis=1), dtype=np.float64)


def _psnr_from_mse(errors: FloatArray, data_range: float) -> FloatArray:
    with np.errstate(divide="ignore"):
        return np.asarray(10.0 * np.log10(data_range**2 / errors), dtype=np.float64)


def psnr(a: ArrayInput, b: ArrayInput, data_range: float) -> FloatArray:
    """Peak signal-to-noise ratio in dB of each item: ``10·log10(data_range² / mse)``.

    ``data_range`` is the span of the pixel scale (1.0 for images in [0, 1], 255 for bytes, 16 for the
    raw sklearn digits).  Identical items give ``inf``.
    """
    peak = _data_range(data_range)
    return _psnr_from_mse(mse(a, b), peak)


def _gaussian_window(size: int, sigma: float) -> FloatArray:
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    weights = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def _resolve_window(win_size: int | None, height: int, width: int) -> int:
    if win_size is None:
        size = min(_SSIM_MAX_WINDOW, height, width)
        return size if size % 2 == 1 else size - 1
    if isinstance(win_size, bool) or not isinstance(win_size, int | np.integer):
        raise AttackParameterError(f"win_size must be an odd integer, got {type(win_size).__name__}")
    size = int(win_size)
    if size < 1 or size % 2 == 0:
        raise AttackParameterError(f"win_size must be an odd integer >= 1, got {size}")
    if size > min(height, width):
        raise AttackParameterError(
            f"win_size must not exceed the image height and width ({height}x{width}), got {size}"
        )
    return size


def _valid_filter(images: FloatArray, window: FloatArray) -> FloatArray:
    """Weighted local means over the last two axes, only where the window fits ("valid")."""
    pad = (window.size - 1) // 2
    height, width = images.shape[-2:]
    rows = ndimage.correlate1d(images, window, axis=-2, mode="constant")[..., pad : height - pad, :]
    return np.asarray(
        ndimage.correlate1d(rows, window, axis=-1, mode="constant")[..., pad : width - pad],
        dtype=np.float64,
    )


def _ssim_index(
    mean_a: FloatArray,
    mean_b: FloatArray,
    square_a: FloatArray,
    square_b: FloatArray,
    product: FloatArray,
    data_range: float,
) -> FloatArray:
    """Average of the SSIM map over its last three axes (channel, row, column)."""
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    var_a = square_a - mean_a**2
    var_b = square_b - mean_b**2
    covariance = product - mean_a * mean_b
    numerator = (2.0 * mean_a * mean_b + c1) * (2.0 * covariance + c2)
    denominator = (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    return np.asarray((numerator / denominator).mean(axis=(-3, -2, -1)), dtype=np.float64)


def _ssim_setup(
    first: FloatArray,
    second: FloatArray,
    data_range: float,
    win_size: int | None,
    names: tuple[str, str] = ("a", "b"),
) -> tuple[FloatArray, FloatArray, float, FloatArray]:
    peak = _data_range(data_range)
    images_a = _image_batch(first, names[0])
    images_b = _image_batch(second, names[1])
    height, width = images_a.shape[-2:]
    window = _gaussian_window(_resolve_window(win_size, height, width), _SSIM_SIGMA)
    return images_a, images_b, peak, window


def ssim(a: ArrayInput, b: ArrayInput, data_range: float, *, win_size: int | None = None) -> FloatArray:
    """Structural similarity (Wang et al. 2004) of each image pair; returns shape ``(N,)``.

    ``a`` and ``b`` are batches ``(N, H, W)`` or ``(N, C, H, W)`` (channel-first); colour SSIM is the
    mean of the per-channel SSIMs.  The window is Gaussian with σ = 1.5, sampled at integer offsets
    and normalised to sum 1, of odd size ``win_size`` (default: 11, or the largest odd size that fits
    the image — 7 for 8×8 digits).  C1 = (0.01·L)², C2 = (0.03·L)² with L = ``data_range``.
    """
    first, second = _batch_pair(a, b)
    images_a, images_b, peak, window = _ssim_setup(first, second, data_range, win_size)
    return _ssim_index(
        _valid_filter(images_a, window),
        _valid_filter(images_b, window),
        _valid_filter(images_a**2, window),
        _valid_filter(images_b**2, window),
        _valid_filter(images_a * images_b, window),
        peak,
    )


def _pairwise_ssim(first: FloatArray, second: FloatArray, data_range: float) -> FloatArray:
    images_a, images_b, peak, window = _ssim_setup(first, second, data_range, None, ("recon", "truth"))
    mean_a, mean_b = _valid_filter(images_a, window), _valid_filter(images_b, window)
    square_a, square_b = _valid_filter(images_a**2, window), _valid_filter(images_b**2, window)
    rows = max(1, _PAIRWISE_CHUNK_ELEMENTS // max(1, images_b.size))
    scores = np.empty((images_a.shape[0], images_b.shape[0]), dtype=np.float64)
    for start in range(0, images_a.shape[0], rows):
        block = slice(start, start + rows)
        product = _valid_filter(images_a[block, None] * images_b[None], window)
        scores[block] = _ssim_index(
            mean_a[block, None], mean_b[None], square_a[block, None], square_b[None], product, peak
        )
    return scores


@dataclass(frozen=True, slots=True)
class ReconstructionMatch:
    """The optimal one-to-one pairing of reconstructions with ground-truth items.

    Pair ``j`` matches ``recon[recon_index[j]]`` with ``truth[truth_index[j]]`` and scores ``values[j]``
    under ``metric``.  With equally sized batches ``recon_index`` is ``0..N-1`` and ``truth_index`` is the
    permutation (``truth[truth_index]`` lines up with ``recon``); otherwise ``min(N, M)`` pairs are made.
    """

    metric: ReconstructionMetric
    recon_index: IntArray
    truth_index: IntArray
    values: FloatArray

    @property
    def mean(self) -> float:
        """Mean of the per-pair metric (``inf`` for PSNR if any pair is exact)."""
        return float(np.mean(self.values))


def match_reconstructions(
    recon: ArrayInput,
    truth: ArrayInput,
    metric: ReconstructionMetric = "mse",
    *,
    data_range: float | None = None,
) -> ReconstructionMatch:
    """Pair reconstructions with ground truth to optimise the summed ``metric`` (Hungarian algorithm).

    ``recon`` ``(N, ...)`` and ``truth`` ``(M, ...)`` must have the same item shape; MSE is minimised,
    PSNR and SSIM maximised (``data_range`` is required for those; SSIM needs image batches).  PSNR
    pairs that are exact (``inf``) are preferred over every finite one.
    """
    if metric not in ("mse", "psnr", "ssim"):
        raise AttackParameterError(f"metric must be one of 'mse', 'psnr', 'ssim', got {metric!r}")
    first = _float_array(recon, "recon")
    second = _float_array(truth, "truth")
    _check_batch(first, "recon")
    _check_batch(second, "truth")
    if first.shape[1:] != second.shape[1:]:
        raise AttackParameterError(
            f"recon and truth items must have the same shape, got {first.shape[1:]} and {second.shape[1:]}"
        )
    if metric != "mse" and data_range is None:
        raise AttackParameterError(f"data_range is required for metric {metric!r}")

    if metric == "ssim":
        assert data_range is not None
        scores = _pairwise_ssim(first, second, data_range)
        cost = -scores
    else:
        flat_a = first.reshape(first.shape[0], -1)
        flat_b = second.reshape(second.shape[0], -1)
        errors = np.asarray(spatial.distance.cdist(flat_a, flat_b, "sqeuclidean"), dtype=np.float64)
        errors /= flat_a.shape[1]
        if metric == "mse":
            scores = errors
            cost = errors
        else:
            assert data_range is not None
            scores = _psnr_from_mse(errors, _data_range(data_range))
            finite = scores[np.isfinite(scores)]
            # An exact pair beats any finite PSNR; linear_sum_assignment cannot take -inf costs.
            ceiling = (float(finite.max()) if finite.size else 0.0) + 1e6
            cost = -np.where(np.isinf(scores), ceiling, scores)
    rows, cols = optimize.linear_sum_assignment(cost)
    return ReconstructionMatch(
        metric=metric,
        recon_index=rows.astype(np.int64),
        truth_index=cols.astype(np.int64),
        values=np.asarray(scores[rows, cols], dtype=np.float64),
    )


def _labels_1d(value: object, name: str) -> IntArray:
    array = _numeric_array(value, name)
    if array.ndim != 1 or array.size == 0:
        raise AttackParameterError(f"{name} must be a non-empty 1-D array of labels, got shape {array.shape}")
    if array.dtype.kind == "f":
        floats = array.astype(np.float64)
        if not (np.all(np.isfinite(floats)) and np.all(floats == np.round(floats))):
            raise AttackParameterError(f"{name} must hold integer class labels")
    elif array.dtype.kind not in "iu":
        raise AttackParameterError(f"{name} must hold integer class labels, got dtype {array.dtype}")
    return array.astype(np.int64)


def label_accuracy(pred_labels: ArrayInput, true_labels: ArrayInput) -> float:
    """Fraction of a batch's labels recovered, matched as multisets (order carries no information).

    ``Σ_c min(#pred = c, #true = c) / N``: predicting ``[1, 1, 2]`` for ``[2, 1, 2]`` scores 2/3.
    """
    pred = _labels_1d(pred_labels, "pred_labels")
    true = _labels_1d(true_labels, "true_labels")
    if pred.size != true.size:
        raise AttackParameterError(
            f"pred_labels and true_labels must have the same length, got {pred.size} and {true.size}"
        )
    _, codes = np.unique(np.concatenate([pred, true]), return_inverse=True)
    classes = int(codes.max()) + 1
    pred_counts = np.bincount(codes[: pred.size], minlength=classes)
    true_counts = np.bincount(codes[pred.size :], minlength=classes)
    return float(np.minimum(pred_counts, true_counts).sum() / true.size)


# --------------------------------------------------------------------------- #
# membership inference
# --------------------------------------------------------------------------- #


def _scores_and_labels(
    scores: object, labels: object, *, require_both: bool = True
) -> tuple[FloatArray, BoolArray]:
    values = _float_array(scores, "scores")
    if values.ndim != 1 or values.size == 0:
        raise AttackParameterError(f"scores must be a non-empty 1-D array, got shape {values.shape}")
    raw = _numeric_array(labels, "labels")
    if raw.ndim != 1:
        raise AttackParameterError(f"labels must be 1-D, got shape {raw.shape}")
    if raw.shape != values.shape:
        raise AttackParameterError(
            f"scores and labels must have the same length, got {values.size} and {raw.size}"
        )
    if raw.dtype.kind != "b" and not np.all((raw == 0) | (raw == 1)):
        raise AttackParameterError("labels must be boolean or 0/1 (1 = member)")
    members = raw.astype(bool)
    n_members = int(members.sum())
    if require_both and (n_members == 0 or n_members == members.size):
        raise AttackParameterError(
            f"labels must contain both members and non-members, got {n_members} members of {members.size}"
        )
    return values, members


def _roc_counts(scores: FloatArray, members: BoolArray) -> tuple[IntArray, IntArray, FloatArray]:
    """Cumulative (false positives, true positives, threshold), one row per distinct score.

    Row 0 is the threshold ``+inf`` (nothing predicted member); the last row predicts everything.
    """
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_pos = np.cumsum(members[order], dtype=np.int64)[last_of_tie]
    false_pos = (last_of_tie + 1).astype(np.int64) - true_pos
    zero = np.zeros(1, dtype=np.int64)
    return (
        np.concatenate([zero, false_pos]),
        np.concatenate([zero, true_pos]),
        np.concatenate([[np.inf], sorted_scores[last_of_tie]]),
    )


class RocCurve(NamedTuple):
    """Empirical ROC: point ``i`` predicts member iff ``score >= thresholds[i]`` (``thresholds[0] = inf``)."""

    fpr: FloatArray
    tpr: FloatArray
    thresholds: FloatArray


def roc_curve(scores: ArrayInput, labels: ArrayInput) -> RocCurve:
    """ROC of a membership score (higher = member); ``labels`` are boolean or 0/1 with 1 = member.

    One point per distinct score plus the origin, FPR and TPR non-decreasing; tied scores move
    together (a diagonal segment), so no tie is resolved in the attack's favour.
    """
    values, members = _scores_and_labels(scores, labels)
    false_pos, true_pos, thresholds = _roc_counts(values, members)
    return RocCurve(
        fpr=false_pos / false_pos[-1],
        tpr=true_pos / true_pos[-1],
        thresholds=thresholds,
    )


def auc(scores: ArrayInput, labels: ArrayInput) -> float:
    """Area under the ROC curve (trapezoidal, i.e. P[member score > non-member score] + ½·P[tie])."""
    values, members = _scores_and_labels(scores, labels)
    false_pos, true_pos, _ = _roc_counts(values, members)
    area = np.sum(np.diff(false_pos) * (true_pos[1:] + true_pos[:-1])) / 2.0
    return float(area / (false_pos[-1] * true_pos[-1]))


def _check_rate(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise AttackParameterError(f"{name} must be a real number, got {type(value).__name__}")
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise AttackParameterError(f"{name} must be in [0, 1], got {rate}")
    return rate


def tpr_at_fpr(scores: ArrayInput, labels: ArrayInput, fpr: float) -> float:
    """The largest TPR among thresholds with FPR ≤ ``fpr`` (no interpolation, no randomised thresholds).

    With ``n`` non-members only FPRs in multiples of ``1/n`` exist: asking for FPR 0.1% from fewer than
    1000 non-members is the TPR at FPR 0 (the threshold just above the highest non-member score).
    """
    target = _check_rate(fpr, "fpr")
    values, members = _scores_and_labels(scores, labels)
    false_pos, true_pos, _ = _roc_counts(values, members)
    # Compare counts, not float rates: 0.001·1000 must admit exactly one false positive.
    allowed = math.floor(target * int(false_pos[-1]) + 1e-9)
    return float(true_pos[false_pos <= allowed].max() / true_pos[-1])


def balanced_accuracy(scores: ArrayInput, labels: ArrayInput) -> float:
    """Best balanced accuracy ``(TPR + TNR) / 2`` over all thresholds (at least 0.5)."""
    values, members = _scores_and_labels(scores, labels)
    false_pos, true_pos, _ = _roc_counts(values, members)
    accuracy = (true_pos / true_pos[-1] + 1.0 - false_pos / false_pos[-1]) / 2.0
    return float(accuracy.max())


@dataclass(frozen=True, slots=True)
class MembershipReport:
    """The numbers a membership-inference paper reports for one attack."""

    auc: float
    tpr_at_0_1pct_fpr: float
    tpr_at_1pct_fpr: float
    balanced_accuracy: float
    n_members: int
    n_nonmembers: int

    @classmethod
    def from_scores(cls, scores: ArrayInput, labels: ArrayInput) -> MembershipReport:
        """Summarise a score vector (higher = member) against boolean or 0/1 membership labels."""
        values, members = _scores_and_labels(scores, labels)
        return cls(
            auc=auc(values, members),
            tpr_at_0_1pct_fpr=tpr_at_fpr(values, members, 0.001),
            tpr_at_1pct_fpr=tpr_at_fpr(values, members, 0.01),
            balanced_accuracy=balanced_accuracy(values, members),
            n_members=int(members.sum()),
            n_nonmembers=int((~members).sum()),
        )

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)
