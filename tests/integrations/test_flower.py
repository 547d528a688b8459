"""fedshield inside Flower: SecAgg+ workflow and client mod, CKKS mod and strategy, DP strategy wrapper.

Most tests run Flower's own server machinery (``DefaultWorkflow``, ``LegacyContext``, stock ``FedAvg``,
real ``ClientApp`` objects with their mods) over an in-memory ``Grid`` that passes every message through
Flower's wire serde, as ``benchmarks/flower_ref.py`` does; exactly one test starts Flower's Ray simulation
engine (the example app, fast flags, once per Flower server API). Reference results come from fedshield run in-process on the same
inputs: ``secagg.secure_sum`` and the exact weighted mean for SecAgg+, ``fl.privacy.DPAggregator`` with the
same seed for DP (the Gaussian noise is the same CryptoRNG draw, so it matches to float tolerance).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import (  # noqa: E402
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.client import Client, NumPyClient  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.common import FitIns, ndarrays_to_parameters  # noqa: E402
from flwr.common.constant import SUPERLINK_NODE_ID  # noqa: E402
from flwr.common.serde import message_from_proto, message_to_proto  # noqa: E402
from flwr.compat.common import recorddict_compat as compat  # noqa: E402
from flwr.server import LegacyContext, ServerConfig  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.server.workflow import DefaultWorkflow  # noqa: E402
from flwr.serverapp.grid import Grid  # noqa: E402
from flwr.serverapp.strategy import FedAvg as MessageFedAvg  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fl.aggregators import WeightedMean  # noqa: E402
from fl.client import TrainConfig, local_train  # noqa: E402
from fl.config import default_config  # noqa: E402
from fl.errors import UpdateError  # noqa: E402
from fl.integrations.flower import (  # noqa: E402
    RECORD_KEY,
    STATE_KEY,
    CKKSClientMod,
    CKKSFedAvg,
    CKKSGrid,
    DPStrategy,
    KeyHolderService,
    RoundSetup,
    SecAggClientMod,
    SecAggWorkflow,
    SecureGrid,
    run_secure_round,
    secagg_mod,
)
from fl.layout import ParamLayout  # noqa: E402
from fl.models import build_model  # noqa: E402
from fl.privacy import DPAggregator, DPSettings, SamplingInfo, make_accountant, round_event  # noqa: E402
from fl.secure import SecAggSettings  # noqa: E402
from fl.simulation import build_federated_data, client_seed  # noqa: E402
from fl.types import ClientUpdate  # noqa: E402
from secagg import plan_round, secure_sum  # noqa: E402
from secagg.errors import LocalProtocolError, RemoteProtocolError, SecAggError  # noqa: E402
from secagg.messages import AdvertiseKeys, KeyDirectory, UnmaskRequest, WireError, decode, encode  # noqa: E402

SHAPES = ((3, 4), (4,))
DIM = 16
NODES = [101, 205, 309, 413, 517, 621]
ALL_NODES = [*NODES, *range(725, 725 + 104 * 10, 104)]  # 16 nodes
MORE_NODES = ALL_NODES[:10]  # t = 6 of 10: room for four misbehaving clients
EXAMPLES = {nid: 20 + 7 * i for i, nid in enumerate(ALL_NODES)}
SETTINGS = SecAggSettings(clip_range=1.0, scale_bits=24, max_weight=100.0)


def client_delta(nid: int, server_round: int, scale: float = 0.5) -> np.ndarray:
    """The update node ``nid`` makes in ``server_round`` (the tests recompute it for references)."""
    return np.random.default_rng([nid, server_round]).uniform(-scale, scale, DIM).astype(np.float32)


def split(flat: np.ndarray) -> list[np.ndarray]:
    out, pos = [], 0
    for shape in SHAPES:
        size = int(np.prod(shape))
        out.append(flat[pos : pos + size].reshape(shape).astype(np.float32))
        pos += size
    return out


def payload(record: ConfigRecord, key: str = "payload") -> bytes:
    value = record[key]
    assert isinstance(value, bytes)
    return value


def series(history: Any, key: str) -> list[tuple[int, float]]:
    """A Flower History metric as (round, float) pairs."""
    return [(int(r), float(v)) for r, v in history.metrics_distributed_fit[key]]


def flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays]).astype(np.float64)


INITIAL = split(np.linspace(-1, 1, DIM))


class _Client(NumPyClient):
    def __init__(self, nid: int, scale: float) -> None:
        self.nid, self.scale = nid, scale

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        delta = client_delta(self.nid, int(config["round"]), self.scale)
        local = [(p.astype(np.float64) + d).astype(np.float32) for p, d in zip(parameters, split(delta), strict=True)]
        return local, EXAMPLES[self.nid], {"node": float(self.nid)}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
        return float(np.abs(flat(parameters)).sum()), EXAMPLES[self.nid], {}


def make_client_app(mods: list[Any], scale: float = 0.5) -> ClientApp:
    def client_fn(context: Context) -> Client:
        return _Client(context.node_id, scale).to_client()

    return ClientApp(client_fn=client_fn, mods=mods)


class MemoryGrid(Grid):
    """Delivers each message through Flower's wire serde to ``client_app`` with a per-node Context.

    ``silent_from`` maps node -> the first exchange (phase tag, or "fit" for a plain fit) it no longer
    answers; ``tamper_down`` / ``tamper_up`` may rewrite a message on its way to / from a node. An exception
    in a ClientApp becomes an error reply, as in a SuperNode, and is kept in ``client_errors``.
    """

    def __init__(
        self,
        client_app: ClientApp,
        node_ids: list[int],
        *,
        silent_from: dict[int, str] | None = None,
        tamper_down: Callable[[int, str, Message], None] | None = None,
        tamper_up: Callable[[int, str, Message], None] | None = None,
    ) -> None:
        self.client_app = client_app
        self.node_ids = list(node_ids)
        self.contexts = {
            nid: Context(run_id=0, node_id=nid, node_config={"partition-id": i}, state=RecordDict(), run_config={})
            for i, nid in enumerate(node_ids)
        }
        self.silent_from = silent_from or {}
        self.silenced: set[int] = set()
        self.tamper_down, self.tamper_up = tamper_down, tamper_up
        self.client_errors: dict[int, BaseException] = {}

    def set_run(self, run: Any) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Any:
        return SimpleNamespace(run_id=0)

    def create_message(self, *a: Any, **kw: Any) -> Any:
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Any) -> Any:
        raise NotImplementedError

    def pull_messages(self, message_ids: Any) -> Any:
        raise NotImplementedError

    @staticmethod
    def phase(msg: Message) -> str:
        if msg.metadata.message_type != MessageType.TRAIN:
            return msg.metadata.message_type
        record = msg.content.config_records.get(RECORD_KEY)
        return str(record["phase"]) if record is not None else "fit"

    def deliver(self, msg: Message) -> Message | None:
        nid = msg.metadata.dst_node_id
        phase = self.phase(msg)
        if self.silent_from.get(nid) == phase:
            self.silenced.add(nid)
        if nid in self.silenced:
            return None
        received = message_from_proto(message_to_proto(msg))
        if self.tamper_down is not None:
            self.tamper_down(nid, phase, received)
        try:
            reply = self.client_app(received, self.contexts[nid])
        except Exception as exc:  # a SuperNode turns this into an error reply
            self.client_errors[nid] = exc
            reply = Message(Error(code=1, reason=f"{type(exc).__name__}: {exc}"), reply_to=received)
        reply = message_from_proto(message_to_proto(reply))
        if self.tamper_up is not None and not reply.has_error():
            self.tamper_up(nid, phase, reply)
        return reply

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        return [r for r in (self.deliver(m) for m in messages) if r is not None]


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """What Flower sets for a ServerApp task before it creates messages."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 0, SUPERLINK_NODE_ID
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def fedavg(history: list[np.ndarray], clients: int = len(NODES), **kwargs: Any) -> FedAvg:
    """Flower's stock FedAvg sampling every node; ``history`` collects the global model after each round."""

    def evaluate_fn(server_round: int, arrays: list[np.ndarray], config: dict[str, Any]) -> None:
        history.append(flat(arrays))

    options: dict[str, Any] = {
        "fraction_fit": 1.0, "min_fit_clients": clients, "min_available_clients": clients,
        "fraction_evaluate": 0.0, "initial_parameters": ndarrays_to_parameters(INITIAL),
        "evaluate_fn": evaluate_fn, "on_fit_config_fn": lambda r: {"round": r},
    }
    options.update(kwargs)
    return FedAvg(**options)


