"""A run's plasticity probes: when they happen, on which frames, at what cost, and their files.

The statistics themselves are pure functions in :mod:`plasticity_lab.metrics.diagnostics` (per
layer) and :mod:`plasticity_lab.metrics.trainability`; this module collects the probe frames from
the environment, schedules the probes within a compute budget, keeps the churn state across
checkpoints and writes the results.

**Schedule.** Probes follow epoch ``0``, every ``interval``-th epoch and the last epoch of every
task; trainability fits run at some of them (:meth:`DiagnosticsPlan.full`). With a ``budget``
(``diagnostics.budget``, default 10%), :func:`plan_diagnostics` keeps only what fits into that
fraction of the run's training time as modelled from the config
(:mod:`plasticity_lab.experiment.cost_model`: network shape and per-environment-family costs),
dropping the least important probes and fits first; the run prints the plan (or one line saying
that nothing fits) and, at the end, the measured cost. The plan is a pure function of the config,
never of wall-clock time, so a resumed run probes at exactly the epochs the uninterrupted run
would and ``diagnostics.csv`` stays reproducible.

Run-directory files:

* ``diagnostics.csv``: one row per probe (columns :func:`diagnostic_columns`).
* ``spectra.npz``: the trunk features' singular values of every probe, one array per probe named
  ``epoch_<EEEEEE>`` (zero-padded epoch); rewritten atomically, so a resume that drops the
  probes at or after its start epoch leaves no duplicates.
"""

from __future__ import annotations

import bisect
import csv
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from plasticity_lab.config import EnvironmentConfig, RunConfig
from plasticity_lab.envs import make_population_env
from plasticity_lab.envs.shifts import ShiftState
from plasticity_lab.experiment.cost_model import ItemCosts, item_costs, task_matrix_evaluations
from plasticity_lab.experiment.logger import MetricsCSV
from plasticity_lab.metrics.diagnostics import ProbeResult, churn, policy_outputs, probe_columns, probe_network
from plasticity_lab.metrics.trainability import TrainabilityProbe

RUN_COLUMNS = [
    "epoch", "task", "probe_seconds", "policy_churn", "value_churn",
    "trainability_loss", "trainability_fresh_loss", "trainability_ratio",
]  # fmt: skip
MIN_PROBES = 30
PROBE_ENVS, PROBE_WARMUP, PROBE_STRIDE = 64, 8, 4
"""How :func:`collect_probe_frames` collects a run's probe sets (environments, first kept step,
steps between kept ones)."""


def diagnostic_columns(layers: list[str]) -> list[str]:
    """The columns of ``diagnostics.csv`` for a network with these layer names."""
    return [*RUN_COLUMNS, *probe_columns(layers)]


