"""Client-side update stages (clip, top-k, quantise) and their place in the pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from attacks.inversion import quantize as attack_quantize
from attacks.inversion import topk as attack_topk
from fl.aggregators import WeightedMean
from fl.compression import Clip, Quantize, TopK, quantize_levels, topk_sparsify, wrap_compression
from fl.config import default_config
from fl.errors import ConfigError
from fl.simulation import Simulation
from fl.types import ClientUpdate

vectors = arrays(np.float32, st.integers(1, 300), elements=st.floats(-10, 10, width=32))


@given(vectors, st.floats(0.01, 1.0))
def test_topk_is_what_the_adaptive_attacker_models(vec: np.ndarray, fraction: float) -> None:
    ours = topk_sparsify(vec, fraction)
    theirs, mask = attack_topk(vec, fraction)
    np.testing.assert_array_equal(ours, theirs)
    k = max(1, math.ceil(fraction * vec.size))
    assert int(mask.sum()) == k
    # top-k never lengthens an update, so it keeps DP's sensitivity bound
    assert np.linalg.norm(ours) <= np.linalg.norm(vec) + 1e-6


@given(vectors, st.integers(2, 300))
def test_quantiser_is_what_the_adaptive_attacker_models(vec: np.ndarray, levels: int) -> None:
    ours = quantize_levels(vec, levels)
    np.testing.assert_array_equal(ours, attack_quantize(vec, levels))
    top = float(np.abs(vec).max())
    if top > 0:
        assert len(np.unique(ours)) <= levels
        assert np.abs(ours - vec).max() <= top / (levels - 1) * (1 + 1e-5)  # half a step of 2m/(L-1)


def test_stages_transform_then_delegate_and_report_bytes() -> None:
    rng = np.random.default_rng(0)
    ups = [ClientUpdate(i, rng.normal(size=1000).astype(np.float32), 10) for i in range(3)]
    clipped = Clip(WeightedMean(), 1.0).aggregate(ups, dim=1000, round_index=0)
    expected = np.mean([u.delta / np.linalg.norm(u.delta) for u in ups], axis=0)
    np.testing.assert_allclose(clipped.vector, expected, atol=1e-6)
    sparse = TopK(WeightedMean(), 0.1).aggregate(ups, dim=1000, round_index=0)
    np.testing.assert_allclose(sparse.vector, np.mean([topk_sparsify(u.delta, 0.1) for u in ups], axis=0), atol=1e-7)
    assert sparse.metrics["compressed_upload_bytes_per_client"] == 8 * 100  # 100 values + 100 indices
    quant = Quantize(WeightedMean(), 16).aggregate(ups, dim=1000, round_index=0)
    assert quant.metrics["compressed_upload_bytes_per_client"] == 1000 * 4 / 8 + 4
    assert wrap_compression(WeightedMean(), "none").__class__ is WeightedMean


def test_bad_stage_parameters_name_the_config_key() -> None:
    with pytest.raises(ConfigError, match="compression.fraction"):
        TopK(WeightedMean(), 0.0)
    with pytest.raises(ConfigError, match="compression.levels"):
        Quantize(WeightedMean(), 1)
    with pytest.raises(ConfigError, match="client.clip_norm"):
        Clip(WeightedMean(), float("inf"))
    with pytest.raises(ConfigError, match="compression.method"):
        wrap_compression(WeightedMean(), "zip")
    with pytest.raises(ConfigError, match="client.clip_norm"):
        default_config().replace(client={"clip_norm": 1.0}, dp={"mode": "central"})
    with pytest.raises(ConfigError, match="compression.method"):
        default_config().replace(compression={"method": "quantize"}, dp={"mode": "central"})
    with pytest.raises(ConfigError, match="compression.method"):
        default_config().replace(compression={"method": "topk"}, run={"aggregation": "secagg"},
                                 dp={"mode": "distributed", "accountant": "rdp"})


def test_a_run_with_top_k_under_secagg_sends_dense_masked_vectors() -> None:
    base = default_config().replace(run={"rounds": 3, "centralized_baseline": False})
    topk = Simulation(base.replace(compression={"method": "topk", "fraction": 0.25}), progress=False).run()
    plain = Simulation(base, progress=False).run()
    dim = 31 * 2
    assert topk.history[0].metrics["upload_bytes_per_client"] == 8 * math.ceil(0.25 * dim)
    assert plain.history[0].metrics["upload_bytes_per_client"] == 4 * dim
    both = Simulation(base.replace(compression={"method": "topk", "fraction": 0.25}, run={"aggregation": "secagg"}),
                      progress=False).run()
    # masking makes the sparse vector dense again: SecAgg's bytes, not top-k's, are what a client sends
    assert both.history[0].metrics["upload_bytes_per_client"] > 4 * dim
    np.testing.assert_allclose(both.weights, topk.weights, atol=1e-4)