def run_flower(grid: MemoryGrid, strategy: Any, rounds: int, fit_workflow: Any = None) -> LegacyContext:
    base = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(context=base, config=ServerConfig(num_rounds=rounds), strategy=strategy)
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, context)
    return context


def weighted_mean(nodes: list[int], server_round: int) -> np.ndarray:
    w = np.array([EXAMPLES[n] for n in nodes], dtype=np.float64)
    x = np.stack([client_delta(n, server_round).astype(np.float64) for n in nodes])
    return (w[:, None] * x).sum(0) / w.sum()


def mean_tolerance(nodes: list[int], mean: np.ndarray, scale_bits: int, max_weight: float) -> float:
    """Bound on |Ŝ/Ŵ - S/W| when Ŝ and Ŵ each err by < n·2^-scale_bits (fixed-point decoding)."""
    e = len(nodes) * 2.0**-scale_bits
    total = sum(EXAMPLES[n] for n in nodes) / max_weight
    return (e + float(np.abs(mean).max()) * e) / (total - e) + 1e-6  # + float32 rounding of the parameters


# -- SecAgg+ -----------------------------------------------------------------------------------------------
def test_secaggplus_workflow_with_stock_fedavg_matches_secure_sum() -> None:
    """Interop: Flower's unchanged FedAvg and evaluate workflow, fedshield's SecAgg+ fit workflow and mod."""
    history: list[np.ndarray] = []
    strategy = fedavg(history, fraction_evaluate=1.0, min_evaluate_clients=len(NODES))
    grid = MemoryGrid(make_client_app([secagg_mod]), NODES)
    workflow = SecAggWorkflow("secagg+", SETTINGS, seed=3)
    context = run_flower(grid, strategy, rounds=2, fit_workflow=workflow)
    assert not grid.client_errors and len(history) == 3
    for server_round in (1, 2):
        expected = weighted_mean(NODES, server_round)
        got = history[server_round] - history[server_round - 1]
        tol = mean_tolerance(NODES, expected, SETTINGS.scale_bits, SETTINGS.max_weight)
        assert np.max(np.abs(got - expected)) <= tol
        # fedshield's one-call in-process secure sum on the same inputs agrees within both error bounds
        reference = secure_sum(
            {n: client_delta(n, server_round) for n in NODES}, clip=1.0, scale_bits=24,
            weights={n: EXAMPLES[n] / 100.0 for n in NODES}, max_weight=1.0, mode="secagg+",
        )
        assert reference.total_weight is not None
        assert np.max(np.abs(got - reference.sum / reference.total_weight)) <= 2 * tol
    survivors = series(context.history, "secagg_survivors")
    assert survivors == [(1, len(NODES)), (2, len(NODES))]
    assert series(context.history, "secagg_modulus_bits")[-1][1] <= 64
    assert len(context.history.losses_distributed) == 2  # evaluate messages passed through the mod
    assert all(STATE_KEY not in c.state.config_records for c in grid.contexts.values())  # secrets forgotten


@pytest.mark.parametrize("nodes", [NODES, ALL_NODES], ids=["complete-graph", "harary-k12-of-16"])
def test_dropout_after_share_keys_is_recovered(nodes: list[int]) -> None:
    """The function-of-a-Grid API: a node that vanishes after sharing keys; the survivors' sum is exact.

    With 16 nodes and these targets SecAgg+ uses a sparse Harary graph (12 neighbours, t = 7), so unmasking
    asks each survivor only about its own neighbourhood."""
    grid = MemoryGrid(make_client_app([secagg_mod]), nodes, silent_from={nodes[2]: "masked_input"})
    fit = FitIns(ndarrays_to_parameters(INITIAL), {"round": 1})
    contents = {nid: compat.fitins_to_recorddict(fit, True) for nid in nodes}
    settings = SecAggSettings(scale_bits=24, max_weight=200.0, target_dropout=0.02, corrupt_fraction=0.01)
    outcome = run_secure_round(grid, contents, INITIAL, server_round=1, mode="secagg+", settings=settings)
    aggregate = outcome.aggregate
    assert aggregate is not None, outcome.aborted
    survivors = [n for n in nodes if n != nodes[2]]
    assert aggregate.survivors == tuple(survivors) and aggregate.dropped == (nodes[2],)
    assert outcome.metrics["secagg_recovered_dropouts"] == 1.0
    assert repr(aggregate) == f"SecureAggregate(length={DIM}, survivors={len(survivors)}, dropped=1)"  # no values
    assert outcome.metrics["secagg_degree"] == (12 if len(nodes) == 16 else len(nodes) - 1)
    mean = aggregate.mean_delta()
    assert mean is not None
    expected = weighted_mean(survivors, 1)
    assert np.max(np.abs(mean - expected)) <= mean_tolerance(survivors, expected, 24, 200.0)
    if nodes is ALL_NODES:
        return
    # fewer than t survivors: the round aborts and reveals nothing
    grid = MemoryGrid(make_client_app([secagg_mod]), NODES, silent_from={n: "masked_input" for n in NODES[:4]})
    contents = {nid: compat.fitins_to_recorddict(fit, True) for nid in NODES}
    outcome = run_secure_round(grid, contents, INITIAL, server_round=1, settings=SETTINGS)
    assert outcome.aggregate is None and "aborted" in outcome.aborted


