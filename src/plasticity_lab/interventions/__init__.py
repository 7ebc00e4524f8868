"""Mitigation methods as hook objects (see base.py); importing this package registers them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


def check_compatible(spec: Mapping[str, Any] | Iterable[str]) -> None:
    """Refuse combinations that cannot all take effect: two methods that each provide the
    optimiser, a settings change (betas, weight decay) the provided optimiser does not apply, or
    a weight edit outside an optimiser whose state assumes it alone moves the weights (TRAC: an
    edit is read as its own displacement and corrupts its scale). ``spec``: method -> its
    parameters, or method names alone (default parameters)."""
    spec = dict(spec) if isinstance(spec, Mapping) else dict.fromkeys(spec)
    params = {name: validate_params(name, raw) for name, raw in spec.items()}
    names = list(params)
    swaps = [name for name in names if "optimizer" in REGISTRY[name].hooks()]
    if len(swaps) > 1:
        raise ValueError(f"interventions: {' and '.join(swaps)} each replace the optimiser; use at most one of them")
    editors = [name for name in names if REGISTRY[name].edits_weights]
    for sole in (name for name in names if REGISTRY[name].needs_sole_updates):
        if editors:
            raise ValueError(
                f"interventions: {sole} assumes only its optimiser moves the weights, but {', '.join(editors)} "
                f"edit{'s' if len(editors) == 1 else ''} them outside it; use one or the other"
            )
    for swap in swaps:
        for name in names:
            ignored = REGISTRY[name].settings_changed_by(params[name]) - REGISTRY[swap].settings_used
            if ignored:
                raise ValueError(f"interventions: {swap}'s optimiser has no {', '.join(sorted(ignored))}, which {name} sets")


def validate_interventions(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """Validate every method's parameters and their combination; returns them with defaults filled in."""
    params = {}
    for name, raw in cfg.interventions.items():
        validated = validate_params(name, raw)
        REGISTRY[name].check_config(validated, cfg)
        params[name] = validated.model_dump()
    check_compatible(params)
    return params
