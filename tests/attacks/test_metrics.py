from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from attacks.metrics import (
    AttackError,
    AttackParameterError,
    MembershipReport,
    auc,
    balanced_accuracy,
    label_accuracy,
    match_reconstructions,
    mse,
    psnr,
    roc_curve,
    ssim,
    tpr_at_fpr,
)


def _any(value: object) -> Any:
    """Pass a deliberately ill-typed argument past the type checker."""
    return value


# --------------------------------------------------------------------------- #
# MSE / PSNR
# --------------------------------------------------------------------------- #


def test_error_hierarchy() -> None:
    assert issubclass(AttackParameterError, AttackError)
    assert issubclass(AttackParameterError, ValueError)


def test_mse_per_item() -> None:
    a = np.zeros((2, 3, 4))
    b = np.stack([np.full((3, 4), 0.5), np.zeros((3, 4))])
    b[1, 0, 0] = 1.2
    np.testing.assert_allclose(mse(a, b), [0.25, 1.44 / 12])


def test_mse_accepts_torch_tensors() -> None:
    a = torch.zeros(3, 1, 2, 2, requires_grad=True)
    b = torch.ones(3, 1, 2, 2)
    np.testing.assert_allclose(mse(a, b), [1.0, 1.0, 1.0])


def test_psnr_of_known_mse() -> None:
    a = np.zeros((1, 8, 8))
    b = np.full((1, 8, 8), 0.1)  # MSE 0.01 -> 10·log10(1/0.01) = 20 dB
    np.testing.assert_allclose(psnr(a, b, 1.0), [20.0])
    c = np.full((1, 8, 8), 1.0)  # MSE 1 on a 0..255 scale -> 20·log10(255)
    np.testing.assert_allclose(psnr(a, c, 255), [20 * math.log10(255)])


def test_psnr_identical_is_inf_and_scales_with_range() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((4, 3, 5, 5))
    b = a + rng.normal(0, 0.05, a.shape)
    assert np.all(np.isinf(psnr(a, a, 1.0)))
    # Rescaling images and range together leaves PSNR unchanged.
    np.testing.assert_allclose(psnr(16 * a, 16 * b, 16.0), psnr(a, b, 1.0))


# --------------------------------------------------------------------------- #
# SSIM
# --------------------------------------------------------------------------- #


def _gauss(size: int) -> np.ndarray:
    k = np.arange(size) - (size - 1) / 2
    g = np.exp(-(k**2) / (2 * 1.5**2))
    return g / g.sum()


def _ssim_brute_force(x: np.ndarray, y: np.ndarray, data_range: float, win: int) -> float:
    """One window at a time, straight from the definition (independent of the vectorised code)."""
    w = np.outer(_gauss(win), _gauss(win))
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - win + 1):
        for j in range(x.shape[1] - win + 1):
            px, py = x[i : i + win, j : j + win], y[i : i + win, j : j + win]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_identical_is_one() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((3, 8, 8))
    np.testing.assert_allclose(ssim(a, a, 1.0), np.ones(3), atol=1e-12)
    colour = rng.random((2, 3, 16, 16))
    np.testing.assert_allclose(ssim(colour, colour, 1.0), np.ones(2), atol=1e-12)


def test_ssim_constant_shift_hand_value() -> None:
    # Constant images: σ = 0 everywhere, so SSIM = (2μxμy + C1)/(μx² + μy² + C1).
    # 0 vs 0.01 with L = 1: C1 = 1e-4 -> 1e-4 / (1e-4 + 1e-4) = 0.5.
    a = np.zeros((1, 8, 8))
    np.testing.assert_allclose(ssim(a, a + 0.01, 1.0), [0.5])
    # A shift leaves the contrast-structure term at 1: for constant 0.5 vs 0.6,
    # (2·0.3 + 1e-4)/(0.25 + 0.36 + 1e-4).
    expected = (0.6 + 1e-4) / (0.61 + 1e-4)
    np.testing.assert_allclose(ssim(a + 0.5, a + 0.6, 1.0), [expected])


def test_ssim_hand_computed_single_window() -> None:
    # 3×3 images and a 3×3 window: one window.  x is a centred impulse, y is zero.
    # g = (e^(-1/4.5), 1, e^(-1/4.5)) / Z, w_centre = 1/Z²;  μx = w_c, σx² = w_c − w_c², μy = σy = σxy = 0.
    z = 1 + 2 * math.exp(-1 / 4.5)
    w_c = 1 / z**2
    c1, c2 = 1e-4, 9e-4
    expected = (c1 * c2) / ((w_c**2 + c1) * (w_c - w_c**2 + c2))
    x = np.zeros((1, 3, 3))
    x[0, 1, 1] = 1.0
    np.testing.assert_allclose(ssim(x, np.zeros_like(x), 1.0, win_size=3), [expected], rtol=1e-12)


