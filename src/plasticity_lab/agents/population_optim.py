"""Optimisation of a population's stacked parameters, member by member.

:class:`PopulationAdamW` is AdamW (Loshchilov & Hutter; torch.optim.AdamW's update, term for
term) over parameters with a leading member dimension, with one step count per member and an
optional mask of the members that step. torch's AdamW cannot be used directly: its step count is
one per tensor, so members that take different numbers of steps (episode collection gathers a
different number of minibatches per member) would share a bias correction. Everything else in
the update is elementwise, so member k's slice moves exactly as a single AdamW on member k would.

Methods that bring their own optimiser (TRAC, Kron, CBP's entry-wise AdamW) get one instance per
member over the member's parameters (:class:`MemberOptimizers`); their steps update the stacked
tensors through the members' aliases (:mod:`plasticity_lab.nets.population`).

Either way, hooks see one member's optimiser through :meth:`member_view`: an object whose
``state[param]`` holds that member's moments (views into the stacked state), so a method that
clears the moments of re-initialised weights (``nets.surgery.clear_state``) clears only that member's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from plasticity_lab.nets.surgery import follow_parameters

CLIP_EPS = 1e-6
"""torch.nn.utils.clip_grad_norm_'s guard: coef = max_norm / (norm + 1e-6)."""


def _per_member(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (K,) tensor shaped to broadcast over (K, ...) ``like``."""
    return x.view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def clip_member_grad_norms(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` for every member separately: member k's gradient (its slices of every
    stacked tensor) is scaled to norm ``max_norm`` if larger. Returns the pre-clip norms (K,)."""
    grads = [p.grad for p in params if p.grad is not None]
    # (K, tensors), each member's norms contiguous: a reduction across rows of a (tensors, K)
    # stack rounds differently for one member and for several
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads], dim=1)
    total = torch.linalg.vector_norm(norms, dim=1)
    coef = (max_norm / (total + CLIP_EPS)).clamp(max=1.0)
    for g in grads:
        g.mul_(_per_member(coef, g).to(g.dtype))
    return total


class MemberStateView:
    """What a hook sees of one member's optimiser: ``state[param]`` -> {name: tensor} views. Not a
    torch optimiser, so :func:`~plasticity_lab.nets.surgery.follow_parameters` leaves it alone."""

    def __init__(self, state: dict[nn.Parameter, dict[str, torch.Tensor]], param_groups: list[dict[str, Any]]) -> None:
        self.state = state
        self.param_groups = param_groups


