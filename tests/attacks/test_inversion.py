"""Gradient inversion on sklearn digits (8x8, [0, 1]) with small sigmoid models, batch size 1 unless said.

Budgets are small so the file runs in well under a minute on two cores; every run is seeded.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from attacks import inversion
from attacks.inversion import (
    AttackConfigError,
    DivergenceError,
    InversionError,
    InversionResult,
    Observation,
    ObservationError,
    add_noise,
    aggregate_observations,
    apply_defences,
    attack,
    clip_update,
    infer_label_counts,
    infer_labels,
    observe_gradient,
    observe_update,
    quantize,
    score_reconstruction,
    topk,
)
from attacks.metrics import match_reconstructions
from fl.client import TrainConfig
from fl.data import load_digits
from fl.models import build_model

DIGITS = load_digits()


def _mlp(hidden: tuple[int, ...] = (32,), seed: int = 0) -> nn.Module:
    return build_model("mlp", (1, 8, 8), 10, hidden=hidden, seed=seed, activation="sigmoid")


def _cnn(seed: int = 0) -> nn.Module:
    return build_model("cnn", (1, 8, 8), 10, seed=seed, activation="sigmoid")


def _digits(*index: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.asarray(index)
    return DIGITS.x[idx], DIGITS.y[idx]


def _psnr(result: InversionResult, truth: np.ndarray) -> float:
    """Mean PSNR (dB) after the optimal one-to-one pairing of reconstructions with the truth."""
    match = match_reconstructions(result.inputs, truth, "psnr", data_range=1.0)
    return float(np.mean(np.minimum(match.values, 200.0)))  # exact pairs read as inf: cap for the mean


def _inline_psnr(a: torch.Tensor, b: np.ndarray) -> float:
    mse = float(((a.double() - torch.from_numpy(b).double()) ** 2).mean())
    return 10 * math.log10(1 / max(mse, 1e-20))


def _rms(obs: Observation) -> float:
    return float(np.linalg.norm(obs.vector) / math.sqrt(obs.vector.size))


# ------------------------------------------------------------------------------------------
# No defence: DLG, iDLG, IG reach >= 35 dB
# ------------------------------------------------------------------------------------------


def test_dlg_and_ig_reconstruct_a_digit_from_a_sigmoid_mlp_gradient() -> None:
    x, y = _digits(0)
    obs = observe_gradient(_mlp(), x, y)
    dlg = attack(obs, "dlg", restarts=1, max_iterations=100, seed=0)
    ig = attack(obs, "ig", restarts=1, max_iterations=300, seed=0)
    assert dlg.attacker == "dlg" and ig.attacker == "ig"
    assert _psnr(dlg, x) >= 35 and _inline_psnr(dlg.inputs, x) >= 35
    assert _psnr(ig, x) >= 35
    assert dlg.labels.tolist() == ig.labels.tolist() == y.tolist()
    assert dlg.inputs.shape == (1, 1, 8, 8) and dlg.restarts == 1 and dlg.wall_time > 0


def test_idlg_reconstructs_a_digit_from_a_sigmoid_cnn_gradient() -> None:
    x, y = _digits(5)
    result = attack(observe_gradient(_cnn(), x, y), "idlg", restarts=1, max_iterations=150, seed=0)
    assert result.attacker == "idlg"
    assert result.labels.tolist() == y.tolist()
    assert _psnr(result, x) >= 35


def test_idlg_label_recovery_is_right_in_at_least_99_percent_of_trials() -> None:
    rng = np.random.default_rng(0)
    models = [_mlp(seed=1), _cnn(seed=1), build_model("mlp", (1, 8, 8), 10, hidden=(32,), seed=2)]  # + ReLU
    hits = trials = 0
    for model in models:
        for i in rng.choice(len(DIGITS.y), 100, replace=False):
            x, y = _digits(int(i))
            hits += int(infer_labels(observe_gradient(model, x, y))[0] == y[0])
            trials += 1
    assert hits / trials >= 0.99


def test_batch_label_counts_recover_the_label_multiset() -> None:
    rng = np.random.default_rng(1)
    model = _mlp()
    exact = 0
    for _ in range(10):
        idx = rng.choice(len(DIGITS.y), 16, replace=False)
        obs = observe_gradient(model, DIGITS.x[idx], DIGITS.y[idx])
        counts = infer_label_counts(obs)
        assert counts.sum() == 16
        exact += int(np.array_equal(counts, np.bincount(DIGITS.y[idx], minlength=10)))
    assert exact >= 9


def test_ig_reconstructs_a_batch_of_four() -> None:
    x, y = _digits(10, 11, 12, 13)
    result = attack(observe_gradient(_mlp(), x, y), "ig", restarts=1, max_iterations=500, seed=0)
    assert sorted(result.labels.tolist()) == sorted(y.tolist())
    assert _psnr(result, x) >= 35


# ------------------------------------------------------------------------------------------
# FedAvg updates: unrolled local SGD
# ------------------------------------------------------------------------------------------


def test_multi_step_fedavg_update_is_inverted_by_unrolling_local_sgd() -> None:
    x, y = _digits(20, 21)
    model = _mlp()
    cfg = TrainConfig(epochs=2, batch_size=1, lr=0.5)  # 4 local steps, minibatch order from seed 3
    obs = observe_update(model, x, y, cfg, seed=3)
    unrolled = attack(obs, "idlg", restarts=1, max_iterations=100, seed=0)
    assert _psnr(unrolled, x) >= 35
    assert unrolled.labels.tolist() == y.tolist()  # the label multiset was placed in the right slots
    assert _psnr(attack(obs, "ig", restarts=1, max_iterations=300, seed=0), x) >= 35
    # The FedSGD reading of the same update (one gradient step) is far off.
    as_gradient = Observation(model, obs.weights, obs.vector / (cfg.lr * 4), (1, 8, 8), 2, "gradient")
    naive = attack(as_gradient, "idlg", restarts=1, max_iterations=100, seed=0)
    assert _psnr(naive, x) < _psnr(unrolled, x) - 20


# ------------------------------------------------------------------------------------------
# Defences: noise, secure aggregation, clipping, top-k, quantisation
# ------------------------------------------------------------------------------------------


def test_psnr_falls_as_gaussian_noise_grows() -> None:
    x, y = _digits(3)
    obs = observe_gradient(_mlp(), x, y)
    rms = _rms(obs)
    psnrs = []
    for relative in (0.0, 0.3, 3.0):
        noisy = apply_defences(obs, noise_std=relative * rms, seed=1) if relative else obs
        psnrs.append(_psnr(attack(noisy, restarts=2, max_iterations=400, seed=0), x))
    assert psnrs[0] >= 35
    assert psnrs[0] > psnrs[1] + 10 > psnrs[2] + 15


def test_psnr_falls_as_more_clients_are_summed() -> None:
    model = _mlp()
    idx = np.random.default_rng(0).choice(len(DIGITS.y), 32, replace=False)
    scores = []
    for clients in (1, 4, 16):
        shards = [idx[2 * k : 2 * k + 2] for k in range(clients)]  # two examples per client
        total = aggregate_observations([observe_gradient(model, DIGITS.x[s], DIGITS.y[s]) for s in shards])
        result = attack(total, restarts=1, max_iterations=500, seed=0)
        assert result.inputs.shape == (2 * clients, 1, 8, 8) and result.num_clients == clients
        score = score_reconstruction(result, DIGITS.x[idx[: 2 * clients]], target_client=0)
        assert score.best_psnr >= score.target_psnr
        scores.append(score.target_psnr)
    assert result.attacker == "ig-adaptive-secagg"
    assert scores[0] >= 35
    assert scores[0] > scores[1] + 10 > scores[2] + 20


def test_adaptive_attacker_beats_the_naive_one_against_clipping() -> None:
    x, y = _digits(0)
    obs = observe_gradient(_mlp(), x, y)
    clipped = apply_defences(obs, clip=0.1 * float(np.linalg.norm(obs.vector)))
    naive = attack(clipped, "idlg", adaptive=False, restarts=1, max_iterations=100, seed=0)
    adaptive = attack(clipped, "idlg", restarts=1, max_iterations=100, seed=0)
    assert naive.attacker == "idlg" and adaptive.attacker == "idlg-adaptive-clip"
    assert _psnr(adaptive, x) >= 35
    assert _psnr(naive, x) < 15


def test_adaptive_attacker_beats_the_naive_one_against_top10_sparsification() -> None:
    # Top-10% of this model's gradient is almost all last-layer weights: they pin the 128 hidden
    # activations, which pin the 64 pixels, but only for an attacker that ignores the unsent zeros.
    x, y = _digits(3)
    sparse = apply_defences(observe_gradient(_mlp(hidden=(128,)), x, y), topk_fraction=0.1)
    for method in ("idlg", "ig"):
        naive = attack(sparse, method, adaptive=False, restarts=1, max_iterations=200, seed=0)
        adaptive = attack(sparse, method, restarts=1, max_iterations=200, seed=0)
        assert adaptive.attacker == f"{method}-adaptive-topk"
        assert _psnr(adaptive, x) >= 30
        assert _psnr(naive, x) < 20


def test_adaptive_attacker_inverts_an_8_bit_quantised_gradient() -> None:
    x, y = _digits(0)
    quantised = apply_defences(observe_gradient(_mlp(), x, y), quantization_levels=257)
    result = attack(quantised, "ig", restarts=1, max_iterations=300, seed=0)
    assert result.attacker == "ig-adaptive-quant"
    assert _psnr(result, x) >= 30


def test_clipping_plus_enough_noise_defeats_both_attackers() -> None:
    x, y = _digits(0)
    obs = observe_gradient(_mlp(), x, y)
    bound = 0.5 * float(np.linalg.norm(obs.vector))
    defended = apply_defences(obs, clip=bound, noise_std=bound, seed=2)  # DP-FedAvg, noise multiplier 1
    naive = attack(defended, "idlg", adaptive=False, restarts=1, max_iterations=100, seed=0)
    adaptive = attack(defended, restarts=2, max_iterations=300, seed=0)
    assert adaptive.attacker == "ig-adaptive-clip-noise"
    assert _psnr(naive, x) < 15 and _psnr(adaptive, x) < 15


# ------------------------------------------------------------------------------------------
# Robustness: divergence guard, determinism, typed errors
# ------------------------------------------------------------------------------------------


def _nan_for_first_calls(calls: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    original = inversion._l2_distance
    seen = {"n": 0}

    def poisoned(simulated: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        seen["n"] += 1
        value = original(simulated, observed)
        return value * float("nan") if seen["n"] <= calls else value

    return poisoned


def test_divergence_guard_restarts_instead_of_crashing(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _digits(0)
    obs = observe_gradient(_mlp(), x, y)
    # Poison the objective midway through the first attempt only: from its 5th evaluation on, NaN.
    attempt = {"n": 0, "calls": 0}
    original_init, original_l2 = inversion._initial_inputs, inversion._l2_distance

    def counting_init(*args: object) -> torch.Tensor:
        attempt["n"] += 1
        return original_init(*args)  # type: ignore[arg-type]

    def poisoned(simulated: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        attempt["calls"] += 1
        value = original_l2(simulated, observed)
        return value * float("nan") if attempt["n"] == 1 and attempt["calls"] >= 5 else value

    monkeypatch.setattr(inversion, "_initial_inputs", counting_init)
    monkeypatch.setattr(inversion, "_l2_distance", poisoned)
    result = attack(obs, "idlg", restarts=2, max_iterations=100, seed=0)
    assert result.diverged == 1 and result.restarts == 3 and attempt["n"] == 3
    assert math.isnan(result.restart_losses[0]) and all(map(math.isfinite, result.restart_losses[1:]))
    assert _psnr(result, x) >= 35


def test_adam_divergence_guard_and_all_restarts_diverging(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _digits(0)
    obs = observe_gradient(_mlp(), x, y)
    original = inversion._cosine_distance
    monkeypatch.setattr(inversion, "_cosine_distance", lambda a, b: original(a, b) * float("inf"))
    with pytest.raises(DivergenceError, match="diverged"):
        attack(obs, "ig", restarts=2, max_iterations=20, seed=0)
    monkeypatch.setattr(inversion, "_l2_distance", _nan_for_first_calls(10**9))
    with pytest.raises(InversionError):
        attack(obs, "dlg", restarts=1, max_iterations=20, seed=0)


def test_attacks_are_deterministic_for_a_seed() -> None:
    x, y = _digits(7, 8)
    obs = observe_gradient(_mlp(), x, y)
    a = attack(obs, "ig", restarts=2, max_iterations=60, seed=4)
    b = attack(obs, "ig", restarts=2, max_iterations=60, seed=4)
    c = attack(obs, "ig", restarts=2, max_iterations=60, seed=5)
    assert torch.equal(a.inputs, b.inputs) and a.restart_losses == b.restart_losses
    assert not torch.equal(a.inputs, c.inputs)
    d = attack(obs, "dlg", restarts=1, max_iterations=15, seed=4)
    e = attack(obs, "dlg", restarts=1, max_iterations=15, seed=4)
    assert torch.equal(d.inputs, e.inputs) and torch.equal(d.labels, e.labels)
    state = torch.random.get_rng_state()
    attack(obs, "dlg", restarts=1, max_iterations=2, seed=9)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone


def test_bad_inputs_raise_typed_errors() -> None:
    model = _mlp()
    x, y = _digits(0)
    obs = observe_gradient(model, x, y)
    with pytest.raises(ObservationError, match="shape"):
        Observation(model, obs.weights, obs.vector[:-1], (1, 8, 8), 1)
    with pytest.raises(ObservationError, match="feature shape"):
        Observation(model, obs.weights, obs.vector, (1, 7, 7), 1)
    with pytest.raises(ObservationError, match="batch_size"):
        Observation(model, obs.weights, obs.vector, (1, 8, 8), 0)
    with pytest.raises(ObservationError, match="num_summed"):
        Observation(model, obs.weights, obs.vector, (1, 8, 8), 1, num_summed=0)
    with pytest.raises(ObservationError, match="TrainConfig"):
        Observation(model, obs.weights, obs.vector, (1, 8, 8), 1, "update")
    with pytest.raises(ObservationError, match="topk_mask"):
        Observation(model, obs.weights, obs.vector, (1, 8, 8), 1, topk_mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ObservationError):
        observe_gradient(model, x, y[:0])
    with pytest.raises(AttackConfigError, match="unknown method"):
        attack(obs, "gradient-magic")
    with pytest.raises(AttackConfigError, match="restarts"):
        attack(obs, "dlg", restarts=0)
    with pytest.raises(AttackConfigError, match="labels"):
        attack(obs, "idlg", labels=np.array([0, 1]))
    with pytest.raises(ValueError):  # the typed errors are ValueErrors too
        attack(obs, "ig", bounds=(1.0, 0.0))
    with pytest.raises(ObservationError, match="before aggregating"):
        apply_defences(aggregate_observations([obs, obs]), clip=1.0)


# ------------------------------------------------------------------------------------------
# Defence transforms and the attacker's choices
# ------------------------------------------------------------------------------------------


def test_defence_transforms() -> None:
    rng = np.random.default_rng(0)
    vec = rng.standard_normal(1000).astype(np.float32)
    clipped = clip_update(vec, 2.0)
    assert np.linalg.norm(clipped) == pytest.approx(2.0, rel=1e-5)
    np.testing.assert_array_equal(clip_update(vec, 1e6), vec)
    sent, mask = topk(vec, 0.1)
    assert mask.sum() == 100 and np.all(sent[~mask] == 0) and np.array_equal(sent[mask], vec[mask])
    assert np.abs(vec[mask]).min() >= np.abs(vec[~mask]).max()
    levels = quantize(vec, 9)
    step = 2 * np.abs(vec).max() / 8
    assert len(np.unique(levels)) <= 9 and np.abs(levels - vec).max() <= step / 2 + 1e-6
    noisy_a = add_noise(vec, 0.5, np.random.default_rng(3))
    noisy_b = add_noise(vec, 0.5, torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(noisy_a, add_noise(vec, 0.5, np.random.default_rng(3)))
    assert noisy_b.dtype == np.float32 and 0.4 < float(np.std(noisy_b - vec)) < 0.6
    with pytest.raises(ObservationError):
        topk(vec, 0.0)
    with pytest.raises(ObservationError):
        quantize(vec, 1)


def test_auto_names_the_adaptive_attacker_for_the_defences_present() -> None:
    x, y = _digits(0)
    obs = observe_gradient(_mlp(), x, y)

    def name(o: Observation, adaptive: bool = True) -> str:
        return attack(o, adaptive=adaptive, restarts=1, max_iterations=2).attacker

    assert name(obs) == "idlg"
    defended = apply_defences(obs, clip=0.1, topk_fraction=0.2)
    assert name(defended) == "idlg-adaptive-clip-topk"
    assert name(defended, adaptive=False) == "idlg"
    noisy = apply_defences(obs, noise_std=0.01, quantization_levels=16)
    assert name(noisy) == "ig-adaptive-noise-quant"
    assert noisy.defences == ("noise", "quant") and "vector" not in repr(noisy)


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(epochs=2, batch_size=2, lr=0.3),
        TrainConfig(epochs=1, batch_size=1, lr=0.2, momentum=0.9, weight_decay=1e-3, mu=0.1),
        TrainConfig(epochs=1, batch_size=0, lr=0.5),
    ],
)
def test_simulated_observation_matches_fedshield_at_the_true_inputs(config: TrainConfig) -> None:
    # The attacker's differentiable replay of local training must reproduce fl.client.local_train exactly.
    model = _mlp()
    x, y = _digits(30, 31, 32)
    obs = observe_update(model, x, y, config, seed=7)
    simulator = inversion._Simulator(obs, clients=1, clip=None)
    replay = simulator(torch.from_numpy(x), torch.nn.functional.one_hot(torch.from_numpy(y), 10).float())
    np.testing.assert_allclose(replay.detach().numpy(), obs.vector, rtol=1e-4, atol=1e-6)


def test_simulated_secure_sum_of_clipped_clients_matches() -> None:
    model = _mlp()
    x, y = _digits(40, 41, 42, 43)
    clients = [apply_defences(observe_gradient(model, x[2 * k : 2 * k + 2], y[2 * k : 2 * k + 2]), clip=0.05)
               for k in range(2)]
    total = aggregate_observations(clients)
    assert total.num_summed == 2 and total.clip == 0.05 and total.defences == ("clip", "secagg")
    simulator = inversion._Simulator(total, clients=2, clip=0.05)
    replay = simulator(torch.from_numpy(x), torch.nn.functional.one_hot(torch.from_numpy(y), 10).float())
    np.testing.assert_allclose(replay.detach().numpy(), total.vector, rtol=1e-4, atol=1e-7)
