"""fedshield inside Flower (``pip install fedshield[flower]``): secure aggregation, CKKS and client-level DP.

Importing this module imports ``flwr``; ``import fl`` never does. Three pieces, usable alone or together:

* **SecAgg / SecAgg+** (:mod:`fl.integrations.flower_secagg`): :class:`SecAggWorkflow` is a Flower fit
  workflow that drives fedshield's sans-IO :class:`~secagg.protocol.ServerSession` with one
  ``Grid.send_and_receive`` per protocol phase; :data:`secagg_mod` is the matching client mod driving
  :class:`~secagg.protocol.ClientSession`. Protocol messages travel in fedshield's strict wire format inside
  Flower ConfigRecords; the strategy gets the decoded weighted mean (stock FedAvg works unchanged)::

      app = ServerApp()

      @app.main()
      def main(grid: Grid, context: Context) -> None:
          context = LegacyContext(context=context, config=ServerConfig(num_rounds=3), strategy=FedAvg(...))
          DefaultWorkflow(fit_workflow=SecAggWorkflow("secagg+"))(grid, context)

      client_app = ClientApp(client_fn=client_fn, mods=[secagg_mod])

* **Message API strategies** (:mod:`fl.integrations.flower_message`): for ``flwr.serverapp.strategy``'s
  ``FedAvg`` & co., which own the round loop (``strategy.start(grid=...)``), :class:`SecureGrid` wraps the
  grid and runs every train round through the same SecAgg/SecAgg+ exchanges (optionally with central or
  distributed DP and ε per round in ``Result.train_metrics_clientapp``); :data:`secagg_mod` serves both APIs.
  :class:`CKKSGrid` does the same with CKKS encryption (:class:`CKKSClientMod` serves both APIs too).
* **CKKS** (:mod:`fl.integrations.flower_ckks`): :class:`CKKSClientMod` encrypts each FitRes update under
  the key holder's public context, :class:`CKKSFedAvg` adds ciphertexts without any secret key, and
  :class:`KeyHolderService` (a separate party) decrypts only flooded sums.
* **Client-level DP** (:mod:`fl.integrations.flower_dp`): :class:`DPStrategy` wraps any Flower strategy
  with fedshield's :class:`~fl.privacy.DPAggregator` (clip, sum, CSPRNG Gaussian noise, fixed denominator,
  durable ledger), reports ``dp_epsilon`` per round and stops before the budget is exceeded. With
  :class:`SecAggWorkflow` the clients clip and the noise goes on the secure sum (central DP), or each
  client adds its own discrete-noise share before masking (distributed DP, ``DPSettings(mode="distributed")``).
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fl.integrations.flower needs Flower: pip install 'fedshield[flower]'") from exc

from fl.integrations.flower_ckks import (
    CKKS_RECORD_KEY,
    CONTEXT_ID_KEY,
    TENSOR_TYPE,
    CKKSClientMod,
    CKKSFedAvg,
    KeyHolderService,
)
from fl.integrations.flower_dp import DPStrategy
from fl.integrations.flower_message import CKKSGrid, SecureGrid
from fl.integrations.flower_secagg import (
    RECORD_KEY,
    STATE_KEY,
    RoundSetup,
    SecAggClientMod,
    SecAggEncoding,
    SecAggWorkflow,
    SecureAggregate,
    SecureRoundOutcome,
    SecureSumStrategy,
    add_delta,
    delta_vector,
    run_secure_round,
    secagg_mod,
)

__all__ = [
    "CKKS_RECORD_KEY",
    "CONTEXT_ID_KEY",
    "RECORD_KEY",
    "STATE_KEY",
    "TENSOR_TYPE",
    "CKKSClientMod",
    "CKKSFedAvg",
    "CKKSGrid",
    "DPStrategy",
    "KeyHolderService",
    "RoundSetup",
    "SecAggClientMod",
    "SecAggEncoding",
    "SecAggWorkflow",
    "SecureAggregate",
    "SecureGrid",
    "SecureRoundOutcome",
    "SecureSumStrategy",
    "add_delta",
    "delta_vector",
    "run_secure_round",
    "secagg_mod",
]
