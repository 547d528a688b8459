"""Per-round server overhead of fedshield's aggregation vs bare numpy, and default-run wall time.

    .venv/bin/python benchmarks/bench_core.py [--clients 100] [--dim 1000000] [--repeats 7] [--rounds 50]

Prints a table, writes ``runs/bench_core/bench_core.json`` and a bar plot. Goal (issue 2): aggregating
100 client vectors of 1M float32 with :class:`fl.aggregators.WeightedMean` within 1.5x of bare numpy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fl.aggregators import WeightedMean
from fl.config import default_config
from fl.simulation import Simulation
from fl.types import ClientUpdate


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: page in memory, load BLAS
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--out", default="runs/bench_core")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    vectors = [rng.standard_normal(args.dim, dtype=np.float32) for _ in range(args.clients)]
    counts = rng.integers(10, 1000, args.clients)
    updates = [ClientUpdate(i, v, int(n)) for i, (v, n) in enumerate(zip(vectors, counts, strict=True))]
    stacked = np.stack(vectors)
    weights32 = (counts / counts.sum()).astype(np.float32)

    cases: dict[str, Callable[[], object]] = {
        "numpy: w @ pre-stacked matrix (BLAS gemv)": lambda: weights32 @ stacked,
        "numpy: np.average(np.stack(list), weights)": lambda: np.average(np.stack(vectors), axis=0, weights=counts),
        "fedshield WeightedMean.aggregate": lambda: WeightedMean().aggregate(updates, dim=args.dim, round_index=0),
    }
    timings = {name: _time(fn, args.repeats) for name, fn in tqdm(cases.items(), desc="aggregation cases")}
    ours = timings["fedshield WeightedMean.aggregate"]
    strongest = timings["numpy: w @ pre-stacked matrix (BLAS gemv)"]
    exact = WeightedMean().aggregate(updates, dim=args.dim, round_index=0).vector
    max_err = float(np.abs(exact - (counts / counts.sum()) @ stacked.astype(np.float64)).max())

    cfg = default_config().replace(run={"rounds": args.rounds})
    t0 = time.perf_counter()
    out = Simulation(cfg, progress=True).run()
    run_wall = time.perf_counter() - t0

    print(f"\nAggregation of {args.clients} client vectors of {args.dim:,} float32 (median of {args.repeats}), "
          f"{os.cpu_count()} CPU cores")
    print(f"{'method':48s} {'time ms':>9s} {'fedshield / this':>17s}")
    for name, t in timings.items():
        print(f"{name:48s} {t * 1e3:9.2f} {ours / t:17.2f}")
    print(f"goal: fedshield / strongest numpy <= 1.5  ->  {ours / strongest:.2f} "
          f"({'met' if ours / strongest <= 1.5 else 'NOT met'}); max abs error vs float64: {max_err:.2e}")
    print(f"\nDefault run ({args.rounds} rounds, breast cancer, 10 clients, FedAvg + centralized baseline): "
          f"{run_wall:.2f} s wall, {run_wall / args.rounds * 1e3:.1f} ms/round incl. evaluation; "
          f"test accuracy {out.final_metrics['test_accuracy']:.4f} "
          f"(centralized {out.centralized['test_accuracy'] if out.centralized else float('nan'):.4f})")

    d = Path(args.out)
    d.mkdir(parents=True, exist_ok=True)
    record = {
        "clients": args.clients, "dim": args.dim, "repeats": args.repeats,
        "aggregation_seconds": timings, "ratio_vs_strongest_numpy": ours / strongest,
        "max_abs_error_vs_float64": max_err,
        "default_run": {"rounds": args.rounds, "wall_s": run_wall, "final": out.final_metrics,
                        "centralized": out.centralized},
    }
    (d / "bench_core.json").write_text(json.dumps(record, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.8), dpi=110)
    ax.barh(list(timings), [t * 1e3 for t in timings.values()], color=["C7", "C7", "C0"])
    ax.set_xlabel("ms per round (lower is better)")
    ax.set_title(f"Aggregating {args.clients} x {args.dim:,} float32")
    fig.tight_layout()
    fig.savefig(d / "bench_core.png")
    print(f"wrote {d / 'bench_core.json'} and {d / 'bench_core.png'}")


if __name__ == "__main__":
    main()
