"""Distributed DP with secure aggregation: each client adds its share of *discrete* noise to its quantised
update before masking, so the server only ever sees a noised sum.

Client pipeline (Kairouz, Liu, Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation", Algorithm 1; the Skellam variant of Agarwal, Kairouz, Liu 2021)::

    x (float, d)  ──clip L2 ≤ c──►  pad to D = 2^⌈log2 d⌉  ──flatten: H·diag(ξ)/√D──►  scale by 1/γ
      ──conditional randomised rounding to Z^D (retry until ‖·‖₂ ≤ Δ̃₂)──►  + noise share (discrete Gaussian
      N_Z(0, σ²) or Skellam with variance σ²)  ──reduce mod 2^b──►  secure aggregation (sum mod 2^b)

Server: signed interpretation of the sum mod 2^b, times γ, inverse rotation, crop to d. The random signs ξ
are public per round (derived from a public seed); the rotation spreads a vector's mass so that modular
clipping (wrap-around) is rare.

Privacy: the released sum of n survivors carries noise of total variance n σ² (dropped clients' shares
are missing, so the accountant is told the *actual* survivor count — or plan with the minimum). Its RDP is
Proposition 14 of Kairouz et al. (discrete Gaussian, with the τ term for a sum of discrete Gaussians) or
Corollary 3.6 of Agarwal et al. (Skellam); sensitivities are in the scaled integer domain after the
rounding inflation Δ̃₂ (their Theorem 1 / Proposition 22) and Δ̃₁ = Δ̃₂ · min(√D, Δ̃₂).
All randomness (rounding, noise) comes from :class:`dp.rng.CryptoRNG`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from dp.discrete import sample_discrete_gaussian, sample_skellam
from dp.errors import DPError, DPParameterError
from dp.mechanisms import clip_l2
from dp.rng import CryptoRNG

__all__ = [
    "DistributedParams",
    "ddg_rdp",
    "decode_sum",
    "encode_client",
    "hadamard",
    "rounded_l2_bound",
    "skellam_rdp",
]

NoiseKind = Literal["discrete_gaussian", "skellam"]
_SKELLAM_PART_MAX = float(2**31)
IntVector = npt.NDArray[np.int64]


def hadamard(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Unnormalised fast Walsh–Hadamard transform along the last axis (length a power of two), O(D log D)."""
    y = np.array(x, dtype=np.float64, copy=True)
    n = y.shape[-1]
    if n & (n - 1):
        raise DPParameterError(f"Hadamard transform needs a power-of-two length, got {n}")
    h = 1
    while h < n:  # log2(D) vectorised butterfly stages
        y = y.reshape(*y.shape[:-1], n // (2 * h), 2, h)
        a, b = y[..., 0, :].copy(), y[..., 1, :].copy()
        y[..., 0, :], y[..., 1, :] = a + b, a - b
        y = y.reshape(*y.shape[:-3], n)
        h *= 2
    return y


def rounded_l2_bound(l2: float, dim: int, beta: float) -> float:
    """Δ̃₂: the L2 norm any accepted rounding of a vector of norm ≤ ``l2`` can have (Kairouz et al.,
    Theorem 1): min(l2 + √D, sqrt(l2² + D/4 + sqrt(2 ln(1/β)) (l2 + √D/2))) for β > 0."""
    bound_1 = l2 + math.sqrt(dim)
    if beta == 0:
        return bound_1
    sq = l2**2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (l2 + math.sqrt(dim) / 2)
    return min(bound_1, math.sqrt(sq))


@dataclass(frozen=True)
class DistributedParams:
    """Public parameters of one distributed-DP release.

    ``gamma`` is the quantisation granularity (a coordinate unit is γ in the original scale), ``noise_std``
    the per-client noise standard deviation in integer units, ``bits`` the modulus of secure aggregation.
    """

    dim: int
    clip: float
    gamma: float
    noise_std: float
    bits: int
    beta: float = math.exp(-0.5)
    noise: NoiseKind = "discrete_gaussian"

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise DPParameterError(f"dim must be >= 1, got {self.dim}")
        for name in ("clip", "gamma", "noise_std"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise DPParameterError(f"{name} must be a finite number > 0, got {v!r}")
        if not 2 <= self.bits <= 62:
            raise DPParameterError(f"bits must be in 2..62, got {self.bits}")
        if not 0 <= self.beta < 1:
            raise DPParameterError(f"beta must be in [0, 1), got {self.beta}")
        if self.noise not in ("discrete_gaussian", "skellam"):
            raise DPParameterError(f"noise must be 'discrete_gaussian' or 'skellam', got {self.noise!r}")

    @property
    def padded_dim(self) -> int:
        return 1 << max(self.dim - 1, 0).bit_length()

    @property
    def l2_sensitivity(self) -> float:
        """Δ̃₂ in integer units (after scaling by 1/γ and conditional rounding)."""
        return rounded_l2_bound(self.clip / self.gamma, self.padded_dim, self.beta)

    @property
    def l1_sensitivity(self) -> float:
        """Δ̃₁ ≤ Δ̃₂ · min(√D, Δ̃₂) (integer vectors: ‖v‖₁ ≤ ‖v‖₂²)."""
        l2 = self.l2_sensitivity
        return l2 * min(math.sqrt(self.padded_dim), l2)

    @classmethod
    def for_noise_multiplier(
        cls,
        *,
        dim: int,
        clip: float,
        noise_multiplier: float,
        expected_clients: int,
        bits: int = 20,
        k_stddevs: float = 4.0,
        beta: float = math.exp(-0.5),
        noise: NoiseKind = "discrete_gaussian",
    ) -> DistributedParams:
        """Choose γ so that ``k_stddevs`` standard deviations of the aggregate fit in ``bits`` bits (Kairouz et
        al. §4.4's heuristic with a flat rotation), and the per-client noise so that the total noise of
        ``expected_clients`` shares is ``noise_multiplier`` times the *rounding-inflated* sensitivity."""
        if expected_clients < 1:
            raise DPParameterError(f"expected_clients must be >= 1, got {expected_clients}")
        padded = 1 << max(dim - 1, 0).bit_length()
        n = expected_clients
        # Target: the aggregate's per-coordinate std in integer units is about sqrt(n c²/(D γ²) + n σ_l²); with
        # σ_l ≈ z Δ̃₂/√n and Δ̃₂ ≈ c/γ the std is ≈ (c/γ) sqrt(n/D + z²). Make 2 k std fit in 2^bits.
        std_in_clip_units = math.sqrt(n / padded * 1.0 + noise_multiplier**2 + n / (4 * padded))
        gamma = 2 * k_stddevs * clip * std_in_clip_units / 2.0**bits
        # a second pass refines σ_l with the exact inflated sensitivity
        l2 = rounded_l2_bound(clip / gamma, padded, beta)
        local_std = noise_multiplier * l2 / math.sqrt(n)
        return cls(dim, clip, gamma, local_std, bits, beta, noise)


def _signs(seed: bytes, length: int) -> npt.NDArray[np.float64]:
    # public per-round randomness: the rotation is not secret, it only has to be shared by all parties
    return np.where(CryptoRNG(seed).random_signs(length), 1.0, -1.0)


def encode_client(
    x: npt.NDArray[np.floating[Any]], params: DistributedParams, rotation_seed: bytes, rng: CryptoRNG,
    *, max_tries: int = 1000,
) -> npt.NDArray[np.uint64]:
    """One client's noised, quantised, rotated update in Z_{2^bits} (ready for secure aggregation)."""
    if not isinstance(x, np.ndarray) or x.shape != (params.dim,):
        raise DPParameterError(f"update must have shape ({params.dim},)")
    clipped, _ = clip_l2(x, params.clip)
    d_pad = params.padded_dim
    padded = np.zeros(d_pad)
    padded[: params.dim] = clipped
    rotated = hadamard(padded * _signs(rotation_seed, d_pad)) / math.sqrt(d_pad)
    scaled = rotated / params.gamma
    bound = params.l2_sensitivity
    floor = np.floor(scaled)
    frac = scaled - floor
    for _ in range(max_tries):  # conditional randomised rounding: expected ≤ 1/(1-β) tries
        rounded = floor + rng.bernoulli(frac, d_pad)
        if float(np.linalg.norm(rounded)) <= bound:
            break
    else:
        raise DPError(f"conditional rounding did not succeed in {max_tries} tries (beta too small?)")
    integers = rounded.astype(np.int64)
    if params.noise == "discrete_gaussian":
        integers += sample_discrete_gaussian(params.noise_std**2, rng, d_pad)
    else:
        # Skellam(μ) is closed under sums: split a large μ into parts within the exact sampler's range
        mu = params.noise_std**2 / 2
        parts = max(1, math.ceil(mu / _SKELLAM_PART_MAX))
        for _ in range(parts):
            integers += sample_skellam(mu / parts, rng, d_pad)
    return (integers & ((1 << params.bits) - 1)).astype(np.uint64)  # two's complement reduction mod 2^b


def decode_sum(
    summed: npt.NDArray[np.uint64], params: DistributedParams, rotation_seed: bytes
) -> npt.NDArray[np.float64]:
    """The server's estimate of Σ clip(x_k) from the secure sum mod 2^bits."""
    if not isinstance(summed, np.ndarray) or summed.shape != (params.padded_dim,):
        raise DPParameterError(f"sum must have shape ({params.padded_dim},)")
    half = 1 << (params.bits - 1)
    as_int = summed.astype(np.int64) & ((1 << params.bits) - 1)
    signed = np.where(as_int >= half, as_int - (1 << params.bits), as_int).astype(np.float64)
    d_pad = params.padded_dim
    unrotated = hadamard(signed * params.gamma) / math.sqrt(d_pad) * _signs(rotation_seed, d_pad)
    return unrotated[: params.dim]


def _tau(noise_std: float, num_clients: int) -> float:
    # Kairouz et al. Theorem 1: the sum of n discrete Gaussians N_Z(0, σ²) is close to N_Z(0, nσ²); the gap
    # costs τ = 10 Σ_{k=1}^{n-1} exp(-2π² σ² k/(k+1)) per dimension.
    k = np.arange(1, num_clients, dtype=np.float64)
    return float(10 * np.exp(-2 * math.pi**2 * noise_std**2 * k / (k + 1)).sum())


def ddg_rdp(alpha: float, params: DistributedParams, num_clients: int) -> float:
    """RDP ε(α) of one (unsampled) release of the sum of ``num_clients`` noise shares (Prop. 14)."""
    if num_clients < 1:
        raise DPParameterError(f"num_clients must be >= 1, got {num_clients}")
    std = math.sqrt(num_clients) * params.noise_std
    l2, l1 = params.l2_sensitivity / std, params.l1_sensitivity / std
    tau = _tau(params.noise_std, num_clients)
    d = params.padded_dim
    return min(
        alpha / 2 * l2**2 + tau * d,
        alpha / 2 * (l2**2 + 2 * l1 * tau + tau**2 * d),
        alpha / 2 * (l2 + math.sqrt(d) * tau) ** 2,
    )


def skellam_rdp(alpha: float, params: DistributedParams, num_clients: int) -> float:
    """RDP ε(α) of the Skellam sum with total variance μ = n σ² (Agarwal et al. 2021, Corollary 3.6)."""
    if num_clients < 1:
        raise DPParameterError(f"num_clients must be >= 1, got {num_clients}")
    mu = num_clients * params.noise_std**2
    l2, l1 = params.l2_sensitivity, params.l1_sensitivity
    return alpha * l2**2 / (2 * mu) + min(((2 * alpha - 1) * l2**2 + 6 * l1) / (4 * mu**2), 3 * l1 / (2 * mu))
