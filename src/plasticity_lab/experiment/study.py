"""Study directories: results/NAME/<condition>/seed_<s>/, created only after all input checks.

``plan_runs`` does every check that can fail on bad input (config, condition names, a committed
reference study, existing runs without resume) before anything is written, so a refused command
leaves no directory behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from plasticity_lab.config import ConfigError, RunConfig, StudyConfig
from plasticity_lab.experiment.provenance import code_version

LOCK_NAME = ".lock"
FAILED_NAME = "FAILED"
"""A run that will not finish: the first line says why (the run's own divergence, or the sweep
giving it up after its retries)."""
EXIT_DIVERGED = 3
"""Exit code of ``plab train`` when a run (or a population member) diverged: non-finite loss,
gradients, weights or metrics; the other runs finished."""
REFERENCE_MARKER = "REFERENCE.md"
"""A study directory holding this file is a committed reference study: read-only for every command."""


def is_reference_study(path: str | Path) -> bool:
    """True for a committed reference study (results shipped with the repository), which no
    command may write into: its files are tracked, and a re-run would silently replace them."""
    return (Path(path) / REFERENCE_MARKER).is_file()


@dataclass(frozen=True)
class RunSpec:
    name: str
    condition: str
    seed: int
    cfg: RunConfig
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.condition}/seed_{self.seed}"


def study_dir(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / "results" / name


def run_dir_for(out_dir: str | Path, name: str, condition: str, seed: int) -> Path:
    return study_dir(out_dir, name) / condition / f"seed_{seed}"


def new_study_name(out_dir: str | Path, prefix: str) -> str:
    """``PREFIX-YYYYmmdd-HHMMSS`` (plus ``-2``, ``-3``, ... if taken): a study directory that does
    not exist yet, for commands with a default output (under results/, which git ignores)."""
    base = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, k = base, 1
    while study_dir(out_dir, name).exists():
        k += 1
        name = f"{base}-{k}"
    return name


def plan_runs(
    study: StudyConfig,
    name: str,
    conditions: list[str] | None,
    seeds: list[int],
    out_dir: str | Path,
    resume: bool,
) -> list[RunSpec]:
    """Resolve and check every run; raises ConfigError (nothing written) on any problem."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"-n {name!r}: the experiment name must be a plain directory name")
    if is_reference_study(study_dir(out_dir, name)):
        raise ConfigError(
            f"{study_dir(out_dir, name)}: a committed reference study ({REFERENCE_MARKER}) is read-only; "
            "choose another study name (nothing was written)"
        )
    chosen = conditions or study.conditions
    specs = []
    for condition in chosen:
        cfg = study.condition(condition)
        for seed in seeds:
            if seed < 0:
                raise ConfigError(f"-s {seed}: seeds must be >= 0")
            run_dir = run_dir_for(out_dir, name, condition, seed)
            if run_dir.exists() and not resume:
                raise ConfigError(
                    f"{run_dir} already exists: pass -r to resume it, or choose another -n/-s (nothing was overwritten)"
                )
            specs.append(RunSpec(name, condition, seed, cfg, run_dir))
    return specs


def write_study_config(study: StudyConfig, out_dir: str | Path, name: str) -> None:
    """results/NAME/config.yaml: the base config with every condition's resolved overrides."""
    path = study_dir(out_dir, name) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = study.base.to_yaml_dict()
    doc["source"] = study.source
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False))


def write_atomic(path: Path, text: str) -> None:
    """Write via a per-process temp file and rename: concurrent writers never clash, readers
    never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def prepare_run_dir(spec: RunSpec, hooks: list[str], device: str, population: int = 1) -> None:
    """Create the run directory and write its resolved config.yaml and run.json (once); every
    invocation appends its command, device, start time, code version and population size (the
    members trained together in that process; 1 = a single run) to run.json."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    cfg_doc = spec.cfg.to_yaml_dict()
    cfg_doc["experiment"]["conditions"] = {spec.condition: spec.cfg.experiment.conditions[spec.condition]}
    cfg_doc["experiment"]["grid"] = {k: v for k, v in cfg_doc["experiment"]["grid"].items() if k == spec.condition}
    cfg_doc["run"] = {"name": spec.name, "condition": spec.condition, "seed": spec.seed, "hooks": hooks}
    write_atomic(spec.run_dir / "config.yaml", yaml.safe_dump(cfg_doc, sort_keys=False))
    info_path = spec.run_dir / "run.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {"invocations": []}
    info["invocations"].append(
        {"command": shlex.join(sys.argv), "device": device, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
         "overrides": spec.cfg.experiment.overrides,
         "code": code_version(), "population": population}
    )
    write_atomic(info_path, json.dumps(info, indent=2))


def _try_flock(handle, patience: float = 0.5) -> bool:
    """Take the exclusive lock; False if a live writer holds it. Retries for ``patience`` seconds,
    because ``plab status`` holds a shared lock for an instant to ask whether a run is live."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def lock_is_held(run_dir: Path) -> bool:
    """True while a live process holds the run's lock (asked with an instant shared lock, which
    a starting run's :func:`_try_flock` waits out)."""
    path = run_dir / LOCK_NAME
    try:
        handle = open(path)
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def check_unlocked(run_dir: Path) -> None:
    """Raise ConfigError if a live process holds the run's lock.

    The lock is an flock on ``<run>/.lock``: the kernel drops it when its process dies, so a
    crashed run never leaves a stale lock behind and no pid guessing is needed.
    """
    path = run_dir / LOCK_NAME
    if not path.exists():
        return
    with open(path, "a+") as handle:
        if _try_flock(handle):
            fcntl.flock(handle, fcntl.LOCK_UN)
            return
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
    raise ConfigError(f"{run_dir} is being written by another process ({owner}); wait for it to finish")


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on a run directory so two processes never write the same run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    handle = open(path, "a+")
    try:
        if not _try_flock(handle):
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise ConfigError(f"{run_dir} is being written by another process ({owner}); wait for it to finish")
        handle.seek(0)
        handle.truncate()
        handle.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the flock
