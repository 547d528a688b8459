"""Hospitals train one breast-cancer model in Flower with fedshield's SecAgg+ and client-level DP.

    .venv/bin/python examples/flower_app.py [--clients 10] [--rounds 8] [--epsilon 8] [--budget 0]
                                            [--clip 0.5] [--mode secagg+|secagg] [--dp central|distributed]
                                            [--num-cpus 2]

A Flower app (``ServerApp`` + ``ClientApp``) run in Flower's simulation engine (Ray), for teams whose FL
stack is Flower:

* ClientApp: a plain Flower ``NumPyClient`` training fedshield's logistic regression on one hospital's
  records (``fl.client.local_train``), with :data:`fl.integrations.flower.secagg_mod` in its mods -- the mod
  clips the update to C, encodes it in fixed point and masks it; the server never sees it.
* ServerApp: Flower's ``DefaultWorkflow`` with fedshield's :class:`SecAggWorkflow` as the fit workflow, and
  Flower's stock ``FedAvg`` wrapped in fedshield's :class:`DPStrategy`: Gaussian noise from fedshield's
  CSPRNG on the secure sum (``--dp central``, PLD accountant) or each hospital's own discrete Gaussian
  share under the masks (``--dp distributed``, RDP), ε(δ) per round, every release written to
  ``<out>/privacy_ledger.jsonl`` first, and training stops before the budget would be exceeded.

Prints accuracy (pooled test set, evaluated on the server) and ε per round; ``main(argv)`` returns them.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.client import Client, NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fl.client import TrainConfig, evaluate, local_train
from fl.config import ExperimentConfig, default_config
from fl.integrations.flower import DPStrategy, SecAggWorkflow, secagg_mod
from fl.layout import ParamLayout
from fl.models import build_model
from fl.privacy import DPSettings, SamplingInfo
from fl.secure import SecAggSettings
from fl.simulation import build_federated_data, client_seed


def _model_and_layout(config: ExperimentConfig, data: Any) -> tuple[Any, ParamLayout]:
    model = build_model(config.model.name, data.feature_shape, data.num_classes, hidden=config.model.hidden,
                        seed=config.run.seed)
    return model, ParamLayout.from_module(model)


def _to_arrays(layout: ParamLayout, flat: np.ndarray) -> list[np.ndarray]:
    return [a.copy() for a in layout.unflatten(flat.astype(np.float32)).values()]


def make_client_app(config: ExperimentConfig) -> ClientApp:
    """One hospital per Flower node (``partition-id``); the SecAgg mod sits between Flower and training."""

    class Hospital(NumPyClient):
        def __init__(self, partition: int) -> None:
            import torch

            torch.set_num_threads(1)  # one core per simulated client
            self.data = build_federated_data(config)  # deterministic from the config's seed
            self.client = self.data.clients[partition]
            self.model, self.layout = _model_and_layout(config, self.data)
            c = config.client
            self.train = TrainConfig(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr)

        def fit(self, parameters: list[np.ndarray], fit_config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            weights = np.concatenate([p.ravel() for p in parameters]).astype(np.float32)
            cd = self.client
            update = local_train(
                self.model, self.layout, weights, cd.x_train, cd.y_train, self.train, task=self.data.task,
                client_id=cd.client_id, seed=client_seed(config.run.seed, int(fit_config["round"]), cd.client_id),
            )
            return _to_arrays(self.layout, weights + update.delta), update.num_examples, {}

    def client_fn(context: Context) -> Client:
        return Hospital(int(context.node_config["partition-id"])).to_client()

    return ClientApp(client_fn=client_fn, mods=[secagg_mod])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10, help="hospitals (Flower nodes); all train every round")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--epsilon", type=float, default=8.0, help="target ε after --rounds rounds (δ = 1e-5); the budget")
    ap.add_argument("--budget", type=float, default=0.0, help="hard ε stop (0: the target); below it training stops early")
    ap.add_argument("--clip", type=float, default=0.5, help="L2 bound C on each hospital's update")
    ap.add_argument("--mode", choices=("secagg+", "secagg"), default="secagg+")
    ap.add_argument("--dp", choices=("central", "distributed"), default="central",
                    help="central: the server noises the secure sum; distributed: each client adds a noise share")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs Ray may use (one per simulated client)")
    ap.add_argument("--out", default="runs/flower_app")
    args = ap.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)

    config = default_config().replace(
        data={"num_clients": args.clients, "partition": "iid"},
        client={"epochs": 1, "batch_size": 0, "lr": 0.5},
        run={"rounds": args.rounds, "seed": args.seed},
    )
    data = build_federated_data(config)
    model, layout = _model_and_layout(config, data)
    initial = layout.flatten(model)
    x_test, y_test = data.pooled_test()
    accuracy: dict[int, float] = {}
    weights: dict[int, np.ndarray] = {}  # the global model after each round, as the server evaluated it

    def evaluate_fn(server_round: int, arrays: list[np.ndarray], _: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        weights[server_round] = np.concatenate([a.ravel() for a in arrays]).astype(np.float32)
        layout.load_into(model, weights[server_round])
        metrics = evaluate(model, x_test, y_test, task=data.task)
        accuracy[server_round] = metrics["accuracy"]
        return metrics["loss"], {"accuracy": metrics["accuracy"]}

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ledger = out_dir / "privacy_ledger.jsonl"
    ledger.unlink(missing_ok=True)  # each run of the example is a new training with its own budget
    n = args.clients
    fedavg = FedAvg(
        fraction_fit=1.0, min_fit_clients=n, min_available_clients=n, fraction_evaluate=0.0,
        initial_parameters=ndarrays_to_parameters(_to_arrays(layout, initial)), evaluate_fn=evaluate_fn,
        on_fit_config_fn=lambda r: {"round": r},
    )
    dp = DPStrategy(
        fedavg, DPSettings(mode=args.dp, clip=args.clip, target_epsilon=args.epsilon, delta=1e-5,
                           epsilon_budget=args.budget, accountant="rdp" if args.dp == "distributed" else "pld"),
        SamplingInfo("fixed", n, per_round=n), rounds=args.rounds, seed=args.seed, ledger_path=ledger,
        run_id=f"flower-app-{args.seed}",
    )
    workflow = SecAggWorkflow(args.mode, SecAggSettings(scale_bits=20), seed=args.seed)
    history: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def _server(grid: Grid, context: Context) -> None:
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=args.rounds), strategy=dp)
        DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
        history["fit"] = legacy.history.metrics_distributed_fit

    t0 = time.perf_counter()
    run_simulation(
        server_app, make_client_app(config), num_supernodes=n,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": args.num_cpus, "num_gpus": 0, "include_dashboard": False},
        },
    )
    seconds = time.perf_counter() - t0
    dp.close()
    if "fit" not in history:
        raise RuntimeError("the ServerApp did not finish; see Flower's log above")
    fit = history["fit"]
    eps = [e for _, e in fit.get("dp_epsilon", [])]
    rounds_run = len(eps)
    result: dict[str, Any] = {
        "mode": args.mode,
        "dp": args.dp,
        "clients": n,
        "rounds_run": rounds_run,
        "accuracy": accuracy.get(max(accuracy), float("nan")) if accuracy else float("nan"),
        "initial_accuracy": accuracy.get(0, float("nan")),
        "accuracy_per_round": [accuracy[r] for r in sorted(accuracy) if r > 0],
        "epsilon_per_round": eps,
        "epsilon_budget": dp.settings.budget,
        "noise_multiplier": dp.noise_multiplier,
        "secagg_survivors": [int(v) for _, v in fit.get("secagg_survivors", [])],
        "upload_bytes_per_client": [v for _, v in fit.get("secagg_upload_bytes_per_client", [])],
        "stopped_by_budget": dp.stopped,
        "seconds": seconds,
    }
    print(f"{n} hospitals in Flower's simulation engine, {args.mode} + {args.dp} DP "
          f"(z = {dp.noise_multiplier:.3f}, C = {args.clip}, {dp.settings.accountant.upper()}, "
          f"budget ε = {dp.settings.budget:g} at δ = 1e-5)")
    print(f"{'round':>5} {'accuracy':>9} {'ε spent':>8} {'survivors':>9} {'upload B':>9}")
    print(f"{0:>5} {result['initial_accuracy']:>9.4f}")
    for i, e in enumerate(eps):
        print(f"{i + 1:>5} {accuracy.get(i + 1, float('nan')):>9.4f} {e:>8.4f} {result['secagg_survivors'][i]:>9} "
              f"{result['upload_bytes_per_client'][i]:>9.0f}")
    stop = " (stopped by the privacy budget)" if dp.stopped else ""
    print(f"final accuracy {result['accuracy']:.4f} after {rounds_run} rounds{stop} in {seconds:.1f} s; ledger {ledger}")
    (out_dir / "summary.json").write_text(json.dumps(result, indent=2))
    result["weights_per_round"] = [weights[r] for r in sorted(weights)]  # round 0 (initial) first
    return result


if __name__ == "__main__":
    main()
