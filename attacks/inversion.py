"""Gradient-inversion attacks: recover a client's training inputs from what the server observes.

The adversary is an honest-but-curious server. It knows the model architecture and the global weights
it broadcast, and it observes one vector in fedshield's layout (:class:`fl.layout.ParamLayout`):

* ``kind="gradient"``: FedSGD's ``-gradient`` of the mean cross-entropy over the client's batch
  (:func:`fl.client.local_gradient`);
* ``kind="update"``: FedAvg's ``w_local - w_global`` after local SGD with a known
  :class:`fl.client.TrainConfig` (:func:`fl.client.local_train`).

Attacks (each one optimises dummy inputs until their simulated observation matches the real one):

* **DLG** (Zhu et al. 2019): L2 distance, dummy inputs *and* soft dummy labels, L-BFGS;
* **iDLG** (Zhao et al. 2020): labels read off the last layer's gradient first, then DLG on inputs only;
* **IG**, Inverting Gradients (Geiping et al. 2020): cosine distance + total-variation prior, signed
  Adam with step decay, inputs clamped to the data range;
* FedAvg updates are simulated by unrolling the local SGD steps differentiably (Geiping et al.'s
  "fedavg" setting; Dimitrov et al. 2022);
* adaptive variants that know the defence recorded in the :class:`Observation` (clipping, top-k
  sparsification, quantisation, Gaussian noise, secure aggregation over ``num_summed`` clients).

Every optimisation runs several restarts from seeded initialisations and keeps the best; a restart
whose objective turns NaN/inf is replaced by a fresh initialisation (the divergence guard).

A note on clipping: with cross-entropy every parameter's gradient is linear in ``softmax - y``, so
DLG's learned soft labels (and IG's scale-free cosine) absorb a clipping factor on their own; only an
attacker with fixed labels and an L2 objective (iDLG) needs to clip its simulated vector.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.func import functional_call
from tqdm import tqdm

from attacks.metrics import AttackError, AttackParameterError
from fl.client import TrainConfig, local_gradient, local_train
from fl.layout import ParamLayout

__all__ = [
    "METHODS",
    "AttackConfigError",
    "DivergenceError",
    "InversionError",
    "InversionResult",
    "Observation",
    "ObservationError",
    "ReconstructionScore",
    "add_noise",
    "aggregate_observations",
    "apply_defences",
    "attack",
    "best_match_psnr",
    "clip_update",
    "dlg",
    "idlg",
    "infer_label_counts",
    "infer_labels",
    "inverting_gradients",
    "observe_gradient",
    "observe_update",
    "quantize",
    "score_reconstruction",
    "topk",
]

Kind = Literal["gradient", "update"]
Aggregate = Literal["mean", "sum"]
Method = Literal["auto", "dlg", "idlg", "ig"]
METHODS: tuple[str, ...] = ("auto", "dlg", "idlg", "ig")
#: ``callback(restart, iteration, inputs, objective)``, called as the optimisation proceeds.
Callback = Callable[[int, int, torch.Tensor, float], None]

# L-BFGS runs this many iterations per ``step`` call between our divergence / tolerance checks.
_LBFGS_CHUNK = 10


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class InversionError(AttackError):
    """Base of every error raised by :mod:`attacks.inversion`."""


class ObservationError(InversionError, AttackParameterError):
    """An observation is inconsistent: wrong shapes or dtypes, or settings outside their range."""


class AttackConfigError(InversionError, AttackParameterError):
    """An attack was asked for with an unknown method or an invalid budget."""


class DivergenceError(InversionError, RuntimeError):
    """Every restart of an attack diverged (its objective became NaN or infinite)."""


# --------------------------------------------------------------------------------------------
# What the adversary observes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Observation:
    """What the server sees of one round, plus the defence settings an adaptive attacker may use.

    ``vector`` is in fedshield's convention: ``-gradient`` (``kind="gradient"``) or
    ``w_local - w_global`` (``kind="update"``, trained with ``train``; ``train_seed`` is the client's
    minibatch-order seed when known, otherwise minibatches are assumed to be taken in order).
    ``batch_size`` is the number of examples each client used.

    Defence record: ``clip`` is the L2 bound each client's vector was clipped to (before summation),
    ``noise_std`` the per-coordinate std of Gaussian noise in the observed vector, ``topk_mask`` the
    coordinates actually sent (others read as 0), ``quantization_levels`` the number of levels of the
    uniform quantiser the observed vector went through, and ``num_summed`` the number of clients whose
    vectors were combined (their ``aggregate``: mean or sum) before the server saw them.
    """

    model: nn.Module
    weights: np.ndarray
    vector: np.ndarray
    feature_shape: tuple[int, ...]
    batch_size: int
    kind: Kind = "gradient"
    train: TrainConfig | None = None
    train_seed: int | None = None
    clip: float | None = None
    noise_std: float | None = None
    topk_mask: torch.Tensor | None = None
    quantization_levels: int | None = None
    num_summed: int = 1
    aggregate: Aggregate = "mean"
    layout: ParamLayout = field(init=False, repr=False)
    num_classes: int = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise ObservationError(f"model must be a torch.nn.Module, got {type(self.model).__name__}")
        layout = ParamLayout.from_module(self.model)
        object.__setattr__(self, "layout", layout)
        object.__setattr__(self, "weights", _as_vector(self.weights, layout.size, "weights"))
        object.__setattr__(self, "vector", _as_vector(self.vector, layout.size, "observed vector"))
        object.__setattr__(self, "feature_shape", tuple(int(d) for d in self.feature_shape))
        _check_int(self.batch_size, "batch_size", 1)
        _check_int(self.num_summed, "num_summed", 1)
        if self.kind not in ("gradient", "update"):
            raise ObservationError(f"kind must be 'gradient' or 'update', got {self.kind!r}")
        if self.aggregate not in ("mean", "sum"):
            raise ObservationError(f"aggregate must be 'mean' or 'sum', got {self.aggregate!r}")
        if self.kind == "update" and self.train is None:
            raise ObservationError("kind='update' needs the client's TrainConfig in train=")
        if self.train is not None and not isinstance(self.train, TrainConfig):
            raise ObservationError(f"train must be a fl.client.TrainConfig, got {type(self.train).__name__}")
        if self.clip is not None and not (math.isfinite(self.clip) and self.clip > 0):
            raise ObservationError(f"clip must be a positive finite bound, got {self.clip}")
        if self.noise_std is not None and not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ObservationError(f"noise_std must be finite and >= 0, got {self.noise_std}")
        if self.quantization_levels is not None:
            _check_int(self.quantization_levels, "quantization_levels", 2)
        if self.topk_mask is not None:
            mask = torch.as_tensor(self.topk_mask)
            if mask.dtype != torch.bool or tuple(mask.shape) != (layout.size,):
                raise ObservationError(
                    f"topk_mask must be a bool vector of shape ({layout.size},), "
                    f"got dtype {mask.dtype} shape {tuple(mask.shape)}"
                )
            if not bool(mask.any()):
                raise ObservationError("topk_mask selects no coordinate: nothing was sent")
            object.__setattr__(self, "topk_mask", mask)
        object.__setattr__(self, "num_classes", self._probe_num_classes(layout))

    def _probe_num_classes(self, layout: ParamLayout) -> int:
        params = _unflatten(torch.from_numpy(self.weights), layout)
        try:
            with torch.no_grad():
                out = functional_call(self.model, params, (torch.zeros(1, *self.feature_shape),))
        except RuntimeError as err:
            raise ObservationError(
                f"the model cannot take inputs of feature shape {self.feature_shape}: {err}"
            ) from err
        if out.ndim != 2 or out.shape[1] < 2:
            raise ObservationError(
                f"gradient inversion needs a classifier with >= 2 logits, model returned shape {tuple(out.shape)}"
            )
        return int(out.shape[1])

    @property
    def total_batch(self) -> int:
        """How many examples stand behind the observed vector (all summed clients together)."""
        return self.batch_size * self.num_summed

    @property
    def defences(self) -> tuple[str, ...]:
        """Names of the defences recorded in this observation, in pipeline order."""
        present = {
            "clip": self.clip is not None,
            "noise": bool(self.noise_std),
            "topk": self.topk_mask is not None,
            "quant": self.quantization_levels is not None,
            "secagg": self.num_summed > 1,
        }
        return tuple(name for name, on in present.items() if on)

    def __repr__(self) -> str:
        # The observed vector is private data: never print its values.
        return (
            f"Observation(kind={self.kind!r}, dim={self.layout.size}, feature_shape={self.feature_shape}, "
            f"batch_size={self.batch_size}, num_summed={self.num_summed}, defences={self.defences})"
        )


@dataclass(frozen=True, eq=False)
class InversionResult:
    """An attack's guess and how it was reached.

    ``inputs`` has shape ``(num_clients * batch_size, *feature_shape)``, client ``k``'s slots being
    ``k * batch_size : (k + 1) * batch_size``; ``labels`` are the recovered (or optimised) labels.
    ``restart_losses`` holds the final objective of every attempt, NaN for attempts that diverged.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    objective: float
    iterations: int
    restarts: int
    attacker: str
    restart_losses: tuple[float, ...]
    wall_time: float
    diverged: int = 0
    num_clients: int = 1
    batch_size: int = 1

    def client_inputs(self, client: int) -> torch.Tensor:
        """The reconstructions in the slots of summed client ``client``."""
        if not 0 <= client < self.num_clients:
            raise AttackConfigError(f"client must lie in [0, {self.num_clients}), got {client}")
        return self.inputs[client * self.batch_size : (client + 1) * self.batch_size]


