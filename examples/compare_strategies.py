"""Compare FedAvg, FedProx and FedAdam on breast cancer split across 10 hospitals with strong label skew.

    .venv/bin/python examples/compare_strategies.py [--rounds 30] [--alpha 0.1]

Prints the final test accuracy of each strategy next to the centralized baseline.
"""

from __future__ import annotations

import argparse

from fl.config import default_config
from fl.simulation import Simulation


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--alpha", type=float, default=0.1, help="Dirichlet label-skew concentration (smaller = more skew)")
    args = ap.parse_args(argv)
    base = default_config().replace(data={"alpha": args.alpha}, run={"rounds": args.rounds, "centralized_baseline": False})
    variants = {
        "fedavg": base,
        "fedprox (mu=0.1)": base.replace(server={"strategy": "fedprox"}, client={"mu": 0.1}),
        "fedadam (lr=0.05)": base.replace(server={"strategy": "fedadam", "lr": 0.05}),
    }
    results = {}
    for name, cfg in variants.items():
        out = Simulation(cfg, progress=False).run()
        results[name] = out.final_metrics["test_accuracy"]
    central = Simulation(base.replace(run={"rounds": 1, "centralized_baseline": True}), progress=False).run().centralized
    assert central is not None
    results["centralized"] = central["test_accuracy"]
    for name, acc in results.items():
        print(f"{name:20s} test accuracy {acc:.4f}")
    return results


if __name__ == "__main__":
    main()
