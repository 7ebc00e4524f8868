"""Optimiser methods: settings changes (``l2``, ``adam_beta``) and optimiser swaps (``trac``, ``kron``).

Settings changes only edit the settings (``ppo_trainer`` lr, betas, weight decay) before the
optimiser is built, so they combine with a swap (or with CBP's optimiser); a condition has at most
one swap. Each swap keeps the settings except the ones it changes. Optimisers from packages are
subclassed where their checkpoint state would not survive ``state_dict``/``load_state_dict`` (runs
must resume bit-exactly) and, for Kron, to run eagerly. The packages are imported when the
optimiser is built, so they are needed only by runs using them.
"""

from __future__ import annotations

import os
import math
from typing import Literal

import torch
from pydantic import Field, model_validator

from plasticity_lab.interventions.base import Intervention, Params, register, torch_adam


L2_DEFAULT_COEF = 1e-3


class L2Params(Params):
    coef: float | None = Field(None, ge=0)
    """Weight decay; 1e-3 when neither this nor decay_per_task is given."""
    decay_per_task: float | None = Field(None, gt=0, lt=1)
    """Instead of coef: the fraction the weights lose over one round (task) from weight decay
    alone, 1 - (1 - lr*wd)^steps with steps the round's optimiser steps, so a strength means the
    same at any protocol length (decoupled decay only)."""
    coupled: bool = False
    """False: AdamW's decoupled decay (theta <- theta - lr*coef*theta beside the Adam step). True:
    L2 in the gradient, coef*theta added before Adam's moments (torch.optim.Adam's
    ``weight_decay``; the settings key ``coupled_weight_decay``), as loss-of-plasticity's PPO."""

    @model_validator(mode="after")
    def _one_strength(self) -> L2Params:
        if self.coef is not None and self.decay_per_task is not None:
            raise ValueError("give coef or decay_per_task, not both")
        if self.coupled and self.decay_per_task is not None:
            raise ValueError("decay_per_task assumes decoupled decay; give coef with coupled: true")
        return self


@register
class L2(Intervention):
    """Weight decay towards zero: the optimiser's decoupled weight_decay set to coef, or to the
    value that removes decay_per_task of the weights over a round, (1 - (1 - d)^(1/steps)) / lr
    with steps = TrainingPlan.updates_per_round and lr the optimiser's learning rate; or, with
    ``coupled``, its coupled_weight_decay (L2 in the gradient) set to coef."""

    name = "l2"
    Params = L2Params
    settings_changed = frozenset({"weight_decay", "coupled_weight_decay"})

    @classmethod
    def settings_changed_by(cls, params):
        return frozenset({"coupled_weight_decay" if params.coupled else "weight_decay"})

    @classmethod
    def check_config(cls, params, cfg):
        if params.coupled and cfg.ppo_trainer.weight_decay:
            raise ValueError(
                f"interventions.l2.coupled: ppo_trainer.weight_decay {cfg.ppo_trainer.weight_decay} is a decoupled decay "
                "already; use one kind of weight decay"
            )

    def optimizer_settings(self, settings):
        p = self.params
        if p.decay_per_task is None:
            coef = L2_DEFAULT_COEF if p.coef is None else p.coef
        else:  # log1p/expm1: steps are ~1e5, so (1 - d)^(1/steps) is within 1e-5 of 1
            coef = -math.expm1(math.log1p(-p.decay_per_task) / self.plan.updates_per_round) / settings["lr"]
        return {**settings, "coupled_weight_decay" if p.coupled else "weight_decay": coef}


class AdamBetaParams(Params):
    beta: float = Field(0.99, ge=0, lt=1)
    """Used as both beta1 and beta2 (Dohare et al.'s RL setting: 0.99)."""


@register
class AdamBeta(Intervention):
    """Non-stationary Adam (Dohare et al. 2024): beta2 = beta1, so the second-moment estimate
    forgets as fast as the first and a sudden rise of gradient size after a shift cannot meet a
    long-remembered small v (which makes huge updates)."""

    name = "adam_beta"
    Params = AdamBetaParams
    settings_changed = frozenset({"betas"})

    def optimizer_settings(self, settings):
        beta = self.params.beta
        return {**settings, "betas": (beta, beta)}


class TracCheckpointing:
    """Mixin for trac_optimizer's wrapped class. TRAC keeps its state in ``optimizer.state['_trac']``
    keyed by parameter objects, which a saved state dict cannot map back, and takes references only
    at its first step; this stores the references by position and gives parameters added later
    (an injected head) their current value as reference."""

    def _flat_params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.param_groups for p in group["params"]]

    def step(self, closure=None):
        trac = self.state.get("_trac")
        if trac is not None:
            for p in self._flat_params():
                if p not in trac:
                    trac[p] = {"ref": p.detach().clone()}
        return super().step()

    def state_dict(self):
        sd = super().state_dict()
        trac = sd["state"].pop("_trac", None)
        if trac is not None:
            scalars = {k: v for k, v in trac.items() if isinstance(k, str)}
            sd["trac"] = {**scalars, "refs": [trac[p]["ref"] if p in trac else None for p in self._flat_params()]}
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        trac = state_dict.pop("trac", None)
        super().load_state_dict(state_dict)
        if trac is not None:
            restored = {k: v for k, v in trac.items() if k != "refs"}
            for p, ref in zip(self._flat_params(), trac["refs"], strict=True):
                if ref is not None:
                    restored[p] = {"ref": ref.to(p.device)}
            self.state["_trac"] = restored


