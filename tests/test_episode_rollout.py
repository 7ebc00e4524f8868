"""Episode-based collection (``ppo_trainer.rollout: episodes``), the reference's loop: complete
episodes from every env copy, each from a reset, until at least buffer_size transitions; GAE per
episode with final value 0; shuffled minibatches with the partial last one skipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plasticity_lab.config import ConfigError, RunConfig, StudyConfig
from plasticity_lab.envs.procgen import MAX_EPISODE_STEPS, ProcgenVecEnv
from plasticity_lab.experiment.runner import Run
from plasticity_lab.interventions import Intervention
from plasticity_lab.interventions.base import Params
from tests.conftest import interrupt_at

pytestmark = pytest.mark.usefixtures("one_thread")

ENVS = {
    "procgen": ({"task": "coinrun_10"}, {"enc_type": "conv64"}),
    "gridworld": ({"name": "gridworld", "task": "gather_4", "episode_steps": 30}, {"enc_type": "conv11"}),
}


def make_run(tmp_path, family: str, **ppo) -> Run:
    env, model = ENVS[family]
    raw = {
        "environment": {**env, "env_copies": 3, "time_limit": "terminal", "shift_type": "none"},
        "model": {**model, "h_size": 16},
        "ppo_trainer": {"num_epochs": 3, "shift_points": [], "rollout": "episodes", "buffer_size": 96,
                        "batch_size": 32, "num_passes": 2, "test_interval": 100, "test_episodes": 2, **ppo},
        "diagnostics": {"enabled": False},
    }
    return Run(RunConfig.model_validate(raw), tmp_path / family, seed=3, device="cpu")


def reference_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """The reference's per-episode GAE (algos/ppo/trainer.py: gae(rewards, values, 0.0, dones)),
    transcribed with numpy floats: the final value is 0 and only the last step is done."""
    values = [*values, 0.0]
    dones = [0.0] * (len(rewards) - 1) + [1.0]
    gae, out = 0.0, []
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * values[t + 1] * (1 - dones[t]) - values[t]
        gae = delta + gamma * lam * (1 - dones[t]) * gae
        out.insert(0, gae)
    return out


@pytest.mark.parametrize("family", list(ENVS))
def test_a_batch_is_one_complete_episode_per_env_from_a_reset(tmp_path, family):
    run = make_run(tmp_path, family)
    for _ in range(2):  # the second batch starts while the envs are mid-episode after the first
        ro, (returns,), (lengths,) = run.collect_episode_batch([0])
        active = ro.active[:, 0].numpy()
        counts = active.sum(axis=0)
        for i in range(active.shape[1]):
            n = counts[i]
            assert active[:n, i].all() and not active[n:, i].any()  # one contiguous episode from row 0
            done = (ro.terminated | ro.truncated)[:, 0].numpy()[:, i]
            assert done[n - 1] and not done[: n - 1].any()  # complete, and only one
        # The env's own step counter ran from 0: every episode started at the batch's reset.
        assert sorted(lengths) == sorted(counts.tolist())
        assert len(returns) == active.shape[1]
        np.testing.assert_allclose(sorted(returns), sorted(ro.rewards[:, 0].sum(0).tolist()), rtol=1e-5)
        assert ro.active.shape[0] == counts.max()  # nobody ran longer than the longest episode


@pytest.mark.parametrize("family", list(ENVS))
def test_gae_per_episode_matches_the_reference_with_final_value_zero(tmp_path, family):
    run = make_run(tmp_path, family)
    ro, _, _ = run.collect_episode_batch([0])
    batch = ro.to_batch(run.ppo.gamma, run.ppo.gae_lambda)
    rewards, values, active = ro.rewards[:, 0], ro.values[:, 0], ro.active[:, 0]
    expected = np.zeros(rewards.shape, dtype=np.float64)
    for i in range(rewards.shape[1]):
        n = int(active[:, i].sum())
        expected[:n, i] = reference_gae(rewards[:n, i].tolist(), values[:n, i].tolist(), run.ppo.gamma, run.ppo.gae_lambda)
    assert not ro.truncated.any() and ro.terminated.sum() == rewards.shape[1]  # time_limit terminal
    np.testing.assert_allclose(batch.advantages[0].numpy(), expected[active.numpy()], rtol=1e-5, atol=1e-5)
    assert batch.lengths == [int(active.sum())]
    assert torch.equal(batch.values[0], values[active])


@pytest.mark.parametrize("family", list(ENVS))
def test_an_epoch_gathers_whole_batches_until_buffer_size(tmp_path, family):
    run = make_run(tmp_path, family, buffer_size=200)
    before = run.member.env_steps
    batch, _, (lengths,) = run.collect()
    (n,) = batch.lengths
    assert n >= 200 and n == sum(lengths)  # every stored transition is in a finished episode
    assert len(lengths) % 3 == 0  # whole batches of one episode per env copy
    assert sum(lengths[:-3]) < 200  # it stopped after the batch that filled the buffer
    assert run.member.env_steps - before == n  # env_steps counts what was really collected


def test_time_limit_terminal_ends_procgen_after_201_steps_with_no_bootstrap():
    env = ProcgenVecEnv("maze_5", 2, seed=0, time_limit="terminal")  # no-op in maze never ends an episode
    for t in range(1, MAX_EPISODE_STEPS + 1):
        res = env.step(np.full(2, 4))
        assert not (res.terminated | res.truncated).any(), t
    res = env.step(np.full(2, 4))  # the reference's `steps > 200`: agent step 201 ends it
    assert res.terminated.all() and not res.truncated.any() and res.final_obs is None
    assert res.episode_length.tolist() == [MAX_EPISODE_STEPS + 1] * 2
    for _ in range(MAX_EPISODE_STEPS):  # really reset: a fresh 201-step episode follows
        assert not env.step(np.full(2, 4)).terminated.any()


class MinibatchSpy(Intervention):
    """Records the size of every minibatch the update trains on."""

    name = "spy"

    def __init__(self, model):
        super().__init__(Params(), model, None)
        self.sizes: list[int] = []

    def loss(self, model, ctx):
        self.sizes.append(ctx.obs.shape[0])


def test_update_skips_the_partial_last_minibatch(tmp_path):
    run = make_run(tmp_path, "gridworld", buffer_size=70)
    batch, _, _ = run.collect()
    (n,) = batch.lengths
    assert n % 32, "pick a seed whose buffer is not a multiple of batch_size"
    spy = MinibatchSpy(run.member.model)
    run.member.interventions.append(spy)
    run.update(batch)
    assert spy.sizes == [32] * (2 * (n // 32))  # num_passes 2, only full minibatches


def test_episode_rollout_relaxes_the_divisibility_rules_only_for_itself():
    base = {"environment": {"env_copies": 11}, "ppo_trainer": {"buffer_size": 1024, "batch_size": 64}}
    with pytest.raises(ConfigError, match="env_copies 11 with rollout: fixed"):
        StudyConfig(base, "x.yaml")
    ok = StudyConfig({**base, "ppo_trainer": {**base["ppo_trainer"], "rollout": "episodes"}}, "x.yaml")
    assert ok.base.ppo_trainer.rollout == "episodes"
    with pytest.raises(ConfigError, match="ppo_trainer.rollout"):
        StudyConfig({"ppo_trainer": {"rollout": "whole"}}, "x.yaml")


def test_gridworld_episode_run_resumes_bit_exactly_from_a_checkpoint(tmp_path):
    """In-process companion of test_training's SIGKILL test (which covers ProcGen): a run stopped
    after its checkpoint at epoch 2 and resumed writes the uninterrupted run's metrics."""
    import csv

    def rows(path):
        with open(path, newline="") as handle:
            return [{k: v for k, v in r.items() if k not in ("wall_time", "steps_per_s")} for r in csv.DictReader(handle)]

    env, model = ENVS["gridworld"]
    raw = {
        "experiment": {"save_freq": 2},
        "environment": {**env, "env_copies": 2, "time_limit": "terminal"},  # permute: round 1 permuted
        "model": {**model, "h_size": 16},
        "ppo_trainer": {"num_epochs": 5, "shift_points": [3], "rollout": "episodes", "buffer_size": 70,
                        "batch_size": 16, "num_passes": 1, "test_interval": 2, "test_episodes": 2},
        "diagnostics": {"probe_interval": 2, "probe_size": 32, "trainability_every": 0},
    }
    cfg = RunConfig.model_validate(raw)
    for name in ("full", "cut"):
        (tmp_path / name).mkdir()
    Run(cfg, tmp_path / "full", seed=0, device="cpu").train()

    stopped = Run(cfg, tmp_path / "cut", seed=0, device="cpu")
    interrupt_at(stopped, 3)  # dies mid-run, after the checkpoint written at the end of epoch 1
    resumed = Run(cfg, tmp_path / "cut", seed=0, device="cpu")
    state = resumed.load_resume_state()
    assert state[0]["next_epoch"] == 3  # shift point 3: saved after epoch 2
    resumed.train(state)
    full, cut = rows(tmp_path / "full" / "metrics.csv"), rows(tmp_path / "cut" / "metrics.csv")
    assert [r["epoch"] for r in cut] == ["0", "1", "2", "3", "4"] and cut == full


