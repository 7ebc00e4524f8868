"""Loss-term regularisers: towards the initial weights (L2 Init, W2 Init) and orthogonality (Parseval).

The anchored ones act on every trainable parameter (biases and norm scales included), with
theta_0 taken when the intervention is built and kept in its checkpoint state.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from plasticity_lab.interventions.anchors import ParamAnchors
from plasticity_lab.interventions.base import Intervention, Params, register
from plasticity_lab.nets.layers import width_factor
from plasticity_lab.nets.surgery import weight_param


def _sorted_flat(t: torch.Tensor) -> torch.Tensor:
    return t.flatten().sort().values


class AnchoredRegularizer(Intervention):
    """Shared state of the theta_0-based penalties: the anchors and their checkpointing."""

    reference = staticmethod(torch.clone)

    def __init__(self, params, model, plan):
        super().__init__(params, model, plan)
        self.anchors = ParamAnchors(model, self.reference)

    def state_dict(self):
        return {"theta0": self.anchors.state_dict()}

    def load_state_dict(self, state):
        self.anchors.load_state_dict(state["theta0"])


class L2InitParams(Params):
    coef: float = Field(0.01, ge=0)
    """Penalty weight."""
    squared: bool = False
    """False: coef*||theta - theta_0|| (the reference code); True: coef*||theta - theta_0||^2 (Kumar et al.)."""


@register
class L2Init(AnchoredRegularizer):
    """Regenerative regularisation (Kumar et al. 2023) over all parameters concatenated. The
    unsquared norm's gradient coef*(theta-theta_0)/||theta-theta_0|| has constant size; at
    theta = theta_0 torch's norm backward gives 0, not NaN."""

    name = "l2_init"
    Params = L2InitParams

    def loss_members(self, cohort, contexts):
        """Every acting member's penalty from its own row of the stacked parameters (a reduction
        over one member's row rounds as its single run's)."""
        diff = torch.cat([(cohort.values(name) - p0).flatten(1) for name, p0 in cohort.stack_anchors("anchors").items()], dim=1)
        value = diff.pow(2).sum(1) if self.params.squared else torch.linalg.vector_norm(diff, dim=1)
        return (self.params.coef * value).sum()


class W2InitParams(Params):
    coef: float = Field(0.01, ge=0)
    """Penalty weight."""


@register
class W2Init(AnchoredRegularizer):
    """Wasserstein-2 regularisation towards the initial weight distribution: each parameter tensor's
    values are sorted (the W2 coupling of two empirical distributions matches sorted values),
    compared with theta_0's sorted values, concatenated, and coef * L2 norm taken (reference code).
    Unlike L2 Init it lets units permute and move as long as each tensor's distribution stays."""

    name = "w2_init"
    Params = W2InitParams
    reference = staticmethod(_sorted_flat)

    def loss_members(self, cohort, contexts):
        """Every acting member's penalty, its tensors' values sorted within its own row."""
        diff = torch.cat([cohort.values(name).flatten(1).sort(dim=1).values - s0
                          for name, s0 in cohort.stack_anchors("anchors").items()], dim=1)
        return (self.params.coef * torch.linalg.vector_norm(diff, dim=1)).sum()


REFERENCE_WIDTH = 64
"""The width at which Chung et al. tuned lambda: their code scales it by (64 / width)^2, as
||W W^T - s I||_F^2 sums width^2 entries."""


class ParsevalParams(Params):
    coef: float = Field(1e-3, ge=0)
    """lambda at width 64 (the paper's code: 1e-3 on MetaWorld and the gridworld, 1e-4 on CARL)."""
    scale: float = Field(2.0, gt=0)
    """s in ||W W^T - s I||_F^2, the squared singular value the rows are pushed towards, and the
    squared gain of the governed layers' orthogonal initialisation (the paper's code: gain sqrt(2), s = 2)."""


@register
class Parseval(Intervention):
    """Parseval regularisation (Chung et al. 2024; code ``wechu/parseval_reg``, ``agent.py``):
    coef * sum over the hidden layers of (64 / width)^2 ||W W^T - s I||_F^2, with W reshaped to
    (out, -1) and width the features the layer's block outputs (a concatenating activation's
    doubled width, as their ``net_width``), keeping each layer's rows orthogonal so gradients keep
    flowing. The heads are exempt (as in the paper).

    As in their code, the governed layers start orthogonal with gain sqrt(s) and bias 0, so the
    penalty starts at its minimum with zero gradient (0 wherever out <= fan_in; on torch's default
    init it would mostly inflate the weights). Only this condition is re-initialised
    (:meth:`initialize`). A spectral-norm layer applies W / sigma, whose largest singular value is
    1, so its target is 1 (an orthogonal W / sigma has every singular value 1 at the start)."""

    name = "parseval"
    Params = ParsevalParams

    @classmethod
    @torch.no_grad()
    def initialize(cls, params, model):
        for block in model.blocks:
            layer = block.layer
            weight = weight_param(layer)
            nn.init.orthogonal_(weight, math.sqrt(params.scale))
            if layer.bias is not None:
                layer.bias.zero_()
            if parametrize.is_parametrized(layer, "weight"):  # sigma's vectors for the new weight, as torch's constructor
                norm = layer.parametrizations.weight[0]
                norm._power_method(norm._reshape_weight_to_matrix(weight), 15)

    def target(self, layer: nn.Module) -> float:
        return 1.0 if parametrize.is_parametrized(layer, "weight") else self.params.scale

    def loss(self, model, ctx):
        factor = width_factor(model.cfg.activation)
        total = 0.0
        for block in model.blocks:
            w = block.layer.weight.flatten(1)
            eye = torch.eye(w.shape[0], device=w.device, dtype=w.dtype)
            width = block.out_units * factor
            total = total + (REFERENCE_WIDTH / width) ** 2 * (w @ w.T - self.target(block.layer) * eye).pow(2).sum()
        return self.params.coef * total