def test_tampered_bytes_to_a_client_are_rejected_with_typed_errors() -> None:
    def tamper(nid: int, phase: str, msg: Message) -> None:
        record = msg.content.config_records[RECORD_KEY]
        if nid == NODES[0] and phase == "share_keys":
            record["payload"] = payload(record)[:-3]  # truncated
        if nid == NODES[1] and phase == "share_keys":
            data = bytearray(payload(record))
            data[0] ^= 0xFF  # bad magic
            record["payload"] = bytes(data)
        if nid == NODES[2] and phase == "share_keys":
            record["phase"] = "unmask"  # tag does not match the message
        if nid == NODES[3] and phase == "unmask":  # a valid request addressed to another client
            request = decode(payload(record))
            assert isinstance(request, UnmaskRequest)
            elsewhere = request.receiver % len(MORE_NODES) + 1
            record["payload"] = encode(UnmaskRequest(request.round_id, elsewhere, request.survivors, request.dropped))

    grid = MemoryGrid(make_client_app([secagg_mod]), MORE_NODES, tamper_down=tamper)
    fit = FitIns(ndarrays_to_parameters(INITIAL), {"round": 1})
    contents = {nid: compat.fitins_to_recorddict(fit, True) for nid in MORE_NODES}
    outcome = run_secure_round(grid, contents, INITIAL, server_round=1, settings=SETTINGS)
    errors = grid.client_errors
    assert isinstance(errors[NODES[0]], WireError) and "truncated" in str(errors[NODES[0]])
    assert isinstance(errors[NODES[1]], WireError) and "magic" in str(errors[NODES[1]])
    assert isinstance(errors[NODES[2]], RemoteProtocolError) and "phase" in str(errors[NODES[2]])
    assert isinstance(errors[NODES[3]], RemoteProtocolError) and "another client" in str(errors[NODES[3]])
    for exc in errors.values():
        assert isinstance(exc, SecAggError) and "\\x" not in str(exc) and len(str(exc)) < 200  # no bytes quoted
    # the round went on without the three clients that never shared keys; NODES[3] dropped at unmasking
    aggregate = outcome.aggregate
    assert aggregate is not None, outcome.aborted
    assert aggregate.survivors == tuple(MORE_NODES[3:])
    mean = aggregate.mean_delta()
    assert mean is not None
    expected = weighted_mean(MORE_NODES[3:], 1)
    assert np.max(np.abs(mean - expected)) <= mean_tolerance(MORE_NODES[3:], expected, 24, 100.0)
    assert all(STATE_KEY not in grid.contexts[n].state.config_records for n in NODES[:4])  # state wiped


def test_tampered_or_spoofed_client_replies_are_rejected_by_the_server() -> None:
    def tamper(nid: int, phase: str, reply: Message) -> None:
        record = reply.content.config_records[RECORD_KEY]
        if nid == NODES[0] and phase == "setup":  # (the exchange is named by the request)
            record["payload"] = b"XYZ" + payload(record)[3:]
        if nid == NODES[1] and phase == "setup":  # claims to be another client's protocol id
            advert = decode(payload(record))
            assert isinstance(advert, AdvertiseKeys)
            record["payload"] = encode(AdvertiseKeys(advert.round_id, 6, advert.enc_public, advert.mask_public))

    grid = MemoryGrid(make_client_app([secagg_mod]), NODES, tamper_up=tamper)
    fit = FitIns(ndarrays_to_parameters(INITIAL), {"round": 1})
    contents = {nid: compat.fitins_to_recorddict(fit, True) for nid in NODES}
    outcome = run_secure_round(grid, contents, INITIAL, server_round=1, settings=SETTINGS)
    assert outcome.rejected[NODES[0]].startswith("WireError") and "magic" in outcome.rejected[NODES[0]]
    assert outcome.rejected[NODES[1]].startswith("RemoteProtocolError") and "sender" in outcome.rejected[NODES[1]]
    assert outcome.aggregate is not None and outcome.aggregate.survivors == tuple(NODES[2:])


def test_client_mod_validates_setup_and_refuses_plaintext() -> None:
    mod = SecAggClientMod()
    setup = RoundSetup(
        client_id=1, num_clients=4, vector_length=DIM + 1, modulus_bits=2, threshold=2, round_id=9,
        graph_seed=bytes(32), mode="secagg+", threshold_fraction=2 / 3, target_dropout=0.1, corrupt_fraction=0.05,
        clip_range=1.0, scale_bits=16, headroom_bits=2, l2_clip=0.0, weighting="examples", max_weight=100.0,
    )
    ctxt = Context(run_id=0, node_id=7, node_config={}, state=RecordDict(), run_config={})

    def call(record: ConfigRecord | None) -> Message:
        content = RecordDict({RECORD_KEY: record} if record is not None else {})
        msg = message_from_proto(message_to_proto(Message(content, dst_node_id=7, message_type=MessageType.TRAIN)))
        return mod(msg, ctxt, lambda m, c: Message(RecordDict(), reply_to=m))

    def expect(record: ConfigRecord | None, fragment: str, error: type[Exception] = RemoteProtocolError) -> None:
        with pytest.raises(error) as info:
            call(record)
        assert fragment in str(info.value)

    good = setup.to_record()
    expect(good, "modulus")  # the stated modulus (2) is not what the parameters give
    codec_bits = setup.codec().modulus_bits
    config, _ = plan_round(4, DIM + 1, codec_bits, mode="secagg+", round_id=9, graph_seed=bytes(32))
    valid = RoundSetup(**{**setup.__dict__, "modulus_bits": codec_bits, "threshold": config.threshold})
    bad = valid.to_record()
    bad["scale_bits"] = 1.5
    expect(bad, "'scale_bits' must be an int")
    bad = valid.to_record()
    del bad["graph_seed"]
    expect(bad, "lacks key 'graph_seed'")
    bad = valid.to_record()
    bad["surprise"] = 1
    expect(bad, "unknown keys")
    bad = valid.to_record()
    bad["mode"] = "secagg++"
    expect(bad, "'mode'")
    expect(RoundSetup(**{**valid.__dict__, "threshold": 4}).to_record(), "threshold")
    small = RoundSetup(**{**valid.__dict__, "num_clients": 2, "client_id": 2})
    small_bits = small.codec().modulus_bits
    expect(RoundSetup(**{**small.__dict__, "modulus_bits": small_bits}).to_record(), "at least 3")
    # a valid setup answers with AdvertiseKeys and persists the session in context.state
    reply = call(valid.to_record())
    advert = payload(reply.content.config_records[RECORD_KEY])
    assert isinstance(decode(advert), AdvertiseKeys)
    assert STATE_KEY in ctxt.state.config_records
    expect(ConfigRecord({"phase": "advertise", "payload": advert}), "cannot receive AdvertiseKeys")
    assert STATE_KEY not in ctxt.state.config_records  # any failure forgets the round
    directory = encode(KeyDirectory(valid.round_id, 1, ()))
    expect(ConfigRecord({"phase": "share_keys", "payload": directory}), "no secure-aggregation round in progress")
    expect(ConfigRecord({"phase": "share_keys", "payload": b"FSA"}), "truncated", WireError)
    expect(ConfigRecord({"phase": "share_keys", "payload": directory, "extra": 1}), "unknown keys")
    # plaintext fit requests are refused unless allowed
    expect(None, "only sends masked updates")
    open_mod = SecAggClientMod(allow_plain_fit=True)
    msg = Message(RecordDict(), dst_node_id=7, message_type=MessageType.TRAIN)
    assert open_mod(msg, ctxt, lambda m, c: Message(RecordDict({"ok": ConfigRecord({"x": 1})}), reply_to=m)).content


