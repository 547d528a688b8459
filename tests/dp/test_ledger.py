"""Tests of the durable privacy-budget ledger :mod:`dp.ledger`.

The ledger takes its accountant and event decoder by injection, so these tests run against small
stand-ins defined here (no dependency on ``dp.accountants`` / ``dp.events``):

* ``SumAccountant`` -- basic composition of pure-epsilon events, epsilon = sum of the events' epsilons
  (exact, dyadic values below so floating-point sums are exact);
* ``GaussianRDPAccountant`` -- RDP of the Gaussian mechanism over a fixed grid of orders,
  epsilon(delta) = min over alpha of sum_i count_i * alpha / (2 sigma_i^2) + log(1/delta) / (alpha - 1).

Every test parametrised by ``backend`` only uses ``backend.factory``, ``backend.decoder``,
``backend.events`` (three event dicts of increasing privacy cost) and ``backend.reference`` (epsilon of
a list of event dicts, computed independently of the ledger). To run them against the real accountants
add, e.g.::

    Backend("rdp", factory=RDPAccountant, decoder=event_from_dict,
            events=tuple(event_to_dict(PoissonSampledEvent(0.01, GaussianEvent(s))) for s in (4.0, 2.0, 1.0)),
            reference=lambda evs, delta: <fresh RDPAccountant composing each decoded event, get_epsilon(delta)>)

to ``BACKENDS``; nothing else changes (comparisons to ``reference`` use ``pytest.approx``).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dp.errors import BudgetExceededError, DPError, DPParameterError
from dp.ledger import (
    BudgetLedger,
    LedgerCorruptError,
    LedgerLockedError,
    LedgerMismatchError,
    LedgerRecoveryWarning,
    Release,
)

REPO = Path(__file__).resolve().parents[2]
DELTA = 1e-5

# ------------------------------------------------------------------------------- stand-in accounting
# (the crash test copies these definitions verbatim into its child process with inspect.getsource)


@dataclass(frozen=True)
class PureEvent:
    epsilon: float


@dataclass(frozen=True)
class GaussianEvent:
    noise_multiplier: float


def decode_event(d: dict) -> object:
    kind = d["kind"]
    if kind == "pure":
        return PureEvent(float(d["epsilon"]))
    if kind == "gaussian":
        return GaussianEvent(float(d["noise_multiplier"]))
    raise ValueError(f"unknown event kind {kind!r}")


def encode_event(e: object) -> dict:
    if isinstance(e, PureEvent):
        return {"kind": "pure", "epsilon": e.epsilon}
    if isinstance(e, GaussianEvent):
        return {"kind": "gaussian", "noise_multiplier": e.noise_multiplier}
    raise TypeError(type(e).__name__)


class SumAccountant:
    """Basic composition of pure-epsilon events."""

    def __init__(self) -> None:
        self.epsilon = 0.0

    def compose(self, event: object, count: int = 1) -> SumAccountant:
        assert isinstance(event, PureEvent) and count >= 1
        self.epsilon += count * event.epsilon
        return self

    def get_epsilon(self, delta: float) -> float:
        return self.epsilon


class GaussianRDPAccountant:
    """RDP of (unsampled) Gaussian mechanisms, converted with the classical RDP -> (eps, delta) bound."""

    ORDERS = np.concatenate([np.linspace(1.1, 10.9, 99), np.arange(11.0, 257.0)])

    def __init__(self) -> None:
        self.rdp = np.zeros_like(self.ORDERS)

    def compose(self, event: object, count: int = 1) -> None:
        assert isinstance(event, GaussianEvent) and count >= 1
        self.rdp = self.rdp + count * self.ORDERS / (2.0 * event.noise_multiplier**2)

    def get_epsilon(self, delta: float) -> float:
        return float(np.min(self.rdp + math.log(1.0 / delta) / (self.ORDERS - 1.0)))


def pure(eps: float) -> dict:
    return {"kind": "pure", "epsilon": eps}


def gauss(sigma: float) -> dict:
    return {"kind": "gaussian", "noise_multiplier": sigma}


def sum_reference(events: list[dict], delta: float) -> float:
    return math.fsum(e["epsilon"] for e in events)


def gaussian_reference(events: list[dict], delta: float) -> float:
    rho = math.fsum(1.0 / (2.0 * e["noise_multiplier"] ** 2) for e in events)
    orders = GaussianRDPAccountant.ORDERS
    return float(min(a * rho + math.log(1.0 / delta) / (a - 1.0) for a in orders))


@dataclass(frozen=True)
class Backend:
    name: str
    factory: Callable[[], Any]
    decoder: Callable[[dict], object]
    events: tuple[dict, dict, dict]  # increasing privacy cost
    reference: Callable[[list[dict], float], float]

    def __str__(self) -> str:
        return self.name


BACKENDS = [
    Backend("sum", SumAccountant, decode_event, (pure(0.125), pure(0.25), pure(0.5)), sum_reference),
    Backend(
        "gaussian-rdp",
        GaussianRDPAccountant,
        decode_event,
        (gauss(8.0), gauss(4.0), gauss(2.0)),
        gaussian_reference,
    ),
]


@pytest.fixture(params=BACKENDS, ids=str)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param


def release(r: int, event: dict, **kw: Any) -> Release:
    fields: dict[str, Any] = dict(
        round_index=r,
        mechanism="gaussian",
        noise_multiplier=1.0,
        sampling="poisson",
        sampling_rate=0.01,
        sample_size=None,
        population=None,
        clip=1.0,
        event=event,
    )
    fields.update(kw)
    return Release(**fields)


def open_ledger(
    path: Path, be: Backend, *, budget: float = 100.0, delta: float = DELTA, run_id: str = "run-1", **kw: Any
) -> BudgetLedger:
    return BudgetLedger(
        path,
        epsilon_budget=budget,
        delta=delta,
        accountant_factory=be.factory,
        event_decoder=be.decoder,
        run_id=run_id,
        **kw,
    )


SUM = BACKENDS[0]
GAUSS = BACKENDS[1]


def approx(x: float) -> Any:
    return pytest.approx(x, rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------------------------------ Release


def test_release_roundtrip_and_normalisation() -> None:
    rel = release(
        3,
        {"kind": "pure", "epsilon": 1, "nested": (1, 2)},
        noise_multiplier=2,
        sampling="fixed",
        sampling_rate=None,
        sample_size=10,
        population=100,
        timestamp=12,
        extra={"clients": 10, "note": "x", "loss": 0.5},
    )
    assert isinstance(rel.noise_multiplier, float) and isinstance(rel.timestamp, float)
    assert rel.event == {"kind": "pure", "epsilon": 1, "nested": [1, 2]}
    back = Release.from_dict(json.loads(json.dumps(rel.to_dict())))
    assert back == rel
    hash(rel)  # frozen and hashable despite the dict fields
    with pytest.raises(TypeError):
        rel.extra["clients"] = 3  # type: ignore[index]
    with pytest.raises(DPParameterError, match="unknown"):
        Release.from_dict({**rel.to_dict(), "surprise": 1})


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"round_index": -1}, "round_index"),
        ({"round_index": True}, "round_index"),
        ({"mechanism": ""}, "mechanism"),
        ({"noise_multiplier": math.nan}, "noise_multiplier"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"sampling": "uniform"}, "sampling"),
        ({"sampling_rate": None}, "poisson"),
        ({"sampling_rate": 1.5}, "sampling_rate"),
        ({"sampling_rate": 0.0}, "sampling_rate"),
        ({"sampling": "fixed", "sample_size": 5}, "fixed"),
        ({"sampling": "fixed", "sample_size": 5, "population": 4}, "exceed"),
        ({"sampling": "none", "sampling_rate": 0.5}, "none"),
        ({"clip": 0.0}, "clip"),
        ({"timestamp": math.inf}, "timestamp"),
        ({"event": {"x": math.nan}}, "JSON"),
        ({"event": {"x": object()}}, "JSON"),
        ({"event": [1, 2]}, "JSON object"),
        ({"extra": {"flag": True}}, "extra"),
        ({"extra": {1: 2}}, "extra"),
    ],
)
def test_release_validation(kw: dict[str, Any], match: str) -> None:
    kw = dict(kw)
    event = kw.pop("event", pure(0.5))
    with pytest.raises(DPParameterError, match=match):
        release(0, event, **kw)


# -------------------------------------------------------------------------------- accounting values


def test_exact_values_sum_accountant(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with open_ledger(path, SUM, budget=2.0) as led:
        assert led.spent_epsilon() == 0.0 and led.epsilon_per_round() == []
        assert led.rounds_remaining(pure(0.5)) == 4
        assert led.record(release(0, pure(0.5))) == 0.5
        assert led.record(release(1, pure(0.25))) == 0.75
        assert led.record(release(2, pure(0.25))) == 1.0
        assert led.spent_epsilon() == 1.0
        assert led.epsilon_per_round() == [(0, 0.5), (1, 0.75), (2, 1.0)]
        size = path.stat().st_size
        assert led.would_spend(pure(0.5)) == 1.5
        assert led.would_spend(release(3, pure(1.0))) == 2.0
        assert led.would_spend(release(3, pure(1.5))) == 2.5
        assert path.stat().st_size == size and len(led) == 3  # would_spend writes nothing
        assert led.rounds_remaining(pure(0.25)) == 4  # 1.0 + 4 * 0.25 == 2.0 exactly: still fits
        assert led.rounds_remaining(release(3, pure(0.5))) == 2
        assert led.rounds_remaining(pure(0.75)) == 1
        assert led.rounds_remaining(pure(1.0)) == 1
        assert led.rounds_remaining(pure(1.5)) == 0
        assert led.rounds_remaining(pure(0.0)) == 1_000_000  # costs nothing: capped by limit
        assert led.rounds_remaining(pure(0.0), limit=7) == 7
        assert led.rounds_remaining(pure(2**-20), limit=10**9) == 2**20
        with pytest.raises(DPParameterError, match="limit"):
            led.rounds_remaining(pure(0.5), limit=0)
        assert [r.event["epsilon"] for r in led.releases()] == [0.5, 0.25, 0.25]


def test_exact_values_gaussian_rdp(tmp_path: Path) -> None:
    with open_ledger(tmp_path / "l.jsonl", GAUSS, budget=10.0) as led:
        eps1 = led.record(release(0, gauss(2.0), noise_multiplier=2.0))
        eps2 = led.record(release(1, gauss(2.0), noise_multiplier=2.0))
    # rho = 2 * 1/(2*2^2) = 0.25; the optimum over continuous alpha is rho + 2 sqrt(rho log(1/delta)),
    # at alpha = 1 + sqrt(log(1/delta)/rho) = 7.786 -- the grid (step 0.1 there) is within 1e-3 of it.
    assert eps2 == pytest.approx(0.25 + 2 * math.sqrt(0.25 * math.log(1 / DELTA)), abs=1e-3)
    assert eps2 == pytest.approx(3.642883, abs=1e-3)
    assert eps1 == pytest.approx(0.125 + 2 * math.sqrt(0.125 * math.log(1 / DELTA)), abs=1e-3)
    assert eps2 == approx(gaussian_reference([gauss(2.0)] * 2, DELTA))


def test_values_match_reference_and_agree_everywhere(tmp_path: Path, backend: Backend) -> None:
    e0, e1, e2 = backend.events
    sequence = [e0, e0, e1, e0, e2, e2, e2, e1]
    with open_ledger(tmp_path / "l.jsonl", backend, budget=1e6) as led:
        returned = []
        for r, ev in enumerate(sequence):
            would = led.would_spend(ev)
            eps = led.record(release(r, ev))
            assert eps == would == led.spent_epsilon()  # one replay rule everywhere: bit-identical
            assert eps == approx(backend.reference(sequence[: r + 1], DELTA))
            returned.append(eps)
        assert returned == sorted(returned)
        assert led.epsilon_per_round() == list(enumerate(returned))
        assert [r.event for r in led.releases()] == sequence
    with open_ledger(tmp_path / "l.jsonl", backend, budget=1e6) as led:  # recomputed from the file
        assert led.epsilon_per_round() == list(enumerate(returned))
        assert led.spent_epsilon() == returned[-1]


def test_hard_stop_refuses_and_writes_nothing(tmp_path: Path, backend: Backend) -> None:
    e0, e1, e2 = backend.events
    path = tmp_path / "l.jsonl"
    fits = backend.reference([e1, e1], DELTA)
    over = backend.reference([e1, e1, e2], DELTA)
    budget = (fits + over) / 2
    assert backend.reference([e1, e1, e0], DELTA) < budget  # the smaller release still fits afterwards
    with open_ledger(path, backend, budget=budget) as led:
        led.record(release(0, e1))
        spent = led.record(release(1, e1))
        before = path.read_bytes()
        with pytest.raises(BudgetExceededError) as info:
            led.record(release(2, e2))
        msg = str(info.value)
        assert f"{spent:.6g}" in msg and f"{led.would_spend(e2):.6g}" in msg and f"{budget:.6g}" in msg
        assert isinstance(info.value, DPError)
        assert path.read_bytes() == before and len(led) == 2 and led.spent_epsilon() == spent
        assert led.rounds_remaining(e2) == 0
        led.record(release(2, e0))  # a refusal does not break the ledger
    with open_ledger(path, backend, budget=budget) as led:
        assert [r.round_index for r in led.releases()] == [0, 1, 2]


def test_rounds_remaining_is_exact_for_record(tmp_path: Path, backend: Backend) -> None:
    e0, e1, e2 = backend.events
    budget = backend.reference([e2] + [e1] * 6, DELTA) * 1.0001
    with open_ledger(tmp_path / "l.jsonl", backend, budget=budget) as led:
        led.record(release(0, e2))
        k = led.rounds_remaining(e1)
        assert k >= 6
        for r in range(k):
            led.record(release(1 + r, e1))
        with pytest.raises(BudgetExceededError):
            led.record(release(1 + k, e1))
        assert led.rounds_remaining(e1) == 0


def test_event_objects_need_an_encoder(tmp_path: Path) -> None:
    with open_ledger(tmp_path / "a.jsonl", SUM, budget=2.0) as led:
        led.record(release(0, pure(0.5)))
        with pytest.raises(DPParameterError, match="event_encoder"):
            led.would_spend(PureEvent(0.25))
    with open_ledger(tmp_path / "b.jsonl", SUM, budget=2.0, event_encoder=encode_event) as led:
        led.record(release(0, pure(0.5)))
        assert led.would_spend(PureEvent(0.25)) == led.would_spend(pure(0.25)) == 0.75
        assert led.rounds_remaining(PureEvent(0.5)) == 3


def test_undecodable_event_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    with open_ledger(path, SUM) as led:
        before = path.read_bytes()
        with pytest.raises(DPParameterError, match="event_decoder"):
            led.record(release(0, {"kind": "laplace"}))
        with pytest.raises(DPParameterError):
            led.record(pure(0.5))  # type: ignore[arg-type]
        assert path.read_bytes() == before and len(led) == 0


def test_rereleased_round_is_counted_again(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    with open_ledger(path, SUM) as led:
        for r in (0, 1, 2):
            led.record(release(r, pure(0.25)))
    with open_ledger(path, SUM) as led:  # resumed from the round-1 checkpoint: round 2 runs again
        led.record(release(2, pure(0.25)))
        assert led.epsilon_per_round() == [(0, 0.25), (1, 0.5), (2, 0.75), (2, 1.0)]


def test_invalid_ledger_parameters(tmp_path: Path) -> None:
    for kw in ({"budget": 0.0}, {"budget": math.inf}, {"delta": 0.0}, {"delta": 1.0}, {"run_id": ""}):
        with pytest.raises(DPParameterError):
            open_ledger(tmp_path / "l.jsonl", SUM, **kw)
    with pytest.raises(DPParameterError, match="does not exist"):
        open_ledger(tmp_path / "missing" / "l.jsonl", SUM)
    assert not (tmp_path / "l.jsonl").exists()


# --------------------------------------------------------------------------------- file and resume


def test_file_format_and_hash_chain_are_as_documented(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "l.jsonl"
    with open_ledger(path, SUM, budget=3.0, delta=1e-6, run_id="demo") as led:
        assert led.created
        led.record(release(0, pure(0.5), timestamp=1.5, extra={"clients": 7}))
        led.record(release(1, pure(0.25)))
        head = led.head_hash
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw[:-1].split(b"\n")
    header = json.loads(lines[0])
    assert list(header) == ["format", "version", "run_id", "delta", "epsilon_budget", "created"]
    assert header["format"] == "fedshield-ledger" and header["version"] == 1
    assert (header["run_id"], header["delta"], header["epsilon_budget"]) == ("demo", 1e-6, 3.0)
    prev = hashlib.sha256(lines[0]).hexdigest()
    for seq, line in enumerate(lines[1:]):
        rec = json.loads(line)
        assert list(rec) == ["seq", "prev_hash", "hash", "release"]
        assert rec["seq"] == seq and rec["prev_hash"] == prev
        body = {"seq": seq, "prev_hash": prev, "release": rec["release"]}
        canonical = json.dumps(
            body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
        assert rec["hash"] == hashlib.sha256(canonical.encode()).hexdigest()
        prev = rec["hash"]
    assert prev == head
    assert json.loads(lines[1])["release"]["extra"] == {"clients": 7}


def test_reopen_continues(tmp_path: Path, backend: Backend) -> None:
    e0, e1, _ = backend.events
    path = tmp_path / "l.jsonl"
    with open_ledger(path, backend) as led:
        led.record(release(0, e0))
        led.record(release(1, e1))
        spent, rels, head = led.spent_epsilon(), led.releases(), led.head_hash
    with open_ledger(path, backend) as led:
        assert not led.created and led.recovered_tail is None
        assert led.releases() == rels and led.spent_epsilon() == spent and led.head_hash == head
        eps = led.record(release(2, e0))
        assert eps == approx(backend.reference([e0, e1, e0], DELTA))
    with open_ledger(path, backend) as led:
        assert [r.round_index for r in led.releases()] == [0, 1, 2] and led.spent_epsilon() == eps
    assert len(path.read_bytes().splitlines()) == 4


@pytest.mark.parametrize(
    ("field", "kw"),
    [("run_id", {"run_id": "run-2"}), ("delta", {"delta": 1e-6}), ("epsilon_budget", {"budget": 5.0})],
)
def test_header_mismatch_is_refused(tmp_path: Path, field: str, kw: dict[str, Any]) -> None:
    path = tmp_path / "l.jsonl"
    with open_ledger(path, SUM, budget=4.0) as led:
        led.record(release(0, pure(0.5)))
    before = path.read_bytes()
    with pytest.raises(LedgerMismatchError, match=field) as info:
        open_ledger(path, SUM, **{"budget": 4.0, **kw})
    assert info.value.field == field
    assert isinstance(info.value, DPParameterError) and isinstance(info.value, ValueError)
    assert path.read_bytes() == before
    open_ledger(path, SUM, budget=4.0).close()  # the lock was released by the failed open


@pytest.mark.parametrize("with_records", [False, True])
def test_header_version_mismatch_is_refused(tmp_path: Path, with_records: bool) -> None:
    path = tmp_path / "l.jsonl"
    with open_ledger(path, SUM) as led:
        if with_records:
            led.record(release(0, pure(0.5)))
    path.write_bytes(path.read_bytes().replace(b'"version":1', b'"version":2', 1))
    with pytest.raises(LedgerMismatchError, match="version") as info:
        open_ledger(path, SUM)
    assert info.value.field == "version"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b'{"format":"fedshield-ledger"', "no complete header"),
        (b"hello world\n", "header is not valid JSON"),
        (b'{"format":"something-else"}\n', "not a fedshield-ledger"),
        (b'{"format":"fedshield-ledger","version":1}\n', "header keys"),
    ],
)
def test_not_a_ledger_is_refused(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "l.jsonl"
    path.write_bytes(content)
    with pytest.raises(LedgerCorruptError, match=match) as info:
        open_ledger(path, SUM)
    assert info.value.line == 1
    assert path.read_bytes() == content


def _ledger_with_records(path: Path, be: Backend, n: int = 5) -> list[bytes]:
    with open_ledger(path, be) as led:
        for r in range(n):
            led.record(release(r, be.events[r % 3]))
    return path.read_bytes().splitlines(keepends=True)


def _edit_release(line: bytes, **changes: Any) -> bytes:
    rec = json.loads(line)
    rec["release"].update(changes)
    return json.dumps(rec, separators=(",", ":")).encode() + b"\n"


def _rehash(line: bytes) -> bytes:
    import hashlib

    rec = json.loads(line)
    body = {"seq": rec["seq"], "prev_hash": rec["prev_hash"], "release": rec["release"]}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    rec["hash"] = hashlib.sha256(canonical.encode()).hexdigest()
    return json.dumps(rec, separators=(",", ":")).encode() + b"\n"


# lines: [header, seq0, seq1, seq2, seq3, seq4] -> file lines 1..6
TAMPERS: dict[str, tuple[Callable[[list[bytes]], list[bytes]], int, str]] = {
    "delete-middle": (lambda ls: ls[:3] + ls[4:], 4, "seq"),
    "delete-first": (lambda ls: ls[:1] + ls[2:], 2, "seq"),
    "swap": (lambda ls: ls[:2] + [ls[3], ls[2]] + ls[4:], 3, "seq"),
    "edit-middle": (lambda ls: ls[:3] + [_edit_release(ls[3], noise_multiplier=9.0)] + ls[4:], 4, "hash"),
    "edit-event": (lambda ls: ls[:3] + [_edit_release(ls[3], event=pure(0.0))] + ls[4:], 4, "hash"),
    "edit-and-rehash": (
        lambda ls: ls[:3] + [_rehash(_edit_release(ls[3], clip=9.0))] + ls[4:],
        5,
        "prev_hash",
    ),
    "edit-header": (lambda ls: [ls[0].replace(b'"created":"', b'"created":"X')] + ls[1:], 2, "prev_hash"),
    "blank-line": (lambda ls: ls[:3] + [b"\n"] + ls[3:], 4, "JSON"),
    "torn-middle": (lambda ls: ls[:3] + [ls[3][:40] + b"\n"] + ls[4:], 4, "JSON"),
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_hash_chain_detects_tampering(tmp_path: Path, backend: Backend, tamper: str) -> None:
    path = tmp_path / "l.jsonl"
    lines = _ledger_with_records(path, backend)
    edit, line_no, match = TAMPERS[tamper]
    damaged = b"".join(edit(lines))
    path.write_bytes(damaged)
    with pytest.raises(LedgerCorruptError, match=match) as info:
        open_ledger(path, backend)
    assert info.value.line == line_no and f"line {line_no}" in str(info.value)
    assert path.read_bytes() == damaged  # never "repaired" beyond a torn final line
    path.write_bytes(b"".join(lines))
    open_ledger(path, backend).close()  # and the failed open released the lock


def test_torn_final_line_is_truncated(tmp_path: Path, backend: Backend) -> None:
    path = tmp_path / "l.jsonl"
    lines = _ledger_with_records(path, backend, n=4)
    intact = b"".join(lines[:-1])
    for torn in (lines[-1][: len(lines[-1]) // 2], b"{", lines[-1][:-2]):
        path.write_bytes(intact + torn)  # a crash in the middle of appending seq 3
        with pytest.warns(LedgerRecoveryWarning, match="truncated"):
            led = open_ledger(path, backend)
        with led:
            assert led.recovered_tail == torn and len(led) == 3
            assert path.read_bytes() == intact
            led.record(release(3, backend.events[0]))
    with open_ledger(path, backend) as led:
        assert len(led) == 4 and led.recovered_tail is None


def test_complete_but_unterminated_last_record_is_kept(tmp_path: Path, backend: Backend) -> None:
    path = tmp_path / "l.jsonl"
    lines = _ledger_with_records(path, backend, n=3)
    full = b"".join(lines)
    path.write_bytes(full[:-1])  # the newline of the last append never reached the disk
    with pytest.warns(LedgerRecoveryWarning, match="kept"):
        led = open_ledger(path, backend)
    with led:
        assert len(led) == 3  # conservative: never under-report
        assert path.read_bytes() == full


# ------------------------------------------------------------------------------------ concurrency


def test_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    first = open_ledger(path, SUM)
    with pytest.raises(LedgerLockedError, match=f"pid {os.getpid()}"):
        open_ledger(path, SUM)
    script = textwrap.dedent(
        """
        import sys
        from dp.ledger import BudgetLedger, LedgerLockedError
        try:
            BudgetLedger(sys.argv[1], epsilon_budget=100.0, delta=1e-5, accountant_factory=object,
                         event_decoder=dict, run_id="run-1")
        except LedgerLockedError:
            print("locked")
        else:
            print("opened")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "locked"
    first.record(release(0, pure(0.5)))
    first.close()
    assert first.closed
    with pytest.raises(DPError, match="closed"):
        first.record(release(1, pure(0.5)))
    with open_ledger(path, SUM) as second:
        assert len(second) == 1