class PopulationAdamW:
    """AdamW over stacked (K, ...) parameters; see the module docstring.

    ``coupled_weight_decay`` adds ``wd * theta`` to the gradient before the moments (Adam's L2,
    torch.optim.Adam's ``weight_decay``); ``weight_decay`` is AdamW's decoupled decay.
    """

    def __init__(
        self,
        params: dict[str, nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        coupled_weight_decay: float = 0.0,
    ) -> None:
        self.params = dict(params)
        self.lr, self.betas, self.weight_decay, self.eps = lr, tuple(betas), weight_decay, eps
        self.coupled_weight_decay = coupled_weight_decay
        first = next(iter(self.params.values()))
        self.members = first.shape[0]
        self.steps = torch.zeros(self.members, dtype=torch.float64, device=first.device)
        self.exp_avg = {n: torch.zeros_like(p, memory_format=torch.preserve_format) for n, p in self.params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p, memory_format=torch.preserve_format) for n, p in self.params.items()}

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None) -> None:
        """One AdamW step of every member (``active`` None) or of the members where the bool
        (K,) mask is True; the others keep parameters, moments and step count. One program for
        both: a member that does not step gets coefficients that leave its slices exactly as they
        are (decay factor 1, moment weights 0, step size 0), so nothing is copied to restore it,
        and a stepping member's arithmetic is the unmasked one, bit for bit."""
        beta1, beta2 = self.betas
        on = torch.ones_like(self.steps) if active is None else active.to(self.steps.dtype)
        self.steps += on
        steps = self.steps.clamp(min=1)  # a member that never stepped has no correction to make
        step_size = self.lr / (1 - beta1**steps) * on
        bias2_sqrt = (1 - beta2**steps).sqrt()
        decay = 1 - self.lr * self.weight_decay * on
        for name, p in self.params.items():
            grad, m, v = p.grad, self.exp_avg[name], self.exp_avg_sq[name]

            def each(x: torch.Tensor) -> torch.Tensor:
                return _per_member(x, p).to(p.dtype)

            if self.coupled_weight_decay:
                grad = grad.add(p, alpha=self.coupled_weight_decay)
            if self.weight_decay:
                p.mul_(each(decay))
            m.lerp_(grad, each((1 - beta1) * on))
            v.mul_(each(beta2**on)).addcmul_(grad * each((1 - beta2) * on), grad)
            denom = (v.sqrt() / each(bias2_sqrt)).add_(self.eps)
            p.sub_(m / denom * each(step_size))

    def member_view(self, k: int, member: nn.Module) -> MemberStateView:
        """Member ``k``'s moments keyed by its module's parameters (views: edits reach the stack)."""
        state = {}
        for name, param in member.named_parameters():
            if name in self.exp_avg:
                state[param] = {"exp_avg": self.exp_avg[name][k], "exp_avg_sq": self.exp_avg_sq[name][k]}
        return MemberStateView(state, [{"lr": self.lr, "betas": self.betas, "weight_decay": self.weight_decay}])

    def member_state_dict(self, k: int) -> dict[str, Any]:
        return {
            "kind": "population_adamw", "steps": float(self.steps[k]),
            "exp_avg": {n: t[k].clone() for n, t in self.exp_avg.items()},
            "exp_avg_sq": {n: t[k].clone() for n, t in self.exp_avg_sq.items()},
        }

    @torch.no_grad()
    def load_member_state_dict(self, k: int, state: dict[str, Any]) -> None:
        if state.get("kind") != "population_adamw" or set(state["exp_avg"]) != set(self.exp_avg):
            raise ValueError("optimizer state does not match this network's AdamW")
        self.steps[k] = state["steps"]
        for n in self.exp_avg:
            self.exp_avg[n][k].copy_(state["exp_avg"][n])
            self.exp_avg_sq[n][k].copy_(state["exp_avg_sq"][n])

    @torch.no_grad()
    def carry_over(self, old: PopulationAdamW, moved: dict[tuple[str, int], tuple[str, int]]) -> None:
        """Take ``old``'s moments and steps for parameters that were re-stacked under new names
        or member indices (``moved``: (old name, member) -> (new name, member); members left
        out, e.g. failed ones, are dropped)."""
        for (old_name, k_old), (new_name, k_new) in moved.items():
            self.steps[k_new] = old.steps[k_old]
            if old_name in old.exp_avg and new_name in self.exp_avg:
                self.exp_avg[new_name][k_new].copy_(old.exp_avg[old_name][k_old])
                self.exp_avg_sq[new_name][k_new].copy_(old.exp_avg_sq[old_name][k_old])


class MemberOptimizers:
    """One optimiser per member, built by ``factory(member parameters)`` (a method's own
    optimiser); its steps reach the stacked parameters through the members' aliases. A step of
    member k runs inside ``contexts[k]()`` (a global RNG keyed by the member's own stream,
    :meth:`plasticity_lab.streams.Streams.keyed_global`: Kron's package draws its preconditioner
    fits' noise, ``torch.randn_like``, from the global RNG)."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        factory: Callable[[int, list[nn.Parameter]], torch.optim.Optimizer],
        contexts: Sequence[Callable[[], AbstractContextManager]] | None = None,
    ) -> None:
        self.members = list(members)
        self.optimizers = [factory(k, [p for p in m.parameters()]) for k, m in enumerate(self.members)]
        self.contexts = list(contexts) if contexts is not None else [nullcontext] * len(self.members)

    def step(self, active: torch.Tensor | None = None) -> None:
        for k, opt in enumerate(self.optimizers):
            if active is None or bool(active[k]):
                with self.contexts[k]():
                    opt.step()

    def member_view(self, k: int, member: nn.Module) -> torch.optim.Optimizer:
        return self.optimizers[k]

    def member_state_dict(self, k: int) -> dict[str, Any]:
        return {"kind": "member", "state": self.optimizers[k].state_dict()}

    def load_member_state_dict(self, k: int, state: dict[str, Any]) -> None:
        if state.get("kind") != "member":
            raise ValueError("optimizer state does not match this method's optimiser")
        self.optimizers[k].load_state_dict(state["state"])

    def carry_over(self, old: MemberOptimizers, moved: dict[tuple[str, int], tuple[str, int]]) -> None:
        """The same parameter objects persist across a re-stack: keep each kept member's
        optimiser (``moved`` maps old member indices to new ones), following its module's
        parameters."""
        members = dict(sorted({k_new: k_old for (_, k_old), (_, k_new) in moved.items()}.items()))
        self.optimizers = [old.optimizers[k_old] for k_old in members.values()]
        for member, opt in zip(self.members, self.optimizers):
            follow_parameters(opt, member)


PopulationOptimizer = PopulationAdamW | MemberOptimizers
