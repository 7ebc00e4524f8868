"""Activation and normalisation factories.

CReLU and deep Fourier features are not in torch: each is a two-line concatenation, written here
because no maintained library provides them as modules.
"""

from __future__ import annotations

import torch
from torch import nn


class CReLU(nn.Module):
    """Concatenated ReLU (Shang et al. 2016): [relu(x), relu(-x)] along the feature axis (dim 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(x), torch.relu(-x)], dim=1)


class FourierFeatures(nn.Module):
    """Deep Fourier features (Lewandowski et al. 2024): [sin(x), cos(x)] along dim 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.sin(x), torch.cos(x)], dim=1)


def width_factor(activation: str) -> int:
    """How many output features an activation makes per input feature (concatenating ones: 2)."""
    return 2 if activation in ("crelu", "dff") else 1


def make_activation(name: str, leaky_slope: float = 0.01) -> nn.Module:
    factories = {
        "relu": nn.ReLU,
        "leaky-relu": lambda: nn.LeakyReLU(leaky_slope),
        "mish": nn.Mish,
        "gelu": nn.GELU,
        "tanh": nn.Tanh,
        "crelu": CReLU,
        "dff": FourierFeatures,
    }
    if name not in factories:
        raise ValueError(f"unknown activation {name!r} (allowed: {', '.join(factories)})")
    return factories[name]()


def make_norm(kind: str, shape: tuple[int, ...]) -> nn.Module:
    """Norm placed before the activation. ``shape`` is (C, H, W) for conv layers, (F,) for dense.

    layernorm: GroupNorm(1, C) on conv maps (normalises over C,H,W with per-channel affine) and
    LayerNorm on dense features; rmsnorm: torch.nn.RMSNorm over the same dimensions.
    """
    if kind == "none":
        return nn.Identity()
    if kind == "layernorm":
        return nn.GroupNorm(1, shape[0]) if len(shape) == 3 else nn.LayerNorm(shape)
    if kind == "rmsnorm":
        return nn.RMSNorm(list(shape))
    raise ValueError(f"unknown norm {kind!r} (allowed: none, layernorm, rmsnorm)")
