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
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.grid import Grid

from fl.errors import ConfigError, UpdateError
from fl.integrations.flower_ckks import CKKS_RECORD_KEY, Decryptor
from fl.integrations.flower_dp import ClientLevelDP
from fl.integrations.flower_secagg import (
    SecAggEncoding,
    SecureRoundOutcome,
    add_delta,
    run_secure_round,
)
from fl.privacy import DPSettings, SamplingInfo
from fl.secure import SecAggSettings
from secagg import ckks
from secagg.api import Mode
from secagg.errors import EncodingError, RemoteProtocolError, SecAggError

__all__ = ["CKKSGrid", "SecureGrid"]

log = logging.getLogger(__name__)


class _TrainRoundGrid(Grid):
    """A Grid that passes everything through except whole rounds of default-action TRAIN messages, which
    :meth:`_train_round` handles (secure sum or CKKS) and answers with one reply per contributor."""

    grid: Grid
    timeout: float | None = None
    _rounds_seen: int = 0

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
            raise ValueError(f"{type(self).__name__} protects TRAIN rounds in send_and_receive; pushing them would "
                             "skip it")
        return self.grid.push_messages(msgs)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        msgs = list(messages)
        custom = sorted({m.metadata.message_type for m in msgs if m.metadata.message_type.startswith("train.")})
        if custom:
            raise ValueError(f"{type(self).__name__} protects the default train action only, got {custom}: these "
                             "would travel in plaintext")
        train = [m.metadata.message_type == MessageType.TRAIN for m in msgs]
        if not any(train):
            return self.grid.send_and_receive(msgs, timeout=timeout)
        if not all(train):
            raise ValueError(f"a batch mixes TRAIN and other messages; {type(self).__name__} protects whole TRAIN "
                             "rounds")
        return self._train_round(msgs, timeout)

    def _train_round(self, msgs: list[Message], timeout: float | None) -> list[Message]:
        raise NotImplementedError

    def _prepare(self, msgs: list[Message]) -> tuple[dict[int, Message], str, ArrayRecord, list[np.ndarray], int]:
        """The round's messages by node, the model's record key and record, its arrays, the server round."""
        by_node: dict[int, Message] = {}
        for m in msgs:
            nid = m.metadata.dst_node_id
            if nid in by_node:
                raise ValueError(f"two train messages for node {nid} in one round")
            by_node[nid] = m
        key, record = _the_model(msgs[0])
        for m in msgs[1:]:
            other_key, other = _the_model(m)
            if other_key != key or not _same_arrays(other, record):
                raise UpdateError("the train messages of one round must carry the same global model")
        self._rounds_seen += 1
        return by_node, key, record, record.to_numpy_ndarrays(), _server_round(msgs[0], self._rounds_seen)


class SecureGrid(_TrainRoundGrid):
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
    def dp_settings(self) -> DPSettings | None:
        return self.privacy.settings if self.privacy is not None else None

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

    # ---- one secure round
    def _train_round(self, msgs: list[Message], timeout: float | None) -> list[Message]:
        if self.timeout is not None:
            timeout = self.timeout
        by_node, key, record, global_arrays, server_round = self._prepare(msgs)
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
        contents = {nid: outcome.contents[nid] for nid in aggregate.survivors if nid in outcome.contents}
        return _replies(server_round, by_node, key, new_model, contents, extra)


class CKKSGrid(_TrainRoundGrid):
    """Wrap ``grid`` so that a Message API strategy's training rounds are CKKS-encrypted end to end.

    Each TRAIN message gets a ``fedshield.ckks`` ConfigRecord naming the key holder's context; the clients'
    :class:`~fl.integrations.flower_ckks.CKKSClientMod` replies with one ciphertext of ``[w·clip(Δ), w]``
    instead of arrays; this grid adds the ciphertexts with the public context only (it cannot decrypt), asks
    the key holder for the flooded mean through ``decrypt`` (:meth:`KeyHolderService.decrypt_mean`, or an
    RPC stub to it) and answers the strategy with one reply per contributor holding ``global + mean`` with
    weight 1 -- as :class:`SecureGrid` does for masking. Round metrics: ``ckks_clients``, ``ckks_rejected``,
    ``ckks_total_weight`` (examples), ``ckks_upload_bytes_per_client``. A reply whose ciphertext is malformed,
    of another context or under another client's id is left out of the sum (logged, counted as rejected).
    """

    def __init__(self, grid: Grid, *, public_context: bytes, decrypt: Decryptor, timeout: float | None = None) -> None:
        if not isinstance(grid, Grid):
            raise TypeError(f"grid must be a flwr Grid, got {type(grid).__name__}")
        if not callable(decrypt):
            raise TypeError("decrypt must be callable: (server_round, EncryptedSum bytes) -> (mean, total weight)")
        self.grid = grid
        self.timeout = timeout
        self._public_context = public_context
        self._context_id = ckks.CiphertextAggregator(public_context).context_id
        self._decrypt = decrypt
        self._rounds_seen = 0

    def __repr__(self) -> str:
        return f"CKKSGrid(grid={type(self.grid).__name__})"

    def _train_round(self, msgs: list[Message], timeout: float | None) -> list[Message]:
        if self.timeout is not None:
            timeout = self.timeout
        by_node, key, record, global_arrays, server_round = self._prepare(msgs)
        for m in msgs:
            m.content.config_records[CKKS_RECORD_KEY] = ConfigRecord({"context_id": self._context_id})
        dim = sum(int(a.size) for a in global_arrays)
        aggregator = ckks.CiphertextAggregator(self._public_context, length=dim)
        contents: dict[int, RecordDict] = {}
        rejected, upload = 0, 0
        for reply in self.grid.send_and_receive(msgs, timeout=timeout):
            nid = reply.metadata.src_node_id
            if reply.has_error() or nid not in by_node or nid in contents:
                continue
            try:
                blob = reply.content.config_records.get(CKKS_RECORD_KEY, ConfigRecord()).get("update")
                if not isinstance(blob, bytes):
                    raise EncodingError("the reply carries no CKKS update")
                update = ckks.EncryptedUpdate.from_bytes(blob)
                if update.client_id != nid:
                    raise RemoteProtocolError(f"update names client {update.client_id}, the reply came from node {nid}")
                aggregator.add(update)
            except SecAggError as exc:
                log.warning("round %s: rejected the update of node %s: %s", server_round, nid, exc)
                rejected += 1
                continue
            upload += len(blob)
            contents[nid] = RecordDict({k: v for k, v in reply.content.metric_records.items()})
        if aggregator.count == 0:
            return []
        mean, total_weight = self._decrypt(server_round, aggregator.result().to_bytes())
        if mean.shape != (dim,):
            raise EncodingError(f"the key holder returned a mean of shape {mean.shape}, expected ({dim},)")
        extra: dict[str, Any] = {
            "ckks_clients": float(aggregator.count), "ckks_rejected": float(rejected),
            "ckks_total_weight": float(total_weight), "ckks_upload_bytes_per_client": upload / aggregator.count,
        }
        return _replies(server_round, by_node, key, _like(record, add_delta(global_arrays, mean)), contents, extra)


def _replies(server_round: int, by_node: dict[int, Message], key: str, new_model: ArrayRecord,
             contents: dict[int, RecordDict], extra: dict[str, Any]) -> list[Message]:
    """One reply per contributor: the new global model under the strategy's key, the contributor's metrics
    (its weight already set to 1 by the client mod) and the round's ``extra`` metrics."""
    replies = []
    for nid, content in contents.items():
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
            "a protected train round needs exactly one (the global model)"
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
