"""The Ray backend gives the in-process runner's results bit for bit (fl.backends.ray).

One local Ray instance (2 CPUs) and one pool of 2 worker actors serve the whole module.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl.backends import BackendParameterError, BackendUnavailableError
from fl.config import ExperimentConfig, default_config
from fl.privacy import DPAggregator
from fl.simulation import RunOutput, Simulation
from fl.types import ClientUpdate
from secagg.api import plan_round
from secagg.errors import AbortError
from secagg.graph import NeighbourGraph
from secagg.simulate import identity_keys_for, run_round, use_round_driver

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pool() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silence a Ray FutureWarning
    started = not ray.is_initialized()  # another module (e.g. Flower's engine) may have left one running
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    from fl.backends.ray import ClientWorkerPool

    workers = ClientWorkerPool(2, torch_threads=1)  # conftest runs the in-process reference on 1 thread
    try:
        yield workers
    finally:
        workers.close()
        if started:
            ray.shutdown()


def _both(cfg: ExperimentConfig, pool: Any, tmp_path: Path | None = None) -> tuple[RunOutput, RunOutput, Any, Any]:
    from fl.backends.ray import RaySimulation

    ref = Simulation(cfg, progress=False, out_dir=tmp_path / "local" if tmp_path else None)
    ray_sim = RaySimulation(cfg, progress=False, pool=pool, out_dir=tmp_path / "ray" if tmp_path else None)
    with ray_sim:
        out = ray_sim.run()
    return ref.run(), out, ref, ray_sim


def _assert_same_run(a: RunOutput, b: RunOutput) -> None:
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.final_metrics == b.final_metrics
    assert len(a.history) == len(b.history)
    for ra, rb in zip(a.history, b.history, strict=True):
        assert (ra.sampled, ra.contributing, ra.dropped) == (rb.sampled, rb.contributing, rb.dropped)

        def untimed(metrics: Any) -> dict[str, float]:
            return {k: v for k, v in metrics.items() if not k.endswith("_time_s")}

        assert untimed(ra.metrics) == untimed(rb.metrics), ra.round_index


def _base(**sections: dict[str, Any]) -> ExperimentConfig:
    cfg = default_config().replace(
        run={"rounds": 3, "centralized_baseline": False},
        sampling={"clients_per_round": 8},
        dropout={"rate": 0.2, "phase": "after_training"},
    )
    return cfg.replace(**sections) if sections else cfg


# -- training through RaySimulation --------------------------------------------------------------------
def test_plain_fedavg_is_bit_identical(pool: Any) -> None:
    local, remote, _, _ = _both(_base(), pool)
    _assert_same_run(local, remote)
    assert any(r.dropped for r in local.history)  # the comparison covers late dropouts


def test_secagg_plus_is_bit_identical(pool: Any) -> None:
    cfg = _base(run={"rounds": 3, "centralized_baseline": False, "aggregation": "secagg+"})
    local, remote, _, ray_sim = _both(cfg, pool)
    _assert_same_run(local, remote)
    assert ray_sim.secagg_driver is not None  # the clients' masking ran in the actors
    assert all(r.metrics["secagg_aborted"] == 0.0 for r in remote.history)
    assert sum(r.metrics["secagg_recovered_dropouts"] for r in remote.history) > 0


@pytest.mark.parametrize("mode", ["central", "distributed"])
def test_dp_is_bit_identical_with_equal_ledger_epsilon(pool: Any, tmp_path: Path, mode: str) -> None:
    dp: dict[str, Any] = {"mode": mode, "clip": 0.5, "target_epsilon": 5.0}
    run: dict[str, Any] = {"rounds": 3, "centralized_baseline": False}
    if mode == "distributed":  # noise shares under SecAgg+, priced by RDP at each round's survivors
        dp["accountant"], run["aggregation"] = "rdp", "secagg+"
    cfg = _base(sampling={"method": "poisson", "rate": 0.6}, dp=dp, run=run)
    local, remote, ref, ray_sim = _both(cfg, pool, tmp_path)
    _assert_same_run(local, remote)
    spent = []
    for sim in (ref, ray_sim):
        assert isinstance(sim.aggregator, DPAggregator)
        spent.append(sim.aggregator.ledger.spent_epsilon())
        sim.aggregator.close()
    assert spent[0] == spent[1] > 0
    assert remote.history[-1].metrics["dp_epsilon"] == spent[1]


def test_ckks_encryption_runs_on_the_workers_within_the_error_bound(pool: Any) -> None:
    """CKKS: the clients' encryption moves to the actors (the sum and decryption stay in the driver). SEAL's
    encryption randomness is fresh, so both runs agree with the exact mean only within CKKS's error bound."""
    from fl.backends.ray import RayCKKSEncryptor
    from fl.he import CKKSAggregator, CKKSSettings, use_encrypt_driver

    rng = np.random.default_rng(3)
    ups = [ClientUpdate(c, rng.uniform(-1.5, 1.5, 300).astype(np.float32), int(rng.integers(1, 100))) for c in range(7)]
    aggregator = CKKSAggregator(8, CKKSSettings(max_weight=100.0))
    calls: list[int] = []
    driver = RayCKKSEncryptor(pool)

    def counting(context: bytes, jobs: Any) -> list[Any]:
        calls.append(len(jobs))
        return driver(context, jobs)

    local = aggregator.aggregate(ups, dim=300, round_index=0)
    with use_encrypt_driver(counting):
        remote = aggregator.aggregate(ups, dim=300, round_index=1)
    assert calls == [7]
    n = np.array([u.num_examples for u in ups], dtype=np.float64)
    clipped = np.clip(np.stack([u.delta for u in ups]).astype(np.float64), -1.0, 1.0)  # max_abs = 1
    exact = (n[:, None] * clipped).sum(0) / n.sum()
    for out in (local, remote):
        assert np.abs(out.vector - exact).max() < 12 * out.metrics["ckks_mean_noise_std"]
        assert out.num_clients == 7 and out.total_weight == pytest.approx(n.sum(), rel=1e-2)
    exact_keys = ("ckks_context_bytes", "ckks_upload_bytes_per_client", "ckks_flood_sigma", "ckks_clipped_fraction")
    assert [local.metrics[k] for k in exact_keys] == [remote.metrics[k] for k in exact_keys]
    # the noise std on the mean divides by the decrypted (noisy) total weight
    assert local.metrics["ckks_mean_noise_std"] == pytest.approx(remote.metrics["ckks_mean_noise_std"], rel=1e-4)
    assert remote.metrics["ckks_client_time_s"] > 0  # measured in the actors
    assert driver(aggregator.public_context, []) == []


