"""The members a batched method acts on: their stacked training state, in one program.

A population holds its training state once, as tensors with a leading member dimension
(:class:`plasticity_lab.nets.population.PopulationNetwork`, DESIGN.md section 8). A method that is
elementwise or per unit (resets, shrink-and-perturb, L2 Init, NaP, ReDo's unit recycling) is
written once, against a :class:`Cohort`: it reads and edits the stacked tensors of the members
acting now (all of them, or the subset that took this step), with each member's own instance of
the method for what is the member's own (its random streams, its anchors). Elementwise operations
and reductions over a member's own row round the same at any number of members (checked by
``tests/test_cohort.py``), so member k computes what its single run computes.

A single network is a cohort of one (:meth:`Cohort.of_module`: the "stacked" tensors are views of
its parameters), so the method has no second implementation for one network.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from plasticity_lab.metrics.plasticity import NonFiniteInput
from plasticity_lab.nets.population import forward_of_one
from plasticity_lab.nets.surgery import clear_state

if TYPE_CHECKING:
    from plasticity_lab.interventions.base import Intervention
    from plasticity_lab.interventions.anchors import ParamAnchors


class Cohort:
    """Members ``index`` (positions along the member dimension; None: every member) of stacked
    tensors ``params`` (name -> (K, ...)), with ``instances[j]``, ``modules[j]`` and
    ``optimizer(j)`` (its view of the optimiser's per-entry state) those of the j-th acting member.

    ``failing`` (member position -> cause) is where :meth:`guard` records a member whose own
    computation met non-finite values, so it fails alone (the loop's isolation)."""

    def __init__(
        self,
        instances: Sequence[Intervention],
        modules: Sequence[nn.Module],
        params: dict[str, torch.Tensor],
        optimizer: Callable[[int], Any],
        index: Sequence[int] | None = None,
        failing: dict[int, str] | None = None,
        parent: Cohort | None = None,
        buffers: dict[str, torch.Tensor] | None = None,
        forward: Callable[..., tuple[torch.Tensor, ...]] | None = None,
    ) -> None:
        self.instances, self.modules = list(instances), list(modules)
        self.params = params
        self.buffers = buffers if buffers is not None else {}
        self._forward = forward
        self.optimizer = optimizer
        self.positions = list(range(len(self.instances))) if index is None else list(index)
        self.index = None if index is None else torch.tensor(self.positions, device=next(iter(params.values())).device)
        self.failing = failing if failing is not None else {}
        self.parent = parent
        self._anchors: dict[str, dict[str, torch.Tensor]] = {}
        """Stacked anchors by instance attribute (held once: the instances' anchors are views)."""
        self._names = {p: n for n, p in self.modules[0].named_parameters()}
        self._generators: dict[torch.device, list[torch.Generator]] = {}

    @classmethod
    def of_module(cls, instance: Intervention, model: nn.Module, optimizer: Any) -> Cohort:
        """A single network as a cohort of one: its parameters seen as (1, ...) tensors."""
        params = {name: p.unsqueeze(0) for name, p in model.named_parameters()}
        buffers = {name: b.unsqueeze(0) for name, b in model.named_buffers()}
        one = forward_of_one(model)
        return cls([instance], [model], params, lambda j: optimizer, buffers=buffers,
                   forward=lambda members, obs, params=None, buffers=None: one(obs, params, buffers))

    def acting(self, members: Sequence[int], failing: dict[int, str]) -> Cohort:
        """The members at positions ``members`` of this cohort of every member (those that act
        now), sharing its stacked anchors; ``failing`` receives the ones that fail."""
        if self.index is not None or self.parent is not None:
            raise ValueError("acting members are chosen from the cohort of every member")
        members = list(members)
        index = None if members == list(range(len(self))) else members
        return Cohort([self.instances[k] for k in members], [self.modules[k] for k in members], self.params,
                      lambda j: self.optimizer(members[j]), index, failing, self, self.buffers, self._forward)

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def model(self) -> nn.Module:
        """The architecture (every member's is the same): where a method finds its layers."""
        return self.modules[0]

    def name(self, param: nn.Parameter) -> str:
        """The stacked name of ``param``, a parameter of :attr:`model`."""
        return self._names[param]

    # ------------------------------------------------------------------ values
    def values(self, name: str) -> torch.Tensor:
        """The acting members' slices of ``name``: (n, ...); the stacked tensor itself when every
        member acts (then in-place edits are the edit), else a copy to :meth:`store` back.
        Differentiable: a loss term on it puts its gradient into the stacked gradient."""
        stacked = self.params[name]
        return stacked if self.index is None else stacked.index_select(0, self.index)

    def buffer_values(self, name: str) -> torch.Tensor:
        """The acting members' slices of buffer ``name`` (as :meth:`values`)."""
        stacked = self.buffers[name]
        return stacked if self.index is None else stacked.index_select(0, self.index)

    def forward(
        self, obs: torch.Tensor, among: Sequence[int] | None = None, params: dict | None = None, buffers: dict | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The network outputs of acting members ``among`` (positions in this cohort; None: all)
        on their rows ``obs`` (n, N, ...), in the population's own program (so member k gets what
        its single run gets): with their training state (gradients reach the stacked parameters),
        or with ``params``/``buffers`` (name -> (n, ...)), another network of theirs."""
        positions = self.positions if among is None else [self.positions[j] for j in among]
        everyone = self.index is None and among is None
        members = None if everyone else torch.tensor(positions, device=obs.device)
        return self._forward(members, obs, params, buffers)

    @torch.no_grad()
    def store(self, name: str, value: torch.Tensor) -> None:
        """Write the acting members' slices of ``name`` (a no-op for :meth:`values`' own tensor)."""
        stacked = self.params[name]
        if value is not stacked:
            stacked.index_copy_(0, self.index, value.to(stacked.dtype))

    @torch.no_grad()
    def edit(self, name: str, fn: Callable[[torch.Tensor], None]) -> None:
        """``fn`` edits the acting members' slices of ``name`` in place."""
        value = self.values(name)
        fn(value)
        self.store(name, value)

    @torch.no_grad()
    def assign(self, name: str, where: torch.Tensor | None, value: torch.Tensor | float) -> None:
        """``param[where] = value`` for each acting member (``where``: bool, broadcast against
        the (n, ...) slices; None: everywhere) and its optimiser's per-entry state (Adam's
        moments) cleared there, so fresh weights are not pushed by stale momentum."""
        current = self.values(name)
        mask = torch.ones((), dtype=torch.bool, device=current.device) if where is None else where
        value = torch.as_tensor(value, dtype=current.dtype, device=current.device)
        updated = torch.where(mask, value, current)
        if current is self.params[name]:
            current.copy_(updated)
        else:
            self.store(name, updated)
        self.clear_state(name, mask)

    @torch.no_grad()
    def clear_state(self, name: str, where: torch.Tensor) -> None:
        """Zero the per-entry optimiser state of ``name`` where ``where`` (n, ...) holds. The
        optimiser is reached through each member's view (its moments are views of the stacked
        state, or its own optimiser's tensors), so this is the one per-member loop here: it runs
        at re-initialisations only."""
        for j, module in enumerate(self.modules):
            clear_state(self.optimizer(j), dict(module.named_parameters())[name], where if where.dim() == 0 else where[j])

    # ------------------------------------------------------------------ per member
    def generators(self, device: torch.device | str) -> list[torch.Generator]:
        """Each acting member's own generator on ``device`` (:mod:`plasticity_lab.streams`),
        looked up once per cohort (a method that perturbs every step draws for every tensor)."""
        device = torch.device(device)
        if device not in self._generators:
            self._generators[device] = [iv.streams.on(device) for iv in self.instances]
        return self._generators[device]

    def draw(self, shape: Sequence[int], like: torch.Tensor, fill: Callable[[torch.Tensor, torch.Generator], Any]) -> torch.Tensor:
        """(n, *shape): member j's row filled by ``fill(row, its generator)`` (in place), each
        member drawing from its own stream exactly what its single run draws."""
        out = torch.empty((len(self), *shape), dtype=like.dtype, device=like.device)
        for row, gen in zip(out, self.generators(like.device)):
            fill(row, gen)
        return out

    def stack_anchors(self, attr: str) -> dict[str, torch.Tensor]:
        """The stacked references (name -> (K, ...)) held by every member's ``ParamAnchors``
        attribute ``attr`` (L2 Init's theta_0, NaP's norms), the acting members' rows. Stacked
        once per cohort; each instance's anchors then become views of the stack, so the
        reference is held once."""
        if self.parent is not None:
            stacked = self.parent.stack_anchors(attr)
            return stacked if self.index is None else {n: t.index_select(0, self.index) for n, t in stacked.items()}
        if attr not in self._anchors:
            members: list[ParamAnchors] = [getattr(iv, attr) for iv in self.instances]
            pairs = [dict(anchors.pairs()) for anchors in members]
            stacked: dict[str, torch.Tensor] = {}
            for param, _ in pairs[0].items():
                name = self.name(param)
                mine = [dict(m.named_parameters())[name] for m in self.modules]
                stacked[name] = torch.stack([p[q] for p, q in zip(pairs, mine)])
                for anchors, q, row in zip(members, mine, stacked[name]):
                    anchors.values[q] = row
            self._anchors[attr] = stacked
        return self._anchors[attr]

    @contextlib.contextmanager
    def guard(self, j: int, what: str) -> Iterator[None]:
        """Inside, a non-finite value met by a metric fails acting member ``j`` alone."""
        try:
            yield
        except NonFiniteInput as err:
            self.failing.setdefault(self.positions[j], f"non-finite values in {what} ({err})")
