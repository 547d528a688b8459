"""Client-level differential privacy: mechanisms, accountants and a durable budget ledger.

numpy/scipy/cryptography only (no torch, no :mod:`fl`), so other FL stacks can embed it.

* :mod:`dp.mechanisms` — clipping, DP-FedAvg's central Gaussian, adaptive clipping, local DP;
* :mod:`dp.distributed` — distributed discrete Gaussian / Skellam under secure aggregation;
* :mod:`dp.discrete` — exact discrete Gaussian, discrete Laplace, Poisson and Skellam samplers;
* :mod:`dp.rng` — :class:`CryptoRNG`, the AES-CTR CSPRNG every noise sample comes from;
* :mod:`dp.events` / :mod:`dp.accountants` — privacy events and the RDP / PLD accountants;
* :mod:`dp.ledger` — the crash-safe, append-only budget ledger with a hard stop.
"""

from __future__ import annotations

from dp.accountants import (
    PLDAccountant,
    PrivacyAccountant,
    RDPAccountant,
    noise_multiplier_for_epsilon,
    rounds_for_budget,
)
from dp.errors import BudgetExceededError, DPError, DPParameterError
from dp.events import (
    ComposedEvent,
    DistributedNoiseEvent,
    FixedSizeSampledEvent,
    GaussianEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
    event_from_dict,
    event_to_dict,
)
from dp.ledger import BudgetLedger, Release
from dp.mechanisms import AdaptiveClipping, CentralGaussian, clip_l2, clip_per_layer, local_gaussian
from dp.rng import CryptoRNG

__all__ = [
    "AdaptiveClipping",
    "BudgetExceededError",
    "BudgetLedger",
    "CentralGaussian",
    "ComposedEvent",
    "CryptoRNG",
    "DPError",
    "DPParameterError",
    "DistributedNoiseEvent",
    "FixedSizeSampledEvent",
    "GaussianEvent",
    "PLDAccountant",
    "PoissonSampledEvent",
    "PrivacyAccountant",
    "RDPAccountant",
    "Release",
    "SelfComposedEvent",
    "clip_l2",
    "clip_per_layer",
    "event_from_dict",
    "event_to_dict",
    "local_gaussian",
    "noise_multiplier_for_epsilon",
    "rounds_for_budget",
]
