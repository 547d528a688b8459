"""The audit harness behind ``fedshield audit``: train one federated task under a grid of defences, attack every
trained pipeline, and put utility, claimed ε, empirical ε and measured leakage side by side.

A *cell* is (task, defence, seed). Each cell

1. trains the task with the defence through :class:`fl.simulation.Simulation` (the same code path as
   ``fedshield run``: clipping, compression, SecAgg/SecAgg+/CKKS, central or distributed DP with its ledger),
   and records accuracy (next to the centralised baseline), the ledger's ε(δ) and the cost per round;
2. runs a **canary audit** of the release (:func:`attacks.canary.canary_audit`) with the trained noise
   multiplier, sampling rate, clip and rounds: an empirical ε lower bound beside the accountant's ε;
3. runs a **gradient-inversion probe** (image tasks): one round at the published initial weights in which
   ``inversion_clients`` clients each hold ``inversion_batch`` examples and train with the task's local
   recipe. The honest-but-curious server attacks what it sees of one client (its update after the client-side
   defences; nothing when SecAgg or CKKS hide it) and the aggregate of the round (after secure summation and
   DP noise). The attacker is adaptive: it knows the clip, noise, top-k mask, quantiser and the number of
   summed clients (:func:`attacks.inversion.attack`). This is the attacker's best case (small batches, an
   untrained model) and is reported as such;
4. runs a **membership probe** after training: the next round's cohort trains from the final weights; the
   server scores each candidate's membership in a client's data set from that client's view and from the
   aggregate view, with a naive attack (loss threshold on the observed model) and an adaptive one (the change
   of the logit-scaled confidence between the model the server sent and the one it observes, i.e. calibrated
   by the pre-round model, which removes the per-example difficulty); the strongest is reported.

Everything random is a function of the seed, so a rerun reproduces every figure except timings, with one
exception by design: CKKS encryption draws fresh randomness inside SEAL (it cannot be seeded, and must not be
reused), so CKKS cells agree across reruns only to the encryption noise (losses to ~1e-6 relative, MIA scores
up to the order of near-ties; accuracies and the audit are unaffected). Each finished
cell is written to ``cells/`` at once, and an interrupted grid resumes from there (a cell interrupted during
training resumes from its own checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from attacks.canary import canary_audit
from attacks.inversion import (
    InversionResult,
    Observation,
    aggregate_observations,
    apply_defences,
    attack,
    observe_update,
)
from attacks.metrics import AttackParameterError, MembershipReport, label_accuracy, psnr, roc_curve, ssim
from fl.aggregators import Aggregator
from fl.config import ExperimentConfig, config_from_dict, default_config
from fl.errors import ConfigError
from fl.simulation import RunOutput, Simulation

__all__ = [
    "AttackSettings",
    "AuditConfig",
    "DefenceSpec",
    "TaskSpec",
    "default_audit_config",
    "load_audit_config",
    "run_audit",
    "run_cell",
]

RESULTS_FORMAT = 1
#: Keys of a cell record that hold wall-clock figures (everything else is reproducible from the seed).
TIMING_KEYS = ("cost",)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackSettings:
    """``[attacks]``: which attacks run and their budgets."""

    inversion: bool = True
    inversion_clients: int = 4  # clients summed in the probed round
    inversion_batch: int = 1  # examples per probed client
    inversion_restarts: int = 2
    inversion_iterations: int = 0  # optimiser steps per restart; 0 = the attack's default (200 L-BFGS / 1000 Adam)
    membership: bool = True
    membership_clients: int = 4  # clients per membership probe round
    membership_rounds: int = 10  # probe rounds after training (scores pooled)
    canary: bool = True
    canary_count: int = 1000
    canary_dim: int = 1000
    canary_guess_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name, lo in (("inversion_clients", 1), ("inversion_batch", 1), ("inversion_restarts", 1), ("inversion_iterations", 0),
                         ("membership_clients", 1), ("membership_rounds", 1), ("canary_count", 10), ("canary_dim", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(f"attacks.{name}", f"must be an integer >= {lo}, got {value!r}")
        for name in ("inversion", "membership", "canary"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"attacks.{name}", f"must be true or false, got {getattr(self, name)!r}")
        g = self.canary_guess_fraction
        if isinstance(g, bool) or not isinstance(g, int | float) or not 0 < g <= 0.5:
            raise ConfigError("attacks.canary_guess_fraction", f"must lie in (0, 0.5], got {g!r}")


@dataclass(frozen=True)
class TaskSpec:
    """``[[task]]``: a named federated task (an :class:`ExperimentConfig` without any defence)."""

    name: str
    config: ExperimentConfig


@dataclass(frozen=True)
class DefenceSpec:
    """``[[defence]]``: a named set of config overrides (sections run, client, secagg, ckks, compression, dp)."""

    name: str
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tasks: tuple[str, ...] = ()  # empty: every task

    def applies_to(self, task: str) -> bool:
        return not self.tasks or task in self.tasks


DEFENCE_SECTIONS = ("run", "client", "secagg", "ckks", "compression", "dp")


@dataclass(frozen=True)
class AuditConfig:
    tasks: tuple[TaskSpec, ...]
    defences: tuple[DefenceSpec, ...]
    seeds: tuple[int, ...] = (0,)
    attacks: AttackSettings = field(default_factory=AttackSettings)

    def cells(self) -> list[tuple[TaskSpec, DefenceSpec, int]]:
        return [(t, d, s) for s in self.seeds for t in self.tasks for d in self.defences if d.applies_to(t.name)]

    def cell_config(self, task: TaskSpec, defence: DefenceSpec, seed: int) -> ExperimentConfig:
        try:
            cfg = task.config.replace(**{k: dict(v) for k, v in defence.overrides.items()})
            return cfg.replace(run={"seed": seed, "centralized_baseline": False})
        except ConfigError as exc:
            raise ConfigError(f"defence '{defence.name}' on task '{task.name}'", str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seeds": list(self.seeds),
            "attacks": dataclasses.asdict(self.attacks),
            "tasks": [{"name": t.name, "config": t.config.to_dict()} for t in self.tasks],
            "defences": [
                {"name": d.name, "overrides": {k: dict(v) for k, v in d.overrides.items()}, "tasks": list(d.tasks)}
                for d in self.defences
            ],
        }

    def to_toml(self) -> str:
        from fl.config import _toml_value

        lines = ["[audit]", f"seeds = {_toml_value(list(self.seeds))}", "", "[attacks]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in dataclasses.asdict(self.attacks).items()]
        for t in self.tasks:
            lines += ["", "[[task]]", f"name = {_toml_value(t.name)}"]
            for section, values in t.config.to_dict().items():
                lines.append(f"[task.{section}]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        for d in self.defences:
            lines += ["", "[[defence]]", f"name = {_toml_value(d.name)}"]
            if d.tasks:
                lines.append(f"tasks = {_toml_value(list(d.tasks))}")
            for section, overrides in d.overrides.items():
                lines.append(f"[defence.{section}]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in overrides.items()]
        return "\n".join(lines) + "\n"


def _name(raw: Mapping[str, Any], where: str) -> str:
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 80:
        raise ConfigError(f"{where}.name", f"must be a non-empty string of at most 80 characters, got {name!r}")
    return name


def audit_config_from_dict(raw: Any) -> AuditConfig:
    """Validate a parsed audit TOML document. Errors name the key (``task[1].data.name``, ``defence[3].dp``)."""
    if not isinstance(raw, dict):
        raise ConfigError("<root>", f"must be a table, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"audit", "attacks", "task", "defence"})
    if unknown:
        raise ConfigError(unknown[0], "unknown section; allowed: audit, attacks, task, defence")
    audit: Any = raw.get("audit", {})
    if not isinstance(audit, dict) or set(audit) - {"seeds"}:
        raise ConfigError("audit", "must be a table with the single key 'seeds'")
    seeds = audit.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ConfigError("audit.seeds", f"must be a non-empty list of distinct integers >= 0, got {seeds!r}")
    att = raw.get("attacks", {})
    if not isinstance(att, dict):
        raise ConfigError("attacks", "must be a table")
    known = {f.name for f in dataclasses.fields(AttackSettings)}
    bad = sorted(set(att) - known)
    if bad:
        raise ConfigError(f"attacks.{bad[0]}", f"unknown key; allowed: {', '.join(sorted(known))}")
    attacks = AttackSettings(**att)
    tasks_raw = raw.get("task")
    if not isinstance(tasks_raw, list) or not tasks_raw:
        raise ConfigError("task", "need at least one [[task]]")
    tasks: list[TaskSpec] = []
    for i, t in enumerate(tasks_raw):
        where = f"task[{i}]"
        if not isinstance(t, dict):
            raise ConfigError(where, "must be a table")
        name = _name(t, where)
        sections = {k: v for k, v in t.items() if k != "name"}
        try:
            cfg = config_from_dict(sections)
        except ConfigError as exc:
            raise ConfigError(where, str(exc)) from None
        if cfg.dp.mode != "none" or cfg.run.aggregation != "plain" or cfg.compression.method != "none":
            raise ConfigError(where, "a task is trained without defences; put dp, aggregation and compression in "
                              "a [[defence]]")
        if cfg.data.name == "diabetes":
            raise ConfigError(f"{where}.data.name", "the audit attacks classifiers; 'diabetes' is a regression task")
        tasks.append(TaskSpec(name, cfg))
    if len({t.name for t in tasks}) != len(tasks):
        raise ConfigError("task", "task names must be distinct")
    defences_raw = raw.get("defence")
    if not isinstance(defences_raw, list) or not defences_raw:
        raise ConfigError("defence", "need at least one [[defence]] (name = \"none\" with no overrides is the baseline)")
    defences: list[DefenceSpec] = []
    task_names = {t.name for t in tasks}
    for i, d in enumerate(defences_raw):
        where = f"defence[{i}]"
        if not isinstance(d, dict):
            raise ConfigError(where, "must be a table")
        name = _name(d, where)
        only = d.get("tasks", [])
        if not isinstance(only, list) or not set(only) <= task_names:
            raise ConfigError(f"{where}.tasks", f"must list task names among {sorted(task_names)}, got {only!r}")
        overrides = {k: v for k, v in d.items() if k not in ("name", "tasks")}
        for section, values in overrides.items():
            if section not in DEFENCE_SECTIONS:
                raise ConfigError(f"{where}.{section}", f"unknown section; allowed: {', '.join(DEFENCE_SECTIONS)}")
            if not isinstance(values, dict):
                raise ConfigError(f"{where}.{section}", "must be a table")
        defences.append(DefenceSpec(name, overrides, tuple(only)))
    if len({d.name for d in defences}) != len(defences):
        raise ConfigError("defence", "defence names must be distinct")
    audit_cfg = AuditConfig(tuple(tasks), tuple(defences), tuple(seeds), attacks)
    for task, defence, _ in audit_cfg.cells():
        audit_cfg.cell_config(task, defence, 0)  # validate every combination before anything runs
    return audit_cfg


def load_audit_config(path: str | Path) -> AuditConfig:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("<file>", f"audit config not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("<file>", f"cannot read audit config {p}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<file>", f"{p} is not valid TOML: {exc}") from None
    return audit_config_from_dict(raw)


def default_audit_config() -> AuditConfig:
    """The built-in grid: breast cancer across 100 simulated hospitals and sklearn digits across 50 clients."""
    hospitals = default_config().replace(
        data={"name": "breast_cancer", "num_clients": 100, "partition": "iid"},
        model={"name": "logreg"},
        client={"epochs": 1, "batch_size": 0, "lr": 0.5},
        sampling={"method": "poisson", "rate": 0.3},
        run={"rounds": 40, "eval_every": 40, "checkpoint_every": 10},
    )
    digits = default_config().replace(
        data={"name": "digits", "num_clients": 50, "partition": "iid", "standardize": False},
        model={"name": "mlp", "hidden": [32], "activation": "sigmoid"},
        client={"epochs": 2, "batch_size": 16, "lr": 0.5},
        sampling={"method": "poisson", "rate": 0.3},
        run={"rounds": 40, "eval_every": 40, "checkpoint_every": 10},
    )
    clip = 0.5
    defences = (
        DefenceSpec("none"),
        DefenceSpec("clip", {"client": {"clip_norm": clip}}),
        DefenceSpec("top-10%", {"compression": {"method": "topk", "fraction": 0.1}}),
        DefenceSpec("quantised (8 levels)", {"compression": {"method": "quantize", "levels": 8}}),
        DefenceSpec("SecAgg", {"run": {"aggregation": "secagg"}}),
        DefenceSpec("SecAgg+", {"run": {"aggregation": "secagg+"}}),
        DefenceSpec("CKKS", {"run": {"aggregation": "ckks"}}),
        DefenceSpec("central DP eps=8", {"dp": {"mode": "central", "target_epsilon": 8.0, "clip": clip}}),
        DefenceSpec("central DP eps=1", {"dp": {"mode": "central", "target_epsilon": 1.0, "clip": clip}}),
        DefenceSpec("SecAgg+ + central DP eps=1",
                    {"run": {"aggregation": "secagg+"}, "dp": {"mode": "central", "target_epsilon": 1.0, "clip": clip}}),
        DefenceSpec("distributed DP eps=3 + SecAgg+", {
            "run": {"aggregation": "secagg+"},
            "dp": {"mode": "distributed", "target_epsilon": 3.0, "clip": clip, "accountant": "rdp"},
        }),
        DefenceSpec("top-10% + SecAgg", {"run": {"aggregation": "secagg"},
                                         "compression": {"method": "topk", "fraction": 0.1}}),
    )
    return AuditConfig((TaskSpec("hospitals", hospitals), TaskSpec("digits", digits)), defences, (0,))


# --------------------------------------------------------------------------------------------
# One cell
# --------------------------------------------------------------------------------------------


def _round(value: float | None, digits: int = 6) -> float | None:
    """Figures are stored to 6 significant digits: CKKS decryptions carry fresh encryption noise (~1e-9), so a
    rerun reproduces the figures, not the last bits."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def _epsilon_of(out: RunOutput) -> float | None:
    for result in reversed(out.history):
        if "dp_epsilon" in result.metrics:
            return float(result.metrics["dp_epsilon"])
    return None


