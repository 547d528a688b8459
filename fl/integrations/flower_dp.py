"""Client-level DP for any Flower strategy: fedshield's :class:`~fl.privacy.DPAggregator` behind a wrapper.

:class:`DPStrategy` wraps a Flower ``Strategy`` (FedAvg, FedAvgM, FedAdam, ...) the way Flower's own
``DifferentialPrivacyServerSideFixedClipping`` does, but the release is fedshield's
:class:`~fl.privacy.DPAggregator` itself, not a re-implementation. Central mode: each round's client updates ``Δ_k = w_k - w_global`` are L2-clipped to
C, summed, and Gaussian noise ``N(0, (zC)²)`` from fedshield's AES-CTR :class:`~dp.rng.CryptoRNG` is added
before dividing by the fixed expected cohort (DP-FedAvg); every release is written to the crash-safe
budget ledger *before* the wrapped strategy sees it, and ``ε(δ)`` after the round is returned in the
round's metrics (``dp_epsilon``) next to ``dp_noise_multiplier``, ``dp_clip``, ``dp_noise_std``.

Three data paths:

* **plain**, ``mode="central"`` -- Flower's default fit workflow: ``aggregate_fit`` gets every client's
  FitRes; the server clips (trusted server, as in Flower's server-side-clipping wrapper).
* **secure**, ``mode="central"`` -- with :class:`~fl.integrations.flower_secagg.SecAggWorkflow` the server
  never sees an update: every client clips its own update to C (:meth:`secagg_encoding`) before masking,
  the protocol reveals only ``Σ_k clip(Δ_k)`` and :meth:`aggregate_secure_fit` adds the noise to that sum.
  The noise draw depends only on the seed and the round, so both paths release the same noise for the same
  inputs. The server must be trusted to add it.
* **secure**, ``mode="distributed"`` -- with :class:`SecAggWorkflow` each client adds its own discrete
  Gaussian (or Skellam) noise share to its clipped, rotated, quantised update before masking
  (:mod:`dp.distributed`), so the sum the server sees is already private; the parameters
  (:class:`~dp.distributed.DistributedParams`, calibrated for the expected cohort) and each round's public
  rotation come from this wrapper, and every round is priced by RDP at its *actual* survivor count.

Either way the wrapped strategy then receives the noised mean as its aggregate (one FitRes per
contributing client, identical parameters, ``num_examples = 1``), so its server optimiser (FedAvg's
identity, FedAvgM's momentum, FedAdam's moments) acts on the DP release; post-processing keeps the
guarantee. Strategies that need individual updates (Krum, FedMedian, ...) gain nothing from this.

Budget: before each round :meth:`configure_fit` asks the aggregator whether the planned release would
exceed ``settings.budget``; if so it selects no clients (Flower then skips the round's fit), sets
:attr:`stopped` and the model no longer moves. With fixed-size sampling the wrapper checks that the
strategy really sampled ``sampling.per_round`` clients, since the accountant's amplification assumes it.
Not for Flower's own ``SecAggPlusWorkflow``: it hands the strategy one FitRes per client that all hold the
same already-averaged parameters, which this wrapper would take for individual updates.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from dp.distributed import DistributedParams
from dp.errors import BudgetExceededError
from fl.aggregators import WeightedMean
from fl.errors import ConfigError
from fl.integrations.flower_secagg import SecAggEncoding, SecureAggregate, add_delta, delta_vector
from fl.privacy import DPAggregator, DPSettings, SamplingInfo
from fl.types import ClientUpdate

__all__ = ["ClientLevelDP", "DPStrategy"]

log = logging.getLogger(__name__)


class ClientLevelDP:
    """fedshield's client-level DP for one Flower run: the seam :class:`DPStrategy` (Strategy API) and
    :class:`~fl.integrations.flower_message.SecureGrid` (Message API) share.

    Builds the :class:`~fl.privacy.DPAggregator` once the model size is known, decides before each round
    whether it may run (budget, sampling the accountant assumes), tells clients how to encode
    (:meth:`encoding`) and releases a round -- from the revealed secure sum or from plaintext updates --
    writing it to the ledger first. Arguments as for :class:`DPStrategy` (``seed`` names the noise stream).
    """

    def __init__(
        self,
        settings: DPSettings,
        sampling: SamplingInfo,
        *,
        rounds: int,
        seed: int | None = None,
        ledger_path: str | Path | None = None,
        run_id: str = "fedshield-flower",
    ) -> None:
        if settings.mode not in ("central", "distributed"):
            raise ConfigError(
                "dp.mode", f"the Flower DP adapters implement modes 'central' and 'distributed', got {settings.mode!r}"
            )
        if not isinstance(sampling, SamplingInfo):
            raise ConfigError("dp.sampling", f"must be a SamplingInfo (how the strategy samples), got {sampling!r}")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ConfigError("run.rounds", f"must be an int >= 1, got {rounds!r}")
        self.settings = settings
        self.sampling = sampling
        self.rounds = rounds
        self._seed = seed
        self._ledger_path = ledger_path
        self._run_id = run_id
        self._dp: DPAggregator | None = None
        self.stopped = False
        #: (server round, ε after it) for every released round
        self.epsilon_history: list[tuple[int, float]] = []

    def aggregator(self, dim: int) -> DPAggregator:
        if self._dp is None:
            # the plain path hands DPAggregator the updates (it clips them and gives weight 1 each); the secure
            # path hands it the revealed sum (release_sum): the updates never reach the server
            self._dp = DPAggregator(
                WeightedMean("uniform"), self.settings, self.sampling, rounds=self.rounds, dim=dim,
                ledger_path=self._ledger_path, run_id=self._run_id, seed=self._seed,
            )
        elif self._dp.dim != dim:
            raise ConfigError("model", f"the model has {dim} parameters, earlier rounds had {self._dp.dim}")
        return self._dp

    @property
    def distributed(self) -> DistributedParams | None:
        """The public distributed-DP parameters (distributed mode, once the model size is known)."""
        return self._dp.distributed if self._dp is not None else None

    @property
    def noise_multiplier(self) -> float | None:
        return self._dp.noise_multiplier if self._dp is not None else None

    def spent_epsilon(self) -> float:
        """ε(δ) spent so far, from the ledger."""
        return self._dp.ledger.spent_epsilon() if self._dp is not None else 0.0

    def close(self) -> None:
        """Release the ledger's file lock."""
        if self._dp is not None:
            self._dp.close()

    def may_run(self, server_round: int, dim: int) -> bool:
        """False (and :attr:`stopped` set) when the round's release would exceed the budget."""
        dp = self.aggregator(dim)
        if self.stopped or dp.would_exceed():
            if not self.stopped:
                log.warning("round %s would exceed the privacy budget epsilon=%s; training stops",
                            server_round, self.settings.budget)
            self.stopped = True
            return False
        return True

    def check_sampled(self, sampled: int) -> None:
        """The strategy must sample as the accountant's amplification assumes (fixed-size sampling)."""
        s = self.sampling
        if s.method == "fixed" and sampled and sampled != s.per_round:
            raise ConfigError(
                "dp.sampling",
                f"the strategy sampled {sampled} clients but the accountant assumes {s.per_round} "
                f"of {s.num_clients} per round; make SamplingInfo match the strategy's sampling",
            )

    def encoding(self, server_round: int, dim: int) -> SecAggEncoding:
        """What clients do before masking: clip to C (central), or clip, rotate, round and add their noise
        share (distributed)."""
        if self.settings.adaptive_clipping:
            raise ConfigError("dp.adaptive_clipping", "adaptive clipping needs per-client norms: not with SecAgg")
        if self.settings.mode == "distributed":
            dp = self.aggregator(dim)
            assert dp.distributed is not None  # DPAggregator sets it in distributed mode
            return SecAggEncoding(distributed=dp.distributed, rotation_seed=dp.rotation_seed(server_round))
        return SecAggEncoding(l2_clip=float(self.settings.clip))

    def release(
        self, server_round: int, dim: int, *, revealed: SecureAggregate | None = None,
        updates: list[ClientUpdate] | None = None,
    ) -> tuple[np.ndarray | None, dict[str, Scalar]]:
        """Release one round: from ``revealed`` (the secure sum: central -- ``Σ clip(Δ_k)``, noise added now;
        distributed -- the decoded, already noised sum, priced now) or from plaintext ``updates`` (clipped
        here). Returns the released mean update (None: nothing to apply) and the round's DP metrics."""
        dp = self.aggregator(dim)
        try:
            if revealed is not None:
                expected = "distributed" if self.settings.mode == "distributed" else "uniform"
                if revealed.weighting != expected:
                    raise ConfigError("dp", f"the secure sum must use {expected!r} encodings, got {revealed.weighting!r}")
                released = dp.release_sum(revealed.weighted_sum, revealed.num_survivors, round_index=server_round)
            else:
                released = dp.aggregate(updates or [], dim=dim, round_index=server_round)
        except BudgetExceededError:
            self.stopped = True
            return None, {"dp_budget_exhausted": 1.0}
        metrics: dict[str, Scalar] = {k: float(v) for k, v in released.metrics.items()}
        metrics["dp_delta"] = float(self.settings.delta)
        self.epsilon_history.append((server_round, float(released.metrics["dp_epsilon"])))
        if released.num_clients == 0:
            return None, metrics
        return np.asarray(released.vector, dtype=np.float64), metrics


