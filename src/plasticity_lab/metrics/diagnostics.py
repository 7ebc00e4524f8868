"""Per-layer probe statistics of a network on a frame set (DESIGN.md section 5): pure functions of
the network and the frames, with no environment access and no files.

A probe forwards a set of real frames through the network and reports, per layer (named by
:func:`layer_names`: ``conv1``, ``conv2``, ... then the dense layers, the last of which, the trunk
the heads read, is always ``dense``), dead / dormant units, activation rates, feature ranks and
weight statistics; :func:`churn` compares two probes' outputs. When a run probes, on which frames,
and where the results go is :mod:`plasticity_lab.experiment.probes`.

Unit, rank and weight metrics are the definitions in :mod:`plasticity_lab.metrics.plasticity`.
Conv maps of 2560 frames take hundreds of MB, so the probe set goes through the network in chunks
and only per-unit sums (of ``|h|`` and of active frames) and the spatially averaged features are
kept; the ``*_from_*`` helpers of that module turn the sums into the full-set values (exactly for
the counts, up to float64 rounding for the ``|h|`` sums).

Nothing here draws from torch's global RNG or changes the network (it is probed in eval mode, so
spectral norm's power iteration does not advance), so diagnostics never alter a training run.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from plasticity_lab.distributions import make_distribution
from plasticity_lab.metrics.plasticity import (
    activation_rate_from_counts,
    dead_fraction_from_counts,
    dormant_fraction_from_scores,
    dormant_scores_from_mean_abs,
    rank_measures,
    stable_rank,
    unit_activity,
)

HEAD_NAMES = ("policy", "value")
DORMANT_TAUS = (0.0, 0.025, 0.1)
UNIT_STATS = ("dead_frac", "activation_rate") + tuple(f"dormant_{tau:g}" for tau in DORMANT_TAUS)
FEATURE_STATS = ("effective_rank", "srank", "feature_rank", "feature_norm", "feature_var")
WEIGHT_STATS = ("weight_norm", "stable_rank")


def layer_names(model: nn.Module) -> list[str]:
    """``conv1..convC`` for the conv blocks, then ``dense1..`` for the dense blocks with the last
    (the trunk) always ``dense``, so conv64, conv11 and mlp runs share the trunk's column names."""
    num_dense = len(model.blocks) - model.num_conv
    dense = [f"dense{i + 1}" for i in range(num_dense - 1)] + ["dense"]
    return [f"conv{i + 1}" for i in range(model.num_conv)] + dense


def probe_columns(layers: list[str]) -> list[str]:
    """The statistics :func:`probe_network` returns for a network with these layer names."""
    return [
        *(f"overall/{s}" for s in UNIT_STATS),
        *(f"{layer}/{s}" for layer in layers for s in UNIT_STATS + FEATURE_STATS + WEIGHT_STATS),
        *(f"{head}/{s}" for head in HEAD_NAMES for s in WEIGHT_STATS),
    ]


# --------------------------------------------------------------------------- one probe


@dataclass
class ProbeResult:
    """One probe of a network on a frame set."""

    stats: dict[str, float]
    """Flat ``layer/stat`` values (:func:`probe_columns`)."""
    spectrum: np.ndarray
    """Singular values of the ``(n, F)`` trunk feature matrix, descending."""
    unit_rates: np.ndarray
    """Per trunk unit: fraction of probe frames on which it is active."""
    logits: torch.Tensor
    """Policy head outputs ``(n, actions)`` on the probe frames: logits, or Gaussian means (for churn)."""
    values: torch.Tensor
    """Values ``(n,)`` on the probe frames (for churn)."""
    log_std: torch.Tensor | None = None
    """The Gaussian policy's log standard deviations (None for discrete actions)."""


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration, then the caller's mode again: spectral norm
    only advances its power iteration in training mode, so probing leaves the model untouched."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class _UnitAccumulator:
    """Per-unit sums over the chunks of a probe set, and the spatially pooled features."""

    def __init__(self) -> None:
        self.abs_sum: torch.Tensor | None = None
        self.active: torch.Tensor | None = None
        self.entries = 0
        self.pooled: list[torch.Tensor] = []

    def add(self, h: torch.Tensor) -> None:
        spatial = tuple(range(2, h.ndim))
        abs_sum = torch.linalg.vector_norm(h, ord=1, dim=(0, *spatial), dtype=torch.float64)
        active = unit_activity(h).sum(dim=0)
        self.abs_sum = abs_sum if self.abs_sum is None else self.abs_sum + abs_sum
        self.active = active if self.active is None else self.active + active
        self.entries += h.shape[0] * math.prod(h.shape[2:])
        self.pooled.append(h.mean(dim=spatial) if spatial else h)

    def scores(self) -> torch.Tensor:
        return dormant_scores_from_mean_abs(self.abs_sum / self.entries)

    def features(self) -> torch.Tensor:
        return torch.cat(self.pooled).to(torch.float64)


def _head_matrix(head: nn.Module, in_features: int) -> torch.Tensor:
    """The ``(out, in)`` matrix of an affine head, read off its outputs so that wrapped heads
    (the reference variant of plasticity injection sums several linear maps) count as the one map
    they apply. After the paper variant's injection the heads are the new, trainable ones."""
    eye = torch.eye(in_features, device=_device(head))
    return (head(eye) - head(torch.zeros_like(eye[:1]))).T


