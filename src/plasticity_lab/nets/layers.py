"""Activation, normalisation and spectral-norm factories.

CReLU and deep Fourier features are not in torch: each is a two-line concatenation, written here
because no maintained library provides them as modules. The RMS norm module is written here too:
torch's ``nn.RMSNorm`` carries one gain per normalised element (per channel *and* position on conv
maps), and the layernorm it is compared with has per-channel gains only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

COMPUTE_DTYPE: ContextVar[torch.dtype | None] = ContextVar("compute_dtype", default=None)
"""The dtype the encoder's affine layers compute in (None: their parameters' own, fp32)."""


@contextlib.contextmanager
def compute_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Run the encoder's linear and conv layers in ``dtype`` (``precision: bf16``) while inside.

    Written out instead of ``torch.autocast`` because autocast does not reach into
    ``torch.func.vmap``: a population's batched linear and conv layers would silently stay fp32.
    The policy is autocast's for these layers (inputs, weights and biases cast to ``dtype``, the
    output in ``dtype``); everything else runs in the dtype it is given (norms accept bf16
    inputs with fp32 parameters), and the heads are fp32 (:meth:`ActorCritic.outputs`).
    """
    token = COMPUTE_DTYPE.set(dtype)
    try:
        yield
    finally:
        COMPUTE_DTYPE.reset(token)


def affine(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for a Linear or Conv2d (spectral-normalised or not), in :data:`COMPUTE_DTYPE`."""
    dtype = COMPUTE_DTYPE.get()
    if dtype is None:
        return layer(x)
    weight = layer.weight.to(dtype)  # a parametrization computes W / sigma in fp32 first
    bias = layer.bias.to(dtype) if layer.bias is not None else None
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x.to(dtype), weight, bias)
    return nn.functional.linear(x.to(dtype), weight, bias)


class CReLU(nn.Module):
    """Concatenated ReLU (Shang et al. 2016): [relu(x), relu(-x)] along the feature axis (dim 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(x), torch.relu(-x)], dim=1)


class FourierFeatures(nn.Module):
    """Deep Fourier features (Lewandowski et al. 2024): [sin(x), cos(x)] along dim 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.sin(x), torch.cos(x)], dim=1)


class ChannelRMSNorm(nn.Module):
    """RMS normalisation (Zhang & Sennrich 2019) over every non-batch dimension with one gain per
    channel (dim 1): the rmsnorm twin of GroupNorm(1, C) / LayerNorm(F), so that layernorm and
    rmsnorm differ only in the mean subtraction and the offset.

    y = x / sqrt(mean(x^2) + eps) * g[c]; the RMS comes from ``torch.nn.functional.rms_norm``.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = self.weight.view(1, -1, *([1] * (x.dim() - 2)))
        return nn.functional.rms_norm(x, x.shape[1:], eps=self.eps) * gain

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


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
    LayerNorm on dense features; rmsnorm: :class:`ChannelRMSNorm` over the same dimensions with the
    same per-channel gain (eps 1e-5 as both), no offset.
    """
    if kind == "none":
        return nn.Identity()
    if kind == "layernorm":
        return nn.GroupNorm(1, shape[0]) if len(shape) == 3 else nn.LayerNorm(shape)
    if kind == "rmsnorm":
        return ChannelRMSNorm(shape[0])
    raise ValueError(f"unknown norm {kind!r} (allowed: none, layernorm, rmsnorm)")


class FP32SpectralNorm(parametrizations._SpectralNorm):
    """torch's spectral-norm parametrization with its power iteration and sigma kept in fp32 under
    bf16 autocast (on CUDA autocast would run their matrix-vector products in bf16, an error of
    ~0.4% in every normalised weight). torch has no precision option for it, hence this subclass;
    its state (``_u``, ``_v``) and keys are torch's own.

    The power iteration writes ``_u``/``_v`` with ``copy_`` instead of torch's ``out=`` (the same
    numbers): ``torch.func.vmap`` has no batching rule for ``out=``, and a population's forward
    (:mod:`plasticity_lab.nets.population`) runs every member's parametrization under vmap."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            return super().forward(weight.float())

    @torch.no_grad()
    def _power_method(self, weight_mat: torch.Tensor, n_power_iterations: int) -> None:
        for _ in range(n_power_iterations):
            self._u.copy_(nn.functional.normalize(torch.mv(weight_mat, self._v), dim=0, eps=self.eps))
            self._v.copy_(nn.functional.normalize(torch.mv(weight_mat.H, self._u), dim=0, eps=self.eps))


def spectral_norm(layer: nn.Module) -> nn.Module:
    """``torch.nn.utils.parametrizations.spectral_norm(layer)`` (one power iteration per training
    forward, dim 0) with an fp32 sigma."""
    parametrize.register_parametrization(layer, "weight", FP32SpectralNorm(layer.weight))
    return layer
