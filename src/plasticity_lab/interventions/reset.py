"""Re-initialisation family: full resets and shrink-and-perturb, at shifts or at every step.

``parts`` name the network pieces: ``encoder`` (every hidden block, norm scales/offsets included),
``policy`` and ``value`` (the heads). "Fresh" values are what torch's default initialiser would
draw now (:func:`plasticity_lab.nets.surgery.fresh_params`; norm scales 1, offsets 0); spectral-norm
layers are edited through their stored ``original`` weight. Frozen parameters (an injected head's
old and reference copies) are left alone.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from plasticity_lab.interventions.anchors import ParamAnchors
from plasticity_lab.interventions.base import Intervention, Params, register
from plasticity_lab.nets.surgery import assign, fresh_params, param_layers

Part = Literal["encoder", "policy", "value"]


def part_layers(model: nn.Module, parts: list[str]) -> list[nn.Module]:
    modules = {"encoder": model.blocks, "policy": model.policy, "value": model.value}
    return [layer for part in parts for layer in param_layers(modules[part])]


class ResetParams(Params):
    parts: list[Part] = Field(["policy", "value"], min_length=1)
    """Pieces re-initialised at each shift: [policy, value] = reset-final, all three = reset-all."""


@register
class Reset(Intervention):
    """Re-initialise ``parts`` at every shift; their Adam moments are cleared too, so a run that
    keeps its optimiser across shifts does not push fresh weights with stale momentum."""

    name = "reset"
    Params = ResetParams

    def at_shift(self, model, optimizer):
        for layer in part_layers(model, self.params.parts):
            for param, value in fresh_params(layer):
                if param.requires_grad:
                    assign(param, (...,), value, optimizer)


class ShrinkPerturbParams(Params):
    shrink: float = Field(0.5, ge=0)
    """Factor on the current parameters."""
    perturb: float = Field(0.5, ge=0)
    """Factor on a fresh initialisation."""
    parts: list[Part] = Field(["encoder", "policy", "value"], min_length=1)
    """Pieces shrunk and perturbed at each shift."""


@register
class ShrinkPerturb(Intervention):
    """Shrink and perturb (Ash & Adams 2020) at every shift: theta <- shrink*theta + perturb*theta_fresh."""

    name = "shrink_perturb"
    Params = ShrinkPerturbParams

    @torch.no_grad()
    def at_shift(self, model, optimizer):
        p = self.params
        for layer in part_layers(model, p.parts):
            for param, fresh in fresh_params(layer):
                if param.requires_grad:
                    param.mul_(p.shrink).add_(fresh, alpha=p.perturb)


class SoftShrinkPerturbParams(Params):
    shrink: float = Field(0.999999, ge=0)
    """Factor on the current parameters, applied after every optimiser step."""
    perturb: float = Field(1e-6, ge=0)
    """Factor on the target (fresh noise or the initial weights)."""
    target: Literal["fresh", "init"] = "fresh"
    """fresh: a new default-init draw every step (reference paper); init: the run's initial weights."""


@register
class SoftShrinkPerturb(Intervention):
    """Shrink and perturb after every optimiser step, on all trainable parameters.

    target=fresh: theta <- shrink*theta + perturb*eps, eps a new draw of torch's default init
    (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for affine weights and biases, 1/0 for norm scales/offsets),
    drawn straight into tensors because this runs at every step. target=init (Plasticine style):
    theta <- shrink*theta + perturb*theta_0, theta_0 the parameters when the intervention was built
    (a parameter created later, by injection, uses its value then); perturb = 1 - shrink
    interpolates towards theta_0.
    """

    name = "soft_shrink_perturb"
    Params = SoftShrinkPerturbParams

    def __init__(self, params, model, plan):
        super().__init__(params, model, plan)
        self.anchors = ParamAnchors(model, torch.clone) if params.target == "init" else None

    @torch.no_grad()
    def after_step(self, model, optimizer):
        p = self.params
        if self.anchors is not None:
            targets = self.anchors.pairs()
        else:
            targets = [pair for layer in param_layers(model) for pair in fresh_params(layer, cheap=True)]
        for param, target in targets:
            if param.requires_grad:
                param.mul_(p.shrink).add_(target, alpha=p.perturb)

    def state_dict(self):
        return {"theta0": self.anchors.state_dict()} if self.anchors is not None else {}

    def load_state_dict(self, state):
        if self.anchors is not None:
            self.anchors.load_state_dict(state["theta0"])
