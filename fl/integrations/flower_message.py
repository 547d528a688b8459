"""fedshield under Flower's Message API strategies (``flwr.serverapp.strategy``, ``Strategy.start``).

Flower's Message API strategies (``FedAvg``, ``FedAvgM``, ``FedAdam``, ``FedYogi``, ... from
``flwr.serverapp.strategy``) own the training loop: ``strategy.start(grid=grid, ...)`` calls
``configure_train``, ``grid.send_and_receive`` and ``aggregate_train`` once per round. The seam fedshield
can use without forking the strategy is the ``Grid``: :class:`SecureGrid` wraps the ServerApp's grid and,
for every round of ``TRAIN`` messages the strategy sends, runs fedshield's SecAgg / SecAgg+ round
(:func:`~fl.integrations.flower_secagg.run_secure_round`, four exchanges over the wrapped grid, with
:data:`~fl.integrations.flower_secagg.secagg_mod` in the ClientApp) instead of collecting plaintext updates.
It then answers the strategy with one reply per survivor that all hold the same new global model
(``global + mean update``) and weight 1, so the strategy's weighted average is that model and its server
optimiser (FedAvgM's momentum, FedAdam's moments) acts on the secure aggregate, as with Flower's own
SecAgg+ workflow. Evaluate and query messages pass through untouched::

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=1.0)                       # flwr.serverapp.strategy
        secure = SecureGrid(grid, "secagg+", dp=DPSettings(mode="central", target_epsilon=8.0),
                            sampling=SamplingInfo("fixed", 10, per_round=10), rounds=5)
        result = strategy.start(grid=secure, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=5)
        # result.train_metrics_clientapp[r]["dp_epsilon"]: epsilon after round r, from fedshield's ledger

    client_app = ClientApp(mods=[secagg_mod])                      # plus @client_app.train() as usual

With ``dp`` the round releases fedshield's client-level DP instead of the plain mean, exactly as
:class:`~fl.integrations.flower_dp.DPStrategy` does for legacy strategies: central mode -- every client
clips to C before masking and Gaussian noise ``N(0, (zC)^2)`` from :class:`~dp.rng.CryptoRNG` goes on the
revealed sum, divided by the fixed expected cohort; distributed mode -- every client adds its own discrete
noise share before masking. Each release is written to the budget ledger first; ``dp_epsilon`` (and the
noise figures) are added to every reply's MetricRecord, so Flower's ``Result.train_metrics_clientapp``
reports ε per round; before a round that would exceed the budget no message is sent, :attr:`stopped` is
set and the strategy receives no replies (its model stops moving).

Client metrics other than the weight pass through to the strategy (as FitRes metrics do in Flower's
SecAgg+ workflow): they are not protected by secure aggregation. Strategies that need individual updates
(Krum, FedMedian, Bulyan, ...) gain nothing from a secure aggregate and are not supported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.grid import Grid

from fl.errors import ConfigError, UpdateError
from fl.integrations.flower_dp import ClientLevelDP
from fl.integrations.flower_secagg import (
    SecAggEncoding,
    SecureRoundOutcome,
    add_delta,
    run_secure_round,
)
from fl.privacy import DPSettings, SamplingInfo
from fl.secure import SecAggSettings
from secagg.api import Mode

__all__ = ["SecureGrid"]

log = logging.getLogger(__name__)


class SecureGrid(Grid):
    """Wrap ``grid`` so that a Message API strategy's training rounds run through fedshield (module docstring).

    Args:
        grid: the ServerApp's grid (what ``@app.main()`` receives), or any :class:`flwr.serverapp.grid.Grid`.
        mode: ``"secagg"`` (complete graph) or ``"secagg+"`` (Harary graph, k = O(log n)).
        settings: fl's :class:`~fl.secure.SecAggSettings` (update range and resolution, threshold fraction,
            SecAgg+ targets, the public bound ``max_weight`` on a client's weight).
        dp: client-level DP (:class:`~fl.privacy.DPSettings`, ``mode`` "central" or "distributed"); needs
            ``sampling`` (how the strategy samples, which the accountant's amplification assumes) and
            ``rounds`` (what the noise is calibrated for when ``dp.noise_multiplier`` is 0).
        seed: names the public round ids and graph seeds. ``dp_seed``: names the DP noise stream (reproducible
            simulations); None (the default) draws fresh secret noise, as a deployment must.
        ledger_path / run_id: the budget ledger file (default: a temporary directory) and the run's name in it.
        timeout: bounds each protocol exchange (None: the timeout the strategy passes, else wait for all).

    Raises (from ``send_and_receive``): :class:`~fl.errors.UpdateError` when the train messages do not all
    carry one ArrayRecord holding the same global model; :class:`~fl.errors.ConfigError` when the strategy
    sampled a different number of clients than ``sampling`` says.
    """

    def __init__(
        self,
        grid: Grid,
        mode: Mode = "secagg+",
        settings: SecAggSettings | None = None,
        *,
        dp: DPSettings | None = None,
        sampling: SamplingInfo | None = None,
        rounds: int | None = None,
        seed: int = 0,
        dp_seed: int | None = None,
        ledger_path: str | Path | None = None,
        run_id: str = "fedshield-flower",
        timeout: float | None = None,
    ) -> None:
        if not isinstance(grid, Grid):
            raise TypeError(f"grid must be a flwr Grid, got {type(grid).__name__}")
        if mode not in ("secagg", "secagg+"):
            raise ValueError(f"mode must be 'secagg' or 'secagg+', got {mode!r}")
        if settings is not None and settings.active:
            raise ValueError("the active-adversary variant needs a PKI and is not offered over Flower")
        privacy = None
        if dp is not None:
            if sampling is None:
                raise ConfigError("dp.sampling", "client-level DP needs the strategy's sampling (SamplingInfo)")
            if rounds is None:
                raise ConfigError("run.rounds", "client-level DP needs the rounds its noise is calibrated for")
            if dp.adaptive_clipping:
                raise ConfigError("dp.adaptive_clipping", "adaptive clipping needs per-client norms: not with SecAgg")
            privacy = ClientLevelDP(dp, sampling, rounds=rounds, seed=dp_seed, ledger_path=ledger_path, run_id=run_id)
        self.grid = grid
        self.mode: Mode = mode
        self.settings = settings or SecAggSettings()
        self.dp_settings = dp
        #: the run's DP state (None without ``dp``): ledger, ε history, budget stop
        self.privacy = privacy
        self.seed = seed
        self.timeout = timeout
        self._rounds_seen = 0
        #: the latest round's outcome (survivors, dropouts, rejected nodes, secagg metrics)
        self.last_outcome: SecureRoundOutcome | None = None

    def __repr__(self) -> str:
        dp = "none" if self.dp_settings is None else self.dp_settings.mode
        return f"SecureGrid(mode={self.mode!r}, dp={dp}, settings={self.settings}, grid={type(self.grid).__name__})"

    # ---- DP
    @property
    def stopped(self) -> bool:
        """True once a round was refused because it would exceed the privacy budget."""
        return self.privacy is not None and self.privacy.stopped

    @property
    def epsilon_history(self) -> list[tuple[int, float]]:
        """(server round, ε after it) for every released round (empty without DP)."""
        return self.privacy.epsilon_history if self.privacy is not None else []

    @property
    def noise_multiplier(self) -> float | None:
        return self.privacy.noise_multiplier if self.privacy is not None else None

    def spent_epsilon(self) -> float:
        """ε(δ) spent so far, from the ledger (0 without DP)."""
        return self.privacy.spent_epsilon() if self.privacy is not None else 0.0

    def close(self) -> None:
        """Release the ledger's file lock."""
        if self.privacy is not None:
            self.privacy.close()

    # ---- Grid interface: everything but training passes through
    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Any:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        msgs = list(messages)
        if any(m.metadata.message_type.startswith(MessageType.TRAIN) for m in msgs):
            raise ValueError("SecureGrid secures TRAIN rounds in send_and_receive; pushing them would skip it")
        return self.grid.push_messages(msgs)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        msgs = list(messages)
        custom = sorted({m.metadata.message_type for m in msgs if m.metadata.message_type.startswith("train.")})
        if custom:
            raise ValueError(f"SecureGrid secures the default train action only, got {custom}: these would travel "
                             "in plaintext")
        train = [m.metadata.message_type == MessageType.TRAIN for m in msgs]
        if not any(train):
            return self.grid.send_and_receive(msgs, timeout=timeout)
        if not all(train):
            raise ValueError("a batch mixes TRAIN and other messages; SecureGrid secures whole TRAIN rounds")
        return self._secure_round(msgs, timeout if self.timeout is None else self.timeout)

    # ---- one secure round
    def _secure_round(self, msgs: list[Message], timeout: float | None) -> list[Message]:
        by_node: dict[int, Message] = {}
        for m in msgs:
            nid = m.metadata.dst_node_id
            if nid in by_node:
                raise ValueError(f"two train messages for node {nid} in one round")
            by_node[nid] = m
        key, record = _the_model(msgs[0])
        global_arrays = record.to_numpy_ndarrays()
        for m in msgs[1:]:
            other_key, other = _the_model(m)
            if other_key != key or not _same_arrays(other, record):
                raise UpdateError("the train messages of one round must carry the same global model")
        self._rounds_seen += 1
        server_round = _server_round(msgs[0], self._rounds_seen)
        dim = sum(int(a.size) for a in global_arrays)
        privacy = self.privacy
        encoding: SecAggEncoding | None = None
        if privacy is not None:
            if not privacy.may_run(server_round, dim):
                return []
            privacy.check_sampled(len(msgs))
            encoding = privacy.encoding(server_round, dim)
        outcome = run_secure_round(
            self.grid, {nid: m.content for nid, m in by_node.items()}, global_arrays, server_round=server_round,
            mode=self.mode, settings=self.settings, encoding=encoding, seed=self.seed, timeout=timeout,
        )
        self.last_outcome = outcome
        aggregate = outcome.aggregate
        if aggregate is None:
            return []
        extra: dict[str, Any] = dict(outcome.metrics)
        if privacy is not None:
            delta, dp_metrics = privacy.release(server_round, dim, revealed=aggregate)
            extra.update(dp_metrics)
        else:
            delta = aggregate.mean_delta()
            if delta is None:
                log.warning("round %s: total weight of the survivors is 0; the model is unchanged", server_round)
        if delta is None:
            return []
        new_model = _like(record, add_delta(global_arrays, delta))
        replies = []
        for nid in aggregate.survivors:
            content = outcome.contents.get(nid)
            if content is None:
                continue
            metric_keys = list(content.metric_records)
            if len(metric_keys) != 1:
                log.warning("round %s: node %s sent %d MetricRecords; left out of the strategy's view",
                            server_round, nid, len(metric_keys))
                continue
            metrics = MetricRecord({**dict(content.metric_records[metric_keys[0]]), **extra})
            replies.append(Message(RecordDict({key: new_model, metric_keys[0]: metrics}), reply_to=by_node[nid]))
        return replies


def _the_model(msg: Message) -> tuple[str, ArrayRecord]:
    records = msg.content.array_records
    if len(records) != 1:
        raise UpdateError(
            f"a train message to node {msg.metadata.dst_node_id} holds {len(records)} ArrayRecords; "
            "SecureGrid needs exactly one (the global model)"
        )
    key = next(iter(records))
    return key, records[key]


def _same_arrays(a: ArrayRecord, b: ArrayRecord) -> bool:
    if list(a.keys()) != list(b.keys()):
        return False
    return all(x.dtype == y.dtype and x.shape == y.shape and x.data == y.data
               for x, y in zip(a.values(), b.values(), strict=True))


def _like(template: ArrayRecord, arrays: Sequence[np.ndarray]) -> ArrayRecord:
    """``arrays`` under ``template``'s keys (a torch state_dict's names survive the round)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(a)) for k, a in zip(template.keys(), arrays, strict=True)})


def _server_round(msg: Message, fallback: int) -> int:
    for config in msg.content.config_records.values():
        value = config.get("server-round")  # what Flower's Message API strategies put in every train message
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return fallback