# ------------------------------------------------------------------------------------- durability


def test_record_fsyncs_the_file_before_returning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.jsonl"
    log: list[tuple[Any, ...]] = []
    real_fsync = os.fsync

    def logging_fsync(fd: int) -> None:
        st = os.fstat(fd)
        lines = path.read_bytes().count(b"\n") if path.exists() else -1
        log.append(("fsync", st.st_ino, stat.S_ISDIR(st.st_mode), lines))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", logging_fsync)
    led = open_ledger(path, SUM)
    # creation: the header is fsync-ed before it is linked into place, then the directory is fsync-ed
    assert log[-1] == ("fsync", tmp_path.stat().st_ino, True, 1)
    inode = path.stat().st_ino
    for r in range(3):
        log.clear()
        eps = led.record(release(r, pure(0.5)))
        log.append(("returned", eps))
        # exactly one fsync, of the ledger file, after the new line was written, before returning
        assert log == [("fsync", inode, False, r + 2), ("returned", 0.5 * (r + 1))]
    log.clear()
    with pytest.raises(BudgetExceededError):
        led.record(release(3, pure(1000.0)))
    assert log == []  # a refused release touches nothing
    led.close()


def test_failed_fsync_means_not_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.jsonl"
    led = open_ledger(path, SUM)
    led.record(release(0, pure(0.5)))
    before = path.read_bytes()
    real_fsync = os.fsync
    failures = [OSError(5, "Input/output error")]

    def failing_fsync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(DPError, match="NOT recorded"):
        led.record(release(1, pure(0.5)))
    assert len(led) == 1 and led.spent_epsilon() == 0.5
    assert path.read_bytes() == before  # rolled back
    with pytest.raises(DPError, match="unusable"):
        led.record(release(1, pure(0.5)))
    led.close()
    with open_ledger(path, SUM) as led:
        assert len(led) == 1
        led.record(release(1, pure(0.5)))


