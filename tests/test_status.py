"""plab status: run states read from run directories (simulated here, with a held lock standing in
for a live run; test_sweep.py checks it against a real sweep)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from plasticity_lab.cli import main
from plasticity_lab.experiment.status import run_status, study_status
from plasticity_lab.experiment.study import LOCK_NAME, lock_is_held, run_lock

HEADER = "epoch,wall_time,test_r\n"


def make_run(root: Path, condition: str, seed: int, rows: list[tuple[int, float, str]], total: int = 10,
             tail: str = "") -> Path:
    run = root / condition / f"seed_{seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"ppo_trainer": {"num_epochs": total}}))
    (run / "metrics.csv").write_text(HEADER + "".join(f"{e},{w},{t}\n" for e, w, t in rows) + tail)
    return run


def test_every_state_epoch_test_return_and_eta(tmp_path):
    root = tmp_path / "results" / "s"
    done = make_run(root, "a", 0, [(e, 2.0 * e + 1, "5.0" if e == 9 else "") for e in range(10)])
    (done / "DONE").write_text("")
    # running: 4 epochs at 2 s each in the recent rows, 6 left -> 12 s; a half-written row is ignored
    running = make_run(root, "a", 1, [(0, 1.0, "1.5"), (1, 3.0, ""), (2, 5.0, ""), (3, 7.0, "")], tail="4,9.")
    interrupted = make_run(root, "b", 0, [(0, 1.0, "2.5"), (1, 2.0, "")])
    (interrupted / "checkpoints").mkdir()
    (interrupted / "checkpoints" / "latest.pt").write_bytes(b"")
    (interrupted / LOCK_NAME).write_text("host gone pid 1\n")  # a stale lock file is no live lock
    given_up = make_run(root, "b", 1, [(0, 1.0, "")])
    (given_up / "FAILED").write_text("exit code -9 (killed by SIGKILL): ...\nattempts: 2\n")
    crashed = make_run(root, "c", 0, [])
    (crashed / "train.log").write_text("c/seed_0: started\nTraceback (most recent call last):\n  File x\nRuntimeError: boom\n")
    (root / "sweep.json").write_text(json.dumps({"runs": [["a", 0], ["a", 1], ["b", 0], ["b", 1], ["c", 0], ["c", 1]]}))
    (root / "config.yaml").write_text(yaml.safe_dump({"ppo_trainer": {"num_epochs": 10}}))
    with run_lock(running):
        assert lock_is_held(running) and not lock_is_held(interrupted)
        got = {(r.condition, r.seed): r for r in study_status(root)}
    assert [(k, r.state) for k, r in got.items()] == [
        (("a", 0), "done"), (("a", 1), "running"), (("b", 0), "interrupted"), (("b", 1), "failed"),
        (("c", 0), "failed"), (("c", 1), "not started")]
    assert (got["a", 0].epoch, got["a", 0].total, got["a", 0].test_r, got["a", 0].eta_s) == (10, 10, 5.0, None)
    assert (got["a", 1].epoch, got["a", 1].test_r) == (4, 1.5)
    assert got["a", 1].eta_s == pytest.approx(12.0)
    assert (got["b", 0].epoch, got["b", 0].test_r) == (2, 2.5)
    assert got["b", 1].note.startswith("exit code -9 (killed by SIGKILL)")
    assert got["c", 0].note == "RuntimeError: boom"
    assert (got["c", 1].epoch, got["c", 1].total) == (0, 10)
    assert run_status(running, "a", 1).state == "interrupted"  # lock released: no longer running


def test_failed_marker_is_stale_once_the_run_moved_on(tmp_path):
    run = make_run(tmp_path, "a", 0, [(0, 1.0, "")])
    (run / "FAILED").write_text("exit code 1: ...\n")
    assert run_status(run, "a", 0).state == "failed"
    import os

    later = (run / "FAILED").stat().st_mtime + 10
    os.utime(run / "metrics.csv", (later, later))  # resumed by hand after the sweep gave up
    assert run_status(run, "a", 0).state == "interrupted"


def test_cli_prints_the_table_and_refuses_a_non_study(tmp_path, capsys):
    root = tmp_path / "results" / "s"
    make_run(root, "cond", 3, [(0, 1.0, "7.25")])
    (root / "sweep.log").write_text("2026-01-01 00:00:00 [sweep] cond/seed_3 died: exit code -9 (killed by SIGKILL)\n")
    assert main(["status", str(root)]) == 0
    out = capsys.readouterr().out
    assert "cond" in out and "interrupted" in out and "1/10" in out and "7.25" in out and "killed by SIGKILL" in out
    assert main(["status", str(tmp_path / "nothing")]) == 2
    assert "no runs found" in capsys.readouterr().err