def _mean_metric(out: RunOutput, key: str) -> float | None:
    values = [r.metrics[key] for r in out.history if key in r.metrics]
    return float(np.mean(values)) if values else None


def _views(config: ExperimentConfig) -> dict[str, Any]:
    """What the honest-but-curious server sees under the cell's defences (the public defence record)."""
    dp = config.dp
    clip = dp.clip if dp.mode != "none" else (config.client.clip_norm or None)
    hidden = config.run.aggregation in ("secagg", "secagg+", "ckks") or dp.mode == "distributed"
    return {
        "clip": clip,
        "client_observable": not hidden,
        "protection": {
            "secagg": "masked vector, uniform in Z_2^b", "secagg+": "masked vector, uniform in Z_2^b",
            "ckks": "CKKS ciphertext (IND-CPA)",
        }.get(config.run.aggregation, "plaintext update" if not hidden else "masked vector, uniform in Z_2^b"),
        "topk": config.compression.fraction if config.compression.method == "topk" else None,
        "levels": config.compression.levels if config.compression.method == "quantize" else None,
    }


def _noise_multiplier(sim: Simulation) -> float | None:
    z = getattr(sim.aggregator, "noise_multiplier", None)
    return float(z) if z is not None else None


def _probe_aggregator(sim: Simulation, z: float | None) -> Aggregator:
    """A fresh aggregator of the cell's kind for the probe rounds, with the trained noise multiplier and a
    throw-away ledger (the probe rounds are an attack experiment, not releases of the training run)."""
    dp_settings = None
    if sim.config.dp.mode != "none":
        from fl.privacy import DPSettings

        dp_settings = dataclasses.replace(DPSettings.from_config(sim.config.dp), noise_multiplier=z or 0.0,
                                          epsilon_budget=1e12)
    return sim.make_aggregator(seed=sim.config.run.seed + 0x9E, dp_settings=dp_settings, rounds=1, run_id="probe")


