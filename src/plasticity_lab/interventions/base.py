"""Intervention protocol and registry.

An intervention is an object the training loop calls at fixed points (DESIGN.md section 2); the
loop never branches on method names. Each subclass declares its parameters as a pydantic model
(so every parameter is validated and documented) and which hooks it overrides is derived, so the
run log can list it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

HOOKS = ("optimizer", "loss", "after_step", "periodic", "at_shift")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Intervention:
    """Base class: every hook is a no-op; subclasses override the ones they need."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = Params
    stat_keys: ClassVar[tuple[str, ...]] = ()
    """Statistics ``periodic`` returns; each becomes a metrics.csv column."""

    def __init__(self, params: BaseModel, model: torch.nn.Module) -> None:
        self.params = params

    @classmethod
    def hooks(cls) -> list[str]:
        return [h for h in HOOKS if getattr(cls, h) is not getattr(Intervention, h)]

    def optimizer(self, params: list[torch.nn.Parameter], defaults: dict[str, Any]) -> torch.optim.Optimizer | None:
        """Return an optimiser to use instead of AdamW, or None."""
        return None

    def loss(self, model: torch.nn.Module, obs: torch.Tensor) -> torch.Tensor | None:
        """Extra loss term added to the PPO loss of every minibatch."""
        return None

    def after_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called after every optimiser step."""

    def periodic(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, obs: torch.Tensor, epoch: int) -> dict[str, float]:
        """Called after every epoch's update with recent observations; returns stats to log."""
        return {}

    def at_shift(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called at each distribution shift, after the environments changed."""

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
        key = ".".join(str(p) for p in first["loc"])
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ValueError(f"interventions.{name}.{key}: {msg}") from None


def build_interventions(spec: dict[str, dict[str, Any]], model: torch.nn.Module) -> list[Intervention]:
    return [REGISTRY[name](validate_params(name, raw), model) for name, raw in spec.items()]
