"""Membership inference: statistics, LiRA maths, attacks on real overfit and DP-SGD targets, FL forms.

The real experiments use the sklearn digits (flattened to 64 features) and the MLP of :mod:`fl.models`
trained by :func:`fl.client.local_train`; every seed is fixed, so each number below is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats
from scipy.special import softmax

from attacks.membership import (
    ATTACKS,
    InsufficientShadowsError,
    MembershipAttackError,
    MembershipScores,
    ShadowPool,
    ShapeMismatchError,
    TargetQueries,
    TrainRecipe,
    client_level_attack,
    cross_entropy_losses,
    lira_offline,
    lira_online,
    local_model_from_update,
    logit_scaled_confidence,
    loss_threshold_attack,
    query_client_update,
    query_logits,
    shadow_model_attack,
    train_out_pool,
    train_shadow_pool,
    train_target,
)
from attacks.metrics import AttackError, auc, tpr_at_fpr
from fl.client import TrainConfig, evaluate, local_train
from fl.data import load_digits, partition_iid
from fl.dpsgd import DPSGDConfig, SampleLevelAccountant, sampling_plan
from fl.layout import ParamLayout

NUM_CLASSES = 10
HIDDEN = (256,)
# Small training sets and 150 epochs: the MLP reaches ~0 training loss while its test accuracy stays near
# 93 %, the generalisation gap that membership inference exploits.
OVERFIT = TrainConfig(epochs=150, batch_size=16, lr=0.1)
NUM_CANDIDATES = 300  # half members (the target's training set), half non-members
NUM_SHADOWS = 16


# --------------------------------------------------------------------------------------------
# Fixtures: one overfit target with its shadow pool, shared by the tests that attack it
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return data.x.reshape(data.num_examples, -1), data.y


@dataclass(frozen=True)
class Experiment:
    x: np.ndarray
    y: np.ndarray
    is_member: np.ndarray
    recipe: TrainRecipe
    queries: TargetQueries
    pool: ShadowPool
    test_accuracy: float


def _stratified_half(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Half of each class: members and non-members then share a label mix, so a score that merely tracks
    # the class (as a weak, noisy model's loss does) cannot separate them by accident.
    is_member = np.zeros(y.shape, dtype=bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        is_member[idx[: len(idx) // 2]] = True
    return is_member


@pytest.fixture(scope="module")
def overfit(digits: tuple[np.ndarray, np.ndarray]) -> Experiment:
    x_all, y_all = digits
    rng = np.random.default_rng(2024)
    chosen = rng.permutation(len(y_all))[:NUM_CANDIDATES]
    x, y = x_all[chosen], y_all[chosen]
    is_member = _stratified_half(y, rng)
    recipe = TrainRecipe(NUM_CLASSES, "mlp", HIDDEN, OVERFIT)
    target = recipe(x[is_member], y[is_member], 7)
    accuracy = evaluate(target, x[~is_member], y[~is_member], task="classification")["accuracy"]
    # The adversary's shadows: same recipe, each candidate IN for exactly half of them.
    pool = train_shadow_pool(recipe, x, y, num_shadows=NUM_SHADOWS, seed=11)
    return Experiment(x, y, is_member, recipe, TargetQueries.from_model(target, x, y), pool, accuracy)


def _summary(result: MembershipScores, is_member: np.ndarray) -> tuple[float, float]:
    return auc(result.scores, is_member), tpr_at_fpr(result.scores, is_member, 0.01)


# --------------------------------------------------------------------------------------------
# Logit-scaled confidence and losses
# --------------------------------------------------------------------------------------------


def test_logit_scaled_confidence_matches_the_definition_on_moderate_logits() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(50, 7))
    labels = rng.integers(0, 7, size=50)
    p = softmax(logits, axis=1)[np.arange(50), labels]
    np.testing.assert_allclose(logit_scaled_confidence(logits, labels), np.log(p) - np.log1p(-p), rtol=1e-9)
    np.testing.assert_allclose(cross_entropy_losses(logits, labels), -np.log(p), rtol=1e-9)


def test_logit_scaled_confidence_is_exact_for_huge_logits() -> None:
    # softmax saturates to exactly 1.0 here, so log(p) - log(1 - p) would be inf for every row (a tie).
    logits = np.array([[1e4, 0.0, -1e4], [2e4, 0.0, -1e4], [800.0, 0.0, 0.0], [0.0, 1e4, 0.0]])
    labels = np.array([0, 0, 0, 0])
    phi = logit_scaled_confidence(logits, labels)
    assert np.isfinite(phi).all()
    np.testing.assert_allclose(phi, [1e4, 2e4, 800.0 - math.log(2.0), -1e4])
    assert phi[1] > phi[0] > phi[2] > phi[3]  # no ties, order kept
    # float32 logits are promoted, and binary φ is the logit margin.
    binary = np.array([[3.0, -1.5], [-1e30, 1e30]], dtype=np.float32)
    np.testing.assert_allclose(logit_scaled_confidence(binary, np.array([0, 0])), [4.5, -2e30], rtol=1e-6)


def test_logit_scaled_confidence_is_shift_invariant_and_batched() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 30, 10))
    labels = rng.integers(0, 10, size=30)
    phi = logit_scaled_confidence(logits, labels)
    assert phi.shape == (4, 30)
    np.testing.assert_allclose(logit_scaled_confidence(logits + 1e3, labels), phi, atol=1e-9)
    np.testing.assert_array_equal(phi[2], logit_scaled_confidence(logits[2], labels))


def test_scaled_confidence_breaks_the_ties_of_saturated_losses() -> None:
    queries = TargetQueries(np.array([[100.0, 0.0], [200.0, 0.0], [1.0, 0.0]]), np.array([0, 0, 0]))
    by_loss = loss_threshold_attack(queries).scores
    by_phi = loss_threshold_attack(queries, statistic="scaled_confidence").scores
    assert by_loss[0] == by_loss[1] == 0.0  # float64 cannot tell these losses apart
    assert by_phi[1] > by_phi[0] > by_phi[2]
    # Where the loss is resolvable both statistics rank alike: −loss = −log(1 + e^{−φ}).
    np.testing.assert_allclose(by_loss, -np.log1p(np.exp(-by_phi)), atol=1e-12)


# --------------------------------------------------------------------------------------------
# LiRA maths (synthetic pools: binary logits [φ, 0] have logit-scaled confidence exactly φ)
# --------------------------------------------------------------------------------------------


def _binary_pool(confidences: np.ndarray, in_mask: np.ndarray | None) -> ShadowPool:
    logits = np.stack([confidences, np.zeros_like(confidences)], axis=-1)
    return ShadowPool(logits, np.zeros(confidences.shape[1], dtype=np.int64), in_mask)


def _binary_queries(confidences: np.ndarray) -> TargetQueries:
    return TargetQueries(
        np.stack([confidences, np.zeros_like(confidences)], axis=-1), np.zeros(len(confidences), np.int64)
    )


def test_lira_matches_a_per_example_scipy_reference() -> None:
    rng = np.random.default_rng(3)
    k, n = 9, 25
    conf = rng.normal(size=(k, n)) * rng.uniform(0.5, 2.0, size=n) + rng.normal(size=n)
    in_mask = rng.random((k, n)) < 0.5
    in_mask[:2], in_mask[2:4] = True, False  # at least 2 IN and 2 OUT per example
    target = rng.normal(size=n)
    pool, queries = _binary_pool(conf, in_mask), _binary_queries(target)
    online = lira_online(queries, pool).scores
    offline = lira_offline(queries, pool).scores
    for i in range(n):
        c_in, c_out = conf[in_mask[:, i], i], conf[~in_mask[:, i], i]
        s_in, s_out = c_in.std(ddof=1), c_out.std(ddof=1)
        expected = stats.norm.logpdf(target[i], c_in.mean(), s_in) - stats.norm.logpdf(
            target[i], c_out.mean(), s_out
        )
        assert online[i] == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert offline[i] == pytest.approx(-stats.norm.logsf(target[i], c_out.mean(), s_out), rel=1e-9)
    # Global variance: one pooled within-example variance per side.
    glob = lira_online(queries, pool, global_variance=True).scores
    dev_in = np.where(in_mask, conf - np.where(in_mask, conf, 0).sum(0) / in_mask.sum(0), 0.0)
    var_in = (dev_in**2).sum() / (in_mask.sum() - n)
    mu_in = np.where(in_mask, conf, 0).sum(0) / in_mask.sum(0)
    mu_out = np.where(~in_mask, conf, 0).sum(0) / (~in_mask).sum(0)
    dev_out = np.where(~in_mask, conf - mu_out, 0.0)
    var_out = (dev_out**2).sum() / ((~in_mask).sum() - n)
    expected = stats.norm.logpdf(target, mu_in, math.sqrt(var_in)) - stats.norm.logpdf(
        target, mu_out, math.sqrt(var_out)
    )
    np.testing.assert_allclose(glob, expected, rtol=1e-9, atol=1e-9)


def test_offline_lira_uses_only_out_observations() -> None:
    rng = np.random.default_rng(4)
    conf = rng.normal(size=(8, 40))
    in_mask = np.zeros((8, 40), dtype=bool)
    in_mask[:4] = True
    target = _binary_queries(rng.normal(size=40))
    scrambled = np.where(in_mask, rng.normal(loc=50.0, scale=9.0, size=conf.shape), conf)
    a = lira_offline(target, _binary_pool(conf, in_mask)).scores
    np.testing.assert_array_equal(a, lira_offline(target, _binary_pool(scrambled, in_mask)).scores)
    # An OUT-only pool (no in_mask) of the same OUT models gives the same test.
    np.testing.assert_allclose(a, lira_offline(target, _binary_pool(conf[4:], None)).scores)


def test_lira_online_separates_synthetic_in_and_out_distributions() -> None:
    rng = np.random.default_rng(5)
    k, n = 16, 400
    in_mask = np.argsort(rng.random((k, n)), axis=0) < k // 2
    hardness = rng.normal(scale=3.0, size=n)  # per-example offsets that a global threshold cannot remove
    conf = hardness + np.where(in_mask, 1.5, 0.0) + rng.normal(scale=0.5, size=(k, n))
    is_member = rng.random(n) < 0.5
    target = hardness + np.where(is_member, 1.5, 0.0) + rng.normal(scale=0.5, size=n)
    pool, queries = _binary_pool(conf, in_mask), _binary_queries(target)
    assert auc(lira_online(queries, pool).scores, is_member) > 0.9
    assert auc(lira_offline(queries, pool).scores, is_member) > 0.9
    assert auc(loss_threshold_attack(queries, statistic="scaled_confidence").scores, is_member) < 0.7


# --------------------------------------------------------------------------------------------
# Attacks on a real overfit target
# --------------------------------------------------------------------------------------------


def test_lira_beats_loss_threshold_at_low_fpr_and_both_beat_chance(overfit: Experiment) -> None:
    member = overfit.is_member
    loss_auc, loss_tpr = _summary(loss_threshold_attack(overfit.queries), member)
    online_auc, online_tpr = _summary(lira_online(overfit.queries, overfit.pool), member)
    global_auc, global_tpr = _summary(
        lira_online(overfit.queries, overfit.pool, global_variance=True), member
    )
    offline_auc, offline_tpr = _summary(
        lira_offline(overfit.queries, overfit.pool, global_variance=True), member
    )
    print(
        f"\nnon-member accuracy {overfit.test_accuracy:.3f}; AUC / TPR@1%FPR: loss {loss_auc:.3f} / {loss_tpr:.3f}, "
        f"LiRA online {online_auc:.3f} / {online_tpr:.3f}, online global-var {global_auc:.3f} / {global_tpr:.3f}, "
        f"offline global-var {offline_auc:.3f} / {offline_tpr:.3f}"
    )
    # Margins hold for every split seed tried (2024 and 1-5 give loss AUC 0.56-0.61, LiRA online 0.72-0.77).
    assert overfit.test_accuracy > 0.85  # a useful model, not a broken one
    assert loss_auc > 0.55
    assert min(online_auc, global_auc) > 0.7 and offline_auc > 0.65
    assert min(online_auc, global_auc) > loss_auc + 0.1 and offline_auc > loss_auc + 0.05
    # Carlini et al.'s headline: the likelihood ratio wins where it matters, at low false-positive rates.
    assert min(online_tpr, global_tpr) > loss_tpr + 0.05 and offline_tpr > loss_tpr + 0.03


def test_shadow_model_attacks_beat_chance(overfit: Experiment) -> None:
    classifier = shadow_model_attack(overfit.queries, overfit.pool)
    threshold = shadow_model_attack(overfit.queries, overfit.pool, method="threshold")
    print(
        f"\nShokri AUC: classifier {auc(classifier.scores, overfit.is_member):.3f}, "
        f"threshold {auc(threshold.scores, overfit.is_member):.3f}"
    )
    assert classifier.attack == "shadow_classifier" and threshold.attack == "shadow_threshold"
    assert auc(classifier.scores, overfit.is_member) > 0.56
    assert auc(threshold.scores, overfit.is_member) > 0.56
    assert classifier.metadata["num_shadows"] == NUM_SHADOWS


def test_scores_carry_the_attack_name_metadata_and_a_report(overfit: Experiment) -> None:
    result = lira_online(overfit.queries, overfit.pool)
    assert result.attack == "lira_online" and result.attack in ATTACKS
    assert (
        result.metadata["mean_in_per_example"] == result.metadata["mean_out_per_example"] == NUM_SHADOWS / 2
    )
    report = result.report(overfit.is_member)
    assert report.n_members == overfit.is_member.sum() and report.n_nonmembers == (~overfit.is_member).sum()
    assert report.auc == pytest.approx(auc(result.scores, overfit.is_member))


def test_dp_sgd_target_pushes_membership_auc_towards_chance(overfit: Experiment) -> None:
    # Real DP-SGD (fl.dpsgd: per-example clipping to C = 1, Gaussian noise σ = 3 drawn from a seeded
    # CryptoRNG; ε ≈ 2.5 at δ = 1e-3), same members; the adversary's shadows use the same DP recipe.
    dp_config = TrainConfig(epochs=20, batch_size=32, lr=0.3)
    dp = DPSGDConfig(3.0, 1.0, delta=1e-3)
    recipe = TrainRecipe(NUM_CLASSES, "mlp", HIDDEN, dp_config, dpsgd=dp)
    member = overfit.is_member
    target = recipe(overfit.x[member], overfit.y[member], 7)
    accuracy = evaluate(target, overfit.x[~member], overfit.y[~member], task="classification")["accuracy"]
    queries = TargetQueries.from_model(target, overfit.x, overfit.y)
    pool = train_shadow_pool(recipe, overfit.x, overfit.y, num_shadows=8, seed=11)
    accountant = SampleLevelAccountant(dp)
    accountant.record(0, *sampling_plan(int(member.sum()), dp_config))
    dp_loss = auc(loss_threshold_attack(queries).scores, member)
    dp_lira = auc(lira_online(queries, pool, global_variance=True).scores, member)
    plain_lira = auc(lira_online(overfit.queries, overfit.pool, global_variance=True).scores, member)
    print(
        f"\nDP-SGD eps={accountant.epsilon(0):.2f} (delta=1e-3), accuracy {accuracy:.3f}: "
        f"AUC loss {dp_loss:.3f}, LiRA {dp_lira:.3f} (non-private LiRA {plain_lira:.3f})"
    )
    assert accuracy > 0.6  # noisy but still learning
    assert accountant.epsilon(0) < 3.0
    assert abs(dp_loss - 0.5) < 0.07 and abs(dp_lira - 0.5) < 0.07
    assert dp_lira < plain_lira - 0.15


# --------------------------------------------------------------------------------------------
# Federated forms
# --------------------------------------------------------------------------------------------


def test_server_attacks_one_client_update_with_offline_lira_on_out_models(
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    x_all, y_all = digits
    order = np.random.default_rng(9).permutation(len(y_all))
    public, client, outsiders, population = order[:300], order[300:450], order[450:600], order[600:]
    global_model = train_target(x_all[public], y_all[public], epochs=5, hidden=HIDDEN, seed=0, num_classes=10)
    layout = ParamLayout.from_module(global_model)
    w = layout.flatten(global_model)
    scratch = train_target(x_all[:20], y_all[:20], epochs=1, hidden=HIDDEN, seed=1, num_classes=10)
    update = local_train(
        scratch,
        layout,
        w,
        x_all[client],
        y_all[client],
        OVERFIT,
        task="classification",
        client_id=4,
        seed=123,
    )
    candidates = np.concatenate([client, outsiders])
    is_member = np.isin(candidates, client)
    x_c, y_c = x_all[candidates], y_all[candidates]
    queries = query_client_update(global_model, layout, w, update, x_c, y_c)
    # The server rebuilt exactly the client's local model w + Δ, and left its own model untouched.
    np.testing.assert_allclose(queries.logits, query_logits(scratch, x_c), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layout.flatten(global_model), w)
    # Offline LiRA: reference models replay local training from w on population data, never on a candidate.
    replay = TrainRecipe(NUM_CLASSES, "mlp", HIDDEN, OVERFIT, init_weights=w)
    pool = train_out_pool(
        replay,
        x_all[population],
        y_all[population],
        x_c,
        y_c,
        num_shadows=8,
        seed=5,
        fraction=len(client) / len(population),
    )
    assert not pool.membership.any()
    loss_auc = auc(loss_threshold_attack(queries).scores, is_member)
    offline = lira_offline(queries, pool)
    offline_auc = auc(offline.scores, is_member)
    print(
        f"\nserver vs one update: AUC loss {loss_auc:.3f}, offline LiRA (8 OUT models) {offline_auc:.3f}, "
        f"TPR@1%FPR loss {tpr_at_fpr(loss_threshold_attack(queries).scores, is_member, 0.01):.3f}, "
        f"offline {tpr_at_fpr(offline.scores, is_member, 0.01):.3f}"
    )
    assert loss_auc > 0.55 and offline_auc > 0.65  # split seeds 1-9 give 0.55-0.67 and 0.67-0.70
    with pytest.raises(InsufficientShadowsError, match="IN Gaussian fit needs >= 2 IN"):
        lira_online(queries, pool)  # no IN models: the online test is impossible


def test_client_level_membership_separates_member_clients(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x_all, y_all = digits
    rng = np.random.default_rng(21)
    chosen = rng.permutation(len(y_all))[:1000]
    parts = partition_iid(1000, 20, rng)  # 20 clients of 50 examples
    client_ids = np.empty(1000, dtype=np.int64)
    for k, idx in enumerate(parts):
        client_ids[idx] = k
    x, y = x_all[chosen], y_all[chosen]
    member_clients = rng.permutation(20)[:10]
    in_training = np.isin(client_ids, member_clients)
    recipe = TrainRecipe(NUM_CLASSES, "mlp", HIDDEN, OVERFIT)
    target = recipe(x[in_training], y[in_training], 3)  # trained centrally on the members' union
    queries = TargetQueries.from_model(target, x, y)
    by_confidence = client_level_attack(
        loss_threshold_attack(queries, statistic="scaled_confidence"), client_ids
    )
    is_member_client = np.isin(np.array(by_confidence.metadata["client_ids"]), member_clients)
    # Client-level LiRA: shadows include or exclude whole clients; a client's log LR is the sum.
    pool = train_shadow_pool(recipe, x, y, num_shadows=8, seed=4, groups=client_ids)
    assert all(
        (
            pool.membership[:, client_ids == c] == pool.membership[:, [np.flatnonzero(client_ids == c)[0]]]
        ).all()
        for c in range(20)
    )
    by_lira = client_level_attack(lira_online(queries, pool, global_variance=True), client_ids, reduce="sum")
    conf_auc, lira_auc = auc(by_confidence.scores, is_member_client), auc(by_lira.scores, is_member_client)
    example_auc = auc(loss_threshold_attack(queries).scores, in_training)
    print(
        f"\nclient-level AUC: mean φ {conf_auc:.3f}, summed LiRA {lira_auc:.3f} (per-example loss AUC {example_auc:.3f})"
    )
    assert by_confidence.scores.shape == (20,) and by_confidence.metadata["examples_per_client"] == (50,) * 20
    assert conf_auc > 0.85 and lira_auc > 0.85
    assert conf_auc > example_auc  # aggregating 50 weak signals per client gives a strong one


def test_client_level_attack_aggregates_by_client_id() -> None:
    scores = MembershipScores("x", np.array([1.0, 2.0, 3.0, 10.0, -4.0]))
    ids = np.array([7, 2, 7, 2, 5])
    mean = client_level_attack(scores, ids)
    total = client_level_attack(scores, ids, reduce="sum")
    assert mean.metadata["client_ids"] == (2, 5, 7)
    np.testing.assert_allclose(mean.scores, [6.0, -4.0, 2.0])
    np.testing.assert_allclose(total.scores, [12.0, -4.0, 4.0])
    assert mean.metadata["example_attack"] == "x" and mean.attack == "client_level"


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------


def test_training_pools_and_scores_are_deterministic(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits[0][:120], digits[1][:120]
    recipe = TrainRecipe(NUM_CLASSES, "mlp", (16,), TrainConfig(epochs=3, batch_size=16, lr=0.1))
    a = train_shadow_pool(recipe, x, y, num_shadows=4, seed=3)
    b = train_shadow_pool(recipe, x, y, num_shadows=4, seed=3)
    c = train_shadow_pool(recipe, x, y, num_shadows=4, seed=4)
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.membership, b.membership)
    assert not np.array_equal(a.membership, c.membership)
    assert (a.membership.sum(axis=0) == 2).all()  # balanced: every example IN for exactly k/2 shadows
    queries = TargetQueries.from_model(train_target(x[:60], y[:60], epochs=3, seed=1, hidden=(16,)), x, y)
    again = TargetQueries.from_model(train_target(x[:60], y[:60], epochs=3, seed=1, hidden=(16,)), x, y)
    np.testing.assert_array_equal(queries.logits, again.logits)
    np.testing.assert_array_equal(lira_online(queries, a).scores, lira_online(again, b).scores)
    np.testing.assert_array_equal(
        shadow_model_attack(queries, a).scores, shadow_model_attack(again, b).scores
    )
    dp = TrainRecipe(
        NUM_CLASSES, "mlp", (16,), TrainConfig(epochs=1, batch_size=16), dpsgd=DPSGDConfig(1.0, 1.0)
    )
    np.testing.assert_array_equal(query_logits(dp(x, y, 5), x), query_logits(dp(x, y, 5), x))


# --------------------------------------------------------------------------------------------
# Error paths
# --------------------------------------------------------------------------------------------


def _random_pool(k: int, n: int, in_mask: np.ndarray | None, seed: int = 0) -> ShadowPool:
    rng = np.random.default_rng(seed)
    return ShadowPool(rng.normal(size=(k, n, 3)), rng.integers(0, 3, size=n), in_mask)


def test_errors_are_typed_value_errors() -> None:
    for error in (MembershipAttackError, ShapeMismatchError, InsufficientShadowsError):
        assert issubclass(error, ValueError) and issubclass(error, AttackError)


def test_rejects_mismatched_logits_and_labels() -> None:
    with pytest.raises(ShapeMismatchError, match=r"labels must have shape \(4,\)"):
        TargetQueries(np.zeros((4, 3)), np.zeros(5, dtype=np.int64))
    with pytest.raises(ShapeMismatchError, match="C >= 2 classes"):
        logit_scaled_confidence(np.zeros((4, 1)), np.zeros(4, dtype=np.int64))
    with pytest.raises(MembershipAttackError, match=r"labels must lie in \[0, 3\)"):
        TargetQueries(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(MembershipAttackError, match="labels must be integers"):
        TargetQueries(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(MembershipAttackError, match="NaN or infinite"):
        TargetQueries(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ShapeMismatchError, match=r"target logits must have shape \(n, C\)"):
        TargetQueries(np.zeros((2, 4, 3)), np.zeros(4, dtype=np.int64))
    with pytest.raises(ShapeMismatchError, match="x has 3 rows"):
        TargetQueries.from_model(
            lambda a: np.zeros((len(a), 2)), np.zeros((3, 2)), np.zeros(4, dtype=np.int64)
        )


def test_rejects_bad_pools() -> None:
    with pytest.raises(ShapeMismatchError, match=r"in_mask must have shape \(4, 6\)"):
        _random_pool(4, 6, np.zeros((4, 5), dtype=bool))
    with pytest.raises(MembershipAttackError, match="in_mask must be boolean"):
        _random_pool(4, 6, np.zeros((4, 6), dtype=np.int64))
    with pytest.raises(ShapeMismatchError, match=r"shape \(k >= 1, n, C\)"):
        ShadowPool(np.zeros((5, 3)), np.zeros(5, dtype=np.int64))


def test_online_lira_needs_two_in_and_two_out_models_per_example_for_per_example_variance() -> None:
    in_mask = np.array([[True] * 5, [False] * 5, [True] * 5, [False] * 5])
    in_mask[2, 3] = False  # example 3: 1 IN, 3 OUT
    pool = _random_pool(4, 5, in_mask)
    queries = TargetQueries(np.zeros((5, 3)), pool.labels)
    with pytest.raises(
        InsufficientShadowsError,
        match=r">= 2 IN shadow model\(s\) per example.*example 3 has 1.*global_variance=True",
    ):
        lira_online(queries, pool)
    assert np.isfinite(lira_online(queries, pool, global_variance=True).scores).all()
    two = _random_pool(2, 5, np.array([[True] * 5, [False] * 5]))
    with pytest.raises(InsufficientShadowsError, match="more IN observations than examples"):
        lira_online(TargetQueries(np.zeros((5, 3)), two.labels), two, global_variance=True)
    only_in = _random_pool(3, 5, np.ones((3, 5), dtype=bool))
    with pytest.raises(InsufficientShadowsError, match="OUT Gaussian fit needs >= 2 OUT"):
        lira_offline(TargetQueries(np.zeros((5, 3)), only_in.labels), only_in)
    with pytest.raises(InsufficientShadowsError, match="both IN and OUT"):
        shadow_model_attack(TargetQueries(np.zeros((5, 3)), only_in.labels), only_in)


def test_lira_rejects_a_pool_queried_on_other_examples() -> None:
    pool = _random_pool(4, 6, np.array([[True] * 6, [True] * 6, [False] * 6, [False] * 6]))
    with pytest.raises(ShapeMismatchError, match="pool has 6 examples, queries have 5"):
        lira_online(TargetQueries(np.zeros((5, 3)), pool.labels[:5]), pool)
    with pytest.raises(ShapeMismatchError, match="labels differ"):
        lira_offline(TargetQueries(np.zeros((6, 3)), (pool.labels + 1) % 3), pool)
    with pytest.raises(ShapeMismatchError, match="shadow models have 3 classes, the target 4"):
        shadow_model_attack(TargetQueries(np.zeros((6, 4)), pool.labels), pool)


def test_rejects_bad_options_and_training_inputs(digits: tuple[np.ndarray, np.ndarray]) -> None:
    queries = TargetQueries(np.zeros((3, 2)), np.array([0, 1, 0]))
    with pytest.raises(MembershipAttackError, match="statistic must be 'loss' or 'scaled_confidence'"):
        loss_threshold_attack(queries, statistic="confidence")  # type: ignore[arg-type]
    with pytest.raises(MembershipAttackError, match="method must be 'classifier' or 'threshold'"):
        shadow_model_attack(queries, _random_pool(2, 3, None), method="svm")  # type: ignore[arg-type]
    scores = MembershipScores("x", np.zeros(3))
    with pytest.raises(ShapeMismatchError, match="one entry per scored example"):
        client_level_attack(scores, np.array([0, 1]))
    with pytest.raises(MembershipAttackError, match="reduce must be 'mean' or 'sum'"):
        client_level_attack(scores, np.array([0, 1, 1]), reduce="max")  # type: ignore[arg-type]
    with pytest.raises(MembershipAttackError, match="client_ids must be integers"):
        client_level_attack(scores, np.array([0.0, 1.0, 1.0]))
    with pytest.raises(MembershipAttackError, match="NaN scores"):
        MembershipScores("x", np.array([0.0, np.nan]))
    x, y = digits[0][:10], digits[1][:10]
    recipe = TrainRecipe(NUM_CLASSES, "mlp", (4,), TrainConfig(epochs=1))
    with pytest.raises(InsufficientShadowsError, match="num_shadows must be an int >= 2"):
        train_shadow_pool(recipe, x, y, num_shadows=1)
    with pytest.raises(ShapeMismatchError, match=r"groups must have shape \(10,\)"):
        train_shadow_pool(recipe, x, y, num_shadows=2, groups=np.zeros(9, dtype=np.int64))
    with pytest.raises(ShapeMismatchError, match="population needs x"):
        train_shadow_pool(recipe, x, y[:9], num_shadows=2)
    with pytest.raises(ShapeMismatchError, match="candidates must have x of shape"):
        train_out_pool(recipe, x, y, x[:, :5], y, num_shadows=2)
    with pytest.raises(MembershipAttackError, match=r"fraction must be in \(0, 1\]"):
        train_out_pool(recipe, x, y, x, y, num_shadows=2, fraction=0.0)
    with pytest.raises(
        ShapeMismatchError, match=r"init_weights must have shape \(\d+,\) for this mlp, got \(3,\)"
    ):
        TrainRecipe(NUM_CLASSES, "mlp", (4,), TrainConfig(epochs=1), init_weights=np.zeros(3, np.float32))(
            x, y, 0
        )
    with pytest.raises(MembershipAttackError, match="num_classes must be >= 2"):
        TrainRecipe(1)
    with pytest.raises(MembershipAttackError, match="dpsgd must be a fl.dpsgd.DPSGDConfig"):
        TrainRecipe(2, dpsgd={"noise_multiplier": 1.0})  # type: ignore[arg-type]


def test_rejects_an_update_of_the_wrong_size(digits: tuple[np.ndarray, np.ndarray]) -> None:
    model = train_target(digits[0][:20], digits[1][:20], epochs=1, hidden=(4,), num_classes=10)
    layout = ParamLayout.from_module(model)
    w = layout.flatten(model)
    with pytest.raises(ShapeMismatchError, match=rf"must both have shape \({layout.size},\)"):
        local_model_from_update(model, layout, w, np.zeros(layout.size - 1, dtype=np.float32))
    with pytest.raises(MembershipAttackError, match="NaN or infinite"):
        local_model_from_update(model, layout, w, np.full(layout.size, np.inf, dtype=np.float32))
