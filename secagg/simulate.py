"""In-memory driver: runs one SecAgg/SecAgg+ round between n sessions with a scripted dropout schedule.

It is just a caller of the sans-IO sessions, like a network runner or a Flower adapter would be: it
moves messages (through the wire codec when ``wire=True``), decides who drops when, and times each party.

Another driver with the same signature (e.g. ``fl.backends.ray.RaySecAggDriver``, whose client sessions
live in Ray actors) can take over every :func:`run_round` call made inside :func:`use_round_driver`, so
callers such as :func:`secagg.api.secure_sum` need no transport argument.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, TypeVar

from secagg.errors import ParameterError, ProtocolError
from secagg.keys import SigningKey
from secagg.messages import (
    ClientMessage,
    ConsistencyRequest,
    ForwardedShares,
    KeyDirectory,
    Message,
    UnmaskRequest,
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

M = TypeVar("M", bound=Message)
Phase = Literal["advertise", "share", "mask", "consistency", "unmask"]
PHASES: Final[tuple[Phase, ...]] = ("advertise", "share", "mask", "consistency", "unmask")

# The phase a client is in when it answers a given server message (shared by every round driver).
REPLY_PHASE: Final[dict[type[Any], Phase]] = {
    KeyDirectory: "share",
    ForwardedShares: "mask",
    ConsistencyRequest: "consistency",
    UnmaskRequest: "unmask",
}


@dataclass
class RoundStats:
    """What one simulated round cost: per-client CPU time and traffic, server time."""

    client_seconds: dict[int, float] = field(default_factory=dict)
    #: per phase ("advertise", "share", "mask", ...): client id -> seconds spent producing that phase's reply
    client_phase_seconds: dict[str, dict[int, float]] = field(default_factory=dict)
    server_seconds: float = 0.0
    upload_bytes: dict[int, int] = field(default_factory=dict)
    download_bytes: dict[int, int] = field(default_factory=dict)
    client_errors: dict[int, str] = field(default_factory=dict)

    def mean_client_seconds(self) -> float:
        return sum(self.client_seconds.values()) / max(len(self.client_seconds), 1)

    def mean_phase_seconds(self, phase: str) -> float:
        times = self.client_phase_seconds.get(phase, {})
        return sum(times.values()) / max(len(times), 1)

    def mean_upload_bytes(self) -> float:
        return sum(self.upload_bytes.values()) / max(len(self.upload_bytes), 1)


def identity_keys_for(num_clients: int) -> tuple[dict[int, SigningKey], dict[int, bytes]]:
    """Fresh Ed25519 identities for the active variant (a PKI stand-in): private by id, public by id."""
    private = {u: SigningKey.generate() for u in range(1, num_clients + 1)}
    return private, {u: k.public_bytes() for u, k in private.items()}


class RoundDriver(Protocol):
    """Anything that runs one round with :func:`run_round`'s signature and result."""

    def __call__(
        self,
        config: ProtocolConfig,
        inputs: Mapping[int, Vector],
        *,
        drops: Mapping[int, Phase] | None = None,
        identities: Mapping[int, SigningKey] | None = None,
        wire: bool = True,
    ) -> tuple[AggregationResult, RoundStats]: ...


_DRIVER: ContextVar[RoundDriver | None] = ContextVar("secagg_round_driver", default=None)


@contextmanager
def use_round_driver(driver: RoundDriver) -> Iterator[None]:
    """Route every :func:`run_round` call in this context (this thread or task only) to ``driver``."""
    token = _DRIVER.set(driver)
    try:
        yield
    finally:
        _DRIVER.reset(token)


def check_schedule(
    config: ProtocolConfig, drops: Mapping[int, Phase] | None, identities: Mapping[int, SigningKey] | None
) -> dict[int, Phase]:
    """Validate a dropout schedule (and the active variant's identities); shared by every driver."""
    schedule = dict(drops or {})
    bad = [p for p in schedule.values() if p not in PHASES]
    if bad:
        raise ParameterError(f"unknown dropout phase {bad[0]!r}; allowed: {', '.join(PHASES)}")
    if config.active and identities is None:
        raise ParameterError("the active variant needs the clients' identity keys")
    return schedule


def run_round(
    config: ProtocolConfig,
    inputs: Mapping[int, Vector],
    *,
    drops: Mapping[int, Phase] | None = None,
    identities: Mapping[int, SigningKey] | None = None,
    wire: bool = True,
) -> tuple[AggregationResult, RoundStats]:
    """Run one round. ``inputs`` maps client id → encoded vector; ``drops`` maps client id → the phase
    in which it vanishes (it sends nothing from that phase on). Clients missing from ``inputs`` never
    start. Raises :class:`~secagg.errors.AbortError` if the round cannot complete.

    Inside :func:`use_round_driver` the round is run by that driver instead of in this process.
    """
    driver = _DRIVER.get()
    if driver is not None:
        return driver(config, inputs, drops=drops, identities=identities, wire=wire)
    drops = check_schedule(config, drops, identities)
    stats = RoundStats()
    server = ServerSession(config)
    clients: dict[int, ClientSession] = {}
    for u in sorted(inputs):
        t0 = time.perf_counter()
        clients[u] = ClientSession(config, u, identity_key=identities[u] if identities else None)
        clients[u].set_input(inputs[u])
        stats.client_seconds[u] = time.perf_counter() - t0
        stats.upload_bytes[u] = 0
        stats.download_bytes[u] = 0
    alive = set(clients)

    def ship(message: M) -> tuple[M, int]:
        """The message as the receiver gets it, and its size on the wire (0 when wire=False)."""
        if not wire:
            return message, 0
        data = encode(message)
        return decode(data), len(data)  # type: ignore[return-value]

    def to_server(u: int, message: ClientMessage) -> None:
        delivered, nbytes = ship(message)  # transport (encode/decode) is nobody's compute time
        stats.upload_bytes[u] += nbytes
        t0 = time.perf_counter()
        try:
            server.receive(delivered)
        except ProtocolError as exc:  # the server excluded this client; the round goes on without it
            stats.client_errors[u] = f"server rejected: {exc}"
            alive.discard(u)
        finally:
            stats.server_seconds += time.perf_counter() - t0

    for u in sorted(clients):
        if drops.get(u) == "advertise":
            alive.discard(u)
            continue
        t0 = time.perf_counter()
        advert = clients[u].start()
        spent = time.perf_counter() - t0
        stats.client_seconds[u] += spent
        stats.client_phase_seconds.setdefault("advertise", {})[u] = spent
        to_server(u, advert)

    while server.phase not in (ServerPhase.DONE, ServerPhase.ERROR):
        t0 = time.perf_counter()
        outbox = server.close_phase()  # AbortError propagates: the round is over
        stats.server_seconds += time.perf_counter() - t0
        for message in outbox:
            u = message.receiver
            if u not in alive:
                continue
            if drops.get(u) == REPLY_PHASE[type(message)]:
                alive.discard(u)
                continue
            delivered, nbytes = ship(message)
            stats.download_bytes[u] += nbytes
            t0 = time.perf_counter()
            try:
                replies = clients[u].receive(delivered)
            except ProtocolError as exc:  # the client gives up (e.g. too few neighbours): it drops out
                stats.client_errors[u] = f"client aborted: {exc}"
                alive.discard(u)
                continue
            finally:
                spent = time.perf_counter() - t0
                stats.client_seconds[u] += spent
                stats.client_phase_seconds.setdefault(REPLY_PHASE[type(message)], {})[u] = spent
            for reply in replies:
                to_server(u, reply)
    assert server.result is not None
    return server.result, stats
