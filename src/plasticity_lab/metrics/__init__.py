"""Diagnostics of plasticity: feature-rank measures, dormant / dead units, weight magnitude and
stable rank."""

from plasticity_lab.metrics.plasticity import (
    activation_rate,
    dead_fraction,
    dormant_fraction,
    dormant_scores,
    effective_rank,
    feature_rank,
    reference_dead_units,
    srank,
    stable_rank,
    unit_activity,
    weight_change_rms,
    weight_rms,
)

__all__ = [
    "activation_rate",
    "dead_fraction",
    "dormant_fraction",
    "dormant_scores",
    "effective_rank",
    "feature_rank",
    "reference_dead_units",
    "srank",
    "stable_rank",
    "unit_activity",
    "weight_change_rms",
    "weight_rms",
]
