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
