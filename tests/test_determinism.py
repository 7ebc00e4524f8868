"""experiment.deterministic: the plumbing that makes CUDA runs bit-reproducible, tested on CPU
(no GPU here): the setting reaches torch before training starts, off restores torch's defaults,
and on CPU it changes no result (CPU runs are deterministic already)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from plasticity_lab.cli import train_main
from plasticity_lab.config import ConfigError, load_study
from plasticity_lab.experiment import runner as runner_module
from plasticity_lab.experiment.determinism import CUBLAS_WORKSPACE, set_deterministic

GRID = {
    "environment": {"name": "gridworld", "task": "gather_5", "grid_size": 7, "episode_steps": 20, "env_copies": 8},
    "model": {"enc_type": "mlp", "h_size": 16},
    "ppo_trainer": {"num_epochs": 4, "shift_points": [2], "buffer_size": 128, "batch_size": 32, "num_passes": 1,
                    "test_interval": 2, "test_episodes": 4},
    "diagnostics": {"probe_interval": 2, "probe_size": 32, "trainability_every": 1, "trainability_steps": 2},
}


@pytest.fixture(autouse=True)
def torch_defaults(monkeypatch):
    """Every test starts and ends with torch's process-wide defaults."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    set_deterministic(False)
    yield
    set_deterministic(False)


def flags() -> tuple[bool, bool, bool]:
    return torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark


def test_on_and_off(monkeypatch):
    set_deterministic(True)
    assert flags() == (True, True, False)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    set_deterministic(False)
    assert flags() == (False, False, False)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    set_deterministic(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # the user's choice is kept


def test_the_setting_defaults_off_and_cannot_differ_between_conditions(write_config):
    assert load_study(write_config()).base.experiment.deterministic is False
    cfg = write_config({"experiment": {"conditions": {"baseline": {"experiment.deterministic": True}}}})
    with pytest.raises(ConfigError, match="experiment.deterministic: holds for the whole study"):
        load_study(cfg).condition("baseline")


def metrics(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in r.items() if k not in ("wall_time", "steps_per_s")} for r in csv.DictReader(handle)]


def test_train_applies_it_before_training_and_cpu_results_do_not_change(write_config, tmp_path, monkeypatch):
    seen = []
    train = runner_module.Run.train

    def spy(self, *args, **kwargs):
        seen.append(flags())
        return train(self, *args, **kwargs)

    monkeypatch.setattr(runner_module.Run, "train", spy)
    for flag in (False, True):
        cfg = write_config({**GRID, "experiment": {"deterministic": flag}}, name=f"det_{flag}.yaml")
        assert train_main(["-n", f"d{flag}", "-p", str(cfg), "-o", str(tmp_path), "--threads", "1"]) == 0
    assert seen == [(False, False, False), (True, True, False)]
    plain, det = (metrics(tmp_path / "results" / f"d{flag}" / "baseline" / "seed_0" / "metrics.csv") for flag in (False, True))
    assert len(plain) == 4 and plain == det


def test_the_default_does_not_import_the_compiler_stack():
    """Off, the default, changes nothing in torch, so it does not call
    ``torch.use_deterministic_algorithms``, which imports torch's compiler stack (torch._dynamo,
    ~1.3 s of every training process's start on the project's machine) to set a flag of it."""
    code = ("import sys; from plasticity_lab.experiment.determinism import set_deterministic; set_deterministic(False); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