def _check_int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ObservationError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ObservationError(f"{name} must be >= {minimum}, got {value}")


def _as_vector(value: object, size: int, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise ObservationError(f"{what} must be a numpy array or torch tensor, got {type(value).__name__}")
    if value.shape != (size,):
        raise ObservationError(f"{what} must have shape ({size},) to match the model's parameters, got {value.shape}")
    if not np.issubdtype(value.dtype, np.floating):
        raise ObservationError(f"{what} must hold floats, got dtype {value.dtype}")
    return np.ascontiguousarray(value, dtype=np.float32)


def _unflatten(flat: torch.Tensor, layout: ParamLayout) -> dict[str, torch.Tensor]:
    return {
        name: flat[offset : offset + math.prod(shape)].view(shape)
        for name, shape, offset in zip(layout.names, layout.shapes, layout.offsets, strict=True)
    }


# --------------------------------------------------------------------------------------------
# Producing observations from fedshield's own pipeline
# --------------------------------------------------------------------------------------------


def _client_arrays(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    xa = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    ya = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if xa.ndim < 2 or xa.shape[0] < 1:
        raise ObservationError(f"x must have shape (batch >= 1, *features), got {xa.shape}")
    if ya.shape != (xa.shape[0],):
        raise ObservationError(f"y must have shape ({xa.shape[0]},), got {ya.shape}")
    return np.ascontiguousarray(xa, dtype=np.float32), ya.astype(np.int64)


def observe_gradient(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    weights: np.ndarray | None = None,
) -> Observation:
    """What the server sees when a client holding ``(x, y)`` runs FedSGD's :func:`fl.client.local_gradient`."""
    xa, ya = _client_arrays(x, y)
    layout = ParamLayout.from_module(model)
    w = layout.flatten(model) if weights is None else _as_vector(weights, layout.size, "weights")
    sent = local_gradient(model, layout, w, xa, ya, task="classification", client_id=0)
    layout.load_into(model, w)
    return Observation(model, w, sent.delta, tuple(xa.shape[1:]), int(xa.shape[0]), "gradient")


def observe_update(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    config: TrainConfig,
    *,
    weights: np.ndarray | None = None,
    seed: int = 0,
    seed_known: bool = True,
) -> Observation:
    """What the server sees when a client holding ``(x, y)`` runs FedAvg's :func:`fl.client.local_train`.

    ``seed`` drives the client's minibatch order; ``seed_known=False`` hides it from the attacker.
    """
    xa, ya = _client_arrays(x, y)
    layout = ParamLayout.from_module(model)
    w = layout.flatten(model) if weights is None else _as_vector(weights, layout.size, "weights")
    sent = local_train(model, layout, w, xa, ya, config, task="classification", client_id=0, seed=seed)
    layout.load_into(model, w)  # local_train used the model as scratch space
    return Observation(
        model, w, sent.delta, tuple(xa.shape[1:]), int(xa.shape[0]), "update", config, seed if seed_known else None
    )


def aggregate_observations(observations: Sequence[Observation], *, aggregate: Aggregate = "mean") -> Observation:
    """Secure aggregation's view: only the mean (or sum) of several clients' vectors is revealed.

    The clients must share model, weights, kind, batch size and training settings; per-client clipping
    and noise are carried over (noise std scaled to the aggregate), but top-k and quantisation are
    applied to the aggregate with :func:`apply_defences`, not before.
    """
    if not observations:
        raise ObservationError("aggregate_observations needs at least one observation")
    first = observations[0]
    for other in observations[1:]:
        same = (
            other.model is first.model
            and np.array_equal(other.weights, first.weights)
            and (other.kind, other.batch_size, other.train, other.feature_shape, other.clip, other.noise_std)
            == (first.kind, first.batch_size, first.train, first.feature_shape, first.clip, first.noise_std)
        )
        if not same:
            raise ObservationError("aggregated clients must share model, weights, kind, batch size and defences")
    if any(o.topk_mask is not None or o.quantization_levels is not None or o.num_summed != 1 for o in observations):
        raise ObservationError("aggregate single-client observations before sparsifying or quantising")
    n = len(observations)
    total = np.sum([o.vector.astype(np.float64) for o in observations], axis=0)
    vector = (total / n if aggregate == "mean" else total).astype(np.float32)
    noise = None
    if first.noise_std is not None:
        noise = first.noise_std / math.sqrt(n) if aggregate == "mean" else first.noise_std * math.sqrt(n)
    train_seed = first.train_seed if all(o.train_seed == first.train_seed for o in observations) else None
    return replace(first, vector=vector, num_summed=n, aggregate=aggregate, noise_std=noise, train_seed=train_seed)


# --------------------------------------------------------------------------------------------
# Defence transforms (numpy, on fedshield's float32 vectors)
# --------------------------------------------------------------------------------------------


def _float_vector(vec: np.ndarray, what: str = "vec") -> np.ndarray:
    arr = np.asarray(vec)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.floating):
        raise ObservationError(f"{what} must be a 1-D float vector, got shape {arr.shape} dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def clip_update(vec: np.ndarray, bound: float) -> np.ndarray:
    """Scale ``vec`` down to L2 norm ``bound`` if it is longer (DP-FedAvg's per-client clipping)."""
    arr = _float_vector(vec)
    if not (math.isfinite(bound) and bound > 0):
        raise ObservationError(f"clip bound must be positive and finite, got {bound}")
    norm = float(np.linalg.norm(arr.astype(np.float64)))
    scale = min(1.0, bound / norm) if norm > 0 else 1.0
    return (arr * np.float32(scale)).astype(np.float32)


def topk(vec: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``ceil(fraction * d)`` largest-magnitude coordinates; return the sent vector and its mask."""
    arr = _float_vector(vec)
    if not 0 < fraction <= 1:
        raise ObservationError(f"top-k fraction must lie in (0, 1], got {fraction}")
    k = max(1, math.ceil(fraction * arr.size))
    keep = np.argsort(-np.abs(arr), kind="stable")[:k]
    mask = np.zeros(arr.size, dtype=bool)
    mask[keep] = True
    return np.where(mask, arr, np.float32(0)).astype(np.float32), mask


def add_noise(vec: np.ndarray, std: float, generator: np.random.Generator | torch.Generator) -> np.ndarray:
    """``vec`` plus i.i.d. N(0, std²) noise drawn from ``generator`` (numpy or torch)."""
    arr = _float_vector(vec)
    if not (math.isfinite(std) and std >= 0):
        raise ObservationError(f"noise std must be finite and >= 0, got {std}")
    if isinstance(generator, torch.Generator):
        noise = torch.randn(arr.size, generator=generator, dtype=torch.float64).numpy()
    elif isinstance(generator, np.random.Generator):
        noise = generator.standard_normal(arr.size)
    else:
        raise ObservationError(f"generator must be a numpy or torch Generator, got {type(generator).__name__}")
    return (arr + std * noise).astype(np.float32)


def quantize(vec: np.ndarray, levels: int) -> np.ndarray:
    """Round every coordinate to the nearest of ``levels`` evenly spaced values on ``[-m, m]``, m = max |vec|.

    Returns the dequantised vector (what the server decodes). With an odd number of levels 0 is a level,
    so small coordinates vanish; the largest magnitude is always represented exactly.
    """
    arr = _float_vector(vec)
    _check_int(levels, "quantization levels", 2)
    top = float(np.abs(arr).max()) if arr.size else 0.0
    if top == 0:
        return np.zeros_like(arr)
    step = 2 * top / (levels - 1)
    index = np.clip(np.rint((arr.astype(np.float64) + top) / step), 0, levels - 1)
    return (index * step - top).astype(np.float32)


def apply_defences(
    observation: Observation,
    *,
    clip: float | None = None,
    noise_std: float | None = None,
    topk_fraction: float | None = None,
    quantization_levels: int | None = None,
    seed: int = 0,
) -> Observation:
    """Pass the observed vector through fedshield's privacy stages (clip → noise → top-k → quantise).

    The returned observation records each stage, which is what an adaptive attacker reads. Clipping is
    per client, so it must happen before :func:`aggregate_observations`.
    """
    vec = observation.vector
    changes: dict[str, object] = {}
    if clip is not None:
        if observation.num_summed > 1:
            raise ObservationError("clip each client's observation before aggregating (clipping is per client)")
        vec = clip_update(vec, clip)
        changes["clip"] = float(clip)
    if noise_std is not None:
        vec = add_noise(vec, noise_std, np.random.default_rng(seed))
        previous = observation.noise_std or 0.0
        changes["noise_std"] = math.sqrt(previous**2 + noise_std**2)
    if topk_fraction is not None:
        vec, mask = topk(vec, topk_fraction)
        changes["topk_mask"] = torch.from_numpy(mask)
    if quantization_levels is not None:
        if observation.topk_mask is not None or topk_fraction is not None:
            mask_np = np.asarray(changes.get("topk_mask", observation.topk_mask))
            vec = np.where(mask_np, quantize(vec[mask_np], quantization_levels)[np.cumsum(mask_np) - 1], 0)
            vec = vec.astype(np.float32)
        else:
            vec = quantize(vec, quantization_levels)
        changes["quantization_levels"] = int(quantization_levels)
    return replace(observation, vector=vec, **changes)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Label recovery (iDLG and its batch extension)
# --------------------------------------------------------------------------------------------


def _last_layer(observation: Observation) -> tuple[slice | None, slice]:
    """Slices of the last linear layer's bias (if any) and weight in the flat vector."""
    layout, classes = observation.layout, observation.num_classes
    segments = layout.segments()
    shapes = layout.shapes
    if shapes[-1] == (classes,) and len(shapes) >= 2 and len(shapes[-2]) == 2 and shapes[-2][0] == classes:
        return slice(segments[-1][1], segments[-1][2]), slice(segments[-2][1], segments[-2][2])
    if len(shapes[-1]) == 2 and shapes[-1][0] == classes:
        return None, slice(segments[-1][1], segments[-1][2])
    raise InversionError(f"cannot locate the last linear layer ({classes} outputs) in parameters {layout.names}")


def _label_signal(observation: Observation) -> np.ndarray:
    """Per class, a positive multiple of the summed last-layer bias gradient (0 where unknown).

    Cross-entropy after softmax gives ``dL/db_c = p_c - 1[y = c]`` per example: negative exactly for
    the true class. Without a (sent) bias, row sums of the weight gradient carry the same sign when the
    penultimate activations are non-negative (sigmoid, ReLU), as in Zhao et al. (2020).
    """
    # Both -gradient and w_local - w_global point against the gradient: flip once.
    grad = -observation.vector.astype(np.float64)
    mask = None if observation.topk_mask is None else observation.topk_mask.numpy()
    bias, weight = _last_layer(observation)
    classes = observation.num_classes
    signal = np.zeros(classes)
    if bias is not None:
        signal = grad[bias].copy()
        if mask is None or mask[bias].all():
            return signal
    rows = grad[weight].reshape(classes, -1)
    if mask is not None:
        rows = rows * mask[weight].reshape(classes, -1)
    if bias is None or not (signal < 0).any():
        return np.asarray(rows.sum(axis=1))
    return signal


def infer_label_counts(observation: Observation, *, bounds: tuple[float, float] | None = (0.0, 1.0)) -> np.ndarray:
    """How many examples of each class stand behind the observation (all summed clients together).

    Batch size 1 is iDLG's rule: the one negative bias-gradient entry. For larger batches the mean bias
    gradient is ``g_c = m_c - n_c / B`` with ``m_c`` the mean softmax output. When the gradient's scale is
    known (no clipping, the whole bias sent), ``m`` is estimated by the model's mean output on random
    inputs in ``bounds`` (the "impression" of Wainakh et al.'s LLG+) and ``n_c ≈ B (m_c - g_c)``.
    Otherwise the estimate is scale-free: absent classes have ``g_c = m_c > 0``, so the mean positive
    entry stands in for ``m`` and ``n_c ∝ m - g_c`` on the negative entries (Yin et al. 2021).
    Either estimate is apportioned to ``B`` examples with at least one per negative entry.
    """
    total = observation.total_batch
    signal = _label_signal(observation)
    counts = np.zeros(observation.num_classes, dtype=np.int64)
    negative = signal < 0
    if total == 1 or not negative.any():
        counts[int(np.argmin(signal))] = total
        return counts
    scale = _gradient_scale(observation)
    if scale is not None:
        estimate = total * (_impression(observation, bounds) - scale * signal)
    else:
        positive = signal[signal > 0]
        mass = float(positive.mean()) if positive.size else 0.0
        weights = np.where(negative, mass - signal, 0.0)
        estimate = weights / weights.sum() * total
    return _apportion(estimate, total, negative)


def _gradient_scale(observation: Observation) -> float | None:
    """The factor turning ``-vector`` into the mean per-example gradient, when it is known."""
    bias, _ = _last_layer(observation)
    if observation.clip is not None or bias is None:
        return None
    if observation.topk_mask is not None and not bool(observation.topk_mask[bias].all()):
        return None
    scale = 1.0 if observation.aggregate == "mean" else 1.0 / observation.num_summed
    if observation.kind == "update":
        cfg = observation.train
        assert cfg is not None  # noqa: S101 - guaranteed by Observation's validation
        n = observation.batch_size
        per_epoch = 1 if cfg.batch_size == 0 else math.ceil(n / min(cfg.batch_size, n))
        # Each local step moves the weights by about -lr times the mean gradient.
        scale /= cfg.lr * cfg.epochs * per_epoch
    return scale


def _impression(observation: Observation, bounds: tuple[float, float] | None, samples: int = 256) -> np.ndarray:
    """The model's mean softmax output on random inputs: a stand-in for its output on the client's data."""
    generator = torch.Generator().manual_seed(0)
    shape = (samples, *observation.feature_shape)
    if bounds is None:
        x = torch.randn(shape, generator=generator)
    else:
        x = bounds[0] + (bounds[1] - bounds[0]) * torch.rand(shape, generator=generator)
    params = _unflatten(torch.from_numpy(observation.weights), observation.layout)
    with torch.no_grad():
        probs = F.softmax(functional_call(observation.model, params, (x,)), dim=1)
    return np.asarray(probs.mean(dim=0).double().numpy())


def _apportion(estimate: np.ndarray, total: int, negative: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total`` close to ``estimate``, at least one on every negative entry."""
    estimate = np.maximum(estimate, 0.0)
    counts = np.floor(estimate).astype(np.int64)
    counts[negative & (counts == 0)] = 1
    while counts.sum() > total:
        counts[int(np.argmax(np.where(counts > 0, counts - estimate, -np.inf)))] -= 1
    while counts.sum() < total:
        counts[int(np.argmax(estimate - counts))] += 1
    return counts


def infer_labels(observation: Observation, *, bounds: tuple[float, float] | None = (0.0, 1.0)) -> np.ndarray:
    """The recovered labels as a sorted multiset of ``total_batch`` class indices (int64)."""
    counts = infer_label_counts(observation, bounds=bounds)
    return np.repeat(np.arange(counts.size, dtype=np.int64), counts)


# --------------------------------------------------------------------------------------------
# Differentiable simulation of what the server would observe for dummy inputs
# --------------------------------------------------------------------------------------------


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class _Simulator:
    """Maps dummy inputs and (soft) labels to the vector the server would observe, differentiably."""

    def __init__(self, observation: Observation, *, clients: int, clip: float | None) -> None:
        self.obs = observation
        self.clients = clients
        self.clip = clip
        layout = observation.layout
        flat = torch.from_numpy(observation.weights.copy())
        self.names = layout.names
        self.start = [
            flat[o : o + math.prod(s)].view(s).clone().requires_grad_(True)
            for o, s in zip(layout.offsets, layout.shapes, strict=True)
        ]

    def _loss(self, params: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(self.obs.model, dict(zip(self.names, params, strict=True)), (x,))
        return _soft_cross_entropy(logits, y)

    def _gradient(self, params: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        grads = torch.autograd.grad(self._loss(params, x, y), params, create_graph=True)
        return list(grads)

    def _client_vector(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.obs.kind == "gradient":
            return -torch.cat([g.reshape(-1) for g in self._gradient(self.start, x, y)])
        return self._unrolled_update(x, y)

    def _unrolled_update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``w_local - w_global`` after :func:`fl.client.local_train`'s SGD, kept on the autograd tape."""
        cfg = self.obs.train
        assert cfg is not None  # noqa: S101 - guaranteed by Observation's validation
        n = int(x.shape[0])
        batch = n if cfg.batch_size == 0 else min(cfg.batch_size, n)
        generator = torch.Generator().manual_seed(self.obs.train_seed or 0)
        params = list(self.start)
        buffers: list[torch.Tensor] | None = None
        for _ in range(cfg.epochs):
            if batch < n and self.obs.train_seed is not None:
                order = torch.randperm(n, generator=generator)
            else:
                order = torch.arange(n)
            for begin in range(0, n, batch):
                idx = order[begin : begin + batch]
                grads = self._gradient(params, x[idx], y[idx])
                steps = []
                for p, g, anchor in zip(params, grads, self.start, strict=True):
                    if cfg.mu > 0:
                        g = g + cfg.mu * (p - anchor)
                    if cfg.weight_decay > 0:
                        g = g + cfg.weight_decay * p
                    steps.append(g)
                if cfg.momentum > 0:
                    buffers = steps if buffers is None else [cfg.momentum * b + s for b, s in zip(buffers, steps, strict=True)]
                    steps = buffers
                params = [p - cfg.lr * s for p, s in zip(params, steps, strict=True)]
        return torch.cat([(p - s).reshape(-1) for p, s in zip(params, self.start, strict=True)])

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.clients == 1 or (self.obs.kind == "gradient" and self.clip is None):
            # Equal-size clients: the mean of their mean gradients is the mean gradient of the union.
            vector = self._client_vector(x, y)
            vector = self._clip(vector) if self.clients == 1 else vector
            return vector * self.clients if self.obs.aggregate == "sum" else vector
        per = int(x.shape[0]) // self.clients
        vectors = [
            self._clip(self._client_vector(x[k * per : (k + 1) * per], y[k * per : (k + 1) * per]))
            for k in range(self.clients)
        ]
        total = torch.stack(vectors).sum(dim=0)
        return total if self.obs.aggregate == "sum" else total / self.clients

    def _clip(self, vector: torch.Tensor) -> torch.Tensor:
        if self.clip is None:
            return vector
        return vector * torch.clamp(self.clip / (vector.norm() + 1e-12), max=1.0)


# --------------------------------------------------------------------------------------------
# Objectives (module-level so tests can wrap them)
# --------------------------------------------------------------------------------------------


def _l2_distance(simulated: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance, normalised by the observation's energy so tolerances are scale-free."""
    simulated, observed = simulated.double(), observed.double()
    return ((simulated - observed) ** 2).sum() / (observed.pow(2).sum() + 1e-30)


def _cosine_distance(simulated: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    # float64 reductions: in float32 the distance rounds to 0 long before the inputs have converged.
    simulated, observed = simulated.double(), observed.double()
    return 1 - (simulated * observed).sum() / (simulated.norm() * observed.norm() + 1e-30)


def _bin_distance(simulated: torch.Tensor, observed: torch.Tensor, half_step: float) -> torch.Tensor:
    """How far ``simulated`` lies outside the quantisation bins of ``observed`` (0 inside every bin)."""
    simulated, observed = simulated.double(), observed.double()
    outside = torch.relu((simulated - observed).abs() - half_step)
    return outside.pow(2).sum() / (observed.pow(2).sum() + 1e-30)


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    if x.ndim < 4:  # not an image batch (N, C, H, W): no spatial prior
        return x.new_zeros(())
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


# --------------------------------------------------------------------------------------------
# The attack plan and the optimisation loop
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    name: str
    optimiser: Literal["lbfgs", "adam"]
    distance: Literal["l2", "cosine", "bins"]
    learn_labels: bool
    clients: int
    clip: float | None
    mask: torch.Tensor | None
    unsent_bound: float
    half_step: float
    tv_weight: float
    restarts: int
    max_iterations: int
    lr: float


def _plan(
    observation: Observation,
    method: str,
    *,
    adaptive: bool,
    restarts: int | None,
    max_iterations: int | None,
    tv_weight: float | None,
    lr: float | None,
) -> _Plan:
    if method not in METHODS:
        raise AttackConfigError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    for value, name in ((restarts, "restarts"), (max_iterations, "max_iterations")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise AttackConfigError(f"{name} must be an int >= 1, got {value!r}")
    noisy = adaptive and bool(observation.noise_std)
    if method == "auto":
        examples = observation.total_batch if adaptive else observation.batch_size
        method = "ig" if noisy or examples > 1 else "idlg"
    base = "ig" if method == "ig" else "dlg"
    distance: Literal["l2", "cosine", "bins"] = "cosine" if base == "ig" or noisy else "l2"
    components: list[str] = []
    clip = mask = None
    half_step = unsent_bound = 0.0
    clients = 1
    if adaptive:
        if observation.clip is not None:
            clip = observation.clip
            components.append("clip")
        if noisy:
            components.append("noise")
        if observation.topk_mask is not None:
            mask = observation.topk_mask
            # Top-k also says something about what was *not* sent: none of it beat the smallest sent value.
            unsent_bound = float(np.abs(observation.vector[mask.numpy()]).min())
            components.append("topk")
        if observation.quantization_levels is not None:
            sent = observation.vector if mask is None else observation.vector[mask.numpy()]
            half_step = float(np.abs(sent).max()) / (observation.quantization_levels - 1)
            unsent_bound += half_step if mask is not None else 0.0
            if not noisy:
                distance = "bins"
            components.append("quant")
        if observation.num_summed > 1:
            clients = observation.num_summed
            components.append("secagg")
    name = method if not components else f"{method}-adaptive-{'-'.join(components)}"
    default_restarts = 2 * (2 if noisy else 1)
    default_iterations = 1000 if base == "ig" else 200
    default_tv = _default_tv(observation, mask) if noisy else 1e-6 if distance != "l2" else 0.0
    return _Plan(
        name=name,
        optimiser="adam" if base == "ig" else "lbfgs",
        distance=distance,
        learn_labels=method == "dlg",
        clients=clients,
        clip=clip,
        mask=mask,
        unsent_bound=unsent_bound,
        half_step=half_step,
        tv_weight=default_tv if tv_weight is None else float(tv_weight),
        restarts=default_restarts if restarts is None else restarts,
        max_iterations=default_iterations if max_iterations is None else max_iterations,
        lr=(0.1 if base == "ig" else 1.0) if lr is None else float(lr),
    )


def _default_tv(observation: Observation, mask: torch.Tensor | None) -> float:
    """TV weight against noise: proportional to the share of the observed energy that is noise.

    A strong prior only pays when the observation is noisy; otherwise it biases an exact solution.
    """
    sent = observation.vector if mask is None else observation.vector[mask.numpy()]
    energy = float(np.sum(sent.astype(np.float64) ** 2))
    noise_share = min(1.0, sent.size * (observation.noise_std or 0.0) ** 2 / max(energy, 1e-30))
    return float(np.clip(0.02 * noise_share, 1e-6, 1e-2))


def attack(
    observation: Observation,
    method: Method | str = "auto",
    *,
    adaptive: bool = True,
    restarts: int | None = None,
    max_iterations: int | None = None,
    seed: int = 0,
    tv_weight: float | None = None,
    lr: float | None = None,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    labels: np.ndarray | torch.Tensor | None = None,
    tol: float = 1e-10,
    progress: bool | None = None,
    callback: Callback | None = None,
) -> InversionResult:
    """Reconstruct the inputs behind ``observation``.

    ``method``: ``"dlg"``, ``"idlg"``, ``"ig"``, or ``"auto"`` (iDLG when one example stands behind a
    noise-free observation, else IG). Default budgets: 2 restarts of 200 L-BFGS iterations (DLG, iDLG)
    or 1000 Adam steps (IG), twice the restarts against noise.
    ``adaptive`` lets the attacker use the defence record: it clips its simulated vectors like the
    clients did, compares only the coordinates top-k sent, fits inside the quantisation bins, switches
    to the cosine objective with a stronger TV prior and twice the restarts against noise, and
    reconstructs all ``num_summed * batch_size`` examples behind a secure sum. A naive attacker
    (``adaptive=False``) takes the observation at face value as one client's vector.

    ``bounds`` is the data range (inputs are clamped to it; ``None`` for unbounded features);
    ``labels`` overrides label recovery; ``tol`` stops a restart once the objective falls below it;
    ``progress`` shows a tqdm bar (``None``: only on a terminal); ``callback(restart, iteration,
    inputs, objective)`` observes the optimisation. Raises :class:`AttackConfigError` on bad options
    and :class:`DivergenceError` when every restart diverged.
    """
    if not isinstance(observation, Observation):
        raise AttackConfigError(f"observation must be an Observation, got {type(observation).__name__}")
    plan = _plan(
        observation, method, adaptive=adaptive, restarts=restarts, max_iterations=max_iterations,
        tv_weight=tv_weight, lr=lr,
    )
    if bounds is not None and not bounds[0] < bounds[1]:
        raise AttackConfigError(f"bounds must be (low, high) with low < high, got {bounds}")
    count = observation.batch_size * plan.clients
    started = time.perf_counter()
    fixed_labels = None if plan.learn_labels else _fixed_labels(observation, labels, count, bounds)
    simulator = _Simulator(observation, clients=plan.clients, clip=plan.clip)
    observed = torch.from_numpy(observation.vector.copy())
    if plan.mask is not None:
        observed = observed[plan.mask]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # nothing below should draw from the global RNG; this pins it if it does
        if fixed_labels is not None and labels is None and _slots_matter(observation, plan):
            fixed_labels = _assign_labels(simulator, observed, plan, observation, fixed_labels, seed, bounds)
        best, losses, diverged = _restarts(
            simulator, observed, plan, observation, fixed_labels, count, seed, bounds, tol, progress, callback
        )
    x, y, objective, iterations = best
    return InversionResult(
        inputs=x,
        labels=y,
        objective=objective,
        iterations=iterations,
        restarts=len(losses),
        attacker=plan.name,
        restart_losses=tuple(losses),
        wall_time=time.perf_counter() - started,
        diverged=diverged,
        num_clients=plan.clients,
        batch_size=observation.batch_size,
    )


def _fixed_labels(
    observation: Observation,
    labels: np.ndarray | torch.Tensor | None,
    count: int,
    bounds: tuple[float, float] | None,
) -> torch.Tensor:
    if labels is None:
        recovered = infer_labels(observation, bounds=bounds)
        if recovered.size != count:  # a naive attacker behind a secure sum expects one client's batch
            counts = np.bincount(recovered, minlength=observation.num_classes)
            order = np.argsort(-counts, kind="stable")
            recovered = np.sort(np.resize(np.repeat(order, np.maximum(counts[order], 1)), count))
        labels = recovered
    tensor = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    if tensor.numel() != count:
        raise AttackConfigError(f"labels must hold {count} entries (one per reconstructed example), got {tensor.numel()}")
    if tensor.numel() and not (0 <= int(tensor.min()) and int(tensor.max()) < observation.num_classes):
        raise AttackConfigError(f"labels must lie in [0, {observation.num_classes})")
    return tensor


def _slots_matter(observation: Observation, plan: _Plan) -> bool:
    """Whether the simulated vector depends on which slot holds which label (not only on the multiset)."""
    cfg = observation.train
    minibatches = (
        observation.kind == "update"
        and cfg is not None
        and cfg.batch_size != 0
        and cfg.batch_size < observation.batch_size
    )
    per_client = plan.clients > 1 and (observation.kind == "update" or plan.clip is not None)
    return minibatches or per_client


def _assign_labels(
    simulator: _Simulator,
    observed: torch.Tensor,
    plan: _Plan,
    observation: Observation,
    labels: torch.Tensor,
    seed: int,
    bounds: tuple[float, float] | None,
    candidates: int = 24,
    probe_iterations: int = 10,
) -> torch.Tensor:
    """Place the recovered label multiset into slots: probe distinct orders briefly, keep the best.

    Label recovery yields a multiset, but unrolled minibatch SGD (and per-client clipping behind a
    secure sum) tells slots apart, so a wrong placement leaves a residual no input can explain.
    """
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + 999_983)
    orders: list[torch.Tensor] = []
    seen: set[tuple[int, ...]] = set()
    if math.factorial(labels.numel()) <= 4 * candidates:
        pool = (torch.tensor(p) for p in itertools.permutations(labels.tolist()))
    else:
        pool = (labels[torch.randperm(labels.numel(), generator=generator)] for _ in range(8 * candidates))
    for order in pool:
        key = tuple(order.tolist())
        if key not in seen:
            seen.add(key)
            orders.append(order)
        if len(orders) >= candidates:
            break
    if len(orders) == 1:
        return labels
    probe_plan = replace(plan, optimiser="lbfgs", lr=1.0, max_iterations=probe_iterations)
    shape = (labels.numel(), *observation.feature_shape)
    start = _initial_inputs(shape, bounds, generator).detach()
    best_order, best_value = labels, math.inf
    silent = tqdm(disable=True)
    for order in orders:
        objective = _objective_fn(simulator, observed, probe_plan, order)
        outcome = _run_lbfgs(start.clone().requires_grad_(True), None, objective, probe_plan, bounds, 0.0, 0, silent, None)
        if outcome is not None and outcome[0] < best_value:
            best_order, best_value = order, outcome[0]
    return best_order


_Best = tuple[torch.Tensor, torch.Tensor, float, int]


def _restarts(
    simulator: _Simulator,
    observed: torch.Tensor,
    plan: _Plan,
    observation: Observation,
    fixed_labels: torch.Tensor | None,
    count: int,
    seed: int,
    bounds: tuple[float, float] | None,
    tol: float,
    progress: bool | None,
    callback: Callback | None,
) -> tuple[_Best, list[float], int]:
    """Run ``plan.restarts`` converged restarts (a diverged attempt is replaced, up to as many again)."""
    shape = (count, *observation.feature_shape)
    classes = observation.num_classes
    best: _Best | None = None
    losses: list[float] = []
    diverged = 0
    attempt = 0
    bar = tqdm(total=plan.restarts * plan.max_iterations, desc=plan.name, disable=None if progress is None else not progress)
    try:
        while len(losses) - diverged < plan.restarts and attempt < 2 * plan.restarts:
            generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + attempt)
            attempt += 1
            x = _initial_inputs(shape, bounds, generator)
            label_logits = torch.randn(count, classes, generator=generator) if fixed_labels is None else None
            objective = _objective_fn(simulator, observed, plan, fixed_labels)
            runner = _run_lbfgs if plan.optimiser == "lbfgs" else _run_adam
            outcome = runner(x, label_logits, objective, plan, bounds, tol, len(losses), bar, callback)
            if outcome is None:
                diverged += 1
                losses.append(float("nan"))
                continue
            final, iterations = outcome
            losses.append(final)
            if best is None or final < best[2]:
                labels = fixed_labels if label_logits is None else label_logits.detach().argmax(dim=1)
                assert labels is not None  # noqa: S101
                xs = x.detach().clone()
                if bounds is not None:
                    xs = xs.clamp(*bounds)
                best = (xs, labels.clone(), final, iterations)
    finally:
        bar.close()
    if best is None:
        raise DivergenceError(f"all {attempt} attempts of {plan.name} diverged (objective NaN or infinite)")
    return best, losses, diverged


def _initial_inputs(
    shape: tuple[int, ...], bounds: tuple[float, float] | None, generator: torch.Generator
) -> torch.Tensor:
    if bounds is None:
        return torch.randn(shape, generator=generator).requires_grad_(True)
    low, high = bounds
    return (low + (high - low) * torch.rand(shape, generator=generator)).requires_grad_(True)


_Objective = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def _objective_fn(
    simulator: _Simulator, observed: torch.Tensor, plan: _Plan, fixed_labels: torch.Tensor | None
) -> _Objective:
    classes = simulator.obs.num_classes
    hard = None if fixed_labels is None else F.one_hot(fixed_labels, classes).to(torch.float32)

    def objective(x: torch.Tensor, label_logits: torch.Tensor | None) -> torch.Tensor:
        targets = hard if label_logits is None else F.softmax(label_logits, dim=1)
        assert targets is not None  # noqa: S101
        simulated = simulator(x, targets)
        excess = None
        if plan.mask is not None:
            # Coordinates that were not sent were at most the smallest sent magnitude.
            excess = torch.relu(simulated[~plan.mask].double().abs() - plan.unsent_bound)
            simulated = simulated[plan.mask]
        # Look the distances up at call time so that tests can wrap them (divergence injection).
        if plan.distance == "l2":
            value = _l2_distance(simulated, observed)
        elif plan.distance == "cosine":
            value = _cosine_distance(simulated, observed)
        else:
            value = _bin_distance(simulated, observed, plan.half_step) + 1e-3 * _cosine_distance(simulated, observed)
        if excess is not None:
            value = value + excess.pow(2).sum() / (observed.double().pow(2).sum() + 1e-30)
        if plan.tv_weight > 0:
            value = value + plan.tv_weight * _total_variation(x)
        return value

    return objective


class _Diverged(Exception):
    """Raised inside an optimiser step when the objective or its gradient is no longer finite."""


def _finite(value: float, *tensors: torch.Tensor | None) -> bool:
    return math.isfinite(value) and all(t is None or bool(torch.isfinite(t).all()) for t in tensors)


def _run_lbfgs(
    x: torch.Tensor,
    label_logits: torch.Tensor | None,
    objective: _Objective,
    plan: _Plan,
    bounds: tuple[float, float] | None,
    tol: float,
    restart: int,
    bar: tqdm,
    callback: Callback | None,
) -> tuple[float, int] | None:
    """DLG's optimiser: L-BFGS with a strong-Wolfe line search; ``None`` when the restart diverged."""
    variables = [x] if label_logits is None else [x, label_logits.requires_grad_(True)]
    optimiser = torch.optim.LBFGS(
        variables, lr=plan.lr, max_iter=_LBFGS_CHUNK, history_size=100,
        tolerance_grad=1e-14, tolerance_change=1e-16, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad(set_to_none=True)
        loss = objective(x, label_logits)
        # Stop at the first non-finite value: torch's line search cannot recover from one.
        if not torch.isfinite(loss):
            raise _Diverged
        loss.backward()
        if not all(v.grad is None or bool(torch.isfinite(v.grad).all()) for v in variables):
            raise _Diverged
        return loss

    done = stalled = 0
    previous = math.inf
    while done < plan.max_iterations:
        optimiser.param_groups[0]["max_iter"] = min(_LBFGS_CHUNK, plan.max_iterations - done)
        try:
            loss = float(optimiser.step(closure).detach())
        except _Diverged:
            return None
        state = optimiser.state[optimiser.param_groups[0]["params"][0]]
        ran = int(state.get("n_iter", 0)) - done
        if not _finite(loss, x, label_logits):
            return None
        bar.update(max(ran, 0))
        if callback is not None:
            callback(restart, done + ran, x.detach(), loss)
        if ran <= 0 or loss < tol:
            break
        done += ran
        # At a floor (machine precision, or the noise level) the line search only burns evaluations.
        stalled = stalled + 1 if math.isfinite(previous) and previous - loss <= 1e-9 * abs(previous) else 0
        if stalled >= 3:
            break
        previous = loss
    final = float(objective(x, label_logits).detach())
    return (final, done) if _finite(final, x, label_logits) else None


def _run_adam(
    x: torch.Tensor,
    label_logits: torch.Tensor | None,
    objective: _Objective,
    plan: _Plan,
    bounds: tuple[float, float] | None,
    tol: float,
    restart: int,
    bar: tqdm,
    callback: Callback | None,
) -> tuple[float, int] | None:
    """Inverting Gradients' optimiser: Adam on the gradient's sign, lr ÷10 at 3/8, 5/8, 7/8, clamped."""
    variables = [x] if label_logits is None else [x, label_logits.requires_grad_(True)]
    optimiser = torch.optim.Adam(variables, lr=plan.lr)
    total = plan.max_iterations
    milestones = sorted({max(1, int(total * f)) for f in (3 / 8, 5 / 8, 7 / 8)})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones=milestones, gamma=0.1)
    iterations = 0
    for iterations in range(1, total + 1):  # noqa: B007 - the count is returned
        optimiser.zero_grad(set_to_none=True)
        loss = objective(x, label_logits)
        value = float(loss.detach())
        if not _finite(value):
            return None
        loss.backward()
        for v in variables:
            if v.grad is not None:
                v.grad.sign_()
        optimiser.step()
        scheduler.step()
        if bounds is not None:
            with torch.no_grad():
                x.clamp_(*bounds)
        bar.update(1)
        if callback is not None:
            callback(restart, iterations, x.detach(), value)
        if value < tol:
            break
    final = float(objective(x, label_logits).detach())
    return (final, iterations) if _finite(final, x, label_logits) else None


# --------------------------------------------------------------------------------------------
# Named attacks
# --------------------------------------------------------------------------------------------


def dlg(observation: Observation, **options: object) -> InversionResult:
    """Deep Leakage from Gradients (Zhu et al. 2019). Options as for :func:`attack`."""
    return attack(observation, "dlg", **options)  # type: ignore[arg-type]


def idlg(observation: Observation, **options: object) -> InversionResult:
    """Improved DLG (Zhao et al. 2020): analytic labels, then DLG on inputs. Options as for :func:`attack`."""
    return attack(observation, "idlg", **options)  # type: ignore[arg-type]


def inverting_gradients(observation: Observation, **options: object) -> InversionResult:
    """Inverting Gradients (Geiping et al. 2020). Options as for :func:`attack`."""
    return attack(observation, "ig", **options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Scoring a reconstruction against the truth (the experimenter's view, not the attacker's)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReconstructionScore:
    """``per_image[i]``: PSNR of the best reconstruction of true image ``i`` (all clients, in order).

    ``target_psnr`` is the mean over the target client's images, ``best_psnr`` the best over all images
    of every summed client (the best-matching image anywhere).
    """

    target_psnr: float
    best_psnr: float
    per_image: np.ndarray


def best_match_psnr(candidates: torch.Tensor, truth: torch.Tensor, *, data_range: float = 1.0) -> np.ndarray:
    """For every true image, the PSNR (dB) of the closest candidate: ``10 log10(range² / MSE)``."""
    a = torch.as_tensor(candidates, dtype=torch.float64).flatten(1)
    b = torch.as_tensor(truth, dtype=torch.float64).flatten(1)
    if a.shape[1] != b.shape[1]:
        raise ObservationError(f"candidates have {a.shape[1]} features per example, truth {b.shape[1]}")
    mse = ((b[:, None, :] - a[None, :, :]) ** 2).mean(dim=2).min(dim=1).values
    return np.asarray(10 * torch.log10(data_range**2 / mse.clamp_min(1e-20)).numpy())


def score_reconstruction(
    result: InversionResult,
    truth: torch.Tensor | np.ndarray,
    *,
    target_client: int = 0,
    batch_size: int | None = None,
    data_range: float = 1.0,
) -> ReconstructionScore:
    """Score ``result`` against the true inputs of every summed client (concatenated client by client)."""
    true = torch.as_tensor(np.asarray(truth), dtype=torch.float64)
    per = result.batch_size if batch_size is None else batch_size
    if true.shape[0] % per or not 0 <= target_client < true.shape[0] // per:
        raise ObservationError(f"truth of {true.shape[0]} examples has no client {target_client} of batch {per}")
    per_image = best_match_psnr(result.inputs, true, data_range=data_range)
    target = per_image[target_client * per : (target_client + 1) * per]
    return ReconstructionScore(float(target.mean()), float(per_image.max()), per_image)
