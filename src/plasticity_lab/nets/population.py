"""K members' networks as one set of stacked tensors: the compute of a population in one call.

A population (DESIGN.md section 8) trains K networks of the same architecture, one per seed.
Here every parameter and buffer of the K member networks lives in one tensor with a leading
member dimension (``params[name]``, shape ``(K, *shape)``); the forward pass is one
``torch.func.vmap`` over ``functional_call`` of the members' own module, so there is a single
definition of the network and member k computes exactly what its module computes.

Each member keeps its ordinary ``ActorCritic`` module, whose parameters and buffers are *aliases*
of its slice of the stacked tensors (same storage). So everything that works on one network
(interventions editing weights in place, diagnostics, checkpoints, a trainability copy) keeps
working on a member's module and is seen by the stacked compute, and the reverse. The member
parameters' ``.grad`` are aliases of the stacked gradients' slices too, so a loss term computed
on a member's module (an intervention's ``loss`` hook) lands in the population's gradient.

An intervention that changes a member's structure (plasticity injection adds frozen heads) is
picked up by :meth:`PopulationNetwork.restack` (the loop calls it after shift hooks): tensors
are re-stacked by *parameter object*, so a parameter that moved inside the module keeps its
values and its optimiser state (:meth:`restack` returns where each old slice went).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.utils import parametrize

from plasticity_lab.distributions import ActionDistribution, make_distribution
from plasticity_lab.nets.surgery import AFFINE, applied_weight, weight_param


def _structure(module: nn.Module) -> tuple:
    """What must agree across members to stack them: names, shapes, dtypes, trainability."""
    params = tuple((n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in module.named_parameters())
    buffers = tuple((n, tuple(b.shape), b.dtype) for n, b in module.named_buffers())
    return params, buffers


def computes_one_by_one(module: nn.Module) -> bool:
    """Whether a population of networks like ``module`` computes member after member rather than
    in one batched call (why: :meth:`PopulationNetwork.__call__`): conv layers on the CPU, or
    forward hooks."""
    modules = list(module.modules())
    hooked = any(m._forward_hooks or m._forward_pre_hooks for m in modules)
    conv_on_cpu = any(isinstance(m, nn.Conv2d) for m in modules) and next(module.parameters()).device.type == "cpu"
    return hooked or conv_on_cpu


def compute_members(
    modules: Sequence[nn.Module], batched: Callable[..., tuple[torch.Tensor, ...]], looped: bool,
    obs: torch.Tensor, params: dict | None, buffers: dict | None,
) -> tuple[torch.Tensor, ...]:
    """``modules[j]`` on rows ``obs[j]``, stacked: the one program of a population's members
    (:meth:`PopulationNetwork.__call__` says why it loops or batches). ``params``/``buffers``
    (name -> (n, ...)) are the state computed with; looping, None means each module's own state.
    ``batched`` is the vmap of ``functional_call`` over (params, buffers, obs)."""
    if not looped:
        return batched(params, buffers, obs)
    if params is None:
        outs = [module(rows) for module, rows in zip(modules, obs)]
    else:
        outs = [functional_call(module, ({n: t[j] for n, t in params.items()}, {n: t[j] for n, t in buffers.items()}), (obs[j],))
                for j, module in enumerate(modules)]  # fmt: skip
    return tuple(torch.stack(parts) for parts in zip(*outs))


def forward_of_one(module: nn.Module) -> Callable[..., tuple[torch.Tensor, ...]]:
    """``forward(obs (1, N, ...), params=None, buffers=None)`` for a single network computed as a
    population's member is (:func:`compute_members`, the program of
    :meth:`PopulationNetwork.forward_members`), so a method that forwards through a cohort of one
    gets exactly what a member of a population gets. ``params``/``buffers`` (name -> (1, ...))
    replace the module's own (another network of the same architecture); without them gradients
    reach the module's parameters and buffer updates its buffers."""
    batched = vmap(lambda params, buffers, obs: functional_call(module, (params, buffers), (obs,)))

    def forward(obs: torch.Tensor, params: dict | None = None, buffers: dict | None = None) -> tuple[torch.Tensor, ...]:
        looped = computes_one_by_one(module)
        if params is None and not looped:
            params = {n: t.unsqueeze(0) for n, t in module.named_parameters()}
            buffers = {n: t.unsqueeze(0) for n, t in module.named_buffers()}
        return compute_members([module], batched, looped, obs, params, buffers)

    return forward


