"""Normalize-and-project (Lyle et al. 2024, "Normalization and effective learning rates in RL").

NaP = normalisation layers before every nonlinearity (here: ``model.norm: layernorm`` or
``rmsnorm``, required: a network without them is refused, since the projection alone would change
the network's function instead of only its effective learning rate) + after every optimiser step,
each parameter group rescaled to the norm it had at initialisation:

* a hidden layer's weight and bias, jointly: its normalised output is invariant to scaling both
  together, so the projection fixes the effective learning rate without changing the function
  (a spectral-norm layer: its stored ``original`` weight alone, which the applied weight is
  invariant to; its bias is then left free);
* a norm layer's scale and offset, jointly (the paper's treatment: with a homogeneous activation
  the next normalised layer is invariant to their joint scale); initial norm sqrt(C);
* the heads' weights (the paper projects every layer's weights); the heads' biases are free.

Frozen parameters (an injected head's old copies) are skipped; a head injected later is projected
to its norm before its first update (noted by the ``loss`` hook). Targets are kept per parameter
(its initial squared norm) in the checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from plasticity_lab.interventions.anchors import ParamAnchors
from plasticity_lab.interventions.base import Intervention, Params, register
from plasticity_lab.nets.surgery import AFFINE, weight_param

NAP_NEEDS_NORM = (
    "interventions.nap: needs normalisation layers before the activations (Lyle et al. 2024); "
    "set model.norm: layernorm or rmsnorm in the same condition"
)


def _squared_norm(t: torch.Tensor) -> torch.Tensor:
    return t.double().pow(2).sum()


def projection_groups(model: nn.Module) -> list[list[torch.Tensor]]:
    """The parameter groups NaP holds at a constant joint norm (see the module docstring)."""
    groups: list[list[torch.Tensor]] = []
    for block in model.blocks:
        layer, norm = block.layer, block.norm
        if parametrize.is_parametrized(layer, "weight"):
            groups.append([weight_param(layer)])
        else:
            groups.append([p for p in (layer.weight, layer.bias) if p is not None])
        groups.append([p for p in (getattr(norm, "weight", None), getattr(norm, "bias", None)) if p is not None])
    for head in model.heads:
        groups.extend([weight_param(m)] for m in head.modules() if isinstance(m, AFFINE))
    return groups


@register
class NormalizeProject(Intervention):
    name = "nap"
    edits_weights = True
    Params = Params

    def __init__(self, params, model, plan):
        super().__init__(params, model, plan)
        if all(isinstance(block.norm, nn.Identity) for block in model.blocks):
            raise ValueError(NAP_NEEDS_NORM)
        self.targets = ParamAnchors(model, _squared_norm)

    @classmethod
    def check_config(cls, params, cfg) -> None:
        if cfg.model.norm == "none":
            raise ValueError(NAP_NEEDS_NORM)

    def loss_members(self, cohort, contexts):
        """No loss term: sees a parameter created during the run (an injected head) before its
        first update, so its target is its initial norm."""
        cohort.stack_anchors("targets")
        return None

    @torch.no_grad()
    def after_step_members(self, cohort):
        """Every acting member's groups rescaled at once: each member's norm is a reduction over
        its own row; a member whose group is all zeros is left as it is."""
        target = cohort.stack_anchors("targets")
        for group in projection_groups(cohort.model):
            names = [cohort.name(p) for p in group if cohort.name(p) in target]
            if not names:
                continue
            values = [cohort.values(name) for name in names]
            current = torch.sqrt(sum(v.double().pow(2).flatten(1).sum(1) for v in values))
            scale = torch.where(current == 0, 1.0, torch.sqrt(sum(target[name] for name in names)) / current)
            for name, value in zip(names, values):
                value.mul_(scale.to(value.dtype).view(-1, *[1] * (value.dim() - 1)))
                cohort.store(name, value)

    def state_dict(self):
        return {"targets": self.targets.state_dict()}

    def load_state_dict(self, state):
        self.targets.load_state_dict(state["targets"])
