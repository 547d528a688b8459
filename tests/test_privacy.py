from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dp.accountants import PLDAccountant, RDPAccountant
from dp.events import event_from_dict
from fl.cli import main
from fl.config import default_config
from fl.errors import ConfigError
from fl.simulation import Simulation


def _base(run: dict[str, object] | None = None, dropout: dict[str, object] | None = None, **dp: object):  # type: ignore[no-untyped-def]
    return default_config().replace(
        data={"num_clients": 40, "partition": "iid"},
        sampling={"method": "poisson", "rate": 0.25},
        run={"rounds": 8, "centralized_baseline": False, **(run or {})},
        dropout=dropout or {},
        dp={"mode": "central", "target_epsilon": 3.0, "clip": 0.5, **dp},
    )


def _ledger(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


def test_central_dp_spends_what_the_accountant_says(tmp_path: Path) -> None:
    out = Simulation(_base(), out_dir=tmp_path, progress=False).run()
    eps = [r.metrics["dp_epsilon"] for r in out.history if "dp_epsilon" in r.metrics]
    assert len(eps) == 8 and all(a < b for a, b in zip(eps, eps[1:], strict=False))
    assert 0.9 * 3.0 < eps[-1] <= 3.0  # calibrated sigma meets the target without wasting it
    records = _ledger(tmp_path / "privacy_ledger.jsonl")
    assert [r["release"]["round_index"] for r in records] == list(range(8))
    acc = PLDAccountant()
    for r in records:
        acc.compose(event_from_dict(r["release"]["event"]))
    assert acc.get_epsilon(1e-5) == pytest.approx(eps[-1], rel=1e-9)


def test_budget_hard_stop(tmp_path: Path) -> None:
    cfg = _base(noise_multiplier=2.0, epsilon_budget=1.5)  # eps after rounds 1..8: 0.83, 1.05, .., 1.37 (4), .., 1.83
    out = Simulation(cfg, out_dir=tmp_path, progress=False).run()
    stop = out.timing["stopped_by_privacy_budget_at_round"]
    assert 0 < stop < 8 and len(out.history) == stop
    assert out.history[-1].metrics["dp_epsilon"] <= 1.5
    assert len(_ledger(tmp_path / "privacy_ledger.jsonl")) == stop  # nothing released beyond the budget


def test_resume_with_dp_is_bit_identical_and_not_double_counted(tmp_path: Path) -> None:
    cfg = _base()
    full = Simulation(cfg, progress=False).run()
    Simulation(cfg, out_dir=tmp_path, progress=False).run(stop_after=3)
    resumed = Simulation(cfg, out_dir=tmp_path, progress=False).run()
    np.testing.assert_array_equal(resumed.weights, full.weights)
    assert len(_ledger(tmp_path / "privacy_ledger.jsonl")) == 8
    assert resumed.history[-1].metrics["dp_epsilon"] == pytest.approx(full.history[-1].metrics["dp_epsilon"])


@pytest.mark.parametrize(
    ("dp", "run"),
    [
        ({"mode": "local"}, {}),
        ({"mode": "central", "adaptive_clipping": True}, {}),
        ({"mode": "central"}, {"aggregation": "secagg"}),
        ({"mode": "distributed", "accountant": "rdp"}, {"aggregation": "secagg"}),
        ({"mode": "distributed", "accountant": "rdp", "noise": "skellam"}, {"aggregation": "secagg+"}),
    ],
)
def test_modes_run_and_account(dp: dict[str, object], run: dict[str, object]) -> None:
    cfg = _base(run={"rounds": 4, **run}, **dp)
    out = Simulation(cfg, progress=False).run()
    last = out.history[-1].metrics
    assert 0 < last["dp_epsilon"] <= 3.0
    assert out.final_metrics["test_accuracy"] > 0.5
    if dp.get("adaptive_clipping"):
        assert {r.metrics["dp_clip"] for r in out.history} != {0.5}  # the clip norm moved


def test_distributed_epsilon_uses_actual_survivors() -> None:
    cfg = _base(run={"rounds": 3, "aggregation": "secagg"}, dropout={"rate": 0.3, "phase": "after_training"},
                mode="distributed", accountant="rdp")
    sim = Simulation(cfg, progress=False)
    out = sim.run()
    records = sim.aggregator.ledger.releases()  # type: ignore[attr-defined]
    for rec, r in zip(records, out.history, strict=True):
        assert rec.event["event"]["num_clients"] == len(r.contributing)
    acc = RDPAccountant()
    for rec in records:
        acc.compose(event_from_dict(rec.event))
    assert acc.get_epsilon(1e-5) == pytest.approx(out.history[-1].metrics["dp_epsilon"])


def test_a_round_that_would_overspend_stops_the_run_instead_of_crashing(tmp_path: Path) -> None:
    # Distributed DP is calibrated for the expected cohort but priced at the actual survivors: with 30 clients
    # at q = 0.5 a small cohort costs more than planned, and the ledger refuses the release that overspends.
    cfg = default_config().replace(
        data={"num_clients": 30, "partition": "iid"}, sampling={"method": "poisson", "rate": 0.5},
        run={"rounds": 3, "aggregation": "secagg+", "centralized_baseline": False},
        dp={"mode": "distributed", "accountant": "rdp", "target_epsilon": 8.0, "clip": 0.3},
    )
    out = Simulation(cfg, out_dir=tmp_path, progress=False).run()
    assert out.timing["stopped_by_privacy_budget_at_round"] == len(out.history) < 3
    spent = out.history[-1].metrics["dp_epsilon"]
    assert spent <= 8.0
    ledger = [json.loads(line) for line in (tmp_path / "privacy_ledger.jsonl").read_text().splitlines()]
    releases = [rec for rec in ledger if "seq" in rec]  # the first line is the ledger's header
    assert len(releases) == len(out.history)  # the refused round left no trace and changed no weights


@pytest.mark.parametrize(
    ("dp", "run", "key"),
    [
        ({"mode": "distributed", "accountant": "rdp"}, {"aggregation": "plain"}, "run.aggregation"),
        ({"mode": "distributed"}, {"aggregation": "secagg"}, "dp.accountant"),
        ({"mode": "lots"}, {}, "dp.mode"),
    ],
)
def test_config_errors(dp: dict[str, object], run: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        default_config().replace(dp=dp, run=run)
    assert info.value.key == key


def test_budget_command_plans_epsilon(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[data]\nnum_clients = 100\n[sampling]\nmethod = "poisson"\nrate = 0.2\n'
        '[dp]\nmode = "central"\ntarget_epsilon = 3.0\n[run]\nrounds = 50\n'
    )
    assert main(["budget", str(cfg), "--points", "5"]) == 0
    text = capsys.readouterr().out
    lines = [line.split() for line in text.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [int(x[0]) for x in lines] == [10, 20, 30, 40, 50]
    eps = [float(x[1]) for x in lines]
    assert all(a < b for a, b in zip(eps, eps[1:], strict=False)) and 2.9 < eps[-1] <= 3.0
    assert "noise multiplier (calibrated)" in text


def test_dpsgd_clients_report_sample_level_epsilon_and_resume(tmp_path: Path) -> None:
    cfg = default_config().replace(
        run={"rounds": 4, "centralized_baseline": False},
        client={"dpsgd_noise_multiplier": 1.0, "dpsgd_max_grad_norm": 1.0},
        sampling={"clients_per_round": 5},
    )
    full = Simulation(cfg, progress=False).run()
    eps = [r.metrics["dpsgd_epsilon_max"] for r in full.history]
    assert all(a <= b for a, b in zip(eps, eps[1:], strict=False)) and eps[-1] > 0
    assert full.history[-1].metrics["dpsgd_epsilon_mean"] <= eps[-1]
    assert full.final_metrics["test_accuracy"] > 0.8
    Simulation(cfg, out_dir=tmp_path, progress=False).run(stop_after=2)
    resumed = Simulation(cfg, out_dir=tmp_path, progress=False).run()
    np.testing.assert_array_equal(resumed.weights, full.weights)
    assert resumed.history[-1].metrics["dpsgd_epsilon_max"] == full.history[-1].metrics["dpsgd_epsilon_max"]
