"""Write a run's results: ``results.json`` (every figure + what is needed to rerun), a plot, ``report.md``."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

from fl.simulation import RunOutput, config_hash


def versions() -> dict[str, str]:
    import numpy
    import torch

    from fl import __version__

    return {
        "fedshield": __version__,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def results_dict(out: RunOutput) -> dict[str, Any]:
    return {
        "config": out.config.to_dict(),
        "config_hash": config_hash(out.config),
        "seed": out.config.run.seed,
        "versions": versions(),
        "completed": out.completed,
        "rounds": [r.to_dict() for r in out.history],
        "final": out.final_metrics,
        "centralized": out.centralized,
        "timing": out.timing,
    }


def _metric_key(out: RunOutput) -> str:
    return "test_accuracy" if "test_accuracy" in out.final_metrics else "test_r2"


def plot(out: RunOutput, path: Path) -> None:
    """Accuracy per round (federated, worst client, centralized) and, with DP, ε spent per round beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = _metric_key(out)
    with_dp = any("dp_epsilon" in r.metrics for r in out.history)
    fig, axes = plt.subplots(1, 2 if with_dp else 1, figsize=(11.5 if with_dp else 6.4, 4.0), dpi=120)
    ax = axes[0] if with_dp else axes
    xs = [r.round_index + 1 for r in out.history if key in r.metrics]
    ys = [r.metrics[key] for r in out.history if key in r.metrics]
    ax.plot(xs, ys, marker="o", markersize=3, label=f"federated ({out.config.server.strategy})")
    low_key = key.replace("test_", "client_") + "_min"
    lows = [r.metrics[low_key] for r in out.history if key in r.metrics and low_key in r.metrics]
    if lows and len(lows) == len(xs):
        ax.plot(xs, lows, linestyle=":", color="C0", alpha=0.6, label="worst client")
    if out.centralized and key in out.centralized:
        ax.axhline(out.centralized[key], color="C3", linestyle="--", label="centralized")
    ax.set_xlabel("round")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title(f"{out.config.data.name}: {out.config.data.num_clients} clients, {out.config.data.partition}")
    ax.grid(alpha=0.3)
    ax.legend()
    if with_dp:
        ax2 = axes[1]
        rounds = [r.round_index + 1 for r in out.history if "dp_epsilon" in r.metrics]
        eps = [r.metrics["dp_epsilon"] for r in out.history if "dp_epsilon" in r.metrics]
        ax2.plot(rounds, eps, marker=".", color="C2", label=f"ε spent ({out.config.dp.accountant.upper()})")
        budget = out.config.dp.epsilon_budget or out.config.dp.target_epsilon
        ax2.axhline(budget, color="C3", linestyle="--", label=f"budget ε = {budget:g}")
        ax2.set_xlabel("round")
        ax2.set_ylabel(f"ε at δ = {out.config.dp.delta:g}")
        ax2.set_title(f"client-level DP ({out.config.dp.mode})")
        ax2.grid(alpha=0.3)
        ax2.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(out: RunOutput) -> str:
    key = _metric_key(out)
    cfg = out.config
    lines = [
        f"# fedshield run: {cfg.data.name}",
        "",
        f"{cfg.data.num_clients} clients ({cfg.data.partition}, alpha={cfg.data.alpha}), model {cfg.model.name}, "
        f"strategy {cfg.server.strategy}, aggregation {cfg.run.aggregation}, {len(out.history)}/{cfg.run.rounds} rounds, "
        f"seed {cfg.run.seed}.",
        "",
        "| | " + key.replace("_", " ") + " | test loss |",
        "|---|---|---|",
        f"| federated | {out.final_metrics.get(key, float('nan')):.4f} | {out.final_metrics.get('test_loss', float('nan')):.4f} |",
    ]
    if out.centralized:
        lines.append(
            f"| centralized | {out.centralized.get(key, float('nan')):.4f} | {out.centralized.get('test_loss', float('nan')):.4f} |"
        )
    client_key = key.replace("test_", "client_")
    if f"{client_key}_min" in out.final_metrics:
        lines += [
            "",
            f"Per-client {key.replace('test_', '')}: mean {out.final_metrics[client_key + '_mean']:.4f}, "
            f"10th percentile {out.final_metrics[client_key + '_p10']:.4f}, worst {out.final_metrics[client_key + '_min']:.4f}.",
        ]
    secure = [r.metrics for r in out.history if "secagg_aborted" in r.metrics]
    if secure:
        done = [m for m in secure if m["secagg_aborted"] == 0.0]
        lines += ["", f"Secure aggregation ({cfg.run.aggregation}): {len(secure) - len(done)} of {len(secure)} rounds aborted."]
        if done:
            def mean(key: str) -> float:
                return sum(m[key] for m in done) / len(done)

            lines.append(
                f"Per round: {mean('secagg_upload_bytes_per_client') / 1024:.1f} KiB uploaded per client, "
                f"client {mean('secagg_client_time_s') * 1e3:.1f} ms, server {mean('secagg_server_time_s') * 1e3:.1f} ms, "
                f"{sum(m['secagg_recovered_dropouts'] for m in done):.0f} dropouts recovered in total, "
                f"modulus 2^{done[-1]['secagg_modulus_bits']:.0f}, threshold {done[-1]['secagg_threshold']:.0f}, "
                f"max clipped fraction {max(m['secagg_clipped_fraction'] for m in done):.2e}."
            )
    dp_rounds = [r.metrics for r in out.history if "dp_epsilon" in r.metrics]
    if dp_rounds:
        d = cfg.dp
        last = dp_rounds[-1]
        lines += [
            "",
            f"Client-level DP ({d.mode}, {d.accountant.upper()} accountant): ε = {last['dp_epsilon']:.4f} at "
            f"δ = {d.delta:g} after {len(dp_rounds)} releases (budget {d.epsilon_budget or d.target_epsilon:g}); "
            f"noise multiplier {last['dp_noise_multiplier']:.4f}, clip {last['dp_clip']:.4g}, "
            f"clients over the clip in the last round {last['dp_clipped_fraction']:.0%}. "
            "Every release is in `privacy_ledger.jsonl` (written before the round's result was used).",
        ]
        if "stopped_by_privacy_budget_at_round" in out.timing:
            lines.append(
                f"Training stopped before round {out.timing['stopped_by_privacy_budget_at_round']:.0f}: "
                "its release would have exceeded the budget."
            )
    if out.history and "dpsgd_epsilon_max" in out.history[-1].metrics:
        m = out.history[-1].metrics
        c = cfg.client
        lines += [
            "",
            f"Sample-level DP-SGD on every client (σ = {c.dpsgd_noise_multiplier:g}, per-example clip "
            f"{c.dpsgd_max_grad_norm:g}, {c.dpsgd_accountant.upper()}): ε per client at δ = {c.dpsgd_delta:g} "
            f"is {m['dpsgd_epsilon_max']:.4f} for the most-trained client, {m['dpsgd_epsilon_mean']:.4f} on average.",
        ]
    lines += ["", f"Wall time {out.timing.get('wall_time_s', 0):.2f} s.", "", "![accuracy vs round](accuracy.png)", ""]
    return "\n".join(lines)


def write_report(out: RunOutput, out_dir: str | Path) -> Path:
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text(json.dumps(results_dict(out), indent=2, sort_keys=True), encoding="utf-8")
    plot(out, d / "accuracy.png")
    (d / "report.md").write_text(markdown(out), encoding="utf-8")
    (d / "config.toml").write_text(out.config.to_toml(), encoding="utf-8")
    return d
