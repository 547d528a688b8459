"""Client-level differential privacy in the federated loop (``[dp]`` config section).

Modes (each wraps the round's aggregator, TFF-style):

* ``central`` — DP-FedAvg (McMahan et al. 2018): clients clip Δ_k to C; the aggregator (plain, SecAgg or
  CKKS) computes the sum; the server adds N(0, (zC)²) and divides by a fixed denominator. Optional adaptive
  clipping (Andrew et al. 2021); its count release is folded into an effective noise multiplier.
* ``local`` — each client noises its own clipped update (no trust in the server, no amplification).
* ``distributed`` — each client adds a discrete-noise share (discrete Gaussian or Skellam) to its rotated,
  quantised update before secure aggregation (``dp.distributed``); the server only sees the noised sum.

Every release is written to a crash-safe budget ledger (``dp.ledger``) *before* the aggregate is returned to
the server optimiser, and a round whose release would exceed ``dp.epsilon_budget`` is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import struct
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dp.accountants import PLDAccountant, PrivacyAccountant, RDPAccountant, noise_multiplier_for_epsilon
from dp.distributed import DistributedParams, decode_sum, encode_client
from dp.errors import BudgetExceededError, DPParameterError
from dp.events import (
    DistributedNoiseEvent,
    Event,
    FixedSizeSampledEvent,
    GaussianEvent,
    PoissonSampledEvent,
    event_from_dict,
    event_to_dict,
)
from dp.ledger import BudgetLedger, Release
from dp.mechanisms import (
    AdaptiveClipping,
    CentralGaussian,
    clip_l2,
    effective_noise_multiplier,
    local_gaussian,
)
from dp.rng import CryptoRNG
from fl.aggregators import Aggregator, check_updates
from fl.config import DPConfig, ExperimentConfig
from fl.errors import ConfigError
from fl.types import Aggregate, ClientUpdate

MODES: tuple[str, ...] = ("none", "central", "local", "distributed")


@dataclass(frozen=True)
class DPSettings:
    """Validated DP parameters of a run (mirrors the ``[dp]`` config section)."""

    mode: str = "none"
    clip: float = 1.0
    noise_multiplier: float = 0.0  # 0: calibrate from target_epsilon over the configured rounds
    target_epsilon: float = 3.0
    delta: float = 1e-5
    epsilon_budget: float = 0.0  # hard stop; 0: target_epsilon
    accountant: str = "pld"
    adaptive_clipping: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    count_noise_multiplier: float = 10.0
    noise: str = "discrete_gaussian"  # distributed mode: discrete_gaussian | skellam
    bits: int = 20  # distributed mode: secure-aggregation modulus bits

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError("dp.mode", f"unknown mode {self.mode!r}; allowed: {', '.join(MODES)}")
        if self.accountant not in ("pld", "rdp"):
            raise ConfigError("dp.accountant", f"unknown accountant {self.accountant!r}; allowed: pld, rdp")
        if self.mode == "distributed" and self.accountant != "rdp":
            raise ConfigError("dp.accountant", "distributed DP (discrete noise) is priced by the 'rdp' accountant only")
        if self.mode == "local" and self.adaptive_clipping:
            raise ConfigError("dp.adaptive_clipping", "adaptive clipping needs a server-side count: use mode 'central'")
        if self.noise not in ("discrete_gaussian", "skellam"):
            raise ConfigError("dp.noise", f"unknown noise {self.noise!r}; allowed: discrete_gaussian, skellam")

    @property
    def budget(self) -> float:
        return self.epsilon_budget or self.target_epsilon

    @classmethod
    def from_config(cls, dp: DPConfig) -> DPSettings:
        """The settings of a validated ``[dp]`` config section (same field names)."""
        return cls(**{f.name: getattr(dp, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class SamplingInfo:
    """How clients were sampled each round: what amplification the accountant may use."""

    method: str  # "poisson" | "fixed"
    num_clients: int
    rate: float = 1.0
    per_round: int = 0

    @classmethod
    def from_config(cls, config: ExperimentConfig) -> SamplingInfo:
        n = config.data.num_clients
        return cls(config.sampling.method, n, config.sampling.rate, config.sampling.clients_per_round or n)

    @property
    def expected_cohort(self) -> float:
        return self.rate * self.num_clients if self.method == "poisson" else float(self.per_round)


def make_accountant(name: str) -> PrivacyAccountant:
    return PLDAccountant() if name == "pld" else RDPAccountant()


def round_event(settings: DPSettings, sampling: SamplingInfo, noise_multiplier: float,
                distributed: DistributedParams | None = None, survivors: int | None = None) -> Event:
    """The DP event of one round's release (what the ledger records and the accountant prices)."""
    if settings.mode == "local":
        # each client's own release, replace-one sensitivity 2C, no amplification (the server sees who sent)
        return GaussianEvent(noise_multiplier / 2)
    if settings.mode == "distributed":
        assert distributed is not None
        inner = DistributedNoiseEvent(
            distributed.noise, distributed.l2_sensitivity, distributed.l1_sensitivity, distributed.noise_std,
            max(survivors if survivors is not None else round(sampling.expected_cohort), 1), distributed.padded_dim,
        )
        if sampling.method == "poisson" and sampling.rate < 1:
            return PoissonSampledEvent(sampling.rate, inner)
        return inner  # no generic fixed-size amplification bound: account without it (sound, looser)
    if sampling.method == "poisson":
        return PoissonSampledEvent(sampling.rate, GaussianEvent(noise_multiplier))
    if sampling.per_round >= sampling.num_clients:
        return GaussianEvent(noise_multiplier)
    # replace-one adjacency under fixed-size sampling: sensitivity of the clipped sum is 2C
    return FixedSizeSampledEvent(sampling.per_round, sampling.num_clients, GaussianEvent(noise_multiplier / 2))