def weight_stats(model: nn.Module) -> dict[str, float]:
    """Frobenius norm and stable rank of the weights the forward pass applies, per layer.

    Call in eval mode: a spectrally normalised layer then reports its normalised weight
    without advancing the power iteration.
    """
    matrices = [block.layer.weight for block in model.blocks]
    matrices += [_head_matrix(head, model.feature_dim) for head in (model.policy, model.value)]
    out = {}
    for name, w in zip(layer_names(model) + list(HEAD_NAMES), matrices):
        out[f"{name}/weight_norm"] = float(torch.linalg.vector_norm(w.detach().double()))
        out[f"{name}/stable_rank"] = stable_rank(w)
    return out


def policy_log_std(model: nn.Module) -> torch.Tensor | None:
    """The network's state-independent log std (continuous actions), detached; else None."""
    log_std = getattr(model, "log_std", None)
    return None if log_std is None else log_std.detach().clone()


def policy_outputs(model: nn.Module, frames: np.ndarray, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Policy head outputs and values of ``model`` on ``frames``, computed in chunks."""
    logits, values = [], []
    with eval_mode(model):
        for obs in torch.from_numpy(frames).to(_device(model)).split(chunk):
            lg, v, _ = model(obs)
            logits.append(lg)
            values.append(v)
    return torch.cat(logits), torch.cat(values)


def probe_network(model: nn.Module, frames: np.ndarray, chunk: int = 256) -> ProbeResult:
    """All per-layer probe statistics of ``model`` on uint8 ``frames`` (see module docstring).

    Unit statistics are those of :mod:`~plasticity_lab.metrics.plasticity` on the whole set
    (conv units are channels; ``dormant_<tau>`` is ``dormant_fraction`` at ``tau``); rank
    measures use the ``(n, C)`` spatially averaged channel features of conv layers and the
    ``(n, F)`` features of dense layers; ``feature_norm`` is the mean L2 norm of a frame's feature vector
    and ``feature_var`` the mean over units of their (population) variance over frames.
    ``overall/*`` pools the units of all layers (each unit's dormancy score is relative to its
    own layer, as ReDo defines it).
    """
    n = len(frames)
    if n == 0:
        raise ValueError("probe_network: empty frame set")
    names = layer_names(model)
    accs = [_UnitAccumulator() for _ in names]
    logits, values = [], []
    with eval_mode(model):
        for obs in torch.from_numpy(frames).to(_device(model)).split(chunk):
            acts = model.activations(obs)
            for acc, h in zip(accs, acts):
                acc.add(h)
            lg, v = model.outputs(acts)
            logits.append(lg)
            values.append(v)
        stats = weight_stats(model)
    for name, acc in zip(names, accs):
        stats.update(_unit_stats(name, acc.active, acc.scores(), n))
        phi = acc.features()
        ranks = rank_measures(phi)
        for measure in ("effective_rank", "srank", "feature_rank"):
            stats[f"{name}/{measure}"] = ranks[measure]
        stats[f"{name}/feature_norm"] = float(torch.linalg.vector_norm(phi, dim=1).mean())
        stats[f"{name}/feature_var"] = float(phi.var(dim=0, unbiased=False).mean())
    all_active = torch.cat([acc.active for acc in accs])
    stats.update(_unit_stats("overall", all_active, torch.cat([acc.scores() for acc in accs]), n))
    dense = accs[-1]
    return ProbeResult(
        stats=stats,
        spectrum=ranks["singular_values"].cpu().numpy(),
        unit_rates=(dense.active.double() / n).cpu().numpy(),
        logits=torch.cat(logits),
        values=torch.cat(values),
        log_std=policy_log_std(model),
    )


def _unit_stats(name: str, active: torch.Tensor, scores: torch.Tensor, n: int) -> dict[str, float]:
    out = {
        f"{name}/dead_frac": dead_fraction_from_counts(active),
        f"{name}/activation_rate": activation_rate_from_counts(active, n),
    }
    for tau in DORMANT_TAUS:
        out[f"{name}/dormant_{tau:g}"] = dormant_fraction_from_scores(scores, tau)
    return out


def churn(
    prev_logits: torch.Tensor,
    prev_values: torch.Tensor,
    logits: torch.Tensor,
    values: torch.Tensor,
    prev_log_std: torch.Tensor | None = None,
    log_std: torch.Tensor | None = None,
) -> dict[str, float]:
    """Output change on the same frames between two probes.

    ``policy_churn``: mean total-variation distance between the two policies' action
    distributions, ``0.5 * sum_a |pi_now(a|x) - pi_prev(a|x)|`` for discrete actions (bounded in
    [0, 1] and symmetric, unlike KL); for Gaussian policies (``log_std`` given) the same distance,
    estimated by Monte Carlo with a fixed generator (no closed form exists). ``value_churn``: mean
    ``|V_now(x) - V_prev(x)|``.
    """
    device = logits.device
    prev_std = None if prev_log_std is None else prev_log_std.to(device, torch.float64)
    now_std = None if log_std is None else log_std.to(device, torch.float64)
    prev = make_distribution(prev_logits.to(device, torch.float64), prev_std)
    now = make_distribution(logits.double(), now_std)
    generator = torch.Generator(device=device).manual_seed(0)
    return {
        "policy_churn": float(now.total_variation(prev, generator).mean()),
        "value_churn": float((values.double() - prev_values.to(values.device, torch.float64)).abs().mean()),
    }
