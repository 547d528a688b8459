"""Attack your own federated pipeline: what can an honest-but-curious server learn from one client's update?

    .venv/bin/python examples/attack_own_pipeline.py [--clients 20] [--rounds 5] [--victim-examples 2]
                                                     [--clip 0.3] [--sigmas 0.01 0.1 1] [--iterations 300]

FedAvg on sklearn digits (pixels kept in [0, 1]: ``data.standardize = false``) with fl.simulation, then two
attacks by the server on the trained model:

a) gradient inversion: a small participant brings only --victim-examples images to a round and trains them
   with the pipeline's own client settings; the server replays that local training and optimises dummy
   images until their update matches (Inverting Gradients, unrolled local SGD). Repeated against the
   update clipped to C and noised with N(0, (σC)²) per coordinate on the client (local DP), the attacker
   knowing both (adaptive); scored by PSNR to the true images;
b) membership inference against a regular client: the server rebuilds the client's local model w + Δ from
   its update and asks which candidate images were in its training set: loss threshold and offline LiRA
   (OUT models replay the client's training from w), against the global model, and against the update
   with local DP. Reports AUC and TPR at 1 % FPR.

Writes ``reconstructions.png`` (true images, then each attack's reconstruction) and ``attacks.json`` to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from attacks import (
    Observation,
    TargetQueries,
    apply_defences,
    attack,
    lira_offline,
    loss_threshold_attack,
    match_reconstructions,
    observe_update,
    score_reconstruction,
)
from attacks.membership import TrainRecipe, query_client_update, train_out_pool
from dp.mechanisms import local_gaussian
from dp.rng import CryptoRNG
from fl.client import local_train
from fl.config import default_config
from fl.simulation import Simulation


def _invert(observation: Observation, truth: np.ndarray, args: argparse.Namespace) -> tuple[float, str, np.ndarray]:
    """(PSNR in dB, attacker name, reconstructions lined up with ``truth``) of the adaptive attacker."""
    result = attack(observation, restarts=args.restarts, max_iterations=args.iterations, seed=args.seed)
    recon = result.inputs.detach().numpy()
    match = match_reconstructions(recon, truth, "psnr", data_range=1.0)
    order = np.empty(len(truth), dtype=np.int64)
    order[match.truth_index] = match.recon_index
    return score_reconstruction(result, truth).target_psnr, result.attacker, recon[order]


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--victim-examples", type=int, default=2, help="images the inverted participant trains on")
    ap.add_argument("--clip", type=float, default=0.3, help="L2 bound C of the defended update")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.01, 0.1, 1.0], help="noise multipliers σ")
    ap.add_argument("--iterations", type=int, default=300, help="attack optimisation steps per restart")
    ap.add_argument("--restarts", type=int, default=2, help="attack restarts (doubled against noise)")
    ap.add_argument("--shadows", type=int, default=16, help="OUT models of offline LiRA")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/attack_own_pipeline")
    args = ap.parse_args(argv)
    config = default_config().replace(
        data={"name": "digits", "num_clients": args.clients, "partition": "iid", "standardize": False},
        model={"name": "mlp", "hidden": [32]},
        client={"epochs": 3, "batch_size": 8, "lr": 0.5},
        run={"rounds": args.rounds, "seed": args.seed, "centralized_baseline": False},
    )
    sim = Simulation(config, progress=False)
    run = sim.run()
    w, model, layout, train = run.weights, sim.model, sim.layout, sim.train_config
    x_test, y_test = sim.data.pooled_test()
    print(f"FedAvg on digits: {args.clients} clients, {args.rounds} rounds, "
          f"test accuracy {run.final_metrics['test_accuracy']:.4f}")

    # a) gradient inversion of a small participant's update, undefended and defended
    rng = np.random.default_rng(args.seed)
    victim = rng.choice(len(y_test), args.victim_examples, replace=False)
    x_v, y_v = x_test[victim], y_test[victim]
    observed = observe_update(model, x_v, y_v, train, weights=w, seed=args.seed)
    norm = float(np.linalg.norm(observed.vector))
    rows = {"original": x_v}
    psnr_by_defence: dict[str, float] = {}
    attackers: dict[str, str] = {}
    defences: dict[str, Observation] = {"none": observed, f"clip {args.clip:g}": apply_defences(observed, clip=args.clip)}
    for sigma in args.sigmas:
        defences[f"clip {args.clip:g} + σ {sigma:g}"] = apply_defences(
            observed, clip=args.clip, noise_std=sigma * args.clip, seed=args.seed + 1
        )
    print(f"\n(a) inverting the update of a participant with {args.victim_examples} images "
          f"(‖Δ‖ = {norm:.3f}, {train.epochs} local epochs, lr {train.lr})")
    print(f"{'defence':>22} {'attacker':>24} {'PSNR dB':>8}")
    for name, obs in defences.items():
        psnr, attacker, recon = _invert(obs, x_v, args)
        psnr_by_defence[name], attackers[name], rows[name] = psnr, attacker, recon
        print(f"{name:>22} {attacker:>24} {psnr:>8.1f}")

    # b) membership inference against client 0's update
    client = sim.data.clients[0]
    update = local_train(model, layout, w, client.x_train, client.y_train, train, task=sim.task,
                         client_id=client.client_id, seed=args.seed)
    m = client.num_train
    outsiders = np.setdiff1d(np.arange(len(y_test)), victim)[:m]  # never trained on by anyone
    cand_x = np.concatenate([client.x_train, x_test[outsiders]])
    cand_y = np.concatenate([client.y_train, y_test[outsiders]])
    is_member = np.arange(len(cand_y)) < m
    on_update = query_client_update(model, layout, w, update, cand_x, cand_y)
    others = [c for c in sim.data.clients if c.client_id != client.client_id]
    population_x = np.concatenate([c.x_train for c in others])
    population_y = np.concatenate([c.y_train for c in others])
    replay = TrainRecipe(sim.data.num_classes, "mlp", config.model.hidden, train, init_weights=w)
    pool = train_out_pool(replay, population_x, population_y, cand_x, cand_y, num_shadows=args.shadows,
                          seed=args.seed, fraction=m / len(population_y))
    sigma = max(args.sigmas)
    noised = local_gaussian(update.delta, args.clip, sigma, CryptoRNG.from_int_seed(args.seed, 0xA7)).astype(np.float32)
    layout.load_into(model, w)
    reports = {
        "update, loss threshold": loss_threshold_attack(on_update).report(is_member),
        "update, offline LiRA": lira_offline(on_update, pool).report(is_member),
        "global model, loss threshold": loss_threshold_attack(TargetQueries.from_model(model, cand_x, cand_y))
        .report(is_member),
        f"update + local DP σ {sigma:g}, loss": loss_threshold_attack(
            query_client_update(model, layout, w, noised, cand_x, cand_y)
        ).report(is_member),
    }
    print(f"\n(b) membership of {m} training images of client 0 vs {m} outsiders")
    print(f"{'target, attack':>32} {'AUC':>6} {'TPR@1%FPR':>10}")
    for name, report in reports.items():
        print(f"{name:>32} {report.auc:>6.3f} {report.tpr_at_1pct_fpr:>10.3f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _plot(rows, psnr_by_defence, out / "reconstructions.png")
    result: dict[str, object] = {
        "test_accuracy": run.final_metrics["test_accuracy"],
        "update_norm": norm,
        "psnr": psnr_by_defence,
        "attackers": attackers,
        "psnr_undefended": psnr_by_defence["none"],
        "psnr_defended": psnr_by_defence[f"clip {args.clip:g} + σ {sigma:g}"],
        "membership": {name: report.to_dict() for name, report in reports.items()},
    }
    (out / "attacks.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'reconstructions.png'} and {out / 'attacks.json'}")
    return result


def _plot(rows: dict[str, np.ndarray], psnr: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(rows["original"])
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols + 1.6, 1.3 * len(rows)), dpi=110, squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(images[c].reshape(8, 8), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        label = name if name == "original" else f"{name}\n{psnr[name]:.1f} dB"
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
