"""Privacy-utility curve: FedAvg on breast cancer across 100 simulated hospitals at several ε (δ = 1e-5).

    .venv/bin/python examples/dp_privacy_utility.py [--clients 100] [--rounds 40] [--epsilons 0.25 0.5 1 3 8]

Central DP-FedAvg (Poisson client sampling, PLD accountant, σ calibrated per target ε). Writes
``runs/dp_privacy_utility/curve.json`` and ``curve.png`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fl.config import default_config
from fl.simulation import Simulation


def main(argv: list[str] | None = None) -> list[dict[str, float | None]]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--rate", type=float, default=0.3, help="Poisson client sampling rate q")
    ap.add_argument("--clip", type=float, default=0.3)
    ap.add_argument("--epsilons", type=float, nargs="*", default=[0.25, 0.5, 1.0, 3.0, 8.0])
    ap.add_argument("--out", default="runs/dp_privacy_utility")
    args = ap.parse_args(argv)
    base = default_config().replace(
        data={"num_clients": args.clients, "partition": "iid"},
        sampling={"method": "poisson", "rate": args.rate},
        client={"epochs": 1, "batch_size": 0, "lr": 0.5},
        run={"rounds": args.rounds, "centralized_baseline": False},
    )
    rows: list[dict[str, float | None]] = []
    for eps in [None, *sorted(args.epsilons, reverse=True)]:
        cfg = base if eps is None else base.replace(dp={"mode": "central", "target_epsilon": eps, "clip": args.clip})
        out = Simulation(cfg, progress=False).run()
        last = out.history[-1].metrics
        rows.append({
            "target_epsilon": eps,
            "epsilon_spent": last.get("dp_epsilon"),
            "noise_multiplier": last.get("dp_noise_multiplier"),
            "test_accuracy": out.final_metrics["test_accuracy"],
            "test_loss": out.final_metrics["test_loss"],
        })
    print(f"{'target eps':>10} {'spent eps':>10} {'sigma':>8} {'accuracy':>9} {'loss':>8}")
    for r in rows:
        tgt = "no DP" if r["target_epsilon"] is None else f"{r['target_epsilon']:g}"
        spent = "-" if r["epsilon_spent"] is None else f"{r['epsilon_spent']:.4f}"
        sigma = "-" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.3f}"
        print(f"{tgt:>10} {spent:>10} {sigma:>8} {r['test_accuracy']:>9.4f} {r['test_loss']:>8.4f}")
    d = Path(args.out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "curve.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dp_rows = [r for r in rows if r["target_epsilon"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.semilogx([r["epsilon_spent"] for r in dp_rows], [r["test_accuracy"] for r in dp_rows], "o-", label="DP-FedAvg")
    ax.axhline(rows[0]["test_accuracy"], color="C3", linestyle="--", label="no DP")  # type: ignore[arg-type]
    ax.set_xlabel("ε spent (δ = 1e-5, PLD)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"breast cancer, {args.clients} clients, q = {args.rate}, {args.rounds} rounds")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(d / "curve.png")
    print(f"wrote {d / 'curve.json'} and {d / 'curve.png'}")
    return rows


if __name__ == "__main__":
    main()