def calibrate(settings: DPSettings, sampling: SamplingInfo, rounds: int,
              distributed_factory: Callable[[float], DistributedParams] | None = None) -> float:
    """The smallest noise multiplier whose ε after ``rounds`` rounds is ≤ target (bisection, 0.1 %)."""
    if settings.noise_multiplier > 0:
        return settings.noise_multiplier
    if settings.mode == "central" and not settings.adaptive_clipping:
        kwargs: dict[str, float | int] = (
            {"sampling_rate": sampling.rate} if sampling.method == "poisson"
            else {"sample_size": sampling.per_round, "population": sampling.num_clients}
        )
        if sampling.method == "fixed" and sampling.per_round >= sampling.num_clients:
            kwargs = {"sampling_rate": 1.0}
        z = noise_multiplier_for_epsilon(
            settings.target_epsilon, settings.delta, rounds=rounds, accountant=settings.accountant, **kwargs  # type: ignore[arg-type]
        )
        return z * (2 if "sample_size" in kwargs else 1)  # the fixed-size event is priced at z/2

    def eps(z: float) -> float:
        acc = make_accountant(settings.accountant)
        dist = distributed_factory(z) if distributed_factory is not None else None
        zz = effective_noise_multiplier(z, settings.count_noise_multiplier) if settings.adaptive_clipping else z
        acc.compose(round_event(settings, sampling, zz, dist), rounds)
        return acc.get_epsilon(settings.delta)

    lo, hi = 0.05, 1.0
    while eps(hi) > settings.target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise DPParameterError(f"no noise multiplier up to 1e4 reaches epsilon {settings.target_epsilon}")
    for _ in range(40):
        mid = (lo + hi) / 2
        if eps(mid) > settings.target_epsilon:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-3 * hi:
            break
    return hi


def epsilon_curve(settings: DPSettings, sampling: SamplingInfo, noise_multiplier: float, rounds: int,
                  points: int = 20, distributed: DistributedParams | None = None) -> list[tuple[int, float]]:
    """(round, ε) at ``points`` evenly spaced rounds: the plan ``fedshield budget`` prints before a run."""
    zz = (effective_noise_multiplier(noise_multiplier, settings.count_noise_multiplier)
          if settings.adaptive_clipping else noise_multiplier)
    event = round_event(settings, sampling, zz, distributed)
    marks = sorted({max(1, round(rounds * (i + 1) / points)) for i in range(points)})
    out = []
    for t in marks:
        acc = make_accountant(settings.accountant)
        acc.compose(event, t)
        out.append((t, acc.get_epsilon(settings.delta)))
    return out