def test_continuous_actions_and_reward_scaling_collect_whole_episodes(tmp_path):
    """The reference's collection on a continuous-action task: every env's first episode from a
    reset (Pendulum: 200 steps, truncated and bootstrapped), Gaussian actions kept as vectors, and
    the reward scaler fed only the steps that are experience."""
    pytest.importorskip("gymnasium")
    raw = {
        "environment": {"name": "gymnasium", "task": "Pendulum-v1", "env_copies": 2, "shift_type": "none",
                        "gymnasium": {"normalize_reward": True, "max_episode_steps": 30}},
        "model": {"enc_type": "mlp", "h_size": 16},
        "ppo_trainer": {"num_epochs": 2, "shift_points": [], "rollout": "episodes", "buffer_size": 70,
                        "batch_size": 16, "num_passes": 1, "test_interval": 100, "test_episodes": 2},
        "diagnostics": {"enabled": False},
    }
    run = Run(RunConfig.model_validate(raw), tmp_path / "pendulum", seed=1, device="cpu")
    batch, _, (lengths,) = run.collect()
    assert lengths == [30, 30, 30, 30]  # two batches of one 30-step episode per env: >= 70 stored
    assert batch.lengths == [120] and run.member.env_steps == 120
    assert batch.actions.shape == (1, 120, 1) and batch.actions.dtype == torch.float32
    assert float(run.member.reward_scaler.moments.count) == pytest.approx(120, abs=1e-3)  # only experience steps
    (stats,) = run.update(batch)
    assert np.isfinite(stats["p_loss"]) and np.isfinite(stats["v_loss"])


