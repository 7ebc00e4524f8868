"""Activation, normalisation and spectral-norm factories.

CReLU and deep Fourier features are not in torch: each is a two-line concatenation, written here
because no maintained library provides them as modules. The RMS norm module is written here too:
torch's ``nn.RMSNorm`` carries one gain per normalised element (per channel *and* position on conv
maps), and the layernorm it is compared with has per-channel gains only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
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


CHANNELS_LAST_WEIGHTS: ContextVar[dict[nn.Module, tuple[int, torch.Tensor]] | None] = ContextVar(
    "channels_last_weights", default=None
)
"""Conv layer -> (its weight's version, a channels-last copy of the weight), see :func:`frozen_conv_weights`."""


@contextlib.contextmanager
def frozen_conv_weights(modules: Iterable[nn.Module]) -> Iterator[None]:
    """While inside, the plain Conv2d layers of ``modules`` convolve channels-last inputs (image
    frames are: (N, H, W, C) permuted) with a channels-last copy of their weight made once here.

    Why: for such an input torch converts the weight to channels-last on every call, and on a
    rollout's small batches (the tail of an episode batch: a few envs still running) that copy
    is a large part of the forward. The numbers are the same: torch convolves with the same
    channels-last weight either way. Only for no-grad phases in which the weights do not change
    (collection, evaluation); a layer whose weight changed (version counter), a forward with
    grad, a parametrized (spectral-norm) layer, a layer with hooks or another input layout uses
    ``layer.weight``.
    """
    cache = {
        layer: (layer.weight._version, layer.weight.detach().contiguous(memory_format=torch.channels_last))
        for module in modules for layer in module.modules()
        if isinstance(layer, nn.Conv2d) and not parametrize.is_parametrized(layer)
    }  # fmt: skip
    token = CHANNELS_LAST_WEIGHTS.set(cache)
    try:
        yield
    finally:
        CHANNELS_LAST_WEIGHTS.reset(token)


def _frozen_weight(layer: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The frozen channels-last weight of ``layer`` for input ``x`` where :func:`frozen_conv_weights` applies."""
    cache = CHANNELS_LAST_WEIGHTS.get()
    entry = cache.get(layer) if cache is not None else None
    if (
        entry is None or torch.is_grad_enabled() or entry[0] != layer.weight._version
        or layer._forward_hooks or layer._forward_pre_hooks  # hooks run only through layer(x)
        or not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous()  # torch would keep the weight's layout
    ):  # fmt: skip
        return None
    return entry[1]


def affine(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for a Linear or Conv2d (spectral-normalised or not), in :data:`COMPUTE_DTYPE`."""
    dtype = COMPUTE_DTYPE.get()
    frozen = _frozen_weight(layer, x)
    if dtype is None:
        return layer(x) if frozen is None else layer._conv_forward(x, frozen, layer.bias)
    weight = (layer.weight if frozen is None else frozen).to(dtype)  # a parametrization computes W / sigma in fp32 first
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


def member_invariant_mv(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``matrix @ vector`` as a product and a row sum, so that a population's batched call
    (``vmap``) rounds exactly as a single network's: ``torch.mv`` under vmap becomes a batched
    matrix product whose CPU kernel for one member (gemv) and for several (batched gemm) round
    differently (measured ~1e-7 relative in sigma), which would make a member of a population
    drift from its single run. Costs one (rows, cols) temporary, small beside the layer's forward."""
    return (matrix * vector).sum(-1)


def member_invariant_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``, for a linear layer with one output (the value head, a 1-d action head)
    computed as a product and a sum: a one-output linear layer under ``vmap`` is a matrix-vector
    product, whose CPU kernel rounds differently for one member and for several (see
    :func:`member_invariant_mv`). Layers with two or more outputs round the same either way, and
    other modules (an injection wrapper) compute their own parts; both use ``layer(x)``."""
    if not isinstance(layer, nn.Linear) or layer.out_features != 1:
        return layer(x)
    out = member_invariant_mv(x, layer.weight[0]).unsqueeze(-1)
    return out if layer.bias is None else out + layer.bias


class FP32SpectralNorm(parametrizations._SpectralNorm):
    """torch's spectral-norm parametrization (one power iteration per training forward, dim 0; its
    state ``_u``/``_v`` and keys are torch's own) with two changes, neither available as an option:

    - the power iteration and sigma are kept in fp32 under bf16 autocast (on CUDA autocast would run
      their matrix-vector products in bf16, an error of ~0.4% in every normalised weight);
    - its matrix-vector products are :func:`member_invariant_mv`, so a population's member computes
      its single run's sigma bit for bit, and ``_u``/``_v`` are written with ``copy_`` instead of
      ``out=`` (the same numbers; ``torch.func.vmap`` has no batching rule for ``out=``).
    """

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            weight = weight.float()
            if weight.ndim == 1:
                return nn.functional.normalize(weight, dim=0, eps=self.eps)
            weight_mat = self._reshape_weight_to_matrix(weight)
            if self.training:
                self._power_method(weight_mat, self.n_power_iterations)
            u = self._u.clone(memory_format=torch.contiguous_format)
            v = self._v.clone(memory_format=torch.contiguous_format)
            sigma = (u * member_invariant_mv(weight_mat, v)).sum()  # torch: vdot(u, mv(W, v))
            return weight / sigma

    @torch.no_grad()
    def _power_method(self, weight_mat: torch.Tensor, n_power_iterations: int) -> None:
        for _ in range(n_power_iterations):
            self._u.copy_(nn.functional.normalize(member_invariant_mv(weight_mat, self._v), dim=0, eps=self.eps))
            # W^T u as a column sum (weights are real: .H is .T), without a transposed copy
            self._v.copy_(nn.functional.normalize((weight_mat * self._u.unsqueeze(-1)).sum(-2), dim=0, eps=self.eps))


def spectral_norm(layer: nn.Module) -> nn.Module:
    """``torch.nn.utils.parametrizations.spectral_norm(layer)`` (one power iteration per training
    forward, dim 0) with an fp32 sigma."""
    parametrize.register_parametrization(layer, "weight", FP32SpectralNorm(layer.weight))
    return layer
