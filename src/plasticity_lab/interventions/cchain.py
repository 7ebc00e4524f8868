"""C-CHAIN (Tang et al. 2025, "Mitigating plasticity loss in continual RL by reducing churn").

Churn is the change an update causes to the network's outputs on data *outside* the minibatch.
At every minibatch C-CHAIN adds a churn-reduction term on a reference batch x_ref, an independent
random minibatch of the same epoch's buffer:

    coef * mean_x CE(pi_prev(.|x), pi_theta(.|x))  +  value_coef * mean_x (V_theta(x) - V_prev(x))^2

where "prev" is the network before the last optimiser step and CE(p, q) = -E_p[log q] (the
paper's code uses this cross-entropy; its gradient is that of KL(pi_prev || pi_theta)). It is
computed for any action distribution as KL(pi_prev || pi_theta) + H(pi_prev): categorical, or the
diagonal Gaussian of continuous control, whose KL and entropy are closed-form. The
paper's PPO code has the policy term only, hence value_coef = 0; the value term is CHAIN's value
churn reduction. As in the paper's code (bluecontra/C-CHAIN, crl_procgen):

* x_ref batches are drawn as an independent shuffled pass over the buffer (a permutation from
  the run's generator, consumed minibatch by minibatch, redrawn when used up or at a new epoch);
* pi_prev is the network as it was when the previous minibatch's loss was computed (parameters
  and buffers kept as a copy, evaluated in the population's batched program, as the current one);
* the coefficient starts each task at ``coef``; after every training iteration (here: epoch)
  from iteration ``warmup_iters`` on it becomes max(target_ratio * mean|L_policy| / mean L_reg, 1)
  with L_policy and L_reg (the CE above) each iteration's means over its minibatches, averaged
  over the task's last ``window`` iterations (means of |L_policy| of per-iteration means).

Differences: an iteration here is an epoch (buffer_size transitions, num_passes passes), the
paper's 1000 environment steps and 3 passes of 8 minibatches; a minibatch without a previous
network (the first of a run or of a task) has no term and does not enter the L_reg mean (the
paper counts it as 0). At a shift the previous network is dropped, so a reset or injection at
the shift is not pulled back towards the pre-shift outputs (the paper, which resets nothing,
keeps it); the coefficient statistics restart per task as in the paper.
"""

from __future__ import annotations

import torch
from pydantic import Field

from plasticity_lab.distributions import make_distribution
from plasticity_lab.interventions.base import Intervention, Params, register


class CChainParams(Params):
    coef: float = Field(10.0, ge=0)
    """Weight of the policy churn term at the start of each task (the paper's 10)."""
    target_ratio: float = Field(1e4, ge=0)
    """Re-scales coef to target_ratio * mean|L_policy| / mean L_reg (paper: 1e4); 0 keeps coef fixed."""
    warmup_iters: int = Field(20, ge=0)
    """Epochs of each task trained with the start coefficient before the re-scaling begins (paper: 20)."""
    window: int = Field(200, ge=1)
    """The re-scaling averages the task's last this many epochs (paper: 200)."""
    value_coef: float = Field(0.0, ge=0)
    """Weight of the value churn term (squared change of V); 0 as in the paper's PPO code."""


