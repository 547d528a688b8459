from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fl.cli import main


def test_run_writes_report(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.toml"
    cfg.write_text("[run]\nrounds = 3\ncentralized_epochs = 5\n")
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "federated test_accuracy" in printed and "centralized" in printed
    results = json.loads((out / "results.json").read_text())
    assert len(results["rounds"]) == 3 and results["config"]["run"]["rounds"] == 3
    assert results["versions"]["fedshield"] and results["seed"] == 0
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| federated |" in (out / "report.md").read_text()
    # a second invocation resumes from the finished checkpoint and reproduces the same figures
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["final"] == results["final"]


def test_bad_config_is_a_clean_error(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nstrategy = "fedavgg"\n')
    assert main(["run", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "server.strategy" in err and "allowed: fedavg" in err and "Traceback" not in err


def test_console_entry_point_show_config() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fl", "show-config"], capture_output=True, text=True, check=True, timeout=120
    )
    assert 'name = "breast_cancer"' in done.stdout


def test_run_with_secagg_reports_cost(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[run]\nrounds = 2\naggregation = "secagg+"\ncentralized_baseline = false\n'
        '[dropout]\nrate = 0.2\nphase = "after_training"\n'
    )
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    assert "Secure aggregation (secagg+): 0 of 2 rounds aborted" in report and "KiB uploaded per client" in report
    results = json.loads((out / "results.json").read_text())
    assert results["rounds"][0]["secagg_modulus_bits"] > 0
