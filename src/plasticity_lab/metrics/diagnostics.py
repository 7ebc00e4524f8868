"""Probe-set plasticity diagnostics (DESIGN.md section 5): what a run measures every few epochs.

A probe forwards a fixed set of real frames from the current task's training levels through the
network and reports, per layer (named by :func:`layer_names`: ``conv1``, ``conv2``, ... then the
dense layers, the last of which, the trunk the heads read, is always ``dense``), dead / dormant units, activation rates, feature ranks and weight
statistics, the churn of the policy and value since the previous probe, and now and then the
trainability probe of :mod:`plasticity_lab.metrics.trainability`.

Unit, rank and weight metrics are the definitions in :mod:`plasticity_lab.metrics.plasticity`.
Conv maps of 2560 frames take hundreds of MB, so the probe set goes through the network in chunks
and only per-unit sums (of ``|h|`` and of active frames) and the spatially averaged features are
kept; the ``*_from_*`` helpers of that module turn the sums into the full-set values (exactly for
the counts, up to float64 rounding for the ``|h|`` sums).

Nothing here draws from torch's global RNG or changes the network (it is probed in eval mode, so
spectral norm's power iteration does not advance), so diagnostics never alter a training run.

Run-directory files:

* ``diagnostics.csv``: one row per probe (columns :func:`diagnostic_columns`).
* ``spectra.npz``: the trunk features' singular values of every probe, one array per probe named
  ``epoch_<EEEEEE>`` (zero-padded epoch); rewritten atomically, so a resume that drops the
  probes at or after its start epoch leaves no duplicates.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from plasticity_lab.agents.distributions import make_distribution
from plasticity_lab.config import EnvironmentConfig
from plasticity_lab.envs import make_env
from plasticity_lab.envs.shifts import ShiftState
from plasticity_lab.experiment.logger import MetricsCSV
from plasticity_lab.metrics.plasticity import (
    activation_rate_from_counts,
    dead_fraction_from_counts,
    dormant_fraction_from_scores,
    dormant_scores_from_mean_abs,
    effective_rank,
    feature_rank,
    singular_values,
    srank,
    stable_rank,
    unit_activity,
)
from plasticity_lab.metrics.trainability import TrainabilityProbe

HEAD_NAMES = ("policy", "value")
DORMANT_TAUS = (0.0, 0.025, 0.1)
UNIT_STATS = ("dead_frac", "activation_rate") + tuple(f"dormant_{tau:g}" for tau in DORMANT_TAUS)
FEATURE_STATS = ("effective_rank", "srank", "feature_rank", "feature_norm", "feature_var")
WEIGHT_STATS = ("weight_norm", "stable_rank")
RUN_COLUMNS = [
    "epoch", "task", "probe_seconds", "policy_churn", "value_churn",
    "trainability_loss", "trainability_fresh_loss", "trainability_ratio",
]  # fmt: skip
MIN_PROBES = 30


def layer_names(model: nn.Module) -> list[str]:
    """``conv1..convC`` for the conv blocks, then ``dense1..`` for the dense blocks with the last
    (the trunk) always ``dense``, so conv64, conv11 and mlp runs share the trunk's column names."""
    num_dense = len(model.blocks) - model.num_conv
    dense = [f"dense{i + 1}" for i in range(num_dense - 1)] + ["dense"]
    return [f"conv{i + 1}" for i in range(model.num_conv)] + dense


def diagnostic_columns(layers: list[str]) -> list[str]:
    """The columns of ``diagnostics.csv`` for a network with these layer names."""
    return [
        *RUN_COLUMNS,
        *(f"overall/{s}" for s in UNIT_STATS),
        *(f"{layer}/{s}" for layer in layers for s in UNIT_STATS + FEATURE_STATS + WEIGHT_STATS),
        *(f"{head}/{s}" for head in HEAD_NAMES for s in WEIGHT_STATS),
    ]


