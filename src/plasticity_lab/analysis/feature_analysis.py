"""`plab analyze RESULTS_DIR`: probe-set diagnostics of a study's saved networks.

Every run ``<condition>/seed_<s>`` is analysed at the end of each task it finished
(``checkpoints/task_<k>.pt``) and, for a run still in progress, at its latest checkpoint. Each
network sees real frames of its own task (its shift state applied), collected with a fixed seed,
so networks of the same task and shift see exactly the same frames. Written to
``RESULTS_DIR/feature_analysis/``:

* ``summary.csv``: one row per run and task (trunk dead units, mean activation rate, effective
  rank and srank; definitions in :mod:`plasticity_lab.metrics.plasticity`).
* ``singular_value_spectrum_real.png``: normalised singular values ``s_i / s_1`` of the trunk
  features, mean over seeds, one line per condition and one panel per task.
* ``activation_distribution.png``: distribution over trunk units of the fraction of probe frames
  on which a unit is active, pooled over seeds, per condition and task.
"""

from __future__ import annotations

import csv
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from plasticity_lab.analysis.report import output_dir
from plasticity_lab.config import EnvironmentConfig
from plasticity_lab.envs.shifts import ShiftState
from plasticity_lab.experiment.checkpoint import load_checkpoint
from plasticity_lab.experiment.loading import load_agent, load_run_config
from plasticity_lab.experiment.probes import collect_probe_frames
from plasticity_lab.experiment.study import is_reference_study
from plasticity_lab.metrics.diagnostics import ProbeResult, probe_network

FRAME_SEED = 0
SUMMARY_COLUMNS = [
    "condition", "seed", "task", "checkpoint", "dead_neurons_pct", "mean_activation_rate_pct", "effective_rank", "srank",
]  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    """One saved network of a run: the checkpoint's name and the task it was trained on."""

    condition: str
    seed: int
    run_dir: Path
    task: int
    checkpoint: str
    shift: ShiftState


def find_runs(results_dir: Path) -> list[tuple[str, int, Path]]:
    """(condition, seed, run_dir) of every run with a checkpoint, in condition and seed order."""
    runs = []
    for ckpt_dir in results_dir.glob("*/seed_*/checkpoints"):
        run_dir = ckpt_dir.parent
        seed = run_dir.name.removeprefix("seed_")
        if seed.isdigit() and any(ckpt_dir.glob("*.pt")):
            runs.append((run_dir.parent.name, int(seed), run_dir))
    return sorted(runs, key=lambda r: (r[0], r[1]))


def snapshots(condition: str, seed: int, run_dir: Path) -> list[Snapshot]:
    """Each finished task's checkpoint, plus ``latest`` for a task still in progress.

    A task checkpoint without ``shift_state`` takes the latest checkpoint's when that is the
    same task; otherwise task 0 is unshifted by definition and later tasks fall back to the
    unshifted frames, with a warning.
    """
    ckpt_dir = run_dir / "checkpoints"
    latest_path = ckpt_dir / "latest.pt"
    latest = load_checkpoint(latest_path, None) if latest_path.exists() else None
    found: dict[int, tuple[str, dict | None]] = {}
    for path in ckpt_dir.glob("task_*.pt"):
        state = load_checkpoint(path, None)
        task = int(state["task_index"])
        shift = state.get("shift_state")
        if shift is None and latest is not None and latest["task_index"] == task:
            shift = latest["shift_state"]
        found[task] = (path.stem, shift)
    if latest is not None and latest["task_index"] not in found:
        found[int(latest["task_index"])] = ("latest", latest["shift_state"])
    out = []
    for task, (name, shift) in sorted(found.items()):
        if shift is None and task > 0:
            print(f"warning: {ckpt_dir / name}.pt has no shift_state: using unshifted frames", file=sys.stderr)
        state = ShiftState() if shift is None else ShiftState.from_dict(shift)
        out.append(Snapshot(condition, seed, run_dir, task, name, state))
    return out


