"""Immutable descriptions of privacy-relevant mechanisms (privacy events).

An event says *what* was released, never *how much privacy it cost*: the cost is
the business of an accountant (:mod:`dp.accountants`), and any accountant can
replay a recorded sequence of events.  Events are frozen, validated at
construction and round-trip exactly through :func:`event_to_dict` /
:func:`event_from_dict`, so the budget ledger can store them as JSON.

Sensitivity convention: ``noise_multiplier`` is the standard deviation of the
Gaussian noise divided by the L2 sensitivity *under the adjacency of the
enclosing event*.  For :class:`PoissonSampledEvent` (add/remove one client) and a
bare :class:`GaussianEvent` that is the add/remove sensitivity; for
:class:`FixedSizeSampledEvent` (replace one client) it is the replace-one
sensitivity, which is twice the clipping norm for a clipped sum (the convention
of Wang, Balle & Kasiviswanathan 2019 and of dp_accounting's RDP accountant).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from dp.errors import DPParameterError

__all__ = [
    "ComposedEvent",
    "DistributedNoiseEvent",
    "Event",
    "FixedSizeSampledEvent",
    "GaussianEvent",
    "PoissonSampledEvent",
    "SelfComposedEvent",
    "event_from_dict",
    "event_to_dict",
]

# Ledger files may be hand-edited or corrupted; refuse absurd nesting instead of
# running into RecursionError half-way through a replay.
_MAX_DEPTH = 64


def _real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DPParameterError(f"{name} must be a real number, got {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result):
        raise DPParameterError(f"{name} must be finite, got {result}")
    return result


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DPParameterError(f"{name} must be an integer, got {type(value).__name__}")
    return int(value)


def _check_event(value: object, name: str) -> None:
    if not isinstance(value, _EVENT_TYPES):
        raise DPParameterError(f"{name} must be a privacy event, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class GaussianEvent:
    """The Gaussian mechanism applied once to a query of L2 sensitivity 1."""

    noise_multiplier: float

    def __post_init__(self) -> None:
        sigma = _real(self.noise_multiplier, "noise_multiplier")
        if sigma <= 0:
            raise DPParameterError(f"noise_multiplier must be > 0, got {sigma}")
        object.__setattr__(self, "noise_multiplier", sigma)


@dataclass(frozen=True, slots=True)
class PoissonSampledEvent:
    """``event`` run on a Poisson sample: each record kept independently with ``sampling_rate``.

    Adjacency: add or remove one record (one client, for client-level DP).
    """

    sampling_rate: float
    event: Event

    def __post_init__(self) -> None:
        q = _real(self.sampling_rate, "sampling_rate")
        if not 0 < q <= 1:
            raise DPParameterError(f"sampling_rate must be in (0, 1], got {q}")
        _check_event(self.event, "event")
        object.__setattr__(self, "sampling_rate", q)


@dataclass(frozen=True, slots=True)
class FixedSizeSampledEvent:
    """``event`` run on ``sample_size`` records drawn without replacement from ``population``.

    Adjacency: replace one record (the population size is public).
    """

    sample_size: int
    population: int
    event: Event

    def __post_init__(self) -> None:
        m = _integer(self.sample_size, "sample_size")
        n = _integer(self.population, "population")
        if not 1 <= m <= n:
            raise DPParameterError(f"need 1 <= sample_size <= population, got {m} and {n}")
        _check_event(self.event, "event")
        object.__setattr__(self, "sample_size", m)
        object.__setattr__(self, "population", n)

    @property
    def sampling_rate(self) -> float:
        return self.sample_size / self.population


@dataclass(frozen=True, slots=True)
class DistributedNoiseEvent:
    """One release of a secure sum to which each of ``num_clients`` survivors added integer noise.

    ``noise`` is "discrete_gaussian" (each share N_Z(0, local_stddev²); Kairouz, Liu, Steinke 2021) or
    "skellam" (each share Skellam with variance local_stddev²; Agarwal, Kairouz, Liu 2021). Sensitivities are
    in the scaled integer domain (after rounding inflation), ``dim`` is the rotated (padded) dimension.
    Only the RDP accountant prices it (its RDP curve is not that of a Gaussian).
    """

    noise: str
    l2_sensitivity: float
    l1_sensitivity: float
    local_stddev: float
    num_clients: int
    dim: int

    def __post_init__(self) -> None:
        if self.noise not in ("discrete_gaussian", "skellam"):
            raise DPParameterError(f"noise must be 'discrete_gaussian' or 'skellam', got {self.noise!r}")
        for name in ("l2_sensitivity", "l1_sensitivity", "local_stddev"):
            value = _real(getattr(self, name), name)
            if value <= 0:
                raise DPParameterError(f"{name} must be > 0, got {value}")
            object.__setattr__(self, name, value)
        for name in ("num_clients", "dim"):
            value_i = _integer(getattr(self, name), name)
            if value_i < 1:
                raise DPParameterError(f"{name} must be >= 1, got {value_i}")
            object.__setattr__(self, name, value_i)

    def rdp(self, alpha: float) -> float:
        """ε(α) of one unsampled release (Kairouz et al. Prop. 14 / Agarwal et al. Cor. 3.6)."""
        n, d = self.num_clients, self.dim
        if self.noise == "skellam":
            mu = n * self.local_stddev**2
            l2, l1 = self.l2_sensitivity, self.l1_sensitivity
            return alpha * l2**2 / (2 * mu) + min(((2 * alpha - 1) * l2**2 + 6 * l1) / (4 * mu**2), 3 * l1 / (2 * mu))
        std = math.sqrt(n) * self.local_stddev
        l2, l1 = self.l2_sensitivity / std, self.l1_sensitivity / std
        # τ: the distance of a sum of n discrete Gaussians from one discrete Gaussian (their Theorem 1)
        tau = 10 * sum(math.exp(-2 * math.pi**2 * self.local_stddev**2 * k / (k + 1)) for k in range(1, min(n, 10_000)))
        if n > 10_000:  # the remaining terms are all ≤ the last one
            tau += 10 * (n - 10_000) * math.exp(-2 * math.pi**2 * self.local_stddev**2 * 0.5)
        return min(
            alpha / 2 * l2**2 + tau * d,
            alpha / 2 * (l2**2 + 2 * l1 * tau + tau**2 * d),
            alpha / 2 * (l2 + math.sqrt(d) * tau) ** 2,
        )


@dataclass(frozen=True, slots=True)
class ComposedEvent:
    """The events run one after another (on the same data, possibly adaptively)."""

    events: tuple[Event, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.events, tuple | list):
            raise DPParameterError(f"events must be a tuple of events, got {type(self.events).__name__}")
        events = tuple(self.events)
        for i, event in enumerate(events):
            _check_event(event, f"events[{i}]")
        object.__setattr__(self, "events", events)


@dataclass(frozen=True, slots=True)
class SelfComposedEvent:
    """``event`` run ``count`` times (``count == 0`` is a no-op)."""

    event: Event
    count: int

    def __post_init__(self) -> None:
        _check_event(self.event, "event")
        count = _integer(self.count, "count")
        if count < 0:
            raise DPParameterError(f"count must be >= 0, got {count}")
        object.__setattr__(self, "count", count)


Event: TypeAlias = (
    GaussianEvent
    | PoissonSampledEvent
    | FixedSizeSampledEvent
    | ComposedEvent
    | SelfComposedEvent
    | DistributedNoiseEvent
)

_EVENT_TYPES = (
    GaussianEvent,
    PoissonSampledEvent,
    FixedSizeSampledEvent,
    ComposedEvent,
    SelfComposedEvent,
    DistributedNoiseEvent,
)

_TYPE_NAMES: dict[type, str] = {
    GaussianEvent: "gaussian",
    PoissonSampledEvent: "poisson_sampled",
    FixedSizeSampledEvent: "fixed_size_sampled",
    ComposedEvent: "composed",
    SelfComposedEvent: "self_composed",
    DistributedNoiseEvent: "distributed_noise",
}

# The exact keys (besides "type") that each serialised event carries.
_FIELDS: dict[str, frozenset[str]] = {
    "gaussian": frozenset({"noise_multiplier"}),
    "poisson_sampled": frozenset({"sampling_rate", "event"}),
    "fixed_size_sampled": frozenset({"sample_size", "population", "event"}),
    "composed": frozenset({"events"}),
    "self_composed": frozenset({"event", "count"}),
    "distributed_noise": frozenset(
        {"noise", "l2_sensitivity", "l1_sensitivity", "local_stddev", "num_clients", "dim"}
    ),
}


def event_to_dict(event: Event) -> dict[str, Any]:
    """A JSON-serialisable dict describing ``event`` (inverse of :func:`event_from_dict`)."""
    if isinstance(event, GaussianEvent):
        return {"type": "gaussian", "noise_multiplier": event.noise_multiplier}
    if isinstance(event, PoissonSampledEvent):
        return {
            "type": "poisson_sampled",
            "sampling_rate": event.sampling_rate,
            "event": event_to_dict(event.event),
        }
    if isinstance(event, FixedSizeSampledEvent):
        return {
            "type": "fixed_size_sampled",
            "sample_size": event.sample_size,
            "population": event.population,
            "event": event_to_dict(event.event),
        }
    if isinstance(event, ComposedEvent):
        return {"type": "composed", "events": [event_to_dict(e) for e in event.events]}
    if isinstance(event, SelfComposedEvent):
        return {"type": "self_composed", "event": event_to_dict(event.event), "count": event.count}
    if isinstance(event, DistributedNoiseEvent):
        return {
            "type": "distributed_noise",
            "noise": event.noise,
            "l2_sensitivity": event.l2_sensitivity,
            "l1_sensitivity": event.l1_sensitivity,
            "local_stddev": event.local_stddev,
            "num_clients": event.num_clients,
            "dim": event.dim,
        }
    raise DPParameterError(f"not a privacy event: {type(event).__name__}")


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """Rebuild an event from :func:`event_to_dict` output.

    Strict: a missing or unknown key, a wrong value type or an invalid value
    raises :class:`~dp.errors.DPParameterError` naming the offending key path.
    """
    return _from_dict(data, "event", 0)


def _from_dict(data: object, path: str, depth: int) -> Event:
    if depth > _MAX_DEPTH:
        raise DPParameterError(f"{path}: events nested deeper than {_MAX_DEPTH} levels")
    if not isinstance(data, Mapping):
        raise DPParameterError(f"{path}: expected an object, got {type(data).__name__}")
    if "type" not in data:
        raise DPParameterError(f"{path}: missing key 'type'")
    kind = data["type"]
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise DPParameterError(f"{path}.type: unknown event type {kind!r}")
    expected = _FIELDS[kind]
    for key in data:
        if key != "type" and key not in expected:
            raise DPParameterError(f"{path}: unknown key {key!r} for event type {kind!r}")
    for key in sorted(expected):
        if key not in data:
            raise DPParameterError(f"{path}: missing key {key!r} for event type {kind!r}")

    def number(key: str) -> float:
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DPParameterError(f"{path}.{key}: expected a number, got {type(value).__name__}")
        return float(value)

    def integer(key: str) -> int:
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise DPParameterError(f"{path}.{key}: expected an integer, got {type(value).__name__}")
        return value

    try:
        if kind == "gaussian":
            return GaussianEvent(number("noise_multiplier"))
        if kind == "poisson_sampled":
            inner = _from_dict(data["event"], f"{path}.event", depth + 1)
            return PoissonSampledEvent(number("sampling_rate"), inner)
        if kind == "fixed_size_sampled":
            inner = _from_dict(data["event"], f"{path}.event", depth + 1)
            return FixedSizeSampledEvent(integer("sample_size"), integer("population"), inner)
        if kind == "composed":
            items = data["events"]
            if not isinstance(items, list | tuple):
                raise DPParameterError(f"{path}.events: expected a list, got {type(items).__name__}")
            return ComposedEvent(
                tuple(_from_dict(item, f"{path}.events[{i}]", depth + 1) for i, item in enumerate(items))
            )
        if kind == "distributed_noise":
            noise = data["noise"]
            if not isinstance(noise, str):
                raise DPParameterError(f"{path}.noise: expected a string, got {type(noise).__name__}")
            return DistributedNoiseEvent(
                noise, number("l2_sensitivity"), number("l1_sensitivity"), number("local_stddev"),
                integer("num_clients"), integer("dim"),
            )
        inner = _from_dict(data["event"], f"{path}.event", depth + 1)
        return SelfComposedEvent(inner, integer("count"))
    except DPParameterError as exc:
        message = str(exc)
        if message.startswith(path):
            raise
        raise DPParameterError(f"{path}: {message}") from None