def test_corrupt_persisted_session_is_a_local_error() -> None:
    grid = MemoryGrid(make_client_app([secagg_mod]), NODES)

    def corrupt(nid: int, phase: str, msg: Message) -> None:
        if nid == NODES[5] and phase == "share_keys":
            stored = grid.contexts[nid].state.config_records[STATE_KEY]
            stored["session"] = payload(stored, "session")[:-5]

    grid.tamper_down = corrupt
    fit = FitIns(ndarrays_to_parameters(INITIAL), {"round": 1})
    outcome = run_secure_round(grid, {n: compat.fitins_to_recorddict(fit, True) for n in NODES}, INITIAL,
                               server_round=1, settings=SETTINGS)
    assert isinstance(grid.client_errors[NODES[5]], LocalProtocolError)
    assert outcome.aggregate is not None and NODES[5] not in outcome.aggregate.survivors


# -- DP ------------------------------------------------------------------------------------------------------
def dp_reference(settings: DPSettings, rounds: int, globals_: list[np.ndarray], tmp: Path, nodes: list[int],
                 scale: float) -> tuple[list[np.ndarray], list[float]]:
    """DPAggregator in-process on the same updates, seed and round indices (Flower's rounds start at 1)."""
    ref = DPAggregator(WeightedMean(), settings, SamplingInfo("fixed", len(NODES), per_round=len(NODES)),
                       rounds=rounds, dim=DIM, ledger_path=tmp / "ref.jsonl", seed=11)
    means, eps = [], []
    for r in range(1, len(globals_)):
        g = globals_[r - 1]
        updates = []
        for n in nodes:
            local = flat(split((g + client_delta(n, r, scale)).astype(np.float32)))
            updates.append(ClientUpdate(n, (local - flat(split(g.astype(np.float32)))).astype(np.float32), 1))
        out = ref.aggregate(updates, dim=DIM, round_index=r)
        means.append(out.vector.astype(np.float64))
        eps.append(out.metrics["dp_epsilon"])
    ref.close()
    return means, eps


@pytest.mark.parametrize("path", ["secagg+", "plain"])
def test_dp_wrapper_matches_in_process_dp_aggregator(path: str, tmp_path: Path) -> None:
    """SecAgg+ workflow + DP wrapper (clients clip, noise on the secure sum), or Flower's default fit workflow
    with stock FedAvg wrapped only by the DP wrapper (server clips): both equal DPAggregator in-process."""
    settings = DPSettings(mode="central", clip=0.8, noise_multiplier=1.2, delta=1e-5, epsilon_budget=50.0)
    history: list[np.ndarray] = []
    strategy = DPStrategy(fedavg(history), settings, SamplingInfo("fixed", len(NODES), per_round=len(NODES)),
                          rounds=3, seed=11, ledger_path=tmp_path / "flower.jsonl")
    if path == "secagg+":
        grid = MemoryGrid(make_client_app([secagg_mod], scale=0.6), NODES)
        context = run_flower(grid, strategy, 3, SecAggWorkflow("secagg+", SecAggSettings(scale_bits=24), seed=5))
    else:
        grid = MemoryGrid(make_client_app([], scale=0.6), NODES)
        context = run_flower(grid, strategy, 3)
    strategy.close()
    assert not grid.client_errors and len(history) == 4
    means, ref_eps = dp_reference(settings, 3, history, tmp_path, NODES, 0.6)
    # secure path: n·2^-24 of fixed-point error on the sum, / the fixed denominator; float32 parameters
    tol = len(NODES) * 2.0**-24 / len(NODES) + 2e-6
    for r in (1, 2, 3):
        assert np.max(np.abs((history[r] - history[r - 1]) - means[r - 1])) <= tol
    eps = series(context.history, "dp_epsilon")
    assert [r for r, _ in eps] == [1, 2, 3]
    values = [e for _, e in eps]
    assert 0 < values[0] < values[1] < values[2]
    assert values == pytest.approx(ref_eps, rel=1e-9)
    assert strategy.epsilon_history == list(eps) and strategy.spent_epsilon() == pytest.approx(values[-1])
    noise_std = series(context.history, "dp_noise_std")[0][1]
    assert noise_std == pytest.approx(1.2 * 0.8 / len(NODES))  # the noise is really there: z·C / cohort


def test_distributed_dp_over_secagg_clients_add_the_noise(tmp_path: Path) -> None:
    """Distributed DP: every client adds its own discrete Gaussian share before masking; the server only
    decodes the (already private) sum. Each round is priced by RDP at its actual survivor count."""
    settings = DPSettings(mode="distributed", accountant="rdp", clip=0.8, noise_multiplier=1.0, delta=1e-5,
                          epsilon_budget=100.0, bits=20)
    sampling = SamplingInfo("fixed", len(MORE_NODES), per_round=len(MORE_NODES))
    history: list[np.ndarray] = []
    strategy = DPStrategy(fedavg(history, clients=len(MORE_NODES)), settings, sampling, rounds=2, seed=4,
                          ledger_path=tmp_path / "l.jsonl")
    dropped = MORE_NODES[4]
    grid = MemoryGrid(make_client_app([secagg_mod], scale=0.6), MORE_NODES, silent_from={dropped: "masked_input"})
    context = run_flower(grid, strategy, 2, SecAggWorkflow("secagg+", seed=6))
    strategy.close()
    params = strategy.distributed
    assert params is not None and params.noise == "discrete_gaussian" and params.bits == 20
    survivors = [n for n in MORE_NODES if n != dropped]
    assert series(context.history, "secagg_survivors") == [(1, 9.0), (2, 9.0)]
    assert series(context.history, "secagg_recovered_dropouts")[0] == (1, 1.0)
    noise_std = params.noise_std * params.gamma * np.sqrt(len(survivors))  # std of the noise on the sum
    for r in (1, 2):
        g = history[r - 1]
        clipped = []
        for n in survivors:
            local = flat(split((g + client_delta(n, r, 0.6)).astype(np.float32)))
            delta = local - flat(split(g.astype(np.float32)))
            clipped.append(delta * min(1.0, 0.8 / np.linalg.norm(delta)))
        residual = (history[r] - g) * len(MORE_NODES) - np.sum(clipped, axis=0)  # noise + rounding, on the sum
        rounding = len(survivors) * params.gamma * np.sqrt(params.padded_dim)
        assert np.max(np.abs(residual)) <= 6 * noise_std + rounding
        assert np.std(residual) > 0.3 * noise_std  # the clients' noise is really in the sum
    eps = series(context.history, "dp_epsilon")
    reference = make_accountant("rdp")
    expected = []
    for _ in (1, 2):
        reference.compose(round_event(settings, sampling, strategy.noise_multiplier or 0.0, params, len(survivors)))
        expected.append(reference.get_epsilon(1e-5))
    assert [e for _, e in eps] == pytest.approx(expected, rel=1e-9) and 0 < eps[0][1] < eps[1][1]
    assert series(context.history, "dp_noise_std")[0][1] == pytest.approx(noise_std / len(MORE_NODES))


