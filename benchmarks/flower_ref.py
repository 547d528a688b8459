"""Flower SecAgg+ reference timings (same process, same n/m/k/t/dropout) and the AES-CTR PRG floor.

Used to put fedshield's SecAgg/SecAgg+ numbers next to Flower's (package ``flwr``, optional extra
``[bench]``). ``flwr`` is imported lazily inside the functions, so this file can be loaded (and
:func:`prg_floor_seconds` used) without it.

What runs: Flower's own code, unmodified, end to end
-----------------------------------------------------
* **Server**: the four stage methods of
  ``flwr.server.workflow.secure_aggregation.secaggplus_workflow.SecAggPlusWorkflow`` --
  ``setup_stage``, ``share_keys_stage``, ``collect_masked_vectors_stage``, ``unmask_stage`` -- are
  called in order (exactly what ``SecAggPlusWorkflow.__call__`` does) with a ``LegacyContext``, a
  minimal ``Strategy`` (FedAvg whose ``configure_fit`` selects all n nodes and whose
  ``aggregate_fit`` only captures the already unmasked parameters, so no extra O(n*m) FedAvg pass)
  and an in-memory stand-in for Flower's ``Grid`` (``send_and_receive``). Nothing of the workflow
  is re-implemented or transcribed.
* **Clients**: the stand-in Grid delivers each message to that node's
  ``flwr.client.mod.secure_aggregation.secaggplus_mod.secaggplus_mod(msg, context, call_next)``
  with a per-node ``Context`` (the mod keeps its SecAgg+ state in ``context.state`` as in a real
  SuperNode). Each message is passed through Flower's wire serde
  (``flwr.common.serde.message_to_proto`` -> ``message_from_proto``), as a real transport would, so
  every client gets its own copy. ``call_next`` (the user's ClientApp) returns a prebuilt FitRes
  ``RecordDict`` holding the client's float32 m-vector (built outside the timers), num_examples=1.

Timed (``time.perf_counter`` wall clock, single process, no network)
--------------------------------------------------------------------
* ``client_s``: per surviving client, the sum of its four ``secaggplus_mod`` calls -- setup (two
  ECDH key pairs), share keys (Shamir ``create_shares`` of rd_seed and sk1, ECDH + Fernet per
  neighbour), collect masked vectors (Fernet decrypt of received shares, FitRes -> ndarray
  decoding, Flower's ``quantize`` with stochastic rounding, private mask + one pairwise mask per
  neighbour via ``pseudo_rand_gen`` (NumPy MT19937), mod, ``ndarray_to_bytes``), unmask (share
  lists) -- including the mod's own state (de)serialisation; mean over the timed clients.
  ``client_mask_s`` is the collect-masked-vectors call alone. Extra keys ``client_setup_s``,
  ``client_share_keys_s``, ``client_unmask_s`` give the other stages.
* ``server_s``: wall time of ``unmask_stage`` minus the time spent inside the Grid stand-in's
  ``send_and_receive`` (i.e. minus the clients' unmask calls and message transport): building the
  requests, collecting shares, Shamir ``combine_shares`` per node, private-mask PRG per survivor,
  ECDH + pairwise PRG per (dropped node, neighbour), mod, ``factor_extract``, ``dequantize``.
  ``server_collect_s`` (summing masked uploads in ``collect_masked_vectors_stage``) and
  ``server_total_s`` (all four stages) are reported as extra keys, measured the same way.
* ``bytes_per_client``: mean over the timed clients of the summed
  ``message_to_proto(reply).ByteSize()`` of the replies a client sends in all four stages (Flower's
  protobuf encoding; the masked vector travels as ``np.save`` bytes of int64, i.e. ~8 bytes per
  coordinate). ``download_bytes_per_client`` is the same for what it receives.

Parameters mapping: ``k`` = neighbours per client excluding itself, passed as Flower's
``num_shares = k + 1`` (``n`` when ``k >= n - 1``); Flower bumps an even ``num_shares < n`` by one,
so the neighbour count really used is reported as ``k_effective``. ``t`` is passed as
``reconstruction_threshold`` (shares needed, a client's own share counts). ``clip_range``,
``quantization_range``, ``modulus_range`` are passed to the workflow; ``max_weight=1.0`` with
num_examples=1 makes Flower's weight factor exactly 1 (q_ratio = quantization_range), so the
quantisation step is the same 2*clip/quantization_range as without weighting (with Flower's default
max_weight=1000 it would be 1000x coarser). Flower's output is the weighted mean of the survivors'
vectors; ``correct`` compares ``mean * n_survivors`` with the float64 sum of the survivors' inputs
(inputs uniform in [-clip/2, clip/2]), tolerance ``2 * n_survivors * 2 * clip / quantization_range``.
Note that Flower needs ``n_survivors * quantization_range < modulus_range`` (n < 1024 by default).

Dropouts: ``round(dropout * n)`` clients, chosen from ``seed``, answer setup and share-keys and then
send nothing (as after a timeout), so the server reconstructs their sk1 and removes their pairwise
masks. ``random`` and ``numpy.random`` global state (Flower's ring shuffle and stochastic rounding)
are seeded from ``seed`` and restored afterwards; Flower's mask seeds come from ``os.urandom``.

Sampling (``mask_sample``): by default (None) every client runs the full protocol on a real
m-vector, the means are over all survivors and ``correct`` is checked; peak memory is then about
``n_survivors * m * 8`` bytes, because Flower's workflow holds all uploads before summing them. With
``mask_sample=s`` only s survivors (chosen from ``seed``) mask real m-vectors and are timed; the
other survivors run the same mod on a 1-element vector (so key agreement, share decryption and
unmask are real) and their upload is replaced by one shared all-zero int64 vector of the right
shape, so the server's data-independent unmask work is unchanged while memory and time stay small.
``correct`` is then NaN. Nothing is scaled: per-client numbers are plain means over timed clients.

CLI: ``.venv/bin/python benchmarks/flower_ref.py`` prints the reference table.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import random
import time
from typing import Any

import numpy as np

__all__ = ["flower_available", "flower_version", "prg_floor_seconds", "run_flower_secaggplus"]


def flower_available() -> bool:
    """True if ``flwr`` can be imported."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        return False
    return True


