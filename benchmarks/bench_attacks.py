"""Gradient inversion speed: fedshield's DLG / iDLG / IG next to Zhu et al.'s reference DLG loop, same run.

    .venv/bin/python benchmarks/bench_attacks.py [--images 10] [--threads 1] [--out runs/bench_attacks]

Setting: sklearn digits (8x8 in [0, 1]), sigmoid MLP 64-32-10, batch size 1, the FedSGD gradient of
fedshield's own client (:func:`attacks.inversion.observe_gradient`), no defence, one restart each.
Per image and method: iterations per second (L-BFGS iterations or Adam steps), objective evaluations
per second, wall time until the reconstruction first reaches 30 dB PSNR (clamped to [0, 1]), and the
final PSNR. The reference is a line-by-line reimplementation of the DLG notebook (mit-han-lab/dlg):
``torch.optim.LBFGS([dummy_data, dummy_label])`` with its defaults (lr 1, 20 iterations per step, no
line search), a closure taking the summed squared gradient difference through
``torch.autograd.grad(..., create_graph=True)``, random-normal dummies.

Prints a table, writes ``runs/bench_attacks/bench_attacks.json`` and a PSNR-vs-wall-time plot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from tqdm import tqdm

from attacks import inversion
from attacks.inversion import Observation, attack, observe_gradient
from fl.data import load_digits
from fl.models import build_model

TARGET_DB = 30.0
Trace = list[tuple[float, int, int, float]]  # (seconds, iterations, evaluations, psnr)


def _psnr(x: torch.Tensor, truth: torch.Tensor) -> float:
    mse = float(((x.detach().clamp(0, 1).double() - truth.double()) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-20))


def reference_dlg(
    net: torch.nn.Module, gt_data: torch.Tensor, gt_label: torch.Tensor, steps: int, seed: int
) -> Trace:
    """Zhu et al.'s DLG notebook loop, kept as written there (plus timing and PSNR bookkeeping)."""

    def cross_entropy_for_onehot(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.mean(torch.sum(-target * F.log_softmax(pred, dim=-1), 1))

    criterion = cross_entropy_for_onehot
    gt_onehot_label = F.one_hot(gt_label, 10).float()
    pred = net(gt_data)
    y = criterion(pred, gt_onehot_label)
    dy_dx = torch.autograd.grad(y, list(net.parameters()))
    original_dy_dx = [g.detach().clone() for g in dy_dx]

    generator = torch.Generator().manual_seed(seed)
    dummy_data = torch.randn(gt_data.size(), generator=generator).requires_grad_(True)
    dummy_label = torch.randn(gt_onehot_label.size(), generator=generator).requires_grad_(True)
    optimizer = torch.optim.LBFGS([dummy_data, dummy_label])
    trace: Trace = [(0.0, 0, 0, _psnr(dummy_data, gt_data))]
    started = time.perf_counter()
    for _ in range(steps):

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            dummy_pred = net(dummy_data)
            dummy_onehot_label = F.softmax(dummy_label, dim=-1)
            dummy_loss = criterion(dummy_pred, dummy_onehot_label)
            dummy_dy_dx = torch.autograd.grad(dummy_loss, list(net.parameters()), create_graph=True)
            grad_diff = torch.zeros(())
            for gx, gy in zip(dummy_dy_dx, original_dy_dx, strict=True):
                grad_diff += ((gx - gy) ** 2).sum()
            grad_diff.backward()
            return grad_diff

        optimizer.step(closure)
        state = optimizer.state[dummy_data]
        elapsed = time.perf_counter() - started
        trace.append((elapsed, int(state.get("n_iter", 0)), int(state.get("func_evals", 0)), _psnr(dummy_data, gt_data)))
    return trace


def ours(obs: Observation, truth: torch.Tensor, method: str, iterations: int, seed: int) -> Trace:
    """One restart of fedshield's attack with a callback recording (time, iterations, evaluations, PSNR)."""
    trace: Trace = []
    evaluations = [0]
    distances = {name: getattr(inversion, name) for name in ("_l2_distance", "_cosine_distance")}

    def counted(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
        def wrapper(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            evaluations[0] += 1
            return fn(a, b)

        return wrapper

    def record(restart: int, iteration: int, x: torch.Tensor, objective: float) -> None:
        trace.append((time.perf_counter() - started, iteration, evaluations[0], _psnr(x, truth)))

    for name, fn in distances.items():
        setattr(inversion, name, counted(fn))
    try:
        started = time.perf_counter()
        result = attack(obs, method, restarts=1, max_iterations=iterations, seed=seed, callback=record)
    finally:
        for name, fn in distances.items():
            setattr(inversion, name, fn)
    trace.insert(0, (0.0, 0, 0, float("nan")))
    # The attack's own clock includes label recovery and setup; end the trace on its final answer.
    trace.append((result.wall_time, result.iterations, evaluations[0], _psnr(result.inputs, truth)))
    return trace


def _summary(traces: list[Trace]) -> dict[str, float]:
    to_target = [next((t for t, _, _, p in tr if p >= TARGET_DB), math.inf) for tr in traces]
    reached = [t for t in to_target if math.isfinite(t)]
    iters = sum(tr[-1][1] for tr in traces)
    wall = sum(tr[-1][0] for tr in traces)
    evals = [tr[-1][2] for tr in traces]
    return {
        "runs": len(traces),
        "reached_30db": len(reached),
        "median_seconds_to_30db": statistics.median(to_target) if to_target else math.inf,
        "mean_seconds_to_30db_when_reached": statistics.fmean(reached) if reached else math.inf,
        "iterations_per_second": iters / wall if wall > 0 else math.nan,
        "evaluations_per_second": sum(evals) / wall if wall > 0 and min(evals) >= 0 else math.nan,
        "median_final_psnr": statistics.median(tr[-1][3] for tr in traces),
        "total_wall_seconds": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10, help="digits to attack (the first N of the data set)")
    ap.add_argument("--reference-steps", type=int, default=15, help="outer LBFGS steps of the reference (x20 iterations)")
    ap.add_argument("--dlg-iterations", type=int, default=300)
    ap.add_argument("--ig-iterations", type=int, default=600)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/bench_attacks")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = load_digits()
    net = build_model("mlp", (1, 8, 8), 10, hidden=(32,), seed=0, activation="sigmoid")
    methods: dict[str, Callable[[Observation, torch.Tensor, torch.Tensor, int], Trace]] = {
        "reference DLG (Zhu et al. notebook loop)": lambda obs, x, y, s: reference_dlg(net, x, y, args.reference_steps, s),
        "fedshield dlg (L-BFGS + Wolfe, soft labels)": lambda obs, x, y, s: ours(obs, x, "dlg", args.dlg_iterations, s),
        "fedshield idlg (analytic label + L-BFGS)": lambda obs, x, y, s: ours(obs, x, "idlg", args.dlg_iterations, s),
        "fedshield ig (cosine + TV, signed Adam)": lambda obs, x, y, s: ours(obs, x, "ig", args.ig_iterations, s),
    }
    traces: dict[str, list[Trace]] = {name: [] for name in methods}
    # Warm-up (first autograd graph, thread pools) outside the timed runs.
    warm = observe_gradient(net, data.x[:1], data.y[:1])
    attack(warm, "dlg", restarts=1, max_iterations=3)
    for i in tqdm(range(args.images), desc="images"):
        x, y = data.x[i : i + 1], data.y[i : i + 1]
        obs = observe_gradient(net, x, y)
        truth, label = torch.from_numpy(x), torch.from_numpy(y)
        for name, run in methods.items():
            traces[name].append(run(obs, truth, label, i))

    summaries = {name: _summary(tr) for name, tr in traces.items()}
    print(f"\nDLG-family on digits 8x8, sigmoid MLP 64-32-10, batch 1, {args.images} images, "
          f"{args.threads} thread(s) of {os.cpu_count()} cores, torch {torch.__version__}")
    header = f"{'method':46s} {'it/s':>8s} {'evals/s':>8s} {'reach30':>8s} {'med s→30dB':>11s} {'med final dB':>12s}"
    print(header)
    for name, s in summaries.items():
        print(f"{name:46s} {s['iterations_per_second']:8.0f} {s['evaluations_per_second']:8.0f} "
              f"{s['reached_30db']:>4d}/{s['runs']:<3d} {s['median_seconds_to_30db']:11.3f} {s['median_final_psnr']:12.1f}")
    ref = summaries["reference DLG (Zhu et al. notebook loop)"]["median_seconds_to_30db"]
    mine = summaries["fedshield dlg (L-BFGS + Wolfe, soft labels)"]["median_seconds_to_30db"]
    print(f"median time to 30 dB, reference / fedshield dlg: {ref / mine:.2f}x" if math.isfinite(ref) and mine > 0
          else "reference DLG did not reach 30 dB on most images")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "setting": {"dataset": "digits", "model": "mlp 64-32-10 sigmoid", "batch_size": 1, "images": args.images,
                    "threads": args.threads, "torch": torch.__version__, "target_db": TARGET_DB,
                    "reference_steps": args.reference_steps, "dlg_iterations": args.dlg_iterations,
                    "ig_iterations": args.ig_iterations},
        "summary": summaries,
        "traces": {name: [[list(p) for p in tr] for tr in trs] for name, trs in traces.items()},
    }
    (out / "bench_attacks.json").write_text(json.dumps(record, indent=1, allow_nan=True))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    for k, (name, trs) in enumerate(traces.items()):
        for j, tr in enumerate(trs):
            pts = [(t, p) for t, _, _, p in tr if math.isfinite(p)]
            # Steps: a PSNR is only known where it was measured (every 20 reference / 10 L-BFGS iterations).
            ax.plot([max(t, 1e-3) for t, _ in pts], [min(p, 150) for _, p in pts], color=f"C{k}", alpha=0.55,
                    lw=1.2, drawstyle="steps-post", label=name if j == 0 else None)
    ax.axhline(TARGET_DB, color="k", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("wall time (s, log)")
    ax.set_ylabel("PSNR (dB, capped at 150)")
    ax.set_title(f"Gradient inversion on digits, sigmoid MLP, batch 1 ({args.images} images)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "bench_attacks.png")
    print(f"wrote {out / 'bench_attacks.json'} and {out / 'bench_attacks.png'}")


if __name__ == "__main__":
    main()
