"""Intervention protocol and registry.

An intervention is an object the training loop calls at fixed points (DESIGN.md section 2); the
loop never branches on method names. Each subclass declares its parameters as a pydantic model
(so every parameter is validated and documented) and which hooks it overrides is derived, so the
run log can list it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from plasticity_lab.interventions.cohort import Cohort
from plasticity_lab.metrics.plasticity import NonFiniteInput
from plasticity_lab.streams import Streams

if TYPE_CHECKING:
    from plasticity_lab.config import RunConfig

HOOKS = ("optimizer_settings", "optimizer", "loss", "after_step", "periodic", "at_shift")
SETTINGS = frozenset({"lr", "betas", "weight_decay", "coupled_weight_decay"})
"""The optimiser settings: the runner passes ``ppo_trainer`` lr, adam_betas and weight_decay
(AdamW's decoupled decay, theta <- theta - lr*wd*theta); ``coupled_weight_decay`` is Adam's L2
(wd*theta added to the gradient before the moments, torch.optim.Adam's ``weight_decay``), set
only by ``l2: {coupled: true}`` and 0 when absent."""


@dataclass(frozen=True)
class TrainingPlan:
    """The protocol a method runs under, so a strength can be stated per task (e.g. "shrink by
    half over a round") and mean the same thing at any round length."""

    num_epochs: int
    shift_points: tuple[int, ...]
    updates_per_epoch: int
    """Optimiser steps per epoch: num_passes * (buffer_size // batch_size) (with episode-based
    collection, the nominal count for a buffer of exactly buffer_size transitions)."""
    lr: float

    @classmethod
    def from_config(cls, cfg: RunConfig) -> TrainingPlan:
        p = cfg.ppo_trainer
        return cls(p.num_epochs, tuple(p.shift_points), p.num_passes * (p.buffer_size // p.batch_size), p.lr)

    @property
    def round_bounds(self) -> list[tuple[int, int]]:
        """Epoch range [start, end) of every round (task)."""
        bounds = [0, *self.shift_points, self.num_epochs]
        return list(zip(bounds, bounds[1:]))

    @property
    def updates_per_round(self) -> float:
        """Mean optimiser steps per round."""
        return self.num_epochs * self.updates_per_epoch / len(self.round_bounds)


@dataclass
class LossContext:
    """What the ``loss`` hook sees of the current minibatch and its epoch."""

    obs: torch.Tensor
    """The minibatch's observations."""
    policy_loss: torch.Tensor
    """The minibatch's PPO policy loss (detached), for methods that scale themselves by it."""
    buffer_obs: torch.Tensor
    """Every observation of the epoch, for methods that need data outside the minibatch."""
    generator: torch.Generator
    """The run's generator (in the checkpoint), for reproducible draws."""


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Intervention:
    """Base class: every hook is a no-op; subclasses override the ones they need."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = Params
    stat_keys: ClassVar[tuple[str, ...]] = ()
    """Statistics ``periodic`` returns; each becomes a metrics.csv column."""
    keeps_optimizer: ClassVar[bool] = False
    """The optimiser's state is part of the method (TRAC's anchor and scale), so the runner keeps
    the optimiser at shifts even when ``ppo_trainer.reset_optimizer_at_shift`` asks for a new one."""
    settings_changed: ClassVar[frozenset[str]] = frozenset()
    """The optimiser settings ``optimizer_settings`` changes."""
    edits_weights: ClassVar[bool] = False
    """The method changes parameter values outside the optimiser's step (resets, shrinking,
    projections, unit recycling)."""
    needs_sole_updates: ClassVar[bool] = False
    """The optimiser's state assumes that only its own steps move the weights (TRAC scales the
    displacement from its reference weights), so no method that ``edits_weights`` may run beside it."""
    optimizer_draws: ClassVar[bool] = False
    """The optimiser that ``optimizer`` builds draws from the global RNG in its step (a package
    that takes no generator: kron-torch), so the runner steps it on a stream of the member's
    (:meth:`plasticity_lab.streams.Streams.keyed_global`)."""
    settings_used: ClassVar[frozenset[str]] = SETTINGS
    """The settings the optimiser that ``optimizer`` builds applies (a method changing another
    one cannot be combined with it: the change would be silently ignored)."""

    def __init__(self, params: BaseModel, model: torch.nn.Module, plan: TrainingPlan) -> None:
        self.params = params
        self.plan = plan
        self.streams = Streams()
        """Where the method's draws come from: its member's own generators once the runner binds
        them (:mod:`plasticity_lab.streams`); built by hand, the global default generators."""

    @classmethod
    def settings_changed_by(cls, params: BaseModel) -> frozenset[str]:
        """The settings ``optimizer_settings`` changes with these parameters."""
        return cls.settings_changed

    @classmethod
    def initialize(cls, params: BaseModel, model: torch.nn.Module) -> None:
        """Re-initialise the layers the method governs, when the method is defined for another
        initialisation than the network's (Parseval: orthogonal). :func:`build_interventions`
        calls it for every method before building any, so methods that record initial weights
        (L2 Init, NaP) record these; the baseline's initialisation is untouched."""

    @classmethod
    def check_config(cls, params: BaseModel, cfg: RunConfig) -> None:
        """Refuse a run configuration the method cannot act on (a one-line ValueError)."""

    @classmethod
    def hooks(cls) -> list[str]:
        return [h for h in HOOKS if getattr(cls, h) is not getattr(Intervention, h) or cls.batched(h)]

    @classmethod
    def batched(cls, hook: str) -> bool:
        """Whether the method implements ``hook`` once for a cohort of members (``<hook>_members``,
        :mod:`plasticity_lab.interventions.cohort`): the loop then calls it once for every acting
        member, and the one-network hook runs it on a cohort of one."""
        form = f"{hook}_members"
        return hasattr(Intervention, form) and getattr(cls, form) is not getattr(Intervention, form)

    def uses(self, hook: str) -> bool:
        """Whether the loop must call ``hook`` on this instance (a method whose hook does
        nothing with its parameters says so, e.g. soft S&P's loss without anchors)."""
        return hook in self.hooks()

    def optimizer_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The optimiser settings with this method's changes. Applied before any optimiser is
        built, so a method that only changes settings combines with one that provides the optimiser."""
        return settings

    def optimizer(self, params: list[torch.nn.Parameter], settings: dict[str, Any]) -> torch.optim.Optimizer | None:
        """Return an optimiser to use instead of AdamW, built with ``settings``, or None."""
        return None

    def loss(self, model: torch.nn.Module, ctx: LossContext) -> torch.Tensor | None:
        """Extra loss term added to the PPO loss of every minibatch."""
        if self.batched("loss"):
            return self._alone(model, None, lambda cohort: self.loss_members(cohort, [ctx]))
        return None

    def after_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called after every optimiser step."""
        if self.batched("after_step"):
            self._alone(model, optimizer, self.after_step_members)

    def periodic(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, obs: torch.Tensor, epoch: int) -> dict[str, float]:
        """Called after every epoch's update with recent observations; returns stats to log."""
        if self.batched("periodic"):
            return self._alone(model, optimizer, lambda cohort: self.periodic_members(cohort, [obs], epoch))[0]
        return {}

    def at_shift(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called at each distribution shift, after the environments changed."""
        if self.batched("at_shift"):
            self._alone(model, optimizer, self.at_shift_members)

    def _alone(self, model: torch.nn.Module, optimizer: Any, call: Any) -> Any:
        """A batched hook on ``model`` alone (a cohort of one); a non-finite value it met raises,
        as the one-network hook's caller expects."""
        cohort = Cohort.of_module(self, model, optimizer)
        out = call(cohort)
        if cohort.failing:
            raise NonFiniteInput(next(iter(cohort.failing.values())))
        return out

    # The same hooks for a cohort of members, on their stacked state (cohort.py); a method that
    # is elementwise or per unit implements these instead of the one-network forms above.
    def loss_members(self, cohort: Cohort, contexts: list[LossContext]) -> torch.Tensor | None:
        """The sum over the acting members of their loss terms (each one's gradient is its own)."""
        return None

    def after_step_members(self, cohort: Cohort) -> None:
        """After the acting members' optimiser step."""

    def periodic_members(self, cohort: Cohort, obs: list[torch.Tensor], epoch: int) -> list[dict[str, float]]:
        """After the epoch's update, ``obs[j]`` the recent observations of acting member j;
        returns each one's stats."""
        return [{} for _ in obs]

    def at_shift_members(self, cohort: Cohort) -> None:
        """At a distribution shift, for every member."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


REGISTRY: dict[str, type[Intervention]] = {}


def register(cls: type[Intervention]) -> type[Intervention]:
    REGISTRY[cls.name] = cls
    return cls


def validate_params(name: str, raw: Any) -> BaseModel:
    if name not in REGISTRY:
        raise ValueError(
            f"interventions.{name}: method {name!r} is not implemented (available: {', '.join(sorted(REGISTRY))})"
        )
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"interventions.{name}: expected a mapping of parameters, got {type(raw).__name__}")
    from pydantic import ValidationError

    try:
        return REGISTRY[name].Params.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(["interventions", name, *(str(p) for p in first["loc"])])
        if first["type"] == "extra_forbidden":
            msg = "unknown key"
        elif first["type"] == "value_error":  # a cross-field check: its own sentence
            msg = str(first["ctx"]["error"])
        else:
            msg = first["msg"]
        raise ValueError(f"{where}: {msg}") from None


def build_interventions(spec: dict[str, dict[str, Any]], model: torch.nn.Module, plan: TrainingPlan) -> list[Intervention]:
    """The methods of ``spec`` on ``model``: every method's :meth:`Intervention.initialize` first,
    then the methods in ``spec``'s order (the order their hooks run in)."""
    params = {name: validate_params(name, raw) for name, raw in spec.items()}
    for name, p in params.items():
        REGISTRY[name].initialize(p, model)
    return [REGISTRY[name](p, model, plan) for name, p in params.items()]


def resolve_optimizer(interventions: list[Intervention], defaults: dict[str, Any]) -> tuple[Intervention | None, dict[str, Any]]:
    """(the method that provides the optimiser, or None for AdamW; the settings it is built with):
    ``defaults`` (lr, betas, weight_decay) as every method's ``optimizer_settings`` changes them.
    The provider's own changes come first (e.g. Kron's learning rate), so the others see the
    settings it will use."""
    providers = [iv for iv in interventions if "optimizer" in iv.hooks()]
    if len(providers) > 1:
        raise ValueError(f"interventions: {' and '.join(iv.name for iv in providers)} each provide the optimiser")
    settings = dict(defaults)
    for iv in providers + [iv for iv in interventions if iv not in providers]:
        settings = iv.optimizer_settings(settings)
    return (providers[0] if providers else None), settings


def make_optimizer(model: torch.nn.Module, interventions: list[Intervention], defaults: dict[str, Any]) -> torch.optim.Optimizer:
    """One network's optimiser: the one a method provides, else AdamW, or torch's Adam where a
    coupled weight decay (L2 in the gradient) is set (:func:`resolve_optimizer`)."""
    provider, settings = resolve_optimizer(interventions, defaults)
    params = list(model.parameters())
    if provider is not None:
        return provider.optimizer(params, settings)
    cls, kwargs = torch_adam(settings)
    return cls(params, **kwargs)


def torch_adam(settings: dict[str, Any]) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """torch's optimiser for ``settings`` and its keyword arguments: AdamW (decoupled decay), or
    Adam with the coupled decay as its ``weight_decay`` where one is set. Both kinds at once have
    no torch optimiser (the config refuses them: ``l2``'s check)."""
    settings = dict(settings)
    coupled = settings.pop("coupled_weight_decay", 0.0)
    if not coupled:
        return torch.optim.AdamW, settings
    if settings["weight_decay"]:
        raise ValueError("a coupled and a decoupled weight decay cannot both be set")
    return torch.optim.Adam, {**settings, "weight_decay": coupled}