def test_ckks_training_through_ray_matches_in_process(pool: Any) -> None:
    cfg = _base(run={"rounds": 2, "centralized_baseline": False, "aggregation": "ckks"})
    ref = Simulation(cfg, progress=False).run()
    from fl.backends.ray import RaySimulation

    with RaySimulation(cfg, progress=False, pool=pool) as ray_sim:
        out = ray_sim.run()
    np.testing.assert_allclose(out.weights, ref.weights, atol=1e-3)  # flooding noise, ~1e-4 per round
    assert out.final_metrics["test_accuracy"] == ref.final_metrics["test_accuracy"]
    for ra, rb in zip(ref.history, out.history, strict=True):
        assert (ra.sampled, ra.contributing) == (rb.sampled, rb.contributing)
        assert ra.metrics["ckks_upload_bytes_per_client"] == rb.metrics["ckks_upload_bytes_per_client"]


def test_dpsgd_cost_is_recorded_by_the_driver(pool: Any) -> None:
    cfg = _base(
        run={"rounds": 2, "centralized_baseline": False},
        client={"dpsgd_noise_multiplier": 1.0, "dpsgd_max_grad_norm": 1.0, "epochs": 1},
    )
    local, remote, ref, ray_sim = _both(cfg, pool)
    _assert_same_run(local, remote)  # includes dpsgd_epsilon_max / _mean of every round
    assert ref.dpsgd.state_dict() == ray_sim.dpsgd.state_dict() != {}


def test_shared_pool_serves_several_experiments_and_rejects_bad_arguments(pool: Any) -> None:
    from fl.backends.ray import ClientWorkerPool, RaySecAggDriver, RaySimulation

    a, b = _base(), _base(run={"rounds": 3, "centralized_baseline": False, "seed": 7})
    sims = [RaySimulation(c, progress=False, pool=pool, secagg_on_workers=False) for c in (a, b)]
    outs = [s.run() for s in sims]  # both loaded in the same workers, neither disturbs the other
    for s in sims:
        s.close()
    assert pool.size == 2  # a borrowed pool stays open
    np.testing.assert_array_equal(outs[1].weights, Simulation(b, progress=False).run().weights)
    with pytest.raises(BackendParameterError, match="chunks_per_worker") as info:
        RaySimulation(a, progress=False, pool=pool, chunks_per_worker=0)
    assert info.value.name == "chunks_per_worker"
    with pytest.raises(BackendParameterError, match="num_workers"):
        ClientWorkerPool(0)
    with pytest.raises(BackendParameterError, match="start_timeout_s"):
        ClientWorkerPool(1, start_timeout_s=0)
    with pytest.raises(BackendParameterError, match="waves"):
        RaySecAggDriver(pool, waves=0)