def _client_view(delta: np.ndarray, views: Mapping[str, Any], config: ExperimentConfig,
                 z: float | None, seed: int) -> np.ndarray:
    """One client's update as it leaves the client (before any secure aggregation)."""
    from dp.mechanisms import clip_l2
    from fl.compression import quantize_levels, topk_sparsify

    out = delta.astype(np.float32)
    if views["clip"] is not None:
        out = clip_l2(out, views["clip"])[0].astype(np.float32)  # what fl.compression.Clip and DPAggregator do
    if config.dp.mode == "local" and z:
        rng = np.random.default_rng(seed)  # attack experiment only: the training run draws from CryptoRNG
        out = (out + rng.normal(0.0, z * views["clip"], out.size)).astype(np.float32)
    if views["topk"] is not None:
        out = topk_sparsify(out, views["topk"])
    if views["levels"] is not None:
        out = quantize_levels(out, views["levels"])
    return out


def _inversion_probe(sim: Simulation, z: float | None, settings: AttackSettings, seed: int) -> dict[str, Any] | None:
    data = sim.data
    if len(data.feature_shape) != 3:
        return None  # tabular task: the probe reports images; see the closing notes
    cfg = sim.config
    views = _views(cfg)
    m, b = settings.inversion_clients, settings.inversion_batch
    rng = np.random.default_rng([seed, 0x1A7])
    eligible = [c for c in data.clients if c.num_train >= b]
    if len(eligible) < m:
        raise AttackParameterError(f"inversion probe needs {m} clients with >= {b} training examples")
    chosen = rng.choice(len(eligible), size=m, replace=False)
    xs, ys = [], []
    for i in chosen:
        c = eligible[int(i)]
        pick = rng.choice(c.num_train, size=b, replace=False)
        xs.append(c.x_train[pick])
        ys.append(c.y_train[pick])
    model, layout, w0 = sim.model, sim.layout, sim.initial_weights
    raw = [observe_update(model, x, y, sim.train_config, weights=w0, seed=k)
           for k, (x, y) in enumerate(zip(xs, ys, strict=True))]
    clipped = [apply_defences(o, clip=views["clip"]) if views["clip"] is not None else o for o in raw]
    noise_client = z * views["clip"] if cfg.dp.mode == "local" and z else None

    def compress(o: Observation, k: int) -> Observation:
        if noise_client:
            o = apply_defences(o, noise_std=noise_client, seed=seed * 1000 + k)
        return apply_defences(o, topk_fraction=views["topk"], quantization_levels=views["levels"])

    truth = np.concatenate(xs)
    labels = np.concatenate(ys)
    out: dict[str, Any] = {"clients": m, "batch": b, "truth": _images(truth), "truth_labels": labels.tolist()}
    # the attacker's best data-independent guess (the mean training image): the floor of every PSNR below
    prior = np.concatenate([c.x_train for c in data.clients]).mean(axis=0, keepdims=True)
    out["prior_psnr"] = _round(float(np.mean(psnr(np.repeat(prior, len(truth), 0), truth, 1.0))), 4)
    # client view
    if views["client_observable"]:
        obs = compress(clipped[0], 0)
        res = attack(obs, "auto", adaptive=True, seed=seed, restarts=settings.inversion_restarts,
                     max_iterations=settings.inversion_iterations or None, progress=False)
        out["client"] = _score_inversion(res, truth[:b], labels[:b]) | {"observable": True}
    else:
        out["client"] = {"observable": False, "sees": views["protection"]}
    # aggregate view: per-client stages, then the secure sum (mean) and the server's DP noise
    if views["topk"] is not None or views["levels"] is not None:
        per = [compress(o, k) for k, o in enumerate(clipped)]
        base = aggregate_observations([dataclasses.replace(o, topk_mask=None, quantization_levels=None) for o in per])
        union = np.zeros(layout.size, dtype=bool)
        for o in per:
            if o.topk_mask is not None:
                union |= o.topk_mask.numpy()
        agg = dataclasses.replace(base, topk_mask=torch.from_numpy(union) if views["topk"] is not None else None)
    else:
        agg = aggregate_observations([apply_defences(o, noise_std=noise_client, seed=seed * 1000 + k)
                                      if noise_client else o for k, o in enumerate(clipped)])
    if cfg.dp.mode in ("central", "distributed") and z:
        # the release's Gaussian noise N(0, (zC)^2) on the sum, i.e. zC/m on the mean of m clients
        agg = apply_defences(agg, noise_std=z * views["clip"] / m, seed=seed + 0x5EED)
    res = attack(agg, "auto", adaptive=True, seed=seed, restarts=settings.inversion_restarts,
                     max_iterations=settings.inversion_iterations or None, progress=False)
    out["aggregate"] = _score_inversion(res, truth, labels) | {"observable": True, "num_summed": m,
                                                                "attacker": res.attacker}
    return out


