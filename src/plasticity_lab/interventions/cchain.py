"""C-CHAIN (Tang et al. 2025, "Mitigating plasticity loss in continual RL by reducing churn").

Churn is the change of the network's outputs on data *outside* the minibatch caused by one
update. C-CHAIN adds a churn-reduction term on a reference batch x_ref:

    coef * mean_x KL(pi_prev(.|x) || pi_theta(.|x))  +  value_coef * mean_x (V_theta(x) - V_prev(x))^2

(for any action distribution: categorical or the Gaussian of continuous control, whose KL is
closed-form)

where "prev" is the network before the last optimiser step. The paper's PPO/ProcGen code uses
the policy term only (its cross-entropy form, whose gradient equals the KL's), hence
value_coef = 0; the value term is CHAIN's value-churn reduction. Differences from that code:

* x_ref is the previous minibatch (the hook sees no buffer; the paper draws another random
  minibatch of the same buffer). Its prev outputs are computed when it was the current batch,
  so no copy of the network is kept; cost: one no-grad and one grad forward per minibatch.
* coef is fixed. The paper's code starts every task at 10 and, after 20 training iterations,
  re-sets it every iteration to max(1e4 * mean|L_policy| / mean L_reg, 1) (means over the last
  200 iterations, L_reg in its cross-entropy form); the ``loss`` hook is not given the PPO policy
  loss, so that normalisation cannot be reproduced here. The default is the paper's start value.

At a shift the stored batch is dropped (the paper also restarts its coefficient per task), so a
reset or injection at the shift is not pulled back towards the pre-shift outputs.
"""

from __future__ import annotations

import torch
from pydantic import Field

from plasticity_lab.agents.distributions import make_distribution
from plasticity_lab.interventions.base import Intervention, Params, register


class CChainParams(Params):
    coef: float = Field(10.0, ge=0)
    """Weight of the policy churn term (KL from the previous policy on the reference batch)."""
    value_coef: float = Field(0.0, ge=0)
    """Weight of the value churn term (squared change of V); 0 as in the paper's PPO code."""


@register
class CChain(Intervention):
    name = "cchain"
    Params = CChainParams

    def __init__(self, params, model, plan):
        super().__init__(params, model, plan)
        self.ref: dict[str, torch.Tensor] | None = None

    def loss(self, model, ctx):
        obs = ctx.obs
        penalty = None
        if self.ref is not None:
            head, values, _ = model(self.ref["obs"])
            prev = make_distribution(self.ref["policy"], self.ref["log_std"])
            kl = model.distribution(head).kl_from(prev).mean()
            value_churn = (values.float() - self.ref["value"]).pow(2).mean()
            penalty = self.params.coef * kl + self.params.value_coef * value_churn
        with torch.no_grad():
            head, values, _ = model(obs)
        log_std = None if model.log_std is None else model.log_std.detach().clone()
        self.ref = {"obs": obs, "policy": head.float(), "log_std": log_std, "value": values.float()}
        return penalty

    def at_shift(self, model, optimizer):
        self.ref = None

    def state_dict(self):
        return {"ref": self.ref}

    def load_state_dict(self, state):
        ref = state["ref"]
        if ref is not None and "log_p" in ref:  # checkpoints of discrete-only versions
            ref = {"obs": ref["obs"], "policy": ref["log_p"], "log_std": None, "value": ref["value"]}
        self.ref = ref