def test_dp_wrapper_stops_before_exceeding_the_budget(tmp_path: Path) -> None:
    settings = DPSettings(mode="central", clip=0.8, noise_multiplier=1.0, delta=1e-5)
    sampling = SamplingInfo("fixed", len(NODES), per_round=len(NODES))
    accountant = make_accountant(settings.accountant)
    accountant.compose(round_event(settings, sampling, 1.0), 2)
    budget = accountant.get_epsilon(settings.delta) * 1.01  # two rounds fit, the third does not
    settings = DPSettings(mode="central", clip=0.8, noise_multiplier=1.0, delta=1e-5, epsilon_budget=budget)
    history: list[np.ndarray] = []
    strategy = DPStrategy(fedavg(history), settings, sampling, rounds=4, seed=1, ledger_path=tmp_path / "l.jsonl")
    grid = MemoryGrid(make_client_app([secagg_mod]), NODES)
    workflow = SecAggWorkflow("secagg+", seed=2)
    context = run_flower(grid, strategy, 4, workflow)
    strategy.close()
    eps = series(context.history, "dp_epsilon")
    assert [r for r, _ in eps] == [1, 2] and eps[-1][1] <= budget and strategy.stopped
    assert np.array_equal(history[2], history[3]) and np.array_equal(history[3], history[4])  # no release
    loose = DPSettings(mode="central", noise_multiplier=5.0, epsilon_budget=100.0)
    with pytest.raises(ValueError, match="sampled"):  # the accountant's sampling must be the strategy's
        DPStrategy(fedavg([]), loose, SamplingInfo("fixed", 10, per_round=3), rounds=2).configure_fit(
            1, ndarrays_to_parameters(INITIAL), _all_nodes_manager())
    with pytest.raises(ValueError, match="central"):
        DPStrategy(fedavg([]), DPSettings(mode="local"), sampling, rounds=2)


def _all_nodes_manager() -> Any:
    from flwr.server import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy

    manager = SimpleClientManager()
    for nid in NODES:
        manager.register(GridClientProxy(node_id=nid, grid=None, run_id=0))  # type: ignore[arg-type]
    return manager


