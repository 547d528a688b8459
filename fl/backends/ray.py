"""Ray backend: one simulation's client work spread over Ray actors (this machine's cores or a Ray cluster).

* :class:`ClientWorkerPool` — long-lived actors, one CPU each. An actor (:class:`ClientWorker`) trains the
  clients it is given for an experiment it loaded once (model built from the config's seed, data shipped
  once through the object store), and hosts a shard of one secure-aggregation round's client sessions.
* :class:`RaySimulation` — :class:`fl.simulation.Simulation` whose ``train_clients`` runs local training
  in the pool (chunks scheduled dynamically, results returned in client order) and whose rounds route
  SecAgg/SecAgg+ client work through :class:`RaySecAggDriver`. The server (sampling, secure-aggregation
  server session, DP noise and ledger, optimiser, evaluation) stays in the driver process.
* :class:`RayCKKSEncryptor` — the clients' CKKS encryption (``aggregation = "ckks"``) on the actors, behind
  :func:`fl.he.use_encrypt_driver`; the ciphertext sum and the key holder's decryption stay in the driver.
* :class:`RaySecAggDriver` — :func:`secagg.simulate.run_round` with the :class:`~secagg.protocol.ClientSession`
  objects living in the actors: the driver closes each server phase, routes the server's messages (wire
  bytes when ``wire=True``) to the actors owning their receivers and feeds the replies back in client
  order. It is a :class:`secagg.simulate.RoundDriver`, so :func:`secagg.simulate.use_round_driver` makes
  :func:`secagg.api.secure_sum` (and everything above it) use it unchanged.

Results equal the in-process runner bit for bit for the same config: training is a pure function of
``(run.seed, round, client, weights)`` (DP-SGD's privacy cost comes back with the update and is recorded in
the driver), and the revealed sum of a secure round is the exact modular sum of the survivors' inputs
(each session's keys and self-mask seeds are fresh secrets, so transcripts differ; the sum cannot). CKKS is
the exception, as in-process: SEAL's encryption randomness is fresh, so a CKKS round agrees only within its
error bound. Actors
train with ``run.torch_threads`` intra-op threads (1 when 0): run the in-process reference with the same.

On a cluster, ``fedshield`` must be importable on every node (install it there, or pass
``ray_init={"runtime_env": {"py_modules": [...]}}``).
"""

from __future__ import annotations

import copy
import functools
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from fl.backends import BackendError, BackendParameterError, BackendUnavailableError

try:
    import ray
    from ray.util import ActorPool
except ImportError as exc:  # the optional extra is missing
    # Also reached when Ray is installed but broken (e.g. Ray 2.55 imports psutil without requiring it).
    raise BackendUnavailableError(f"fl.backends.ray needs Ray: pip install 'fedshield[ray]' ({exc})") from exc

from fl.aggregators import Aggregator, WeightedMean
from fl.config import ExperimentConfig
from fl.data import FederatedData
from fl.he import ClientEncryptors, EncryptJob, use_encrypt_driver
from fl.simulation import ClientWork, Simulation, config_hash
from fl.strategies import ServerOptimizer
from fl.types import ClientUpdate, RoundResult
from secagg.errors import ProtocolError
from secagg.graph import NeighbourGraph
from secagg.keys import SigningKey
from secagg.messages import (
    ClientMessage,
    ServerMessage,
    decode,
    encode,
)
from secagg.protocol import (
    AggregationResult,
    ClientSession,
    ProtocolConfig,
    ServerPhase,
    ServerSession,
    Vector,
)
from secagg.simulate import REPLY_PHASE, Phase, RoundStats, check_schedule, use_round_driver

T = TypeVar("T")

__all__ = ["ClientWorker", "ClientWorkerPool", "RayCKKSEncryptor", "RaySecAggDriver", "RaySimulation", "RoundSpec"]