def _images(x: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 4) for v in row] for row in np.asarray(x, dtype=np.float64).reshape(len(x), -1)]


def _score_inversion(res: InversionResult, truth: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    recon = res.inputs.detach().numpy().astype(np.float64)
    t = truth.astype(np.float64)
    # each true image against its closest reconstruction (the attacker's best guess for it)
    d = ((t.reshape(len(t), 1, -1) - recon.reshape(1, len(recon), -1)) ** 2).mean(axis=2)
    best = d.argmin(axis=1)
    per_image = 10 * np.log10(1.0 / np.maximum(d[np.arange(len(t)), best], 1e-20))
    matched = recon[best]
    s = ssim(matched[:, 0] if matched.ndim == 4 else matched, t[:, 0] if t.ndim == 4 else t, 1.0)
    return {
        "attacker": res.attacker,
        "psnr": _round(float(per_image.mean()), 4),
        "best_psnr": _round(float(per_image.max()), 4),
        "ssim": _round(float(np.mean(s)), 4),
        "label_accuracy": _round(label_accuracy(res.labels.numpy(), labels), 4),
        "reconstruction": _images(np.clip(matched, 0.0, 1.0)),
    }


def _phi(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from attacks.membership import logit_scaled_confidence

    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).double().numpy()
    return logit_scaled_confidence(logits, y)


def _descent_directions(sim: Simulation, weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example ``-∇ℓ(x_i; w)`` in the flat layout, shape ``(n, d)`` (torch.func, no Python loop over examples)."""
    from torch.func import functional_call, grad, vmap

    layout, model = sim.layout, sim.model
    flat = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))
    params = {n: flat[o: o + math.prod(s)].view(s) for n, s, o in zip(layout.names, layout.shapes, layout.offsets,
                                                                         strict=True)}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, p, (xi.unsqueeze(0),))
        return torch.nn.functional.cross_entropy(logits, yi.unsqueeze(0))

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, xt, yt)
    return -torch.cat([grads[n].reshape(len(xt), -1) for n in layout.names], dim=1).double().numpy()


def _membership_scores(sim: Simulation, w_before: np.ndarray, w_after: np.ndarray,
                       x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Three attacks on what the server observed (the model ``w_after`` it rebuilds from an update or aggregate):

    * ``loss_threshold`` — naive (Yeom et al. 2018): the logit-scaled confidence under ``w_after``;
    * ``calibrated`` — its change from the model the server sent (Watson et al. 2022's difficulty calibration,
      with the pre-round model as the reference);
    * ``gradient_alignment`` — white-box: the cosine between the observed update and each candidate's
      descent direction at ``w_before`` (members' gradients point along the update they helped form; noise
      makes the cosine uninformative, which is what DP is for).
    """
    model, layout = sim.model, sim.layout
    layout.load_into(model, w_before)
    before = _phi(model, x, y)
    layout.load_into(model, w_after)
    after = _phi(model, x, y)
    delta = (w_after.astype(np.float64) - w_before.astype(np.float64))
    g = _descent_directions(sim, w_before, x, y)
    cos = (g @ delta) / np.maximum(np.linalg.norm(g, axis=1) * max(float(np.linalg.norm(delta)), 1e-30), 1e-30)
    layout.load_into(model, w_before)
    return {"loss_threshold": after, "calibrated": after - before, "gradient_alignment": cos}


def _mia_summary(scores: Mapping[str, np.ndarray], members: np.ndarray) -> dict[str, Any]:
    attacks_out = {}
    for name, s in scores.items():
        rep = MembershipReport.from_scores(s, members)
        attacks_out[name] = {k: _round(float(v), 4) if isinstance(v, float) else v for k, v in rep.to_dict().items()}
    best = max(attacks_out, key=lambda n: (attacks_out[n]["auc"] or 0.0, n))
    roc = roc_curve(scores[best], members)
    keep = np.unique(np.linspace(0, len(roc.fpr) - 1, min(len(roc.fpr), 200)).astype(int))
    return {
        "attacks": attacks_out, "best_attack": best, **{k: attacks_out[best][k] for k in
                                                          ("auc", "tpr_at_0_1pct_fpr", "tpr_at_1pct_fpr")},
        "fpr_resolution": _round(1.0 / max(int((~members).sum()), 1), 4),
        "roc": {"fpr": [round(float(v), 4) for v in roc.fpr[keep]], "tpr": [round(float(v), 4) for v in roc.tpr[keep]]},
    }


def _membership_probe(sim: Simulation, weights: np.ndarray, z: float | None, settings: AttackSettings,
                      seed: int) -> dict[str, Any]:
    """``membership_rounds`` probe rounds after training, each with a cohort of ``membership_clients`` clients
    training from the final weights; scores pooled over the rounds. Small cohorts are the attacker's best
    case for the aggregate view (DP's protection does not depend on the cohort size; SecAgg's does)."""
    cfg = sim.config
    views = _views(cfg)
    data = sim.data
    m = min(settings.membership_clients, sim.num_clients)
    rng = np.random.default_rng([seed, 0x3E3])
    x_out, y_out = data.pooled_test()  # non-members: held-out examples, never trained on
    order = rng.permutation(len(y_out))
    cursor = 0
    client_scores: dict[str, list[np.ndarray]] = {}
    agg_scores: dict[str, list[np.ndarray]] = {}
    client_flags: list[np.ndarray] = []
    agg_flags: list[np.ndarray] = []
    agg = _probe_aggregator(sim, z)
    try:
        for r in range(settings.membership_rounds):
            probe_round = cfg.run.rounds + r  # rounds after training
            cohort = sorted(int(c) for c in rng.choice(sim.num_clients, size=m, replace=False))
            updates = [sim.client_update(c, weights, probe_round) for c in cohort]
            xs_in, ys_in, xs_out, ys_out = [], [], [], []
            for u, c in zip(updates, cohort, strict=True):
                cd = data.clients[c]
                take = order[np.arange(cursor, cursor + cd.num_train) % len(order)]
                cursor += cd.num_train
                xs_in.append(cd.x_train)
                ys_in.append(cd.y_train)
                xs_out.append(x_out[take])
                ys_out.append(y_out[take])
                if views["client_observable"]:
                    sent = _client_view(u.delta, views, cfg, z, seed * 7919 + probe_round * 131 + c)
                    x = np.concatenate([cd.x_train, x_out[take]])
                    y = np.concatenate([cd.y_train, y_out[take]])
                    for k, v in _membership_scores(sim, weights, weights + sent, x, y).items():
                        client_scores.setdefault(k, []).append(v)
                    client_flags.append(np.r_[np.ones(cd.num_train, bool), np.zeros(len(take), bool)])
            # aggregate view: the round's real aggregation (secure sum, CKKS, DP noise) of the cohort
            released = agg.aggregate(updates, dim=sim.layout.size, round_index=probe_round)
            x = np.concatenate(xs_in + xs_out)
            y = np.concatenate(ys_in + ys_out)
            n_in = sum(len(v) for v in ys_in)
            for k, v in _membership_scores(sim, weights, weights + released.vector, x, y).items():
                agg_scores.setdefault(k, []).append(v)
            agg_flags.append(np.r_[np.ones(n_in, bool), np.zeros(len(y) - n_in, bool)])
    finally:
        close = getattr(agg, "close", None)
        if callable(close):
            close()
        sim.layout.load_into(sim.model, weights)
    out: dict[str, Any] = {"cohort": m, "rounds": settings.membership_rounds}
    if views["client_observable"]:
        out["client"] = {"observable": True, **_mia_summary({k: np.concatenate(v) for k, v in client_scores.items()},
                                                            np.concatenate(client_flags))}
    else:
        out["client"] = {"observable": False, "sees": views["protection"]}
    out["aggregate"] = {"observable": True, **_mia_summary({k: np.concatenate(v) for k, v in agg_scores.items()},
                                                           np.concatenate(agg_flags))}
    return out


def _canary(config: ExperimentConfig, z: float | None, settings: AttackSettings, seed: int) -> dict[str, Any] | None:
    from fl.privacy import DPSettings

    mode = config.dp.mode
    if mode == "local":
        return None
    q = config.sampling.rate if config.sampling.method == "poisson" else (
        (config.sampling.clients_per_round or config.data.num_clients) / config.data.num_clients)
    clip = config.dp.clip if mode != "none" else (config.client.clip_norm or 1.0)
    s = DPSettings(mode=mode if mode != "none" else "none", clip=clip, noise_multiplier=z or 0.0,
                   delta=config.dp.delta, epsilon_budget=1e12, accountant=config.dp.accountant,
                   noise=config.dp.noise, bits=config.dp.bits)
    res = canary_audit(s, sampling_rate=q, rounds=config.run.rounds, num_canaries=settings.canary_count,
                       dim=settings.canary_dim, guess_fraction=settings.canary_guess_fraction, seed=seed)
    return {
        "mode": mode,
        "epsilon_lower_bound": _round(res.epsilon_lower_bound, 4),
        "audit_run_accountant_epsilon": _round(res.accountant_epsilon, 4),
        "flagged": bool(res.flagged),
        "canaries": res.num_canaries,
        "guesses_made": int(res.audit.guesses_made),
        "guesses_correct": int(res.audit.guesses_correct),
    }


def run_cell(config: ExperimentConfig, attacks_cfg: AttackSettings, *, cell_dir: Path | None = None,
             status: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train, audit and attack one cell; returns its record (see the module docstring)."""
    say = status or (lambda _msg: None)
    seed = config.run.seed
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    say("train")
    sim = Simulation(config, out_dir=cell_dir, progress=False)
    out = sim.run()
    timings["train_wall_s"] = time.perf_counter() - t0
    z = _noise_multiplier(sim)
    metrics = out.final_metrics
    record: dict[str, Any] = {
        "utility": {
            "test_accuracy": _round(metrics.get("test_accuracy")),
            "test_loss": _round(metrics.get("test_loss")),
            "rounds_run": len(out.history),
            "stopped_by_budget": "stopped_by_privacy_budget_at_round" in out.timing,
        },
        "privacy": {
            "dp_mode": config.dp.mode,
            "epsilon": _round(_epsilon_of(out)),
            "delta": config.dp.delta if config.dp.mode != "none" else None,
            "noise_multiplier": _round(z),
            "clip": _views(config)["clip"],
            "server_sees_client_updates": _views(config)["client_observable"],
        },
        "communication": {"upload_bytes_per_client": _round(_mean_metric(out, "upload_bytes_per_client"))},
    }
    if attacks_cfg.canary:
        say("canary audit")
        t = time.perf_counter()
        record["audit"] = _canary(config, z, attacks_cfg, seed)
        timings["canary_s"] = time.perf_counter() - t
    if attacks_cfg.inversion:
        say("gradient inversion")
        t = time.perf_counter()
        record["inversion"] = _inversion_probe(sim, z, attacks_cfg, seed)
        timings["inversion_s"] = time.perf_counter() - t
    if attacks_cfg.membership:
        say("membership inference")
        t = time.perf_counter()
        record["membership"] = _membership_probe(sim, out.weights, z, attacks_cfg, seed)
        timings["membership_s"] = time.perf_counter() - t
    record["cost"] = {
        "client_time_s": _mean_metric(out, "client_time_s"),
        "server_time_s": _mean_metric(out, "server_time_s"),
        "cell_wall_s": time.perf_counter() - t0,
        **timings,
    }
    return record


# --------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    """A file-name-safe key for a user-given name; the hash keeps "SecAgg" and "SecAgg+" apart."""
    import hashlib

    readable = "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")[:40]
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("fedshield", "numpy", "torch", "tenseal", "cryptography", "opacus", "scipy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _baseline(task: TaskSpec, seed: int) -> dict[str, Any]:
    cfg = task.config.replace(run={"seed": seed})
    sim = Simulation(cfg, progress=False)
    c = sim.centralized_baseline()
    return {"task": task.name, "seed": seed, "test_accuracy": _round(c.get("test_accuracy"))}


def run_audit(config: AuditConfig, out_dir: str | Path, *, progress: bool = True,
              fresh: bool = False) -> dict[str, Any]:
    """Run (or resume) the whole grid into ``out_dir``; write results.json, report.md and report.html."""
    from attacks.report import write_reports

    out = Path(out_dir)
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    marker = out / "audit-config.json"
    fingerprint = json.dumps(config.to_dict(), sort_keys=True)
    if marker.exists() and not fresh and marker.read_text(encoding="utf-8") != fingerprint:
        raise ConfigError("<out>", f"{out} holds an audit of a different configuration; use another --out or --fresh")
    if fresh:
        for p in sorted(cells_dir.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
    _atomic_write(marker, fingerprint)
    started = time.perf_counter()
    baselines = []
    for task in config.tasks:
        for seed in config.seeds:
            path = cells_dir / f"baseline__{_slug(task.name)}__seed{seed}.json"
            if not path.exists():
                _atomic_write(path, json.dumps(_baseline(task, seed)))
            baselines.append(json.loads(path.read_text(encoding="utf-8")))
    records = []
    cells = config.cells()
    bar = tqdm(total=len(cells), desc="audit grid", unit="cell", disable=not progress, dynamic_ncols=True)
    try:
        for task, defence, seed in cells:
            key = f"{_slug(task.name)}__{_slug(defence.name)}__seed{seed}"
            path = cells_dir / f"{key}.json"
            if path.exists():
                records.append(json.loads(path.read_text(encoding="utf-8")))
                bar.update(1)
                continue
            cfg = config.cell_config(task, defence, seed)
            work = cells_dir / key
            bar.set_description(f"{task.name} / {defence.name} / seed {seed}")

            def status(stage: str, _bar: Any = bar, _t: str = task.name, _d: str = defence.name) -> None:
                _bar.set_postfix_str(stage)

            record = {"task": task.name, "defence": defence.name, "seed": seed, "config": cfg.to_dict(),
                      **run_cell(cfg, config.attacks, cell_dir=work, status=status)}
            _atomic_write(path, json.dumps(record))
            for p in sorted(work.rglob("*"), reverse=True):  # the cell's checkpoint and ledger are no longer needed
                p.unlink() if p.is_file() else p.rmdir()
            work.rmdir()
            records.append(record)
            bar.update(1)
    finally:
        bar.close()
    results = {
        "format": RESULTS_FORMAT,
        "tool": "fedshield audit",
        "versions": versions(),
        "audit_config": config.to_dict(),
        "seeds": list(config.seeds),
        "baselines": baselines,
        "cells": records,
        "timing": {"grid_wall_s": time.perf_counter() - started},
    }
    results["checks"] = expected_orderings(results)
    _atomic_write(out / "results.json", json.dumps(results, indent=1))
    write_reports(results, out)
    return results


def strip_timing(results: Mapping[str, Any]) -> dict[str, Any]:
    """``results`` without wall-clock figures and versions: what a rerun must reproduce exactly."""
    clean = {k: v for k, v in results.items() if k not in ("timing", "versions")}
    clean["cells"] = [{k: v for k, v in c.items() if k not in TIMING_KEYS} for c in results["cells"]]
    return clean


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarise(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (task, defence), averaged over seeds."""
    rows: list[dict[str, Any]] = []
    base = {(b["task"]): [] for b in results["baselines"]}  # type: ignore[var-annotated]
    for b in results["baselines"]:
        base[b["task"]].append(b["test_accuracy"])
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for c in results["cells"]:
        groups.setdefault((c["task"], c["defence"]), []).append(c)
    for (task, defence), cells in groups.items():
        def g(path: str, cells: list[Mapping[str, Any]] = cells) -> float | None:
            vals = []
            for c in cells:
                node: Any = c
                for part in path.split("."):
                    node = node.get(part) if isinstance(node, Mapping) else None
                vals.append(node if isinstance(node, int | float) and not isinstance(node, bool) else None)
            return _mean(vals)

        acc = g("utility.test_accuracy")
        central = _mean(base.get(task, []))
        rows.append({
            "task": task, "defence": defence, "seeds": len(cells),
            "accuracy": acc, "centralized_accuracy": central,
            "accuracy_gap": None if acc is None or central is None else acc - central,
            "epsilon": g("privacy.epsilon"), "noise_multiplier": g("privacy.noise_multiplier"),
            "audit_epsilon_lb": g("audit.epsilon_lower_bound"),
            "client_observable": bool(cells[0]["privacy"]["server_sees_client_updates"]),
            "compressed": cells[0]["config"]["compression"]["method"] != "none",
            "inv_client_psnr": g("inversion.client.psnr"), "inv_client_ssim": g("inversion.client.ssim"),
            "inv_client_labels": g("inversion.client.label_accuracy"),
            "inv_agg_psnr": g("inversion.aggregate.psnr"), "inv_agg_best_psnr": g("inversion.aggregate.best_psnr"),
            "inv_agg_ssim": g("inversion.aggregate.ssim"), "inv_agg_labels": g("inversion.aggregate.label_accuracy"),
            "inv_prior_psnr": g("inversion.prior_psnr"),
            "mia_client_auc": g("membership.client.auc"),
            "mia_client_tpr_0_1": g("membership.client.tpr_at_0_1pct_fpr"),
            "mia_client_tpr_1": g("membership.client.tpr_at_1pct_fpr"),
            "mia_agg_auc": g("membership.aggregate.auc"),
            "mia_agg_tpr_0_1": g("membership.aggregate.tpr_at_0_1pct_fpr"),
            "mia_agg_tpr_1": g("membership.aggregate.tpr_at_1pct_fpr"),
            "upload_bytes": g("communication.upload_bytes_per_client"),
            "client_time_s": g("cost.client_time_s"), "server_time_s": g("cost.server_time_s"),
        })
    return rows


def expected_orderings(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The orderings a correct pipeline must show, each checked on the measured figures (not asserted here:
    the report prints them with a tick or a cross, and the tests assert them on the default grid)."""
    rows = summarise(results)
    checks: list[dict[str, Any]] = []
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)

    def add(task: str, claim: str, ok: bool | None, detail: str) -> None:
        checks.append({"task": task, "claim": claim, "holds": ok, "detail": detail})

    for task, rs in by_task.items():
        none = next((r for r in rs if r["defence"] == "none"), None)
        if none is None:
            continue
        others = [r for r in rs if r is not none]
        if none["inv_client_psnr"] is not None:
            leak = [r["inv_client_psnr"] for r in others if r["inv_client_psnr"] is not None]
            add(task, "no defence leaks most (per-client inversion PSNR)", all(none["inv_client_psnr"] >= v for v in leak),
                f"none {none['inv_client_psnr']:.1f} dB vs max of others {max(leak, default=float('nan')):.1f} dB")
        hidden = [r for r in rs if not r["client_observable"]]
        if hidden and none["inv_agg_psnr"] is not None:
            sec = [r for r in hidden if r["epsilon"] is None and not r["compressed"]]  # secure aggregation alone
            if sec:
                prior = none["inv_prior_psnr"] or 0.0
                ok = all(r["inv_agg_psnr"] is not None and r["inv_agg_psnr"] > prior + 3 for r in sec)
                add(task, "secure aggregation hides each client's update but the aggregate still leaks", ok,
                    ", ".join(f"{r['defence']}: aggregate {r['inv_agg_psnr']:.1f} dB" for r in sec)
                    + f" (prior guess {prior:.1f} dB)")
        dp = [r for r in rs if r["epsilon"] is not None]
        if dp and none["mia_agg_auc"] is not None:
            ok = all(r["mia_agg_auc"] is not None and r["mia_agg_auc"] <= none["mia_agg_auc"] for r in dp)
            add(task, "DP lowers membership AUC on the released aggregate", ok,
                f"none {none['mia_agg_auc']:.3f}; " + ", ".join(f"{r['defence']} {r['mia_agg_auc']:.3f}" for r in dp))
        if dp and none["audit_epsilon_lb"] is not None:
            ok = all(r["audit_epsilon_lb"] is not None and r["audit_epsilon_lb"] < none["audit_epsilon_lb"] for r in dp)
            add(task, "DP lowers the audit's ε lower bound", ok,
                f"none {none['audit_epsilon_lb']:.2f}; " + ", ".join(
                    f"{r['defence']} {r['audit_epsilon_lb']:.2f}" for r in dp if r["audit_epsilon_lb"] is not None))
            bound_ok = all(r["audit_epsilon_lb"] <= r["epsilon"] for r in dp if r["audit_epsilon_lb"] is not None)
            add(task, "no DP cell's audit bound exceeds its accountant ε", bound_ok,
                ", ".join(f"{r['defence']} {r['audit_epsilon_lb']:.2f} ≤ {r['epsilon']:.2f}" for r in dp
                          if r["audit_epsilon_lb"] is not None))
        if dp and none["accuracy"] is not None:
            add(task, "accuracy cost of DP", None, ", ".join(
                f"{r['defence']} {r['accuracy']:.3f} ({(r['accuracy'] - none['accuracy']) * 100:+.1f} pts)" for r in dp))
    return checks