# -- Message API strategies (flwr.serverapp.strategy) through SecureGrid -----------------------------------
def make_message_app(mods: list[Any], scale: float = 0.5, weight_key: str = "num-examples") -> ClientApp:
    """A Message API ClientApp (``@app.train()``) making the same updates as :class:`_Client`."""
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        nid = context.node_id
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        delta = split(client_delta(nid, int(msg.content["config"]["server-round"]), scale))
        local = [(p.astype(np.float64) + d).astype(np.float32) for p, d in zip(arrays, delta, strict=True)]
        metrics = MetricRecord({weight_key: EXAMPLES[nid], "node": float(nid)})
        return Message(RecordDict({"arrays": ArrayRecord(local), "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        l1 = float(np.abs(flat(msg.content["arrays"].to_numpy_ndarrays())).sum())
        metrics = MetricRecord({"num-examples": EXAMPLES[context.node_id], "l1": l1})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def start_message_fedavg(grid: Grid, rounds: int, clients: int = len(NODES), evaluate: bool = False,
                         strategy_cls: Any = None) -> tuple[Any, list[np.ndarray]]:
    """Flower's Message API FedAvg (or ``strategy_cls``) sampling every node, ``strategy.start`` on ``grid``;
    also returns the global model after each round."""
    history: list[np.ndarray] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> None:
        history.append(flat(arrays.to_numpy_ndarrays()))

    cls = strategy_cls or MessageFedAvg
    strategy = cls(fraction_train=1.0, min_train_nodes=clients, min_available_nodes=clients,
                   fraction_evaluate=1.0 if evaluate else 0.0, min_evaluate_nodes=clients)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(INITIAL), num_rounds=rounds, evaluate_fn=evaluate_fn)
    return result, history


@pytest.mark.parametrize(("nodes", "silent"), [(NODES, None), (ALL_NODES, ALL_NODES[3])],
                         ids=["complete-graph", "harary-with-a-dropout"])
def test_message_api_fedavg_through_secure_grid_matches_the_weighted_mean(nodes: list[int], silent: int | None) -> None:
    """Flower's Message API FedAvg, unchanged, with ``strategy.start(grid=SecureGrid(grid))``: every train
    round is fedshield's SecAgg+; evaluate messages pass through; a node that stops answering after sharing
    keys is recovered and left out of the mean."""
    silent_from = {silent: "masked_input"} if silent is not None else None
    grid = MemoryGrid(make_message_app([secagg_mod]), nodes, silent_from=silent_from)
    settings = SecAggSettings(clip_range=1.0, scale_bits=24, max_weight=200.0)  # up to 125 examples a node
    secure = SecureGrid(grid, "secagg+", settings, seed=3)
    result, history = start_message_fedavg(secure, rounds=2, clients=len(nodes), evaluate=True)
    survivors = [n for n in nodes if n != silent]
    assert not grid.client_errors and len(history) == 3
    for server_round in (1, 2):
        expected = weighted_mean(survivors, server_round)
        got = history[server_round] - history[server_round - 1]
        assert np.max(np.abs(got - expected)) <= mean_tolerance(survivors, expected, 24, settings.max_weight)
        train_metrics = result.train_metrics_clientapp[server_round]  # (Flower averages them: float rounding)
        assert train_metrics["secagg_survivors"] == pytest.approx(len(survivors))
        # round 1: it shared keys, then vanished (recovered); round 2: it never answers, so it is not in the round
        recovered = 1 if silent is not None and server_round == 1 else 0
        assert train_metrics["secagg_recovered_dropouts"] == pytest.approx(recovered)
        assert train_metrics["node"] == pytest.approx(np.mean(survivors))  # client metrics pass, weight 1 each
    assert list(result.arrays.keys()) == list(ArrayRecord(INITIAL).keys())  # the model's names survive
    assert sorted(result.evaluate_metrics_clientapp) == [1, 2]  # evaluate went around SecureGrid
    assert secure.last_outcome is not None and secure.last_outcome.aggregate is not None
    # the survivors forgot their round secrets (the vanished node never heard that the round ended)
    assert all(STATE_KEY not in c.state.config_records for nid, c in grid.contexts.items() if nid != silent)


def test_message_api_fedadam_acts_on_the_secure_mean() -> None:
    """A server optimiser (Message API FedAdam) receives the secure mean as its pseudo-gradient: the same
    model as FedAdam fed the plaintext replies, within the fixed-point error."""
    from flwr.serverapp.strategy import FedAdam

    secure = SecureGrid(MemoryGrid(make_message_app([secagg_mod]), NODES), "secagg+", SETTINGS, seed=1)
    _, got = start_message_fedavg(secure, rounds=2, strategy_cls=FedAdam)
    _, plain = start_message_fedavg(MemoryGrid(make_message_app([]), NODES), rounds=2, strategy_cls=FedAdam)
    assert np.max(np.abs(got[1] - got[0])) > 1e-3  # the model moved
    np.testing.assert_allclose(got, plain, atol=1e-4)


def test_message_api_secure_grid_with_central_dp_matches_dp_aggregator(tmp_path: Path) -> None:
    """SecureGrid with central DP: clients clip before masking, noise goes on the revealed sum; the models
    equal DPAggregator's in-process releases for the same seed, and epsilon per round reaches Flower's
    Result from fedshield's ledger."""
    settings = DPSettings(mode="central", clip=0.8, noise_multiplier=1.2, delta=1e-5, epsilon_budget=50.0)
    grid = MemoryGrid(make_message_app([secagg_mod], scale=0.6), NODES)
    secure = SecureGrid(grid, "secagg+", SecAggSettings(scale_bits=24), dp=settings, seed=5, dp_seed=11,
                        sampling=SamplingInfo("fixed", len(NODES), per_round=len(NODES)), rounds=3,
                        ledger_path=tmp_path / "flower.jsonl")
    result, history = start_message_fedavg(secure, rounds=3)
    secure.close()
    assert not grid.client_errors and len(history) == 4
    means, ref_eps = dp_reference(settings, 3, history, tmp_path, NODES, 0.6)
    for r in (1, 2, 3):
        assert np.max(np.abs((history[r] - history[r - 1]) - means[r - 1])) <= 2.0**-24 + 2e-6
    eps = [result.train_metrics_clientapp[r]["dp_epsilon"] for r in (1, 2, 3)]
    assert eps == pytest.approx(ref_eps, rel=1e-9) and 0 < eps[0] < eps[1] < eps[2]
    assert secure.epsilon_history == [(r, e) for r, e in zip((1, 2, 3), eps, strict=True)]
    assert result.train_metrics_clientapp[1]["dp_noise_std"] == pytest.approx(1.2 * 0.8 / len(NODES))


def test_message_api_secure_grid_distributed_dp_and_budget_stop(tmp_path: Path) -> None:
    """Distributed DP through SecureGrid (clients add discrete Gaussian shares), priced by RDP at the actual
    survivors; a budget that fits two rounds stops the third before anything is sent."""
    settings = DPSettings(mode="distributed", accountant="rdp", clip=0.8, noise_multiplier=1.0, delta=1e-5, bits=20)
    sampling = SamplingInfo("fixed", len(MORE_NODES), per_round=len(MORE_NODES))
    probe = SecureGrid(MemoryGrid(make_message_app([secagg_mod]), MORE_NODES), dp=settings, sampling=sampling,
                       rounds=4, ledger_path=tmp_path / "probe.jsonl")
    assert probe.privacy is not None
    dp = probe.privacy.aggregator(DIM)
    accountant = make_accountant("rdp")
    accountant.compose(round_event(settings, sampling, dp.noise_multiplier, dp.distributed, len(MORE_NODES)), 2)
    two_rounds = accountant.get_epsilon(1e-5)
    probe.close()
    budgeted = DPSettings(mode="distributed", accountant="rdp", clip=0.8, noise_multiplier=1.0, delta=1e-5, bits=20,
                          epsilon_budget=two_rounds * 1.01)
    grid = MemoryGrid(make_message_app([secagg_mod], scale=0.6), MORE_NODES)
    secure = SecureGrid(grid, dp=budgeted, sampling=sampling, rounds=4, seed=6, ledger_path=tmp_path / "l.jsonl")
    result, history = start_message_fedavg(secure, rounds=4, clients=len(MORE_NODES))
    secure.close()
    assert sorted(result.train_metrics_clientapp) == [1, 2] and secure.stopped
    assert result.train_metrics_clientapp[2]["dp_epsilon"] == pytest.approx(two_rounds, rel=1e-9)
    assert np.array_equal(history[2], history[3]) and np.array_equal(history[3], history[4])  # nothing released
    g = history[0]
    clipped = []
    for n in MORE_NODES:
        delta = flat(split((g + client_delta(n, 1, 0.6)).astype(np.float32))) - flat(split(g.astype(np.float32)))
        clipped.append(delta * min(1.0, 0.8 / np.linalg.norm(delta)))
    params = secure.privacy.distributed if secure.privacy is not None else None
    assert params is not None
    residual = (history[1] - g) * len(MORE_NODES) - np.sum(clipped, axis=0)
    noise_std = params.noise_std * params.gamma * np.sqrt(len(MORE_NODES))
    assert 0.3 * noise_std < np.std(residual) and np.max(np.abs(residual)) <= 6 * noise_std + 0.01


def test_clients_enforce_their_own_distributed_noise_floor(tmp_path: Path) -> None:
    """SecAggClientMod(min_noise_multiplier=z): a client does not take the server's word for the noise. It
    joins a distributed-DP round whose noise over the t minimum survivors is >= z, refuses a lower one and
    refuses rounds without client noise (central DP, plain SecAgg)."""
    settings = DPSettings(mode="distributed", accountant="rdp", clip=0.8, noise_multiplier=1.0, delta=1e-5,
                          bits=20, epsilon_budget=100.0)
    sampling = SamplingInfo("fixed", len(MORE_NODES), per_round=len(MORE_NODES))

    def one_round(floor: float, dp: DPSettings | None, name: str) -> tuple[MemoryGrid, SecureGrid, list[np.ndarray]]:
        grid = MemoryGrid(make_message_app([SecAggClientMod(min_noise_multiplier=floor)]), MORE_NODES)
        secure = SecureGrid(grid, dp=dp, sampling=sampling if dp else None, rounds=1 if dp else None,
                            ledger_path=tmp_path / f"{name}.jsonl")
        _, history = start_message_fedavg(secure, rounds=1, clients=len(MORE_NODES))
        secure.close()
        return grid, secure, history

    grid, secure, history = one_round(0.5, settings, "ok")
    assert not grid.client_errors and secure.epsilon_history and not np.array_equal(history[0], history[1])
    outcome = secure.last_outcome
    assert outcome is not None and outcome.aggregate is not None
    threshold = int(outcome.metrics["secagg_threshold"])
    assert secure.privacy is not None and secure.privacy.distributed is not None
    params = secure.privacy.distributed
    z = np.sqrt(threshold) * params.noise_std / params.l2_sensitivity
    assert 0.5 < z < 1.0  # ~ z_target * sqrt(t / n): fewer survivors, less noise
    central = DPSettings(mode="central", noise_multiplier=1.0, clip=0.8, epsilon_budget=100.0)
    cases = [(1.0, settings, "below this client's floor"), (0.5, None, "adds no client noise"),
             (0.5, central, "adds no client noise")]
    for i, (floor, dp, why) in enumerate(cases):
        grid, secure, history = one_round(floor, dp, f"refused-{i}")
        assert len(grid.client_errors) == len(MORE_NODES) and np.array_equal(history[0], history[1])
        assert all(why in str(e) for e in grid.client_errors.values())
        assert secure.epsilon_history == []  # the round aborted before anything was released or priced
    with pytest.raises(ValueError, match="min_noise_multiplier"):
        SecAggClientMod(min_noise_multiplier=-1.0)


def test_secure_grid_refuses_what_it_cannot_secure() -> None:
    grid = MemoryGrid(make_message_app([secagg_mod]), NODES)
    secure = SecureGrid(grid)
    msg = Message(RecordDict({"arrays": ArrayRecord(INITIAL)}), dst_node_id=NODES[0], message_type=MessageType.TRAIN)
    other = Message(RecordDict({"arrays": ArrayRecord(split(np.zeros(DIM)))}), dst_node_id=NODES[1],
                    message_type=MessageType.TRAIN)
    with pytest.raises(UpdateError, match="same global model"):
        secure.send_and_receive([msg, other])
    query = Message(RecordDict(), dst_node_id=NODES[1], message_type=MessageType.QUERY)
    with pytest.raises(ValueError, match="mixes"):
        secure.send_and_receive([msg, query])
    custom = Message(RecordDict({"arrays": ArrayRecord(INITIAL)}), dst_node_id=NODES[0], message_type="train.fast")
    with pytest.raises(ValueError, match="plaintext"):
        secure.send_and_receive([custom])
    with pytest.raises(ValueError, match="skip"):
        secure.push_messages([msg])
    two = Message(RecordDict({"a": ArrayRecord(INITIAL), "b": ArrayRecord(INITIAL)}), dst_node_id=NODES[0],
                  message_type=MessageType.TRAIN)
    with pytest.raises(UpdateError, match="exactly one"):
        secure.send_and_receive([two])
    with pytest.raises(ValueError, match="sampling"):
        SecureGrid(grid, dp=DPSettings(mode="central", noise_multiplier=1.0), rounds=2)
    with pytest.raises(ValueError, match="rounds"):
        SecureGrid(grid, dp=DPSettings(mode="central", noise_multiplier=1.0), sampling=SamplingInfo("fixed", 6, 6))
    with pytest.raises(TypeError):
        SecureGrid(object())  # type: ignore[arg-type]
    # a ClientApp whose reply lacks the mod's weight key drops out with a typed error instead of guessing
    bad = MemoryGrid(make_message_app([SecAggClientMod(weight_key="examples")]), NODES)
    _, history = start_message_fedavg(SecureGrid(bad, "secagg+", SETTINGS), rounds=1)
    assert len(bad.client_errors) == len(NODES) and np.array_equal(history[0], history[1])
    assert all(isinstance(e, UpdateError) and "'examples'" in str(e) for e in bad.client_errors.values())
    assert "secret" not in repr(secure) and "SecureGrid(mode='secagg+'" in repr(secure)


# -- CKKS ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def key_holder() -> KeyHolderService:
    from fl.he import CKKSSettings

    return KeyHolderService.generate(len(NODES), CKKSSettings(preset="compact", max_abs=1.0, max_weight=100.0))


def test_ckks_mod_and_strategy_average_under_encryption(key_holder: KeyHolderService) -> None:
    history: list[np.ndarray] = []
    public = key_holder.public_context
    strategy = CKKSFedAvg(public_context=public, decrypt=key_holder.decrypt_mean, **{
        "fraction_fit": 1.0, "min_fit_clients": len(NODES), "min_available_clients": len(NODES),
        "fraction_evaluate": 0.0, "initial_parameters": ndarrays_to_parameters(INITIAL),
        "evaluate_fn": lambda r, a, c: history.append(flat(a)), "on_fit_config_fn": lambda r: {"round": r},
    })
    grid = MemoryGrid(make_client_app([CKKSClientMod(public, max_examples=100.0)]), NODES)
    context = run_flower(grid, strategy, rounds=1)
    assert not grid.client_errors
    expected = weighted_mean(NODES, 1)
    got = history[1] - history[0]
    total_weight = sum(EXAMPLES[n] for n in NODES) / 100.0 * key_holder.weight_scale
    tol = 8 * key_holder.flooding_sigma(DIM) * (1 + float(np.abs(expected).max())) / total_weight + 1e-6
    assert 0 < np.max(np.abs(got - expected)) <= tol  # flooded, so close but never exact
    assert series(context.history, "ckks_clients") == [(1, len(NODES))]
    assert series(context.history, "ckks_total_weight")[0][1] == pytest.approx(sum(EXAMPLES[n] for n in NODES), rel=1e-3)
    # the key holder decrypts one sum per round, and never a "sum" of one ciphertext
    from secagg import ckks

    with pytest.raises(RemoteProtocolError, match="already decrypted"):
        key_holder.decrypt_mean(1, _one_sum(public, 2))
    with pytest.raises(RemoteProtocolError, match="refusing"):
        key_holder.decrypt_mean(99, _one_sum(public, 1))
    assert not ckks.CiphertextAggregator(public).holds_secret_key  # the server's role cannot decrypt


def _one_sum(public: bytes, count: int) -> bytes:
    from secagg import ckks

    server = ckks.CiphertextAggregator(public, length=DIM)
    for i in range(count):
        server.add(ckks.ClientEncryptor(public, client_id=i + 1).encrypt_update(np.zeros(DIM), 1.0))
    return server.result().to_bytes()


def test_ckks_mod_refuses_a_server_without_the_context(key_holder: KeyHolderService) -> None:
    """Flower's stock FedAvg does not name the key holder's context: the mod sends nothing."""
    grid = MemoryGrid(make_client_app([CKKSClientMod(key_holder.public_context, max_examples=100.0)]), NODES)
    history: list[np.ndarray] = []
    run_flower(grid, fedavg(history), rounds=1)
    assert set(grid.client_errors) == set(NODES)
    assert all(isinstance(e, RemoteProtocolError) and "CKKS context" in str(e) for e in grid.client_errors.values())
    assert np.array_equal(history[0], history[1])  # nothing aggregated


def test_ckks_under_message_api_fedavg_through_ckks_grid() -> None:
    """Flower's Message API FedAvg with ``strategy.start(grid=CKKSGrid(...))``: clients send one ciphertext
    each, the grid adds them without a secret key, the key holder decrypts only the flooded sum."""
    from fl.he import CKKSSettings
    from secagg import ckks

    holder = KeyHolderService.generate(len(NODES), CKKSSettings(preset="compact", max_abs=1.0, max_weight=100.0))
    public = holder.public_context
    uplinks: list[Message] = []

    def spy(nid: int, phase: str, reply: Message) -> None:
        uplinks.append(reply)

    grid = MemoryGrid(make_message_app([CKKSClientMod(public, max_examples=100.0)]), NODES, tamper_up=spy)
    result, history = start_message_fedavg(CKKSGrid(grid, public_context=public, decrypt=holder.decrypt_mean), rounds=2)
    assert not grid.client_errors and len(history) == 3
    total = sum(EXAMPLES[n] for n in NODES)
    for r in (1, 2):
        expected = weighted_mean(NODES, r)
        tol = 8 * holder.flooding_sigma(DIM) * (1 + float(np.abs(expected).max())) / (total / 100.0 * holder.weight_scale)
        assert 0 < np.max(np.abs((history[r] - history[r - 1]) - expected)) <= tol + 1e-6
        metrics = result.train_metrics_clientapp[r]
        assert metrics["ckks_clients"] == pytest.approx(len(NODES))
        assert metrics["ckks_total_weight"] == pytest.approx(total, rel=1e-3)
        assert metrics["node"] == pytest.approx(np.mean(NODES))
    # what travelled up: a ciphertext and metrics with weight 1 -- no arrays, no example counts
    assert len(uplinks) == 2 * len(NODES)
    assert all(not m.content.array_records and m.content.metric_records["metrics"]["num-examples"] == 1
               for m in uplinks)
    assert not ckks.CiphertextAggregator(public).holds_secret_key
    # a grid without the key holder's context gets nothing from these clients; a plain FedAvg neither
    other = KeyHolderService.generate(len(NODES), CKKSSettings(preset="compact", max_abs=1.0, max_weight=100.0))
    bad = MemoryGrid(make_message_app([CKKSClientMod(public, max_examples=100.0)]), NODES)
    _, history = start_message_fedavg(CKKSGrid(bad, public_context=other.public_context, decrypt=other.decrypt_mean),
                                      rounds=1)
    assert set(bad.client_errors) == set(NODES) and np.array_equal(history[0], history[1])
    assert all("CKKS context" in str(e) for e in bad.client_errors.values())
    plain = MemoryGrid(make_message_app([CKKSClientMod(public, max_examples=100.0)]), NODES)
    _, history = start_message_fedavg(plain, rounds=1)
    assert set(plain.client_errors) == set(NODES) and np.array_equal(history[0], history[1])


def test_ckks_grid_leaves_out_spoofed_and_malformed_ciphertexts() -> None:
    from fl.he import CKKSSettings

    holder = KeyHolderService.generate(len(NODES), CKKSSettings(preset="compact", max_abs=1.0, max_weight=100.0))
    public = holder.public_context

    from secagg import ckks

    # node 1 sends a well-formed ciphertext made under node 2's id (a replay or a spoof)
    spoof = ckks.ClientEncryptor(public, client_id=NODES[2]).encrypt_update(np.zeros(DIM), 1.0).to_bytes()

    def tamper(nid: int, phase: str, reply: Message) -> None:
        record = reply.content.config_records["fedshield.ckks"]
        if nid == NODES[0]:
            record["update"] = b"not a ciphertext"
        elif nid == NODES[1]:
            record["update"] = spoof

    grid = MemoryGrid(make_message_app([CKKSClientMod(public, max_examples=100.0)]), NODES, tamper_up=tamper)
    result, history = start_message_fedavg(CKKSGrid(grid, public_context=public, decrypt=holder.decrypt_mean),
                                           rounds=1)
    metrics = result.train_metrics_clientapp[1]
    assert metrics["ckks_rejected"] == pytest.approx(2) and metrics["ckks_clients"] == pytest.approx(len(NODES) - 2)
    survivors = NODES[2:]
    expected = weighted_mean(survivors, 1)
    total = sum(EXAMPLES[n] for n in survivors)
    tol = 8 * holder.flooding_sigma(DIM) * (1 + float(np.abs(expected).max())) / (total / 100.0 * holder.weight_scale)
    assert np.max(np.abs((history[1] - history[0]) - expected)) <= tol + 1e-6


# -- packaging and the example ---------------------------------------------------------------------------------
def test_import_fl_does_not_need_flwr() -> None:
    code = "import sys, fl, fl.integrations; assert 'flwr' not in sys.modules, 'flwr imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


@pytest.mark.parametrize("api", ["message", "legacy"])
def test_example_app_runs_in_flowers_simulation_engine(api: str, tmp_path: Path) -> None:
    """The tests that start Flower's Ray-based simulation engine: the example app, fast flags, with Flower's
    Message API strategy behind SecureGrid and with Strategy + LegacyContext + SecAggWorkflow + DPStrategy."""
    pytest.importorskip("ray")
    path = Path(__file__).resolve().parents[2] / "examples" / "flower_app.py"
    spec = importlib.util.spec_from_file_location("fedshield_example_flower_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--clients", "5", "--rounds", "3", "--epsilon", "8", "--api", api, "--out", str(tmp_path)])
    assert out["rounds_run"] == 3 and out["mode"] == "secagg+" and out["api"] == api
    assert (tmp_path / "summary.png").stat().st_size > 0
    assert json.loads((tmp_path / "summary.json").read_text())["epsilon_per_round"] == out["epsilon_per_round"]
    eps = out["epsilon_per_round"]
    assert len(eps) == 3 and 0 < eps[0] < eps[1] < eps[2] <= out["epsilon_budget"]
    assert out["accuracy"] > 0.8
    assert out["secagg_survivors"] == [5, 5, 5]
    # The same three rounds in-process, without Flower: each hospital's local_train from the global model,
    # fedshield's DPAggregator (same settings and seed, so the same CSPRNG noise), FedAvg's server step.
    # Flower's run differs only by the secure sum's fixed-point rounding (5 clients x 2^-20 per coordinate).
    config = default_config().replace(data={"num_clients": 5, "partition": "iid"},
                                      client={"epochs": 1, "batch_size": 0, "lr": 0.5}, run={"rounds": 3})
    data = build_federated_data(config)
    model = build_model("logreg", data.feature_shape, data.num_classes, seed=0)
    layout = ParamLayout.from_module(model)
    dp = DPAggregator(WeightedMean("uniform"), DPSettings(mode="central", clip=0.5, target_epsilon=8.0),
                      SamplingInfo("fixed", 5, per_round=5), rounds=3, dim=layout.size, seed=0)
    w = out["weights_per_round"][0]
    np.testing.assert_array_equal(w, layout.flatten(model))
    train = TrainConfig(epochs=1, batch_size=0, lr=0.5)
    for r in (1, 2, 3):
        updates = [local_train(model, layout, w, c.x_train, c.y_train, train, task=data.task, client_id=c.client_id,
                               seed=client_seed(0, r, c.client_id)) for c in data.clients]
        released = dp.aggregate(updates, dim=layout.size, round_index=r)
        w = w + released.vector
        np.testing.assert_allclose(out["weights_per_round"][r], w, atol=1e-4)
        assert released.metrics["dp_epsilon"] == pytest.approx(eps[r - 1], rel=1e-9)
    dp.close()
