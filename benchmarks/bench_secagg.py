"""SecAgg / SecAgg+ cost: fedshield vs Flower's SecAgg+ (same n, m, k, t, dropout, same process) and the
PRG floor of this machine.

    .venv/bin/python benchmarks/bench_secagg.py            # full grid (several minutes; needs '.[bench]')
    .venv/bin/python benchmarks/bench_secagg.py --quick    # n <= 100, m <= 1e5
    .venv/bin/python benchmarks/bench_secagg.py --n 100 --m 1000000 --dropout 0.1

Grid: n in {10, 100} with SecAgg (complete graph, t = n//2 + 1) and n = 500 with SecAgg+ (Harary graph,
k and t from :func:`secagg.graph.choose_params` for the cell's dropout rate, at least 0.1), m in
{1e4, 1e5, 1e6}, dropout in {0, 0.1, 0.3} (clients vanish after sharing keys, so the server must
reconstruct their mask keys). Inputs are uniform in Z_{2^32}. Timing is wall clock in one process, one
thread of compute per party (parties run one after another):

* ``client s`` mean over surviving clients of all their protocol work; ``mask s`` the masking phase alone
  (share decryption + k + 1 mask expansions + adds) — this is what the PRG floor bounds;
* ``server s`` all server work of the round (collecting, reconstructing, unmasking); transport
  (encoding/decoding messages) is not counted for either side;
* ``KiB/client`` bytes one client uploads over the round (fedshield's wire encoding; Flower's protobuf);
* ``floor s`` the time to expand k·m·4 bytes of AES-256-CTR keystream (``prg_floor_seconds``);
* Flower columns come from ``benchmarks/flower_ref.py`` (Flower's own secaggplus_mod and SecAggPlusWorkflow,
  see its docstring); for m >= 1e5 and n >= 100 Flower masks real vectors on 10 sampled clients only
  (``mask_sample=10``), everything else runs in full.

Goals (issue 3): client masking within 2x of the floor and >= 5x faster than Flower at m = 1e6; server
unmasking at n = 100, m = 1e6, 10 % dropout under 10 s. Writes ``runs/bench_secagg/bench_secagg.json``
and a plot.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from secagg.graph import NeighbourGraph, choose_params
from secagg.protocol import ProtocolConfig
from secagg.simulate import run_round

HERE = Path(__file__).resolve().parent


def _flower_ref() -> Any:
    spec = importlib.util.spec_from_file_location("flower_ref", HERE / "flower_ref.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["flower_ref"] = module
    spec.loader.exec_module(module)
    return module


class FlowerTimeoutError(Exception):
    """A Flower cell ran past --flower-timeout."""


def _timeout(signum: int, frame: object) -> None:
    raise FlowerTimeoutError("Flower cell exceeded --flower-timeout")


def plan(n: int, dropout: float) -> tuple[NeighbourGraph, int, str]:
    if n <= 100:
        return NeighbourGraph.complete(n), n // 2 + 1, "SecAgg"
    params = choose_params(n, dropout_rate=max(dropout, 0.1))
    return params.graph(bytes(32)), params.threshold, "SecAgg+"


def run_fedshield(n: int, m: int, dropout: float, seed: int = 0) -> dict[str, float]:
    graph, t, kind = plan(n, dropout)
    config = ProtocolConfig(seed + 1, graph, t, m, 32)
    rng = np.random.default_rng(seed)
    inputs = {u: rng.integers(0, 2**32, m, dtype=np.uint64).astype(np.uint32) for u in config.client_ids}
    dropped = rng.choice(np.arange(1, n + 1), size=round(dropout * n), replace=False)
    drops = {int(u): "mask" for u in dropped}
    result, stats = run_round(config, inputs, drops=drops)  # type: ignore[arg-type]
    expected = np.zeros(m, dtype=np.uint32)
    for u in result.survivors:
        expected += inputs[u]
    survivors = set(result.survivors)
    return {
        "kind": kind,  # type: ignore[dict-item]
        "k": float(graph.degree),
        "t": float(t),
        "client_s": float(np.mean([stats.client_seconds[u] for u in survivors])),
        "client_mask_s": float(np.mean([stats.client_phase_seconds["mask"][u] for u in survivors])),
        "server_s": stats.server_seconds,
        "bytes_per_client": float(np.mean([stats.upload_bytes[u] for u in survivors])),
        "correct": float(np.array_equal(result.vector, expected)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n <= 100 and m <= 1e5 only")
    ap.add_argument("--n", type=int, nargs="*", default=[10, 100, 500])
    ap.add_argument("--m", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dropout", type=float, nargs="*", default=[0.0, 0.1, 0.3])
    ap.add_argument("--no-flower", action="store_true", help="skip Flower even if it is installed")
    ap.add_argument("--flower-timeout", type=int, default=0, help="give up on one Flower cell after this many seconds")
    ap.add_argument("--out", default="runs/bench_secagg")
    args = ap.parse_args()
    ns = [n for n in args.n if not args.quick or n <= 100]
    ms = [m for m in args.m if not args.quick or m <= 100_000]
    flower = _flower_ref()
    use_flower = flower.flower_available() and not args.no_flower
    if not use_flower:
        print("Flower (flwr) not installed or disabled: install '.[bench]' for the comparison columns")
    cells = [(n, m, d) for n in ns for m in ms for d in args.dropout]
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for n, m, d in tqdm(cells, desc="cells"):
        ours = run_fedshield(n, m, d)
        row: dict[str, Any] = {"n": n, "m": m, "dropout": d, **{f"fs_{k}": v for k, v in ours.items()}}
        k, t = int(ours["k"]), int(ours["t"])
        row["floor_s"] = flower.prg_floor_seconds(k * m * 4)
        if use_flower:
            sample = 10 if (m >= 100_000 and n >= 100) else None
            if args.flower_timeout:
                signal.signal(signal.SIGALRM, _timeout)
                signal.alarm(args.flower_timeout)
            try:
                fl = flower.run_flower_secaggplus(n, m, k, t, d, mask_sample=sample)
                row.update({f"flwr_{key}": value for key, value in fl.items() if isinstance(value, int | float)})
            except Exception as exc:  # noqa: BLE001 - report Flower's failure in the table, keep going
                row["flwr_error"] = f"{type(exc).__name__}: {exc}"[:120]
            finally:
                signal.alarm(0)
        rows.append(row)
        # written after every cell: a long grid that is stopped keeps what it measured
        (out / "bench_secagg.json").write_text(json.dumps({"rows": rows}, indent=2))

    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    header = (
        f"{'n':>4} {'m':>8} {'drop':>5} {'kind':>7} {'k':>4} {'t':>4} | {'client s':>9} {'mask s':>8} "
        f"{'floor s':>8} {'mask/flr':>8} {'server s':>9} {'KiB/cl':>8} | {'flwr mask s':>11} {'flwr srv s':>10} "
        f"{'flwr KiB':>9} | {'mask x':>7} {'server x':>8}"
    )
    print("\n" + header)
    print("-" * len(header))
    for r in rows:
        fm, fs = r.get("flwr_client_mask_s"), r.get("flwr_server_s")
        print(
            f"{r['n']:>4} {r['m']:>8} {r['dropout']:>5.2f} {r['fs_kind']:>7} {int(r['fs_k']):>4} {int(r['fs_t']):>4} | "
            f"{r['fs_client_s']:>9.4f} {r['fs_client_mask_s']:>8.4f} {r['floor_s']:>8.4f} "
            f"{r['fs_client_mask_s'] / r['floor_s']:>8.2f} {r['fs_server_s']:>9.3f} {r['fs_bytes_per_client'] / 1024:>8.1f} | "
            f"{fmt(fm, '>11.4f')} {fmt(fs, '>10.3f')} {fmt(r.get('flwr_bytes_per_client', math.nan) / 1024, '>9.1f')} | "
            f"{fmt(fm / r['fs_client_mask_s'] if fm else None, '>7.1f')} {fmt(fs / r['fs_server_s'] if fs else None, '>8.1f')}"
            + (f"  flower: {r['flwr_error']}" if "flwr_error" in r else "")
        )
    print("mask/flr = fedshield masking time / PRG floor (goal <= 2); mask x, server x = Flower time / fedshield time")
    bad = [r for r in rows if r["fs_correct"] != 1.0]
    print("all fedshield sums exact" if not bad else f"INCORRECT SUMS in {len(bad)} cells")

    record = {"rows": rows, "flower": flower.flower_version() if use_flower else None, "time": time.time()}
    (out / "bench_secagg.json").write_text(json.dumps(record, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for n in ns:
        sel = [r for r in rows if r["n"] == n and r["dropout"] == 0.1] or [r for r in rows if r["n"] == n]
        sel = sorted({r["m"]: r for r in sel}.values(), key=lambda r: r["m"])
        axes[0].loglog([r["m"] for r in sel], [r["fs_client_mask_s"] for r in sel], "o-", label=f"fedshield n={n}")
        axes[1].loglog([r["m"] for r in sel], [r["fs_server_s"] for r in sel], "o-", label=f"fedshield n={n}")
        if use_flower and all("flwr_client_mask_s" in r for r in sel):
            axes[0].loglog([r["m"] for r in sel], [r["flwr_client_mask_s"] for r in sel], "x--", label=f"Flower n={n}")
            axes[1].loglog([r["m"] for r in sel], [r["flwr_server_s"] for r in sel], "x--", label=f"Flower n={n}")
    axes[0].set_title("client masking time (s), 10% dropout")
    axes[1].set_title("server time per round (s), 10% dropout")
    for ax in axes:
        ax.set_xlabel("vector length m")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "bench_secagg.png")
    print(f"wrote {out / 'bench_secagg.json'} and {out / 'bench_secagg.png'}")


if __name__ == "__main__":
    main()