def analyze(results_dir: str | Path, frames: int = 2560, device: str = "cpu", out: str | Path | None = None) -> Path:
    """Probe every saved network of the study in ``results_dir``; returns the output folder:
    ``out``, else ``<study>/feature_analysis`` (``reports/<name>/feature_analysis`` for a committed
    reference study, which no command writes into)."""
    results_dir = Path(results_dir)
    runs = find_runs(results_dir)
    if not runs:
        raise ValueError(f"{results_dir}: no run directories <condition>/seed_<s>/ with checkpoints")
    if out is not None and any(is_reference_study(p) for p in (Path(out).resolve(), *Path(out).resolve().parents)):
        raise ValueError(f"--out {out}: inside a committed reference study (REFERENCE.md), which is read-only")
    out_dir = Path(out) if out is not None else output_dir(results_dir, None, in_place=False) / "feature_analysis"
    out_dir.mkdir(parents=True, exist_ok=True)

    # A few frame sets stay cached (keyed by JSON, as configs and shift states are unhashable):
    # every run revisits the unshifted first task.
    @functools.lru_cache(maxsize=4)
    def frames_for(env_json: str, shift_json: str) -> np.ndarray:
        env_cfg = EnvironmentConfig.model_validate_json(env_json)
        return collect_probe_frames(env_cfg, ShiftState.from_dict(json.loads(shift_json)), frames, seed=FRAME_SEED)

    probed: list[tuple[Snapshot, ProbeResult]] = []
    for condition, seed, run_dir in runs:
        env_json = load_run_config(run_dir).environment.model_dump_json()
        for snap in snapshots(condition, seed, run_dir):
            print(f"analyze: {condition}/seed_{seed} {snap.checkpoint} (task {snap.task})", flush=True)
            model = load_agent(run_dir, snap.checkpoint, device)
            probe_frames = frames_for(env_json, json.dumps(snap.shift.to_dict(), sort_keys=True))
            probed.append((snap, probe_network(model, probe_frames)))
    write_summary(probed, out_dir / "summary.csv")
    plot_spectra(probed, out_dir / "singular_value_spectrum_real.png")
    plot_activation_rates(probed, out_dir / "activation_distribution.png")
    return out_dir


def write_summary(probed: list[tuple[Snapshot, ProbeResult]], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SUMMARY_COLUMNS)
        for snap, result in probed:
            s = result.stats
            writer.writerow([
                snap.condition, snap.seed, snap.task, snap.checkpoint, 100 * s["dense/dead_frac"],
                100 * s["dense/activation_rate"], s["dense/effective_rank"], s["dense/srank"],
            ])  # fmt: skip


def _panels(probed: list[tuple[Snapshot, ProbeResult]], title: str) -> tuple[Figure, dict, list[str]]:
    """A figure with one panel per task; returns it, the panels by task, and the conditions."""
    tasks = sorted({snap.task for snap, _ in probed})
    conditions = sorted({snap.condition for snap, _ in probed})
    fig = Figure(figsize=(4.5 * len(tasks), 3.8), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for task, ax in zip(tasks, axes):
        ax.set_title(f"task {task}")
    fig.suptitle(title)
    return fig, dict(zip(tasks, axes)), conditions


# Relative singular values below this are float64 round-off of dead units, not signal.
SPECTRUM_FLOOR = 1e-8


def plot_spectra(probed: list[tuple[Snapshot, ProbeResult]], path: Path) -> None:
    fig, panels, conditions = _panels(probed, "trunk feature spectrum on real frames (mean over seeds)")
    for task, ax in panels.items():
        for condition in conditions:
            spectra = [
                r.spectrum / r.spectrum[0]
                for snap, r in probed
                if snap.task == task and snap.condition == condition and r.spectrum[0] > 0
            ]
            if spectra:
                mean = np.mean(spectra, axis=0)
                ax.plot(np.arange(1, len(mean) + 1), mean, label=condition)
        ax.set_yscale("log")
        ax.set_ylim(bottom=SPECTRUM_FLOOR)
        ax.set_xlabel("index i")
        ax.set_ylabel("s_i / s_1")
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def plot_activation_rates(probed: list[tuple[Snapshot, ProbeResult]], path: Path) -> None:
    fig, panels, conditions = _panels(probed, "trunk units: fraction of probe frames active (pooled over seeds)")
    bins = np.linspace(0.0, 1.0, 21)
    for task, ax in panels.items():
        for condition in conditions:
            rates = [r.unit_rates for snap, r in probed if snap.task == task and snap.condition == condition]
            if rates:
                pooled = np.concatenate(rates)
                weights = np.full(len(pooled), 1 / len(pooled))
                ax.hist(pooled, bins=bins, weights=weights, histtype="step", label=condition)
        ax.set_xlabel("activation rate of a unit")
        ax.set_ylabel("fraction of units")
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