@register
class CChain(Intervention):
    name = "cchain"
    Params = CChainParams
    stat_keys = ("cchain_coef", "cchain_policy_churn")

    def __init__(self, params, model, plan):
        super().__init__(params, model, plan)
        self.prev: dict[str, torch.Tensor] | None = None
        self.perm: torch.Tensor | None = None
        self.cursor = 0
        self.coef = params.coef
        self.iters = 0
        self.policy_means: list[float] = []
        self.reg_means: list[float] = []
        self.epoch: dict[str, float] = self._empty_epoch()

    @staticmethod
    def _empty_epoch() -> dict[str, float]:
        return {"policy": 0.0, "steps": 0, "reg": 0.0, "kl": 0.0, "reg_steps": 0}

    def reference_batch(self, buffer: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
        """The next ``size`` observations of an independent shuffled pass over ``buffer``."""
        n = buffer.shape[0]
        if self.perm is None or self.perm.numel() != n or self.cursor + size > n:
            self.perm = torch.randperm(n, generator=generator, device=generator.device).to(buffer.device)
            self.cursor = 0
        idx = self.perm[self.cursor : self.cursor + size]
        self.cursor += size
        return buffer[idx]

    def loss_members(self, cohort, contexts):
        """The acting members' terms in one program: their previous networks stacked, both
        forwards through the population's batched call (:meth:`Cohort.forward`), one KL over
        (members, rows); each member's reference batch from its own generator and pass."""
        instances = cohort.instances
        for iv, policy in zip(instances, torch.stack([ctx.policy_loss for ctx in contexts]).tolist()):
            iv.epoch["policy"] += policy
            iv.epoch["steps"] += 1
        among = [j for j, iv in enumerate(instances) if iv.prev is not None]
        penalty = None
        if among:
            refs = torch.stack([instances[j].reference_batch(contexts[j].buffer_obs, contexts[j].obs.shape[0], contexts[j].generator)
                                for j in among])  # fmt: skip
            names = [*cohort.params, *cohort.buffers]
            prev = {name: torch.stack([instances[j].prev[name] for j in among]) for name in names}
            with torch.no_grad():
                prev_head, prev_values, _ = cohort.forward(refs, among, {n: prev[n] for n in cohort.params},
                                                           {n: prev[n] for n in cohort.buffers})
                prev_dist = make_distribution(prev_head.float(), _over_rows(prev.get("log_std")))
            head, values, _ = cohort.forward(refs, among)
            log_std = cohort.values("log_std")[among] if "log_std" in cohort.params else None
            kl = make_distribution(head, _over_rows(log_std)).kl_from(prev_dist).mean(dim=1)
            cross_entropy = kl + prev_dist.entropy().mean(dim=1)
            value_churn = (values.float() - prev_values.float()).pow(2).mean(dim=1)
            coef = torch.tensor([instances[j].coef for j in among], dtype=cross_entropy.dtype, device=cross_entropy.device)
            value_coef = torch.tensor([instances[j].params.value_coef for j in among], dtype=value_churn.dtype, device=value_churn.device)
            penalty = (coef * cross_entropy + value_coef * value_churn).sum()
            for j, (ce, k) in zip(among, torch.stack([cross_entropy.detach(), kl.detach()], dim=1).tolist()):
                stats = instances[j].epoch
                stats["reg"] += ce
                stats["kl"] += k
                stats["reg_steps"] += 1
        # the networks of this step, before their update: the next minibatch's "prev" (one copy
        # of the acting members' rows; each member keeps views of its own)
        now = {name: cohort.values(name).detach().clone() for name in cohort.params}
        now.update({name: cohort.buffer_values(name).detach().clone() for name in cohort.buffers})
        for j, iv in enumerate(instances):
            iv.prev = {name: t[j] for name, t in now.items()}
        return penalty

    def periodic(self, model, optimizer, obs, epoch):
        """End of a training iteration: the paper's coefficient rule, then a fresh epoch."""
        stats, self.epoch = self.epoch, self._empty_epoch()
        self.perm = None  # the next epoch has a new buffer
        out = {"cchain_coef": float(self.coef), "cchain_policy_churn": float("nan")}
        if stats["reg_steps"]:
            out["cchain_policy_churn"] = stats["kl"] / stats["reg_steps"]
        if stats["steps"] and stats["reg_steps"]:
            self.policy_means.append(stats["policy"] / stats["steps"])
            self.reg_means.append(stats["reg"] / stats["reg_steps"])
            self.policy_means, self.reg_means = self.policy_means[-self.params.window :], self.reg_means[-self.params.window :]
            if self.iters >= self.params.warmup_iters and self.params.target_ratio > 0:
                self.coef = self.rescaled_coef(self.policy_means, self.reg_means, self.params.target_ratio)
            self.iters += 1
        return out

    @staticmethod
    def rescaled_coef(policy_means: list[float], reg_means: list[float], target_ratio: float) -> float:
        """max(target_ratio * mean|L_policy| / mean L_reg, 1) (the paper code's 1e-8 guard included)."""
        policy = sum(abs(v) for v in policy_means) / len(policy_means)
        reg = sum(reg_means) / len(reg_means)
        return max(target_ratio * policy / (reg + 1e-8), 1.0)

    def at_shift(self, model, optimizer):
        self.prev = None
        self.perm = None
        self.coef = self.params.coef
        self.iters = 0
        self.policy_means, self.reg_means = [], []
        self.epoch = self._empty_epoch()

    def state_dict(self):
        return {
            # a copy of its own rows (self.prev are views of a stack of every acting member's)
            "prev": None if self.prev is None else {n: t.clone() for n, t in self.prev.items()},
            "perm": self.perm, "cursor": self.cursor, "coef": self.coef, "iters": self.iters,
            "policy_means": list(self.policy_means), "reg_means": list(self.reg_means), "epoch": dict(self.epoch),
        }

    def load_state_dict(self, state):
        self.prev, self.perm, self.cursor = state["prev"], state["perm"], state["cursor"]
        self.coef, self.iters = state["coef"], state["iters"]
        self.policy_means, self.reg_means = list(state["policy_means"]), list(state["reg_means"])
        self.epoch = dict(state["epoch"])


def _over_rows(log_std: torch.Tensor | None) -> torch.Tensor | None:
    """A Gaussian policy's (members, actions) log std, broadcast over each member's rows."""
    return None if log_std is None else log_std.unsqueeze(1)
