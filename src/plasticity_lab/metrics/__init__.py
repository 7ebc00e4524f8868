"""Diagnostics of plasticity: feature-rank measures, dormant / dead units, weight magnitude and
stable rank; continual-learning metrics of a run's task-return matrix."""

from plasticity_lab.metrics.continual import (
    Undefined,
    average_incremental_return,
    average_returns,
    backward_transfer,
    continual_metrics,
    final_average_return,
    forgetting,
    forward_transfer,
    plasticity_ratio,
    read_task_matrix,
)
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
    "Undefined",
    "activation_rate",
    "average_incremental_return",
    "average_returns",
    "backward_transfer",
    "continual_metrics",
    "dead_fraction",
    "dormant_fraction",
    "dormant_scores",
    "effective_rank",
    "feature_rank",
    "final_average_return",
    "forgetting",
    "forward_transfer",
    "plasticity_ratio",
    "read_task_matrix",
    "reference_dead_units",
    "srank",
    "stable_rank",
    "unit_activity",
    "weight_change_rms",
    "weight_rms",
]
