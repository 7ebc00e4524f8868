"""Sweeps: conditions x seeds, each run in its own process, locally or as Ray tasks.

Every run is the ordinary ``plab train ... -r`` command in a child process, so a crash in one run
cannot take the others down, re-running a sweep skips finished runs and resumes interrupted ones
from their checkpoints, and the run directories look exactly like those of ``train.py``.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from plasticity_lab.config import ConfigError, RunConfig, load_study
from plasticity_lab.experiment.checkpoint import config_mismatch
from plasticity_lab.experiment.study import RunSpec, check_unlocked, plan_runs, study_dir, write_atomic, write_study_config
from plasticity_lab.experiment.sweep_view import SweepView

LOG_NAME = "train.log"
EXIT_BAD_INPUT = 2
FROZEN_CONFIG = "sweep_config.yaml"
PLAN_NAME = "sweep.json"
"""The runs of the study's latest sweep (condition, seed), so ``plab status`` lists runs not started yet."""
FAILED_NAME = "FAILED"
"""Written into a run directory when the sweep gives a run up (why, attempts, last log lines)."""


@dataclass
class RunState:
    spec: RunSpec
    attempts: int = 0
    status: str = "pending"  # pending | running | done | failed | skipped
    error: str = ""
    started: float = field(default=0.0)
    deaths: list[str] = field(default_factory=list)
    """How each attempt that was retried ended (e.g. "exit code -9 (killed by SIGKILL)")."""


def describe_exit(code: int | None) -> str:
    """An attempt's end in words: exit code, and the signal that killed the process if any."""
    if code is None:
        return "lost (Ray worker or node died)"
    signum = -code if code < 0 else code - 128 if code > 128 else 0
    try:
        name = signal.Signals(signum).name if signum else ""
    except ValueError:
        name = ""
    if code < 0:
        return f"exit code {code} (killed by {name or f'signal {signum}'})"
    return f"exit code {code} ({name})" if name else f"exit code {code}"


def train_command(spec: RunSpec, config_path: Path, out_dir: Path, device: str, threads: int) -> list[str]:
    return [
        sys.executable, "-m", "plasticity_lab.cli", "train", "-n", spec.name, "-p", str(config_path),
        "-c", spec.condition, "-s", str(spec.seed), "-o", str(out_dir), "-r",
        "--device", device, "--threads", str(threads),
    ]


def tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def core_slots(workers: int) -> list[list[int]]:
    """Split this process's CPUs into one disjoint share per worker (at least one CPU each)."""
    cores = sorted(os.sched_getaffinity(0))
    per = max(1, len(cores) // workers)
    return [cores[(i * per) % len(cores) : (i * per) % len(cores) + per] for i in range(workers)]


class LocalBackend:
    """W child processes at a time, each pinned to its share of the cores."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.slots = core_slots(workers)

    def threads(self) -> int:
        return len(self.slots[0])

    def run(self, states: list[RunState], command: Callable[[RunSpec], list[str]], retries: int, view: SweepView) -> None:
        queue = deque(states)
        running: dict[int, tuple[RunState, subprocess.Popen]] = {}
        try:
            while queue or running:
                for slot in range(self.workers):
                    if slot not in running and queue:
                        state = queue.popleft()
                        running[slot] = (state, self._launch(state, command(state.spec), self.slots[slot]))
                for slot, (state, proc) in list(running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    del running[slot]
                    if finish(state, code, retries):
                        view.retrying(state, retries)
                        queue.appendleft(state)
                view.refresh(states)
                time.sleep(0.5)
        except KeyboardInterrupt:
            for _, proc in running.values():
                proc.send_signal(signal.SIGINT)  # each run checkpoints and exits
            for state, proc in running.values():
                proc.wait()
                state.status, state.error = "failed", "interrupted (resume with the same command)"
            raise

    @staticmethod
    def _launch(state: RunState, cmd: list[str], cores: list[int]) -> subprocess.Popen:
        start_attempt(state)
        with open(state.spec.run_dir / LOG_NAME, "a") as log:  # the child keeps its own copy
            return subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=lambda: os.sched_setaffinity(0, cores),
            )


def start_attempt(state: RunState) -> None:
    state.attempts += 1
    state.status, state.started = "running", time.monotonic()
    state.spec.run_dir.mkdir(parents=True, exist_ok=True)
    (state.spec.run_dir / FAILED_NAME).unlink(missing_ok=True)


def finish(state: RunState, code: int | None, retries: int) -> bool:
    """Record a finished attempt (``code`` None: Ray lost it); returns True when the run should
    be tried again. A run given up gets a FAILED file saying why."""
    if code == 0 and (state.spec.run_dir / "DONE").exists():
        state.status, state.error = "done", ""
        return False
    detail = tail(state.spec.run_dir / LOG_NAME)
    state.error = f"{state.error}; " if state.error.startswith("ray:") else ""
    state.error += f"{describe_exit(code)}: {detail}"
    if state.attempts <= retries and code != EXIT_BAD_INPUT:  # bad input cannot succeed on retry
        state.status = "pending"
        state.deaths.append(describe_exit(code))
        return True
    state.status = "failed"
    write_atomic(state.spec.run_dir / FAILED_NAME, f"{state.error}\nattempts: {state.attempts}\n")
    return False


class RayBackend:
    """Each run is a Ray task with its CPU/GPU request; run directories must be on storage that
    every node sees at the same path (the driver's OUT_DIR), as on one machine or over NFS."""

    def __init__(self, address: str | None, cpus_per_run: int, gpus_per_run: float) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--backend ray: Ray is not installed (pip install -e '.[ray]')") from None
        self.ray = ray
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=len(os.sched_getaffinity(0)), log_to_driver=False, include_dashboard=False)
        self.cpus, self.gpus = cpus_per_run, gpus_per_run

    def threads(self) -> int:
        return self.cpus

    def run(self, states: list[RunState], command: Callable[[RunSpec], list[str]], retries: int, view: SweepView) -> None:
        ray = self.ray
        task = ray.remote(execute_run).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)
        pending: dict = {}

        def submit(state: RunState) -> None:
            start_attempt(state)
            pending[task.remote(command(state.spec), str(state.spec.run_dir / LOG_NAME))] = state

        for state in states:
            submit(state)
        try:
            self._drain(pending, submit, retries, states, view)
        except KeyboardInterrupt:
            for ref, state in pending.items():
                ray.cancel(ref)  # SIGINT to the task's worker: the run checkpoints and exits
                state.status, state.error = "failed", "interrupted (resume with the same command)"
            raise

    def _drain(self, pending: dict, submit: Callable, retries: int, states: list[RunState], view: SweepView) -> None:
        ray = self.ray
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                state = pending.pop(ref)
                try:
                    code = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a lost node or worker is a failed attempt
                    code = None
                    state.error = f"ray: {type(exc).__name__}: {exc}"
                if finish(state, code, retries):
                    view.retrying(state, retries)
                    submit(state)
            view.refresh(states)


