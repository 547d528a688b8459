"""Scale: one SecAgg+ round and one round of local training, in-process vs Ray on this machine's cores.

    .venv/bin/python benchmarks/bench_scale.py                          # n = 100, 1 000, 10 000; training 1 000; CKKS 1 000
    .venv/bin/python benchmarks/bench_scale.py --n 1000 --m 32 --dropout 0.1 --no-ray
    .venv/bin/python benchmarks/bench_scale.py --n 100 1000 --train-clients 0 --workers 4

Rows:

* ``secagg+``: one SecAgg+ round (:func:`secagg.api.secure_round`, Harary graph with k and t from
  :func:`secagg.graph.choose_params` for 10 % dropout and 5 % corrupt clients) over n clients holding
  uniform vectors of length m in Z_{2^32}; a fraction ``--dropout`` of them vanish after sharing their
  keys, so the server must reconstruct their mask keys. ``in-process`` runs every party one after another
  (:func:`secagg.simulate.run_round`); ``ray`` runs the client sessions in ``--workers`` Ray actors
  (:class:`fl.backends.ray.RaySecAggDriver`) while the server session stays in the driver.
* ``ckks``: one :class:`fl.he.CKKSAggregator` round (``COMPACT`` preset, flooding on) over
  ``--ckks-clients`` updates of length ``--ckks-m``: the clients' encryption (each loads the public context
  once, then encrypts), the server's ciphertext sum and the key holder's decryption. ``ray`` encrypts on
  the actors (:class:`fl.backends.ray.RayCKKSEncryptor`); key generation is not timed. ``same`` is "within
  bound": SEAL's encryption randomness is fresh, so both means are checked against the exact weighted mean
  (12 standard deviations of the flooding noise on the mean) instead of hashed.
* ``train``: :meth:`fl.simulation.Simulation.train_clients` for ``--train-clients`` clients (synthetic
  IID binary task, 100 examples (80 train) and 32 features per client, MLP with 64 hidden units, 5 epochs
  of batch 16, after one untimed warm-up round) in-process vs :class:`fl.backends.ray.RaySimulation`.
  Torch uses one intra-op thread everywhere.

Each measurement runs in a fresh child process, so its memory numbers are its own:

* ``m``: vector length (for ``train``: the model's parameter count);
* ``clients/s`` = n / wall-clock seconds of the round (Ray start-up and actor warm-up excluded);
* ``driver MiB``: peak resident set size of the measuring process (``resource.getrusage`` ``ru_maxrss``,
  which includes the interpreter and imported libraries; the Ray driver also imports torch) and
  ``Δ MiB`` the part of that peak reached during the round (peak after minus peak before);
* ``workers MiB``: the sum of the Ray actors' peak RSS (``ru_maxrss`` in each actor, torch included);
* ``speed-up``: in-process seconds / Ray seconds of the same row in this run;
* ``same``: the Ray result equals the in-process one bit for bit (SHA-256 of the sum / of all deltas).

Writes ``runs/bench_scale/bench_scale.json`` and ``runs/bench_scale/bench_scale.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
BITS = 32
RESULT = "BENCH_RESULT "


def _peak_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# -- what one child process measures -------------------------------------------------------------------
def _secagg_inputs(n: int, m: int, dropout: float) -> tuple[dict[int, np.ndarray], list[int]]:
    rng = np.random.default_rng([n, m])  # public benchmark data: a seeded generator is fine
    late = [int(c) for c in np.flatnonzero(rng.random(n) < dropout)]
    gone = set(late)
    inputs = {c: rng.integers(0, 2**BITS, m, dtype=np.uint64) for c in range(n) if c not in gone}
    return inputs, late


def _start_ray(workers: int) -> Any:
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import ray

    from fl.backends.ray import ClientWorkerPool

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ClientWorkerPool(workers, torch_threads=1)


def _child_secagg(spec: dict[str, Any]) -> dict[str, Any]:
    from secagg.api import secure_round
    from secagg.simulate import use_round_driver

    n, m, dropout = spec["n"], spec["m"], spec["dropout"]
    inputs, late = _secagg_inputs(n, m, dropout)
    pool = None
    workers_kib = 0
    if spec["runner"] == "ray":
        from fl.backends.ray import RaySecAggDriver

        pool = _start_ray(spec["workers"])
        with use_round_driver(RaySecAggDriver(pool)):  # warm-up: actors started, modules imported
            warm, warm_late = _secagg_inputs(20, m, 0.0)
            secure_round(warm, BITS, mode="secagg+", late_dropouts=warm_late)
    before = _peak_kib()
    t0 = time.perf_counter()
    if pool is not None:
        from fl.backends.ray import RaySecAggDriver

        with use_round_driver(RaySecAggDriver(pool)):
            out = secure_round(inputs, BITS, mode="secagg+", late_dropouts=late, graph_seed=bytes(32))
    else:
        out = secure_round(inputs, BITS, mode="secagg+", late_dropouts=late, graph_seed=bytes(32))
    seconds = time.perf_counter() - t0
    if pool is not None:
        workers_kib = sum(pool.broadcast("peak_memory_kib"))
    return {
        "seconds": seconds,
        "driver_peak_kib": _peak_kib(),
        "round_peak_increase_kib": _peak_kib() - before,
        "workers_peak_kib": workers_kib,
        "digest": hashlib.sha256(out.vector.tobytes()).hexdigest(),
        "degree": out.config.graph.degree,
        "threshold": out.config.threshold,
        "recovered": len(out.dropped),
        "server_seconds": out.stats.server_seconds,
    }


def _train_config(n: int) -> Any:
    from fl.config import default_config

    return default_config().replace(
        data={"num_clients": n},
        model={"name": "mlp", "hidden": [64]},
        client={"epochs": 5, "batch_size": 16, "lr": 0.05},
        run={"rounds": 1, "centralized_baseline": False},
    )


def _synthetic_federation(num_clients: int, per_client: int = 100, dim: int = 32) -> Any:
    from fl.data import Dataset, federate

    rng = np.random.default_rng(0)
    direction = rng.normal(size=dim)
    x = rng.normal(size=(num_clients * per_client, dim)).astype(np.float32)
    y = (x @ direction + 0.5 * rng.normal(size=x.shape[0]) > 0).astype(np.int64)
    return federate(Dataset("synthetic", x, y, "classification", 2, (dim,)), num_clients, partition="iid")


def _child_train(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from fl.simulation import Simulation

    torch.set_num_threads(1)
    n = spec["n"]
    config, data = _train_config(n), _synthetic_federation(n)
    workers_kib = 0
    if spec["runner"] == "ray":
        from fl.backends.ray import RaySimulation

        sim: Simulation = RaySimulation(config, data=data, progress=False, pool=_start_ray(spec["workers"]))
    else:
        sim = Simulation(config, data=data, progress=False)
    # warm-up round, not timed: torch's first calls per batch shape; for Ray the actors' start and the data
    sim.train_clients(list(range(n)), sim.initial_weights, 0)
    before = _peak_kib()
    t0 = time.perf_counter()
    updates = sim.train_clients(list(range(n)), sim.initial_weights, 0)
    seconds = time.perf_counter() - t0
    if spec["runner"] == "ray":
        workers_kib = sum(sim.pool.broadcast("peak_memory_kib"))  # type: ignore[attr-defined]
    digest = hashlib.sha256(b"".join(u.delta.tobytes() for u in updates)).hexdigest()
    return {
        "seconds": seconds,
        "driver_peak_kib": _peak_kib(),
        "round_peak_increase_kib": _peak_kib() - before,
        "workers_peak_kib": workers_kib,
        "digest": digest,
        "dim": int(sim.layout.size),
    }


def _child_ckks(spec: dict[str, Any]) -> dict[str, Any]:
    from fl.he import CKKSAggregator, CKKSSettings, EncryptJob, use_encrypt_driver
    from fl.types import ClientUpdate

    n, m = spec["n"], spec["m"]
    rng = np.random.default_rng(0)
    updates = [ClientUpdate(c, rng.uniform(-1, 1, m).astype(np.float32), int(rng.integers(1, 100))) for c in range(n)]
    aggregator = CKKSAggregator(n, CKKSSettings(max_weight=100.0))  # key generation: not timed
    driver = None
    workers_kib = 0
    if spec["runner"] == "ray":
        from fl.backends.ray import RayCKKSEncryptor

        driver = RayCKKSEncryptor(_start_ray(spec["workers"]))
        # warm-up: tenseal imported in every actor, the public context in the object store
        driver(aggregator.public_context, [EncryptJob(10**9 + i, np.zeros(m), 1.0) for i in range(spec["workers"])])
    before = _peak_kib()
    t0 = time.perf_counter()
    if driver is not None:
        with use_encrypt_driver(driver):
            out = aggregator.aggregate(updates, dim=m, round_index=0)
    else:
        out = aggregator.aggregate(updates, dim=m, round_index=0)
    seconds = time.perf_counter() - t0
    if driver is not None:
        workers_kib = sum(driver.pool.broadcast("peak_memory_kib"))
    w = np.array([u.num_examples for u in updates], dtype=np.float64)
    exact = (w[:, None] * np.stack([u.delta for u in updates]).astype(np.float64)).sum(0) / w.sum()
    error = float(np.abs(out.vector - exact).max())
    return {
        "seconds": seconds,
        "driver_peak_kib": _peak_kib(),
        "round_peak_increase_kib": _peak_kib() - before,
        "workers_peak_kib": workers_kib,
        "digest": "",  # fresh encryption randomness: compared by the error bound instead
        "within_bound": error < 12 * out.metrics["ckks_mean_noise_std"],
        "max_error": error,
        "upload_bytes_per_client": out.metrics["ckks_upload_bytes_per_client"],
        "client_seconds_per_client": out.metrics["ckks_client_time_s"],
    }


def child(spec: dict[str, Any]) -> None:
    work = {"secagg+": _child_secagg, "train": _child_train, "ckks": _child_ckks}[spec["workload"]]
    result = work(spec)
    print(RESULT + json.dumps(result), flush=True)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter and return what it measured."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          cwd=ROOT, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {**spec, **json.loads(lines[-1][len(RESULT):])}


# -- the table -----------------------------------------------------------------------------------------------
def _mib(kib: float) -> str:
    return f"{kib / 1024:.0f}" if kib else "-"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("workload", "n", "m", "dropout", "runner", "seconds", "clients/s", "driver MiB", "Δ MiB",
            "workers MiB", "speed-up", "same")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["workload"], f"{r['n']:,}", str(r.get("m", r.get("dim", "-"))),
            f"{r['dropout']:g}" if "dropout" in r else "-",
            r["runner"] + (f" ({r['workers']} workers)" if r["runner"] == "ray" else ""),
            f"{r['seconds']:.2f}", f"{r['n'] / r['seconds']:,.0f}", _mib(r["driver_peak_kib"]),
            _mib(r["round_peak_increase_kib"]), _mib(r["workers_peak_kib"]),
            f"{r['speedup']:.2f}x" if "speedup" in r else "-", r.get("same", "-"),
        ]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for runner in ("in-process", "ray"):
        pts = sorted((r["n"], r["n"] / r["seconds"]) for r in rows if r["workload"] == "secagg+" and r["runner"] == runner)
        if pts:
            left.plot(*zip(*pts, strict=True), marker="o", label=runner)
    left.set(xscale="log", xlabel="clients n", ylabel="clients / second", title="SecAgg+ round (small m)")
    left.legend()
    bars = [r for r in rows if r["workload"] in ("train", "ckks")]
    if bars:
        labels = [f"{r['workload']} {r['n']:,}\n{r['runner']}" for r in bars]
        right.bar(labels, [r["n"] / r["seconds"] for r in bars], color=["C0" if r["runner"] == "in-process" else "C1"
                                                                          for r in bars])
        right.set(ylabel="clients / second", title="local training; CKKS encryption + sum + decryption")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000, 10_000], help="clients of the SecAgg+ rows")
    parser.add_argument("--m", type=int, default=16, help="vector length of the SecAgg+ rows")
    parser.add_argument("--dropout", type=float, default=0.05, help="fraction vanishing after sharing keys")
    parser.add_argument("--train-clients", type=int, default=1000, help="clients of the training row (0: none)")
    parser.add_argument("--ckks-clients", type=int, default=1000, help="clients of the CKKS row (0: none)")
    parser.add_argument("--ckks-m", type=int, default=2242, help="update length of the CKKS row")
    parser.add_argument("--workers", type=int, default=_cores(), help="Ray actors (default: this machine's cores)")
    parser.add_argument("--no-ray", action="store_true", help="in-process rows only")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_scale")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return
    if not 0 <= args.dropout < 0.5:
        parser.error(f"--dropout must be in [0, 0.5), got {args.dropout}")
    runners = ["in-process"] if args.no_ray else ["in-process", "ray"]
    specs: list[dict[str, Any]] = []
    for n in args.n:
        specs += [{"workload": "secagg+", "n": n, "m": args.m, "dropout": args.dropout, "runner": r,
                   "workers": args.workers} for r in runners]
    if args.train_clients:
        specs += [{"workload": "train", "n": args.train_clients, "runner": r, "workers": args.workers}
                  for r in runners]
    if args.ckks_clients:
        specs += [{"workload": "ckks", "n": args.ckks_clients, "m": args.ckks_m, "runner": r, "workers": args.workers}
                  for r in runners]
    rows = [measure(spec) for spec in tqdm(specs, desc="bench_scale", unit="run", dynamic_ncols=True)]
    for r in rows:
        if r["runner"] != "ray":
            continue
        ref = next(x for x in rows if x["runner"] == "in-process" and x["workload"] == r["workload"] and x["n"] == r["n"])
        r["speedup"] = ref["seconds"] / r["seconds"]
        if r["workload"] == "ckks":  # SEAL's fresh randomness: both must be within CKKS's error bound
            r["same"] = "within bound" if r["within_bound"] and ref["within_bound"] else "NO"
        else:
            r["same"] = "yes" if ref["digest"] == r["digest"] else "NO"
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"cores": _cores(), "machine": platform.machine(), "python": platform.python_version(),
            "memory": "peak RSS via resource.getrusage ru_maxrss (KiB) per process"}
    (args.out / "bench_scale.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    plot(rows, args.out / "bench_scale.png")
    print(table(rows))
    print(f"\n{_cores()} cores; wrote {args.out / 'bench_scale.json'} and {args.out / 'bench_scale.png'}")


if __name__ == "__main__":
    main()