def test_episode_rollout_is_a_config_error_on_ale():
    pytest.importorskip("ale_py")
    raw = {"environment": {"name": "ale", "task": "pong"}, "model": {"enc_type": "nature"},
           "ppo_trainer": {"rollout": "episodes"}}
    with pytest.raises(ValueError, match="rollout: 'episodes' does not apply to ale"):
        RunConfig.model_validate(raw)


@pytest.mark.parametrize("family", list(ENVS))
def test_frozen_conv_weights_leave_training_and_evaluation_bit_identical(tmp_path, family, monkeypatch):
    """Collection and evaluation run with frozen channels-last conv weights; the epochs' metrics,
    the weights after them and the test returns equal those of a loop without them."""
    import contextlib

    from plasticity_lab.experiment import runner
    from plasticity_lab.nets import layers

    used = []
    frozen_weight = layers._frozen_weight
    monkeypatch.setattr(layers, "_frozen_weight", lambda *a: used.append(frozen_weight(*a)) or used[-1])

    def train(root):
        run = make_run(root, family)
        rows = [run.run_epoch(epoch) for epoch in (1, 2)]
        return rows, run.evaluate(0), [p.detach().clone() for p in run.member.model.parameters()]

    frozen = train(tmp_path / "frozen")
    assert any(weight is not None for weight in used)  # the copies were used
    monkeypatch.setattr(runner, "frozen_conv_weights", lambda modules: contextlib.nullcontext())
    plain = train(tmp_path / "plain")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "steps_per_s"} for row in rows for r in row]  # noqa: E731
    assert strip(frozen[0]) == strip(plain[0]) and frozen[1] == plain[1]
    assert all(torch.equal(a, b) for a, b in zip(frozen[2], plain[2]))
