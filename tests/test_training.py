"""End-to-end runs: directory layout, metrics, no overwrite, checkpoints, resume equality."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import plasticity_lab
from plasticity_lab.cli import train_main
from plasticity_lab.experiment.logger import BASE_COLUMNS

REPO = Path(__file__).resolve().parents[1]
NONDETERMINISTIC = {"wall_time", "steps_per_s"}


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in NONDETERMINISTIC} for r in rows]


def launch(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "-n", "t", "-p", str(cfg), "-o", str(out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )


def wait_rows(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(read_rows(path)) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for metrics rows")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted 6-epoch run (shift at 3) per condition, shared by the tests below."""
    from tests.conftest import TINY, merge  # noqa: PLC0415

    import yaml

    root = tmp_path_factory.mktemp("ref")
    cfg = root / "cfg.yaml"
    episodes = {"ppo_trainer.rollout": "episodes", "environment.time_limit": "terminal", "environment.env_copies": 2}
    conditions = {"baseline": {}, "redo": {"interventions.redo": {"every": 2, "tau": 0.5}}, "episodes": episodes}
    cfg.write_text(yaml.safe_dump(merge(TINY, {"experiment": {"conditions": conditions}})))
    assert train_main(["-n", "t", "-p", str(cfg), "-o", str(root)]) == 0
    return cfg, root / "results" / "t"


def test_run_directory_layout_and_metrics(reference_run):
    _, study = reference_run
    assert (study / "config.yaml").exists()
    run = study / "baseline" / "seed_0"
    for name in ("metrics.csv", "config.yaml", "run.json", "DONE", "checkpoints/latest.pt", "checkpoints/task_0.pt", "checkpoints/task_1.pt"):
        assert (run / name).exists(), name
    assert any((run / "tb").iterdir())
    rows = read_rows(run / "metrics.csv")
    assert list(rows[0]) [: len(BASE_COLUMNS)] == BASE_COLUMNS
    assert [int(r["epoch"]) for r in rows] == list(range(6))
    assert [int(r["env_steps"]) for r in rows] == [128 * (i + 1) for i in range(6)]
    assert [int(r["task"]) for r in rows] == [0, 0, 0, 1, 1, 1]
    assert [bool(r["test_r"]) for r in rows] == [True, False, True, True, False, True]  # every 3rd, round ends
    walls = [float(r["wall_time"]) for r in rows]
    assert walls == sorted(walls) and walls[0] > 0
    diag = read_rows(run / "diagnostics.csv")
    assert [int(r["epoch"]) for r in diag] == [0, 1, 2, 3, 5]  # epoch 0, every 2nd epoch, task ends, last
    assert all(0 <= float(r["dense/dead_frac"]) <= 1 and float(r["dense/effective_rank"]) > 0 for r in diag)
    assert diag[0]["trainability_ratio"] and not diag[1]["trainability_ratio"]
    for r in rows:
        assert 0 <= float(r["dead_units"]) <= 1
        assert float(r["weight_diff"]) > 0 and float(r["weight_m"]) > 0
        assert abs(float(r["entropy"]) - 2.197) < 0.2  # close to log(9) early in training


def test_redo_resets_units_and_logs_them(reference_run):
    _, study = reference_run
    rows = read_rows(study / "redo" / "seed_0" / "metrics.csv")
    assert [bool(r["redo_reset_units"]) for r in rows] == [False, False, True, False, True, False]
    assert float(rows[2]["redo_reset_units"]) > 0


def test_load_agent_returns_the_trained_network(reference_run):
    _, study = reference_run
    model = plasticity_lab.load_agent(study / "baseline" / "seed_0")
    state = torch.load(study / "baseline" / "seed_0" / "checkpoints" / "latest.pt", weights_only=False)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["model"][name])
    logits, value, feats = model(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))
    assert logits.shape == (2, 9) and value.shape == (2,) and feats.shape == (2, 32)
    first = plasticity_lab.load_agent(study / "baseline" / "seed_0", checkpoint="task_0")
    assert not torch.equal(first.policy.weight, model.policy.weight)


