"""Membership inference: was this example (or this client's data set) in the model's training set?

An attack maps what an adversary observed to one score per candidate, higher meaning "member":

* :class:`TargetQueries` — black-box query access to the attacked model: its logits on chosen examples
  with their labels (:meth:`TargetQueries.from_model`; in federated learning the server can also query
  a client's local model ``w + Δ`` rebuilt from the update it received, :func:`query_client_update`);
* :class:`ShadowPool` — the logits of k shadow models, trained by the adversary with the target's recipe
  on population data, on a set of examples, and which shadow trained on which example
  (:func:`train_shadow_pool`: each example IN for half the shadows; :func:`train_out_pool`: reference
  models that never saw the candidates, for the offline attack). :class:`TrainRecipe` and
  :func:`train_target` replay :func:`fl.client.local_train` (or DP-SGD) as the training recipe.

Attacks (all return :class:`MembershipScores`):

===================  ======================================================================  =============
``loss_threshold``   −loss or the logit-scaled confidence of the target (Yeom et al. 2018)   queries
``shadow_*``         an attack model fitted on shadow in/out outputs (Shokri et al. 2017)    queries, pool
``lira_online``      per-example Gaussian likelihood ratio, IN vs OUT (Carlini et al. 2022)  queries, pool
``lira_offline``     one-sided test against OUT models only (Carlini et al. 2022)            queries, pool
``client_level``     per-example scores aggregated over each client's data set               any scores
===================  ======================================================================  =============

Every statistic is built on the logit-scaled confidence φ = log p_y − log(1 − p_y), which Carlini et al.
show is close to Gaussian across retrainings; it is computed from logits as ``z_y − logsumexp(z_{j≠y})``,
so it never rounds to ±∞ or ties the way ``log(p)`` of a saturated softmax does.

Randomness (shadow inclusion draws, per-shadow training seeds) comes from ``numpy``'s ``SeedSequence``
and training uses :mod:`fl.client`'s seeded generators, so every result is a deterministic function of
the inputs and ``seed``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy.special import log_softmax, logsumexp
from scipy.stats import norm
from torch import nn

from attacks.metrics import AttackParameterError, MembershipReport
from dp.rng import CryptoRNG
from fl.client import TrainConfig, local_train
from fl.dpsgd import DPSGDConfig, local_train_dpsgd
from fl.layout import ParamLayout
from fl.models import build_model
from fl.types import ClientUpdate

__all__ = [
    "ATTACKS",
    "InsufficientShadowsError",
    "MembershipAttackError",
    "MembershipScores",
    "Model",
    "ShadowPool",
    "ShapeMismatchError",
    "TargetQueries",
    "TrainFn",
    "TrainRecipe",
    "client_level_attack",
    "cross_entropy_losses",
    "lira_offline",
    "lira_online",
    "local_model_from_update",
    "logit_scaled_confidence",
    "loss_threshold_attack",
    "query_client_update",
    "query_logits",
    "shadow_model_attack",
    "train_out_pool",
    "train_shadow_pool",
    "train_target",
]

ATTACKS: tuple[str, ...] = (
    "loss_threshold",
    "shadow_classifier",
    "shadow_threshold",
    "lira_online",
    "lira_offline",
    "client_level",
)

Model = nn.Module | Callable[[np.ndarray], np.ndarray]
"""Something that can be queried: a torch module, or a function from inputs to logits."""

TrainFn = Callable[[np.ndarray, np.ndarray, int], Model]
"""``train_fn(x, y, seed) -> model``: the training recipe the adversary replays for shadow models."""

# Variances below this (identical shadow confidences) would give infinite likelihood ratios.
_VAR_FLOOR = 1e-8


class MembershipAttackError(AttackParameterError):
    """A membership attack was given inputs it cannot use (an :class:`attacks.metrics.AttackError` and a ``ValueError``)."""


class ShapeMismatchError(MembershipAttackError):
    """Arrays that must describe the same examples, models or classes disagree in shape or content."""


class InsufficientShadowsError(MembershipAttackError):
    """Too few shadow models include (or exclude) some example for the requested estimate."""


# --------------------------------------------------------------------------------------------
# Statistics of logits
# --------------------------------------------------------------------------------------------


def _check_logits_labels(
    logits: np.ndarray, labels: np.ndarray, what: str = "logits"
) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim < 2 or logits.shape[-1] < 2:
        raise ShapeMismatchError(
            f"{what} must have shape (..., n, C) with C >= 2 classes, got {logits.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != logits.shape[-2]:
        raise ShapeMismatchError(
            f"labels must have shape ({logits.shape[-2]},) to match {what} of shape {logits.shape}, got {labels.shape}"
        )
    if labels.dtype.kind not in "iu":
        raise MembershipAttackError(f"labels must be integers, got dtype {labels.dtype}")
    num_classes = logits.shape[-1]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise MembershipAttackError(
            f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]"
        )
    if logits.dtype.kind not in "biuf":
        raise MembershipAttackError(f"{what} must be numeric, got dtype {logits.dtype}")
    logits = logits.astype(np.float64, copy=False)
    if not np.isfinite(logits).all():
        raise MembershipAttackError(f"{what} contain NaN or infinite values")
    return logits, labels.astype(np.int64, copy=False)


def logit_scaled_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """φ = log p_y − log(1 − p_y) of softmax(logits), computed as ``z_y − logsumexp(z_{j≠y})``.

    ``logits`` has shape ``(..., n, C)`` (leading axes, e.g. shadow models, are kept) and ``labels``
    shape ``(n,)``; returns float64 of shape ``(..., n)``. Exact in float64 for any finite logits: a
    confident prediction gives a large finite φ instead of ``log(1 − 1) = −∞``.
    """
    z, y = _check_logits_labels(logits, labels)
    true = np.take_along_axis(z, np.broadcast_to(y[:, None], (*z.shape[:-1], 1)), axis=-1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, np.broadcast_to(y[:, None], (*z.shape[:-1], 1)), -np.inf, axis=-1)
    return np.asarray(true - logsumexp(others, axis=-1), dtype=np.float64)


def cross_entropy_losses(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy ``logsumexp(z) − z_y`` (float64, shape ``(..., n)``)."""
    z, y = _check_logits_labels(logits, labels)
    true = np.take_along_axis(z, np.broadcast_to(y[:, None], (*z.shape[:-1], 1)), axis=-1)[..., 0]
    return np.asarray(logsumexp(z, axis=-1) - true, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# What the adversary observes
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def query_logits(model: Model, x: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
    """The model's logits on ``x`` as float64 ``(n, C)``; a torch module is queried in eval mode."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim < 2:
        raise ShapeMismatchError(f"x must have shape (n, *features), got {x.shape}")
    if not isinstance(model, nn.Module):
        return np.asarray(model(x), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        chunks = [
            model(torch.from_numpy(x[i : i + batch_size])).double().numpy()
            for i in range(0, len(x), batch_size)
        ]
    finally:
        model.train(was_training)
    if not chunks:
        raise ShapeMismatchError("x holds no examples to query")
    return np.concatenate(chunks)


@dataclass(frozen=True, eq=False)
class TargetQueries:
    """The attacked model's logits ``(n, C)`` on n candidate examples and their labels ``(n,)``."""

    logits: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        logits, labels = _check_logits_labels(self.logits, self.labels)
        if logits.ndim != 2:
            raise ShapeMismatchError(f"target logits must have shape (n, C), got {logits.shape}")
        object.__setattr__(self, "logits", logits)
        object.__setattr__(self, "labels", labels)

    @classmethod
    def from_model(cls, model: Model, x: np.ndarray, y: np.ndarray) -> TargetQueries:
        """Query ``model`` on the candidates ``x`` with labels ``y``."""
        if np.shape(y)[:1] != np.shape(x)[:1]:
            raise ShapeMismatchError(f"x has {np.shape(x)[0]} rows but y has shape {np.shape(y)}")
        return cls(query_logits(model, x), np.asarray(y))

    @property
    def num_examples(self) -> int:
        return int(self.labels.shape[0])

    def confidences(self) -> np.ndarray:
        """The logit-scaled confidence φ of every candidate, ``(n,)``."""
        return logit_scaled_confidence(self.logits, self.labels)


@dataclass(frozen=True, eq=False)
class ShadowPool:
    """k shadow models' logits ``(k, n, C)`` on n examples, their labels, and who trained on what.

    ``in_mask[j, i]`` is True when shadow j trained on example i; ``None`` means no shadow did (a pool
    of OUT models only, enough for :func:`lira_offline`). φ of every entry is precomputed.
    """

    logits: np.ndarray
    labels: np.ndarray
    in_mask: np.ndarray | None = None
    confidences: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        logits, labels = _check_logits_labels(self.logits, self.labels, "shadow logits")
        if logits.ndim != 3 or logits.shape[0] < 1:
            raise ShapeMismatchError(f"shadow logits must have shape (k >= 1, n, C), got {logits.shape}")
        if self.in_mask is None:
            in_mask = np.zeros(logits.shape[:2], dtype=bool)
        else:
            in_mask = np.asarray(self.in_mask)
            if in_mask.shape != logits.shape[:2]:
                raise ShapeMismatchError(
                    f"in_mask must have shape {logits.shape[:2]} (shadows, examples), got {in_mask.shape}"
                )
            if in_mask.dtype != np.bool_:
                raise MembershipAttackError(f"in_mask must be boolean, got dtype {in_mask.dtype}")
        object.__setattr__(self, "logits", logits)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "in_mask", in_mask)
        object.__setattr__(self, "confidences", logit_scaled_confidence(logits, labels))

    @property
    def num_shadows(self) -> int:
        return int(self.logits.shape[0])

    @property
    def num_examples(self) -> int:
        return int(self.logits.shape[1])

    @property
    def membership(self) -> np.ndarray:
        """``in_mask`` as a boolean array (all False for an OUT-only pool)."""
        assert self.in_mask is not None  # set in __post_init__
        return self.in_mask


@dataclass(frozen=True, eq=False)
class MembershipScores:
    """One score per candidate (higher = more likely a member), the attack's name and its settings."""

    attack: str
    scores: np.ndarray
    metadata: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        scores = np.asarray(self.scores, dtype=np.float64)
        if scores.ndim != 1:
            raise ShapeMismatchError(f"scores must be 1-D, got shape {scores.shape}")
        if np.isnan(scores).any():
            raise MembershipAttackError(f"attack {self.attack!r} produced NaN scores")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "metadata", dict(self.metadata))

    def report(self, is_member: np.ndarray) -> MembershipReport:
        """AUC, TPR at 0.1 % and 1 % FPR and balanced accuracy against the true membership labels."""
        return MembershipReport.from_scores(self.scores, is_member)