def test_client_worker_trains_like_the_simulation_in_process() -> None:
    pytest.importorskip("ray")
    from fl.backends import BackendError
    from fl.backends.ray import ClientWorker

    cfg = _base()
    sim = Simulation(cfg, progress=False)
    worker = ClientWorker()
    worker.load_experiment("exp", cfg, sim.data)
    works = worker.train("exp", [3, 1], sim.initial_weights, 2)
    for c, work in zip([3, 1], works, strict=True):
        np.testing.assert_array_equal(work.update.delta, sim.train_client(c, sim.initial_weights, 2).update.delta)
    with pytest.raises(BackendError, match="not loaded"):
        worker.train("other", [0], sim.initial_weights, 0)


# -- the secure-aggregation round driver ----------------------------------------------------------------
def _protocol(n: int, m: int, bits: int, *, mode: str = "secagg+", active: bool = False) -> tuple[Any, Any]:
    private, public = identity_keys_for(n) if active else (None, None)
    config, _ = plan_round(n, m, bits, mode=mode, round_id=77, graph_seed=bytes(range(32)),  # type: ignore[arg-type]
                           identity_keys=public)
    return config, private


def _inputs(config: Any, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.integers(0, 2**config.modulus_bits, config.vector_length, dtype=np.uint64).astype(config.dtype)
            for u in config.client_ids}


@pytest.mark.parametrize(("wire", "waves"), [(True, 4), (False, 1)])
def test_ray_driver_gives_the_exact_sum_with_dropouts(pool: Any, wire: bool, waves: int) -> None:
    from fl.backends.ray import RaySecAggDriver

    config, _ = _protocol(120, 24, 32)
    inputs = _inputs(config, 1)
    drops = {3: "advertise", 10: "share", 11: "mask", 12: "mask", 40: "mask", 41: "unmask", 99: "mask"}
    local, local_stats = run_round(config, inputs, drops=drops, wire=wire)  # type: ignore[arg-type]
    with use_round_driver(RaySecAggDriver(pool, waves=waves)):
        remote, stats = run_round(config, inputs, drops=drops, wire=wire)  # type: ignore[arg-type]
    survivors = [u for u in config.client_ids if drops.get(u) not in ("advertise", "share", "mask")]
    exact = np.sum([inputs[u] for u in survivors], axis=0, dtype=np.uint64) & np.uint64(2**32 - 1)
    np.testing.assert_array_equal(remote.vector, exact)
    np.testing.assert_array_equal(remote.vector, local.vector)
    assert remote.survivors == local.survivors == tuple(survivors)
    assert remote.dropped == local.dropped == (11, 12, 40, 99)
    assert stats.upload_bytes == local_stats.upload_bytes and stats.download_bytes == local_stats.download_bytes
    assert set(stats.client_seconds) == set(config.client_ids) and stats.server_seconds > 0


def test_ray_driver_runs_plain_secagg_and_the_active_variant(pool: Any) -> None:
    from fl.backends.ray import RaySecAggDriver

    config, private = _protocol(9, 5, 20, mode="secagg", active=True)
    inputs = _inputs(config, 2)
    local, _ = run_round(config, inputs, drops={4: "consistency"}, identities=private)
    with use_round_driver(RaySecAggDriver(pool)):
        remote, _ = run_round(config, inputs, drops={4: "consistency"}, identities=private)
    np.testing.assert_array_equal(remote.vector, local.vector)
    assert remote.survivors == local.survivors


def test_ray_driver_abort_reveals_nothing_and_leaves_the_pool_usable(pool: Any) -> None:
    from fl.backends.ray import RaySecAggDriver

    config, _ = _protocol(6, 4, 16, mode="secagg")
    inputs = _inputs(config, 3)
    driver = RaySecAggDriver(pool)
    with pytest.raises(AbortError), use_round_driver(driver):
        run_round(config, inputs, drops={1: "mask", 2: "mask", 3: "share"})
    with use_round_driver(driver):
        result, _ = run_round(config, inputs)
    np.testing.assert_array_equal(result.vector, np.sum(list(inputs.values()), axis=0) & np.uint64(2**16 - 1))