def _raise_interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops a sweep like Ctrl-C: running runs are told to checkpoint and exit."""
    raise KeyboardInterrupt


def is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def execute_run(cmd: list[str], log_path: str) -> int:
    """Run one training command, appending its output to the run's log (used by Ray tasks)."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # ray.cancel: let the run write its checkpoint instead of dying
        proc.send_signal(signal.SIGINT)
        return proc.wait()


def check_same_settings(spec: RunSpec) -> None:
    """Refuse a run directory made with other result-deciding settings (a changed --set or
    config): a resumed run would fail on its checkpoint, a finished one would be skipped and mix
    two settings in one study."""
    path = spec.run_dir / "config.yaml"
    if not path.exists():
        return
    saved = yaml.safe_load(path.read_text()) or {}
    mismatch = config_mismatch(saved, spec.cfg.to_yaml_dict(), RunConfig().to_yaml_dict(), where="its config.yaml")
    if mismatch:
        raise ConfigError(f"{spec.run_dir} was run with other settings: {mismatch} "
                          "(use the same config and --set/--grid values, or another --name; nothing was changed)")


def sweep(
    config: str | Path,
    *,
    name: str | None = None,
    conditions: list[str] | None = None,
    seeds: list[int],
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    out_dir: str | Path = ".",
    retries: int = 1,
    device: str = "cpu",
    cpus_per_run: int | None = None,
    gpus_per_run: float = 0.0,
    overrides: Sequence[str] = (),
    grid: Sequence[str] = (),
) -> list[RunState]:
    """Run every (condition, seed) not finished yet; returns the final state of each run.

    ``overrides`` (``--set``) change the base settings of every condition; ``grid``
    (``--grid KEY=V1,V2``) crosses the chosen conditions with the values (see
    :meth:`StudyConfig.with_grid`). Both are baked into the frozen config every run reads.
    """
    study = load_study(config, overrides)
    name = name or Path(study.source).stem
    if grid:
        study, conditions = study.with_grid(grid, conditions)
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be >= 1")
    if retries < 0:
        raise ConfigError(f"--retries {retries}: must be >= 0")
    specs = plan_runs(study, name, conditions, seeds, out_dir, resume=True)
    for spec in specs:
        check_unlocked(spec.run_dir)
        check_same_settings(spec)
    out_dir = Path(out_dir).resolve()
    # Children read a frozen copy, so editing the source YAML during a sweep changes nothing;
    # it holds the --set values and the grid conditions, so every run and the report see them.
    config_path = study_dir(out_dir, name) / FROZEN_CONFIG
    states = [RunState(spec) for spec in specs]
    for state in states:
        if (state.spec.run_dir / "DONE").exists():
            state.status = "skipped"
    todo = [s for s in states if s.status == "pending"]
    if backend == "local":
        runner: LocalBackend | RayBackend = LocalBackend(workers)
    elif backend == "ray":
        cpus = cpus_per_run or max(1, len(os.sched_getaffinity(0)) // workers)
        runner = RayBackend(address, cpus, gpus_per_run)
    else:
        raise ConfigError(f"--backend {backend}: allowed: local, ray")
    write_study_config(study, out_dir, name)
    write_atomic(config_path, yaml.safe_dump(study.raw, sort_keys=False))
    plan = {"command": shlex.join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "runs": [[s.spec.condition, s.spec.seed] for s in states]}
    write_atomic(study_dir(out_dir, name) / PLAN_NAME, json.dumps(plan, indent=1))
    threads = runner.threads()
    view = SweepView(states, total_epochs={s.spec.label: s.spec.cfg.ppo_trainer.num_epochs for s in states},
                     log_path=study_dir(out_dir, name) / "sweep.log")
    for note in study.shadowed(conditions):
        view.event(note)
    view.event(f"sweep {name}: {len(states)} runs ({len(states) - len(todo)} already finished), "
               f"backend {backend}, {workers} at a time, {threads} thread(s) each -> {out_dir / 'results' / name}")
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if is_main_thread() else None
    try:
        runner.run(todo, lambda spec: train_command(spec, config_path, out_dir, device, threads), retries, view)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        view.close(states)
    return states
