"""Plasticity injection (Nikishin et al. 2023) for the policy and value heads.

At each shift every head h becomes ``InjectedHead``: h(x) + h_new(x) - stopgrad(h_new0(x)), where
h_new and h_new0 start as the same fresh layer and h_new0 never trains, so the output is unchanged
at the moment of injection while a fresh, plastic layer learns from then on. Repeated shifts nest
the wrapper (the previous wrapper becomes the next one's ``old``).

Because ``model.policy`` / ``model.value`` change type, the number of injections is this method's
checkpoint state and ``load_state_dict`` re-applies them to a fresh model before its weights load.
Wrapped heads have no ``.weight`` of their own; unit-level methods reach all of a reader's weight
matrices through :func:`plasticity_lab.nets.surgery.affine_weights`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from plasticity_lab.interventions.base import Intervention, Params, register
from plasticity_lab.nets.surgery import weight_param


class InjectedHead(nn.Module):
    """old(x) + new(x) - new0(x).detach(); ``new0`` is a frozen copy of ``new`` as initialised."""

    def __init__(self, old: nn.Module, freeze_old: bool) -> None:
        super().__init__()
        template = old.new if isinstance(old, InjectedHead) else old
        device = weight_param(template).device
        self.old = old.requires_grad_(False) if freeze_old else old
        self.new = nn.Linear(template.in_features, template.out_features, device=device)
        if parametrize.is_parametrized(template, "weight"):
            parametrizations.spectral_norm(self.new)
        self.new0 = copy.deepcopy(self.new).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The difference first: it is exactly zero at injection, so the output is bit-identical.
        return self.old(x) + (self.new(x) - self.new0(x).detach())


class InjectParams(Params):
    freeze_old: bool = True
    """Freeze the old head at injection (the paper does); False keeps training it too."""


@register
class Inject(Intervention):
    name = "inject"
    Params = InjectParams

    def __init__(self, params, model, plan):
        super().__init__(params, model, plan)
        self.model = model
        self.count = 0

    def inject(self, model: nn.Module) -> None:
        model.policy = InjectedHead(model.policy, self.params.freeze_old)
        model.value = InjectedHead(model.value, self.params.freeze_old)
        self.count += 1

    def at_shift(self, model, optimizer):
        self.inject(model)
        # The runner may keep this optimiser (reset_optimizer_at_shift: false): give it the new
        # parameters, in model order so its checkpoint loads into a freshly built optimiser.
        (group,) = optimizer.param_groups
        group["params"] = list(model.parameters())

    def state_dict(self):
        return {"injections": self.count}

    def load_state_dict(self, state):
        if state["injections"] < self.count:
            raise ValueError(f"inject: checkpoint has {state['injections']} injections, the model already {self.count}")
        while self.count < state["injections"]:
            self.inject(self.model)
