"""Plasticity injection (Nikishin et al. 2023, "Deep Reinforcement Learning with Plasticity Injection").

The paper splits the network into an encoder phi and a head h_theta and, at injection, freezes
theta and adds two copies theta'_1 = theta'_2 of a freshly initialised head:

    out(x) = h_theta(phi(x)) + h_theta'_1(phi(x)) - stopgrad(h_theta'_2(phi(x)))

so the output is unchanged at that moment, the number of trainable parameters stays the same, and
from then on a fresh head (new capacity, with its hidden nonlinearity) learns the change of the
predictions while the encoder keeps learning through both the frozen and the new head.

**Which part is the head** (``variant: paper``, the default): the paper's Atari network is the
Nature-DQN, with the convolutional layers as encoder and the fully connected layers after them as
head. The conv64 actor-critic has the same shape (convolutions, one dense trunk layer, then the
policy and value layers), so its head is the trunk layer *and* both output layers, and the encoder
is everything before the trunk layer (the convolutions; for ``mlp``, the first dense layer). A
head made of the output layers alone would not do: they are single linear maps, and a frozen
linear map plus a fresh one is just a re-parameterised linear map (see ``reference`` below).

Here the trainable head stays where the rest of the toolkit looks for it (``model.blocks[-1]``,
``model.policy``, ``model.value``) and is re-drawn by a freshly built network of the run's
architecture, while the previous head moves, frozen, into ``model.injected``
(:class:`FrozenHeads`) together with a frozen copy of the fresh one. So diagnostics, resets, unit
links (ReDo, CBP) and the trainability probe see the learning network; unit methods also reach the
frozen heads' trunk layers, which read the encoder's last units (``ActorCritic.unit_links``).

**Repeated shifts** inject again: the whole current head (previous frozen ones included) is what
gets frozen, so after n injections out = h_0 + sum_{k=1..n} (h_k - stopgrad(r_k)), with h_n the
trainable head and r_k the frozen copy of h_k as initialised; each injection adds two head
networks of parameters, none of them trainable.

``variant: reference`` is the reference code's (``shared/modules.py`` ``Injector``): the policy and
value layers become old(f) + new(f) - new0(f).detach() on the trunk features f, with the old layer
*still trained*, and a repeated injection first merges the previous wrapper into one linear layer
(weights old + new - new0). That adds no capacity: with a fresh Adam state (the optimiser is
re-created at shifts) old and new get the same gradient and the same update, so on fixed features
and without gradient clipping or weight decay it trains exactly like the baseline with a doubled
head learning rate (tests/test_inject.py shows it in float64); a learning encoder differs only in
its gradient, which flows through old + new while the output applies old + new - new0.

The number of injections is this method's checkpoint state; ``load_state_dict`` repeats them on a
freshly built model, so the structure exists before the weights are loaded.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrizations

from plasticity_lab.interventions.base import Intervention, Params, register
from plasticity_lab.nets import build_model
from plasticity_lab.nets.actor_critic import Block
from plasticity_lab.nets.layers import member_invariant_linear
from plasticity_lab.nets.surgery import follow_parameters


class HeadNetwork(nn.Module):
    """What the paper injects into: the trunk layer and both output layers."""

    def __init__(self, block: nn.Module, policy: nn.Module, value: nn.Module) -> None:
        super().__init__()
        self.block, self.policy, self.value = block, policy, value

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.block(x)  # the outputs as the model's own heads compute them
        return member_invariant_linear(self.policy, features), member_invariant_linear(self.value, features)


class FrozenHeads(nn.Module):
    """The frozen head networks of a model with n injections: ``old`` = h_0 .. h_{n-1} (the heads
    that were trainable before each injection; gradients flow through them to the encoder) and
    ``refs`` = r_1 .. r_n (copies of h_1 .. h_n as initialised, stop-gradient)."""

    def __init__(self) -> None:
        super().__init__()
        self.old = nn.ModuleList()
        self.refs = nn.ModuleList()

    @staticmethod
    def _stopped(ref: HeadNetwork, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return ref(x)

    def forward(self, x: torch.Tensor, logits: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h_0 + sum_k (h_k - r_k), then + (trainable - r_n). Each difference is taken first: the
        newest one is exactly zero at its injection and the sum before it is computed as the
        output was then, so injecting leaves the output bit-identical."""
        base_logits, base_value = self.old[0](x)
        for head, ref in zip(self.old[1:], self.refs[:-1], strict=True):
            (lg, v), (ref_lg, ref_v) = head(x), self._stopped(ref, x)
            base_logits, base_value = base_logits + (lg - ref_lg), base_value + (v - ref_v)
        ref_lg, ref_v = self._stopped(self.refs[-1], x)
        return base_logits + (logits - ref_lg), base_value + (value - ref_v)

    def input_layers(self) -> list[nn.Module]:
        """The frozen trunk layers, which read the same encoder units as the trainable one."""
        return [head.block.layer for head in (*self.old, *self.refs)]


