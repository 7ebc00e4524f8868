"""Mitigation methods as hook objects (see base.py); importing this package registers them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plasticity_lab.interventions import (  # noqa: F401  (register)
    cbp,
    cchain,
    inject,
    nap,
    optimizers,
    redo,
    regularizers,
    reset,
)
from plasticity_lab.interventions.base import (
    REGISTRY,
    Intervention,
    LossContext,
    TrainingPlan,
    build_interventions,
    make_optimizer,
    resolve_optimizer,
    validate_params,
)

if TYPE_CHECKING:
    from plasticity_lab.config import RunConfig

__all__ = [
    "REGISTRY", "Intervention", "LossContext", "TrainingPlan", "build_interventions", "check_compatible",
    "make_optimizer", "resolve_optimizer", "validate_interventions",
]


def check_compatible(names: list[str]) -> None:
    """Refuse combinations that cannot all take effect: two methods that each provide the
    optimiser, or a settings change (betas, weight decay) the provided optimiser does not apply."""
    swaps = [name for name in names if "optimizer" in REGISTRY[name].hooks()]
    if len(swaps) > 1:
        raise ValueError(f"interventions: {' and '.join(swaps)} each replace the optimiser; use at most one of them")
    for swap in swaps:
        for name in names:
            ignored = REGISTRY[name].settings_changed - REGISTRY[swap].settings_used
            if ignored:
                raise ValueError(f"interventions: {swap}'s optimiser has no {', '.join(sorted(ignored))}, which {name} sets")


def validate_interventions(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """Validate every method's parameters and their combination; returns them with defaults filled in."""
    params = {}
    for name, raw in cfg.interventions.items():
        validated = validate_params(name, raw)
        REGISTRY[name].check_config(validated, cfg)
        params[name] = validated.model_dump()
    check_compatible(list(params))
    return params
