"""Normalize-and-project (Lyle et al. 2024): the projection half.

After every optimiser step each weight matrix (hidden layers and heads; not biases or norm
parameters) is rescaled to its initial Frobenius norm. With growing weights Adam's effective
learning rate shrinks; fixing the norm keeps it constant. The "normalize" half is the network's
own normalisation (``model.norm: layernorm``), so the paper's NaP is this method plus that setting.
Spectral-norm layers are projected on their stored ``original`` weight.
"""

from __future__ import annotations

import torch

from plasticity_lab.interventions.anchors import ParamAnchors
from plasticity_lab.interventions.base import Intervention, Params, register


@register
class NormalizeProject(Intervention):
    name = "nap"
    Params = Params

    def __init__(self, params, model, plan):
        super().__init__(params, model, plan)
        self.norms = ParamAnchors(model, torch.linalg.vector_norm, weights_only=True)

    @torch.no_grad()
    def after_step(self, model, optimizer):
        for weight, norm0 in self.norms.pairs():
            weight.mul_(norm0 / torch.linalg.vector_norm(weight))

    def state_dict(self):
        return {"norms": self.norms.state_dict()}

    def load_state_dict(self, state):
        self.norms.load_state_dict(state["norms"])
