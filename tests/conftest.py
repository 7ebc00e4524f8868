"""Shared fixtures: tiny configs that train in seconds on 2 cores."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

TINY: dict[str, Any] = {
    "experiment": {"save_freq": 2, "conditions": {"baseline": {}}},
    "environment": {"task": "coinrun_10", "env_copies": 8},
    "model": {"h_size": 32},
    "ppo_trainer": {
        "num_epochs": 6, "shift_points": [3], "buffer_size": 128, "batch_size": 32,
        "num_passes": 1, "test_interval": 3, "test_episodes": 4,
    },
    "diagnostics": {
        "probe_interval": 2, "probe_size": 64, "trainability_every": 2, "trainability_steps": 3,
        "budget": None,  # the full schedule: tests check every probe (test_diagnostics_budget.py: the budget)
    },
}


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Restore torch's thread count after every test: ``train --threads`` and tiny-network tests
    set it process-wide, and a later in-process run with another count would sum its floats in
    another order than the subprocess it is compared with."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def interrupt_at(run: Any, epoch: int) -> None:
    """Train ``run`` (a ``Run``) until it is interrupted as the given epoch starts: a run killed
    mid-way, with the checkpoints it wrote before, for the resume tests."""
    run_epoch = run.run_epoch

    def interrupted(e: int) -> Any:
        if e == epoch:
            raise KeyboardInterrupt
        return run_epoch(e)

    run.run_epoch = interrupted
    with pytest.raises(KeyboardInterrupt):
        run.train()


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture
def write_config(tmp_path: Path):
    """write_config(extra: dict | None, text: str | None) -> path of a YAML config in tmp_path."""

    def _write(extra: dict[str, Any] | None = None, text: str | None = None, name: str = "cfg.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text if text is not None else yaml.safe_dump(merge(TINY, extra or {})))
        return path

    return _write


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tiny networks (a second thread only adds synchronisation on
    a busy machine), restored afterwards so later modules keep torch's default."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_gridworld(interventions: dict[str, Any], enc_type: str = "mlp", num_epochs: int = 3,
                   shift_points: tuple[int, ...] = (1,)) -> Any:
    """A seconds-long gridworld run configuration of ``interventions`` (validated), without
    diagnostics: 4 environment copies, 32-transition epochs of two 16-row minibatches."""
    from plasticity_lab.config import RunConfig
    from plasticity_lab.interventions import validate_interventions

    cfg = RunConfig.model_validate({
        "environment": {"name": "gridworld", "task": "gather_4", "env_copies": 4},
        "model": {"enc_type": enc_type, "h_size": 16},
        "ppo_trainer": {"num_epochs": num_epochs, "shift_points": list(shift_points), "buffer_size": 32,
                        "batch_size": 16, "num_passes": 1, "test_interval": 10, "test_episodes": 2},
        "diagnostics": {"enabled": False},
        "interventions": interventions,
    })
    cfg.interventions = validate_interventions(cfg)
    return cfg
