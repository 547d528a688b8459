"""Every script in examples/ runs (with fast settings) as part of the test suite."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_strategies(capsys) -> None:  # type: ignore[no-untyped-def]
    results = _load("compare_strategies").main(["--rounds", "5"])
    assert set(results) == {"fedavg", "fedprox (mu=0.1)", "fedadam (lr=0.05)", "centralized"}
    assert all(0.5 < acc <= 1.0 for acc in results.values())
    assert "centralized" in capsys.readouterr().out


def test_secure_sum_numpy(capsys) -> None:  # type: ignore[no-untyped-def]
    one_call_error, sans_io_error = _load("secure_sum_numpy").main(["--clients", "6", "--length", "200"])
    # decoding error < n * 2^-20 per coordinate
    assert one_call_error < 7 * 2.0**-20 and sans_io_error < 6 * 2.0**-20
    out = capsys.readouterr().out
    assert "recovered dropouts (999,)" in out and "dropped (2,)" in out


def test_dp_privacy_utility(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rows = _load("dp_privacy_utility").main(
        ["--clients", "100", "--rounds", "5", "--epsilons", "1", "8", "--out", str(tmp_path)]
    )
    assert [r["target_epsilon"] for r in rows] == [None, 8.0, 1.0]
    for r in rows[1:]:
        assert r["epsilon_spent"] <= r["target_epsilon"] and r["epsilon_spent"] > 0.9 * r["target_epsilon"]
    assert rows[2]["noise_multiplier"] > rows[1]["noise_multiplier"]  # a smaller epsilon needs more noise
    assert (tmp_path / "curve.png").exists() and (tmp_path / "curve.json").exists()


def test_hospitals_secagg_dp(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    import pytest

    from dp import GaussianEvent, PLDAccountant, PoissonSampledEvent, RDPAccountant, event_from_dict

    fast = ["--clients", "30", "--rounds", "3", "--rate", "0.5", "--epsilon", "4"]
    dist = _load("hospitals_secagg_dp").main([*fast, "--out", str(tmp_path / "distributed")])
    assert dist["rounds_run"] == 3 and dist["ledger_releases"] == 3 and not dist["stopped_by_budget"]
    assert dist["mechanisms"] == ["distributed:discrete_gaussian"]
    assert dist["ledger_epsilon"] == dist["epsilon_spent"] == dist["epsilon_per_round"][-1]
    eps = dist["epsilon_per_round"]
    assert 0 < eps[0] < eps[1] < eps[2] <= dist["epsilon_budget"] == 5.0
    assert dist["accuracy"] > 0.9
    # Replay the ledger file into a fresh RDP accountant: every round is priced at its realised cohort.
    lines = (tmp_path / "distributed" / "privacy_ledger.jsonl").read_text().splitlines()
    releases = [json.loads(line)["release"] for line in lines[1:]]
    assert [r["event"]["event"]["num_clients"] for r in releases] == dist["cohorts"]
    replay = RDPAccountant()
    for release in releases:
        replay.compose(event_from_dict(release["event"]))
    assert replay.get_epsilon(1e-5) == pytest.approx(dist["epsilon_spent"], rel=1e-9)
    assert (tmp_path / "distributed" / "summary.json").exists()

    central = _load("hospitals_secagg_dp").main([*fast, "--mode", "central", "--out", str(tmp_path / "central")])
    reference = PLDAccountant()
    reference.compose(PoissonSampledEvent(0.5, GaussianEvent(central["noise_multiplier"])), 3)
    assert central["epsilon_spent"] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert 0.99 * 4 < central["epsilon_spent"] <= 4  # calibrated to the target, which is the hard budget
    assert central["mechanisms"] == ["central:gaussian"] and central["accuracy"] > 0.9


def test_ckks_torch_model(capsys) -> None:  # type: ignore[no-untyped-def]
    result = _load("ckks_torch_model").main(["--clients", "4", "--rounds", "2"])
    assert 0 < result["max_error"] <= result["error_bound"] < 1e-3  # flooded, so never exact
    assert result["weight_drift"] < 1e-3  # two rounds of CKKS FedAvg stay on the plaintext trajectory
    assert result["accuracy"] > 0.9 and abs(result["accuracy"] - result["plain_accuracy"]) <= 0.01
    assert result["num_parameters"] == 30 * 16 + 16 + 16 * 2 + 2
    # one COMPACT ciphertext: 2 polynomials x 4096 coefficients in 64-bit words, plus framing
    assert 2 * 4096 * 8 <= result["update_bytes"] < 1.05 * 2 * 4096 * 8
    assert "max weight difference" in capsys.readouterr().out


def test_plan_dp_budget(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    import pytest

    from dp import GaussianEvent, PLDAccountant, PoissonSampledEvent

    plan = _load("plan_dp_budget").main(
        ["--clients", "1000", "--rate", "0.05", "--rounds", "50", "--clip", "0.5", "--epsilon", "2",
         "--sigma", "1.0", "--points", "5", "--out", str(tmp_path)]
    )
    sigma, curves, reached = plan["sigma"], plan["curves"], plan["epsilon_reached"]
    for name in ("pld", "rdp"):
        assert 0.99 * 2 <= reached[name] <= 2  # the calibrated σ lands on the target within 1 %
        assert [t for t, _ in curves[name]] == [10, 20, 30, 40, 50]
        eps = [e for _, e in curves[name]]
        assert all(a < b for a, b in zip(eps, eps[1:], strict=False))  # more rounds, more ε
        assert plan["noise_std_on_mean"][name] == sigma[name] * 0.5 / 50
    assert all(p <= r for (_, p), (_, r) in zip(curves["pld"], curves["rdp"], strict=True))  # PLD is tighter
    assert sigma["pld"] < sigma["rdp"] and plan["rounds_for_budget"]["pld"] > plan["rounds_for_budget"]["rdp"]
    assert curves["pld"][-1][1] == reached["pld"]

    def pld_epsilon(noise: float, rounds: int) -> float:
        accountant = PLDAccountant()
        accountant.compose(PoissonSampledEvent(0.05, GaussianEvent(noise)), rounds)
        return accountant.get_epsilon(1e-5)

    assert pld_epsilon(sigma["pld"], 50) == pytest.approx(reached["pld"], rel=1e-9)
    affordable = plan["rounds_for_budget"]["pld"]
    assert pld_epsilon(1.0, affordable) <= 2 < pld_epsilon(1.0, affordable + 1)  # the largest T that fits
    assert json.loads((tmp_path / "plan.json").read_text())["rounds_for_budget"] == plan["rounds_for_budget"]


def test_attack_own_pipeline(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = _load("attack_own_pipeline").main(["--sigmas", "1", "--shadows", "8", "--out", str(tmp_path)])
    assert result["test_accuracy"] > 0.85
    psnr, attackers = result["psnr"], result["attackers"]
    assert attackers == {"none": "ig", "clip 0.3": "ig-adaptive-clip", "clip 0.3 + σ 1": "ig-adaptive-clip-noise"}
    assert result["psnr_undefended"] == psnr["none"] > 30
    assert psnr["clip 0.3"] > 30  # clipping alone: the adaptive (scale-free) attacker still wins
    assert result["psnr_defended"] == psnr["clip 0.3 + σ 1"] < 15
    assert result["psnr_undefended"] > result["psnr_defended"] + 10
    reports = result["membership"]
    assert all(r["n_members"] == r["n_nonmembers"] == 72 for r in reports.values())
    assert reports["update, offline LiRA"]["auc"] > 0.6 > reports["global model, loss threshold"]["auc"]
    assert (tmp_path / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "attacks.json").exists()