class PopulationNetwork:
    """The stacked parameters, buffers and batched forward of ``members`` (K >= 1 networks of one
    architecture, already on their device)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        if not members:
            raise ValueError("a population needs at least one member")
        self.members = list(members)
        self.params: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.template: nn.Module | None = None
        self._signature: tuple | None = None
        self._batched = vmap(self._member_forward)
        self.restack()

    @property
    def size(self) -> int:
        return len(self.members)

    # ------------------------------------------------------------------ stacking
    def structure_changed(self) -> bool:
        """Whether the members' modules no longer match the stacked state: other parameter or
        buffer names, shapes or trainability, or a tensor that is no longer a view of its stacked
        slice (a method replaced a layer by a new one of the same shape: the reference injection's
        merge at its second injection)."""
        if _structure(self.members[0]) != self._signature:
            return True
        for k, member in enumerate(self.members):
            for stacked, named in ((self.params, member.named_parameters()), (self.buffers, member.named_buffers())):
                if any(t.data_ptr() != stacked[name][k].data_ptr() for name, t in named):
                    return True
        return False

    @torch.no_grad()
    def restack(self) -> dict[nn.Parameter, tuple[str, int]]:
        """(Re)build the stacked tensors from the members' current values and alias the members
        onto them. Returns ``{old member parameter: (new stacked name, member index)}`` for every
        parameter object that existed before, so optimiser state can follow its parameter."""
        signature = _structure(self.members[0])
        for k, member in enumerate(self.members[1:], start=1):
            if _structure(member) != signature:
                raise ValueError(f"population member {k} has another architecture than member 0")
        where: dict[nn.Parameter, tuple[str, int]] = {}
        params: dict[str, torch.Tensor] = {}
        self._grad_aliases: list[tuple[nn.Parameter, torch.Tensor]] = []
        for name, _ in self.members[0].named_parameters():
            member_params = [dict(m.named_parameters())[name] for m in self.members]
            stacked = torch.stack([p.detach() for p in member_params])
            trainable = member_params[0].requires_grad
            params[name] = nn.Parameter(stacked, requires_grad=trainable) if trainable else stacked
            if trainable:
                params[name].grad = torch.zeros_like(stacked)
            for k, p in enumerate(member_params):
                where[p] = (name, k)
                p.data = params[name].data[k]
                if trainable:
                    p.grad = params[name].grad[k]
                    self._grad_aliases.append((p, p.grad))
        buffers: dict[str, torch.Tensor] = {}
        for name, _ in self.members[0].named_buffers():
            member_buffers = [dict(m.named_buffers())[name] for m in self.members]
            buffers[name] = torch.stack([b.detach() for b in member_buffers])
            for k, b in enumerate(member_buffers):
                b.data = buffers[name][k]
        self.params, self.buffers, self._signature = params, buffers, signature
        template = copy.deepcopy(self.members[0]).to("meta")
        template.train(self.members[0].training)
        self.template = template
        self.looped = computes_one_by_one(self.members[0])
        return where

    def trainable(self) -> dict[str, nn.Parameter]:
        """Stacked parameters that learn (frozen ones, e.g. injected old heads, excluded)."""
        return {n: p for n, p in self.params.items() if p.requires_grad}

    @torch.no_grad()
    def zero_grad(self) -> None:
        """Zero the stacked gradients in place (the members' ``.grad`` aliases stay valid)."""
        for p in self.trainable().values():
            p.grad.zero_()
        for param, alias in self._grad_aliases:
            if param.grad is not alias:  # something replaced or dropped it: re-alias
                param.grad = alias

    @torch.no_grad()
    def applied_weights(self) -> list[torch.Tensor]:
        """:func:`~plasticity_lab.nets.surgery.applied_weights` of every member, stacked (K, ...)
        per layer: a weight no parametrization reads is one copy of its stacked tensor (not K
        copies stacked again); a parametrized one (spectral norm's ``W / sigma``) is read member
        by member."""
        out, modules = [], None
        for name, layer in self.members[0].named_modules():
            if not isinstance(layer, AFFINE) or not weight_param(layer).requires_grad:
                continue
            if not parametrize.is_parametrized(layer, "weight"):
                out.append(self.params[f"{name}.weight" if name else "weight"].detach().clone())
                continue
            modules = modules or [dict(m.named_modules()) for m in self.members]
            out.append(torch.stack([applied_weight(named[name]) for named in modules]))
        return out

    # ------------------------------------------------------------------ compute
    def _member_forward(self, params: dict, buffers: dict, obs: torch.Tensor):
        return functional_call(self.template, (params, buffers), (obs,))

    def __call__(self, obs: torch.Tensor, needed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``obs`` (K, N, ...) -> (policy head output (K, N, A), value (K, N), trunk features
        (K, N, F)); member k's rows come from member k's network.

        One program for every K, so that member k computes bit for bit what the single run of its
        seed computes (DESIGN.md section 8): networks without conv layers run as one batched call
        (``vmap``; its kernels round the same for one member and for several, given the
        member-invariant heads and power iteration of :mod:`plasticity_lab.nets.layers`).
        Networks with conv layers, and networks whose modules carry forward hooks (CBP records
        its units' activations; hooks do not run inside the batched call), run member after
        member through the member's own module: a batched conv is one grouped convolution whose
        CPU kernel rounds differently with the number of groups (measured: a 3x3 conv's output
        differs at K = 1 vs 2, the conv64's first layer at K = 2 vs 3), so on CPU members compute
        their convolutions one by one; on CUDA the batched call is kept (bit identity is a CPU
        promise, speed is the GPU's).

        ``needed`` (bool (K, N)): the rows whose outputs are used; the others come back as 0. A
        member without any needed row is not computed at all (padding and finished members: no
        power-iteration step, activation record or running statistic for them). Member-by-member
        compute runs only the needed rows (the end of an episode batch, when few environments are
        still in their episode, costs what those few rows cost); the batched call computes every
        row of the members it computes.
        """
        computing = None  # every member
        if needed is not None:
            wanted = needed.any(dim=1)
            if not bool(wanted.all()):
                computing = wanted.nonzero().squeeze(1)
        if self.looped:
            chosen = range(self.size) if computing is None else computing.tolist()
            outs = {k: self._member_rows(self.members[k], obs[k], None if needed is None else needed[k]) for k in chosen}
            if computing is None:
                return tuple(torch.stack(parts) for parts in zip(*outs.values()))
            return tuple(self._scatter(computing, torch.stack(parts)) for parts in zip(*outs.values()))
        if computing is None:
            return self._batched(self.params, self.buffers, obs)
        # only the members that need rows: nothing runs, and no state changes, for the others
        outs = self.forward_members(computing, obs.index_select(0, computing))
        return tuple(self._scatter(computing, out) for out in outs)

    def forward_members(
        self, members: torch.Tensor | None, obs: torch.Tensor, params: dict | None = None, buffers: dict | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The outputs of the members at positions ``members`` (None: every member) on their
        rows ``obs`` (n, N, ...), every row computed, in the program :meth:`__call__` uses.
        Without ``params``/``buffers`` they compute with their stacked state: gradients reach the
        stacked parameters and buffer updates (spectral norm's power iteration) the stacked
        buffers. With them (name -> (n, ...)) they compute another network of theirs (C-CHAIN's
        previous one), whose buffers are updated in place."""
        own = params is None
        if own and not self.looped:  # the batched call computes with the stacked state (looping, each module holds its own)
            params = self.params if members is None else {n: p.index_select(0, members) for n, p in self.params.items()}
            buffers = self.buffers if members is None else {n: b.index_select(0, members) for n, b in self.buffers.items()}
        # the modules matter only when looping: no host sync for the member index otherwise
        chosen = [self.members[k] for k in members.tolist()] if self.looped and members is not None else self.members
        outs = compute_members(chosen, self._batched, self.looped, obs, params, buffers)
        if own and members is not None and not self.looped:
            with torch.no_grad():  # buffer updates (spectral norm's power iteration) back into the stacked state
                for name, b in buffers.items():
                    self.buffers[name].index_copy_(0, members, b)
        return outs

    def _scatter(self, members: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """(len(members), ...) outputs -> (K, ...), zeros for the members not computed."""
        return out.new_zeros((self.size, *out.shape[1:])).index_copy(0, members, out)

    @staticmethod
    def _member_rows(member: nn.Module, obs: torch.Tensor, needed: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """``member(obs)``, computing only the ``needed`` rows when some are not."""
        if needed is None or bool(needed.all()):
            return member(obs)
        rows = needed.nonzero().squeeze(1)
        outs = member(obs.index_select(0, rows))
        full = [out.new_zeros((obs.shape[0], *out.shape[1:])) for out in outs]
        for f, out in zip(full, outs):
            f[rows] = out
        return tuple(full)

    def distribution(self, head_out: torch.Tensor, members: torch.Tensor | None = None) -> ActionDistribution:
        """The members' action distributions over (K, N, ...) head outputs (or over the rows of
        the ``members`` index only, when ``head_out`` holds just those)."""
        log_std = self.params.get("log_std")
        if log_std is not None and members is not None:
            log_std = log_std.index_select(0, members)
        return make_distribution(head_out, None if log_std is None else log_std.unsqueeze(1))

    def train(self, mode: bool = True) -> None:
        """Training or eval mode for the stacked compute and every member's module (spectral norm
        advances its power iteration in training mode only)."""
        self.template.train(mode)
        for member in self.members:
            member.train(mode)

    @property
    def training(self) -> bool:
        return self.template.training
