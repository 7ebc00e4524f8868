"""`plab status RESULTS_DIR`: where every run of a study stands, read from the run directories.

Everything comes from files the runs and the sweep write anyway (``DONE``, the flock on
``.lock``, ``checkpoints/latest.pt``, the tail of ``metrics.csv``, ``FAILED``, ``train.log``,
``sweep.json``), so it works from any terminal while a sweep runs, for the local and the Ray
backend alike, and for studies made with ``train.py``.

States: ``done`` (DONE file), ``running`` (a live process holds the run's lock), ``failed`` (the
sweep gave the run up: FAILED file; or its log ends in a traceback or an error line),
``interrupted`` (started, not running, not done: resume it by re-running the sweep or train -r),
``not started`` (planned by the sweep, no output yet).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from plasticity_lab.config import ConfigError
from plasticity_lab.experiment.study import lock_is_held
from plasticity_lab.experiment.study import FAILED_NAME
from plasticity_lab.experiment.sweep import LOG_NAME, PLAN_NAME
from plasticity_lab.experiment.sweep_view import last_rows

RATE_ROWS = 20
"""The ETA uses the epoch rate over this many most recent epochs."""


@dataclass
class RunStatus:
    condition: str
    seed: int
    state: str
    epoch: int
    """Epochs completed (complete rows of metrics.csv)."""
    total: int | None
    test_r: float | None
    """The last test return logged."""
    eta_s: float | None
    """Seconds left at the recent epoch rate (running runs only)."""
    note: str = ""


def _num_epochs(run_dir: Path) -> int | None:
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        return int(cfg["ppo_trainer"]["num_epochs"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def _log_failure(run_dir: Path) -> str:
    """The error a run's log ends with, if it ends with one (a run outside a sweep has no log)."""
    try:
        lines = (run_dir / LOG_NAME).read_text(errors="replace").strip().splitlines()[-15:]
    except OSError:
        return ""
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]
    return next((line for line in reversed(lines) if line.startswith("error:")), "")


def _newer(path: Path, than: Path) -> bool:
    try:
        return path.stat().st_mtime > than.stat().st_mtime
    except OSError:
        return False


def run_status(run_dir: Path, condition: str, seed: int, total: int | None = None) -> RunStatus:
    """The state of one run directory (see the module docstring)."""
    rows = last_rows(run_dir / "metrics.csv", n=RATE_ROWS + 1, tail_bytes=1 << 16)
    epoch = int(rows[-1]["epoch"]) + 1 if rows else 0
    total = _num_epochs(run_dir) or total
    tests = [float(r["test_r"]) for r in rows if r.get("test_r")]
    status = RunStatus(condition, seed, "not started", epoch, total, tests[-1] if tests else None, None)
    failed = run_dir / FAILED_NAME
    if (run_dir / "DONE").exists():
        status.state = "done"
    elif lock_is_held(run_dir):
        status.state = "running"
        walls = [(int(r["epoch"]), float(r["wall_time"])) for r in rows if r.get("wall_time")]
        if total is not None and len(walls) >= 2 and walls[-1][1] > walls[0][1]:
            rate = (walls[-1][0] - walls[0][0]) / (walls[-1][1] - walls[0][1])
            status.eta_s = (total - epoch) / rate
    elif failed.exists() and not _newer(run_dir / "metrics.csv", failed):  # not resumed by hand since
        status.state = "failed"
        status.note = failed.read_text(errors="replace").splitlines()[0] if failed.stat().st_size else ""
    elif reason := _log_failure(run_dir):
        status.state, status.note = "failed", reason
    elif rows or (run_dir / "checkpoints" / "latest.pt").exists():
        status.state = "interrupted"
    return status


def study_status(results_dir: str | Path) -> list[RunStatus]:
    """Every run of the study: those the latest sweep planned, then any other run directory."""
    root = Path(results_dir)
    planned: list[tuple[str, int]] = []
    try:
        planned = [(str(c), int(s)) for c, s in json.loads((root / PLAN_NAME).read_text())["runs"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = sorted(
        (cond.name, int(seed.name[len("seed_"):]))
        for cond in (root.iterdir() if root.is_dir() else [])
        if cond.is_dir()
        for seed in cond.glob("seed_*")
        if seed.is_dir() and seed.name[len("seed_"):].isdigit()
    )
    runs = planned + [run for run in found if run not in planned]
    if not runs:
        raise ConfigError(f"{root}: no runs found (expected a study directory results/NAME with <condition>/seed_<s>/)")
    total = None
    try:
        study_cfg = yaml.safe_load((root / "config.yaml").read_text()) or {}
        total = int(study_cfg["ppo_trainer"]["num_epochs"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        pass
    return [run_status(root / cond / f"seed_{seed}", cond, seed, total) for cond, seed in runs]


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def print_status(results_dir: str | Path) -> list[RunStatus]:
    """Print the table (rich on a terminal, plain text otherwise) and the sweep's latest events."""
    from rich.console import Console
    from rich.table import Table

    runs = study_status(results_dir)
    counts = {state: sum(r.state == state for r in runs) for state in
              ("done", "running", "interrupted", "failed", "not started")}
    table = Table(title=f"{results_dir}: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n))
    for column in ("condition", "seed", "state", "epoch", "last test_r", "ETA", "note"):
        table.add_column(column)
    for r in runs:
        table.add_row(
            r.condition, str(r.seed), r.state, f"{r.epoch}/{r.total if r.total is not None else '?'}",
            f"{r.test_r:.2f}" if r.test_r is not None else "-", _duration(r.eta_s), r.note[:80],
        )
    console = Console(width=None if Console().is_terminal else 160)
    console.print(table)
    log = Path(results_dir) / "sweep.log"
    if log.exists():
        console.print("latest sweep events (sweep.log):", markup=False)
        for line in log.read_text(errors="replace").splitlines()[-5:]:
            console.print("  " + line, markup=False, highlight=False)
    return runs
