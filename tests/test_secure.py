from __future__ import annotations

import numpy as np
import pytest

from fl.config import default_config
from fl.errors import ConfigError, UpdateError
from fl.secure import SecAggAggregator, SecAggSettings
from fl.simulation import Simulation
from fl.types import ClientUpdate


def _ups(n: int, dim: int = 20, scale: float = 0.1) -> list[ClientUpdate]:
    rng = np.random.default_rng(0)
    return [ClientUpdate(i, (scale * rng.standard_normal(dim)).astype(np.float32), 10 + i) for i in range(n)]


def test_fedavg_with_secagg_matches_plain_on_breast_cancer() -> None:
    base = default_config().replace(
        run={"rounds": 20, "centralized_baseline": False}, dropout={"rate": 0.1, "phase": "after_training"}
    )
    plain = Simulation(base, progress=False).run()
    for mode in ("secagg", "secagg+"):
        secure = Simulation(base.replace(run={"aggregation": mode}), progress=False).run()
        assert all(r.metrics["secagg_aborted"] == 0.0 for r in secure.history)
        assert sum(r.metrics["secagg_recovered_dropouts"] for r in secure.history) > 0  # dropouts were recovered
        # per-round quantisation error is ~n * 2^-20 / sum(w): weights stay within 1e-4 after 20 rounds
        np.testing.assert_allclose(secure.weights, plain.weights, atol=1e-4)
        assert secure.final_metrics["test_accuracy"] == plain.final_metrics["test_accuracy"]
        assert secure.history[-1].metrics["upload_bytes_per_client"] > 4 * plain.weights.size


def test_active_variant_in_training() -> None:
    cfg = default_config().replace(run={"rounds": 2, "aggregation": "secagg", "centralized_baseline": False},
                                   secagg={"active": True})
    out = Simulation(cfg, progress=False).run()
    assert out.final_metrics["test_accuracy"] > 0.8


def test_single_client_is_refused_and_round_skipped() -> None:
    out = SecAggAggregator().aggregate(_ups(1), dim=20, round_index=0)
    assert out.metrics["secagg_aborted"] == 1.0 and out.total_weight == 0


def test_too_many_late_dropouts_abort_the_round() -> None:
    out = SecAggAggregator().aggregate(_ups(3), dim=20, round_index=0, late_dropouts=[7, 8, 9])
    assert out.metrics["secagg_aborted"] == 1.0 and out.total_weight == 0 and not out.vector.any()


def test_clipping_is_reported_not_silent() -> None:
    ups = _ups(4, scale=2.0)
    out = SecAggAggregator(settings=SecAggSettings(clip_range=1.0)).aggregate(ups, dim=20, round_index=0)
    expected = sum(int((np.abs(u.delta) > 1.0).sum()) for u in ups) / (4 * 20)
    assert out.metrics["secagg_clipped_fraction"] == pytest.approx(expected) and expected > 0


def test_weight_above_public_bound_is_an_error() -> None:
    with pytest.raises(UpdateError, match="max_weight"):
        SecAggAggregator(settings=SecAggSettings(max_weight=5)).aggregate(_ups(3), dim=20, round_index=0)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"clip_range": 0.0}, "secagg.clip_range"), ({"threshold_fraction": 0.5}, "secagg.threshold_fraction"),
     ({"target_dropout": 0.6}, "secagg.target_dropout"), ({"scale_bits": 41}, "secagg.scale_bits")],
)
def test_settings_validation(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        SecAggSettings(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key


def test_config_accepts_secagg_section() -> None:
    cfg = default_config().replace(run={"aggregation": "secagg+"}, secagg={"target_dropout": 0.2})
    assert cfg.secagg.target_dropout == 0.2
    with pytest.raises(ConfigError, match="allowed: plain, secagg, secagg\\+, ckks"):
        default_config().replace(run={"aggregation": "magic"})
