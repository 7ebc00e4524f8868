"""Continual backprop (Dohare et al. 2024, "Loss of plasticity in deep continual learning"; code:
``shibhansh/loss-of-plasticity``, generate-and-test in ``lop/algos/gnt.py`` and ``convGnT.py``,
optimiser ``lop/utils/AdamGnT.py``): keep replacing the least useful mature hidden units.

After every optimiser step, for every hidden block (conv channels and dense units alike), with h
the block's output on the minibatch just trained on and eta = ``decay``:

* ages += 1;
* utility u <- eta*u + (1-eta)*c, where a unit's contribution c sums, over the features it feeds
  (both copies of a concatenating activation, every position of a flattened conv map), the
  feature's mean |h| over the batch times the summed magnitude of every weight reading it (conv
  readers: mean |h| over batch and positions times the weights over output channels and kernel);
* the mean activation f <- eta*f + (1-eta)*mean_batch(h), per feature;
* both are bias-corrected as in Adam, divided by 1 - eta^age;
* units older than ``maturity_threshold`` steps are eligible; replacement_rate * #eligible is added
  to a per-block accumulator and its integer part is the number replaced now (lowest corrected
  utility among the eligible first);
* the weights reading a replaced unit are zeroed (with ``bias_compensation: true``, its mean
  contribution, corrected f times those weights, is first added to every reader's bias, so the
  output keeps its mean on recent data: what gnt.py intends; by default nothing is added, what
  gnt.py does and the paper's runs did); its incoming weights are drawn as the network's
  initialiser draws them, its bias is 0, norm scale/offset 1/0; its per-entry optimiser state, step count included, is cleared
  (:class:`EntrywiseAdamW`, which the runner builds when cbp is on, as AdamGnT), so its next step
  is a first Adam step; u, f and the age restart at 0.

mean|h| and the mean come from a forward hook on each block that keeps the first
gradient-enabled forward after a step: the PPO forward of the minibatch the next step trains on
(rollout and evaluation forwards run without gradients, extra forwards of other methods come
later). A block whose layer was replaced (plasticity injection) starts its units over. Every
difference from the paper's code is a row of docs/fidelity.md (Methods).
"""

from __future__ import annotations

from functools import partial

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from plasticity_lab.interventions.base import Intervention, Params, register
from plasticity_lab.interventions.redo import recycle_units
from plasticity_lab.nets.surgery import AFFINE, weight_param


class EntrywiseAdamW(torch.optim.Optimizer):
    """AdamW with a step count per entry, as Dohare et al.'s AdamGnT. torch's Adam and AdamW
    count steps per tensor, so an entry whose moments a unit replacement cleared would be
    bias-corrected as if it had a long history: with constant gradients its next steps reach
    ~6.5x an ordinary Adam step (beta1 0.9, beta2 0.999) and stay above it for ~100 steps.
    :func:`plasticity_lab.nets.surgery.clear_state` clears every state tensor of a parameter's shape,
    the count included, so a recycled entry's next step is a first step. Otherwise the update is
    torch.optim.AdamW's (decoupled weight decay; eps added to the bias-corrected sqrt(v)), with
    ``coupled_weight_decay`` * theta added to the gradient first where set (Adam's L2, what
    AdamGnT and loss-of-plasticity's PPO apply)."""

    def __init__(
        self, params, lr: float, betas: tuple[float, float], weight_decay: float,
        coupled_weight_decay: float = 0.0, eps: float = 1e-8,
    ) -> None:
        super().__init__(params, dict(
            lr=lr, betas=tuple(betas), weight_decay=weight_decay, coupled_weight_decay=coupled_weight_decay, eps=eps,
        ))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["entry_steps"] = torch.zeros_like(p)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                steps, m, v = state["entry_steps"], state["exp_avg"], state["exp_avg_sq"]
                steps.add_(1)
                grad = p.grad.add(p, alpha=group["coupled_weight_decay"]) if group["coupled_weight_decay"] else p.grad
                p.mul_(1 - group["lr"] * group["weight_decay"])
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias1 = 1 - torch.pow(beta1, steps)
                bias2 = 1 - torch.pow(beta2, steps)
                p.addcdiv_(m / bias1, (v.sqrt() / bias2.sqrt()).add_(group["eps"]), value=-group["lr"])
        return loss


def applied_weight(layer: nn.Module) -> torch.Tensor:
    """The weight ``layer`` applies (spectral norm: divided by sigma), read in eval mode so that
    reading it does not advance the power iteration."""
    if not parametrize.is_parametrized(layer, "weight"):
        return layer.weight
    was_training = layer.training
    layer.eval()
    try:
        return layer.weight
    finally:
        layer.train(was_training)


def reader_layers(readers: tuple[nn.Module, ...]) -> list[nn.Module]:
    """Every affine layer inside the modules reading a block (a wrapped head has several)."""
    return [m for reader in readers for m in reader.modules() if isinstance(m, AFFINE)]


def contribution(feature_abs: torch.Tensor, layer: nn.Module, copies: int, units: int) -> torch.Tensor:
    """Per unit: sum over its features of mean|h| times the magnitude of ``layer``'s weights
    reading the feature. ``feature_abs``: mean |h| over the batch, shape of one block output."""
    w = applied_weight(layer).detach().abs()
    if isinstance(layer, nn.Conv2d):
        return (feature_abs.flatten(1).mean(1) * w.sum(dim=(0, 2, 3))).view(copies, units).sum(0)
    return (feature_abs.flatten() * w.sum(0)).view(copies, units, -1).sum(dim=(0, 2))


