"""In-process federated simulation: rounds of sample → train → aggregate → server update → evaluate.

Every random choice is a pure function of ``(run.seed, round, client)``, so a run interrupted after any
completed round resumes from its checkpoint and finishes with bit-identical weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from dp.errors import BudgetExceededError
from fl.aggregators import Aggregator, build_aggregator
from fl.client import TrainConfig, evaluate, local_gradient, local_train
from fl.compression import wrap_compression
from fl.config import ExperimentConfig
from fl.data import FederatedData, federate, load_dataset
from fl.errors import CheckpointError, UpdateError
from fl.layout import ParamLayout
from fl.models import build_model
from fl.sampling import Dropout, Sampler, plan_round
from fl.strategies import ServerOptimizer, Strategy, build_strategy
from fl.types import ClientUpdate, RoundPlan, RoundResult

if TYPE_CHECKING:
    from fl.dpsgd import SampleLevelAccountant
    from fl.he import CKKSSettings
    from fl.privacy import DPSettings
    from fl.secure import SecAggSettings

CHECKPOINT = "checkpoint.npz"


def client_seed(seed: int, round_index: int, client_id: int) -> int:
    """The minibatch-order seed of one client in one round (independent across rounds and clients)."""
    return int(np.random.SeedSequence([seed, round_index, client_id, 0xC11E]).generate_state(1, np.uint64)[0] >> 1)


def config_hash(config: ExperimentConfig) -> str:
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def build_federated_data(config: ExperimentConfig) -> FederatedData:
    d = config.data
    dataset = load_dataset(d.name, root=d.root or None)
    return federate(
        dataset,
        d.num_clients,
        partition=d.partition,
        alpha=d.alpha,
        labels_per_client=d.labels_per_client,
        test_fraction=d.test_fraction,
        seed=config.run.seed,
        standardize=d.standardize,
    )


@dataclass(frozen=True)
class ClientWork:
    """One client's local training result: its update and, under DP-SGD, ``(steps, sampling rate)``."""

    update: ClientUpdate
    dpsgd_steps: tuple[int, float] | None = None


@dataclass
class RunOutput:
    """What a finished (or stopped) run produced."""

    config: ExperimentConfig
    history: list[RoundResult]
    weights: np.ndarray
    final_metrics: dict[str, float]
    centralized: dict[str, float] | None = None
    timing: dict[str, float] = field(default_factory=dict)
    completed: bool = True


