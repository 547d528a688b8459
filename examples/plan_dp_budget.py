"""Plan a client-level DP budget before a study: noise, ε per round, rounds per budget, noise on the mean.

    .venv/bin/python examples/plan_dp_budget.py [--clients 1000] [--rate 0.05] [--rounds 100] [--clip 0.5]
                                                [--epsilon 3] [--delta 1e-5] [--sigma 1.0]

DP-FedAvg with Poisson client sampling (rate q): calibrates the noise multiplier σ that reaches the target
(ε, δ) after the planned rounds with the PLD and the RDP accountant, prints ε after every tenth of the
rounds for both, how many rounds a given σ affords within the budget, and the noise the server adds to each
coordinate of the averaged update (σ·C / expected cohort). Nothing is trained. Writes ``plan.json`` to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Literal

from dp.accountants import rounds_for_budget
from fl.privacy import DPSettings, SamplingInfo, calibrate, epsilon_curve

ACCOUNTANTS: tuple[Literal["pld", "rdp"], ...] = ("pld", "rdp")


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1000, help="population N")
    ap.add_argument("--rate", type=float, default=0.05, help="Poisson client sampling rate q")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--clip", type=float, default=0.5, help="L2 bound C on each client's update")
    ap.add_argument("--epsilon", type=float, default=3.0, help="target ε after --rounds rounds")
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--sigma", type=float, default=1.0, help="a noise multiplier to price in rounds")
    ap.add_argument("--points", type=int, default=10, help="rows of the ε-vs-rounds table")
    ap.add_argument("--out", default="runs/plan_dp_budget")
    args = ap.parse_args(argv)
    sampling = SamplingInfo("poisson", args.clients, args.rate)
    settings = {
        name: DPSettings(mode="central", clip=args.clip, target_epsilon=args.epsilon, delta=args.delta, accountant=name)
        for name in ACCOUNTANTS
    }
    sigma = {name: calibrate(s, sampling, args.rounds) for name, s in settings.items()}
    # Both curves at the PLD-calibrated σ: same mechanism, two ways of pricing it.
    curves = {name: epsilon_curve(s, sampling, sigma["pld"], args.rounds, args.points) for name, s in settings.items()}
    reached = {
        name: epsilon_curve(s, sampling, sigma[name], args.rounds, points=1)[-1][1] for name, s in settings.items()
    }
    affordable = {
        name: rounds_for_budget(args.epsilon, args.delta, args.sigma, sampling_rate=args.rate, accountant=name)
        for name in ACCOUNTANTS
    }
    cohort = sampling.expected_cohort
    noise_std = {name: z * args.clip / cohort for name, z in sigma.items()}

    print(f"N = {args.clients} clients, q = {args.rate} (expected cohort {cohort:g}), {args.rounds} rounds, "
          f"C = {args.clip}, target (ε, δ) = ({args.epsilon:g}, {args.delta:g})")
    for name in ACCOUNTANTS:
        print(f"  {name.upper()}: σ = {sigma[name]:.4f} reaches ε = {reached[name]:.4f}; "
              f"noise std per coordinate of the mean update σ·C/(qN) = {noise_std[name]:.3e}")
    print(f"\nε after t rounds at σ = {sigma['pld']:.4f}")
    print(f"{'rounds':>7} {'PLD ε':>9} {'RDP ε':>9}")
    for (t, eps_pld), (_, eps_rdp) in zip(curves["pld"], curves["rdp"], strict=True):
        print(f"{t:>7} {eps_pld:>9.4f} {eps_rdp:>9.4f}")
    print(f"\nrounds within ε = {args.epsilon:g} at σ = {args.sigma:g}: "
          + ", ".join(f"{name.upper()} {affordable[name]}" for name in ACCOUNTANTS))

    plan: dict[str, object] = {
        "settings": vars(args),
        "expected_cohort": cohort,
        "sigma": sigma,
        "epsilon_reached": reached,
        "noise_std_on_mean": noise_std,
        "curves": {name: [[t, eps] for t, eps in curve] for name, curve in curves.items()},
        "rounds_for_budget": affordable,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(plan, indent=2))
    print(f"wrote {out / 'plan.json'}")
    return plan


if __name__ == "__main__":
    main()
