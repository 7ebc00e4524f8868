"""Parameter surgery shared by reset-style interventions: fresh initial values, in-place edits
and structural changes that keep the optimiser state consistent.

Layers may carry a torch parametrization (spectral norm); edits then go to the stored
``original`` tensor, which is what the optimiser updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from plasticity_lab.nets.layers import ChannelRMSNorm


def weight_param(layer: nn.Module) -> nn.Parameter:
    """The trainable tensor behind ``layer.weight`` (the parametrization's original if any)."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


@torch.no_grad()
def fresh_init(layer: nn.Module, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias as torch's default initialiser would draw them for this layer now, from
    ``generator`` (a CPU generator; None: the global RNG): the draws of ``reset_parameters`` of
    nn.Linear / nn.Conv2d, on the CPU as a constructor makes them (kaiming_uniform with
    a = sqrt(5), then the bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)))."""
    if not isinstance(layer, AFFINE):
        raise TypeError(f"no fresh initialiser for {type(layer).__name__}")
    current = weight_param(layer)
    weight = torch.empty(current.shape)  # the default dtype, as a constructor draws it
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    bias = None
    if layer.bias is not None:
        bound = init_bound(layer)
        bias = nn.init.uniform_(torch.empty(layer.bias.shape), -bound, bound, generator=generator)
        bias = bias.to(current.device)
    return weight.to(current.device), bias


@torch.no_grad()
def clear_state(optimizer: Any, param: torch.Tensor, where: torch.Tensor) -> None:
    """Zero ``optimizer``'s per-entry state of ``param`` (Adam's moments, per-entry step counts:
    every state tensor of the parameter's shape) where the bool ``where`` (broadcast to its
    shape) holds, so re-initialised entries are not pushed by stale momentum."""
    for value in (getattr(optimizer, "state", None) or {}).get(param, {}).values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.masked_fill_(where.expand(param.shape), 0)


def follow_parameters(optimizer: Any, model: nn.Module) -> None:
    """Point a kept optimiser at ``model``'s current parameters (in model order, so its checkpoint
    loads into a freshly built one) after a method changed the network's structure; parameters
    that left the model (a merged injection) lose their state. Only a torch optimiser holds a
    parameter list: a population member's view into the stacked state needs nothing, the
    population re-stacks and carries the state itself."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        return
    (group,) = optimizer.param_groups
    group["params"] = list(model.parameters())
    live = set(group["params"])
    for param in [p for p in optimizer.state if isinstance(p, torch.Tensor) and p not in live]:
        del optimizer.state[param]


AFFINE = (nn.Linear, nn.Conv2d)
NORMS = (nn.GroupNorm, nn.LayerNorm, ChannelRMSNorm)


def param_layers(module: nn.Module) -> list[nn.Module]:
    """The affine and norm layers inside ``module``: together they own every model parameter."""
    return [m for m in module.modules() if isinstance(m, AFFINE + NORMS)]


def affine_weights(module: nn.Module) -> list[nn.Parameter]:
    """The trainable tensors behind every Linear/Conv2d weight in ``module`` (frozen ones included),
    so code that edits "the weights of a reader" also reaches the parts of a wrapped head."""
    return [weight_param(m) for m in module.modules() if isinstance(m, AFFINE)]


@torch.no_grad()
def applied_weights(module: nn.Module) -> list[torch.Tensor]:
    """Copies of the weights the forward pass applies, for every trainable Linear/Conv2d in
    ``module`` (biases, norm gains and frozen layers left out), in module order (see
    :func:`applied_weight`)."""
    return [applied_weight(layer) for layer in module.modules() if isinstance(layer, AFFINE) and weight_param(layer).requires_grad]


@torch.no_grad()
def applied_weight(layer: nn.Module) -> torch.Tensor:
    """A copy of the weight ``layer``'s forward pass applies. A parametrized weight is read with
    its parametrization in eval mode, so spectral norm gives ``W / sigma`` from its current
    power-iteration vectors without advancing them; the layer is left exactly as it was."""
    if not parametrize.is_parametrized(layer, "weight"):
        return layer.weight.detach().clone()
    parts = list(layer.parametrizations.weight.modules())
    modes = [part.training for part in parts]
    for part in parts:
        part.training = False
    try:
        return layer.weight.detach().clone()
    finally:
        for part, mode in zip(parts, modes):
            part.training = mode


def init_bound(layer: nn.Module) -> float:
    """torch's default Linear/Conv2d init draws weight and bias from U(-b, b) with b = 1/sqrt(fan_in)
    (kaiming_uniform with a=sqrt(5) reduces to this bound), so one number describes both."""
    return 1.0 / math.sqrt(weight_param(layer)[0].numel())


@dataclass(frozen=True)
class FreshDraw:
    """How torch's default init sets ``param``: U(-bound, bound) (affine weights and biases), or
    the constant ``fill`` (norm scales 1, offsets 0)."""

    param: nn.Parameter
    bound: float | None = None
    fill: float | None = None

    def fill_(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``out`` (the parameter's shape) set to a fresh value, in place (``generator`` on its
        device; None: the global RNG)."""
        if self.bound is None:
            return out.fill_(self.fill)
        return out.uniform_(-self.bound, self.bound, generator=generator)


def fresh_draws(layer: nn.Module) -> list[FreshDraw]:
    """The :class:`FreshDraw` of every parameter of an affine or norm layer (cheap: no module is
    built, for methods that perturb at every step and may keep this list)."""
    if isinstance(layer, AFFINE):
        bound = init_bound(layer)
        return [FreshDraw(p, bound=bound) for p in (weight_param(layer), layer.bias) if p is not None]
    if isinstance(layer, NORMS):
        fills = ((getattr(layer, "weight", None), 1.0), (getattr(layer, "bias", None), 0.0))
        return [FreshDraw(p, fill=value) for p, value in fills if p is not None]
    raise TypeError(f"no fresh initialiser for {type(layer).__name__}")


@torch.no_grad()
def fresh_params(layer: nn.Module, generator: torch.Generator | None = None) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, value torch's default init would give it now) for an affine or norm layer:
    affine layers from :func:`fresh_init` (``generator``: a CPU one), norm scales 1 and offsets 0."""
    if isinstance(layer, AFFINE):
        weight, bias = fresh_init(layer, generator)
        pairs = [(weight_param(layer), weight)]
        return pairs + ([(layer.bias, bias)] if bias is not None else [])
    return [(d.param, d.fill_(torch.empty_like(d.param))) for d in fresh_draws(layer)]
