from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fl.config import default_config
from fl.errors import CheckpointError
from fl.simulation import CHECKPOINT, Simulation


def _sim(cfg, **kw):  # type: ignore[no-untyped-def]
    return Simulation(cfg, progress=False, **kw)


def test_fedavg_close_to_centralized_on_breast_cancer() -> None:
    # The acceptance criterion: 10 hospitals, Dirichlet(0.5) label skew, FedAvg within 2 points.
    cfg = default_config()
    assert (cfg.data.name, cfg.data.num_clients, cfg.data.partition, cfg.data.alpha) == (
        "breast_cancer", 10, "dirichlet", 0.5,
    )
    out = _sim(cfg).run()
    assert out.centralized is not None
    fed, central = out.final_metrics["test_accuracy"], out.centralized["test_accuracy"]
    assert central > 0.94
    assert fed >= central - 0.02, (fed, central)
    accs = [r.metrics["test_accuracy"] for r in out.history]
    assert accs[-1] > accs[0] or accs[0] > 0.9


def test_fedavg_one_full_batch_step_equals_fedsgd() -> None:
    base = default_config().replace(run={"rounds": 5, "centralized_baseline": False})
    fedavg = base.replace(client={"epochs": 1, "batch_size": 0, "lr": 0.3}, server={"strategy": "fedavg"})
    fedsgd = base.replace(client={"lr": 0.3}, server={"strategy": "fedsgd"})
    a, b = _sim(fedavg).run(), _sim(fedsgd).run()
    # identical algorithm: the only difference is float32 rounding of (w - lr*g) - w versus -lr*g
    np.testing.assert_allclose(a.weights, b.weights, rtol=0, atol=2e-6)
    assert not np.array_equal(a.weights, _sim(base).run().weights)  # the comparison is not vacuous


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_resume_after_interruption_is_bit_identical(tmp_path: Path, strategy: str) -> None:
    cfg = default_config().replace(
        run={"rounds": 6, "centralized_baseline": False},
        server={"strategy": strategy},
        sampling={"clients_per_round": 6},
        dropout={"rate": 0.2, "phase": "after_training"},
    )
    full = _sim(cfg).run()
    first = _sim(cfg, out_dir=tmp_path).run(stop_after=3)
    assert not first.completed and len(first.history) == 3
    assert (tmp_path / CHECKPOINT).exists()
    resumed = _sim(cfg, out_dir=tmp_path).run()
    assert resumed.completed and len(resumed.history) == 6
    np.testing.assert_array_equal(resumed.weights, full.weights)
    assert [r.contributing for r in resumed.history] == [r.contributing for r in full.history]
    assert resumed.final_metrics == full.final_metrics


def test_checkpoint_of_other_config_is_refused(tmp_path: Path) -> None:
    cfg = default_config().replace(run={"rounds": 2, "centralized_baseline": False})
    _sim(cfg, out_dir=tmp_path).run()
    with pytest.raises(CheckpointError, match="different configuration"):
        _sim(cfg.replace(run={"seed": 1}), out_dir=tmp_path).run()
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        _sim(cfg, out_dir=tmp_path).run()


def test_dropouts_and_poisson_sampling_are_recorded() -> None:
    cfg = default_config().replace(
        run={"rounds": 8, "centralized_baseline": False},
        sampling={"method": "poisson", "rate": 0.3},
        dropout={"rate": 0.3, "phase": "before_training"},
    )
    out = _sim(cfg).run()
    for r in out.history:
        assert set(r.contributing) == set(r.sampled) - set(r.dropped)
        if not r.contributing:
            assert r.metrics["skipped"] == 1.0
    sizes = [len(r.sampled) for r in out.history]
    assert len(set(sizes)) > 1  # Poisson cohorts vary in size
    assert sum(len(r.dropped) for r in out.history) > 0


@pytest.mark.parametrize("strategy", ["fedprox", "fedyogi", "fedadagrad"])
def test_other_strategies_learn(strategy: str) -> None:
    cfg = default_config().replace(
        run={"rounds": 10, "centralized_baseline": False},
        server={"strategy": strategy, "lr": 0.05 if strategy != "fedprox" else 0.0},
        client={"mu": 0.1 if strategy == "fedprox" else 0.0},
    )
    out = _sim(cfg).run()
    assert out.final_metrics["test_accuracy"] > 0.9


def test_digits_cnn_with_shards() -> None:
    cfg = default_config().replace(
        data={"name": "digits", "partition": "shards", "labels_per_client": 3},
        model={"name": "cnn"},
        client={"lr": 0.05, "momentum": 0.9, "batch_size": 32},
        run={"rounds": 10, "centralized_baseline": False},
    )
    out = _sim(cfg).run()
    # 10 classes (chance 0.1), each client holding only 3 of them: FedAvg must still learn all ten
    assert out.final_metrics["test_accuracy"] > 0.8


def test_diabetes_regression() -> None:
    cfg = default_config().replace(
        data={"name": "diabetes", "partition": "iid"}, run={"rounds": 10, "centralized_baseline": True}
    )
    out = _sim(cfg).run()
    assert out.centralized is not None
    assert out.final_metrics["test_r2"] > 0.3 and out.centralized["test_r2"] > 0.3
