"""Client-level DP mechanisms on flat numpy vectors (no torch, no :mod:`fl`).

* :func:`clip_l2` / :func:`clip_per_layer` — bound each client's contribution (the L2 sensitivity).
* :class:`CentralGaussian` — DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent
  Language Models"): the server adds N(0, (σC)²) to the *sum* of clipped updates and divides by a fixed
  denominator (the expected cohort size), so a client's presence changes the sum by at most C.
* :class:`AdaptiveClipping` — Andrew et al. 2021, "Differentially Private Learning with Adaptive
  Clipping": the clip norm follows a target quantile γ of the update norms through a noisy geometric
  update; its privacy cost is folded into an effective noise multiplier (their Theorem 1).
* :func:`local_gaussian` — local DP: each client noises its own clipped update.

Noise always comes from :class:`dp.rng.CryptoRNG` (AES-CTR based), never from ``numpy.random``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from dp.errors import DPParameterError
from dp.rng import CryptoRNG

__all__ = [
    "AdaptiveClipping",
    "CentralGaussian",
    "clip_l2",
    "clip_per_layer",
    "effective_noise_multiplier",
    "local_gaussian",
]

FloatVector = npt.NDArray[np.floating[Any]]


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise DPParameterError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _vector(x: object, name: str = "update") -> npt.NDArray[np.float64]:
    if not isinstance(x, np.ndarray) or x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
        raise DPParameterError(f"{name} must be a 1-D float array")
    if not np.isfinite(x).all():
        raise DPParameterError(f"{name} has non-finite values")
    return x.astype(np.float64, copy=False)


def clip_l2(x: FloatVector, clip: float) -> tuple[npt.NDArray[np.float64], float]:
    """``x * min(1, clip / ||x||_2)`` and the norm before clipping. Never increases the norm."""
    c = _positive("clip", clip)
    v = _vector(x)
    norm = float(np.linalg.norm(v))
    if norm <= c:
        return v.copy(), norm
    return v * (c / norm), norm


def clip_per_layer(
    x: FloatVector, segments: Sequence[tuple[int, int]], clips: Sequence[float]
) -> tuple[npt.NDArray[np.float64], list[float]]:
    """Clip each ``x[start:stop]`` to its own L2 bound. The total sensitivity is ``sqrt(Σ clips²)``.

    ``segments`` must tile ``x`` exactly (contiguous, in order, no gaps).
    """
    v = _vector(x)
    if len(segments) != len(clips):
        raise DPParameterError(f"{len(segments)} segments but {len(clips)} clip norms")
    pos = 0
    for start, stop in segments:
        if start != pos or stop <= start:
            raise DPParameterError("segments must tile the vector contiguously from 0")
        pos = stop
    if pos != v.shape[0]:
        raise DPParameterError(f"segments cover {pos} of {v.shape[0]} coordinates")
    out = v.copy()
    norms = []
    for (start, stop), c in zip(segments, clips, strict=True):
        out[start:stop], n = clip_l2(v[start:stop], c)
        norms.append(n)
    return out, norms


def local_gaussian(x: FloatVector, clip: float, noise_multiplier: float, rng: CryptoRNG) -> npt.NDArray[np.float64]:
    """Local DP: clip to ``clip`` and add N(0, (noise_multiplier · clip)²) per coordinate on the client."""
    clipped, _ = clip_l2(x, clip)
    return clipped + rng.normal(clipped.shape[0], scale=_positive("noise_multiplier", noise_multiplier) * clip)


@dataclass(frozen=True)
class CentralGaussian:
    """DP-FedAvg's server step: noise the sum of clipped updates and divide by a fixed denominator.

    With Poisson sampling at rate q over N clients, the denominator is the *expected* cohort size qN
    (McMahan et al.'s fixed-denominator estimator: dividing by the realised count would make the
    sensitivity data dependent); with fixed-size sampling it is the cohort size m.
    """

    clip: float
    noise_multiplier: float
    denominator: float

    def __post_init__(self) -> None:
        _positive("clip", self.clip)
        if isinstance(self.noise_multiplier, bool) or not self.noise_multiplier >= 0:
            raise DPParameterError(f"noise_multiplier must be >= 0, got {self.noise_multiplier!r}")
        _positive("denominator", self.denominator)

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise on the sum (σ·C)."""
        return self.noise_multiplier * self.clip

    def release(self, clipped_sum: FloatVector, rng: CryptoRNG) -> npt.NDArray[np.float64]:
        s = _vector(clipped_sum, "clipped_sum")
        noise = rng.normal(s.shape[0], scale=self.noise_std) if self.noise_multiplier > 0 else 0.0
        return (s + noise) / self.denominator


def effective_noise_multiplier(update_noise_multiplier: float, count_noise_multiplier: float) -> float:
    """σ of a single Gaussian equivalent to noising the update sum with z·C and the clipped-count sum with
    σ_b (sensitivity 1/2 after centring), per Andrew et al. 2021, Theorem 1: z_eff = (z⁻² + (2σ_b)⁻²)^(-1/2)."""
    z = _positive("update_noise_multiplier", update_noise_multiplier)
    sb = _positive("count_noise_multiplier", count_noise_multiplier)
    return float((z**-2 + (2 * sb) ** -2) ** -0.5)


@dataclass
class AdaptiveClipping:
    """Quantile-tracking clip norm (Andrew et al. 2021, Algorithm 1 with the geometric update).

    Each round every client reports b_k = 1[||Δ_k|| ≤ C] (centred to b_k − 1/2 so the sensitivity is 1/2);
    the server releases b̃ = (Σ b_k + N(0, σ_b²)) / m and sets C ← C·exp(−η (b̃ − γ)). Use
    :func:`effective_noise_multiplier` to account the round's two releases as one Gaussian.
    """

    clip: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_multiplier: float = 10.0
    history: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        _positive("clip", self.clip)
        if not 0 < self.target_quantile < 1:
            raise DPParameterError(f"target_quantile must be in (0, 1), got {self.target_quantile}")
        _positive("learning_rate", self.learning_rate)
        _positive("count_noise_multiplier", self.count_noise_multiplier)

    def update(self, norms: Sequence[float], denominator: float, rng: CryptoRNG) -> float:
        """Advance the clip norm from this round's (pre-clipping) update norms; returns the new norm."""
        indicators = (np.asarray(norms, dtype=np.float64) <= self.clip).astype(np.float64)
        # centred sum Σ(b_k − ½) has sensitivity ½ under add/remove, whatever the realised cohort size
        centred = float((indicators - 0.5).sum()) + float(rng.normal(1, scale=self.count_noise_multiplier)[0])
        noisy = centred / _positive("denominator", denominator) + 0.5
        self.history.append(self.clip)
        self.clip = float(self.clip * math.exp(-self.learning_rate * (noisy - self.target_quantile)))
        return self.clip