class DPStrategy(Strategy):
    """Wrap ``strategy`` with fedshield's client-level DP, central or distributed (see the module docstring).

    Args:
        strategy: any Flower strategy; it samples clients and applies the server update.
        settings: :class:`~fl.privacy.DPSettings` with ``mode="central"`` or ``"distributed"`` (clip C, noise
            multiplier or target ε to calibrate for ``rounds``, δ, budget, accountant; distributed: noise kind,
            modulus bits, accountant "rdp").
        sampling: how ``strategy`` samples: :class:`~fl.privacy.SamplingInfo` (``method="fixed"``,
            ``num_clients``, ``per_round``) -- what the accountant's amplification assumes.
        rounds: rounds the noise is calibrated for (when ``settings.noise_multiplier`` is 0).
        seed: names the noise stream (reproducible simulations); None draws fresh secret noise -- what a
            deployment must use.
        ledger_path / run_id: the budget ledger file (default: a temporary directory) and the run's name in it.
    """

    def __init__(
        self,
        strategy: Strategy,
        settings: DPSettings,
        sampling: SamplingInfo,
        *,
        rounds: int,
        seed: int | None = None,
        ledger_path: str | Path | None = None,
        run_id: str = "fedshield-flower",
    ) -> None:
        super().__init__()
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a flwr Strategy, got {type(strategy).__name__}")
        self.strategy = strategy
        self.privacy = ClientLevelDP(settings, sampling, rounds=rounds, seed=seed, ledger_path=ledger_path,
                                     run_id=run_id)
        self._global: NDArrays = []

    def __repr__(self) -> str:
        s = self.settings
        return (f"DPStrategy({s.mode}, clip={s.clip}, delta={s.delta}, budget={s.budget}, "
                f"strategy={self.strategy!r})")

    @property
    def settings(self) -> DPSettings:
        return self.privacy.settings

    @property
    def sampling(self) -> SamplingInfo:
        return self.privacy.sampling

    @property
    def rounds(self) -> int:
        return self.privacy.rounds

    @property
    def stopped(self) -> bool:
        return self.privacy.stopped

    @property
    def epsilon_history(self) -> list[tuple[int, float]]:
        """(server round, ε after it) for every released round."""
        return self.privacy.epsilon_history

    @property
    def distributed(self) -> DistributedParams | None:
        """The public distributed-DP parameters (distributed mode, once the model size is known)."""
        return self.privacy.distributed

    @property
    def noise_multiplier(self) -> float | None:
        return self.privacy.noise_multiplier

    def spent_epsilon(self) -> float:
        """ε(δ) spent so far, from the ledger."""
        return self.privacy.spent_epsilon()

    def close(self) -> None:
        """Release the ledger's file lock."""
        self.privacy.close()

    def _dim(self) -> int:
        return sum(int(a.size) for a in self._global)

    # ---- Strategy interface
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self._global = list(parameters_to_ndarrays(parameters))
        if not self.privacy.may_run(server_round, self._dim()):
            return []
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        self.privacy.check_sampled(len(instructions))
        return instructions

    def secagg_encoding(self, server_round: int) -> SecAggEncoding:
        """What clients do before masking: clip to C (central), or clip, rotate, round and add their noise
        share (distributed). Called by :class:`SecAggWorkflow` after :meth:`configure_fit`."""
        return self.privacy.encoding(server_round, self._dim())

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Plain path: clip every client's update, sum, add noise; then the wrapped strategy's update."""
        if self.settings.mode == "distributed":
            raise ConfigError("dp.mode", "distributed DP needs fedshield's SecAggWorkflow (clients add the noise)")
        if not results:
            return None, {}
        updates = [
            ClientUpdate(i, delta_vector(parameters_to_ndarrays(res.parameters), self._global), 1)
            for i, (_, res) in enumerate(results)
        ]
        delta, metrics = self.privacy.release(server_round, self._dim(), updates=updates)
        return self._apply(server_round, delta, metrics, results, failures)

    def aggregate_secure_fit(
        self,
        server_round: int,
        aggregate: SecureAggregate,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Secure path: ``aggregate`` is ``Σ_k clip(Δ_k)`` with weight 1 per survivor (central: add noise to it)
        or the already noised sum of the survivors' distributed-DP encodings (distributed: account for it)."""
        delta, metrics = self.privacy.release(server_round, self._dim(), revealed=aggregate)
        return self._apply(server_round, delta, metrics, results, failures)

    def _apply(
        self,
        server_round: int,
        delta: np.ndarray | None,
        metrics: dict[str, Scalar],
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if delta is None:
            return None, metrics
        noised = ndarrays_to_parameters(add_delta(self._global, delta))
        ok = Status(Code.OK, "")
        handed = [(proxy, FitRes(ok, noised, 1, dict(res.metrics))) for proxy, res in results]
        if not handed:  # no per-client FitRes came with the secure sum: release without the server optimiser
            return noised, metrics
        parameters, inner_metrics = self.strategy.aggregate_fit(server_round, handed, failures)
        return parameters, {**dict(inner_metrics), **metrics}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return self.strategy.evaluate(server_round, parameters)