class TracParams(Params):
    betas: list[float] = Field([0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999], min_length=1)
    """TRAC's discount factors (package default)."""
    s_prev: float = Field(1e-8, gt=0)
    """TRAC's initial scale (package default)."""
    eps: float = Field(1e-8, gt=0)
    """TRAC's epsilon (package default)."""


@register
class Trac(Intervention):
    """TRAC (Muppidi et al. 2024): a parameter-free scale on AdamW's displacement from the
    reference weights (the weights at its first step: the initial ones), tuned online, wrapped
    around the runner's AdamW (torch's Adam where ``l2`` sets a coupled decay). TRAC is made for a stream of tasks without restarts, so its
    optimiser (anchor, scale and AdamW moments) is kept across shifts whatever
    ``reset_optimizer_at_shift`` says. Its per-step log goes to os.devnull (the package appends a
    line to a file at every step).

    TRAC reads every change of the weights as its own scaled displacement from the reference, so a
    method that edits weights outside the optimiser (S&P, resets, ReDo, NaP, CBP) would corrupt its
    scale: such combinations are config errors. Injection adds parameters (each takes its value at
    its first step as reference) and freezes old ones without editing them, so it combines."""

    name = "trac"
    Params = TracParams
    keeps_optimizer = True
    needs_sole_updates = True

    def optimizer(self, params, settings):
        from trac_optimizer import start_trac

        p = self.params
        base, kwargs = torch_adam(settings)
        wrapped = start_trac(os.devnull, base, betas=tuple(p.betas), s_prev=p.s_prev, eps=p.eps)
        cls = type(f"Checkpointable{wrapped.__name__}", (TracCheckpointing, wrapped), {})
        return cls(params, **kwargs)


class KronCheckpointing:
    """Mixin for kron_torch.Kron. Its step runs eagerly: the package wraps its helpers in
    torch.compile, which on CPU needs a C++ compiler, spends 5-20 s compiling at the first step of
    every new optimiser and recompiles per tensor shape until dynamo gives up anyway (eager steps
    of this network take milliseconds). And its checkpoint resumes exactly: its einsum expressions
    are strings, which Optimizer.load_state_dict mangles (it rebuilds every iterable it meets), and
    its update-schedule counters and RNG live outside ``state``."""

    def step(self, closure=None):
        with torch.compiler.set_stance("force_eager"):
            return super().step(closure)

    def state_dict(self):
        sd = super().state_dict()
        sd["kron"] = {
            "prob_step": self._prob_step.clone(), "update_counter": self._update_counter.clone(), "rng": self.rng.getstate(),
        }
        return sd

    def load_state_dict(self, state_dict):
        exprs = {i: s["exprs"] for i, s in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for i, expr in exprs.items():
            self.state[params[i]]["exprs"] = expr
        extra = state_dict["kron"]
        self._prob_step = extra["prob_step"].clone()
        self._update_counter = extra["update_counter"].clone()
        self.rng.setstate(extra["rng"])


class KronParams(Params):
    lr: float = Field(3e-4, gt=0)
    """Learning rate (the package default; its README advises ~1/3 of Adam's, ppo_trainer.lr is 5e-4)."""
    b1: float = Field(0.9, ge=0, lt=1)
    """Momentum."""
    memory_save_mode: Literal["smart_one_diag", "one_diag", "all_diag", "none"] = "smart_one_diag"
    """Which dimensions get a diagonal instead of a triangular preconditioner. The package default
    (none: all triangular up to 8192) merges a conv weight (64, 32, 4, 4) into (8192, 4) and then
    multiplies 8192x8192 matrices at every step; smart_one_diag makes such a lone largest dimension
    diagonal (the package README: almost no loss in effectiveness)."""


@register
class KronMethod(Intervention):
    """PSGD Kron (kron-torch): Kronecker-factored preconditioner instead of Adam's diagonal one.
    Its learning rate is ``lr`` (set as the optimiser setting, so ``l2``'s per-round decay uses
    it); weight decay is the runner's or ``l2``'s (the package applies it to matrices only); it
    has no Adam betas. The package prints the buffer sizes at its first step."""

    name = "kron"
    optimizer_draws = True
    Params = KronParams
    settings_changed = frozenset({"lr"})
    settings_used = frozenset({"lr", "weight_decay"})  # no Adam betas, no coupled decay

    def optimizer_settings(self, settings):
        return {**settings, "lr": self.params.lr}

    def optimizer(self, params, settings):
        from kron_torch import Kron

        mode = self.params.memory_save_mode
        cls = type("CheckpointableKron", (KronCheckpointing, Kron), {})
        return cls(
            params, lr=settings["lr"], b1=self.params.b1, weight_decay=settings["weight_decay"],
            memory_save_mode=None if mode == "none" else mode,
        )