# -- what crosses the process boundary -------------------------------------------------------------------
@dataclass(frozen=True)
class RoundSpec:
    """The public parameters of one secure round in a picklable form (a :class:`NeighbourGraph` holds a
    read-only mapping view, which does not pickle): the adjacency as an ``(n, k)`` array, None for the
    complete graph of plain SecAgg."""

    round_id: int
    num_clients: int
    degree: int
    adjacency: np.ndarray | None
    threshold: int
    vector_length: int
    modulus_bits: int
    identity_keys: dict[int, bytes] | None

    @classmethod
    def of(cls, config: ProtocolConfig) -> RoundSpec:
        graph = config.graph
        complete = graph.degree == graph.num_clients - 1
        adjacency = None if complete else np.array([graph.neighbours[u] for u in config.client_ids], dtype=np.int64)
        keys = dict(config.identity_keys) if config.identity_keys is not None else None
        return cls(config.round_id, graph.num_clients, graph.degree, adjacency, config.threshold,
                   config.vector_length, config.modulus_bits, keys)

    def protocol_config(self) -> ProtocolConfig:
        if self.adjacency is None:
            graph = NeighbourGraph.complete(self.num_clients)
        else:  # the public constructor re-validates the graph received from the driver
            rows = {u: tuple(row) for u, row in enumerate(self.adjacency.tolist(), start=1)}
            graph = NeighbourGraph(self.num_clients, self.degree, rows)
        return ProtocolConfig(self.round_id, graph, self.threshold, self.vector_length, self.modulus_bits,
                              self.identity_keys)


class Reply(NamedTuple):
    """One client's answer to one server message: its messages (wire bytes or objects), the seconds its
    session spent, and the error that made it give up (None if it did not)."""

    client_id: int
    messages: list[Any]
    seconds: float
    error: str | None


# -- the actor ---------------------------------------------------------------------------------------------
class ClientWorker:
    """What one Ray actor does. A plain class (``ray.remote`` is applied by :class:`ClientWorkerPool`), so it
    also runs in-process."""

    def __init__(self, torch_threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(int(torch_threads), 1))  # several actors share the cores: no oversubscription
        self._experiments: dict[str, Simulation] = {}
        self._sessions: dict[int, ClientSession] = {}
        self._wire = True
        self._encryptors: ClientEncryptors | None = None  # under the training's public CKKS context

    # ---- local training
    def load_experiment(self, key: str, config: ExperimentConfig, data: FederatedData) -> None:
        """Build the model and keep the data of one experiment (idempotent per ``key``)."""
        if key in self._experiments:
            return
        # Arrays from the object store are read-only views; training hands them to torch.from_numpy.
        owned = copy.deepcopy(data)
        self._experiments[key] = Simulation(config, data=owned, aggregator=WeightedMean(), progress=False)

    def unload_experiment(self, key: str) -> None:
        self._experiments.pop(key, None)

    def train(self, key: str, clients: Sequence[int], weights: np.ndarray, round_index: int) -> list[ClientWork]:
        sim = self._experiments.get(key)
        if sim is None:
            raise BackendError(f"experiment {key} is not loaded in this worker (call load_experiment first)")
        owned = np.array(weights, dtype=np.float32)  # a writable copy of the broadcast weights
        return [sim.train_client(int(c), owned, round_index) for c in clients]

    # ---- secure aggregation: a shard of one round's client sessions
    def begin_round(
        self, spec: RoundSpec, inputs: Mapping[int, Vector], identity_keys: Mapping[int, bytes] | None, wire: bool
    ) -> dict[int, float]:
        """Create the sessions of ``inputs``' clients; returns each one's set-up seconds."""
        config = spec.protocol_config()
        self._wire = wire
        self._sessions = {}
        seconds: dict[int, float] = {}
        for u in sorted(inputs):
            t0 = time.perf_counter()
            identity = SigningKey.from_private_bytes(identity_keys[u]) if identity_keys is not None else None
            session = ClientSession(config, u, identity_key=identity)
            session.set_input(inputs[u])
            self._sessions[u] = session
            seconds[u] = time.perf_counter() - t0
        return seconds

    def advertise(self, clients: Sequence[int]) -> list[Reply]:
        out = []
        for u in clients:
            t0 = time.perf_counter()
            advert = self._sessions[u].start()
            out.append(Reply(u, [self._send(advert)], time.perf_counter() - t0, None))
        return out

    def deliver(self, batch: Sequence[tuple[int, Any]]) -> list[Reply]:
        """Feed each ``(client id, server message)`` to its session; the replies in the same order."""
        out = []
        for u, payload in batch:
            message: ServerMessage = decode(payload) if isinstance(payload, bytes) else payload  # type: ignore[assignment]
            t0 = time.perf_counter()
            error: str | None = None
            replies: list[ClientMessage] = []
            try:
                replies = self._sessions[u].receive(message)
            except ProtocolError as exc:  # the client gives up (e.g. too few neighbours): it drops out
                error = str(exc)
            spent = time.perf_counter() - t0
            out.append(Reply(u, [self._send(r) for r in replies], spent, error))
        return out

    def end_round(self) -> None:
        self._sessions = {}  # the sessions' secrets go with them

    # ---- CKKS: clients encrypt their weighted updates under the public context
    def encrypt(self, public_context: bytes, jobs: Sequence[EncryptJob]) -> list[tuple[Any, float]]:
        """Each job's :class:`secagg.ckks.EncryptedUpdate` and seconds (an encryptor per client sharing one
        loaded context per training, as in-process)."""
        if self._encryptors is None or self._encryptors.public_context != public_context:
            self._encryptors = ClientEncryptors(public_context)
        return list(self._encryptors.encrypt(jobs))

    def peak_memory_kib(self) -> int:
        """This process's peak resident set size so far (``getrusage`` ``ru_maxrss``, KiB on Linux)."""
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    def _send(self, message: ClientMessage) -> Any:
        return encode(message) if self._wire else message