# --------------------------------------------------------------------------------------------
# Training targets and shadow models
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TrainRecipe:
    """A training recipe usable as a :data:`TrainFn`: ``recipe(x, y, seed) -> trained module``.

    Builds ``fl.models.build_model(model_name, x.shape[1:], num_classes, hidden=hidden, seed=seed)`` and
    runs :func:`fl.client.local_train` with ``config`` (or :func:`fl.dpsgd.local_train_dpsgd` with
    ``dpsgd``, its noise drawn from ``CryptoRNG.from_int_seed(seed)``). ``init_weights`` starts training
    from given flat weights instead of the seed's initialisation: a server replaying a client's local
    training from the global model ``w`` passes ``w`` here.
    """

    num_classes: int
    model_name: str = "mlp"
    hidden: tuple[int, ...] = (64,)
    config: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30, batch_size=32, lr=0.1))
    dpsgd: DPSGDConfig | None = None
    init_weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int | np.integer):
            raise MembershipAttackError(f"num_classes must be an int, got {type(self.num_classes).__name__}")
        if self.num_classes < 2:
            raise MembershipAttackError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.dpsgd is not None and not isinstance(self.dpsgd, DPSGDConfig):
            raise MembershipAttackError(
                f"dpsgd must be a fl.dpsgd.DPSGDConfig or None, got {type(self.dpsgd).__name__}"
            )

    def __call__(self, x: np.ndarray, y: np.ndarray, seed: int) -> nn.Module:
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.asarray(y)
        if x.ndim < 2 or y.shape != (x.shape[0],):
            raise ShapeMismatchError(
                f"training needs x of shape (n, *features) and y of shape (n,), got {x.shape}, {y.shape}"
            )
        model = build_model(
            self.model_name, tuple(x.shape[1:]), self.num_classes, hidden=self.hidden, seed=seed
        )
        layout = ParamLayout.from_module(model)
        start = (
            layout.flatten(model)
            if self.init_weights is None
            else np.asarray(self.init_weights, dtype=np.float32)
        )
        if start.shape != (layout.size,):
            raise ShapeMismatchError(
                f"init_weights must have shape ({layout.size},) for this {self.model_name}, got {start.shape}"
            )
        if self.dpsgd is None:
            update = local_train(
                model, layout, start, x, y, self.config, task="classification", client_id=0, seed=seed
            )
        else:
            update, _, _ = local_train_dpsgd(
                model,
                layout,
                start,
                x,
                y,
                self.config,
                self.dpsgd,
                task="classification",
                client_id=0,
                seed=seed,
                noise_rng=CryptoRNG.from_int_seed(seed),
            )
        layout.load_into(model, start + update.delta)
        model.eval()
        return model


