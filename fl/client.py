"""Local training on one client: E epochs of minibatch SGD with an optional FedProx term.

Training is deterministic given ``seed``: the only randomness is the minibatch order, drawn from a
private ``torch.Generator``; torch's global RNG is never used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from fl.errors import ConfigError
from fl.layout import ParamLayout
from fl.types import ClientUpdate

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class TrainConfig:
    """Local optimisation settings. ``batch_size = 0`` means full batch; ``mu`` is FedProx's μ."""

    epochs: int = 1
    batch_size: int = 16
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    mu: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError("client.epochs", f"must be >= 1, got {self.epochs}")
        if self.batch_size < 0:
            raise ConfigError("client.batch_size", f"must be >= 0 (0 = full batch), got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError("client.lr", f"must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError("client.momentum", f"must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError("client.weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.mu < 0:
            raise ConfigError("client.mu", f"must be >= 0, got {self.mu}")


def loss_fn(task: Task) -> nn.Module:
    return nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()


def _targets(y: np.ndarray, task: Task) -> torch.Tensor:
    return torch.from_numpy(y.astype(np.int64)) if task == "classification" else torch.from_numpy(y.astype(np.float32))


def _predict(model: nn.Module, x: torch.Tensor, task: Task) -> torch.Tensor:
    out = model(x)
    return out if task == "classification" else out.reshape(-1)


def local_train(
    model: nn.Module,
    layout: ParamLayout,
    global_weights: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    *,
    task: Task,
    client_id: int,
    seed: int,
) -> ClientUpdate:
    """Train from ``global_weights`` on ``(x, y)`` and return ``w_local - w_global`` as an update.

    ``model`` is scratch space: its parameters are overwritten with ``global_weights`` first.
    """
    layout.load_into(model, global_weights)
    model.train()
    n = int(x.shape[0])
    xt = torch.from_numpy(x)
    yt = _targets(y, task)
    criterion = loss_fn(task)
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if config.mu > 0 else []
    optimiser = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    batch = n if config.batch_size == 0 else min(config.batch_size, n)
    total_loss = 0.0
    steps = 0
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator) if batch < n else torch.arange(n)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            optimiser.zero_grad(set_to_none=True)
            loss = criterion(_predict(model, xt[idx], task), yt[idx])
            objective = loss
            if config.mu > 0:
                # FedProx (Li et al. 2020): mu/2 * ||w - w_t||^2 keeps heterogeneous clients near the global model.
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
                objective = loss + 0.5 * config.mu * prox
            objective.backward()
            optimiser.step()
            total_loss += float(loss.detach())
            steps += 1
    delta = layout.flatten(model) - global_weights
    return ClientUpdate(client_id, delta.astype(np.float32, copy=False), n, {"train_loss": total_loss / max(steps, 1)})


def local_gradient(
    model: nn.Module,
    layout: ParamLayout,
    global_weights: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: Task,
    client_id: int,
) -> ClientUpdate:
    """FedSGD's client step: the full-batch gradient at ``global_weights``, sent as ``-gradient``.

    The server applies ``w <- w + lr * mean(-g_k)``, i.e. one step of large-batch SGD.
    """
    layout.load_into(model, global_weights)
    model.train()
    model.zero_grad(set_to_none=True)
    loss = loss_fn(task)(_predict(model, torch.from_numpy(x), task), _targets(y, task))
    loss.backward()
    grads = [
        p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel())
        for p in model.parameters()
        if p.requires_grad
    ]
    neg_grad = (-torch.cat(grads)).numpy().astype(np.float32, copy=True)
    return ClientUpdate(client_id, neg_grad, int(x.shape[0]), {"train_loss": float(loss.detach())})


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, *, task: Task, batch_size: int = 2048) -> dict[str, float]:
    """Mean loss and accuracy (classification) or MSE and R² (regression) of ``model`` on ``(x, y)``."""
    model.eval()
    n = int(x.shape[0])
    if n == 0:
        return {"loss": float("nan"), "accuracy" if task == "classification" else "r2": float("nan")}
    criterion = loss_fn(task)
    losses = []
    correct = 0
    preds = []
    for start in range(0, n, batch_size):
        xb = torch.from_numpy(x[start : start + batch_size])
        yb = _targets(y[start : start + batch_size], task)
        out = _predict(model, xb, task)
        losses.append(float(criterion(out, yb)) * xb.shape[0])
        if task == "classification":
            correct += int((out.argmax(1) == yb).sum())
        else:
            preds.append(out.numpy())
    metrics = {"loss": sum(losses) / n}
    if task == "classification":
        metrics["accuracy"] = correct / n
    else:
        pred = np.concatenate(preds).astype(np.float64)
        resid = float(((y - pred) ** 2).sum())
        total = float(((y - y.mean()) ** 2).sum())
        metrics["r2"] = 1.0 - resid / total if total > 0 else float("nan")
    return metrics