def flower_version() -> str:
    """Installed Flower version, or ``""`` if it is not installed."""
    try:
        return importlib.metadata.version("flwr")
    except importlib.metadata.PackageNotFoundError:
        return ""


def prg_floor_seconds(num_bytes: int, *, chunk_bytes: int = 1 << 22, repeats: int = 3) -> float:
    """Best-of-``repeats`` seconds to produce ``num_bytes`` of AES-256-CTR keystream.

    Encrypts zeros with ``cryptography`` in chunks of ``chunk_bytes`` into a preallocated buffer
    (``update_into``), i.e. the cost of the keystream alone, without reduction to field elements.
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if num_bytes < 0:
        raise ValueError("num_bytes must be >= 0")
    chunk = max(16, min(chunk_bytes, num_bytes or 16))
    zeros = bytes(chunk)
    out = bytearray(chunk + 15)
    key, nonce = os.urandom(32), os.urandom(16)
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        enc = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
        left = num_bytes
        while left >= chunk:
            enc.update_into(zeros, out)
            left -= chunk
        if left:
            enc.update_into(zeros[:left], out)
        enc.finalize()
        best = min(best, time.perf_counter() - t0)
    return best


def _flower_num_shares(n: int, k: int) -> int:
    return n if k >= n - 1 else k + 1


def run_flower_secaggplus(
    n: int,
    m: int,
    k: int,
    t: int,
    dropout: float,
    *,
    seed: int = 0,
    clip_range: float = 1.0,
    quantization_range: int = 2**22,
    modulus_range: int = 2**32,
    mask_sample: int | None = None,
) -> dict[str, float]:
    """Run one round of Flower's SecAgg+ (workflow + ``secaggplus_mod``) in-process; see module doc."""
    # ---- lazy Flower imports ------------------------------------------------------------------
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.client.mod.secure_aggregation.secaggplus_mod import secaggplus_mod
    from flwr.common import (
        Code,
        FitIns,
        FitRes,
        Parameters,
        Status,
        ndarray_to_bytes,
        ndarrays_to_parameters,
        parameters_to_ndarrays,
    )
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import (
        SecAggPlusWorkflow,
        WorkflowState,
    )
    from flwr.serverapp.grid import Grid
    from flwr.supercore.task_identity import TaskIdentity

    # ---- arguments --------------------------------------------------------------------------
    if n < 3 or m < 1:
        raise ValueError("need n >= 3 and m >= 1")
    if k < 2:
        raise ValueError("Flower needs num_shares = k + 1 >= 3, i.e. k >= 2")
    if not 2 <= t <= min(k, n - 1):
        raise ValueError("need 2 <= t <= min(k, n - 1) (Flower: reconstruction_threshold < num_shares)")
    if not 0.0 <= dropout < 1.0:
        raise ValueError("dropout must be in [0, 1)")

    node_ids = list(range(1001, 1001 + n))  # SuperNode IDs (1 is the SuperLink's)
    sel = np.random.default_rng(seed)
    n_drop = round(dropout * n)
    dropped = {int(x) for x in sel.choice(node_ids, size=n_drop, replace=False)} if n_drop else set()
    survivors = [nid for nid in node_ids if nid not in dropped]
    if mask_sample is None or mask_sample >= len(survivors):
        real = set(survivors)
    else:
        if mask_sample < 1:
            raise ValueError("mask_sample must be >= 1 or None")
        real = {int(x) for x in sel.choice(survivors, size=mask_sample, replace=False)}
    checked = real == set(survivors)

    def client_vector(nid: int) -> np.ndarray:
        g = np.random.default_rng([seed, nid])
        return g.uniform(-clip_range / 2, clip_range / 2, m).astype(np.float32)

    num_shares = _flower_num_shares(n, k)
    workflow = SecAggPlusWorkflow(
        num_shares=num_shares,
        reconstruction_threshold=t,
        max_weight=1.0,
        clipping_range=float(clip_range),
        quantization_range=int(quantization_range),
        modulus_range=int(modulus_range),
    )

    # ---- minimal Flower server objects -------------------------------------------------------
    class _Proxy(ClientProxy):
        def __init__(self, nid: int) -> None:
            super().__init__(str(nid))
            self.node_id = nid

        def get_properties(self, *a: Any, **kw: Any) -> Any:
            raise NotImplementedError

        def get_parameters(self, *a: Any, **kw: Any) -> Any:
            raise NotImplementedError

        def fit(self, *a: Any, **kw: Any) -> Any:
            raise NotImplementedError

        def evaluate(self, *a: Any, **kw: Any) -> Any:
            raise NotImplementedError

        def reconnect(self, *a: Any, **kw: Any) -> Any:
            raise NotImplementedError

    proxies = [_Proxy(nid) for nid in node_ids]

    class _Strategy(FedAvg):
        result: Parameters | None = None

        def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
            return [(p, FitIns(parameters, {})) for p in proxies]

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            self.result = results[0][1].parameters if results else None
            return None, {}

    strategy = _Strategy()
    base = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(context=base, strategy=strategy, client_manager=SimpleClientManager())
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({"current_round": 1})
    # The global model sent with FitIns is irrelevant here (the client returns its own vector); keep it tiny.
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([np.zeros(1, np.float32)]), keep_input=True
    )

    # ---- clients, driven through the Grid stand-in --------------------------------------------
    client_ctx = {
        nid: Context(run_id=0, node_id=nid, node_config={}, state=RecordDict(), run_config={})
        for nid in node_ids
    }
    stage_times: dict[int, dict[str, float]] = {nid: {} for nid in node_ids}
    up_bytes = dict.fromkeys(node_ids, 0)
    down_bytes = dict.fromkeys(node_ids, 0)
    true_sum = np.zeros(m, np.float64)
    placeholder: list[bytes] | None = None
    ok = Status(code=Code.OK, message="")

    def fit_content(vec: np.ndarray) -> RecordDict:
        fitres = FitRes(status=ok, parameters=ndarrays_to_parameters([vec]), num_examples=1, metrics={})
        return compat.fitres_to_recorddict(fitres, keep_input=False)

    def deliver(msg: Message) -> Message | None:
        nonlocal placeholder
        wire = message_to_proto(msg)
        nid = msg.metadata.dst_node_id
        stage = str(msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
        if nid in dropped and stage in (Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK):
            return None  # dropped after sharing keys: never answers again
        down_bytes[nid] += wire.ByteSize()
        received = message_from_proto(wire)
        del wire
        content: RecordDict | None = None
        if stage == Stage.COLLECT_MASKED_VECTORS:
            if nid in real:
                vec = client_vector(nid)
                if checked:
                    np.add(true_sum, vec, out=true_sum)
            else:
                vec = np.zeros(1, np.float32)
            content = fit_content(vec)
            del vec

        def call_next(m_in: Message, _ctx: Context) -> Message:
            assert content is not None
            return Message(content, reply_to=m_in)

        t0 = time.perf_counter()
        reply = secaggplus_mod(received, client_ctx[nid], call_next)
        stage_times[nid][stage] = time.perf_counter() - t0
        if stage == Stage.COLLECT_MASKED_VECTORS and nid not in real:
            if placeholder is None:
                placeholder = [
                    ndarray_to_bytes(np.zeros(1, np.int64)),
                    ndarray_to_bytes(np.zeros(m, np.int64)),
                ]
            reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS] = placeholder
        elif nid in real:
            up_bytes[nid] += message_to_proto(reply).ByteSize()
        return reply

    class _InMemoryGrid(Grid):
        def __init__(self) -> None:
            self.busy_s = 0.0

        def set_run(self, run: Any) -> None:
            raise NotImplementedError

        @property
        def run(self) -> Any:
            raise NotImplementedError

        def create_message(self, *a: Any, **kw: Any) -> Any:
            raise NotImplementedError

        def get_node_ids(self) -> list[int]:
            return list(node_ids)

        def push_messages(self, messages: Any) -> Any:
            raise NotImplementedError

        def pull_messages(self, message_ids: Any) -> Any:
            raise NotImplementedError

        def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
            t0 = time.perf_counter()
            replies = [r for r in (deliver(msg) for msg in messages) if r is not None]
            self.busy_s += time.perf_counter() - t0
            return replies

    grid = _InMemoryGrid()
    state = WorkflowState()

    # ---- run the four stages ----------------------------------------------------------------------
    # Flower's ring shuffle uses `random`, its stochastic rounding the legacy global NumPy RNG:
    # seed both for reproducibility and restore them afterwards.
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    identity = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    # what flwr.server.compat.app sets for a ServerApp task before running workflows
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 0, SUPERLINK_NODE_ID
    flwr_logger = logging.getLogger("flwr")
    old_level = flwr_logger.level
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    flwr_logger.setLevel(logging.WARNING)
    server_stage_s: dict[str, float] = {}
    k_effective = float("nan")
    try:
        for name, step in (
            ("setup", workflow.setup_stage),
            ("share_keys", workflow.share_keys_stage),
            ("collect", workflow.collect_masked_vectors_stage),
            ("unmask", workflow.unmask_stage),
        ):
            busy0 = grid.busy_s
            t0 = time.perf_counter()
            ok_step = step(grid, context, state)
            server_stage_s[name] = (time.perf_counter() - t0) - (grid.busy_s - busy0)
            if name == "setup":
                k_effective = float(np.mean([len(v) - 1 for v in state.nid_to_neighbours.values()]))
            if not ok_step:
                raise RuntimeError(
                    f"Flower's SecAgg+ workflow halted in stage {name!r} (n={n}, k={k}, t={t}, "
                    f"dropped={sorted(dropped)}): not enough active neighbours for the threshold"
                )
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002
        flwr_logger.setLevel(old_level)
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = identity

    # ---- results ------------------------------------------------------------------------------
    if strategy.result is None:
        raise RuntimeError("Flower produced no aggregate")
    n_surv = len(survivors)
    if state.active_node_ids != set(survivors):
        raise RuntimeError("Flower's active set differs from the intended survivors")
    correct = float("nan")
    max_err = float("nan")
    tol = 2.0 * n_surv * (2.0 * clip_range / quantization_range)
    if checked:
        mean = parameters_to_ndarrays(strategy.result)[0].astype(np.float64)
        max_err = float(np.max(np.abs(mean * n_surv - true_sum))) if m else 0.0
        correct = 1.0 if max_err <= tol else 0.0

    timed = sorted(real)
    stages = (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK)

    def mean_stage(stage: str) -> float:
        return float(np.mean([stage_times[nid][stage] for nid in timed]))

    return {
        "n": float(n),
        "m": float(m),
        "k": float(k),
        "t": float(t),
        "dropout": float(dropout),
        "client_s": float(np.mean([sum(stage_times[nid][s] for s in stages) for nid in timed])),
        "client_mask_s": mean_stage(Stage.COLLECT_MASKED_VECTORS),
        "client_setup_s": mean_stage(Stage.SETUP),
        "client_share_keys_s": mean_stage(Stage.SHARE_KEYS),
        "client_unmask_s": mean_stage(Stage.UNMASK),
        "server_s": server_stage_s["unmask"],
        "server_collect_s": server_stage_s["collect"],
        "server_total_s": float(sum(server_stage_s.values())),
        "bytes_per_client": float(np.mean([up_bytes[nid] for nid in timed])),
        "download_bytes_per_client": float(np.mean([down_bytes[nid] for nid in timed])),
        "correct": correct,
        "max_abs_err": max_err,
        "tolerance": tol,
        "n_dropped": float(len(dropped)),
        "n_timed_clients": float(len(timed)),
        "num_shares": float(state.num_shares),
        "k_effective": k_effective,
    }


