"""Flatten a torch model's parameters to one float32 vector and back.

Every privacy stage (clipping, noise, quantisation, masking, encryption) works on flat vectors, so the
layout is computed once per model architecture and reused for every client and round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fl.errors import UpdateError


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of a module's trainable parameters in the flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    size: int

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> ParamLayout:
        names: list[str] = []
        shapes: list[tuple[int, ...]] = []
        offsets: list[int] = []
        offset = 0
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            names.append(name)
            shapes.append(tuple(param.shape))
            offsets.append(offset)
            offset += param.numel()
        return cls(tuple(names), tuple(shapes), tuple(offsets), offset)

    def _params(self, module: torch.nn.Module) -> list[torch.nn.Parameter]:
        params = dict(module.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise UpdateError(f"module lacks parameters of this layout: {missing[:3]}")
        for name, shape in zip(self.names, self.shapes, strict=True):
            if tuple(params[name].shape) != shape:
                raise UpdateError(f"parameter {name!r} has shape {tuple(params[name].shape)}, layout says {shape}")
        return [params[n] for n in self.names]

    def flatten(self, module: torch.nn.Module) -> np.ndarray:
        """The module's parameters as a new float32 vector of length :attr:`size`."""
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).to(torch.float32) for p in self._params(module)])
        return flat.numpy().copy()

    def check_vector(self, vector: np.ndarray, what: str = "vector") -> None:
        if not isinstance(vector, np.ndarray):
            raise UpdateError(f"{what} must be a numpy array, got {type(vector).__name__}")
        if vector.dtype != np.float32:
            raise UpdateError(f"{what} dtype must be float32, got {vector.dtype}")
        if vector.shape != (self.size,):
            raise UpdateError(f"{what} must have shape ({self.size},), got {vector.shape}")

    def load_into(self, module: torch.nn.Module, vector: np.ndarray) -> None:
        """Copy ``vector`` into the module's parameters (in place)."""
        self.check_vector(vector)
        source = torch.from_numpy(vector)
        with torch.no_grad():
            for param, offset, shape in zip(self._params(module), self.offsets, self.shapes, strict=True):
                n = param.numel()
                param.copy_(source[offset : offset + n].view(shape))

    def unflatten(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Split a flat vector into named arrays (views, no copy)."""
        self.check_vector(vector)
        return {
            name: vector[offset : offset + int(np.prod(shape, dtype=np.int64))].reshape(shape)
            for name, shape, offset in zip(self.names, self.shapes, self.offsets, strict=True)
        }

    def segments(self) -> list[tuple[str, int, int]]:
        """``(name, start, stop)`` of each parameter in the flat vector (for per-layer clipping)."""
        ends = (*self.offsets[1:], self.size)
        return list(zip(self.names, self.offsets, ends, strict=True))
