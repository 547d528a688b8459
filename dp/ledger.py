"""A durable, append-only privacy-budget ledger: the write-ahead log of every DP release of a run.

Every private release (one round's aggregate leaving the aggregator) is recorded *before* it is
published: :meth:`BudgetLedger.record` appends one JSON line, flushes it and ``os.fsync``-s the file, and
only then returns the new cumulative epsilon. A caller publishes the round's result only after
``record()`` returned, so after any crash the ledger holds at least every release that reached anyone
(it may hold one more: recorded, never published -- over-reporting is the safe direction).

The ledger does not depend on the internals of :mod:`dp.events` or :mod:`dp.accountants`: each release
carries its DP event as an opaque JSON dict, and the ledger is given

* ``accountant_factory``: a zero-argument callable returning a fresh accountant with
  ``compose(event, count=1)`` and ``get_epsilon(delta) -> float`` (see :class:`Accountant`);
* ``event_decoder``: a callable turning an event's JSON dict back into the event object that
  ``compose`` accepts (e.g. ``dp.events.event_from_dict``).

Epsilon is never stored; it is always recomputed by replaying the recorded events into a fresh
accountant, so a better accountant later gives a better (still sound) figure for the same ledger. The
replay composes each maximal run of consecutive identical events (same JSON dict) with one
``compose(event, count=k)`` call; :meth:`~BudgetLedger.record`, :meth:`~BudgetLedger.spent_epsilon`,
:meth:`~BudgetLedger.would_spend`, :meth:`~BudgetLedger.epsilon_per_round` and
:meth:`~BudgetLedger.rounds_remaining` all use that same rule, so their figures agree exactly.

File format (JSON Lines, UTF-8/ASCII, one object per line, ``\\n``-terminated)::

    {"format":"fedshield-ledger","version":1,"run_id":...,"delta":...,"epsilon_budget":...,"created":...}
    {"seq":0,"prev_hash":<sha256 hex of the header line's bytes>,"hash":<h0>,"release":{...}}
    {"seq":1,"prev_hash":<h0>,"hash":<h1>,"release":{...}}

where ``hash = sha256(canonical_json({"seq", "prev_hash", "release"}))`` and ``canonical_json`` is
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)``. The chain
starts at the header, so editing, deleting or reordering any earlier line (or the header) is detected
when the ledger is opened. A hash chain cannot detect the removal of the *last* records; keep
:attr:`BudgetLedger.head_hash` elsewhere (e.g. in the run's checkpoint) if that matters. The chain is
not keyed: it detects accidents and naive edits, not a forger who rewrites the whole file.

Crash recovery on open: a final line without its terminating newline (a crash in the middle of an
append) is *torn*. If it is nevertheless a complete, valid, correctly chained record, it is kept and its
newline written (it was never acknowledged, so keeping it can only over-report); otherwise it, and only
it, is truncated. Any other damage raises :class:`LedgerCorruptError` (a :class:`~dp.errors.DPError`)
with the 1-based line number, and the file is left untouched.

One writer per ledger: the constructor takes an exclusive ``fcntl.flock`` on ``<path>.lock`` (kept for
the ledger's lifetime, released by :meth:`BudgetLedger.close` or by the OS when the process dies); a
second writer gets :class:`LedgerLockedError`. ``flock`` is advisory and local: do not share a ledger
over NFS, and do not ``fork()`` without ``exec`` while a ledger is open.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import stat
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import FileIO
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final, Protocol

from dp.errors import BudgetExceededError, DPError, DPParameterError

__all__ = [
    "FORMAT",
    "VERSION",
    "Accountant",
    "BudgetLedger",
    "LedgerCorruptError",
    "LedgerLockedError",
    "LedgerMismatchError",
    "LedgerRecoveryWarning",
    "Release",
]

FORMAT: Final = "fedshield-ledger"
VERSION: Final = 1
SAMPLINGS: Final = ("poisson", "fixed", "none")

_HEADER_KEYS: Final = frozenset({"format", "version", "run_id", "delta", "epsilon_budget", "created"})
_RECORD_KEYS: Final = frozenset({"seq", "prev_hash", "hash", "release"})
_RELEASE_KEYS: Final = (
    "round_index",
    "mechanism",
    "noise_multiplier",
    "sampling",
    "sampling_rate",
    "sample_size",
    "population",
    "clip",
    "event",
    "timestamp",
    "extra",
)


# --------------------------------------------------------------------------------------------- errors


class LedgerCorruptError(DPError):
    """The ledger file is damaged (not merely torn at its end); ``line`` is the 1-based line number."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        super().__init__(f"corrupt privacy ledger {str(path)!r}, line {line}: {reason}")
        self.path = path
        self.line = line