class LinearInjection(nn.Module):
    """The reference's ``Injector``: old(f) + new(f) - new0(f).detach() on the trunk features."""

    def __init__(self, old: nn.Linear, new: nn.Linear) -> None:
        super().__init__()
        self.old, self.new = old, new
        self.new0 = copy.deepcopy(new).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The difference first: it is exactly zero at injection, so the output is bit-identical.
        old, new, new0 = (member_invariant_linear(layer, x) for layer in (self.old, self.new, self.new0))
        return old + (new - new0.detach())

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """One linear layer applying old + new - new0 (the reference merges before re-injecting;
        the applied weights are summed, so a spectral-norm head merges into a plain layer)."""
        bias = self.old.bias
        layer = nn.Linear(self.old.in_features, self.old.out_features, device=bias.device, dtype=bias.dtype)
        layer.weight.copy_(self.old.weight + self.new.weight - self.new0.weight)
        layer.bias.copy_(self.old.bias + self.new.bias - self.new0.bias)
        return layer


class InjectParams(Params):
    variant: Literal["paper", "reference"] = "paper"
    """paper: freeze the trunk layer and heads, add a fresh trainable copy of them (Nikishin et
    al.); reference: wrap the linear heads, old ones still trained, merged at re-injection."""


@register
class Inject(Intervention):
    name = "inject"
    Params = InjectParams

    def __init__(self, params, model, plan):
        super().__init__(params, model, plan)
        self.model = model
        self.count = 0

    def inject(self, model: nn.Module, replay: bool = False) -> None:
        """Add heads. Module constructors draw from the global RNG only, so the fresh heads are
        built on a stream of the member's (:meth:`Streams.keyed_global`); a ``replay`` (rebuilding
        the structure before a checkpoint's weights are loaded over it) draws nothing from it."""
        with self.streams.keyed_global(draw=not replay):
            if self.params.variant == "paper":
                self._inject_head_network(model)
            else:
                self._inject_linear_heads(model)
        self.count += 1

    @staticmethod
    def _inject_head_network(model: nn.Module) -> None:
        device = next(model.parameters()).device
        fresh = build_model(model.cfg, model.num_actions, model.obs_shape).to(device).train(model.training)
        reference = copy.deepcopy(HeadNetwork(fresh.blocks[-1], fresh.policy, fresh.value))
        trunk = model.blocks[-1]
        frozen = HeadNetwork(Block(trunk.layer, trunk.norm, trunk.act), model.policy, model.value)
        # The trunk Block object stays (hooks on model.blocks keep working); its parts are new.
        trunk.layer, trunk.norm, trunk.act = fresh.blocks[-1].layer, fresh.blocks[-1].norm, fresh.blocks[-1].act
        model.policy, model.value = fresh.policy, fresh.value
        if model.injected is None:
            model.injected = FrozenHeads()
        model.injected.old.append(frozen.requires_grad_(False))
        model.injected.refs.append(reference.requires_grad_(False))

    @staticmethod
    def _inject_linear_heads(model: nn.Module) -> None:
        device = next(model.parameters()).device
        for name in ("policy", "value"):
            head = getattr(model, name)
            old = head.merged() if isinstance(head, LinearInjection) else head
            new = nn.Linear(model.feature_dim, old.out_features, device=device)
            if model.cfg.spectral_norm == "all":
                parametrizations.spectral_norm(new)
            setattr(model, name, LinearInjection(old, new))

    def at_shift(self, model, optimizer):
        self.inject(model)
        # The runner may keep this optimiser (reset_optimizer_at_shift: false, or a method that
        # keeps it): it must follow the new parameters.
        follow_parameters(optimizer, model)

    def state_dict(self):
        return {"injections": self.count}

    def load_state_dict(self, state):
        if state["injections"] < self.count:
            raise ValueError(f"inject: checkpoint has {state['injections']} injections, the model already {self.count}")
        while self.count < state["injections"]:
            self.inject(self.model, replay=True)
