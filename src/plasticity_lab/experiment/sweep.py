"""Sweeps: conditions x seeds, each run (or each condition's population) in its own process,
locally or as Ray tasks.

Every task is the ordinary ``plab train ... -r`` command in a child process (locally, forked from
the sweep where that is safe: experiment/launch.py), so a crash in one
cannot take the others down, re-running a sweep skips finished runs and resumes interrupted ones
from their checkpoints, and the run directories look exactly like those of ``train.py``. With
``--population`` (or ``experiment.population: true``) a task is a condition's unfinished seeds
trained as one population (``plab train -s 0,1,... --population``); ``--workers`` still counts
processes, so W populations train at once.
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
from plasticity_lab.experiment.handover import Handover
from plasticity_lab.experiment.launch import Child, start_child
from plasticity_lab.experiment.population import check_population_fits, population_groups
from plasticity_lab.experiment.provenance import code_version
from plasticity_lab.experiment.runner import pick_device
from plasticity_lab.experiment.study import EXIT_DIVERGED, FAILED_NAME, RunSpec, check_unlocked, plan_runs, study_dir, write_atomic, write_study_config
from plasticity_lab.experiment.sweep_view import SweepView

LOG_NAME = "train.log"
POLL_S = 0.1
"""How often the local backend looks at its children: an idle worker's request for members, the
answer and the launch each wait for one look (3 x 0.5 s was ~1 s of an idle core per hand-over)."""
VIEW_EVERY_S = 0.5
"""How often the view is refreshed (it reads every run's progress)."""
EXIT_BAD_INPUT = 2
FROZEN_CONFIG = "sweep_config.yaml"
PLAN_NAME = "sweep.json"
"""The runs of the study's latest sweep (condition, seed), so ``plab status`` lists runs not started yet."""
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


def train_command(
    specs: list[RunSpec], config_path: Path, out_dir: Path, device: str, threads: int, population: bool, handover: Handover | None = None,
) -> list[str]:
    return [
        sys.executable, "-m", "plasticity_lab.cli", "train", "-n", specs[0].name, "-p", str(config_path),
        "-c", specs[0].condition, "-s", ",".join(str(s.seed) for s in specs), "-o", str(out_dir), "-r",
        "--device", device, "--threads", str(threads), *(["--population"] if population else []),
        *(["--handover", str(handover.stem)] if handover is not None else []),
    ]


@dataclass
class Task:
    """What one child process trains: one run, or a population (several runs of one condition)."""

    states: list[RunState]
    attempts: int = 0
    declined: bool = False
    """It answered a request for members with none: not asked again."""

    @property
    def specs(self) -> list[RunSpec]:
        return [s.spec for s in self.states]

    @property
    def log_path(self) -> Path:
        """A run's log in its directory; a population's beside its members' directories."""
        first = self.states[0].spec
        if len(self.states) == 1:
            return first.run_dir / LOG_NAME
        return first.run_dir.parent / f"population_seed_{first.seed}.log"

    @property
    def handover(self) -> Handover:
        """Where an idle worker asks this population for members (beside its log)."""
        return Handover(self.log_path.with_suffix(""))

    def split(self, seeds: list[int]) -> Task:
        """The runs of ``seeds`` as a task of their own (handed over), the rest staying here."""
        leaving = [s for s in self.states if s.spec.seed in seeds]
        self.states = [s for s in self.states if s.spec.seed not in seeds]
        for state in leaving:
            state.status = "pending"
        return Task(leaving, attempts=self.attempts - 1)  # its launch counts one: moving is not a new attempt


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
    """W child processes at a time, each pinned to its share of the cores. With ``share``
    (populations), a worker with nothing left to start asks the largest running population for
    half of its members and resumes them itself (experiment/handover.py)."""

    def __init__(self, workers: int, share: bool = False) -> None:
        self.workers = workers
        self.slots = core_slots(workers)
        self.share = share

    def threads(self) -> int:
        return len(self.slots[0])

    def run(self, tasks: list[Task], command: Callable[[Task], list[str]], retries: int, view: SweepView, states: list[RunState]) -> None:
        queue = deque(tasks)
        running: dict[int, tuple[Task, Child]] = {}
        asked: Task | None = None  # the population asked for members, until it answers or ends
        next_view = 0.0
        try:
            while queue or running:
                for slot in range(self.workers):
                    if slot not in running and queue:
                        task = queue.popleft()
                        running[slot] = (task, self._launch(task, command(task), self.slots[slot]))
                if self.share and asked is None and not queue and len(running) < self.workers:
                    asked = self._ask_for_members([t for t, _ in running.values()])
                if asked is not None and self._take_members(asked, queue, view):
                    asked = None
                for slot, (task, proc) in list(running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    del running[slot]
                    if task is asked:  # it ended before or after answering: what it handed over still moves
                        self._take_members(task, queue, view)
                        asked = None
                    task.handover.clear()
                    if finish(task, code, retries):
                        view.retrying(task.states[0], retries)
                        queue.appendleft(task)
                if time.monotonic() >= next_view:
                    view.refresh(states)
                    next_view = time.monotonic() + VIEW_EVERY_S
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            for _, proc in running.values():
                proc.send_signal(signal.SIGINT)  # each run checkpoints and exits
            for task, proc in running.values():
                proc.wait()
                for state in task.states:
                    state.status, state.error = "failed", "interrupted (resume with the same command)"
            raise

    @staticmethod
    def _ask_for_members(running: list[Task]) -> Task | None:
        """Ask the running population with the most members (at least 2) for half of them;
        returns it, or None when none qualifies."""
        candidates = [t for t in running if len(t.states) >= 2 and not t.declined]
        if not candidates:
            return None
        task = max(candidates, key=lambda t: len(t.states))
        task.handover.ask(len(task.states) // 2)
        return task

    @staticmethod
    def _take_members(task: Task, queue: deque, view: SweepView) -> bool:
        """If ``task`` answered: queue what it handed over first (so the idle worker starts it);
        True once answered."""
        answer = task.handover.answered()
        if answer is None:
            return False
        seeds, epoch = answer
        task.handover.clear()
        if not seeds:
            task.declined = True
            return True
        moved = task.split(seeds)
        queue.appendleft(moved)
        view.event(f"{moved.states[0].spec.condition}: seeds {','.join(map(str, seeds))} handed over at epoch {epoch} "
                   f"to the idle worker ({len(task.states)} stay in their population)")
        return True

    @staticmethod
    def _launch(task: Task, cmd: list[str], cores: list[int]) -> Child:
        start_attempt(task)
        task.handover.clear()  # a request left by a sweep that was stopped is nobody's now
        return start_child(cmd, task.log_path, cores)


def start_attempt(task: Task) -> None:
    task.attempts += 1
    for state in task.states:
        state.attempts = task.attempts
        state.status, state.started = "running", time.monotonic()
        state.spec.run_dir.mkdir(parents=True, exist_ok=True)
        (state.spec.run_dir / FAILED_NAME).unlink(missing_ok=True)
        log = state.spec.run_dir / LOG_NAME
        if log.is_symlink() and (len(task.states) == 1 or log.resolve() != task.log_path.resolve()):
            log.unlink()  # it trained in another population before (handed over): its own log now
        if len(task.states) > 1 and not log.exists():  # a member's log is its population's
            log.symlink_to(os.path.relpath(task.log_path, state.spec.run_dir))


def finish(task: Task, code: int | None, retries: int) -> bool:
    """Record a finished attempt (``code`` None: Ray lost it); returns True when the task should
    be tried again (its unfinished runs resume; finished ones are skipped). A run given up gets
    a FAILED file saying why."""
    detail = tail(task.log_path)
    completed = code in (0, EXIT_DIVERGED)  # diverged: the members with a DONE file finished
    unfinished = [s for s in task.states if not (completed and (s.spec.run_dir / "DONE").exists())]
    for state in task.states:
        if state not in unfinished:
            state.status, state.error = "done", ""
    if not unfinished:
        return False
    retry = task.attempts <= retries and code != EXIT_BAD_INPUT  # bad input cannot succeed on retry
    for state in unfinished:
        state.error = f"{state.error}; " if state.error.startswith("ray:") else ""
        own = state.spec.run_dir / FAILED_NAME  # the run's own verdict (a diverged member) comes first
        state.error += f"{own.read_text().strip()}; " if own.exists() else ""
        state.error += f"{describe_exit(code)}: {detail}"
        if retry:
            state.status = "pending"
            state.deaths.append(describe_exit(code))
        else:
            state.status = "failed"
            write_atomic(state.spec.run_dir / FAILED_NAME, f"{state.error}\nattempts: {state.attempts}\n")
    task.states = unfinished if retry else task.states
    return retry


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

    def run(self, tasks: list[Task], command: Callable[[Task], list[str]], retries: int, view: SweepView, states: list[RunState]) -> None:
        ray = self.ray
        remote = ray.remote(execute_run).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)
        pending: dict = {}

        def submit(task: Task) -> None:
            start_attempt(task)
            pending[remote.remote(command(task), str(task.log_path))] = task

        for task in tasks:
            submit(task)
        try:
            self._drain(pending, submit, retries, states, view)
        except KeyboardInterrupt:
            for ref, task in pending.items():
                ray.cancel(ref)  # SIGINT to the task's worker: the runs checkpoint and exit
                for state in task.states:
                    state.status, state.error = "failed", "interrupted (resume with the same command)"
            raise

    def _drain(self, pending: dict, submit: Callable, retries: int, states: list[RunState], view: SweepView) -> None:
        ray = self.ray
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                task = pending.pop(ref)
                try:
                    code = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a lost node or worker is a failed attempt
                    code = None
                    for state in task.states:
                        state.error = f"ray: {type(exc).__name__}: {exc}"
                if finish(task, code, retries):
                    view.retrying(task.states[0], retries)
                    submit(task)
            view.refresh(states)


def _raise_interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops a sweep like Ctrl-C: running runs are told to checkpoint and exit."""
    raise KeyboardInterrupt


def is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def execute_run(cmd: list[str], log_path: str) -> int:
    """Run one training command, appending its output to its log (used by Ray tasks)."""
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
    population: bool | None = None,
) -> list[RunState]:
    """Run every (condition, seed) not finished yet; returns the final state of each run.

    ``overrides`` (``--set``) change the base settings of every condition; ``grid``
    (``--grid KEY=V1,V2``) crosses the chosen conditions with the values (see
    :meth:`StudyConfig.with_grid`). Both are baked into the frozen config every run reads.
    ``population`` (default: ``experiment.population``) trains each condition's unfinished seeds
    as populations of at most ``experiment.population_size`` members, one process each.
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
    population = study.base.experiment.population if population is None else population
    if population:
        try:
            target = pick_device(device)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        size = study.base.experiment.population_size
        # as plab train groups them: runs resuming from different checkpoint epochs (a hand-over
        # or a failure before the sweep was stopped) are separate populations
        state_of = {state.spec.run_dir: state for state in todo}
        tasks = [Task([state_of[spec.run_dir] for spec in group]) for group in population_groups([s.spec for s in todo], size, resume=True)]
        for task in tasks:  # every refusal before anything starts
            check_population_fits(task.specs[0].cfg, len(task.states), target, f"{name}/{task.specs[0].condition}")
    else:
        tasks = [Task([state]) for state in todo]
    share = backend == "local" and bool(population)  # idle local workers take over members (Ray schedules its own)
    if backend == "local":
        runner: LocalBackend | RayBackend = LocalBackend(workers, share=share)
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
    unit = f"{len(tasks)} populations" if population else "runs"
    view.event(f"sweep {name}: {len(states)} runs ({len(states) - len(todo)} already finished), "
               f"backend {backend}, {unit} {workers} at a time, {threads} thread(s) each -> {out_dir / 'results' / name}")
    if backend == "local":
        code_version()  # cached now: forked children run the code imported here, not a later commit's (launch.py)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if is_main_thread() else None
    try:
        runner.run(tasks, lambda task: train_command(task.specs, config_path, out_dir, device, threads, population,
                                                     task.handover if share and len(task.states) > 1 else None),
                   retries, view, states)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        view.close(states)
    return states