def test_outside_writes_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    with open_ledger(path, SUM) as led:
        led.record(release(0, pure(0.5)))
        with open(path, "ab") as f:
            f.write(b"junk\n")
        with pytest.raises(DPError, match="modified"):
            led.record(release(1, pure(0.5)))


# ------------------------------------------------------------------------------------ crash safety

CHILD = """
import math
import sys
from dataclasses import dataclass

import numpy as np

import dp.ledger
from dp.ledger import BudgetLedger, Release

{definitions}

if sys.argv[2] == "short-writes":  # fault injection: every append takes two write() calls 2 ms apart
    import builtins
    import io
    import time

    class ShortWriteFile(io.FileIO):
        def write(self, b):
            view = memoryview(b)
            n = super().write(view[: max(1, len(view) // 2)])
            time.sleep(0.002)
            return n

    def short_write_open(file, mode="r", *args, **kwargs):
        return ShortWriteFile(file, mode) if mode == "ab" else builtins.open(file, mode, *args, **kwargs)

    dp.ledger.open = short_write_open

ledger = BudgetLedger(sys.argv[1], epsilon_budget=1e9, delta={delta!r}, accountant_factory=GaussianRDPAccountant,
                      event_decoder=decode_event, run_id="crash-test")
done = ledger.releases()
r = done[-1].round_index + 1 if done else 0
print("ready", r, flush=True)
while True:
    sigma = 1.0 + (r // 50) % 3
    ledger.record(Release(round_index=r, mechanism="gaussian", noise_multiplier=sigma, sampling="none",
                          sampling_rate=None, sample_size=None, population=None, clip=1.0,
                          event={{"kind": "gaussian", "noise_multiplier": sigma}}))
    print("released", r, flush=True)  # the release happens strictly after record() returned
    r += 1
"""


