"""`fedshield audit`: the defence x attack grid, its resume marker, reproducibility and config errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

import attacks.harness as harness
from attacks.harness import (
    AttackSettings,
    AuditConfig,
    DefenceSpec,
    TaskSpec,
    audit_config_from_dict,
    default_audit_config,
    load_audit_config,
    run_audit,
    strip_timing,
)
from fl.cli import main
from fl.errors import ConfigError

FAST_ATTACKS = AttackSettings(
    inversion_clients=2, inversion_restarts=1, inversion_iterations=60, membership_rounds=3,
    canary_count=200, canary_dim=50,
)


def tiny_config(defences: tuple[str, ...] = ("none", "SecAgg", "central DP eps=1")) -> AuditConfig:
    full = default_audit_config()
    tasks = tuple(
        TaskSpec(t.name, t.config.replace(run={"rounds": 3, "eval_every": 3}, data={"num_clients": 30}))
        for t in full.tasks
    )
    chosen = tuple(d for d in full.defences if d.name in defences)
    return AuditConfig(tasks, chosen, (0,), FAST_ATTACKS)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("audit")
    return out, run_audit(tiny_config(), out, progress=False)


def _cell(results: dict, task: str, defence: str) -> dict:  # type: ignore[type-arg]
    return next(c for c in results["cells"] if c["task"] == task and c["defence"] == defence)


def test_grid_measures_every_cell_and_shows_the_expected_orderings(tiny_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    out, results = tiny_run
    assert {(c["task"], c["defence"]) for c in results["cells"]} == {
        (t, d) for t in ("hospitals", "digits") for d in ("none", "SecAgg", "central DP eps=1")
    }
    for name in ("results.json", "report.md", "report.html"):
        assert (out / name).stat().st_size > 1000
    saved = json.loads((out / "results.json").read_text())
    assert saved["audit_config"] == tiny_config().to_dict() and saved["seeds"] == [0]
    assert {"python", "numpy", "torch", "tenseal", "cryptography"} <= set(saved["versions"])

    none, secagg, dp = (_cell(results, "digits", d) for d in ("none", "SecAgg", "central DP eps=1"))
    # no defence: the server reconstructs the client's digit almost exactly and reads its label
    assert none["inversion"]["client"]["psnr"] > 40 and none["inversion"]["client"]["label_accuracy"] == 1.0
    # SecAgg hides the single update, yet the 2-client aggregate still gives the images away
    assert secagg["inversion"]["client"] == {"observable": False, "sees": "masked vector, uniform in Z_2^b"}
    assert secagg["inversion"]["aggregate"]["psnr"] > none["inversion"]["prior_psnr"] + 10
    # central DP trusts the server: the update it sees is only clipped ...
    assert dp["privacy"]["server_sees_client_updates"] and dp["inversion"]["client"]["observable"]
    # ... but its noisy release defeats the adaptive attacker
    assert dp["inversion"]["aggregate"]["psnr"] < none["inversion"]["prior_psnr"] + 3
    assert dp["inversion"]["aggregate"]["attacker"].startswith("ig-adaptive-clip-noise")
    for task in ("hospitals", "digits"):
        plain, private = _cell(results, task, "none"), _cell(results, task, "central DP eps=1")
        assert plain["privacy"]["epsilon"] is None and plain["audit"]["audit_run_accountant_epsilon"] is None
        assert 0.9 < private["privacy"]["epsilon"] <= 1.0
        assert private["audit"]["epsilon_lower_bound"] < plain["audit"]["epsilon_lower_bound"]
        assert private["audit"]["epsilon_lower_bound"] <= private["privacy"]["epsilon"]
        assert not private["audit"]["flagged"]
        mia = private["membership"]["aggregate"]
        assert set(mia["attacks"]) == {"loss_threshold", "calibrated", "gradient_alignment"}
        assert mia["auc"] == max(a["auc"] for a in mia["attacks"].values())
        assert len(mia["roc"]["fpr"]) == len(mia["roc"]["tpr"]) >= 2
    assert _cell(results, "hospitals", "none")["inversion"] is None  # tabular: no image probe
    claims = {(c["task"], c["claim"]): c["holds"] for c in results["checks"]}
    assert claims[("digits", "no defence leaks most (per-client inversion PSNR)")] is True
    assert claims[("digits", "DP lowers the audit's ε lower bound")] is True
    assert claims[("hospitals", "no DP cell's audit bound exceeds its accountant ε")] is True


def test_rerun_reproduces_every_figure_but_timings(tiny_run: tuple[Path, dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    _, first = tiny_run
    second = run_audit(tiny_config(), tmp_path, progress=False)
    assert strip_timing(second) == strip_timing(first)
    assert "cost" in first["cells"][0] and "timing" in first


def test_ckks_cells_agree_across_reruns_up_to_fresh_encryption_noise(tmp_path: Path) -> None:
    full = default_audit_config()
    task = TaskSpec("hospitals", full.tasks[0].config.replace(run={"rounds": 3, "eval_every": 3},
                                                              data={"num_clients": 30}))
    cfg = AuditConfig((task,), tuple(d for d in full.defences if d.name == "CKKS"), (0,),
                      dataclasses.replace(FAST_ATTACKS, inversion=False))
    first, second = (run_audit(cfg, tmp_path / name, progress=False)["cells"][0] for name in ("a", "b"))
    assert first["utility"]["test_accuracy"] == second["utility"]["test_accuracy"]
    assert first["utility"]["test_loss"] == pytest.approx(second["utility"]["test_loss"], rel=1e-4)
    assert first["audit"] == second["audit"]
    for view in ("aggregate",):
        assert first["membership"][view]["auc"] == pytest.approx(second["membership"][view]["auc"], abs=0.01)


def test_interrupted_grid_resumes_from_finished_cells(tiny_run: tuple[Path, dict], tmp_path: Path,  # type: ignore[type-arg]
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    src, first = tiny_run
    (tmp_path / "cells").mkdir()
    finished = sorted((src / "cells").glob("*.json"))
    assert len(finished) == 2 + 6  # two centralised baselines and six cells
    for p in finished:
        (tmp_path / "cells" / p.name).write_text(p.read_text())
    (tmp_path / "audit-config.json").write_text((src / "audit-config.json").read_text())
    victim = next(p for p in finished if p.name.startswith("digits-") and "__secagg-" in p.name)
    (tmp_path / "cells" / victim.name).unlink()  # the grid was interrupted in this cell
    calls: list[str] = []
    real = harness.run_cell

    def counting(config, attacks_cfg, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(config.run.aggregation)
        return real(config, attacks_cfg, **kwargs)

    monkeypatch.setattr(harness, "run_cell", counting)
    resumed = run_audit(tiny_config(), tmp_path, progress=False)
    assert calls == ["secagg"]
    assert strip_timing(resumed) == strip_timing(first)


def test_an_output_directory_of_another_grid_is_refused(tiny_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    out, _ = tiny_run
    other = dataclasses.replace(tiny_config(), seeds=(1,))
    with pytest.raises(ConfigError, match="different configuration"):
        run_audit(other, out, progress=False)


def test_similar_defence_names_get_distinct_cell_files() -> None:
    assert harness._slug("SecAgg") != harness._slug("SecAgg+")
    assert all(ch.isalnum() or ch == "-" for ch in harness._slug("top-10% + SecAgg / ../x"))


def test_default_config_round_trips_through_toml(tmp_path: Path) -> None:
    cfg = default_audit_config()
    path = tmp_path / "audit.toml"
    path.write_text(cfg.to_toml())
    assert load_audit_config(path).to_dict() == cfg.to_dict()
    assert len(cfg.cells()) == 24 and len({d.name for d in cfg.defences}) == 12


def _raw() -> dict:  # type: ignore[type-arg]
    return {"task": [{"name": "t", "data": {"name": "breast_cancer"}}], "defence": [{"name": "none"}]}


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda r: r.update(extra={}), "extra"),
        (lambda r: r.update(audit={"seeds": [0, 0]}), "audit.seeds"),
        (lambda r: r.update(attacks={"canary_count": 5}), "attacks.canary_count"),
        (lambda r: r.update(attacks={"inversion": "yes"}), "attacks.inversion"),
        (lambda r: r.update(attacks={"bogus": 1}), "attacks.bogus"),
        (lambda r: r["task"][0]["data"].update(name="imagenet"), "data.name"),
        (lambda r: r["task"][0]["data"].update(name="diabetes", partition="iid"), "data.name"),
        (lambda r: r["task"][0].update(dp={"mode": "central"}), "task[0]"),
        (lambda r: r["defence"].append({"name": "none"}), "defence"),
        (lambda r: r["defence"].append({"name": "x", "data": {"num_clients": 3}}), "defence[1].data"),
        (lambda r: r["defence"].append({"name": "x", "dp": {"mode": "magic"}}), "dp.mode"),
        (lambda r: r["defence"].append({"name": "x", "tasks": ["nope"]}), "defence[1].tasks"),
        (lambda r: r["defence"].append({"name": "", "dp": {}}), "defence[1].name"),
        (lambda r: r["defence"].append({"name": "q", "compression": {"method": "quantize"},
                                        "dp": {"mode": "central"}}), "compression.method"),
    ],
)
def test_config_errors_name_the_key(mutate, key: str) -> None:  # type: ignore[no-untyped-def]
    raw = _raw()
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        audit_config_from_dict(raw)
    assert key in str(err.value)


def test_unreadable_config_files_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_audit_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[task]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_audit_config(bad)


def test_cli_audit_runs_a_config_file_and_prints_the_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = AuditConfig(
        (TaskSpec("hospitals", default_audit_config().tasks[0].config.replace(run={"rounds": 2, "eval_every": 2})),),
        (DefenceSpec("none"), DefenceSpec("dp", {"dp": {"mode": "central", "target_epsilon": 2.0, "clip": 0.5}})),
        (3,), dataclasses.replace(FAST_ATTACKS, inversion=False),
    )
    path = tmp_path / "grid.toml"
    path.write_text(cfg.to_toml())
    assert main(["audit", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "[PASS] hospitals: DP lowers the audit's ε lower bound" in printed
    assert "2 cells in" in printed
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    eps = _cell(results, "hospitals", "dp")["privacy"]["epsilon"]
    assert results["seeds"] == [3] and 1.8 < eps <= 2.0 and not math.isnan(eps)
    assert main(["audit", "--print-config"]) == 0 and "[[defence]]" in capsys.readouterr().out
    assert main(["audit", str(tmp_path / "nope.toml")]) == 2