class DPAggregator(Aggregator):
    """Wraps the round's aggregator with clipping, noise and the durable budget ledger."""

    def __init__(
        self,
        inner: Aggregator,
        settings: DPSettings,
        sampling: SamplingInfo,
        *,
        rounds: int,
        dim: int,
        ledger_path: str | Path | None = None,
        run_id: str = "fedshield",
        seed: int | None = None,
        secagg_mode: str = "secagg",
    ) -> None:
        """``secagg_mode`` ("secagg" | "secagg+") is the protocol of distributed mode; "sum" replaces it by
        the modular sum it reveals, for audits only."""
        if settings.mode == "none":
            raise ConfigError("dp.mode", "DPAggregator needs a DP mode other than 'none'")
        self.inner = inner
        self.settings = settings
        self.sampling = sampling
        self.secagg_mode = secagg_mode
        self.dim = dim
        # Noise is drawn from an AES-CTR CSPRNG; a seed makes simulations reproducible (None: fresh secrets).
        self._rng = CryptoRNG.from_int_seed(seed, 0xD9) if seed is not None else CryptoRNG()
        self._seed = seed
        self.distributed: DistributedParams | None = None
        factory = None
        if settings.mode == "distributed":
            expected = max(round(sampling.expected_cohort), 1)

            def factory(z: float) -> DistributedParams:
                return DistributedParams.for_noise_multiplier(
                    dim=dim, clip=settings.clip, noise_multiplier=z, expected_clients=expected,
                    bits=settings.bits, noise=settings.noise,  # type: ignore[arg-type]
                )
        self.noise_multiplier = calibrate(settings, sampling, rounds, factory)
        if factory is not None:
            self.distributed = factory(self.noise_multiplier)
        self.adaptive = AdaptiveClipping(
            settings.clip, settings.target_quantile, settings.clip_learning_rate, settings.count_noise_multiplier
        ) if settings.adaptive_clipping else None
        if ledger_path is None:
            ledger_path = Path(tempfile.mkdtemp(prefix="fedshield-ledger-")) / "ledger.jsonl"
        self._ledger_path = Path(ledger_path)
        self._run_id = run_id
        self._ledger: BudgetLedger | None = None

    @property
    def ledger(self) -> BudgetLedger:
        """The run's budget ledger, opened (and locked against other writers) on first use."""
        if self._ledger is None:
            s = self.settings
            self._ledger = BudgetLedger(
                self._ledger_path, epsilon_budget=s.budget, delta=s.delta,
                accountant_factory=lambda: make_accountant(s.accountant),
                event_decoder=event_from_dict, run_id=self._run_id,
            )
        return self._ledger

    def close(self) -> None:
        """Release the ledger's lock (a later round reopens it)."""
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    # ---- the hard stop, asked before a round trains
    def planned_event(self) -> Event:
        return round_event(self.settings, self.sampling, self._accounted_z(), self.distributed)

    def would_exceed(self) -> bool:
        return self.ledger.would_spend(event_to_dict(self.planned_event())) > self.settings.budget

    def _accounted_z(self) -> float:
        if self.adaptive is not None:
            return effective_noise_multiplier(self.noise_multiplier, self.settings.count_noise_multiplier)
        return self.noise_multiplier

    def _record(self, round_index: int, event: Event) -> float:
        s = self.sampling
        release = Release(
            round_index=round_index,
            mechanism=f"{self.settings.mode}:{self.settings.noise if self.settings.mode == 'distributed' else 'gaussian'}",
            noise_multiplier=self._accounted_z(),
            sampling=s.method if s.method == "poisson" or s.per_round < s.num_clients else "none",
            sampling_rate=s.rate if s.method == "poisson" else None,
            sample_size=s.per_round if s.method == "fixed" and s.per_round < s.num_clients else None,
            population=s.num_clients if s.method == "fixed" and s.per_round < s.num_clients else None,
            clip=self.current_clip,
            event=event_to_dict(event),
            timestamp=time.time(),
        )
        return self.ledger.record(release)  # durable (fsync) before the aggregate leaves this method

    @property
    def current_clip(self) -> float:
        return self.adaptive.clip if self.adaptive is not None else self.settings.clip

    # ---- the round
    def aggregate(
        self, updates: Sequence[ClientUpdate], *, dim: int, round_index: int, late_dropouts: Sequence[int] = ()
    ) -> Aggregate:
        check_updates(updates, dim)
        self._refuse_if_over_budget(round_index)
        clip = self.current_clip
        norms = [float(np.linalg.norm(u.delta)) for u in updates]
        metrics = {"dp_clipped_fraction": float(np.mean([n > clip for n in norms])) if norms else 0.0}
        if self.settings.mode == "distributed":
            total, count, extra = self._distributed_sum(updates, round_index, late_dropouts)
        else:
            total, count, extra = self._clipped_sum(updates, clip, round_index, late_dropouts)
        metrics.update(extra)
        released = self._release(total, count, round_index, metrics)
        if self.adaptive is not None:
            self.adaptive.update(norms, max(self.sampling.expected_cohort, 1.0), self._rng.spawn(round_index, 1))
        return released

    def release_sum(self, total: np.ndarray, count: int, *, round_index: int) -> Aggregate:
        """Release a sum that was computed elsewhere, e.g. revealed by a host stack's secure aggregation.

        ``total`` is the sum of what ``count`` clients sent: their clipped updates (mode ``central``: the
        server's Gaussian noise is added here), their locally noised updates (``local``) or the decoded sum of
        their distributed-DP encodings (``distributed``: already noised). Budget check, pricing, ledger and
        denominator are those of :meth:`aggregate`.
        """
        if self.adaptive is not None:
            raise ConfigError("dp.adaptive_clipping", "adaptive clipping needs the clients' norms: use aggregate()")
        total = np.asarray(total, dtype=np.float64)
        if total.shape != (self.dim,) or not np.isfinite(total).all():
            raise DPParameterError(f"the released sum must be a finite vector of shape ({self.dim},)")
        self._refuse_if_over_budget(round_index)
        return self._release(total, int(count), round_index, {})

    def _refuse_if_over_budget(self, round_index: int) -> None:
        if self.would_exceed():
            raise BudgetExceededError(
                f"round {round_index} would exceed the privacy budget epsilon={self.settings.budget} "
                f"(spent {self.ledger.spent_epsilon():.4f}); the round is not released"
            )

    def _release(self, total: np.ndarray, count: int, round_index: int, metrics: dict[str, float]) -> Aggregate:
        metrics = {"dp_clip": self.current_clip, "dp_noise_multiplier": self.noise_multiplier, **metrics}
        expected = self.sampling.expected_cohort
        if self.settings.mode == "distributed":
            params = self.distributed
            assert params is not None
            metrics["dp_noise_std"] = math.sqrt(count) * params.noise_std * params.gamma / expected
            event = round_event(self.settings, self.sampling, self.noise_multiplier, params, count)
        else:
            if self.settings.mode == "central":
                mech = CentralGaussian(self.current_clip, self.noise_multiplier, 1.0)
                total = mech.release(total, self._rng.spawn(round_index).spawn(0xC0))
                metrics["dp_noise_std"] = mech.noise_std / expected
            event = round_event(self.settings, self.sampling, self._accounted_z())
        metrics["dp_epsilon"] = self._record(round_index, event)
        denominator = expected if self.settings.mode != "local" else max(count, 1)
        if count == 0:
            return Aggregate(np.zeros(self.dim, np.float32), 0.0, 0, metrics)
        return Aggregate((total / denominator).astype(np.float32), float(count), count, metrics)

    def _clipped_sum(
        self, updates: Sequence[ClientUpdate], clip: float, round_index: int, late_dropouts: Sequence[int]
    ) -> tuple[np.ndarray, int, dict[str, float]]:
        s = self.settings
        rng = self._rng.spawn(round_index)
        prepared = []
        for u in updates:
            if s.mode == "local":
                noised = local_gaussian(u.delta, clip, self.noise_multiplier, rng.spawn(u.client_id))
                prepared.append(ClientUpdate(u.client_id, noised.astype(np.float32), 1))
            else:
                clipped, _ = clip_l2(u.delta, clip)
                prepared.append(ClientUpdate(u.client_id, clipped.astype(np.float32), 1))
        inner = self.inner.aggregate(prepared, dim=self.dim, round_index=round_index, late_dropouts=late_dropouts)
        total = inner.vector.astype(np.float64) * inner.total_weight  # uniform weights: mean × count = sum
        return total, inner.num_clients, {k: float(v) for k, v in inner.metrics.items()}

    def rotation_seed(self, round_index: int) -> bytes:
        """The public per-round seed of distributed mode's random rotation, known to every party."""
        return hashlib.sha256(b"fedshield/dp/rotation" + struct.pack(">qQ", self._seed or 0, round_index)).digest()

    def _distributed_sum(
        self, updates: Sequence[ClientUpdate], round_index: int, late_dropouts: Sequence[int]
    ) -> tuple[np.ndarray, int, dict[str, float]]:
        from secagg.api import secure_round
        from secagg.errors import AbortError

        params = self.distributed
        assert params is not None
        # public per-round rotation, known to every party
        rotation = self.rotation_seed(round_index)
        rng = self._rng.spawn(round_index)
        if len({u.client_id for u in updates} | set(late_dropouts)) < 2 or not updates:
            return np.zeros(self.dim), 0, {"secagg_aborted": 1.0}
        inputs = {u.client_id: encode_client(u.delta, params, rotation, rng.spawn(u.client_id)) for u in updates}
        if self.secagg_mode == "sum":
            # Audit transport: the plain modular sum the protocol reveals (pairwise masks cancel exactly), so a
            # canary audit of hundreds of clients need not run key agreement. Never used for training.
            summed = np.zeros(params.padded_dim, dtype=np.uint64)
            for v in inputs.values():
                summed += v.astype(np.uint64)
            summed &= np.uint64((1 << params.bits) - 1)
            return decode_sum(summed, params, rotation), len(inputs), {}
        try:
            result = secure_round(inputs, params.bits, mode=self.secagg_mode,  # type: ignore[arg-type]
                                  late_dropouts=late_dropouts, round_id=round_index)
        except AbortError:
            return np.zeros(self.dim), 0, {"secagg_aborted": 1.0}
        stats = result.stats
        total = decode_sum(result.vector, params, rotation)
        return total, len(result.survivors), {
            "secagg_aborted": 0.0,
            "secagg_upload_bytes_per_client": stats.mean_upload_bytes(),
            "secagg_client_time_s": stats.mean_client_seconds(),
            "secagg_server_time_s": stats.server_seconds,
        }