@pytest.mark.parametrize(("shape", "win"), [((8, 8), 7), ((8, 8), 3), ((12, 10), 9), ((16, 16), 11)])
def test_ssim_matches_brute_force(shape: tuple[int, int], win: int) -> None:
    rng = np.random.default_rng(2)
    a = rng.random((2, *shape))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    expected = [_ssim_brute_force(a[i], b[i], 1.0, win) for i in range(2)]
    np.testing.assert_allclose(ssim(a, b, 1.0, win_size=win), expected, rtol=1e-10)


def test_ssim_default_window_for_digits_is_seven() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random((4, 8, 8)), rng.random((4, 8, 8))
    np.testing.assert_array_equal(ssim(a, b, 1.0), ssim(a, b, 1.0, win_size=7))
    big = rng.random((1, 16, 16))
    np.testing.assert_array_equal(ssim(big, big[:, ::-1], 1.0), ssim(big, big[:, ::-1], 1.0, win_size=11))
    assert not np.allclose(ssim(a, b, 1.0), ssim(a, b, 1.0, win_size=5))


def test_ssim_properties() -> None:
    rng = np.random.default_rng(4)
    a = rng.random((3, 2, 10, 10))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    np.testing.assert_allclose(ssim(a, b, 1.0), ssim(b, a, 1.0))
    # Colour SSIM is the mean over channels.
    per_channel = np.stack([ssim(a[:, c], b[:, c], 1.0) for c in range(2)])
    np.testing.assert_allclose(ssim(a, b, 1.0), per_channel.mean(axis=0))
    # Scaling images and range together is invariant; more noise lowers SSIM.
    np.testing.assert_allclose(ssim(255 * a, 255 * b, 255.0), ssim(a, b, 1.0))
    worse = np.clip(a + rng.normal(0, 0.3, a.shape), 0, 1)
    assert np.all(ssim(a, worse, 1.0) < ssim(a, b, 1.0))
    assert np.all(ssim(a, b, 1.0) <= 1.0)


