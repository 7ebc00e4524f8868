"""bench/bench_reference.py gives the reference code our config's protocol, and only the one it has."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from plasticity_lab.config import load_study

SPEC = importlib.util.spec_from_file_location("bench_reference", Path(__file__).parents[1] / "bench" / "bench_reference.py")
bench_reference = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench_reference)


def test_the_reference_runs_the_quick_configs_protocol_without_tests():
    cfg = load_study("hyperparams_quick.yaml").condition("baseline")
    got = bench_reference.reference_overrides(cfg)
    assert got["environment.env_copies"] == 11 and got["environment.task"] == "coinrun_100"
    assert got["ppo_trainer.shift_points"] == [1000, 2000] and got["ppo_trainer.num_epochs"] == 3000
    assert (got["ppo_trainer.buffer_size"], got["ppo_trainer.batch_size"], got["ppo_trainer.num_passes"]) == (1024, 64, 3)
    assert (got["model.h_size"], got["model.lr"], got["ppo_trainer.lambda"]) == (256, 5e-4, 0.95)
    assert got["model.adapt_info"] == ["none", None]  # its baseline condition
    assert got["ppo_trainer.test_interval"] > cfg.ppo_trainer.num_epochs  # training time only


def test_a_protocol_the_reference_does_not_have_is_refused():
    cfg = load_study("hyperparams_quick.yaml").condition("baseline").model_copy(deep=True)
    cfg.ppo_trainer.rollout = "fixed"
    with pytest.raises(SystemExit, match="rollout episodes"):
        bench_reference.reference_overrides(cfg)
