"""Small torch models for the shipped data sets, built deterministically from a seed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fl.errors import ConfigError

MODELS: tuple[str, ...] = ("logreg", "mlp", "cnn")
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError("model.activation", f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class LogisticRegression(nn.Module):
    """Multinomial logistic regression (a single linear layer on flattened inputs)."""

    def __init__(self, in_features: int, num_outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_outputs: int, activation: str = "relu") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), _activation(activation)]
            width = h
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """Two 3x3 conv layers, one 2x2 max-pool, two linear layers: for digits (8x8) and MNIST (28x28)."""

    def __init__(
        self, in_shape: tuple[int, int, int], num_outputs: int, channels: int = 16, hidden: int = 64,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, channels, 3, padding=1),
            _activation(activation),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            _activation(activation),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * channels * (h // 2) * (w // 2), hidden),
            _activation(activation),
            nn.Linear(hidden, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(
    name: str,
    feature_shape: tuple[int, ...],
    num_outputs: int,
    *,
    hidden: Sequence[int] = (32,),
    seed: int = 0,
    activation: str = "relu",
) -> nn.Module:
    """Build a model with parameters drawn from ``seed`` without touching torch's global RNG."""
    in_features = 1
    for d in feature_shape:
        in_features *= d
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "logreg":
            return LogisticRegression(in_features, num_outputs)
        if name == "mlp":
            return MLP(in_features, hidden, num_outputs, activation)
        if name == "cnn":
            if len(feature_shape) != 3:
                raise ConfigError("model.name", f"'cnn' needs image data (C, H, W), got feature shape {feature_shape}")
            c, h, w = feature_shape
            return SmallCNN((c, h, w), num_outputs, activation=activation)
    raise ConfigError("model.name", f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
