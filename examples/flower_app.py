"""Hospitals train one breast-cancer model in Flower with fedshield's SecAgg+ and client-level DP.

    .venv/bin/python examples/flower_app.py [--clients 10] [--rounds 8] [--epsilon 8] [--budget 0]
                                            [--clip 0.5] [--mode secagg+|secagg] [--dp central|distributed]
                                            [--api message|legacy] [--num-cpus 2]

A Flower app (``ServerApp`` + ``ClientApp``) run in Flower's simulation engine (Ray), for teams whose FL
stack is Flower. Both of Flower's server APIs are shown (``--api``):

* ``message`` (default; Flower's current Message API): the ClientApp is a ``@app.train()`` function
  training fedshield's logistic regression on one hospital's records (``fl.client.local_train``) and
  replying with an ArrayRecord and ``num-examples``; the ServerApp runs Flower's ``flwr.serverapp.strategy``
  ``FedAvg`` with ``strategy.start(grid=SecureGrid(grid, ..., dp=...))``: fedshield's SecAgg+ runs every
  train round and the DP release, and ε per round lands in Flower's ``Result``.
* ``legacy`` (``Strategy`` + ``LegacyContext``): a ``NumPyClient``; Flower's ``DefaultWorkflow`` with
  fedshield's :class:`SecAggWorkflow` as the fit workflow and Flower's stock ``FedAvg`` wrapped in
  fedshield's :class:`DPStrategy`.

Either way :data:`fl.integrations.flower.secagg_mod` sits in the ClientApp's mods -- it clips the update to
C, encodes it in fixed point and masks it; the server never sees it -- and the release is fedshield's:
Gaussian noise from its CSPRNG on the secure sum (``--dp central``, PLD accountant) or each hospital's own
discrete Gaussian share under the masks (``--dp distributed``, RDP), ε(δ) per round, every release written
to ``<out>/privacy_ledger.jsonl`` first, and training stops before the budget would be exceeded.

Prints accuracy (pooled test set, evaluated on the server) and ε per round, writes them to
``<out>/summary.json`` and plots them in ``<out>/summary.png``; ``main(argv)`` returns them.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import Client, NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg as MessageFedAvg
from flwr.simulation import run_simulation

from fl.client import TrainConfig, evaluate, local_train
from fl.config import ExperimentConfig, default_config
from fl.integrations.flower import DPStrategy, SecAggWorkflow, SecureGrid, secagg_mod
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


class _Hospital:
    """One hospital's records and model, built from the config in the ClientApp's process."""

    def __init__(self, config: ExperimentConfig, partition: int) -> None:
        import torch

        torch.set_num_threads(1)  # one core per simulated client
        self.config = config
        self.data = build_federated_data(config)  # deterministic from the config's seed
        self.client = self.data.clients[partition]
        self.model, self.layout = _model_and_layout(config, self.data)
        c = config.client
        self.train_config = TrainConfig(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr)

    def train(self, parameters: list[np.ndarray], server_round: int) -> tuple[list[np.ndarray], int]:
        weights = np.concatenate([p.ravel() for p in parameters]).astype(np.float32)
        cd = self.client
        update = local_train(
            self.model, self.layout, weights, cd.x_train, cd.y_train, self.train_config, task=self.data.task,
            client_id=cd.client_id, seed=client_seed(self.config.run.seed, server_round, cd.client_id),
        )
        return _to_arrays(self.layout, weights + update.delta), update.num_examples


def make_client_app(config: ExperimentConfig, api: str = "message") -> ClientApp:
    """One hospital per Flower node (``partition-id``); the SecAgg mod sits between Flower and training."""
    if api == "message":
        app = ClientApp(mods=[secagg_mod])

        @app.train()
        def train(msg: Message, context: Context) -> Message:
            hospital = _Hospital(config, int(context.node_config["partition-id"]))
            arrays, num_examples = hospital.train(msg.content.array_records["arrays"].to_numpy_ndarrays(),
                                                  int(msg.content.config_records["config"]["server-round"]))  # type: ignore[arg-type]
            reply = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": num_examples})})
            return Message(reply, reply_to=msg)

        return app

    class Hospital(NumPyClient):
        def __init__(self, partition: int) -> None:
            self.hospital = _Hospital(config, partition)

        def fit(self, parameters: list[np.ndarray], fit_config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            arrays, num_examples = self.hospital.train(parameters, int(fit_config["round"]))
            return arrays, num_examples, {}

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
    ap.add_argument("--api", choices=("message", "legacy"), default="message",
                    help="Flower's Message API strategy + SecureGrid, or Strategy + LegacyContext + SecAggWorkflow")
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

    def evaluate_model(server_round: int, arrays: list[np.ndarray]) -> dict[str, Any]:
        weights[server_round] = np.concatenate([a.ravel() for a in arrays]).astype(np.float32)
        layout.load_into(model, weights[server_round])
        metrics = evaluate(model, x_test, y_test, task=data.task)
        accuracy[server_round] = metrics["accuracy"]
        return metrics

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ledger = out_dir / "privacy_ledger.jsonl"
    ledger.unlink(missing_ok=True)  # each run of the example is a new training with its own budget
    n = args.clients
    dp_settings = DPSettings(mode=args.dp, clip=args.clip, target_epsilon=args.epsilon, delta=1e-5,
                             epsilon_budget=args.budget, accountant="rdp" if args.dp == "distributed" else "pld")
    sampling = SamplingInfo("fixed", n, per_round=n)
    secagg_settings = SecAggSettings(scale_bits=20)
    history: dict[str, list[tuple[int, float]]] = {}  # metric -> (round, value), from Flower's own records
    server_app = ServerApp()
    privacy: DPStrategy | SecureGrid | None = None

    if args.api == "message":
        @server_app.main()
        def _server(grid: Grid, context: Context) -> None:
            nonlocal privacy
            secure = privacy = SecureGrid(
                grid, args.mode, secagg_settings, dp=dp_settings, sampling=sampling, rounds=args.rounds,
                seed=args.seed, dp_seed=args.seed, ledger_path=ledger, run_id=f"flower-app-{args.seed}",
            )
            strategy = MessageFedAvg(fraction_train=1.0, min_train_nodes=n, min_available_nodes=n, fraction_evaluate=0.0)

            def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
                return MetricRecord(evaluate_model(server_round, arrays.to_numpy_ndarrays()))

            result = strategy.start(grid=secure, initial_arrays=ArrayRecord(_to_arrays(layout, initial)),
                                    num_rounds=args.rounds, evaluate_fn=evaluate_fn)
            for r, metrics in sorted(result.train_metrics_clientapp.items()):
                for key, value in metrics.items():
                    history.setdefault(key, []).append((r, float(value)))  # type: ignore[arg-type]
    else:
        def legacy_evaluate_fn(server_round: int, arrays: list[np.ndarray], _: dict[str, Any]) -> tuple[float, dict[str, Any]]:
            metrics = evaluate_model(server_round, arrays)
            return metrics["loss"], {"accuracy": metrics["accuracy"]}

        fedavg = FedAvg(
            fraction_fit=1.0, min_fit_clients=n, min_available_clients=n, fraction_evaluate=0.0,
            initial_parameters=ndarrays_to_parameters(_to_arrays(layout, initial)), evaluate_fn=legacy_evaluate_fn,
            on_fit_config_fn=lambda r: {"round": r},
        )
        privacy = dp_strategy = DPStrategy(fedavg, dp_settings, sampling, rounds=args.rounds, seed=args.seed,
                                           ledger_path=ledger, run_id=f"flower-app-{args.seed}")
        workflow = SecAggWorkflow(args.mode, secagg_settings, seed=args.seed)

        @server_app.main()
        def _server(grid: Grid, context: Context) -> None:
            legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=args.rounds), strategy=dp_strategy)
            DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
            history.update({k: [(int(r), float(v)) for r, v in series]
                            for k, series in legacy.history.metrics_distributed_fit.items()})

    t0 = time.perf_counter()
    run_simulation(
        server_app, make_client_app(config, args.api), num_supernodes=n,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": args.num_cpus, "num_gpus": 0, "include_dashboard": False},
        },
    )
    seconds = time.perf_counter() - t0
    if privacy is None or not accuracy:
        raise RuntimeError("the ServerApp did not finish; see Flower's log above")
    privacy.close()
    eps = [e for _, e in history.get("dp_epsilon", [])]
    rounds_run = len(eps)
    result: dict[str, Any] = {
        "api": args.api,
        "mode": args.mode,
        "dp": args.dp,
        "clients": n,
        "rounds_run": rounds_run,
        "accuracy": accuracy.get(max(accuracy), float("nan")),
        "initial_accuracy": accuracy.get(0, float("nan")),
        "accuracy_per_round": [accuracy[r] for r in sorted(accuracy) if r > 0],
        "epsilon_per_round": eps,
        "epsilon_budget": dp_settings.budget,
        "noise_multiplier": privacy.noise_multiplier,
        "secagg_survivors": [round(v) for _, v in history.get("secagg_survivors", [])],
        "upload_bytes_per_client": [v for _, v in history.get("secagg_upload_bytes_per_client", [])],
        "stopped_by_budget": privacy.stopped,
        "seconds": seconds,
    }
    z = privacy.noise_multiplier or 0.0
    print(f"{n} hospitals in Flower's simulation engine ({args.api} API), {args.mode} + {args.dp} DP "
          f"(z = {z:.3f}, C = {args.clip}, {dp_settings.accountant.upper()}, "
          f"budget ε = {dp_settings.budget:g} at δ = 1e-5)")
    print(f"{'round':>5} {'accuracy':>9} {'ε spent':>8} {'survivors':>9} {'upload B':>9}")
    print(f"{0:>5} {result['initial_accuracy']:>9.4f}")
    for i, e in enumerate(eps):
        print(f"{i + 1:>5} {accuracy.get(i + 1, float('nan')):>9.4f} {e:>8.4f} {result['secagg_survivors'][i]:>9} "
              f"{result['upload_bytes_per_client'][i]:>9.0f}")
    stop = " (stopped by the privacy budget)" if privacy.stopped else ""
    print(f"final accuracy {result['accuracy']:.4f} after {rounds_run} rounds{stop} in {seconds:.1f} s; ledger {ledger}")
    (out_dir / "summary.json").write_text(json.dumps(result, indent=2))
    _plot(result, out_dir / "summary.png")
    result["weights_per_round"] = [weights[r] for r in sorted(weights)]  # round 0 (initial) first
    return result


def _plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy and ε spent per round (the same numbers as summary.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(6, 3.6))
    rounds = list(range(len(result["accuracy_per_round"]) + 1))
    left.plot(rounds, [result["initial_accuracy"], *result["accuracy_per_round"]], marker="o", color="C0")
    left.set(xlabel="round", ylabel="test accuracy (pooled)", ylim=(0, 1))
    right = left.twinx()
    right.plot(range(1, len(result["epsilon_per_round"]) + 1), result["epsilon_per_round"], marker="s", color="C1")
    right.axhline(result["epsilon_budget"], color="C1", linestyle=":", linewidth=1)
    right.set(ylabel="ε spent (δ = 1e-5)")
    left.set_title(f"{result['clients']} hospitals in Flower, {result['mode']} + {result['dp']} DP ({result['api']} API)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
