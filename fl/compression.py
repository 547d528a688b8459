"""Client-side update stages: clipping (``client.clip_norm``), top-k sparsification and quantisation
(``[compression]``).

All three are :class:`fl.aggregators.UpdateTransform` stages, so they sit between DP clipping (outside) and the
secure sum or the weighted mean (inside): ``DPAggregator(TopK(SecAggAggregator(...)))``. Top-k never raises an
update's L2 norm, so it keeps DP's sensitivity bound; quantisation can, which is why the config refuses
``quantize`` together with a DP mode.

Compression is also a (weak) defence against gradient inversion; ``attacks.inversion`` has an adaptive
attacker for each (it compares only the coordinates sent, or fits inside the quantisation bins). The
semantics here match ``attacks.inversion.topk`` and ``attacks.inversion.quantize`` exactly, which the tests
check, so what the attacker models is what the pipeline does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dp.mechanisms import clip_l2
from fl.aggregators import Aggregator, UpdateTransform
from fl.errors import ConfigError
from fl.types import Aggregate, ClientUpdate

__all__ = ["Clip", "Quantize", "TopK", "quantize_levels", "topk_sparsify", "wrap_compression"]


def topk_sparsify(delta: np.ndarray, fraction: float) -> np.ndarray:
    """Keep the ``ceil(fraction · d)`` largest-magnitude coordinates of ``delta``; zero the rest.

    Ties at the threshold are broken by index (a stable order), like ``attacks.inversion.topk``.
    """
    d = delta.size
    k = max(1, math.ceil(fraction * d))
    if k >= d:
        return delta.astype(np.float32, copy=True)
    order = np.argsort(-np.abs(delta), kind="stable")[:k]
    out = np.zeros(d, dtype=np.float32)
    out[order] = delta[order]
    return out


def quantize_levels(delta: np.ndarray, levels: int) -> np.ndarray:
    """Round every coordinate to the nearest of ``levels`` evenly spaced values on ``[-m, m]``, m = max|delta|."""
    top = float(np.abs(delta).max()) if delta.size else 0.0
    if top == 0.0:
        return np.zeros_like(delta, dtype=np.float32)
    step = 2 * top / (levels - 1)
    index = np.clip(np.rint((delta.astype(np.float64) + top) / step), 0, levels - 1)
    return (index * step - top).astype(np.float32)


class Clip(UpdateTransform):
    """Each client scales its update down to L2 norm ``bound`` (``client.clip_norm``): clipping without noise.

    With a DP mode the DP aggregator clips (at ``dp.clip``) instead; this stage is the clipping-only defence.
    """

    def __init__(self, inner: Aggregator, bound: float) -> None:
        if not (math.isfinite(bound) and bound > 0):
            raise ConfigError("client.clip_norm", f"must be positive and finite, got {bound}")
        super().__init__(inner)
        self.bound = float(bound)

    def transform(self, update: ClientUpdate, *, round_index: int) -> ClientUpdate:
        clipped, norm = clip_l2(update.delta, self.bound)  # the DP aggregator's clipping, without the noise
        if norm <= self.bound:
            return update
        return ClientUpdate(update.client_id, clipped.astype(np.float32), update.num_examples, update.metrics)


class _Compressor(UpdateTransform):
    """A compression stage: reports what a client sends (``compressed_upload_bytes_per_client``)."""

    def upload_bytes(self, dim: int) -> float:
        raise NotImplementedError

    def aggregate(
        self, updates: Sequence[ClientUpdate], *, dim: int, round_index: int, late_dropouts: Sequence[int] = ()
    ) -> Aggregate:
        out = super().aggregate(updates, dim=dim, round_index=round_index, late_dropouts=late_dropouts)
        metrics = {**out.metrics, "compressed_upload_bytes_per_client": self.upload_bytes(dim)}
        return Aggregate(out.vector, out.total_weight, out.num_clients, metrics)


class TopK(_Compressor):
    """Each client sends only its ``fraction`` largest-magnitude coordinates (values + 32-bit indices)."""

    def __init__(self, inner: Aggregator, fraction: float) -> None:
        if not 0 < fraction <= 1:
            raise ConfigError("compression.fraction", f"must lie in (0, 1], got {fraction}")
        super().__init__(inner)
        self.fraction = float(fraction)

    def transform(self, update: ClientUpdate, *, round_index: int) -> ClientUpdate:
        return ClientUpdate(update.client_id, topk_sparsify(update.delta, self.fraction), update.num_examples,
                            update.metrics)

    def upload_bytes(self, dim: int) -> float:
        k = max(1, math.ceil(self.fraction * dim))
        return float(8 * k if k < dim else 4 * dim)


class Quantize(_Compressor):
    """Each client sends ``ceil(log2 levels)`` bits per coordinate plus one float32 scale."""

    def __init__(self, inner: Aggregator, levels: int) -> None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ConfigError("compression.levels", f"must be an integer >= 2, got {levels!r}")
        super().__init__(inner)
        self.levels = levels

    def transform(self, update: ClientUpdate, *, round_index: int) -> ClientUpdate:
        return ClientUpdate(update.client_id, quantize_levels(update.delta, self.levels), update.num_examples,
                            update.metrics)

    def upload_bytes(self, dim: int) -> float:
        return float(math.ceil(dim * math.ceil(math.log2(self.levels)) / 8) + 4)


def wrap_compression(inner: Aggregator, method: str, *, fraction: float = 0.1, levels: int = 16) -> Aggregator:
    """``inner`` behind the compression stage that ``compression.method`` names (``"none"``: unchanged)."""
    if method == "none":
        return inner
    if method == "topk":
        return TopK(inner, fraction)
    if method == "quantize":
        return Quantize(inner, levels)
    raise ConfigError("compression.method", f"unknown method {method!r}; allowed: none, topk, quantize")