def test_round_spec_rebuilds_the_same_graph() -> None:
    pytest.importorskip("ray")
    from fl.backends.ray import RoundSpec

    config, _ = _protocol(50, 3, 12)
    rebuilt = RoundSpec.of(config).protocol_config()
    assert rebuilt == config and isinstance(rebuilt.graph, NeighbourGraph)
    complete, _ = _protocol(7, 3, 12, mode="secagg")
    assert RoundSpec.of(complete).adjacency is None and RoundSpec.of(complete).protocol_config() == complete


# -- Ray stays optional ----------------------------------------------------------------------------------
def test_import_fl_does_not_import_ray() -> None:
    code = "import sys, fl, fl.backends, fl.simulation, secagg; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_missing_ray_raises_a_typed_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees where it is not installed
    monkeypatch.delitem(sys.modules, "fl.backends.ray", raising=False)
    with pytest.raises(BackendUnavailableError, match=r"fedshield\[ray\]"):
        importlib.import_module("fl.backends.ray")
    with pytest.raises(ImportError):
        from fl.backends import RaySimulation  # noqa: F401


def test_cli_run_with_the_ray_backend_writes_the_same_results(pool: Any, tmp_path: Path) -> None:
    """The CLI starts its own pool while the module's pool holds every CPU: its actors must still start."""
    from fl.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(default_config().replace(run={"rounds": 3, "aggregation": "secagg+"}).to_toml())
    assert main(["run", str(cfg), "--out", str(tmp_path / "ray"), "--backend", "ray", "--workers", "2",
                 "--no-progress"]) == 0
    assert main(["run", str(cfg), "--out", str(tmp_path / "local"), "--no-progress"]) == 0
    import json

    ray_out, local_out = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("ray", "local"))
    assert ray_out["final"] == local_out["final"] and ray_out["centralized"] == local_out["centralized"]
    assert main(["run", str(cfg), "--out", str(tmp_path / "bad"), "--backend", "ray", "--workers", "0"]) == 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_cli_joins_a_separately_started_ray_cluster(tmp_path: Path) -> None:
    """`fedshield run --backend ray --ray-address` in a fresh driver process joins a Ray cluster started
    beforehand by `ray start --head` (its own GCS, raylet and worker processes; one node here) and writes
    the results the in-process runner writes."""
    pytest.importorskip("ray")
    import json
    import shutil
    import signal
    import tempfile
    import time

    from fl.cli import main

    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.exists():
        pytest.skip("the ray command-line tool is not next to this interpreter")
    port = _free_port()
    env = dict(os.environ, RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0", RAY_USAGE_STATS_ENABLED="0")
    # Its own temp dir (short: Ray puts unix sockets in it): `ray start` records "the latest cluster" in its
    # temp dir, and every later ray.init() without an address on this machine would join (or, once the head
    # is gone, fail to reach) a cluster recorded in the default /tmp/ray.
    temp_dir = Path(tempfile.mkdtemp(prefix="fsray", dir="/tmp"))
    log = (tmp_path / "head.log").open("w")
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
         "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(temp_dir)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while "block forever" not in (tmp_path / "head.log").read_text():
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the Ray head did not start within 90 s"
            time.sleep(0.5)
        cfg = tmp_path / "c.toml"
        cfg.write_text(default_config().replace(run={"rounds": 2, "aggregation": "secagg+"}).to_toml())
        driver = subprocess.run(
            [sys.executable, "-c", "import sys; from fl.cli import main; sys.exit(main(sys.argv[1:]))",
             "run", str(cfg), "--out", str(tmp_path / "cluster"), "--backend", "ray",
             "--ray-address", f"127.0.0.1:{port}", "--no-progress"],
            capture_output=True, text=True, env=env, timeout=300, check=False,
        )
        assert driver.returncode == 0, driver.stderr[-3000:]
        assert "Connecting to existing Ray cluster" in driver.stderr  # joined, did not start its own
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the cluster's processes on SIGTERM
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert main(["run", str(cfg), "--out", str(tmp_path / "local"), "--no-progress"]) == 0
    cluster_out, local_out = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("cluster", "local"))
    assert cluster_out["final"] == local_out["final"] and cluster_out["centralized"] == local_out["centralized"]
    assert main(["run", str(cfg), "--out", str(tmp_path / "bad"), "--ray-address", "auto"]) == 2  # needs --backend ray