def crash_sigma(r: int) -> float:
    return 1.0 + (r // 50) % 3


@pytest.mark.slow
def test_sigkill_never_under_reports(tmp_path: Path) -> None:
    definitions = "\n\n".join(
        inspect.getsource(obj) for obj in (PureEvent, GaussianEvent, decode_event, GaussianRDPAccountant)
    )
    script = CHILD.format(definitions=definitions, delta=DELTA)
    path = tmp_path / "crash.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(20240611)
    trials, recoveries, max_gap, gaps, productive = 20, 0, 0, [], 0
    released_all: list[int] = []
    recorded_before = 0
    for trial in range(trials):
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(path), "short-writes" if trial % 2 else "plain"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        out: list[bytes] = []
        ready = threading.Event()

        def read(
            p: subprocess.Popen[bytes] = proc, sink: list[bytes] = out, flag: threading.Event = ready
        ) -> None:
            assert p.stdout is not None
            for raw in p.stdout:
                sink.append(raw)
                if raw.startswith(b"ready"):
                    flag.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        if trial % 4 == 3:  # from spawn: may land in start-up, in open/recovery or in the loop
            time.sleep(rng.uniform(0.005, 0.4))
        else:
            assert ready.wait(60), "child never got ready"
            time.sleep(rng.uniform(0.002, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        reader.join(timeout=60)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, err  # it died by our hand, not by an exception

        released = [int(x.split()[1]) for x in out if x.startswith(b"released ") and x.endswith(b"\n")]
        if not path.exists():
            assert released == []
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            led = BudgetLedger(
                path,
                epsilon_budget=1e9,
                delta=DELTA,
                accountant_factory=GaussianRDPAccountant,
                event_decoder=decode_event,
                run_id="crash-test",
            )
        with led:
            recoveries += sum(issubclass(w.category, LedgerRecoveryWarning) for w in caught)
            rounds = [rel.round_index for rel in led.releases()]
            new = rounds[recorded_before:]
            # every released round was recorded, in order, before it was released; at most one more
            assert new[: len(released)] == released
            gap = len(new) - len(released)
            assert 0 <= gap <= 1, (new[-3:], released[-3:])
            max_gap, productive = max(max_gap, gap), productive + (len(released) > 0)
            gaps.append(gap)
            released_all += released
            assert rounds == list(range(len(rounds)))
            assert path.read_bytes().endswith(b"\n")  # parses, torn tail (if any) repaired
            # epsilon recomputed from the ledger covers every round that reached the outside world
            acc = GaussianRDPAccountant()
            for r in released_all:
                acc.compose(GaussianEvent(crash_sigma(r)))
            spent = led.spent_epsilon()
            assert spent >= acc.get_epsilon(DELTA) - 1e-9
            assert spent == approx(gaussian_reference([gauss(crash_sigma(r)) for r in rounds], DELTA))
            recorded_before = len(rounds)
    print(
        f"\n[crash test] {trials} SIGKILLs, {productive} mid-loop, {recorded_before} rounds recorded, "
        f"{len(released_all)} released, gaps per trial {gaps}, max gap {max_gap}, torn-tail recoveries {recoveries}"
    )
    assert productive >= trials // 2
    assert recoveries >= 1  # the short-write trials do get killed between the two halves of a line