def train_target(
    x: np.ndarray,
    y: np.ndarray,
    *,
    model_name: str = "mlp",
    epochs: int = 30,
    seed: int = 0,
    num_classes: int | None = None,
    hidden: tuple[int, ...] = (64,),
    lr: float = 0.1,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    dpsgd: DPSGDConfig | None = None,
) -> nn.Module:
    """Train a (by default overfitting) target on ``(x, y)`` for tests and benchmarks.

    Shorthand for ``TrainRecipe(...)(x, y, seed)``; ``num_classes`` defaults to ``max(y) + 1``.
    """
    classes = int(np.max(y)) + 1 if num_classes is None else num_classes
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay)
    recipe = TrainRecipe(classes, model_name, tuple(hidden), config, dpsgd)
    return recipe(x, y, seed)


def _balanced_inclusion(num_shadows: int, num_units: int, rng: np.random.Generator) -> np.ndarray:
    # Each unit (example or client) is in exactly floor(k/2) shadows: a random half of each column,
    # so every unit has IN and OUT estimates (Carlini et al.'s design; better than i.i.d. coin flips).
    order = np.argsort(rng.random((num_shadows, num_units)), axis=0)
    return np.asarray(order < num_shadows // 2)


def train_shadow_pool(
    train_fn: TrainFn,
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_shadows: int,
    seed: int = 0,
    groups: np.ndarray | None = None,
    query_x: np.ndarray | None = None,
) -> ShadowPool:
    """Train ``num_shadows`` shadow models on random halves of the population ``(x, y)`` and query them.

    Every example (or, with ``groups``, every group such as a client's whole data set) is included in
    exactly ``num_shadows // 2`` shadows. Each shadow is then queried on all of ``x`` (or on ``query_x``
    of the same length, e.g. augmented views), so the pool has OUT and IN observations for every example.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2 or x.shape[0] == 0 or y.shape != (x.shape[0],):
        raise ShapeMismatchError(
            f"population needs x of shape (n >= 1, *features) and y of shape (n,), got {x.shape}, {y.shape}"
        )
    if isinstance(num_shadows, bool) or not isinstance(num_shadows, int) or num_shadows < 2:
        raise InsufficientShadowsError(
            f"num_shadows must be an int >= 2 (half IN, half OUT), got {num_shadows!r}"
        )
    queries = x if query_x is None else np.asarray(query_x)
    if queries.shape[0] != x.shape[0]:
        raise ShapeMismatchError(f"query_x must have {x.shape[0]} rows like x, got {queries.shape}")
    if groups is None:
        inverse = np.arange(x.shape[0])
    else:
        groups = np.asarray(groups)
        if groups.shape != (x.shape[0],):
            raise ShapeMismatchError(f"groups must have shape ({x.shape[0]},), got {groups.shape}")
        _, inverse = np.unique(groups, return_inverse=True)
    inclusion_seq, training_seq = np.random.SeedSequence(seed).spawn(2)
    unit_in = _balanced_inclusion(num_shadows, int(inverse.max()) + 1, np.random.default_rng(inclusion_seq))
    in_mask = unit_in[:, inverse]
    logits = _train_and_query(train_fn, x, y, in_mask, queries, training_seq)
    return ShadowPool(logits, y, in_mask)


def train_out_pool(
    train_fn: TrainFn,
    population_x: np.ndarray,
    population_y: np.ndarray,
    candidates_x: np.ndarray,
    candidates_y: np.ndarray,
    *,
    num_shadows: int,
    seed: int = 0,
    fraction: float = 0.5,
) -> ShadowPool:
    """Reference (OUT) models for :func:`lira_offline`: shadows that never saw the candidates.

    Each shadow trains on its own random ``fraction`` of the population and is queried on the candidates;
    the pool's ``in_mask`` is all False. The population must be disjoint from the candidates (this cannot
    be checked here): a candidate hidden in it would be IN for some shadows and weaken the test.
    """
    px, py = np.asarray(population_x), np.asarray(population_y)
    if px.ndim < 2 or px.shape[0] == 0 or py.shape != (px.shape[0],):
        raise ShapeMismatchError(
            f"population needs x of shape (n >= 1, *features) and y of shape (n,), got {px.shape}, {py.shape}"
        )
    cx, cy = np.asarray(candidates_x), np.asarray(candidates_y)
    if cx.shape[1:] != px.shape[1:] or cy.shape != (cx.shape[0],):
        raise ShapeMismatchError(
            f"candidates must have x of shape (m, {', '.join(map(str, px.shape[1:]))}) and y of shape (m,), "
            f"got {cx.shape}, {cy.shape}"
        )
    if isinstance(num_shadows, bool) or not isinstance(num_shadows, int) or num_shadows < 1:
        raise InsufficientShadowsError(f"num_shadows must be an int >= 1, got {num_shadows!r}")
    if not 0.0 < fraction <= 1.0:
        raise MembershipAttackError(f"fraction must be in (0, 1], got {fraction}")
    size = max(1, round(fraction * px.shape[0]))
    subset_seq, training_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(subset_seq)
    train_mask = np.zeros((num_shadows, px.shape[0]), dtype=bool)
    for j in range(num_shadows):
        train_mask[j, rng.choice(px.shape[0], size, replace=False)] = True
    logits = _train_and_query(train_fn, px, py, train_mask, cx, training_seq)
    return ShadowPool(logits, cy, None)


def _train_and_query(
    train_fn: TrainFn,
    x: np.ndarray,
    y: np.ndarray,
    train_mask: np.ndarray,
    queries: np.ndarray,
    training_seq: np.random.SeedSequence,
) -> np.ndarray:
    """Logits ``(k, m, C)`` of k models, model j trained on ``x[train_mask[j]]``, on ``queries``."""
    seeds = training_seq.generate_state(train_mask.shape[0], dtype=np.uint32)
    return np.stack(
        [
            query_logits(train_fn(x[train_mask[j]], y[train_mask[j]], int(seeds[j])), queries)
            for j in range(train_mask.shape[0])
        ]
    )


# --------------------------------------------------------------------------------------------
# Attacks
# --------------------------------------------------------------------------------------------


def loss_threshold_attack(
    queries: TargetQueries, *, statistic: Literal["loss", "scaled_confidence"] = "loss"
) -> MembershipScores:
    """Yeom et al. (2018): members have lower loss; score = −loss or the logit-scaled confidence φ.

    Both statistics rank examples identically in exact arithmetic (−loss = −log(1 + e^{−φ})), but −loss
    saturates at 0 in floating point for confident predictions, so φ breaks the ties.
    """
    if statistic == "loss":
        scores = -cross_entropy_losses(queries.logits, queries.labels)
    elif statistic == "scaled_confidence":
        scores = queries.confidences()
    else:
        raise MembershipAttackError(f"statistic must be 'loss' or 'scaled_confidence', got {statistic!r}")
    return MembershipScores("loss_threshold", scores, {"statistic": statistic})


def _attack_features(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    # Shokri et al. feed the sorted prediction vector; we add φ, the statistic that separates best.
    log_probs = np.sort(log_softmax(logits, axis=-1), axis=-1)[..., ::-1]
    phi = logit_scaled_confidence(logits, labels)
    return np.concatenate([phi[..., None], np.maximum(log_probs, -100.0)], axis=-1)


def _best_threshold(values: np.ndarray, is_in: np.ndarray) -> float:
    """The threshold t maximising the balanced accuracy of ``values > t`` (TPR − FPR)."""
    order = np.argsort(-values, kind="stable")
    sorted_values = values[order]
    tpr = np.cumsum(is_in[order]) / is_in.sum()
    fpr = np.cumsum(~is_in[order]) / (~is_in).sum()
    # A threshold can only sit between distinct values: take the last index of each run of ties.
    last_of_run = np.append(sorted_values[1:] != sorted_values[:-1], True)
    gain = np.where(last_of_run, tpr - fpr, -np.inf)
    i = int(np.argmax(gain))
    if i + 1 < sorted_values.size:
        return float(0.5 * (sorted_values[i] + sorted_values[i + 1]))
    return float(sorted_values[i] - 1.0)


def shadow_model_attack(
    queries: TargetQueries,
    pool: ShadowPool,
    *,
    method: Literal["classifier", "threshold"] = "classifier",
    min_per_class: int = 10,
) -> MembershipScores:
    """Shokri et al. (2017): learn "member or not" from shadow models' outputs, per class, then score the target.

    ``classifier``: one logistic regression per class on [φ, sorted log-softmax] of the shadows' (example,
    model) pairs labelled by ``pool.in_mask``; score = the predicted membership log-odds. ``threshold``:
    one threshold on φ per class maximising the shadows' balanced accuracy; score = φ − threshold. A class
    with fewer than ``min_per_class`` IN or OUT shadow observations falls back to a model fitted on all
    classes. ``pool`` may be queried on other examples than the target's (disjoint population data).
    """
    if method not in ("classifier", "threshold"):
        raise MembershipAttackError(f"method must be 'classifier' or 'threshold', got {method!r}")
    num_classes = queries.logits.shape[1]
    if pool.logits.shape[2] != num_classes:
        raise ShapeMismatchError(
            f"shadow models have {pool.logits.shape[2]} classes, the target {num_classes}"
        )
    in_mask = pool.membership
    if in_mask.all() or not in_mask.any():
        raise InsufficientShadowsError(
            "the shadow pool needs both IN and OUT observations to train an attack model"
        )
    train_labels = np.broadcast_to(pool.labels, in_mask.shape).reshape(-1)
    train_in = in_mask.reshape(-1)
    if method == "threshold":
        train_x = pool.confidences.reshape(-1, 1)
        target_x = queries.confidences()[:, None]
    else:
        train_x = _attack_features(pool.logits, pool.labels).reshape(-1, num_classes + 1)
        target_x = _attack_features(queries.logits, queries.labels)

    def fit(rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        if method == "threshold":
            t = _best_threshold(train_x[rows, 0], train_in[rows])
            return lambda feats: feats[:, 0] - t
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        clf.fit(train_x[rows], train_in[rows])
        return lambda feats: np.asarray(clf.decision_function(feats), dtype=np.float64)

    fallback: Callable[[np.ndarray], np.ndarray] | None = None
    scores = np.empty(queries.num_examples)
    per_class_models = 0
    for c in np.unique(queries.labels):
        rows = train_labels == c
        target_rows = queries.labels == c
        if min(int(train_in[rows].sum()), int((~train_in[rows]).sum())) >= min_per_class:
            scores[target_rows] = fit(rows)(target_x[target_rows])
            per_class_models += 1
        else:
            if fallback is None:
                fallback = fit(np.ones_like(train_in))
            scores[target_rows] = fallback(target_x[target_rows])
    return MembershipScores(
        f"shadow_{method}",
        scores,
        {
            "num_shadows": pool.num_shadows,
            "per_class_models": per_class_models,
            "fallback_used": fallback is not None,
        },
    )


def _check_same_examples(queries: TargetQueries, pool: ShadowPool) -> None:
    if pool.num_examples != queries.num_examples:
        raise ShapeMismatchError(
            f"LiRA needs the shadow models queried on the target's candidates: pool has {pool.num_examples} "
            f"examples, queries have {queries.num_examples}"
        )
    if not np.array_equal(pool.labels, queries.labels):
        raise ShapeMismatchError(
            "shadow pool labels differ from the target queries' labels: not the same candidates"
        )


def _gaussian_fit(
    conf: np.ndarray, mask: np.ndarray, *, global_variance: bool, side: str, min_count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and variance of ``conf[mask]`` along the shadow axis (vectorised over examples)."""
    counts = mask.sum(axis=0)
    need = 1 if global_variance else min_count
    short = np.flatnonzero(counts < need)
    if short.size:
        hint = "" if global_variance else "; use global_variance=True or train more shadow models"
        raise InsufficientShadowsError(
            f"{side} Gaussian fit needs >= {need} {side} shadow model(s) per example{'' if global_variance else ' for a per-example variance'}, "
            f"but {short.size} example(s) have fewer (e.g. example {short[0]} has {counts[short[0]]}){hint}"
        )
    masked = np.where(mask, conf, 0.0)
    mean = masked.sum(axis=0) / counts
    squares = np.where(mask, (conf - mean) ** 2, 0.0).sum(axis=0)
    if global_variance:
        # Pooled within-example variance: one σ² for all examples, estimable from few shadows.
        dof = int(counts.sum()) - counts.size
        if dof < 1:
            raise InsufficientShadowsError(
                f"a global {side} variance needs more {side} observations than examples, got {int(counts.sum())} for {counts.size}"
            )
        var = np.full(counts.shape, float(squares.sum()) / dof)
    else:
        var = squares / (counts - 1)
    return mean, np.maximum(var, _VAR_FLOOR)