class LedgerMismatchError(DPParameterError):
    """An existing ledger's header does not match the parameters it was opened with; ``field`` names it."""

    def __init__(self, path: Path, field_name: str, on_disk: object, given: object) -> None:
        super().__init__(
            f"privacy ledger {str(path)!r} header field {field_name!r} is {on_disk!r} on disk "
            f"but {given!r} was given; refusing to continue a different run/budget in the same ledger"
        )
        self.path = path
        self.field = field_name


class LedgerLockedError(DPError):
    """Another writer (another process, or another open :class:`BudgetLedger`) holds the ledger."""


class LedgerRecoveryWarning(UserWarning):
    """Opening the ledger repaired a torn final line left by a crash in the middle of an append."""


# ------------------------------------------------------------------------------------------ protocol


class Accountant(Protocol):
    """What the ledger needs from an accountant (e.g. ``dp.accountants.RDPAccountant``)."""

    def compose(self, event: Any, /, *, count: int = ...) -> object: ...

    def get_epsilon(self, delta: float, /) -> float: ...


AccountantFactory = Callable[[], Accountant]
EventDecoder = Callable[[dict[str, Any]], object]
EventEncoder = Callable[[Any], Mapping[str, Any]]


# ------------------------------------------------------------------------------------------- helpers


def _canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _reject_constant(name: str) -> object:
    raise ValueError(f"non-finite JSON constant {name}")