@functools.cache
def _remote_worker_class() -> Any:
    return ray.remote(ClientWorker)


def _ensure_ray(address: str | None, ray_init: Mapping[str, Any] | None) -> None:
    if not ray.is_initialized():
        # Left running for later pools in this process; ray.shutdown() stops it.
        ray.init(address=address, include_dashboard=False, **dict(ray_init or {}))


def split_evenly(items: Sequence[T], parts: int) -> list[list[T]]:
    """``items`` cut into at most ``parts`` contiguous, non-empty chunks whose sizes differ by at most one."""
    parts = max(1, min(parts, len(items)))
    bounds = np.linspace(0, len(items), parts + 1).round().astype(int)
    return [list(items[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


class ClientWorkerPool:
    """``num_workers`` :class:`ClientWorker` actors (default: one per CPU Ray knows of).

    Starts a local Ray instance (or joins ``address``) if Ray is not running; ``ray_init`` is passed to
    ``ray.init`` then. Each actor reserves ``min(1, free CPUs / num_workers)`` CPUs (none when no CPU is
    free, e.g. another pool holds them), so more workers than cores still start (they then share the cores).
    Actors that have not started within ``start_timeout_s`` raise :class:`BackendUnavailableError`.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        *,
        torch_threads: int = 1,
        address: str | None = None,
        ray_init: Mapping[str, Any] | None = None,
        start_timeout_s: float = 120.0,
    ) -> None:
        if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                        or num_workers < 1):
            raise BackendParameterError("num_workers", f"must be a positive int or None, got {num_workers!r}")
        if isinstance(start_timeout_s, bool) or not isinstance(start_timeout_s, (int, float)) or not start_timeout_s > 0:
            raise BackendParameterError("start_timeout_s", f"must be a positive number, got {start_timeout_s!r}")
        _ensure_ray(address, ray_init)
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        free = float(ray.available_resources().get("CPU", 0.0))
        count = num_workers if num_workers is not None else max(int(cpus), 1)
        # Reserve from what is free now: another pool (or job) may hold CPUs, and actors asking for more than
        # is free would wait for ever. With nothing free the actors reserve none and share the cores.
        per_actor = min(1.0, free / count)
        per_actor = per_actor if per_actor >= 0.01 else 0.0
        worker = _remote_worker_class().options(num_cpus=per_actor)
        self.actors: list[Any] = [worker.remote(torch_threads) for _ in range(count)]
        _ready, pending = ray.wait([a.peak_memory_kib.remote() for a in self.actors], num_returns=count,
                                  timeout=float(start_timeout_s))
        if pending:
            self.close()
            raise BackendUnavailableError(
                f"{len(pending)} of {count} Ray worker actors did not start within {start_timeout_s} s "
                f"(cluster CPUs {cpus:g}, free {free:g}, {per_actor:g} reserved per actor)"
            )

    @property
    def size(self) -> int:
        return len(self.actors)

    def map_ordered(self, method: str, calls: Iterable[tuple[Any, ...]]) -> list[Any]:
        """``actor.method(*args)`` for each ``args`` on whichever actor is free; results in call order."""
        pool = ActorPool(self.actors)
        return list(pool.map(lambda actor, args: getattr(actor, method).remote(*args), list(calls)))

    def broadcast(self, method: str, *args: Any) -> list[Any]:
        """``actor.method(*args)`` on every actor; their results in actor order."""
        return ray.get([getattr(actor, method).remote(*args) for actor in self.actors])

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def __enter__(self) -> ClientWorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- secure aggregation with the client sessions in the actors ------------------------------------------
class RaySecAggDriver:
    """A :class:`secagg.simulate.RoundDriver` whose client sessions live in a :class:`ClientWorkerPool`.

    Clients are dealt round-robin over the actors (in id order). Per phase the driver closes the server
    phase, drops the clients the schedule says vanish, and sends the phase's messages to the actors owning
    their receivers. The messages go out in ``waves`` contiguous runs of client ids, all submitted at once
    (an actor works through its queue in order): while the actors compute a later wave, the driver already
    hands an earlier wave's replies to the server, still in client order, exactly the order of the
    in-process driver. Stats follow :func:`secagg.simulate.run_round` (wire bytes, each session's compute,
    server compute).
    """

    def __init__(self, pool: ClientWorkerPool, *, waves: int = 4) -> None:
        if isinstance(waves, bool) or not isinstance(waves, int) or waves < 1:
            raise BackendParameterError("waves", f"must be a positive int, got {waves!r}")
        self.pool = pool
        self.waves = waves

    def __call__(
        self,
        config: ProtocolConfig,
        inputs: Mapping[int, Vector],
        *,
        drops: Mapping[int, Phase] | None = None,
        identities: Mapping[int, SigningKey] | None = None,
        wire: bool = True,
    ) -> tuple[AggregationResult, RoundStats]:
        schedule = check_schedule(config, drops, identities)
        actors = self.pool.actors
        if not actors:
            raise BackendError("the worker pool is closed")
        ids = sorted(inputs)
        owner = {u: i % len(actors) for i, u in enumerate(ids)}
        shards: list[list[int]] = [[] for _ in actors]
        for u in ids:
            shards[owner[u]].append(u)
        busy = [i for i, shard in enumerate(shards) if shard]
        stats = RoundStats()
        server = ServerSession(config)
        spec = ray.put(RoundSpec.of(config))
        try:
            setup = ray.get([
                actors[i].begin_round.remote(
                    spec, {u: inputs[u] for u in shards[i]},
                    # A simulation made every identity key; shipping the private halves to the actor that
                    # plays the client is this simulation's stand-in for each device holding its own.
                    {u: identities[u].private_bytes() for u in shards[i]} if identities is not None else None,
                    wire,
                )
                for i in busy
            ])
            for seconds in setup:
                stats.client_seconds.update(seconds)
            for u in ids:
                stats.upload_bytes[u] = 0
                stats.download_bytes[u] = 0
            alive = {u for u in ids if schedule.get(u) != "advertise"}
            self._exchange(server, "advertise", [(u, None) for u in ids if u in alive], owner, alive, stats)
            while server.phase not in (ServerPhase.DONE, ServerPhase.ERROR):
                t0 = time.perf_counter()
                outbox = server.close_phase()  # AbortError propagates: the round is over
                stats.server_seconds += time.perf_counter() - t0
                if not outbox:
                    continue
                phase = REPLY_PHASE[type(outbox[0])]
                deliveries: list[tuple[int, ServerMessage | None]] = []
                for message in outbox:
                    u = message.receiver
                    if u not in alive:
                        continue
                    if schedule.get(u) == phase:
                        alive.discard(u)
                        continue
                    deliveries.append((u, message))
                self._exchange(server, phase, deliveries, owner, alive, stats, wire=wire)
        finally:
            ray.get([actors[i].end_round.remote() for i in busy])
        assert server.result is not None
        return server.result, stats

    def _exchange(
        self,
        server: ServerSession,
        phase: Phase,
        deliveries: Sequence[tuple[int, ServerMessage | None]],
        owner: Mapping[int, int],
        alive: set[int],
        stats: RoundStats,
        *,
        wire: bool = False,
    ) -> None:
        """One phase: ``(client, server message)`` pairs in client order (message None: start the session)
        out to the actors in waves, the replies back to the server in the same order."""
        actors = self.pool.actors
        pending: list[list[Any]] = []
        for wave in split_evenly(sorted(deliveries, key=lambda d: d[0]), self.waves):
            batches: dict[int, list[tuple[int, Any]]] = {}
            for u, message in wave:
                payload: Any = message
                if wire and message is not None:
                    payload = encode(message)
                    stats.download_bytes[u] += len(payload)
                batches.setdefault(owner[u], []).append((u, payload))
            pending.append([
                actors[i].advertise.remote([u for u, _ in batch]) if phase == "advertise"
                else actors[i].deliver.remote(batch)
                for i, batch in sorted(batches.items())
            ])
        for refs in pending:
            replies = [r for shard in ray.get(refs) for r in shard]
            self._collect(server, sorted(replies, key=lambda r: r.client_id), phase, alive, stats)

    @staticmethod
    def _collect(server: ServerSession, replies: list[Reply], phase: Phase, alive: set[int], stats: RoundStats) -> None:
        """Hand the replies to the server in the order given (client order)."""
        for reply in replies:
            u = reply.client_id
            stats.client_seconds[u] += reply.seconds
            stats.client_phase_seconds.setdefault(phase, {})[u] = reply.seconds
            if reply.error is not None:
                stats.client_errors[u] = f"client aborted: {reply.error}"
                alive.discard(u)
                continue
            for payload in reply.messages:
                message: ClientMessage = payload
                if isinstance(payload, bytes):
                    stats.upload_bytes[u] += len(payload)
                    message = decode(payload)  # type: ignore[assignment]
                t0 = time.perf_counter()
                try:
                    server.receive(message)
                except ProtocolError as exc:  # the server excluded this client; the round goes on without it
                    stats.client_errors[u] = f"server rejected: {exc}"
                    alive.discard(u)
                finally:
                    stats.server_seconds += time.perf_counter() - t0


class RayCKKSEncryptor:
    """A :data:`fl.he.EncryptDriver`: the clients' CKKS encryption of a round on the pool's actors.

    The public context (no secret key) goes to the object store once per training; the jobs are split
    evenly over the actors and the encrypted updates come back in job order. ``with
    fl.he.use_encrypt_driver(RayCKKSEncryptor(pool)):`` makes every :class:`fl.he.CKKSAggregator` use it;
    the ciphertext sum and the key holder's decryption stay in the driver process.
    """

    def __init__(self, pool: ClientWorkerPool) -> None:
        self.pool = pool
        self._context: bytes = b""
        self._context_ref: Any = None

    def __call__(self, public_context: bytes, jobs: Sequence[EncryptJob]) -> list[tuple[Any, float]]:
        if not jobs:
            return []
        if public_context != self._context:
            self._context, self._context_ref = public_context, ray.put(public_context)
        chunks = split_evenly(list(jobs), self.pool.size)
        results = self.pool.map_ordered("encrypt", [(self._context_ref, chunk) for chunk in chunks])
        return [item for chunk in results for item in chunk]


# -- the simulation ---------------------------------------------------------------------------------------
class RaySimulation(Simulation):
    """:class:`~fl.simulation.Simulation` with client work on Ray actors; same results, same API.

    ``pool``: an existing :class:`ClientWorkerPool` to share (left open by :meth:`close`); otherwise one of
    ``num_workers`` actors is started (``address`` / ``ray_init`` as for the pool) and closed by
    :meth:`close`. ``secagg_on_workers``: run secure aggregation's client work in the actors too -- the
    SecAgg/SecAgg+ client sessions and the clients' CKKS encryption (else in the driver, as in-process). ``chunks_per_worker``: training chunks per actor and round
    (more balance the load of unequal clients, fewer save scheduling overhead).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        *,
        out_dir: str | Path | None = None,
        aggregator: Aggregator | None = None,
        data: FederatedData | None = None,
        progress: bool = True,
        pool: ClientWorkerPool | None = None,
        num_workers: int | None = None,
        address: str | None = None,
        ray_init: Mapping[str, Any] | None = None,
        secagg_on_workers: bool = True,
        chunks_per_worker: int = 4,
    ) -> None:
        if isinstance(chunks_per_worker, bool) or not isinstance(chunks_per_worker, int) or chunks_per_worker < 1:
            raise BackendParameterError("chunks_per_worker", f"must be a positive int, got {chunks_per_worker!r}")
        super().__init__(config, out_dir=out_dir, aggregator=aggregator, data=data, progress=progress)
        self._owns_pool = pool is None
        self.pool = pool if pool is not None else ClientWorkerPool(
            num_workers, torch_threads=config.run.torch_threads or 1, address=address, ray_init=ray_init
        )
        self.chunks_per_worker = chunks_per_worker
        self.secagg_driver = RaySecAggDriver(self.pool) if secagg_on_workers else None
        self.ckks_driver = RayCKKSEncryptor(self.pool) if secagg_on_workers else None
        # This experiment's name in the workers (a shared pool may hold several).
        self._key = f"{config_hash(config)}-{secrets.token_hex(8)}"
        self._loaded = False

    def _load_workers(self) -> None:
        if not self._loaded:
            self.pool.broadcast("load_experiment", self._key, self.config, ray.put(self.data))
            self._loaded = True

    def train_clients(self, clients: Sequence[int], weights: np.ndarray, round_index: int) -> list[ClientUpdate]:
        if not clients:
            return []
        self._load_workers()
        broadcast = ray.put(weights)
        chunks = split_evenly(list(clients), self.pool.size * self.chunks_per_worker)
        results: list[list[ClientWork]] = self.pool.map_ordered(
            "train", [(self._key, chunk, broadcast, round_index) for chunk in chunks]
        )
        return [self.account(_owned(work)) for chunk in results for work in chunk]

    def run_round(
        self, round_index: int, weights: np.ndarray, optimizer: ServerOptimizer
    ) -> tuple[np.ndarray, RoundResult]:
        if self.secagg_driver is None or self.ckks_driver is None:
            return super().run_round(round_index, weights, optimizer)
        with use_round_driver(self.secagg_driver), use_encrypt_driver(self.ckks_driver):
            return super().run_round(round_index, weights, optimizer)

    def close(self) -> None:
        """Free this experiment's state in the workers; stop them if this simulation started them."""
        if self._owns_pool:
            self.pool.close()
        elif self._loaded and self.pool.actors:
            self.pool.broadcast("unload_experiment", self._key)
        self._loaded = False

    def __enter__(self) -> RaySimulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _owned(work: ClientWork) -> ClientWork:
    """The work with a writable copy of its delta (arrays from the object store are read-only views)."""
    u = work.update
    return ClientWork(ClientUpdate(u.client_id, np.array(u.delta), u.num_examples, dict(u.metrics)), work.dpsgd_steps)

