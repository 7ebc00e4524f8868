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
from pydantic import Field, model_validator
from torch import nn

from plasticity_lab.interventions.anchors import ParamAnchors
from plasticity_lab.interventions.base import Intervention, Params, register
from plasticity_lab.interventions.cohort import Cohort
from plasticity_lab.nets.surgery import FreshDraw, fresh_draws, fresh_params, param_layers

Part = Literal["encoder", "policy", "value"]


def part_layers(model: nn.Module, parts: list[str]) -> list[nn.Module]:
    modules = {"encoder": model.blocks, "policy": model.policy, "value": model.value}
    return [layer for part in parts for layer in param_layers(modules[part])]


@torch.no_grad()
def fresh_stack(cohort: Cohort, layers: list[nn.Module]) -> list[tuple[str, torch.Tensor]]:
    """(stacked name, (n, ...) fresh values) of every trainable parameter of ``layers``: what
    torch's default initialiser would draw now for each acting member, from its own stream, layer
    after layer as its single run draws them."""
    out = []
    generators = cohort.generators("cpu")
    for layer in layers:
        per_member = [fresh_params(layer, gen) for gen in generators]
        for i, (param, _) in enumerate(per_member[0]):
            if param.requires_grad:
                out.append((cohort.name(param), torch.stack([pairs[i][1] for pairs in per_member])))
    return out


class ResetParams(Params):
    parts: list[Part] = Field(["policy", "value"], min_length=1)
    """Pieces re-initialised at each shift: [policy, value] = reset-final, all three = reset-all."""


@register
class Reset(Intervention):
    """Re-initialise ``parts`` at every shift; their Adam moments are cleared too, so a run that
    keeps its optimiser across shifts does not push fresh weights with stale momentum."""

    name = "reset"
    edits_weights = True
    Params = ResetParams

    def at_shift_members(self, cohort):
        for name, fresh in fresh_stack(cohort, part_layers(cohort.model, self.params.parts)):
            cohort.assign(name, None, fresh)


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
    edits_weights = True
    Params = ShrinkPerturbParams

    def at_shift_members(self, cohort):
        p = self.params
        for name, fresh in fresh_stack(cohort, part_layers(cohort.model, p.parts)):
            cohort.edit(name, lambda value, fresh=fresh: value.mul_(p.shrink).add_(fresh, alpha=p.perturb))


REFERENCE_SHRINK, REFERENCE_PERTURB = 0.999999, 1e-6
"""The reference's per-step values, sized for its 5000-epoch rounds of at least 48 steps each
(x0.79 or less per round)."""


class SoftShrinkPerturbParams(Params):
    shrink: float | None = Field(None, ge=0, le=1)
    """Per-step factor on the current parameters (default 0.999999, the reference's)."""
    perturb: float | None = Field(None, ge=0)
    """Per-step factor on the target (default 1e-6, the reference's)."""
    shrink_per_task: float | None = Field(None, gt=0, le=1)
    """Instead of shrink: the total factor over one round; per step shrink_per_task**(1/updates per round)."""
    perturb_ratio: float | None = Field(None, ge=0)
    """With shrink_per_task: per-step perturb = perturb_ratio * (1 - per-step shrink) (default 1, the
    reference's pairing perturb = 1 - shrink)."""
    target: Literal["fresh", "init"] = "fresh"
    """fresh: a new default-init draw every step (reference paper); init: the run's initial weights."""

    @model_validator(mode="after")
    def _one_parametrisation(self) -> SoftShrinkPerturbParams:
        per_round = self.shrink_per_task is not None or self.perturb_ratio is not None
        if per_round and (self.shrink is not None or self.perturb is not None):
            raise ValueError("give either shrink/perturb (per step) or shrink_per_task/perturb_ratio (per round), not both")
        if self.perturb_ratio is not None and self.shrink_per_task is None:
            raise ValueError("perturb_ratio needs shrink_per_task")
        if not per_round:
            self.shrink = REFERENCE_SHRINK if self.shrink is None else self.shrink
            self.perturb = REFERENCE_PERTURB if self.perturb is None else self.perturb
        elif self.perturb_ratio is None:
            self.perturb_ratio = 1.0
        return self


@register
class SoftShrinkPerturb(Intervention):
    """Shrink and perturb after every optimiser step, on all trainable parameters.

    target=fresh: theta <- shrink*theta + perturb*eps, eps a new draw of torch's default init
    (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for affine weights and biases, 1/0 for norm scales/offsets),
    drawn straight into tensors because this runs at every step. target=init (Plasticine style):
    theta <- shrink*theta + perturb*theta_0, theta_0 the parameters when the intervention was built
    (a parameter created later, by injection, its value before its first update); perturb =
    1 - shrink interpolates towards theta_0.

    The strength is per step (the reference's 0.999999 / 1e-6) or per round: ``shrink_per_task``
    is the factor the parameters shrink by over one round of ``TrainingPlan.updates_per_round``
    steps (without gradients), so a condition means the same at any protocol length; per-step
    1e-6 shrinks 21% over a reference round (>= 240000 steps) but 0.04% over a 400-step round.
    """

    name = "soft_shrink_perturb"
    edits_weights = True
    Params = SoftShrinkPerturbParams

    def __init__(self, params, model, plan):
        super().__init__(params, model, plan)
        self.anchors = ParamAnchors(model, torch.clone) if params.target == "init" else None
        self._draws_key: tuple[int, ...] | None = None
        self._draw_list: list[FreshDraw] = []
        if params.shrink_per_task is None:
            self.shrink, self.perturb = params.shrink, params.perturb
        else:
            self.shrink = params.shrink_per_task ** (1.0 / plan.updates_per_round)
            self.perturb = params.perturb_ratio * (1.0 - self.shrink)

    def uses(self, hook):
        return super().uses(hook) and (hook != "loss" or self.anchors is not None)

    def loss_members(self, cohort, contexts):
        """No loss term: with target=init, sees a parameter created during the run (an injected
        head) before its first update, so its theta_0 is its initial value."""
        if self.anchors is not None:
            cohort.stack_anchors("anchors")
        return None

    def _draws(self, model) -> list[FreshDraw]:
        """The fresh draws of every trainable parameter, kept while the network's parameters
        stay the same (this runs at every step)."""
        key = tuple(id(p) for p in model.parameters())
        if key != self._draws_key:
            self._draws_key = key
            self._draw_list = [d for layer in param_layers(model) for d in fresh_draws(layer) if d.param.requires_grad]
        return self._draw_list

    @torch.no_grad()
    def after_step_members(self, cohort):
        """Every acting member at once, elementwise on the stacked parameters; member j's fresh
        draws come from its own stream, tensor after tensor as its single run draws them."""
        if self.anchors is not None:
            for name, target in cohort.stack_anchors("anchors").items():
                cohort.edit(name, lambda value, target=target: value.mul_(self.shrink).add_(target, alpha=self.perturb))
            return
        for draw in self._draws(cohort.model):
            name = cohort.name(draw.param)
            if draw.bound is None:  # a norm's constant init: nothing to draw
                fresh = torch.full((len(cohort), *draw.param.shape), draw.fill, dtype=draw.param.dtype, device=draw.param.device)
            else:
                fresh = cohort.draw(draw.param.shape, draw.param, draw.fill_)
            cohort.edit(name, lambda value, fresh=fresh: value.mul_(self.shrink).add_(fresh, alpha=self.perturb))

    def state_dict(self):
        return {"theta0": self.anchors.state_dict()} if self.anchors is not None else {}

    def load_state_dict(self, state):
        if self.anchors is not None:
            self.anchors.load_state_dict(state["theta0"])
