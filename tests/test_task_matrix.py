"""The task-return matrix (evaluation.task_matrix): R[i][j] = test return on task j after
training task i, written to task_matrix.csv at every task end without changing training."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from plasticity_lab.config import RunConfig
from plasticity_lab.distributions import make_distribution
from plasticity_lab.envs import evaluate
from plasticity_lab.envs.shifts import ShiftState
from plasticity_lab.experiment.identity import run_differences
from plasticity_lab.experiment.runner import Run
from plasticity_lab.metrics.continual import read_task_matrix
from plasticity_lab.nets import build_model
from tests.conftest import interrupt_at

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = {
    "environment": {"name": "gridworld", "task": "gather_4", "grid_size": 5, "episode_steps": 12, "env_copies": 4},
    "model": {"enc_type": "mlp", "h_size": 16},
    "ppo_trainer": {"num_epochs": 6, "shift_points": [2, 4], "buffer_size": 64, "batch_size": 16, "num_passes": 2,
                    "test_interval": 1, "test_episodes": 5, "lr": 3e-3},
    "diagnostics": {"enabled": False},
    "experiment": {"save_freq": 1},
}


def config(matrix: bool, episodes: int | None = None) -> RunConfig:
    cfg = RunConfig.model_validate(GRID)
    cfg.evaluation.task_matrix = matrix
    cfg.evaluation.task_matrix_episodes = episodes
    return cfg


def train(cfg: RunConfig, run_dir: Path, seed: int = 3) -> Path:
    run_dir.mkdir(parents=True)
    assert Run(cfg, run_dir, seed, device="cpu").train() == "done"
    return run_dir


def matrix_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "task_matrix.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_training_is_bit_identical_with_the_matrix_on_and_off(tmp_path):
    on = train(config(True, episodes=3), tmp_path / "on")
    off = train(config(False), tmp_path / "off")
    assert run_differences(on, off) == []
    assert not (off / "task_matrix.csv").exists()
    rows = matrix_rows(on)
    assert [(r["i"], r["j"], r["epoch"]) for r in rows] == [
        ("0", "0", "1"), ("1", "0", "3"), ("1", "1", "3"), ("2", "0", "5"), ("2", "1", "5"), ("2", "2", "5")]
    matrix = read_task_matrix(on / "task_matrix.csv")  # the metrics' reader takes the run's file
    assert matrix.shape == (3, 3) and np.isnan(matrix[0, 1]) and matrix[2, 0] == float(rows[3]["return"])
    assert all(float(r["eval_seconds"]) > 0 for r in rows)  # 3 episodes: every cell is its own evaluation


def test_the_diagonal_reuses_the_ordinary_evaluation_and_the_cost_is_logged(tmp_path, capsys):
    run_dir = train(config(True), tmp_path / "run")  # task_matrix_episodes = test_episodes
    rows = matrix_rows(run_dir)
    with open(run_dir / "metrics.csv", newline="") as handle:
        test_r = {row["epoch"]: row["test_r"] for row in csv.DictReader(handle)}
    diagonal = [r for r in rows if r["i"] == r["j"]]
    assert [float(r["eval_seconds"]) for r in diagonal] == [0.0, 0.0, 0.0]  # nothing extra was run
    assert all(float(r["return"]) == pytest.approx(float(test_r[r["epoch"]]), abs=1e-5) for r in diagonal)
    below = [float(r["eval_seconds"]) for r in rows if r["i"] != r["j"]]
    assert len(below) == 3 and min(below) > 0
    log = capsys.readouterr().out
    assert "task matrix: 3 evaluations, estimated" in log  # the modelled cost, first (no probes in this run)
    assert f"task matrix: 3 evaluations took {sum(below):.1f} s" in log  # the measured one, last


def test_the_matrix_equals_evaluations_by_hand_under_each_tasks_shift(tmp_path):
    """Each entry against a hand-run evaluation: the network saved at the end of task i, on
    task j's shift state (from task j's checkpoint), with the ordinary evaluation's seeds."""
    cfg = config(True, episodes=4)
    run_dir = train(cfg, tmp_path / "run")
    eval_seed = int(np.random.SeedSequence(3).generate_state(4)[3])
    ends = {0: 2, 1: 4, 2: 6}  # task -> the next_epoch of its checkpoint
    shifts = {j: ShiftState.from_dict(torch.load(run_dir / "checkpoints" / f"task_{j}.pt", weights_only=False)["shift_state"])
              for j in ends}
    assert len({shift.tile_perm.tobytes() for shift in shifts.values()}) == 3  # three different tasks
    seen = {}
    for i, end in ends.items():
        model = build_model(cfg.model, 4, (5, 5, 3))
        model.load_state_dict(torch.load(run_dir / "checkpoints" / f"task_{i}.pt", weights_only=False)["model"])
        model.eval()
        epoch = end - 1
        for j in range(i + 1):
            gen = torch.Generator().manual_seed(eval_seed + epoch)

            def policy(frames, active, model=model, gen=gen):
                with torch.no_grad():
                    head, _, _ = model(torch.from_numpy(frames[0]))
                return make_distribution(head.unsqueeze(0), None).sample([gen]).numpy()

            returns, _ = evaluate(policy, cfg.environment, 4, [eval_seed + epoch], [shifts[j]])
            seen[(i, j)] = float(returns.mean())
    logged = {(int(r["i"]), int(r["j"])): float(r["return"]) for r in matrix_rows(run_dir)}
    assert logged.keys() == seen.keys()
    for key, value in seen.items():
        assert logged[key] == pytest.approx(value, abs=1e-5), key
    assert len(set(seen.values())) > 1  # the entries really differ


def test_a_killed_run_resumes_to_the_same_matrix(tmp_path):
    cfg = config(True, episodes=3)
    full = train(cfg, tmp_path / "full")
    cut = tmp_path / "cut"
    cut.mkdir()
    stopped = Run(cfg, cut, 3, device="cpu")
    interrupt_at(stopped, 4)
    resumed = Run(cfg, cut, 3, device="cpu")
    assert resumed.train(resumed.load_resume_state()) == "done"
    assert (cut / "task_matrix.csv").exists()
    assert run_differences(cut, full) == []  # task_matrix.csv included, its eval_seconds aside


def test_identity_reports_a_training_file_only_one_run_wrote(tmp_path):
    """Only the task matrix may be in one run alone (evaluation); a missing metrics.csv is a difference."""
    a = train(config(False), tmp_path / "a")
    b = train(config(False), tmp_path / "b")
    assert run_differences(a, b) == []
    (b / "metrics.csv").unlink()
    assert run_differences(a, b) == [f"metrics.csv: only in {a}"]
