"""Sweeps: local and Ray backends, resume after a killed worker, failures isolated."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from plasticity_lab.config import ConfigError
from plasticity_lab.experiment.status import study_status
from plasticity_lab.experiment.study import LOCK_NAME, check_unlocked, run_lock
from plasticity_lab.experiment.sweep import sweep
from tests.conftest import TINY, merge

CONDITIONS = {"baseline": {}, "mish": {"model.activation": "mish"}}
SKIP = {"wall_time", "steps_per_s"}


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in r.items() if k not in SKIP} for r in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny_sweep.yaml"
    path.write_text(yaml.safe_dump(merge(TINY, {"experiment": {"conditions": CONDITIONS}})))
    return path


@pytest.fixture(scope="module")
def local_study(config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local")
    states = sweep(config, seeds=[0, 1], workers=2, out_dir=out)
    assert [s.status for s in states] == ["done"] * 4
    return out / "results" / "tiny_sweep"


def test_local_sweep_runs_every_condition_and_seed(local_study):
    for cond in CONDITIONS:
        for seed in (0, 1):
            run = local_study / cond / f"seed_{seed}"
            assert (run / "DONE").exists()
            assert [r["epoch"] for r in rows(run / "metrics.csv")] == [str(i) for i in range(6)]
            assert yaml.safe_load((run / "config.yaml").read_text())["run"]["condition"] == cond
            check_unlocked(run)  # the finished run released its lock
    assert rows(local_study / "baseline/seed_0/metrics.csv") != rows(local_study / "baseline/seed_1/metrics.csv")


def test_rerunning_a_finished_sweep_skips_everything(config, local_study):
    before = (local_study / "mish/seed_1/metrics.csv").read_bytes()
    states = sweep(config, seeds=[0, 1], workers=2, out_dir=local_study.parents[1])
    assert [s.status for s in states] == ["skipped"] * 4
    assert (local_study / "mish/seed_1/metrics.csv").read_bytes() == before


def test_killed_worker_then_resume_completes_without_lost_or_duplicated_rows(config, local_study, tmp_path):
    cmd = [sys.executable, "-m", "plasticity_lab.cli", "sweep", str(config), "--seed-list", "0",
           "--workers", "2", "--retries", "0", "-o", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = tmp_path / "results/tiny_sweep/mish/seed_0"
    deadline = time.monotonic() + 300  # generous: CI machines may be busy
    while time.monotonic() < deadline:
        lock = run / LOCK_NAME
        if (run / "metrics.csv").exists() and len(rows(run / "metrics.csv")) >= 3 and lock.exists():
            os.kill(int(lock.read_text().split()[3]), signal.SIGKILL)  # "host H pid P"
            break
        time.sleep(0.05)
    else:
        pytest.fail("run never reached epoch 3")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 1 and "FAILED mish/seed_0" in out, out
    assert not (run / "DONE").exists()
    status = {r.condition: r for r in study_status(tmp_path / "results/tiny_sweep")}
    assert status["mish"].state == "failed" and "killed by SIGKILL" in status["mish"].note
    assert status["baseline"].state == "done"
    resumed = subprocess.run(cmd[:-2] + ["-o", str(tmp_path), "--resume"], capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    for cond in CONDITIONS:
        got = rows(tmp_path / f"results/tiny_sweep/{cond}/seed_0/metrics.csv")
        assert [r["epoch"] for r in got] == [str(i) for i in range(6)]
        assert got == rows(local_study / cond / "seed_0/metrics.csv")  # same numbers as uninterrupted


def test_a_killed_worker_is_retried_with_a_log_line_and_ends_identical(config, local_study, tmp_path):
    cmd = [sys.executable, "-m", "plasticity_lab.cli", "sweep", str(config), "--seed-list", "0", "--conditions", "mish",
           "--workers", "2", "--retries", "1", "-o", str(tmp_path)]  # 2 workers: 1 thread, as local_study
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = tmp_path / "results/tiny_sweep"
    run = root / "mish/seed_0"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        lock = run / LOCK_NAME
        if (run / "metrics.csv").exists() and len(rows(run / "metrics.csv")) >= 3 and lock.exists():
            live = study_status(root)  # from outside, while the sweep runs
            assert [(r.condition, r.state) for r in live] == [("mish", "running")] and live[0].epoch >= 3
            os.kill(int(lock.read_text().split()[3]), signal.SIGKILL)
            break
        time.sleep(0.05)
    else:
        pytest.fail("run never reached epoch 3")
    out, _ = proc.communicate(timeout=300)
    died = "[sweep] mish/seed_0 died: exit code -9 (killed by SIGKILL); retrying from its checkpoint, attempt 2 of 2"
    assert proc.returncode == 0 and died in out, out
    assert "failed 0, retried 1 (mish/seed_0 x1)" in out
    assert died in (root / "sweep.log").read_text()
    assert rows(run / "metrics.csv") == rows(local_study / "mish/seed_0/metrics.csv")  # as if never killed
    assert [(r.condition, r.state) for r in study_status(root)] == [("mish", "done")]


def test_a_failing_run_is_reported_and_the_others_finish(config, tmp_path):
    bad = tmp_path / "results/tiny_sweep/mish/seed_0/checkpoints"
    bad.mkdir(parents=True)
    (bad / "latest.pt").write_bytes(b"garbage")
    states = sweep(config, seeds=[0], workers=2, out_dir=tmp_path, retries=1)
    status = {s.spec.condition: s for s in states}
    assert status["baseline"].status == "done"
    assert status["mish"].status == "failed"
    assert status["mish"].attempts == 1  # bad input (exit 2) cannot succeed on a retry
    assert "corrupt checkpoint" in status["mish"].error


def test_crashed_attempts_are_retried_up_to_the_limit(tmp_path):
    from types import SimpleNamespace

    from plasticity_lab.experiment.sweep import RunState, Task, finish

    state = RunState(SimpleNamespace(run_dir=tmp_path))
    task = Task([state], attempts=1)
    assert finish(task, -9, retries=1) and state.status == "pending"
    task.attempts = state.attempts = 2
    assert not finish(task, -9, retries=1) and state.status == "failed" and "exit code -9 (killed by SIGKILL)" in state.error
    assert state.deaths == ["exit code -9 (killed by SIGKILL)"]
    assert (tmp_path / "FAILED").read_text().startswith("exit code -9 (killed by SIGKILL)")
    (tmp_path / "DONE").write_text("")
    assert not finish(task, 0, retries=1) and state.status == "done"


def test_a_run_locked_by_a_live_process_is_refused(config, tmp_path):
    run = tmp_path / "results/tiny_sweep/baseline/seed_0"
    with run_lock(run):
        with pytest.raises(ConfigError, match="being written by another process"):
            sweep(config, seeds=[0], out_dir=tmp_path)
    assert not (run / "metrics.csv").exists()
    check_unlocked(run)  # released with its holder, and a stale lock file blocks nothing
    (run / LOCK_NAME).write_text("host gone pid 1\n")
    check_unlocked(run)


def test_ray_backend_with_a_local_instance(config, local_study, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        states = sweep(config, seeds=[0, 1], workers=2, backend="ray", out_dir=tmp_path)
    finally:
        ray.shutdown()
    assert [s.status for s in states] == ["done"] * 4
    for cond in CONDITIONS:
        for seed in (0, 1):
            got = rows(tmp_path / f"results/tiny_sweep/{cond}/seed_{seed}/metrics.csv")
            assert got == rows(local_study / cond / f"seed_{seed}/metrics.csv")


def test_population_sweep_writes_the_same_runs_as_single_processes(config, local_study, tmp_path, monkeypatch):
    """--population: one process per condition (its seeds as one population), the same run
    directories and files, each member's metrics those of its single run up to batched rounding
    (tests/test_population.py checks the tolerance), run.json records the population."""
    import json

    from plasticity_lab.experiment.sweep import LocalBackend

    # no work sharing here: whether the worker that finishes first takes over a member of the
    # other population depends on timing (tests/test_population.py tests the hand-over itself)
    monkeypatch.setattr(LocalBackend, "_ask_for_members", staticmethod(lambda running: None))
    states = sweep(config, seeds=[0, 1], workers=2, out_dir=tmp_path, population=True)
    assert [s.status for s in states] == ["done"] * 4
    study = tmp_path / "results/tiny_sweep"
    for cond in CONDITIONS:
        assert (study / cond / "population_seed_0.log").exists()
        for seed in (0, 1):
            run = study / cond / f"seed_{seed}"
            assert (run / "train.log").resolve() == (study / cond / "population_seed_0.log").resolve()
            got, single = rows(run / "metrics.csv"), rows(local_study / cond / f"seed_{seed}/metrics.csv")
            assert [r["epoch"] for r in got] == [r["epoch"] for r in single]
            assert got[0]["train_r"] == single[0]["train_r"]  # the first epoch's episodes: identical draws
            assert json.loads((run / "run.json").read_text())["invocations"][-1]["population"] == 2
    assert [s.status for s in sweep(config, seeds=[0, 1], workers=2, out_dir=tmp_path, population=True)] == ["skipped"] * 4


def test_a_population_over_the_memory_limit_is_refused_before_anything_is_written(config, tmp_path):
    with pytest.raises(ConfigError, match=r"population of 3 members needs about .* members fit"):
        sweep(config, seeds=[0, 1, 2], out_dir=tmp_path, population=True, overrides=["experiment.population_memory_gib=0.6"])
    assert not (tmp_path / "results").exists()


def test_the_plain_view_summarises_a_running_population():
    from plasticity_lab.experiment.sweep_view import running_summary

    rows = [("baseline", s, "running", "12/250", "900", "1.50" if s % 2 else "0.50") for s in range(6)]
    rows += [("mish", 0, "running", "3/250", "800", "-"), ("mish", 1, "done", "250/250", "-", "1.00")]
    assert running_summary(rows) == ["baseline x6 seeds 12/250 mean test_r 1.00", "mish/seed_0 3/250 800 steps/s test_r -"]


def test_a_forked_child_is_the_command_a_fresh_interpreter_runs(config, tmp_path):
    """The local backend forks CPU one-thread children from the sweep (experiment/launch.py): the
    same output, exit code, ``sys.argv`` (run.json records it) and training, bit for bit, as the
    command run in a fresh interpreter, a bad input's error and a stop signal's checkpoint and
    exit code included; other commands are not forked."""
    import json
    import re

    from plasticity_lab.experiment.launch import ForkedChild, can_fork, cpu_only_torch, start_child

    def command(out: Path, *, config: Path = config, device: str = "cpu", threads: str = "1", extra: tuple = ()) -> list[str]:
        return [sys.executable, "-m", "plasticity_lab.cli", "train", "-n", "forked", "-p", str(config), "-c", "baseline",
                "-s", "0", "-o", str(out), "-r", *extra, "--device", device, "--threads", threads]

    def timings(log: str) -> str:  # the log with its speeds and durations blanked
        return re.sub(r"[0-9.]+ ?(steps/s|s|%)|eta [0-9]+s", "#", log)

    assert not can_fork(command(tmp_path, threads="2"))  # an OpenMP pool the parent started is not in the child
    assert not can_fork(command(tmp_path, device="cuda"))  # CUDA after a fork
    assert not can_fork([sys.executable, "-c", "pass", "--device", "cpu", "--threads", "1"])
    if not cpu_only_torch():
        assert not can_fork(command(tmp_path))
        pytest.skip("this torch has an accelerator compiled in: sweeps start fresh interpreters")
    assert can_fork(command(tmp_path))
    cores = sorted(os.sched_getaffinity(0))[:1]
    codes = []
    for source in (tmp_path / "missing.yaml", config):
        child = start_child(command(tmp_path / "a", config=source), tmp_path / "forked.log", cores)
        assert isinstance(child, ForkedChild)
        code = child.wait()
        fresh = subprocess.run(command(tmp_path / "b", config=source), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        log = (tmp_path / "forked.log").read_text().replace(str(tmp_path / "a"), str(tmp_path / "b"))
        assert code == fresh.returncode
        assert timings(log) == timings(fresh.stdout), (log, fresh.stdout)
        codes.append((code, log))
        (tmp_path / "forked.log").unlink()
    (bad, bad_log), (good, _) = codes
    assert bad == 2 and "missing.yaml" in bad_log  # EXIT_BAD_INPUT with its one-line error
    assert good == 0
    a, b = (tmp_path / d / "results/forked/baseline/seed_0" for d in ("a", "b"))
    assert rows(a / "metrics.csv") == rows(b / "metrics.csv")
    commands = [json.loads((d / "run.json").read_text())["invocations"][-1]["command"] for d in (a, b)]
    assert commands[0].replace(str(tmp_path / "a"), str(tmp_path / "b")) == commands[1]

    # SIGINT during training: both checkpoint and stop with the same code
    longer = ("--set", "ppo_trainer.num_epochs=400")
    stopped = []
    for out in (tmp_path / "c", tmp_path / "d"):
        cmd = command(out, extra=longer)
        child = start_child(cmd, tmp_path / f"{out.name}.log", cores) if out.name == "c" else \
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        metrics = out / "results/forked/baseline/seed_0/metrics.csv"
        try:
            deadline = time.monotonic() + 120
            while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
                assert child.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            child.send_signal(signal.SIGINT)  # a failed wait leaves no run behind
            stopped.append(child.wait())
        assert list((metrics.parent / "checkpoints").iterdir()), "no checkpoint at the stop"
    assert stopped[0] == stopped[1] == 128 + signal.SIGINT
