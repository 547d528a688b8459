"""Hospitals train one model under SecAgg+ with client-level DP: no party ever sees a single hospital's update.

    .venv/bin/python examples/hospitals_secagg_dp.py [--clients 100] [--rounds 20] [--rate 0.3]
                                                     [--epsilon 4] [--mode distributed|central]

Breast cancer records split across many simulated hospitals; each round a Poisson sample (rate q) trains
locally, clips its update to C and uploads it through SecAgg+ (the server learns only the sum).

* ``--mode distributed`` (default): every hospital adds its own discrete Gaussian noise share to its
  quantised update before masking, so the server only ever sees a sum that is already DP; priced by RDP.
* ``--mode central``: the server adds Gaussian noise to the SecAgg+ sum (it must be trusted to do so); PLD.

Each release is recorded in the crash-safe ledger ``<out>/privacy_ledger.jsonl`` before the model moves
on. Prints accuracy and ε per round, then re-opens the ledger and replays it into a fresh accountant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dp.events import event_from_dict
from dp.ledger import BudgetLedger
from fl.config import default_config
from fl.privacy import make_accountant
from fl.simulation import Simulation, config_hash


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100, help="number of hospitals")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--rate", type=float, default=0.3, help="Poisson client sampling rate q")
    ap.add_argument("--clip", type=float, default=0.3, help="L2 bound C on each hospital's update")
    ap.add_argument("--epsilon", type=float, default=4.0, help="target ε after --rounds rounds (δ = 1e-5)")
    ap.add_argument("--mode", choices=("distributed", "central"), default="distributed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/hospitals_secagg_dp")
    args = ap.parse_args(argv)
    accountant = "rdp" if args.mode == "distributed" else "pld"
    # Distributed noise is calibrated for the expected cohort q·N; a round with fewer survivors carries less
    # total noise and spends more. The hard stop (epsilon_budget) therefore keeps 25 % headroom over the
    # calibration target; central noise does not depend on the cohort, so there the budget is the target.
    budget = 1.25 * args.epsilon if args.mode == "distributed" else args.epsilon
    config = default_config().replace(
        data={"num_clients": args.clients, "partition": "iid"},
        sampling={"method": "poisson", "rate": args.rate},
        client={"epochs": 1, "batch_size": 0, "lr": 0.5},
        run={"rounds": args.rounds, "seed": args.seed, "aggregation": "secagg+", "centralized_baseline": False},
        dp={"mode": args.mode, "accountant": accountant, "clip": args.clip, "target_epsilon": args.epsilon,
            "epsilon_budget": budget},
    )
    out_dir = Path(args.out)
    out = Simulation(config, out_dir=out_dir, progress=False).run()
    sigma = out.history[0].metrics["dp_noise_multiplier"] if out.history else float("nan")

    print(f"{args.clients} hospitals, q = {args.rate}, SecAgg+ with {args.mode} DP "
          f"(σ = {sigma:.3f}, C = {args.clip}, {accountant.upper()})")
    print(f"{'round':>5} {'cohort':>6} {'accuracy':>9} {'ε spent':>8} {'noise std':>10} {'upload B':>9}")
    for r in out.history:
        m = r.metrics
        print(f"{r.round_index:>5} {len(r.contributing):>6} {m['test_accuracy']:>9.4f} {m['dp_epsilon']:>8.4f} "
              f"{m['dp_noise_std']:>10.2e} {m['upload_bytes_per_client']:>9.0f}")

    # The ledger is the durable record: re-open it (as an auditor would) and replay every release.
    with BudgetLedger(
        out_dir / "privacy_ledger.jsonl", epsilon_budget=budget, delta=config.dp.delta,
        accountant_factory=lambda: make_accountant(accountant), event_decoder=event_from_dict,
        run_id=config_hash(config),
    ) as ledger:
        ledger_epsilon = ledger.spent_epsilon()
        releases = ledger.releases()
    rounds_run = int(out.timing["rounds_run"])
    result: dict[str, object] = {
        "mode": args.mode,
        "accuracy": out.final_metrics["test_accuracy"],
        "epsilon_spent": out.history[-1].metrics["dp_epsilon"] if out.history else 0.0,
        "ledger_epsilon": ledger_epsilon,
        "ledger_releases": len(releases),
        "mechanisms": sorted({rel.mechanism for rel in releases}),
        "epsilon_per_round": [r.metrics["dp_epsilon"] for r in out.history],
        "accuracy_per_round": [r.metrics["test_accuracy"] for r in out.history],
        "cohorts": [len(r.contributing) for r in out.history],
        "noise_multiplier": sigma,
        "rounds_run": rounds_run,
        "stopped_by_budget": "stopped_by_privacy_budget_at_round" in out.timing,
        "epsilon_budget": budget,
    }
    stop = " (stopped by the privacy budget)" if result["stopped_by_budget"] else ""
    print(f"final accuracy {result['accuracy']:.4f} after {rounds_run} rounds{stop}; "
          f"ε spent {ledger_epsilon:.4f} at δ = {config.dp.delta:g} "
          f"({len(releases)} releases in {out_dir / 'privacy_ledger.jsonl'}, budget {budget:g})")
    (out_dir / "summary.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
