"""Privacy-accountant cost and tightness: fedshield's RDP and PLD accountants vs Opacus and dp_accounting.

    .venv/bin/python benchmarks/bench_dp.py                 # both settings, 3 repeats
    .venv/bin/python benchmarks/bench_dp.py --repeats 1 --rounds 1000

For each setting (Poisson sampling rate q, noise multiplier σ) the job is: account for T rounds of the
Poisson-subsampled Gaussian and report ε at δ = 1e-5.  Time is wall clock for "build accountant, compose
T rounds, get ε", median over repeats, with every cache of ours cleared before each repeat (cold).

How T rounds are composed (fairness):

* fedshield and dp_accounting: one ``compose(event, count=T)`` call (both APIs take a multiplicity);
  "fedshield PLD, T compose calls" also shows our per-round path (T ``compose(event)`` calls, one query).
* Opacus ``RDPAccountant`` / ``PRVAccountant``: their public API has no multiplicity, so T ``step()``
  calls (Opacus merges equal consecutive steps into one history entry); the "history" rows instead set
  ``history = [(σ, q, T)]`` directly — the cost of the accounting alone.
* Orders: each RDP accountant uses its own default orders (ours is a superset of the others').
  Opacus PRV reports its upper bound (eps_error = 0.01, delta_error = δ/1000, its defaults).

Writes ``runs/bench_dp/bench_dp.json`` and ``runs/bench_dp/bench_dp.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dp import accountants as ours
from dp.events import GaussianEvent, PoissonSampledEvent

SETTINGS = [(0.01, 1.0), (0.1, 0.8)]
DELTA = 1e-5
REFERENCE = "dp_accounting PLD"


def _clear_our_caches() -> None:
    ours._rdp_atom_cached.cache_clear()
    ours._single_pld.cache_clear()


def cases(q: float, sigma: float, rounds: int) -> dict[str, Callable[[], float]]:
    import dp_accounting as dpa
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant
    from opacus.accountants import PRVAccountant, RDPAccountant

    event = PoissonSampledEvent(q, GaussianEvent(sigma))
    ref_event = dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma))

    def ours_rdp() -> float:
        accountant = ours.RDPAccountant()
        accountant.compose(event, rounds)
        return accountant.get_epsilon(DELTA)

    def ours_pld() -> float:
        accountant = ours.PLDAccountant()
        accountant.compose(event, rounds)
        return accountant.get_epsilon(DELTA)

    def ours_pld_per_round() -> float:
        accountant = ours.PLDAccountant()
        for _ in range(rounds):
            accountant.compose(event)
        return accountant.get_epsilon(DELTA)

    def opacus_steps(cls: type) -> Callable[[], float]:
        def run() -> float:
            accountant = cls()
            for _ in range(rounds):
                accountant.step(noise_multiplier=sigma, sample_rate=q)
            return float(accountant.get_epsilon(DELTA))

        return run

    def opacus_history(cls: type) -> Callable[[], float]:
        def run() -> float:
            accountant = cls()
            accountant.history = [(sigma, q, rounds)]
            return float(accountant.get_epsilon(DELTA))

        return run

    def dpa_rdp() -> float:
        accountant = rdp_privacy_accountant.RdpAccountant()
        accountant.compose(ref_event, rounds)
        return float(accountant.get_epsilon(DELTA))

    def dpa_pld() -> float:
        accountant = pld_privacy_accountant.PLDAccountant()
        accountant.compose(ref_event, rounds)
        return float(accountant.get_epsilon(DELTA))

    return {
        "fedshield RDP": ours_rdp,
        "fedshield PLD": ours_pld,
        "fedshield PLD, T compose calls": ours_pld_per_round,
        "Opacus RDP (T step calls)": opacus_steps(RDPAccountant),
        "Opacus RDP (history)": opacus_history(RDPAccountant),
        "Opacus PRV (T step calls)": opacus_steps(PRVAccountant),
        "Opacus PRV (history)": opacus_history(PRVAccountant),
        "dp_accounting RDP": dpa_rdp,
        REFERENCE: dpa_pld,
    }


def measure(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    times, eps = [], float("nan")
    for _ in range(repeats):
        _clear_our_caches()
        start = time.perf_counter()
        eps = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), eps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="runs/bench_dp")
    args = ap.parse_args()

    import dp_accounting
    import opacus

    warnings.filterwarnings("ignore")  # Opacus warns about extreme optimal orders; dp_accounting logs too
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)

    results: list[dict[str, Any]] = []
    for q, sigma in SETTINGS:
        rows = {name: measure(fn, args.repeats) for name, fn in cases(q, sigma, args.rounds).items()}
        ref_time, ref_eps = rows[REFERENCE]
        print(
            f"\nT = {args.rounds:,} rounds, Poisson q = {q}, sigma = {sigma}, delta = {DELTA:g} "
            f"(median of {args.repeats}, {os.cpu_count()} CPU cores)"
        )
        print(f"{'accountant':34s} {'time s':>9s} {'time / ref':>10s} {'epsilon':>11s} {'eps / ref':>10s}")
        for name, (seconds, eps) in rows.items():
            print(f"{name:34s} {seconds:9.4f} {seconds / ref_time:10.3f} {eps:11.5f} {eps / ref_eps:10.5f}")
            results.append(
                {
                    "q": q,
                    "sigma": sigma,
                    "rounds": args.rounds,
                    "delta": DELTA,
                    "accountant": name,
                    "seconds": seconds,
                    "epsilon": eps,
                    "time_ratio_vs_dp_accounting_pld": seconds / ref_time,
                    "epsilon_ratio_vs_dp_accounting_pld": eps / ref_eps,
                }
            )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "versions": {
            "opacus": opacus.__version__,
            "dp_accounting": getattr(dp_accounting, "__version__", "?"),
        },
        "results": results,
    }
    (out / "bench_dp.json").write_text(json.dumps(record, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    names = list(dict.fromkeys(str(r["accountant"]) for r in results))
    fig, axes = plt.subplots(
        len(SETTINGS), 2, figsize=(11, 2.2 + 1.6 * len(SETTINGS)), dpi=110, squeeze=False
    )
    for row_axes, (q, sigma) in zip(axes, SETTINGS, strict=True):
        by_name = {str(r["accountant"]): r for r in results if r["q"] == q and r["sigma"] == sigma}
        colours = [
            "C0" if n.startswith("fedshield") else "C1" if n.startswith("Opacus") else "C7" for n in names
        ]
        row_axes[0].barh(names, [float(by_name[n]["seconds"]) for n in names], color=colours)
        row_axes[0].set_xscale("log")
        row_axes[0].xaxis.set_minor_formatter(NullFormatter())
        row_axes[0].set_xlabel("seconds to compose T rounds + get epsilon (log)")
        row_axes[0].invert_yaxis()
        row_axes[1].barh(names, [float(by_name[n]["epsilon"]) for n in names], color=colours)
        row_axes[1].set_xlabel(f"epsilon at delta = {DELTA:g} (lower is tighter)")
        row_axes[1].set_yticks([])
        row_axes[1].invert_yaxis()
        row_axes[0].set_title(f"q = {q}, sigma = {sigma}, T = {args.rounds:,}", loc="left")
    fig.tight_layout()
    fig.savefig(out / "bench_dp.png")
    print(f"\nwrote {out / 'bench_dp.json'} and {out / 'bench_dp.png'}")


if __name__ == "__main__":
    main()