def test_rerun_without_resume_is_an_error_and_another_seed_adds_a_run(reference_run, capsys):
    cfg, study = reference_run
    before = (study / "baseline" / "seed_0" / "metrics.csv").read_bytes()
    assert train_main(["-n", "t", "-p", str(cfg), "-o", str(study.parents[1]), "-c", "baseline"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (study / "baseline" / "seed_0" / "metrics.csv").read_bytes() == before
    # -r on a finished run is a no-op
    assert train_main(["-n", "t", "-p", str(cfg), "-o", str(study.parents[1]), "-c", "baseline", "-r"]) == 0
    assert (study / "baseline" / "seed_0" / "metrics.csv").read_bytes() == before


def test_episode_rollout_counts_the_transitions_it_collected(reference_run):
    _, study = reference_run
    steps = [int(r["env_steps"]) for r in read_rows(study / "episodes" / "seed_0" / "metrics.csv")]
    per_epoch = [b - a for a, b in zip([0, *steps], steps)]
    assert all(n >= 128 for n in per_epoch) and len(set(per_epoch)) > 1  # >= buffer_size, whole episodes


@pytest.mark.parametrize("condition", ["redo", "episodes"])
def test_sigkill_then_resume_matches_uninterrupted_run(reference_run, tmp_path, condition):
    cfg, study = reference_run
    proc = launch(cfg, tmp_path, "-c", condition)
    metrics = tmp_path / "results" / "t" / condition / "seed_0" / "metrics.csv"
    wait_rows(metrics, 3, proc)  # a checkpoint exists after epoch 1 (save_freq 2)
    proc.kill()
    proc.wait()
    assert not (metrics.parent / "DONE").exists()
    assert train_main(["-n", "t", "-p", str(cfg), "-o", str(tmp_path), "-c", condition, "-r"]) == 0
    resumed = read_rows(metrics)
    expected = read_rows(study / condition / "seed_0" / "metrics.csv")
    assert [r["epoch"] for r in resumed] == [str(i) for i in range(6)]  # none lost, none duplicated
    assert comparable(resumed) == comparable(expected)


def test_sigterm_checkpoints_and_exits_cleanly(reference_run, tmp_path):
    cfg, study = reference_run
    proc = launch(cfg, tmp_path, "-c", "baseline")
    metrics = tmp_path / "results" / "t" / "baseline" / "seed_0" / "metrics.csv"
    wait_rows(metrics, 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("run finished before the signal arrived")
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "Resume with" in out and "Traceback" not in out
    state = torch.load(metrics.parent / "checkpoints" / "latest.pt", weights_only=False)
    assert state["next_epoch"] == len(read_rows(metrics))  # checkpoint at the epoch it stopped
    assert train_main(["-n", "t", "-p", str(cfg), "-o", str(tmp_path), "-c", "baseline", "-r"]) == 0
    assert comparable(read_rows(metrics)) == comparable(read_rows(study / "baseline" / "seed_0" / "metrics.csv"))


def test_corrupt_checkpoint_is_a_clear_error_and_keeps_data(reference_run, tmp_path, capsys):
    cfg, _ = reference_run
    proc = launch(cfg, tmp_path, "-c", "baseline")
    metrics = tmp_path / "results" / "t" / "baseline" / "seed_0" / "metrics.csv"
    wait_rows(metrics, 3, proc)
    proc.kill()
    proc.wait()
    ckpt = metrics.parent / "checkpoints" / "latest.pt"
    ckpt.write_bytes(b"not a checkpoint")
    before = metrics.read_bytes()
    assert train_main(["-n", "t", "-p", str(cfg), "-o", str(tmp_path), "-c", "baseline", "-r"]) == 2
    err = capsys.readouterr().err
    assert "corrupt checkpoint" in err and str(ckpt) in err
    assert metrics.read_bytes() == before and ckpt.read_bytes() == b"not a checkpoint"


def test_incompatible_checkpoint_is_refused(reference_run, tmp_path, write_config, capsys):
    cfg, study = reference_run
    import shutil

    shutil.copytree(study, tmp_path / "results" / "t")
    (tmp_path / "results" / "t" / "baseline" / "seed_0" / "DONE").unlink()
    other = write_config({"experiment": {"conditions": {"baseline": {}}}, "ppo_trainer": {"lr": 0.1}})
    assert train_main(["-n", "t", "-p", str(other), "-o", str(tmp_path), "-c", "baseline", "-r"]) == 2
    err = capsys.readouterr().err
    assert "incompatible checkpoint: ppo_trainer.lr is 0.1 now but 0.0005 in the checkpoint" in err
