"""The training loop evaluates at every round's last epoch (so the report's per-round view measures
each round at its end), and evaluating never changes training."""

from __future__ import annotations

import csv
from pathlib import Path

from plasticity_lab.cli import train_main

TRAINING = ("train_r", "train_l", "entropy", "p_loss", "v_loss", "weight_m", "weight_diff", "grad_norm", "dead_units")


def rows(study: Path) -> list[dict[str, str]]:
    with open(study / "baseline" / "seed_0" / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_round_ends_are_evaluated_and_evaluation_changes_no_training(tmp_path, write_config):
    sparse = write_config({"ppo_trainer": {"num_epochs": 7, "shift_points": [3], "test_interval": 4},
                           "diagnostics": {"enabled": False}}, name="sparse.yaml")
    dense = write_config({"ppo_trainer": {"num_epochs": 7, "shift_points": [3], "test_interval": 1},
                          "diagnostics": {"enabled": False}}, name="dense.yaml")
    assert train_main(["-n", "sparse", "-p", str(sparse), "-o", str(tmp_path), "--threads", "1"]) == 0
    assert train_main(["-n", "dense", "-p", str(dense), "-o", str(tmp_path), "--threads", "1"]) == 0
    sparse_rows, dense_rows = rows(tmp_path / "results" / "sparse"), rows(tmp_path / "results" / "dense")
    # every 4th epoch, the last epoch of round 1 (epoch 2) and of the run (epoch 6)
    assert [int(r["epoch"]) for r in sparse_rows if r["test_r"]] == [0, 2, 4, 6]
    assert all(r["test_r"] for r in dense_rows)
    for a, b in zip(sparse_rows, dense_rows):
        assert {k: a[k] for k in TRAINING} == {k: b[k] for k in TRAINING}
    for epoch in (0, 2, 4, 6):  # the same evaluation, whatever else was evaluated
        assert sparse_rows[epoch]["test_r"] == dense_rows[epoch]["test_r"]
