"""Scale: SecAgg+ over thousands of clients and client-level DP accounting over 1 000 clients.

Measured on this project's 2-core machine (benchmarks/bench_scale.py has the numbers): one SecAgg+ round
of 10 000 clients at m = 16 takes about a minute in-process, most of it in the protocol's own per-client
work (X25519 agreements, Shamir reconstruction per owner, the server's per-message bookkeeping), so that
test is ``slow`` and opt-in (``FEDSHIELD_SCALE_TESTS=1``: CI runs every test, slow ones included); the
2 000-client round (~10 s) runs always.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fl.config import default_config
from fl.data import Dataset, FederatedData, federate
from fl.privacy import DPAggregator
from fl.simulation import Simulation
from secagg.api import secure_round
from secagg.graph import choose_params
from secagg.simulate import Phase

BITS = 32


def _secagg_plus_round_is_exact(n: int, m: int) -> None:
    rng = np.random.default_rng(n)
    fate = rng.random(n)
    # Public dropout schedule: 5 % vanish after sharing keys (their masks are recovered), 1 % never show up,
    # 1 % vanish after sending the masked input (they still count), so ~6 % of the key holders are gone,
    # within the 10 % the degree was chosen for.
    late = [int(c) for c in np.flatnonzero(fate < 0.05)]
    drops: dict[int, Phase] = {int(c): "advertise" for c in np.flatnonzero((fate >= 0.05) & (fate < 0.06))}
    drops.update({int(c): "unmask" for c in np.flatnonzero((fate >= 0.06) & (fate < 0.07))})
    inputs = {c: rng.integers(0, 2**BITS, m, dtype=np.uint64) for c in range(n) if c not in set(late)}
    out = secure_round(inputs, BITS, mode="secagg+", late_dropouts=late, drops=drops, round_id=n,
                       graph_seed=bytes(range(32)))
    counted = sorted(c for c in inputs if drops.get(c) != "advertise")
    exact = np.zeros(m, dtype=np.uint64)
    for c in counted:
        exact += inputs[c]  # uint64 wraps: addition mod 2^64, then reduced mod 2^32
    np.testing.assert_array_equal(out.vector, exact & np.uint64(2**BITS - 1))
    assert out.survivors == tuple(counted)
    assert out.dropped == tuple(late)  # recovered, not just ignored
    params = choose_params(n)  # the defaults secure_round uses: 10 % dropout, 5 % corrupt
    assert out.config.graph.degree == params.degree <= 4 * math.log2(n)  # k = O(log n), not n - 1
    assert out.config.threshold == params.threshold


@pytest.mark.slow  # about 50 s on 2 cores: X25519 agreements (~800k) dominate, not bookkeeping
def test_secagg_plus_10000_clients_exact_sum_with_dropouts() -> None:
    _secagg_plus_round_is_exact(10_000, 16)


def synthetic_federation(num_clients: int, per_client: int, dim: int, seed: int = 0) -> FederatedData:
    """A linearly separable-ish binary task split IID among ``num_clients`` clients."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    x = rng.normal(size=(num_clients * per_client, dim)).astype(np.float32)
    y = (x @ direction + 0.5 * rng.normal(size=x.shape[0]) > 0).astype(np.int64)
    return federate(Dataset("synthetic", x, y, "classification", 2, (dim,)), num_clients, partition="iid",
                    seed=seed)


def test_central_dp_over_1000_poisson_sampled_clients_matches_reference_accountant(tmp_path: Path) -> None:
    dpa = pytest.importorskip("dp_accounting")
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    n, q, sigma, rounds, delta = 1000, 0.02, 1.0, 20, 1e-5
    cfg = default_config().replace(
        data={"num_clients": n},
        sampling={"method": "poisson", "rate": q},
        dp={"mode": "central", "clip": 1.0, "noise_multiplier": sigma, "delta": delta, "target_epsilon": 50.0},
        run={"rounds": rounds, "centralized_baseline": False, "eval_every": rounds},
    )
    sim = Simulation(cfg, data=synthetic_federation(n, 20, 8), out_dir=tmp_path, progress=False)
    out = sim.run()
    assert out.completed and len(out.history) == rounds
    cohorts = [len(r.sampled) for r in out.history]
    assert 0 < min(cohorts) < max(cohorts) < 4 * q * n  # Poisson cohorts of ~q n clients
    assert isinstance(sim.aggregator, DPAggregator)
    releases = sim.aggregator.ledger.releases()
    spent = sim.aggregator.ledger.spent_epsilon()
    sim.aggregator.close()
    assert [r.round_index for r in releases] == list(range(rounds))
    assert all(r.sampling == "poisson" and r.sampling_rate == q and r.noise_multiplier == sigma for r in releases)

    event = dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma))
    ref_pld = pld_privacy_accountant.PLDAccountant()
    ref_pld.compose(event, rounds)
    ref_rdp = rdp_privacy_accountant.RdpAccountant()
    ref_rdp.compose(event, rounds)
    assert spent == pytest.approx(ref_pld.get_epsilon(delta), rel=1e-6)
    assert spent < ref_rdp.get_epsilon(delta)  # PLD is the tighter accountant
    epsilons = [r.metrics["dp_epsilon"] for r in out.history]
    assert epsilons == sorted(epsilons) and epsilons[-1] == spent  # ε is known at every round