def _loads(raw: bytes | str) -> object:
    return json.loads(raw, parse_constant=_reject_constant)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical_event(event: object) -> tuple[str, dict[str, Any]]:
    """(canonical JSON text, fresh plain-dict copy) of an event dict; DPParameterError if not JSON."""
    if not isinstance(event, Mapping):
        raise DPParameterError(f"event must be a JSON object (dict), got {type(event).__name__}")
    try:
        text = _canonical(dict(event))
    except (TypeError, ValueError) as exc:
        raise DPParameterError(f"event must be JSON-serialisable with finite numbers: {exc}") from exc
    copy = _loads(text)
    assert isinstance(copy, dict)
    return text, copy


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt_float(name: str, value: object, *, lo: float, lo_open: bool, hi: float = math.inf) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DPParameterError(f"{name} must be a real number or None, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or x < lo or (lo_open and x == lo) or x > hi:
        bound = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise DPParameterError(f"{name} must be finite and in {bound}, got {value!r}")
    return x


def _opt_int(name: str, value: object, *, lo: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise DPParameterError(f"{name} must be an integer >= {lo} or None, got {value!r}")
    return int(value)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------- Release


@dataclass(frozen=True)
class Release:
    """One private release: one round's aggregate leaving the aggregator, with its DP event.

    ``event`` is the JSON dict of the release's DP event (``dp.events.event_to_dict(e)``); it is what the
    accountant composes. The other fields are metadata for audits and plots and are validated but not
    interpreted by the ledger. ``sampling`` is ``"poisson"`` (needs ``sampling_rate``), ``"fixed"`` (needs
    ``sample_size`` and ``population``) or ``"none"`` (everyone; ``sampling_rate`` None or 1).

    Numbers are normalised (``float`` fields become floats, ``event`` a canonical JSON copy, ``extra`` a
    read-only mapping), so a release read back from the file compares equal to the one recorded.
    """

    round_index: int
    mechanism: str
    noise_multiplier: float
    sampling: str
    sampling_rate: float | None
    sample_size: int | None
    population: int | None
    clip: float | None
    event: dict[str, Any] = field(hash=False)
    timestamp: float | None = None
    extra: Mapping[str, float | int | str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not _is_int(self.round_index) or self.round_index < 0:
            raise DPParameterError(f"round_index must be an integer >= 0, got {self.round_index!r}")
        if not isinstance(self.mechanism, str) or not self.mechanism:
            raise DPParameterError(f"mechanism must be a non-empty string, got {self.mechanism!r}")
        noise = _opt_float("noise_multiplier", self.noise_multiplier, lo=0.0, lo_open=False)
        if noise is None:
            raise DPParameterError("noise_multiplier must be a real number >= 0, got None")
        if self.sampling not in SAMPLINGS:
            raise DPParameterError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        rate = _opt_float("sampling_rate", self.sampling_rate, lo=0.0, lo_open=True, hi=1.0)
        size = _opt_int("sample_size", self.sample_size, lo=1)
        population = _opt_int("population", self.population, lo=1)
        if size is not None and population is not None and size > population:
            raise DPParameterError(f"sample_size ({size}) must not exceed population ({population})")
        if self.sampling == "poisson" and rate is None:
            raise DPParameterError("sampling='poisson' needs sampling_rate")
        if self.sampling == "fixed" and (size is None or population is None):
            raise DPParameterError("sampling='fixed' needs sample_size and population")
        if self.sampling == "none" and rate not in (None, 1.0):
            raise DPParameterError(f"sampling='none' means sampling_rate None or 1.0, got {rate!r}")
        clip = _opt_float("clip", self.clip, lo=0.0, lo_open=True)
        timestamp = _opt_float("timestamp", self.timestamp, lo=-math.inf, lo_open=False)
        _, event = _canonical_event(self.event)
        if not isinstance(self.extra, Mapping):
            raise DPParameterError(f"extra must be a mapping, got {type(self.extra).__name__}")
        extra: dict[str, float | int | str] = {}
        for key, value in self.extra.items():
            if not isinstance(key, str):
                raise DPParameterError(f"extra keys must be strings, got {key!r}")
            if isinstance(value, str) or _is_int(value):
                extra[key] = value
            elif isinstance(value, float) and math.isfinite(value):
                extra[key] = value
            else:
                raise DPParameterError(f"extra[{key!r}] must be a str, int or finite float, got {value!r}")
        for name, norm in (
            ("noise_multiplier", noise),
            ("sampling_rate", rate),
            ("sample_size", size),
            ("population", population),
            ("clip", clip),
            ("timestamp", timestamp),
            ("event", event),
            ("extra", MappingProxyType(extra)),
        ):
            object.__setattr__(self, name, norm)

    def to_dict(self) -> dict[str, Any]:
        """The release as a JSON-serialisable dict (the ``"release"`` object of a ledger line)."""
        return {
            "round_index": self.round_index,
            "mechanism": self.mechanism,
            "noise_multiplier": self.noise_multiplier,
            "sampling": self.sampling,
            "sampling_rate": self.sampling_rate,
            "sample_size": self.sample_size,
            "population": self.population,
            "clip": self.clip,
            "event": _canonical_event(self.event)[1],
            "timestamp": self.timestamp,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Release:
        """Inverse of :meth:`to_dict`; exactly the keys of :meth:`to_dict`, else DPParameterError."""
        if not isinstance(data, Mapping):
            raise DPParameterError(f"a release must be a JSON object, got {type(data).__name__}")
        keys = set(data)
        if keys != set(_RELEASE_KEYS):
            missing = sorted(set(_RELEASE_KEYS) - keys)
            unknown = sorted(str(k) for k in keys - set(_RELEASE_KEYS))
            raise DPParameterError(f"release keys: missing {missing}, unknown {unknown}")
        return cls(**{key: data[key] for key in _RELEASE_KEYS})


# ---------------------------------------------------------------------------------------- the ledger


_Group = tuple[str, object, int]  # (canonical event JSON, decoded event, consecutive count)


def _push(groups: list[_Group], key: str, event: object, count: int) -> None:
    if groups and groups[-1][0] == key:
        groups[-1] = (key, groups[-1][1], groups[-1][2] + count)
    else:
        groups.append((key, event, count))


class BudgetLedger:
    """The durable privacy-budget ledger of one run (see the module docstring for format and guarantees).

    Opening a path that does not exist creates the ledger (header written to a temporary file, fsync-ed,
    then hard-linked into place -- O_EXCL semantics, never a half-written header -- and the directory
    fsync-ed). Opening an existing ledger verifies the header against ``run_id``, ``delta`` and
    ``epsilon_budget`` (:class:`LedgerMismatchError`, a :class:`~dp.errors.DPParameterError`, naming the
    field), verifies every line and the hash chain, repairs a torn final line, and continues the run.

    Use as a context manager, or call :meth:`close`, to release the writer lock.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        epsilon_budget: float,
        delta: float,
        accountant_factory: AccountantFactory,
        event_decoder: EventDecoder,
        run_id: str,
        event_encoder: EventEncoder | None = None,
    ) -> None:
        budget = _opt_float("epsilon_budget", epsilon_budget, lo=0.0, lo_open=True)
        dlt = _opt_float("delta", delta, lo=0.0, lo_open=True, hi=1.0)
        if budget is None or dlt is None or dlt >= 1.0:
            raise DPParameterError(
                f"need a finite epsilon_budget > 0 and 0 < delta < 1, got {epsilon_budget!r}, {delta!r}"
            )
        if not isinstance(run_id, str) or not run_id:
            raise DPParameterError(f"run_id must be a non-empty string, got {run_id!r}")
        if not callable(accountant_factory) or not callable(event_decoder):
            raise DPParameterError("accountant_factory and event_decoder must be callables")
        if event_encoder is not None and not callable(event_encoder):
            raise DPParameterError("event_encoder must be a callable or None")
        self._path = Path(path)
        self._lock_path = self._path.with_name(self._path.name + ".lock")
        self._budget = budget
        self._delta = dlt
        self._run_id = run_id
        self._factory = accountant_factory
        self._decoder = event_decoder
        self._encoder = event_encoder
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None
        self._fh: FileIO | None = None
        self._broken: str | None = None
        self._releases: list[Release] = []
        self._keys: list[str] = []
        self._events: list[object] = []
        self._all_groups: list[_Group] = []
        self._head = ""
        self._size = 0
        self._eps: dict[int, float] = {}
        self.created = False
        """True when this constructor created the ledger file."""
        self.recovered_tail: bytes | None = None
        """The torn final line found on open (kept or truncated, see the module docstring), else None."""
        try:
            self._acquire_lock()
            if not self._path.exists():
                self._create()
            self._load()
        except BaseException:
            self._close_handles()
            raise

    # ------------------------------------------------------------------------------------ properties

    @property
    def path(self) -> Path:
        return self._path

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def delta(self) -> float:
        return self._delta

    @property
    def epsilon_budget(self) -> float:
        return self._budget

    @property
    def head_hash(self) -> str:
        """Hash of the last record (of the header line when empty); store it elsewhere to pin the tail."""
        return self._head

    @property
    def closed(self) -> bool:
        return self._fh is None

    def __len__(self) -> int:
        return len(self._releases)

    def __repr__(self) -> str:
        return (
            f"BudgetLedger({str(self._path)!r}, run_id={self._run_id!r}, records={len(self)}, "
            f"epsilon_budget={self._budget!r}, delta={self._delta!r})"
        )

    # ------------------------------------------------------------------------------------ public API

    def spent_epsilon(self) -> float:
        """Epsilon (at the ledger's delta) of every recorded release, replayed into a fresh accountant."""
        with self._mutex:
            return self._prefix_epsilon(len(self._releases))

    def would_spend(self, release_or_event: Release | Mapping[str, Any] | object) -> float:
        """Epsilon after hypothetically recording ``release_or_event``; writes nothing.

        Accepts a :class:`Release`, an event's JSON dict, or (only with ``event_encoder``) an event object.
        """
        with self._mutex:
            key, event = self._decode_any(release_or_event)
            return self._epsilon(self._groups(len(self._releases), key, event, 1))

    def record(self, release: Release) -> float:
        """Durably record ``release`` and return the new cumulative epsilon.

        Hard stop: if recording it would take epsilon above the budget (or to a non-finite value),
        raises :class:`~dp.errors.BudgetExceededError` and writes nothing. Otherwise appends one line,
        flushes and ``os.fsync``-s the file, and only then returns: publish the round's result only
        after this returned. An I/O failure raises :class:`~dp.errors.DPError` (the release is *not*
        recorded and must not be published) and leaves the ledger unusable until reopened.
        """
        if not isinstance(release, Release):
            raise DPParameterError(f"record() takes a Release, got {type(release).__name__}")
        with self._mutex:
            self._check_writable()
            key, event = self._decode_any(release)
            n = len(self._releases)
            would = self._epsilon(self._groups(n, key, event, 1))
            if not (math.isfinite(would) and would <= self._budget):
                spent = self._prefix_epsilon(n)
                raise BudgetExceededError(
                    f"refusing round {release.round_index}: it would take epsilon from {spent:.6g} "
                    f"(spent) to {would:.6g} (would-be), above the budget {self._budget:.6g} "
                    f"at delta={self._delta:g}; nothing was recorded -- do not release this round"
                )
            body = release.to_dict()
            chained = {"seq": n, "prev_hash": self._head, "release": body}
            digest = _sha256(_canonical(chained).encode("ascii"))
            line = json.dumps(
                {"seq": n, "prev_hash": self._head, "hash": digest, "release": body},
                separators=(",", ":"),
                ensure_ascii=True,
                allow_nan=False,
            ).encode("ascii")
            self._append(line + b"\n")
            self._releases.append(Release.from_dict(body))
            self._keys.append(key)
            self._events.append(event)
            _push(self._all_groups, key, event, 1)
            self._head = digest
            self._eps[n + 1] = would
            return would

    def releases(self) -> list[Release]:
        """Every recorded release, oldest first."""
        with self._mutex:
            return list(self._releases)

    def epsilon_per_round(self) -> list[tuple[int, float]]:
        """``(round_index, cumulative epsilon after that record)`` for every record, oldest first.

        A round index appears twice if a resumed run released that round again (fresh noise, so it is
        counted again).
        """
        with self._mutex:
            out: list[tuple[int, float]] = []
            groups: list[_Group] = []
            for i, release in enumerate(self._releases):
                _push(groups, self._keys[i], self._events[i], 1)
                if i + 1 not in self._eps:
                    self._eps[i + 1] = self._epsilon(groups)
                out.append((release.round_index, self._eps[i + 1]))
            return out

    def rounds_remaining(
        self, next_release_template: Release | Mapping[str, Any] | object, *, limit: int = 1_000_000
    ) -> int:
        """How many more releases identical to the template fit the budget (at most ``limit``).

        Assumes epsilon does not decrease as releases are added (true of every sound accountant). The
        answer is exact for this ledger: recording that many such releases succeeds, one more is refused.
        """
        if not _is_int(limit) or limit < 1:
            raise DPParameterError(f"limit must be an integer >= 1, got {limit!r}")
        with self._mutex:
            key, event = self._decode_any(next_release_template)
            n = len(self._releases)

            def fits(k: int) -> bool:
                eps = self._epsilon(self._groups(n, key, event, k))
                return math.isfinite(eps) and eps <= self._budget

            if not fits(1):
                return 0
            lo = 1
            while True:
                hi = min(2 * lo, limit)
                if hi == lo:
                    return lo
                if not fits(hi):
                    break
                lo = hi
            while hi - lo > 1:  # invariant: lo fits, hi does not
                mid = (lo + hi) // 2
                if fits(mid):
                    lo = mid
                else:
                    hi = mid
            return lo

    def close(self) -> None:
        """Close the file and release the writer lock (idempotent). The in-memory views stay readable."""
        with self._mutex:
            self._close_handles()

    def __enter__(self) -> BudgetLedger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -------------------------------------------------------------------------------- accounting

    def _decode(self, event: dict[str, Any]) -> object:
        try:
            return self._decoder(event)
        except DPError:
            raise
        except Exception as exc:
            raise DPParameterError(f"event_decoder cannot decode event {event!r}: {exc}") from exc

    def _decode_any(self, item: object) -> tuple[str, object]:
        if isinstance(item, Release):
            data: object = item.event
        elif isinstance(item, Mapping):
            data = item
        elif self._encoder is not None:
            data = self._encoder(item)
        else:
            raise DPParameterError(
                f"expected a Release or an event's JSON dict, got {type(item).__name__} "
                "(pass event_encoder=... to the ledger to accept event objects)"
            )
        key, plain = _canonical_event(data)
        return key, self._decode(plain)

    def _groups(self, n: int, key: str | None = None, event: object = None, count: int = 0) -> list[_Group]:
        """Run-length groups of the first ``n`` records, then ``count`` copies of (key, event)."""
        if n == len(self._keys):
            groups = list(self._all_groups)
        else:
            groups = []
            for i in range(n):
                _push(groups, self._keys[i], self._events[i], 1)
        if key is not None and count > 0:
            _push(groups, key, event, count)
        return groups

    def _epsilon(self, groups: list[_Group]) -> float:
        if not groups:
            return 0.0
        accountant = self._factory()
        for _, event, count in groups:
            accountant.compose(event, count=count)
        eps = float(accountant.get_epsilon(self._delta))
        return eps if not math.isnan(eps) else math.inf

    def _prefix_epsilon(self, n: int) -> float:
        if n not in self._eps:
            self._eps[n] = self._epsilon(self._groups(n))
        return self._eps[n]

    # ----------------------------------------------------------------------------------------- I/O

    def _acquire_lock(self) -> None:
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError as exc:
            raise DPParameterError(f"directory of the ledger {str(self._path)!r} does not exist") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = b""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 32, 0).strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f" (pid {holder.decode('ascii', 'replace')})" if holder else ""
                raise LedgerLockedError(
                    f"privacy ledger {str(self._path)!r} is already open for writing{who}; "
                    "one writer per ledger"
                ) from exc
            raise
        self._lock_fd = fd
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def _create(self) -> None:
        header = {
            "format": FORMAT,
            "version": VERSION,
            "run_id": self._run_id,
            "delta": self._delta,
            "epsilon_budget": self._budget,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        tmp = self._path.with_name(f".{self._path.name}.creating")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a leftover of a crash during creation; we hold the lock
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, raw.encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, self._path)  # atomic, fails if the path exists: O_EXCL with a complete header
            self.created = True
        except FileExistsError:
            pass  # created by a writer that ignores the lock; verified like any existing ledger below
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(self._path.parent)

    def _corrupt(self, line: int, reason: str) -> LedgerCorruptError:
        return LedgerCorruptError(self._path, line, reason)

    def _load(self) -> None:
        st = os.stat(self._path)
        if not stat.S_ISREG(st.st_mode):
            raise DPParameterError(f"privacy ledger {str(self._path)!r} is not a regular file")
        with open(self._path, "rb") as f:
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            raise self._corrupt(1, "no complete header line" if data else "empty file (no header)")
        lines = data[:end].split(b"\n")
        tail = data[end + 1 :]
        self._check_header(lines[0])
        head = _sha256(lines[0])
        for i, raw in enumerate(lines[1:]):
            head = self._add_record(raw, i, head, line=i + 2)
        self._head = head

        fh = open(self._path, "ab", buffering=0)  # kept open for the ledger's lifetime
        self._fh = fh
        self._size = end + 1
        if tail:
            self.recovered_tail = tail
            try:
                self._head = self._add_record(tail, len(lines) - 1, head, line=len(lines) + 1)
            except LedgerCorruptError as exc:
                os.ftruncate(fh.fileno(), end + 1)
                os.fsync(fh.fileno())
                action = f"truncated the torn final line ({len(tail)} bytes, {exc})"
            else:
                self._size = len(data)
                self._append(b"\n")
                action = "kept the final record (complete but unterminated) and added its newline"
            warnings.warn(
                f"privacy ledger {str(self._path)!r}: recovered from an interrupted append: {action}",
                LedgerRecoveryWarning,
                stacklevel=3,
            )
        if os.fstat(fh.fileno()).st_size != self._size:
            raise DPError(f"privacy ledger {str(self._path)!r} changed while it was being opened")

    def _check_header(self, raw: bytes) -> None:
        try:
            header = _loads(raw)
        except ValueError as exc:
            raise self._corrupt(1, f"header is not valid JSON ({exc})") from exc
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise self._corrupt(1, f"not a {FORMAT} file")
        if set(header) != _HEADER_KEYS:
            raise self._corrupt(1, f"header keys {sorted(header)} != {sorted(_HEADER_KEYS)}")
        if header["version"] != VERSION:
            raise LedgerMismatchError(self._path, "version", header["version"], VERSION)
        for name, given in (
            ("run_id", self._run_id),
            ("delta", self._delta),
            ("epsilon_budget", self._budget),
        ):
            on_disk = header[name]
            if type(on_disk) is not type(given) or on_disk != given:
                raise LedgerMismatchError(self._path, name, on_disk, given)
        if not isinstance(header["created"], str):
            raise self._corrupt(1, "header field 'created' is not a string")

    def _add_record(self, raw: bytes, seq: int, prev: str, *, line: int) -> str:
        """Verify one record line against the chain and append it to the in-memory state; its hash."""
        try:
            rec = _loads(raw)
        except ValueError as exc:
            raise self._corrupt(line, f"not valid JSON ({exc})") from exc
        if not isinstance(rec, dict) or set(rec) != _RECORD_KEYS:
            raise self._corrupt(line, f"a record must be an object with keys {sorted(_RECORD_KEYS)}")
        if rec["seq"] != seq or not _is_int(rec["seq"]):
            raise self._corrupt(
                line, f"seq is {rec['seq']!r}, expected {seq} (a record was removed or moved)"
            )
        if rec["prev_hash"] != prev:
            raise self._corrupt(
                line,
                "prev_hash does not match the previous line (an earlier line was edited, removed or moved)",
            )
        try:
            digest = _sha256(_canonical({"seq": seq, "prev_hash": prev, "release": rec["release"]}).encode())
        except (TypeError, ValueError) as exc:
            raise self._corrupt(line, f"release is not canonical JSON ({exc})") from exc
        if rec["hash"] != digest:
            raise self._corrupt(line, "hash does not match the record's content (the line was edited)")
        try:
            release = Release.from_dict(rec["release"])
            key, plain = _canonical_event(release.event)
            event = self._decode(plain)
        except DPError as exc:
            raise self._corrupt(line, f"invalid release: {exc}") from exc
        self._releases.append(release)
        self._keys.append(key)
        self._events.append(event)
        _push(self._all_groups, key, event, 1)
        return digest

    def _check_writable(self) -> None:
        if self._broken is not None:
            raise DPError(f"privacy ledger {str(self._path)!r} is unusable after {self._broken}; reopen it")
        if self._fh is None:
            raise DPError(f"privacy ledger {str(self._path)!r} is closed")

    def _append(self, data: bytes) -> None:
        """Append ``data`` and fsync; on failure roll the file back, poison the ledger, raise DPError."""
        fh = self._fh
        assert fh is not None
        size = os.fstat(fh.fileno()).st_size
        if size != self._size:
            self._broken = "an outside change to the file"
            raise DPError(
                f"privacy ledger {str(self._path)!r} was modified by someone else "
                f"(size {size}, expected {self._size}); reopen it to verify"
            )
        try:
            view = memoryview(data)
            while view:
                written = fh.write(view)
                if not written:
                    raise OSError(errno.EIO, "short write")
                view = view[written:]
            os.fsync(fh.fileno())
        except OSError as exc:
            self._broken = f"an I/O error ({exc})"
            with contextlib.suppress(OSError):
                os.ftruncate(fh.fileno(), self._size)
                os.fsync(fh.fileno())
            raise DPError(
                f"could not durably write the privacy ledger {str(self._path)!r} ({exc}); the release was "
                "NOT recorded and must not be published; reopen the ledger"
            ) from exc
        self._size += len(data)

    def _close_handles(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
