"""Mitigation methods as hook objects (see base.py); importing this package registers them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plasticity_lab.interventions import redo  # noqa: F401  (registers)
from plasticity_lab.interventions.base import REGISTRY, Intervention, build_interventions, validate_params

if TYPE_CHECKING:
    from plasticity_lab.config import RunConfig

__all__ = ["REGISTRY", "Intervention", "build_interventions", "validate_interventions"]


def validate_interventions(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """Validate every method's parameters; returns them with defaults filled in."""
    return {name: validate_params(name, raw).model_dump() for name, raw in cfg.interventions.items()}
