"""Continual backprop (Dohare et al. 2024): keep replacing the least useful mature hidden units.

After every optimiser step, for every hidden block (conv channels and dense units alike):

* ages += 1; utility u <- decay*u + (1-decay) * mean|h| * sum|w_out|, where mean|h| is the unit's
  mean absolute activation over the batch (and positions) of the minibatch just trained on, and
  sum|w_out| the summed magnitude of every weight reading it (all positions of a flattened conv map;
  both copies of a concatenating activation, summed over copies);
* units older than ``maturity_threshold`` steps are eligible; replacement_rate * #eligible is added
  to a per-block accumulator and its integer part is the number of units replaced now (so a rate
  below one unit per step still replaces one now and then, as in the paper);
* replaced units (lowest utility among eligible) get fresh incoming weights and bias, norm scale/
  offset 1/0, zero outgoing weights (so the function does not jump) and cleared Adam moments
  (:func:`plasticity_lab.interventions.redo.recycle_units`); their utility and age restart at 0.

Ages and the maturity threshold count optimiser steps (the paper's code ages units once per
update). The paper re-draws the incoming bias as 0; here it is drawn like a fresh layer's, as ReDo.
mean|h| comes from a forward hook on each block that keeps the first gradient-enabled forward
after a step, i.e. the PPO forward of the next minibatch (rollout and evaluation forwards run
without gradients, and extra forwards of other methods come later).
"""

from __future__ import annotations

from functools import partial

import torch
from pydantic import Field

from plasticity_lab.interventions.base import Intervention, Params, register
from plasticity_lab.interventions.redo import recycle_units
from plasticity_lab.nets.surgery import affine_weights


class CbpParams(Params):
    replacement_rate: float = Field(1e-4, ge=0, le=1)
    """Fraction of the eligible units of a block replaced per optimiser step."""
    decay: float = Field(0.99, ge=0, le=1)
    """Decay of the running utility average."""
    maturity_threshold: int = Field(10000, ge=0)
    """Optimiser steps a unit must survive before it can be replaced."""


@register
class ContinualBackprop(Intervention):
    name = "cbp"
    Params = CbpParams
    stat_keys = ("cbp_replaced_units",)

    def __init__(self, params, model, plan):
        super().__init__(params, model, plan)
        device = next(model.parameters()).device
        self.utility = [torch.zeros(b.out_units, device=device) for b in model.blocks]
        self.ages = [torch.zeros(b.out_units, dtype=torch.long, device=device) for b in model.blocks]
        self.pending = [0.0 for _ in model.blocks]
        self.mean_abs: list[torch.Tensor | None] = [None for _ in model.blocks]
        self.replaced = 0
        for i, block in enumerate(model.blocks):
            block.register_forward_hook(partial(self._record, i))

    def _record(self, i: int, module, inputs, output: torch.Tensor) -> None:
        if torch.is_grad_enabled() and self.mean_abs[i] is None:
            dims = [d for d in range(output.dim()) if d != 1]
            self.mean_abs[i] = output.detach().float().abs().mean(dim=dims)

    @torch.no_grad()
    def after_step(self, model, optimizer):
        p = self.params
        for link in model.unit_links():
            i = link.block
            self.ages[i] += 1
            if self.mean_abs[i] is not None:
                features = self.mean_abs[i].numel()
                out_mag = sum(
                    w.abs().transpose(0, 1).reshape(features, -1).sum(1)
                    for reader in link.readers
                    for w in affine_weights(reader)
                )
                contribution = (self.mean_abs[i] * out_mag).view(link.copies, -1).sum(0)
                self.utility[i].mul_(p.decay).add_(contribution, alpha=1 - p.decay)
            eligible = torch.nonzero(self.ages[i] > p.maturity_threshold).flatten()
            self.pending[i] += p.replacement_rate * eligible.numel()
            count = int(self.pending[i])
            self.pending[i] -= count
            if count:
                units = eligible[torch.topk(-self.utility[i][eligible], count).indices]
                recycle_units(model.blocks[i], link, units, optimizer)
                self.utility[i][units] = 0.0
                self.ages[i][units] = 0
                self.replaced += count
        self.mean_abs = [None for _ in self.mean_abs]

    def periodic(self, model, optimizer, obs, epoch):
        replaced, self.replaced = self.replaced, 0
        return {"cbp_replaced_units": float(replaced)}

    def state_dict(self):
        return {
            "utility": [u.clone() for u in self.utility], "ages": [a.clone() for a in self.ages],
            "pending": list(self.pending), "replaced": self.replaced,
        }

    def load_state_dict(self, state):
        device = self.utility[0].device
        self.utility = [u.to(device) for u in state["utility"]]
        self.ages = [a.to(device) for a in state["ages"]]
        self.pending = list(state["pending"])
        self.replaced = state["replaced"]
