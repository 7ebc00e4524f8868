"""Diagnostics of plasticity: feature-rank measures, dormant / dead units, weight stable rank."""

from plasticity_lab.metrics.plasticity import (
    activation_rate,
    dead_fraction,
    dormant_fraction,
    dormant_scores,
    effective_rank,
    feature_rank,
    srank,
    stable_rank,
    unit_activity,
)

__all__ = [
    "activation_rate",
    "dead_fraction",
    "dormant_fraction",
    "dormant_scores",
    "effective_rank",
    "feature_rank",
    "srank",
    "stable_rank",
    "unit_activity",
]