def test_ssim_against_skimage_if_installed() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(5)
    a = rng.random((2, 3, 20, 20))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    expected = [
        metrics.structural_similarity(
            a[i],
            b[i],
            channel_axis=0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        for i in range(2)
    ]
    np.testing.assert_allclose(ssim(a, b, 1.0), expected, rtol=1e-6)


# --------------------------------------------------------------------------- #
# matching and labels
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("metric", ["mse", "psnr", "ssim"])
def test_match_reconstructions_recovers_permutation(metric: str) -> None:
    rng = np.random.default_rng(6)
    truth = rng.random((6, 1, 8, 8))
    perm = np.array([3, 0, 5, 1, 4, 2])
    recon = truth[perm] + rng.normal(0, 0.05, truth.shape)
    match = match_reconstructions(recon, truth, _any(metric), data_range=1.0)
    np.testing.assert_array_equal(match.recon_index, np.arange(6))
    np.testing.assert_array_equal(match.truth_index, perm)
    reference = {"mse": mse, "psnr": lambda a, b: psnr(a, b, 1.0), "ssim": lambda a, b: ssim(a, b, 1.0)}
    np.testing.assert_allclose(match.values, reference[metric](recon, truth[perm]), rtol=1e-12)
    assert match.mean == pytest.approx(float(np.mean(match.values)))


def test_match_is_optimal_not_greedy() -> None:
    # Squared distances: r0→t0 0.16, r0→t1 0.25, r1→t0 0.36, r1→t1 2.25.  Greedy (r0 takes its
    # nearest, t0) totals 2.41; the optimum crosses over for 0.61.
    recon = np.array([[0.0], [1.0]])
    truth = np.array([[0.4], [-0.5]])
    match = match_reconstructions(recon, truth)
    np.testing.assert_array_equal(match.truth_index, [1, 0])
    np.testing.assert_allclose(match.values, [0.25, 0.36])


def test_match_exact_psnr_and_rectangular() -> None:
    rng = np.random.default_rng(7)
    truth = rng.random((5, 4))
    recon = truth[[4, 2]].copy()
    match = match_reconstructions(recon, truth, "psnr", data_range=1.0)
    np.testing.assert_array_equal(match.truth_index, [4, 2])
    assert np.all(np.isinf(match.values))
    more = np.concatenate([truth[[1]], truth + 0.3])
    match = match_reconstructions(more, truth)  # 6 reconstructions, 5 truths: 5 pairs
    assert match.recon_index.size == 5 and 0 in match.recon_index
    assert match.truth_index[list(match.recon_index).index(0)] == 1


def test_label_accuracy_multiset() -> None:
    assert label_accuracy([1, 1, 2], [2, 1, 2]) == pytest.approx(2 / 3)
    assert label_accuracy([3, 1, 2], [1, 2, 3]) == 1.0
    assert label_accuracy(torch.tensor([0, 0]), np.array([1.0, 1.0])) == 0.0
    assert label_accuracy([7, 7, 7, 1], [1, 7, 9, 9]) == 0.5


# --------------------------------------------------------------------------- #
# membership
# --------------------------------------------------------------------------- #


def test_roc_tiny_example() -> None:
    curve = roc_curve([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    np.testing.assert_allclose(curve.fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(curve.tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(curve.thresholds, [np.inf, 0.9, 0.8, 0.7, 0.6])
    assert auc([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.75)
    assert balanced_accuracy([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.75)


def test_roc_ties_and_all_equal_scores() -> None:
    curve = roc_curve([0.5, 0.5, 0.5, 0.5], [True, False, True, False])
    np.testing.assert_allclose(curve.fpr, [0, 1])
    np.testing.assert_allclose(curve.tpr, [0, 1])
    assert auc(np.ones(10), np.arange(10) % 2) == 0.5
    assert balanced_accuracy(np.ones(10), np.arange(10) % 2) == 0.5
    assert tpr_at_fpr(np.ones(10), np.arange(10) % 2, 0.5) == 0.0
    # A member tied with a non-member counts half in the AUC.
    assert auc([1.0, 1.0, 0.0], [1, 0, 0]) == pytest.approx(0.75)


def test_roc_and_auc_match_sklearn_with_ties() -> None:
    rng = np.random.default_rng(8)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounding creates many ties
    curve = roc_curve(scores, labels)
    fpr, tpr, thresholds = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(curve.fpr, fpr)
    np.testing.assert_allclose(curve.tpr, tpr)
    np.testing.assert_allclose(curve.thresholds[1:], thresholds[1:])
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_tpr_at_fpr_edge_cases() -> None:
    scores = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    labels = [1, 1, 0, 1, 0, 1, 0, 0, 1, 0]  # 5 members, 5 non-members
    assert tpr_at_fpr(scores, labels, 0.0) == pytest.approx(0.4)  # above the best non-member
    assert tpr_at_fpr(scores, labels, 0.19) == pytest.approx(0.4)  # FPR 0.2 not allowed
    assert tpr_at_fpr(scores, labels, 0.2) == pytest.approx(0.6)  # exactly one false positive
    assert tpr_at_fpr(scores, labels, 0.4) == pytest.approx(0.8)
    assert tpr_at_fpr(scores, labels, 1.0) == 1.0
    # Floating-point target that is an exact count: 0.001·1000 = 1 false positive.
    many = np.r_[np.arange(1000.0), 2000.0, 998.5]
    flags = np.r_[np.zeros(1000, bool), True, True]
    assert tpr_at_fpr(many, flags, 0.001) == 1.0
    assert tpr_at_fpr(many, flags, 0.0009) == 0.5
    # A member tied with the best non-member does not count at FPR 0.
    assert tpr_at_fpr([5.0, 5.0, 1.0], [1, 0, 0], 0.0) == 0.0


def test_membership_report() -> None:
    rng = np.random.default_rng(9)
    labels = np.r_[np.ones(2000, bool), np.zeros(3000, bool)]
    scores = rng.normal(labels * 1.0, 1.0)
    report = MembershipReport.from_scores(scores, labels)
    assert report.n_members == 2000 and report.n_nonmembers == 3000
    assert report.auc == pytest.approx(roc_auc_score(labels, scores))
    assert 0.0 <= report.tpr_at_0_1pct_fpr <= report.tpr_at_1pct_fpr <= 1.0
    assert report.tpr_at_1pct_fpr == tpr_at_fpr(scores, labels, 0.01)
    assert report.balanced_accuracy == pytest.approx(
        0.5 + np.max(roc_curve(scores, labels).tpr - roc_curve(scores, labels).fpr) / 2
    )
    assert report.to_dict()["n_members"] == 2000


# --------------------------------------------------------------------------- #
# every rejection path
# --------------------------------------------------------------------------- #

IMG = np.zeros((2, 8, 8))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mse([[1.0], [1.0, 2.0]], [[1.0]]), "a must be a numeric array"),
        (lambda: mse(np.array([["x"]]), np.zeros((1, 1))), "a must be a numeric array, got dtype"),
        (lambda: mse(np.full((1, 2), np.nan), np.zeros((1, 2))), "a must contain only finite values"),
        (lambda: mse(np.zeros((1, 2)), np.zeros((1, 3))), "a and b must have the same shape"),
        (lambda: mse(np.zeros(3), np.zeros(3)), "at least 2 dims"),
        (lambda: mse(np.zeros((0, 3)), np.zeros((0, 3))), "a must not be empty"),
        (lambda: psnr(IMG, IMG, 0.0), "data_range must be finite and > 0"),
        (lambda: psnr(IMG, IMG, math.inf), "data_range must be finite and > 0"),
        (lambda: psnr(IMG, IMG, _any("1")), "data_range must be a real number"),
        (lambda: psnr(IMG, IMG, _any(True)), "data_range must be a real number"),
        (lambda: ssim(np.zeros((2, 8)), np.zeros((2, 8)), 1.0), r"\(N, H, W\) or \(N, C, H, W\)"),
        (lambda: ssim(np.zeros((1, 1, 1, 8, 8)), np.zeros((1, 1, 1, 8, 8)), 1.0), "image batch"),
        (lambda: ssim(IMG, IMG, 1.0, win_size=4), "win_size must be an odd integer >= 1"),
        (lambda: ssim(IMG, IMG, 1.0, win_size=0), "win_size must be an odd integer >= 1"),
        (lambda: ssim(IMG, IMG, 1.0, win_size=9), "must not exceed the image height and width"),
        (lambda: ssim(IMG, IMG, 1.0, win_size=_any(7.0)), "win_size must be an odd integer"),
        (lambda: match_reconstructions(IMG, IMG, _any("l1")), "metric must be one of"),
        (lambda: match_reconstructions(IMG, np.zeros((2, 8, 7))), "recon and truth items must have"),
        (lambda: match_reconstructions(np.zeros(2), np.zeros(2)), "recon must be a batch"),
        (lambda: match_reconstructions(IMG, IMG, "psnr"), "data_range is required for metric 'psnr'"),
        (
            lambda: match_reconstructions(np.zeros((2, 3)), np.zeros((2, 3)), "ssim", data_range=1),
            "recon must be",
        ),
        (lambda: label_accuracy([1, 2], [1]), "same length"),
        (lambda: label_accuracy([], []), "pred_labels must be a non-empty 1-D array"),
        (lambda: label_accuracy([[1]], [[1]]), "pred_labels must be a non-empty 1-D array"),
        (lambda: label_accuracy([1.5], [1]), "pred_labels must hold integer class labels"),
        (lambda: label_accuracy([1], [True]), "true_labels must hold integer class labels, got dtype bool"),
        (lambda: roc_curve([[0.1]], [[1]]), "scores must be a non-empty 1-D array"),
        (lambda: roc_curve([], []), "scores must be a non-empty 1-D array"),
        (lambda: roc_curve([0.1, 0.2], [[1, 0]]), "labels must be 1-D"),
        (lambda: roc_curve([0.1, 0.2], [1, 0, 1]), "same length"),
        (lambda: roc_curve([0.1, 0.2], [1, 2]), "labels must be boolean or 0/1"),
        (lambda: auc([0.1, 0.2], [1, 1]), "both members and non-members"),
        (lambda: auc([0.1, math.inf], [1, 0]), "scores must contain only finite values"),
        (lambda: tpr_at_fpr([0.1, 0.2], [1, 0], 1.5), r"fpr must be in \[0, 1\]"),
        (lambda: tpr_at_fpr([0.1, 0.2], [1, 0], _any(None)), "fpr must be a real number"),
        (lambda: balanced_accuracy([0.1, 0.2], [0, 0]), "both members and non-members"),
        (lambda: MembershipReport.from_scores([0.1], [1]), "both members and non-members"),
    ],
)
def test_rejections(call: Callable[[], object], message: str) -> None:
    with pytest.raises(AttackParameterError, match=message):
        call()