def _main() -> None:  # pragma: no cover - manual benchmark
    import argparse

    ap = argparse.ArgumentParser(description="Flower SecAgg+ reference timings")
    ap.add_argument("--n", type=int, nargs="+", default=[10, 10, 100, 100])
    ap.add_argument("--m", type=int, nargs="+", default=[10**4, 10**5, 10**5, 10**6])
    ap.add_argument("--k", type=int, nargs="+", default=[9, 9, 2, 2])
    ap.add_argument("--t", type=int, nargs="+", default=[6, 6, 2, 2])
    ap.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.1, 0.1, 0.1])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mask-sample", type=int, default=None)
    args = ap.parse_args()
    print(f"flwr {flower_version()}, {os.cpu_count()} CPUs")
    hdr = (
        f"{'n':>4} {'m':>8} {'k':>3} {'keff':>4} {'t':>3} {'drop':>5} {'client_s':>9} {'mask_s':>9} "
        f"{'server_s':>9} {'bytes/cl':>11} {'ok':>3} {'prg_floor_s':>11}"
    )
    print(hdr)
    for n, m, k, t, d in zip(args.n, args.m, args.k, args.t, args.dropout, strict=True):
        r = run_flower_secaggplus(n, m, k, t, d, seed=args.seed, mask_sample=args.mask_sample)
        floor = prg_floor_seconds(k * m * 4)
        print(
            f"{n:>4} {m:>8} {k:>3} {r['k_effective']:>4.0f} {t:>3} {d:>5.2f} {r['client_s']:>9.4f} "
            f"{r['client_mask_s']:>9.4f} {r['server_s']:>9.4f} {r['bytes_per_client']:>11.0f} "
            f"{r['correct']:>3.0f} {floor:>11.5f}",
            flush=True,
        )


if __name__ == "__main__":  # pragma: no cover
    _main()