def default_probe_interval(num_epochs: int) -> int:
    """Epochs between probes so that a run has at least :data:`MIN_PROBES` of them."""
    return max(1, num_epochs // MIN_PROBES)


# --------------------------------------------------------------------------- probe frames


def collect_probe_frames(
    env_cfg: EnvironmentConfig,
    shift_state: ShiftState,
    n: int = 2560,
    seed: int = 0,
    num_envs: int = PROBE_ENVS,
    warmup: int = PROBE_WARMUP,
    stride: int = PROBE_STRIDE,
) -> np.ndarray:
    """``n`` real observations (uint8 frames ``(n, H, W, C)`` or float vectors ``(n, D)``) from
    the training levels of ``env_cfg``'s task under ``shift_state``: :func:`collect_members_probe_frames`
    for one member."""
    return collect_members_probe_frames(env_cfg, [shift_state], [seed], n, num_envs, warmup, stride)[0]


def collect_members_probe_frames(
    env_cfg: EnvironmentConfig,
    shift_states: Sequence[ShiftState],
    seeds: Sequence[int],
    n: int = 2560,
    num_envs: int = PROBE_ENVS,
    warmup: int = PROBE_WARMUP,
    stride: int = PROBE_STRIDE,
) -> list[np.ndarray]:
    """The probe sets of several members at once (member k's from ``seeds[k]`` under
    ``shift_states[k]``), stepped as one population environment: a population probes all its
    members at the same epochs, and one array step of every member's environments costs little
    more than one member's (the gridworld); each member's set is exactly the one it collects alone.

    ``min(num_envs, n)`` environments per member take random actions (uniform discrete actions,
    or the untrained Gaussian policy's N(0, I) draws for continuous ones) from the member's own
    generator and, after ``warmup`` steps, every ``stride``-th step's frames are kept, so the set
    spreads over many levels and over the course of episodes rather than over their first moments.
    The same seed gives the same frames; only the shift differs between tasks, so a tile-permuted
    task sees exactly the permuted frames of the unshifted one.
    """
    if n <= 0 or warmup < 0 or stride <= 0:
        raise ValueError(f"collect_probe_frames: need n > 0, warmup >= 0, stride > 0 (got {n}, {warmup}, {stride})")
    envs = min(num_envs, n)
    states = [np.random.SeedSequence(seed).generate_state(2) for seed in seeds]
    rngs = [np.random.default_rng(int(action_seed)) for _, action_seed in states]
    env = make_population_env(env_cfg, envs, [int(env_seed) for env_seed, _ in states], train=True, shifts=shift_states)
    continuous = bool(getattr(env.member(0), "continuous", False))
    try:
        obs = env.observe_current()
        frames = np.empty((len(seeds), math.ceil(n / envs) * envs, *env.obs_shape), dtype=obs.dtype)
        stored, t = 0, 0
        while stored < frames.shape[1]:
            if t >= warmup and (t - warmup) % stride == 0:
                frames[:, stored : stored + envs] = obs
                stored += envs
            if continuous:
                actions = np.stack([rng.standard_normal((envs, env.num_actions)) for rng in rngs])
            else:
                actions = np.stack([rng.integers(0, env.num_actions, envs) for rng in rngs])
            obs = env.step(actions).obs
            t += 1
    finally:
        env.close()
    return [member_frames[:n] for member_frames in frames]


# --------------------------------------------------------------------------- schedule and budget


@dataclass(frozen=True)
class DiagnosticsPlan:
    """The epochs a run probes at and runs trainability fits at, and what the budget left out."""

    probes: tuple[int, ...]
    fits: tuple[int, ...]
    skipped_probes: tuple[int, ...]
    skipped_fits: tuple[int, ...]
    cost: float | None
    """Estimated diagnostics time as a fraction of the training time (None: no cost model given)."""
    budget: float | None
    cheapest: float | None = None
    """Estimated fraction of the cheapest single probe (a task's end, with its frame collection)."""
    matrix: float = 0.0
    """Estimated fraction of the task-return matrix (``evaluation.task_matrix``; included in
    ``cost``): asked for explicitly, so it is always kept and the probes get what it leaves."""

    def describe(self) -> str:
        """One log line: what runs, what the budget skipped, the estimated cost."""
        probes, fits = len(self.probes), len(self.fits)
        matrix = f", the task matrix an estimated {100 * self.matrix:.1f}%" if self.matrix else ""
        if self.budget is None:
            cost = "" if self.cost is None else f"; estimated {100 * self.cost:.1f}% of the training time{matrix}"
            return f"diagnostics: {probes} probes, {fits} trainability fits (no budget{cost})"
        if not probes:
            return (f"diagnostics: none fit the budget of {100 * self.budget:g}% of the training time (one probe "
                    f"would cost an estimated {100 * self.cheapest:.1f}%{matrix}); raise diagnostics.budget, or "
                    f"set it to null, to probe anyway")
        text = (f"diagnostics: {probes} of {probes + len(self.skipped_probes)} probes and {fits} of "
                f"{fits + len(self.skipped_fits)} trainability fits fit the budget of {100 * self.budget:g}% "
                f"of the training time (estimated {100 * self.cost:.1f}%{matrix})")
        for what, epochs in (("probes", self.skipped_probes), ("fits", self.skipped_fits)):
            if epochs:
                text += f"; skipped {what} after epochs {_epoch_list(epochs)}"
        return text


def _epoch_list(epochs: tuple[int, ...], show: int = 8) -> str:
    head = ", ".join(str(e) for e in epochs[:show])
    return head if len(epochs) <= show else f"{head}, ... ({len(epochs)} in all)"


def _evenly_spaced(items: list[int], k: int) -> list[int]:
    if k <= 0:
        return []
    if k >= len(items):
        return list(items)
    return [items[i] for i in sorted({round(x) for x in np.linspace(0, len(items) - 1, k)})]


def plan_diagnostics(
    num_epochs: int,
    shift_points: list[int] | tuple[int, ...],
    interval: int,
    trainability_every: int,
    costs: ItemCosts | None = None,
    budget: float | None = None,
    matrix_evaluations: int = 0,
) -> DiagnosticsPlan:
    """The probe and fit epochs of a run (see the module docstring).

    Without a budget: a probe after epoch 0, every ``interval``-th epoch (``(e + 1) % interval
    == 0``) and the last epoch of every task; a fit at epoch 0, at the last epoch of every task
    and at the probes with ``(e + 1) // interval % trainability_every == 0`` (none if
    ``trainability_every`` is 0). With a ``budget`` (a fraction of ``num_epochs x costs.epoch``)
    the kept items are chosen greedily in this order, each only if it still fits: probes at task
    ends (in order), the epoch-0 probe, as many of the periodic probes as fit, evenly spaced;
    then fits at task ends, the epoch-0 fit and evenly spaced periodic fits. A task's first probe
    also pays for collecting its frames (and, after a shift, the churn forward on the previous
    task's frames); its first fit also pays ``costs.reference``. The task matrix
    (``matrix_evaluations`` x ``costs.matrix_evaluation``) is spent first: it was asked for, so
    it always runs.
    """
    if budget is not None and costs is None:
        raise ValueError("plan_diagnostics: a budget needs the item costs")
    task_ends = sorted({point - 1 for point in shift_points} | {num_epochs - 1})
    ends = set(task_ends)
    probes = [e for e in range(num_epochs) if e == 0 or (e + 1) % interval == 0 or e in ends]
    fits = [
        e for e in probes
        if trainability_every and (e == 0 or e in ends or ((e + 1) // interval) % trainability_every == 0)
    ]  # fmt: skip
    if costs is None:
        return DiagnosticsPlan(tuple(probes), tuple(fits), (), (), None, None)
    task_of = [bisect.bisect_right(sorted(shift_points), e) for e in range(num_epochs)]

    def probe_cost(chosen: set[int]) -> float:
        tasks = {task_of[e] for e in chosen}
        return len(chosen) * costs.probe + len(tasks) * costs.collect + sum(1 for t in tasks if t > 0) * costs.churn

    def fits_cost(chosen: set[int]) -> float:
        return len(chosen) * costs.fit + len({task_of[e] for e in chosen}) * costs.reference

    training = num_epochs * costs.epoch
    cheapest = min(probe_cost({e}) for e in task_ends) / training
    spent_on_matrix = matrix_evaluations * costs.matrix_evaluation
    matrix = spent_on_matrix / training
    if budget is None:
        cost = matrix + (probe_cost(set(probes)) + fits_cost(set(fits))) / training
        return DiagnosticsPlan(tuple(probes), tuple(fits), (), (), cost, None, cheapest, matrix)

    limit = budget * training

    def choose(candidates: list[int], periodic: list[int], cost_of: Callable[[set[int]], float], spent: float) -> set[int]:
        chosen: set[int] = set()
        for e in candidates:
            if spent + cost_of(chosen | {e}) <= limit:
                chosen.add(e)
        # the most evenly spaced periodic ones that fit (the cost grows with their number)
        low, high = 0, len(periodic)
        while low < high:
            mid = (low + high + 1) // 2
            if spent + cost_of(chosen | set(_evenly_spaced(periodic, mid))) <= limit:
                low = mid
            else:
                high = mid - 1
        return chosen | set(_evenly_spaced(periodic, low))

    first = task_ends + [0]
    kept_probes = choose(first, [e for e in probes if e not in first], probe_cost, spent_on_matrix)
    spent = spent_on_matrix + probe_cost(kept_probes)
    fit_first = [e for e in first if e in fits and e in kept_probes]
    fit_periodic = [e for e in fits if e not in fit_first and e in kept_probes]
    kept_fits = choose(fit_first, fit_periodic, fits_cost, spent)
    cost = (spent + fits_cost(kept_fits)) / training
    return DiagnosticsPlan(
        tuple(sorted(kept_probes)), tuple(sorted(kept_fits)),
        tuple(e for e in probes if e not in kept_probes), tuple(e for e in fits if e not in kept_fits),
        cost, budget, cheapest, matrix,
    )


def run_item_costs(cfg: RunConfig) -> ItemCosts:
    """The modelled seconds of ``cfg``'s epoch and diagnostics items, with this module's probe
    frame collection and trainability fit settings."""
    return item_costs(cfg, PROBE_ENVS, PROBE_WARMUP, PROBE_STRIDE, TrainabilityProbe.BATCH_SIZE)


def task_matrix_estimate(cfg: RunConfig) -> str:
    """The log line of a run whose task matrix is on without probes: its modelled cost."""
    costs, evaluations = run_item_costs(cfg), task_matrix_evaluations(cfg)
    share = evaluations * costs.matrix_evaluation / (cfg.ppo_trainer.num_epochs * costs.epoch)
    return f"task matrix: {evaluations} evaluations, estimated {100 * share:.1f}% of the training time"


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

    The epochs come from :func:`plan_diagnostics` (``plan``; with ``budget`` None the full
    schedule), so every task's final network is measured unless the budget cannot afford it.

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
        budget: float | None = None,
        costs: ItemCosts | None = None,
        matrix_evaluations: int = 0,
    ) -> None:
        if probe_size <= 0 or trainability_every < 0 or chunk <= 0:
            raise ValueError("probe_size and chunk must be positive, trainability_every >= 0")
        self.env_cfg, self.seed, self.chunk, self.probe_size = env_cfg, seed, chunk, probe_size
        self.interval = interval or default_probe_interval(num_epochs)
        self.trainability = TrainabilityProbe(trainability_steps, seed=seed) if trainability_every else None
        self.plan = plan_diagnostics(
            num_epochs, shift_points, self.interval, trainability_every, costs, budget, matrix_evaluations
        )
        self._probe_epochs, self._fit_epochs = set(self.plan.probes), set(self.plan.fits)
        self._frames: dict[int, np.ndarray] = {}
        self._collect_seconds = 0.0  # this probe's share of a population's frame collection
        self._previous: _Previous | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig, seed: int) -> PlasticityProbe:
        """The probe of a run of ``cfg`` (section ``diagnostics``), budgeted against its training."""
        d, p = cfg.diagnostics, cfg.ppo_trainer
        return cls(
            cfg.environment, seed=seed, num_epochs=p.num_epochs, shift_points=p.shift_points,
            interval=d.probe_interval, probe_size=d.probe_size, trainability_every=d.trainability_every,
            trainability_steps=d.trainability_steps, budget=d.budget, costs=run_item_costs(cfg),
            matrix_evaluations=task_matrix_evaluations(cfg),
        )

    def due(self, epoch: int) -> bool:
        """Probe after this epoch's update?"""
        return epoch in self._probe_epochs

    def trainability_due(self, epoch: int) -> bool:
        return epoch in self._fit_epochs

    def frames(self, task_index: int, shift_state: ShiftState) -> np.ndarray:
        """The probe set of task ``task_index`` (cached; :meth:`measure` keeps only the current one)."""
        if task_index not in self._frames:
            self._frames[task_index] = collect_probe_frames(
                self.env_cfg, shift_state, self.probe_size, self.frame_seed(task_index))
        return self._frames[task_index]

    def frame_seed(self, task_index: int) -> int:
        """The seed of task ``task_index``'s probe set: the run seed and the task, nothing else."""
        return int(np.random.SeedSequence([self.seed, task_index]).generate_state(1)[0])

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
        result.stats["probe_seconds"] = time.monotonic() - t0 + self._collect_seconds
        self._collect_seconds = 0.0
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


def prefetch_probe_frames(due: Sequence[tuple[PlasticityProbe, int, ShiftState]]) -> None:
    """Collect the probe sets that ``due`` (probe, task index, shift state) lack, every member's
    in one population environment (:func:`collect_members_probe_frames`), into each probe's
    cache; :meth:`PlasticityProbe.measure` then finds them. The sets are exactly those each
    probe collects alone, so a member's diagnostics do not depend on its population."""
    missing = [(probe, task, shift) for probe, task, shift in due if task not in probe._frames]
    while missing:
        first = missing[0][0]
        same = [first.env_cfg == probe.env_cfg and first.probe_size == probe.probe_size for probe, _, _ in missing]
        group = [m for m, s in zip(missing, same) if s]
        t0 = time.monotonic()
        sets = collect_members_probe_frames(
            first.env_cfg, [shift for _, _, shift in group], [probe.frame_seed(task) for probe, task, _ in group],
            first.probe_size)
        share = (time.monotonic() - t0) / len(group)
        for (probe, task, _), frames in zip(group, sets):
            probe._frames[task] = frames
            probe._collect_seconds += share  # counted in the next probe's probe_seconds
        missing = [m for m, s in zip(missing, same) if not s]


# --------------------------------------------------------------------------- run-directory files


class DiagnosticsLogger:
    """``diagnostics.csv`` and ``spectra.npz`` of a run, with the resume semantics of metrics.csv:
    probes at or after ``start_epoch`` (recomputed after a resume) are dropped from both.
    ``layers`` are the network's :func:`layer_names`."""

    def __init__(self, run_dir: Path, start_epoch: int, layers: list[str]) -> None:
        run_dir = Path(run_dir)
        self.columns = diagnostic_columns(layers)
        self.csv = MetricsCSV(run_dir / "diagnostics.csv", self.columns, start_epoch)
        with open(run_dir / "diagnostics.csv", newline="") as handle:  # the rows kept from before a resume
            kept = [float(r["probe_seconds"]) for r in csv.DictReader(handle) if r.get("probe_seconds")]
        self.probes, self.seconds = len(kept), sum(kept)
        """Probes logged and their total ``probe_seconds``, over the whole run (resumes included)."""
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
        self.probes += 1
        self.seconds += stats.get("probe_seconds") or 0.0
        self.spectra[f"epoch_{epoch:06d}"] = np.asarray(spectrum)
        self._save_spectra()
        return {k: float(v) for k, v in stats.items() if v is not None and math.isfinite(v)}

    def _save_spectra(self) -> None:
        tmp = self.spectra_path.with_name(f".{self.spectra_path.name}.tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, **self.spectra)
        os.replace(tmp, self.spectra_path)

    def cost_line(self, wall_time: float) -> str:
        """The measured cost for the run's log: probe time against the rest of the run's time
        (evaluations and checkpoints included, so below the plan's estimate against training)."""
        if not self.probes:
            return "diagnostics: no probes ran"
        training = wall_time - self.seconds
        share = f" = {100 * self.seconds / training:.1f}% on top of {training:.0f} s of training" if training > 0 else ""
        return f"diagnostics: {self.probes} probes took {self.seconds:.1f} s{share}"

    def close(self) -> None:
        self.csv.close()