def default_probe_interval(num_epochs: int) -> int:
    """Epochs between probes so that a run has at least :data:`MIN_PROBES` of them."""
    return max(1, num_epochs // MIN_PROBES)


# --------------------------------------------------------------------------- probe frames


def collect_probe_frames(
    env_cfg: EnvironmentConfig,
    shift_state: ShiftState,
    n: int = 2560,
    seed: int = 0,
    policy: Callable[[np.ndarray], np.ndarray] | None = None,
    num_envs: int = 64,
    warmup: int = 8,
    stride: int = 4,
) -> np.ndarray:
    """``n`` real observations (uint8 frames ``(n, H, W, C)`` or float vectors ``(n, D)``) from
    the training levels of ``env_cfg``'s task under ``shift_state``.

    ``min(num_envs, n)`` environments take random actions (uniform discrete actions, or the
    untrained Gaussian policy's N(0, I) draws for continuous ones) or ``policy(obs)``'s and, after
    ``warmup`` steps, every ``stride``-th step's frames are kept, so the set spreads over many
    levels and over the course of episodes rather than over their first moments. The same seed
    gives the same frames; only the shift differs between tasks, so a tile-permuted task sees
    exactly the permuted frames of the unshifted one.
    """
    if n <= 0 or warmup < 0 or stride <= 0:
        raise ValueError(f"collect_probe_frames: need n > 0, warmup >= 0, stride > 0 (got {n}, {warmup}, {stride})")
    envs = min(num_envs, n)
    env_seed, action_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    rng = np.random.default_rng(action_seed)
    env = make_env(env_cfg, envs, seed=env_seed, train=True, shift=shift_state)
    continuous = bool(getattr(env, "continuous", False))
    try:
        obs = env.observe_current()
        frames = np.empty((math.ceil(n / envs) * envs, *env.obs_shape), dtype=obs.dtype)
        stored, t = 0, 0
        while stored < len(frames):
            if t >= warmup and (t - warmup) % stride == 0:
                frames[stored : stored + envs] = obs
                stored += envs
            if policy is not None:
                actions = np.asarray(policy(obs))
            elif continuous:
                actions = rng.standard_normal((envs, env.num_actions))
            else:
                actions = rng.integers(0, env.num_actions, envs)
            obs = env.step(actions).obs
            t += 1
    finally:
        env.close()
    return frames[:n]


# --------------------------------------------------------------------------- one probe


@dataclass
class ProbeResult:
    """One probe of a network on a frame set."""

    stats: dict[str, float]
    """Flat ``layer/stat`` values (columns of :func:`diagnostic_columns`)."""
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
    (plasticity injection sums several linear maps) count as the one map they apply."""
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
            logits.append(model.policy(acts[-1]))
            values.append(model.value(acts[-1]).squeeze(-1))
        stats = weight_stats(model)
    for name, acc in zip(names, accs):
        stats.update(_unit_stats(name, acc.active, acc.scores(), n))
        phi = acc.features()
        stats[f"{name}/effective_rank"] = effective_rank(phi)
        stats[f"{name}/srank"] = srank(phi)
        stats[f"{name}/feature_rank"] = feature_rank(phi)
        stats[f"{name}/feature_norm"] = float(torch.linalg.vector_norm(phi, dim=1).mean())
        stats[f"{name}/feature_var"] = float(phi.var(dim=0, unbiased=False).mean())
    all_active = torch.cat([acc.active for acc in accs])
    stats.update(_unit_stats("overall", all_active, torch.cat([acc.scores() for acc in accs]), n))
    dense = accs[-1]
    return ProbeResult(
        stats=stats,
        spectrum=singular_values(dense.features()).cpu().numpy(),
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


# --------------------------------------------------------------------------- a run's probes


@dataclass
class _Previous:
    """The last probe's outputs and which task's frames they were computed on."""

    task_index: int
    shift: ShiftState
    logits: torch.Tensor
    values: torch.Tensor
    log_std: torch.Tensor | None = None


class PlasticityProbe:
    """A run's probes: when they are due, their frame sets, churn state and trainability.

    Probes follow epoch ``0`` and every epoch ``e`` with ``(e + 1) % interval == 0`` or that is
    the last one before a shift or of the run, so every task's final network is measured.
    Trainability runs at epoch 0 (a near-initial reference), at the probes with
    ``(e + 1) // interval % trainability_every == 0`` and at the last epoch of every task.

    Each task's frame set is collected once (random actions, seed derived from the run seed and
    the task index), so within a task metrics change only because the network does, and the set
    can be rebuilt exactly after a resume. Churn compares the current network with the previous
    probe's outputs on the previous probe's frames (across a shift: the old task's frames).
    """

    def __init__(
        self,
        env_cfg: EnvironmentConfig,
        seed: int,
        num_epochs: int,
        shift_points: list[int] | tuple[int, ...] = (),
        interval: int | None = None,
        probe_size: int = 2560,
        trainability_every: int = 5,
        trainability_steps: int = 200,
        chunk: int = 256,
    ) -> None:
        if probe_size <= 0 or trainability_every < 0 or chunk <= 0:
            raise ValueError("probe_size and chunk must be positive, trainability_every >= 0")
        self.env_cfg, self.seed, self.chunk, self.probe_size = env_cfg, seed, chunk, probe_size
        self.interval = interval or default_probe_interval(num_epochs)
        self.task_ends = {point - 1 for point in shift_points} | {num_epochs - 1}
        self.trainability_every = trainability_every
        self.trainability = TrainabilityProbe(trainability_steps, seed=seed) if trainability_every else None
        self._frames: dict[int, np.ndarray] = {}
        self._previous: _Previous | None = None

    def due(self, epoch: int) -> bool:
        """Probe after this epoch's update?"""
        return epoch == 0 or (epoch + 1) % self.interval == 0 or epoch in self.task_ends

    def trainability_due(self, epoch: int) -> bool:
        if self.trainability is None or not self.due(epoch):
            return False
        periodic = ((epoch + 1) // self.interval) % self.trainability_every == 0
        return epoch == 0 or epoch in self.task_ends or periodic

    def frames(self, task_index: int, shift_state: ShiftState) -> np.ndarray:
        """The probe set of task ``task_index`` (cached; :meth:`measure` keeps only the current one)."""
        if task_index not in self._frames:
            frame_seed = int(np.random.SeedSequence([self.seed, task_index]).generate_state(1)[0])
            self._frames[task_index] = collect_probe_frames(self.env_cfg, shift_state, self.probe_size, frame_seed)
        return self._frames[task_index]

    def measure(self, model: nn.Module, task_index: int, shift_state: ShiftState, epoch: int) -> ProbeResult:
        """Probe ``model`` now; ``stats`` gains churn (from the second probe on), trainability
        (when due) and ``probe_seconds``."""
        t0 = time.monotonic()
        frames = self.frames(task_index, shift_state)
        result = probe_network(model, frames, self.chunk)
        prev = self._previous
        if prev is not None:
            if prev.task_index == task_index:
                now = result.logits, result.values
            else:
                now = policy_outputs(model, self.frames(prev.task_index, prev.shift), self.chunk)
            result.stats.update(churn(prev.logits, prev.values, *now, prev.log_std, result.log_std))
        self._previous = _Previous(task_index, shift_state, result.logits, result.values, result.log_std)
        self._frames = {task_index: frames}
        if self.trainability_due(epoch):
            result.stats.update(self.trainability.measure(model, frames, key=task_index))
        result.stats["probe_seconds"] = time.monotonic() - t0
        return result

    def state_dict(self) -> dict[str, Any]:
        """Churn state for the checkpoint (outputs only, ~0.1 MB: frames are rebuilt from seeds)."""
        prev = self._previous
        if prev is None:
            return {"previous": None}
        return {
            "previous": {
                "task_index": prev.task_index, "shift": prev.shift.to_dict(),
                "logits": prev.logits.cpu(), "values": prev.values.cpu(),
                "log_std": None if prev.log_std is None else prev.log_std.cpu(),
            }
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict` (``None``, e.g. from an older checkpoint: no churn until
        the next probe has a predecessor)."""
        prev = None if state is None else state["previous"]
        self._previous = None if prev is None else _Previous(
            prev["task_index"], ShiftState.from_dict(prev["shift"]), prev["logits"], prev["values"], prev.get("log_std")
        )


# --------------------------------------------------------------------------- run-directory files


class DiagnosticsLogger:
    """``diagnostics.csv`` and ``spectra.npz`` of a run, with the resume semantics of metrics.csv:
    probes at or after ``start_epoch`` (recomputed after a resume) are dropped from both.
    ``layers`` are the network's :func:`layer_names`."""

    def __init__(self, run_dir: Path, start_epoch: int, layers: list[str]) -> None:
        run_dir = Path(run_dir)
        self.columns = diagnostic_columns(layers)
        self.csv = MetricsCSV(run_dir / "diagnostics.csv", self.columns, start_epoch)
        self.spectra_path = run_dir / "spectra.npz"
        self.spectra: dict[str, np.ndarray] = {}
        if self.spectra_path.exists():
            with np.load(self.spectra_path) as saved:
                self.spectra = {k: saved[k] for k in saved.files if int(k.split("_")[1]) < start_epoch}
            self._save_spectra()

    def log(self, epoch: int, task: int, stats: dict[str, float], spectrum: np.ndarray) -> dict[str, float]:
        """Append one probe; returns its finite scalars (``layer/stat`` names) for TensorBoard."""
        unknown = set(stats) - set(self.columns)
        if unknown:
            raise KeyError(f"diagnostics: no column for {sorted(unknown)}")
        self.csv.write({"epoch": epoch, "task": task, **stats})
        self.spectra[f"epoch_{epoch:06d}"] = np.asarray(spectrum)
        self._save_spectra()
        return {k: float(v) for k, v in stats.items() if v is not None and math.isfinite(v)}

    def _save_spectra(self) -> None:
        tmp = self.spectra_path.with_name(f".{self.spectra_path.name}.tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, **self.spectra)
        os.replace(tmp, self.spectra_path)

    def close(self) -> None:
        self.csv.close()