def mean_input_response(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``layer``'s weights (no bias) add to its output, averaged over positions, for the
    input ``x`` (shape of one block output)."""
    w = applied_weight(layer).detach()
    if isinstance(layer, nn.Conv2d):
        out = F.conv2d(x.unsqueeze(0), w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        return out.mean(dim=(0, 2, 3))
    return w @ x.flatten()


class CbpParams(Params):
    replacement_rate: float = Field(1e-4, ge=0, le=1)
    """Fraction of the eligible units of a block replaced per optimiser step."""
    decay: float = Field(0.99, ge=0, le=1)
    """Decay of the running utility and mean activation (1: frozen, no bias correction)."""
    maturity_threshold: int = Field(10000, ge=0)
    """Optimiser steps a unit must survive before it can be replaced."""
    bias_compensation: bool = False
    """Move a replaced unit's mean contribution into its readers' biases (GnT's intent). False
    (default) is what lop/algos/gnt.py does, so what the paper's runs did: it clears the mean
    before using it and adds 0."""


@register
class ContinualBackprop(Intervention):
    name = "cbp"
    edits_weights = True
    Params = CbpParams
    stat_keys = ("cbp_replaced_units",)

    def __init__(self, params, model, plan):
        super().__init__(params, model, plan)
        device = next(model.parameters()).device
        self.utility = [torch.zeros(b.out_units, device=device) for b in model.blocks]
        self.ages = [torch.zeros(b.out_units, dtype=torch.long, device=device) for b in model.blocks]
        self.mean_act: list[torch.Tensor | None] = [None for _ in model.blocks]
        self.pending = [0.0 for _ in model.blocks]
        self.replaced = 0
        self.batch: list[tuple[torch.Tensor, torch.Tensor] | None] = [None for _ in model.blocks]
        self.layers: list[nn.Parameter] | None = [weight_param(b.layer) for b in model.blocks]
        for i, block in enumerate(model.blocks):
            block.register_forward_hook(partial(self._record, i))

    def optimizer(self, params, settings):
        return EntrywiseAdamW(params, **settings)

    def _record(self, i: int, module, inputs, output: torch.Tensor) -> None:
        if torch.is_grad_enabled() and self.batch[i] is None:
            h = output.detach().float()
            self.batch[i] = (h.abs().mean(0), h.mean(0))

    def _corrected(self, x: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        """Adam-style bias correction x / (1 - decay^age) (none where that is 0: age 0 or decay 1)."""
        correction = 1 - self.params.decay ** ages.double()
        return x / torch.where(correction > 0, correction, torch.ones_like(correction)).to(x.dtype)

    def _restart_replaced_layers(self, model: nn.Module) -> None:
        current = [weight_param(b.layer) for b in model.blocks]
        if self.layers is not None:
            for i, (before, now) in enumerate(zip(self.layers, current, strict=True)):
                if before is not now:
                    self.utility[i].zero_()
                    self.ages[i].zero_()
                    self.mean_act[i] = None
        self.layers = current

    @torch.no_grad()
    def after_step(self, model, optimizer):
        p = self.params
        self._restart_replaced_layers(model)
        for link in model.unit_links():
            i = link.block
            units = model.blocks[i].out_units
            ages = self.ages[i]
            ages += 1
            if self.batch[i] is not None:
                feature_abs, feature_mean = self.batch[i]
                c = sum(contribution(feature_abs, layer, link.copies, units) for layer in reader_layers(link.readers))
                self.utility[i].mul_(p.decay).add_(c, alpha=1 - p.decay)
                if self.mean_act[i] is None:
                    self.mean_act[i] = torch.zeros_like(feature_mean)
                self.mean_act[i].mul_(p.decay).add_(feature_mean, alpha=1 - p.decay)
            eligible = torch.nonzero(ages > p.maturity_threshold).flatten()
            self.pending[i] += p.replacement_rate * eligible.numel()
            count = int(self.pending[i])
            self.pending[i] -= count
            if count:
                ranked = self._corrected(self.utility[i][eligible], ages[eligible])
                chosen = eligible[torch.topk(-ranked, count).indices]
                self._replace(model, link, chosen, optimizer)
                self.replaced += count
        self.batch = [None for _ in self.batch]

    def _replace(self, model: nn.Module, link, chosen: torch.Tensor, optimizer) -> None:
        i = link.block
        block = model.blocks[i]
        mean = self.mean_act[i]
        if mean is not None:
            per_unit = mean.view(link.copies, block.out_units, -1)
            if self.params.bias_compensation:
                x = torch.zeros_like(per_unit)
                x[:, chosen] = self._corrected(per_unit[:, chosen], self.ages[i][chosen].view(1, -1, 1))
                for layer in reader_layers(link.readers):
                    if layer.bias is not None:
                        layer.bias.add_(mean_input_response(layer, x.view_as(mean)))
            per_unit[:, chosen] = 0.0
        recycle_units(block, link, chosen, optimizer, self.streams.on("cpu"), zero_bias=True)
        self.utility[i][chosen] = 0.0
        self.ages[i][chosen] = 0

    def periodic(self, model, optimizer, obs, epoch):
        replaced, self.replaced = self.replaced, 0
        return {"cbp_replaced_units": float(replaced)}

    def state_dict(self):
        return {
            "utility": [u.clone() for u in self.utility], "ages": [a.clone() for a in self.ages],
            "mean_act": [None if m is None else m.clone() for m in self.mean_act],
            "pending": list(self.pending), "replaced": self.replaced,
        }

    def load_state_dict(self, state):
        device = self.utility[0].device
        self.utility = [u.to(device) for u in state["utility"]]
        self.ages = [a.to(device) for a in state["ages"]]
        self.mean_act = [None if m is None else m.to(device) for m in state["mean_act"]]
        self.pending = list(state["pending"])
        self.replaced = state["replaced"]
        self.layers = None  # the structure may be rebuilt after this (injection): take it at the next step
