from __future__ import annotations

import numpy as np
import pytest

from fl.config import default_config
from fl.errors import ConfigError, UpdateError
from fl.he import CKKSAggregator, CKKSSettings
from fl.simulation import Simulation
from fl.types import ClientUpdate


@pytest.fixture(scope="module")
def aggregator() -> CKKSAggregator:
    return CKKSAggregator(8, CKKSSettings(max_weight=100.0))


def test_fedavg_with_ckks_matches_plain_on_breast_cancer() -> None:
    base = default_config().replace(
        run={"rounds": 15, "centralized_baseline": False}, dropout={"rate": 0.1, "phase": "after_training"}
    )
    plain = Simulation(base, progress=False).run()
    he = Simulation(base.replace(run={"aggregation": "ckks"}), progress=False).run()
    assert he.final_metrics["test_accuracy"] == plain.final_metrics["test_accuracy"]
    # flooding noise (sigma ~1e-4 on the mean) is the only difference; it stays small after 15 rounds
    np.testing.assert_allclose(he.weights, plain.weights, atol=5e-3)
    last = he.history[-1].metrics
    assert last["ckks_flood_sigma"] > 0 and last["ckks_context_bytes"] > 0
    assert last["upload_bytes_per_client"] == last["ckks_upload_bytes_per_client"] > 4 * he.weights.size


def test_weighted_mean_and_dropouts(aggregator: CKKSAggregator) -> None:
    rng = np.random.default_rng(0)
    ups = [ClientUpdate(c, rng.uniform(-1, 1, 50).astype(np.float32), int(rng.integers(1, 100))) for c in range(6)]
    out = aggregator.aggregate(ups[:4], dim=50, round_index=0, late_dropouts=[4, 5])  # 4, 5 simply absent
    n = np.array([u.num_examples for u in ups[:4]], dtype=np.float64)
    ref = (n[:, None] * np.stack([u.delta for u in ups[:4]])).sum(0) / n.sum()
    # flooding noise of std sigma on [sum w x, sum w]: the mean's error is about sigma / W per coordinate
    # (plus |mean| * sigma / W from the weight slot, |mean| <= 1): bound it at 6 standard deviations, both terms
    assert out.metrics["ckks_flood_sigma"] > 0
    assert np.abs(out.vector - ref).max() < 12 * out.metrics["ckks_mean_noise_std"]
    assert out.metrics["ckks_mean_noise_std"] < 1e-4
    assert out.total_weight == pytest.approx(n.sum(), rel=1e-2)
    assert out.num_clients == 4


def test_clipping_reported_and_weight_bound(aggregator: CKKSAggregator) -> None:
    ups = [ClientUpdate(0, np.array([3.0, 0.0], np.float32), 10), ClientUpdate(1, np.zeros(2, np.float32), 10)]
    out = aggregator.aggregate(ups, dim=2, round_index=0)
    assert out.metrics["ckks_clipped_fraction"] == pytest.approx(0.25)
    with pytest.raises(UpdateError, match="max_weight"):
        aggregator.aggregate([ClientUpdate(0, np.zeros(2, np.float32), 1000)], dim=2, round_index=0)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"preset": "huge"}, "ckks.preset"), ({"max_abs": 0.0}, "ckks.max_abs"),
     ({"flood_security_bits": 10}, "ckks.flood_security_bits")],
)
def test_settings_validation(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        CKKSSettings(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key
