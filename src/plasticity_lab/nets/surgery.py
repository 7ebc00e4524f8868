"""Parameter surgery shared by reset-style interventions: fresh initial values and in-place
edits that keep the optimiser state consistent.

Layers may carry a torch parametrization (spectral norm); edits then go to the stored
``original`` tensor, which is what the optimiser updates.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


def weight_param(layer: nn.Module) -> nn.Parameter:
    """The trainable tensor behind ``layer.weight`` (the parametrization's original if any)."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


def fresh_init(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias as torch's default initialiser would draw them for this layer now."""
    if isinstance(layer, nn.Conv2d):
        twin: nn.Module = nn.Conv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
            bias=layer.bias is not None,
        )
    elif isinstance(layer, nn.Linear):
        twin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    else:
        raise TypeError(f"no fresh initialiser for {type(layer).__name__}")
    device = weight_param(layer).device
    bias = twin.bias.detach().to(device) if twin.bias is not None else None
    return twin.weight.detach().to(device), bias


@torch.no_grad()
def assign(
    param: torch.Tensor,
    index: tuple,
    value: torch.Tensor | float,
    optimizer: torch.optim.Optimizer | None,
) -> None:
    """``param[index] = value`` and clear the optimiser's per-entry state (Adam moments) there."""
    param[index] = value
    if optimizer is None:
        return
    for state_value in optimizer.state.get(param, {}).values():
        if torch.is_tensor(state_value) and state_value.shape == param.shape:
            state_value[index] = 0