def _gaussian_logpdf(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return np.asarray(-0.5 * (x - mean) ** 2 / var - 0.5 * np.log(2 * np.pi * var))


def lira_online(
    queries: TargetQueries, pool: ShadowPool, *, global_variance: bool = False
) -> MembershipScores:
    """Online LiRA (Carlini et al. 2022): Λ = log N(φ; μ_in, σ²_in) − log N(φ; μ_out, σ²_out) per example.

    ``pool`` must be queried on the target's candidates (same order and labels) with shadows that include
    each candidate about half the time (:func:`train_shadow_pool`). Per-example variances need >= 2 IN and
    >= 2 OUT shadows for every candidate; ``global_variance=True`` pools one variance per side over all
    examples and needs only one of each (the paper's choice for few shadow models).
    """
    _check_same_examples(queries, pool)
    in_mask = pool.membership
    mu_in, var_in = _gaussian_fit(
        pool.confidences, in_mask, global_variance=global_variance, side="IN", min_count=2
    )
    mu_out, var_out = _gaussian_fit(
        pool.confidences, ~in_mask, global_variance=global_variance, side="OUT", min_count=2
    )
    phi = queries.confidences()
    scores = _gaussian_logpdf(phi, mu_in, var_in) - _gaussian_logpdf(phi, mu_out, var_out)
    return MembershipScores(
        "lira_online",
        scores,
        {
            "num_shadows": pool.num_shadows,
            "global_variance": global_variance,
            "mean_in_per_example": float(in_mask.sum(axis=0).mean()),
            "mean_out_per_example": float((~in_mask).sum(axis=0).mean()),
        },
    )


def lira_offline(
    queries: TargetQueries, pool: ShadowPool, *, global_variance: bool = False
) -> MembershipScores:
    """Offline LiRA (Carlini et al. 2022): a one-sided test of φ against the OUT distribution only.

    Score = −log Pr[Z > φ], Z ~ N(μ_out, σ²_out): the −log p-value of "not a member", monotone in
    (φ − μ_out)/σ_out. Only the pool's OUT observations are used (IN entries are ignored), so a pool
    trained without any candidate (``in_mask=None``) suffices. Per-example variances need >= 2 OUT shadows
    per candidate; ``global_variance=True`` needs one.
    """
    _check_same_examples(queries, pool)
    out_mask = ~pool.membership
    mu_out, var_out = _gaussian_fit(
        pool.confidences, out_mask, global_variance=global_variance, side="OUT", min_count=2
    )
    z = (queries.confidences() - mu_out) / np.sqrt(var_out)
    return MembershipScores(
        "lira_offline",
        -norm.logsf(z),
        {
            "num_shadows": pool.num_shadows,
            "global_variance": global_variance,
            "mean_out_per_example": float(out_mask.sum(axis=0).mean()),
        },
    )


# --------------------------------------------------------------------------------------------
# Federated forms
# --------------------------------------------------------------------------------------------


def local_model_from_update(
    model: nn.Module, layout: ParamLayout, global_weights: np.ndarray, update: ClientUpdate | np.ndarray
) -> nn.Module:
    """A copy of ``model`` holding the client's local weights ``w + Δ``: what the server can rebuild.

    ``update`` is a :class:`fl.types.ClientUpdate` (its ``delta``) or the flat delta itself; ``model``
    only provides the architecture and is left unchanged.
    """
    delta = update.delta if isinstance(update, ClientUpdate) else np.asarray(update)
    weights = np.asarray(global_weights)
    if weights.shape != (layout.size,) or delta.shape != (layout.size,):
        raise ShapeMismatchError(
            f"global weights and update must both have shape ({layout.size},) for this model, "
            f"got {weights.shape} and {delta.shape}"
        )
    local = (weights.astype(np.float64) + delta.astype(np.float64)).astype(np.float32)
    if not np.isfinite(local).all():
        raise MembershipAttackError("w + Δ contains NaN or infinite values")
    target = copy.deepcopy(model)
    layout.load_into(target, local)
    target.eval()
    return target


def query_client_update(
    model: nn.Module,
    layout: ParamLayout,
    global_weights: np.ndarray,
    update: ClientUpdate | np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
) -> TargetQueries:
    """The server attacking one client's update: query the local model ``w + Δ`` on candidates ``(x, y)``.

    Feed the result to any attack here; LiRA's shadows replay the client's local training from ``w``
    (``TrainRecipe(..., init_weights=w)``).
    """
    return TargetQueries.from_model(local_model_from_update(model, layout, global_weights, update), x, y)


def client_level_attack(
    example_scores: MembershipScores,
    client_ids: np.ndarray | Sequence[int],
    *,
    reduce: Literal["mean", "sum"] = "mean",
) -> MembershipScores:
    """Was a client's whole data set in training? Aggregate per-example scores over each client's examples.

    ``client_ids[i]`` names the client holding candidate i. ``reduce="mean"`` of
    ``loss_threshold_attack(..., statistic="scaled_confidence")`` scores is the mean logit-scaled
    confidence; ``reduce="sum"`` of LiRA scores is the log likelihood ratio of the client's data set
    (treating its examples as independent; train the pool with ``groups=client_ids`` so that shadows
    include or exclude whole clients). Scores come in increasing client-id order
    (``metadata["client_ids"]``).
    """
    ids = np.asarray(client_ids)
    if ids.shape != example_scores.scores.shape:
        raise ShapeMismatchError(
            f"client_ids must have one entry per scored example, shape {example_scores.scores.shape}, got {ids.shape}"
        )
    if ids.dtype.kind not in "iu":
        raise MembershipAttackError(f"client_ids must be integers, got dtype {ids.dtype}")
    if reduce not in ("mean", "sum"):
        raise MembershipAttackError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    if not np.isfinite(example_scores.scores).all():
        raise MembershipAttackError("example scores must be finite to aggregate them over clients")
    clients, inverse = np.unique(ids, return_inverse=True)
    totals = np.bincount(inverse, weights=example_scores.scores, minlength=clients.size)
    counts = np.bincount(inverse, minlength=clients.size)
    scores = totals / counts if reduce == "mean" else totals
    return MembershipScores(
        "client_level",
        scores,
        {
            "example_attack": example_scores.attack,
            "reduce": reduce,
            "client_ids": tuple(int(c) for c in clients),
            "examples_per_client": tuple(int(c) for c in counts),
        },
    )
