"""A tiny end-to-end run per new environment family (ALE, MuJoCo, Gymnasium discrete and
continuous, MinAtar): training with shifts, interventions, diagnostics, evaluation, checkpoint, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from plasticity_lab.cli import train_main
from plasticity_lab.config import StudyConfig
from plasticity_lab.experiment.checkpoint import load_checkpoint
from plasticity_lab.experiment.loading import load_agent
from plasticity_lab.experiment.runner import Run
from tests.conftest import TINY, merge

pytest.importorskip("gymnasium")

CONDITIONS = {
    "baseline": {},
    "methods": {"interventions.cchain": {}, "interventions.redo": {"every": 1, "tau": 0.5}, "interventions.inject": {}},
    "reset": {"interventions.shrink_perturb": {}},
}
SMALL = {"ppo_trainer": {"num_epochs": 4, "shift_points": [2], "buffer_size": 32, "batch_size": 16,
                         "test_interval": 2, "test_episodes": 2},
         "diagnostics": {"probe_interval": 1, "probe_size": 24, "trainability_every": 1, "trainability_steps": 2}}  # fmt: skip

FAMILIES = {
    "ale": {"environment": {"name": "ale", "task": "pong", "shift_type": "game", "env_copies": 2,
                            "ale": {"games": ["pong", "breakout"], "max_episode_frames": 120}},
            "model": {"enc_type": "nature", "h_size": 16}},
    "mujoco": {"environment": {"name": "mujoco", "task": "Hopper-v5", "shift_type": "friction", "env_copies": 2,
                               "mujoco": {"max_episode_steps": 10}},
               "model": {"enc_type": "mlp", "h_size": 16}},
    "gym_discrete": {"environment": {"name": "gymnasium", "task": "CartPole-v1", "shift_type": "shuffle", "env_copies": 2},
                     "model": {"enc_type": "mlp", "h_size": 16}},
    "gym_continuous": {"environment": {"name": "gymnasium", "task": "Pendulum-v1", "shift_type": "permute", "env_copies": 2,
                                       "gymnasium": {"normalize_obs": True, "normalize_reward": True, "max_episode_steps": 12}},
                       "model": {"enc_type": "mlp", "h_size": 16}},
    "minatar": {"environment": {"name": "minatar", "task": "space_invaders", "shift_type": "game", "env_copies": 2,
                                "minatar": {"games": ["space_invaders", "asterix", "seaquest"]}},
                "model": {"enc_type": "minatar", "h_size": 16}},
}  # fmt: skip


def family_config(family: str) -> dict:
    raw = merge(merge(TINY, SMALL), FAMILIES[family])
    raw["experiment"]["conditions"] = CONDITIONS
    if family == "ale":  # every ALE emulator takes ~0.5 s to load: fewer of them
        raw["diagnostics"]["probe_size"] = 8
        raw["experiment"]["conditions"] = {"methods": CONDITIONS["methods"]}
        raw["experiment"]["baseline"] = "methods"
    return raw


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_method_and_metric_runs(family, tmp_path: Path):
    if family == "ale":
        pytest.importorskip("ale_py")
    if family in ("mujoco", "minatar"):
        pytest.importorskip(family)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(family_config(family)))
    assert train_main(["-n", "t", "-p", str(cfg), "-o", str(tmp_path)]) == 0
    study = tmp_path / "results" / "t"
    for cond in family_config(family)["experiment"]["conditions"]:
        run = study / cond / "seed_0"
        assert (run / "DONE").exists()
        lines = (run / "diagnostics.csv").read_text().splitlines()
        assert len(lines) == 1 + 4  # a probe after every epoch
        header, last = lines[0].split(","), lines[-1].split(",")
        row = dict(zip(header, last))
        for key in ("policy_churn", "value_churn", "trainability_ratio", "dense/effective_rank"):
            assert row[key] not in ("", "nan"), (cond, key)
        assert 0.0 <= float(row["policy_churn"]) <= 1.0
        model = load_agent(run)
        assert model.continuous == (family in ("mujoco", "gym_continuous"))
    state = load_checkpoint(study / "methods" / "seed_0" / "checkpoints" / "latest.pt")
    assert state["shift_state"]["round"] == 1
    if family == "mujoco":
        assert 0.02 <= state["shift_state"]["friction"] <= 2.0 and state["shift_state"]["friction"] != 1.0
        # CleanRL defaults for MuJoCo: running observation statistics over every collected step
        assert float(state["model"]["obs_norm.count"]) == 4 * 32
        assert float(state["reward_scaler"]["moments"]["count"]) == 4 * 32
    if family in ("ale", "minatar"):
        assert state["shift_state"]["game"] == 1
    if family == "gym_continuous":  # the observation statistics follow the round's permutation
        assert state["model"]["obs_norm.order"].tolist() == state["shift_state"]["tile_perm"]


@pytest.mark.parametrize("family", ["mujoco", "gym_continuous"])
def test_resume_restores_statistics_and_restarts_episodes(family, tmp_path: Path):
    """(ALE's resume is covered by tests/test_ale.py: its emulators are slow to load.)"""
    if family == "mujoco":
        pytest.importorskip("mujoco")
    raw = family_config(family)
    raw["experiment"]["conditions"] = {"baseline": {}}
    cfg = StudyConfig(raw).condition("baseline")
    first = Run(cfg, tmp_path / "run", seed=0)
    for epoch in range(3):
        if epoch in cfg.ppo_trainer.shift_points:
            first.shift(0)
        first.run_epoch(epoch)
    first.save(3, 1.0)
    second = Run(cfg, tmp_path / "run", seed=0)
    state = second.load_resume_state()
    second.restore(state)
    assert second.start_epoch == 3 and second.member.shift_state == first.member.shift_state
    for key, value in first.member.model.state_dict().items():
        assert torch.equal(value, second.member.model.state_dict()[key]), key
    if first.member.reward_scaler is not None:
        assert torch.equal(first.member.reward_scaler.moments.var, second.member.reward_scaler.moments.var)
        assert not second.member.reward_scaler.returns.any()  # episodes restarted, so do their returns
    assert second.train(state) == "done"
    assert (tmp_path / "run" / "DONE").exists()


def test_continuous_config_errors_are_one_line(tmp_path, capsys):
    raw = family_config("gym_continuous")
    raw["environment"]["shift_type"] = "friction"
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert train_main(["-n", "t", "-p", str(cfg), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "environment.shift_type" in err and "'friction' does not apply" in err and "\n" not in err
    raw = family_config("gym_continuous")
    raw["model"]["enc_type"] = "conv64"
    cfg.write_text(yaml.safe_dump(raw))
    assert train_main(["-n", "t", "-p", str(cfg), "-o", str(tmp_path)]) == 2
    assert "does not fit environment gymnasium Pendulum-v1 (allowed: mlp)" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_missing_extra_is_a_config_error_naming_it(monkeypatch, tmp_path, capsys):
    from plasticity_lab.envs import registry

    real = registry.importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None if name == "mujoco" else real(name))
    cfg = tmp_path / "ant.yaml"
    cfg.write_text(yaml.safe_dump(family_config("mujoco")))
    assert train_main(["-n", "t", "-p", str(cfg), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "environment.name: environment 'mujoco' needs mujoco" in err and "plasticity-lab[mujoco]" in err
    assert not (tmp_path / "results").exists()