class Simulation:
    """Runs one experiment in this process. ``aggregator`` overrides the one the config names."""

    def __init__(
        self,
        config: ExperimentConfig,
        *,
        out_dir: str | Path | None = None,
        aggregator: Aggregator | None = None,
        data: FederatedData | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.data = data if data is not None else build_federated_data(config)
        self.task = self.data.task
        num_outputs = self.data.num_classes if self.task == "classification" else 1
        self.model = build_model(
            config.model.name, self.data.feature_shape, num_outputs, hidden=config.model.hidden, seed=config.run.seed,
            activation=config.model.activation,
        )
        self.layout = ParamLayout.from_module(self.model)
        self.initial_weights = self.layout.flatten(self.model)
        c, s = config.client, config.server
        self.strategy: Strategy = build_strategy(
            s.strategy,
            server_lr=s.lr or None,
            client_lr=c.lr,
            mu=c.mu,
            beta1=s.beta1,
            beta2=s.beta2,
            tau=s.tau,
        )
        self.train_config = TrainConfig(
            epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum,
            weight_decay=c.weight_decay, mu=self.strategy.prox_mu,
        )
        num_clients = len(self.data.clients)
        per_round = config.sampling.clients_per_round or num_clients
        self.sampler = Sampler(config.sampling.method, per_round, config.sampling.rate)  # type: ignore[arg-type]
        self.num_clients = num_clients
        self.aggregator = aggregator if aggregator is not None else self.make_aggregator()
        self.dpsgd: SampleLevelAccountant | None = None
        if c.dpsgd_noise_multiplier > 0:
            from fl.dpsgd import DPSGDConfig, SampleLevelAccountant

            self.dpsgd = SampleLevelAccountant(
                DPSGDConfig(c.dpsgd_noise_multiplier, c.dpsgd_max_grad_norm, c.dpsgd_delta, c.dpsgd_accountant)
            )
        self.dropout = Dropout(config.dropout.rate, config.dropout.phase)  # type: ignore[arg-type]

    def make_aggregator(
        self, *, seed: int | None = None, dp_settings: DPSettings | None = None, rounds: int | None = None,
        run_id: str | None = None, ledger_path: Path | None = None,
    ) -> Aggregator:
        """The aggregator the config describes: ``[DP ∘] [clip ∘] [compression ∘] plain | SecAgg | CKKS``.

        Every argument defaults to the training run's own (its seed, the ``[dp]`` section, ``run.rounds``, its
        ledger in ``out_dir``); the audit builds probe aggregators of the same kind with other values.
        """
        config, c = self.config, self.config.client
        seed = config.run.seed if seed is None else seed
        dp_on = config.dp.mode != "none"
        aggregator: Aggregator = wrap_compression(build_aggregator(
            config.run.aggregation,
            # client-level DP bounds each client's contribution: every client weighs the same
            weighting="uniform" if dp_on else config.server.weighting,  # type: ignore[arg-type]
            secagg=self._secagg_settings(),
            ckks=self._ckks_settings(),
            num_clients=self.num_clients,
            seed=seed,
        ), config.compression.method, fraction=config.compression.fraction, levels=config.compression.levels)
        if c.clip_norm > 0:
            from fl.compression import Clip

            aggregator = Clip(aggregator, c.clip_norm)  # the config refuses clip_norm together with DP
        if not dp_on:
            return aggregator
        from fl.privacy import DPAggregator, DPSettings, SamplingInfo

        if ledger_path is None and run_id is None and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ledger_path = self.out_dir / "privacy_ledger.jsonl"
        return DPAggregator(
            aggregator, dp_settings or DPSettings.from_config(config.dp), SamplingInfo.from_config(config),
            rounds=config.run.rounds if rounds is None else rounds, dim=self.layout.size, ledger_path=ledger_path,
            run_id=config_hash(config) if run_id is None else run_id, seed=seed,
            secagg_mode=config.run.aggregation if config.run.aggregation.startswith("secagg") else "secagg",
        )

    def _max_weight(self, configured: float) -> float:
        # Public bound on n_k: by default the largest client's training-set size (a simulation convenience;
        # a deployment fixes it in advance like any protocol parameter).
        return configured or float(max(c.num_train for c in self.data.clients))

    def _ckks_settings(self) -> CKKSSettings:
        from fl.he import CKKSSettings

        cc = self.config.ckks
        return CKKSSettings(
            preset=cc.preset, max_abs=cc.max_abs, flood=cc.flood, flood_security_bits=cc.flood_security_bits,
            max_weight=self._max_weight(cc.max_weight),
        )

    def _secagg_settings(self) -> SecAggSettings:
        from fl.secure import SecAggSettings

        sc = self.config.secagg
        max_weight = self._max_weight(sc.max_weight)
        return SecAggSettings(
            clip_range=sc.clip_range, scale_bits=sc.scale_bits, headroom_bits=sc.headroom_bits,
            threshold_fraction=sc.threshold_fraction, target_dropout=sc.target_dropout,
            corrupt_fraction=sc.corrupt_fraction, active=sc.active, max_weight=max_weight,
        )

    # -- one round -------------------------------------------------------------------------------
    def train_client(self, client_id: int, weights: np.ndarray, round_index: int) -> ClientWork:
        """One client's local training: a pure function of ``(run.seed, round_index, client_id, weights)``.

        Nothing on ``self`` changes, so a backend may run it in another process (DP-SGD's privacy cost is
        returned in the result and recorded by :meth:`account`, in the driver).
        """
        cd = self.data.clients[client_id]
        if self.dpsgd is not None:
            from dp.rng import CryptoRNG
            from fl.dpsgd import local_train_dpsgd

            update, steps, q = local_train_dpsgd(
                self.model, self.layout, weights, cd.x_train, cd.y_train, self.train_config, self.dpsgd.config,
                task=self.task, client_id=client_id, seed=0,
                # a fresh, reproducible CSPRNG stream per (run, round, client): never reuse noise
                noise_rng=CryptoRNG.from_int_seed(self.config.run.seed, round_index, client_id, 0xD5),
                report_train_loss=True,  # simulation telemetry; a deployment would not send it
            )
            return ClientWork(update, (steps, q))
        if self.strategy.client_mode == "gradient":
            return ClientWork(local_gradient(
                self.model, self.layout, weights, cd.x_train, cd.y_train, task=self.task, client_id=client_id
            ))
        return ClientWork(local_train(
            self.model, self.layout, weights, cd.x_train, cd.y_train, self.train_config,
            task=self.task, client_id=client_id, seed=client_seed(self.config.run.seed, round_index, client_id),
        ))

    def account(self, work: ClientWork) -> ClientUpdate:
        """Record what one client's training spent (DP-SGD steps) and return its update."""
        if work.dpsgd_steps is not None:
            if self.dpsgd is None:
                raise UpdateError(f"client {work.update.client_id}: DP-SGD steps reported, but this run has no DP-SGD")
            self.dpsgd.record(work.update.client_id, *work.dpsgd_steps)
        return work.update

    def client_update(self, client_id: int, weights: np.ndarray, round_index: int) -> ClientUpdate:
        """:meth:`train_client` and :meth:`account` in one step, in this process."""
        return self.account(self.train_client(client_id, weights, round_index))

    def train_clients(self, clients: Sequence[int], weights: np.ndarray, round_index: int) -> list[ClientUpdate]:
        """Train ``clients`` and return their updates in the same order: the seam a parallel backend
        (``fl.backends.ray.RaySimulation``) overrides. Results must not depend on how work is spread."""
        return [self.client_update(c, weights, round_index) for c in clients]

    def run_round(
        self, round_index: int, weights: np.ndarray, optimizer: ServerOptimizer
    ) -> tuple[np.ndarray, RoundResult]:
        plan: RoundPlan = plan_round(round_index, self.num_clients, self.sampler, self.dropout, self.config.run.seed)
        t0 = time.perf_counter()
        trained = self.train_clients(plan.training, weights, round_index)
        t1 = time.perf_counter()
        arrived = [u for u in trained if u.client_id not in set(plan.dropped_after_training)]
        aggregate = self.aggregator.aggregate(
            arrived, dim=self.layout.size, round_index=round_index, late_dropouts=plan.dropped_after_training
        )
        t2 = time.perf_counter()
        metrics: dict[str, float] = {
            "client_time_s": (t1 - t0) / max(len(trained), 1),
            "server_time_s": t2 - t1,
            "upload_bytes_per_client": float(4 * self.layout.size),
        }
        metrics.update({k: float(v) for k, v in aggregate.metrics.items()})
        for key in ("compressed_upload_bytes_per_client", "secagg_upload_bytes_per_client",
                    "ckks_upload_bytes_per_client"):
            if key in metrics:  # what a client really sends (a masked or encrypted vector is dense again)
                metrics["upload_bytes_per_client"] = metrics[key]
        if self.dpsgd is not None:
            metrics.update(self.dpsgd.summary())  # sample-level ε per client (DP-SGD), worst and mean
        if arrived and aggregate.total_weight > 0:
            weights = optimizer.step(weights, aggregate.vector)
            n = np.array([u.num_examples for u in arrived], dtype=np.float64)
            losses = np.array([u.metrics.get("train_loss", np.nan) for u in arrived])
            metrics["train_loss"] = float((n * losses).sum() / n.sum())
        else:
            metrics["skipped"] = 1.0  # nobody arrived (Poisson sampling or dropouts): the model is unchanged
        if (round_index + 1) % self.config.run.eval_every == 0 or round_index + 1 == self.config.run.rounds:
            metrics.update(self.evaluate(weights))
        dropped = tuple(sorted(set(plan.dropped_before_training) | set(plan.dropped_after_training)))
        result = RoundResult(round_index, plan.sampled, tuple(u.client_id for u in arrived), dropped, metrics)
        return weights, result

    def evaluate(self, weights: np.ndarray) -> dict[str, float]:
        """Global metrics on the pooled test set plus the spread of per-client test metrics."""
        self.layout.load_into(self.model, weights)
        x, y = self.data.pooled_test()
        out = {f"test_{k}": v for k, v in evaluate(self.model, x, y, task=self.task).items()}
        key = "accuracy" if self.task == "classification" else "r2"
        per_client = np.array(
            [evaluate(self.model, c.x_test, c.y_test, task=self.task)[key] for c in self.data.clients if len(c.y_test)]
        )
        if per_client.size:
            out[f"client_{key}_mean"] = float(per_client.mean())
            out[f"client_{key}_min"] = float(per_client.min())
            out[f"client_{key}_p10"] = float(np.quantile(per_client, 0.1))
        return out

    # -- whole run -------------------------------------------------------------------------------
    def centralized_baseline(self) -> dict[str, float]:
        """The same model trained on the pooled training data: what federation is compared with."""
        model = build_model(
            self.config.model.name, self.data.feature_shape,
            self.data.num_classes if self.task == "classification" else 1,
            hidden=self.config.model.hidden, seed=self.config.run.seed, activation=self.config.model.activation,
        )
        x, y = self.data.pooled_train()
        cfg = TrainConfig(
            epochs=self.config.run.centralized_epochs, batch_size=self.config.client.batch_size,
            lr=self.config.client.lr, momentum=self.config.client.momentum,
            weight_decay=self.config.client.weight_decay,
        )
        update = local_train(
            model, self.layout, self.initial_weights, x, y, cfg, task=self.task, client_id=-1,
            seed=client_seed(self.config.run.seed, 2**32 - 1, 0),  # a "round" no federated round uses
        )
        self.layout.load_into(model, self.initial_weights + update.delta)
        xt, yt = self.data.pooled_test()
        return {f"test_{k}": v for k, v in evaluate(model, xt, yt, task=self.task).items()}

    def run(self, *, stop_after: int | None = None, on_round: Callable[[RoundResult], None] | None = None) -> RunOutput:
        """Run (or resume) all rounds. ``stop_after`` ends early after that many completed rounds in
        total, as an interruption would (used to test resumption)."""
        rounds = self.config.run.rounds
        optimizer = self.strategy.make_optimizer()
        weights, history = self.initial_weights.copy(), list[RoundResult]()
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            restored = load_checkpoint(self.out_dir / CHECKPOINT, self.config, self.layout.size)
            if restored is not None:
                weights, opt_state, history, extra = restored
                optimizer.load_state_dict(opt_state)
                if self.dpsgd is not None:
                    self.dpsgd.load_state_dict(extra.get("dpsgd", {}))
        start = len(history)
        t0 = time.perf_counter()
        bar = tqdm(
            total=rounds, initial=start, desc="rounds", unit="round", disable=not self.progress, dynamic_ncols=True
        )
        completed = True
        budget_stop: int | None = None
        try:
            for r in range(start, rounds):
                if stop_after is not None and r >= stop_after:
                    completed = False
                    break
                if getattr(self.aggregator, "would_exceed", None) is not None and self.aggregator.would_exceed():  # type: ignore[attr-defined]
                    budget_stop = r  # the next release would overspend the privacy budget: stop here
                    break
                try:
                    weights, result = self.run_round(r, weights, optimizer)
                except BudgetExceededError:
                    # Distributed DP prices a round at its actual survivors: a small cohort can cost more than
                    # planned. The ledger refused the release (nothing was applied or written): stop here.
                    budget_stop = r
                    break
                history.append(result)
                if on_round is not None:
                    on_round(result)
                if self.out_dir is not None and ((r + 1) % self.config.run.checkpoint_every == 0 or r + 1 == rounds):
                    save_checkpoint(
                        self.out_dir / CHECKPOINT, self.config, weights, optimizer.state_dict(), history,
                        extra={"dpsgd": self.dpsgd.state_dict()} if self.dpsgd is not None else None,
                    )
                shown = {k: f"{v:.4f}" for k, v in result.metrics.items() if k in ("test_accuracy", "test_r2", "test_loss")}
                bar.set_postfix(shown)
                bar.update(1)
        finally:
            bar.close()
            close = getattr(self.aggregator, "close", None)
            if callable(close):
                close()  # e.g. release the privacy ledger's lock
        final = self.evaluate(weights)
        centralized = self.centralized_baseline() if completed and self.config.run.centralized_baseline else None
        timing = {"wall_time_s": time.perf_counter() - t0, "rounds_run": float(len(history) - start)}
        if budget_stop is not None:
            timing["stopped_by_privacy_budget_at_round"] = float(budget_stop)
        return RunOutput(self.config, history, weights, final, centralized, timing, completed)


# -- checkpoints: numpy arrays + JSON, never pickle ---------------------------------------------------
def save_checkpoint(
    path: Path, config: ExperimentConfig, weights: np.ndarray, opt_state: dict[str, np.ndarray],
    history: list[RoundResult], extra: dict[str, Any] | None = None,
) -> None:
    meta = {"config_hash": config_hash(config), "history": [h.to_dict() for h in history], "format": 1,
            "extra": extra or {}}
    arrays: dict[str, Any] = {"weights": weights, "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    arrays.update({f"opt__{k}": v for k, v in opt_state.items()})
    tmp = path.with_suffix(".tmp.npz")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    # Atomic replace: a crash leaves either the old or the new checkpoint, never a torn one.
    os.replace(tmp, path)


def _result_from_dict(d: dict[str, Any]) -> RoundResult:
    fixed = {"round", "sampled", "contributing", "dropped"}
    return RoundResult(
        int(d["round"]), tuple(d["sampled"]), tuple(d["contributing"]), tuple(d["dropped"]),
        {k: float(v) for k, v in d.items() if k not in fixed},
    )


def load_checkpoint(
    path: Path, config: ExperimentConfig, dim: int
) -> tuple[np.ndarray, dict[str, np.ndarray], list[RoundResult], dict[str, Any]] | None:
    """``(weights, optimiser state, history, extra state)`` from ``path``, or None if there is none."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            weights = npz["weights"].copy()
            opt_state = {k[len("opt__"):]: npz[k].copy() for k in npz.files if k.startswith("opt__")}
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}); delete it to start afresh") from None
    if meta.get("config_hash") != config_hash(config):
        raise CheckpointError(
            f"checkpoint {path} belongs to a different configuration; use another output directory or --fresh"
        )
    if weights.dtype != np.float32 or weights.shape != (dim,):
        raise CheckpointError(f"checkpoint {path} holds weights of shape {weights.shape}, expected ({dim},)")
    return weights, opt_state, [_result_from_dict(h) for h in meta["history"]], dict(meta.get("extra", {}))
