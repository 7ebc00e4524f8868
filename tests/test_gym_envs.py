"""Gymnasium and MuJoCo vector envs: physics shifts change the simulator, permutations, action
bounding, the registry's spec and missing-extra errors, resume."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

from plasticity_lab.envs import registry  # noqa: E402
from plasticity_lab.envs.gym_vector import GymSettings, GymVecEnv  # noqa: E402
from plasticity_lab.envs.mujoco import MujocoVecEnv  # noqa: E402
from plasticity_lab.envs.shifts import ShiftState, next_shift  # noqa: E402


def gs(task: str, bounding: str = "clip", steps: int | None = None) -> GymSettings:
    return GymSettings(task=task, action_bounding=bounding, max_episode_steps=steps)


def cfg(name: str, task: str) -> NS:
    section = NS(action_bounding="clip", max_episode_steps=None)
    return NS(name=name, task=task, shift_type="none", gymnasium=section, mujoco=section)


def rollout(env, actions: np.ndarray) -> np.ndarray:
    return np.stack([env.step(a).obs for a in actions])


def test_specs_from_the_registry():
    ant = registry.env_spec(cfg("mujoco", "Ant-v5"))
    assert ant.continuous and ant.num_actions == 8 and ant.obs_shape == (105,) and ant.obs_dtype == "float32"
    assert ant.action_low == (-1.0,) * 8 and {"friction", "mass", "gravity"} <= set(ant.shift_types)
    assert ant.encoders == ("mlp",) and ant.num_tiles == 105
    cart = registry.env_spec(cfg("gymnasium", "CartPole-v1"))
    assert not cart.continuous and cart.num_actions == 2 and set(cart.shift_types) == {"permute", "shuffle", "none"}
    with pytest.raises(ValueError, match="not a MuJoCo control task"):
        registry.env_spec(cfg("mujoco", "CartPole-v1"))
    with pytest.raises(ValueError, match="task 'NoSuchEnv-v0'"):
        registry.env_spec(cfg("gymnasium", "NoSuchEnv-v0"))


def test_missing_simulator_names_the_extra(monkeypatch):
    real = registry.importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None if name == "ale_py" else real(name))
    with pytest.raises(registry.MissingDependency, match=r"pip install 'plasticity-lab\[ale\]'"):
        registry.family("ale")
    with pytest.raises(ValueError, match="unknown environment 'atari'"):
        registry.family("atari")


@pytest.mark.parametrize("kind", ["friction", "mass", "gravity"])
def test_physics_shift_edits_every_model_and_changes_the_dynamics(kind):
    rng = np.random.default_rng(0)
    state = next_shift(ShiftState(), kind, rng, k=1, scale_range=(0.05, 0.2))
    factor = getattr(state, kind)
    assert 0.05 <= factor <= 0.2
    plain, same, shifted = (MujocoVecEnv(gs("Hopper-v5"), 2, seed=1) for _ in range(3))
    before = [m.geom_friction[:, 0].copy() for m, _ in plain.models()]
    mass, gravity = plain.models()[0][0].body_mass.copy(), plain.models()[0][0].opt.gravity.copy()
    shifted.apply_shift(state)
    same.apply_shift(ShiftState())  # no change: keeps its episodes
    for (model, _), orig in zip(shifted.models(), before):
        want = {
            "friction": (orig * factor, mass, gravity),
            "mass": (orig, mass * factor, gravity),
            "gravity": (orig, mass, gravity * factor),
        }[kind]
        assert np.allclose(model.geom_friction[:, 0], want[0])
        assert np.allclose(model.body_mass, want[1]) and np.allclose(model.opt.gravity, want[2])
    # The shift restarted the episodes with seeds from the env's generator: re-seed all three
    # identically, then the same actions give the same trajectory unless the physics differ.
    for env in (plain, same, shifted):
        env.rng = np.random.default_rng(7)
        env.restart()
    actions = rng.uniform(-1, 1, (40, 2, 3))
    a, b, c = rollout(plain, actions), rollout(same, actions), rollout(shifted, actions)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c, atol=1e-3)
    for env in (plain, same, shifted):
        env.close()


def test_slippery_ant_friction_reaches_every_contact_geom():
    env = MujocoVecEnv(gs("Ant-v5"), 1, seed=0)
    env.apply_shift(ShiftState(friction=0.02))
    model = env.models()[0][0]
    assert np.allclose(model.geom_friction[:, 0], 0.02)  # floor and legs (contacts take the max)
    env.close()


def test_observation_permutation_and_action_dimension_shuffle():
    rng = np.random.default_rng(0)
    perm_state = next_shift(ShiftState(), "permute", rng, k=1, num_tiles=11)
    plain, permuted = MujocoVecEnv(gs("Hopper-v5"), 2, seed=3), MujocoVecEnv(gs("Hopper-v5"), 2, seed=3, shift=perm_state)
    actions = rng.uniform(-1, 1, (10, 2, 3))
    a, b = rollout(plain, actions), rollout(permuted, actions)
    assert np.array_equal(b, a[..., perm_state.tile_perm]) and not np.array_equal(a, b)
    shuffle = next_shift(ShiftState(), "shuffle", rng, k=1, num_actions=3)
    shuffled, plain2 = MujocoVecEnv(gs("Hopper-v5"), 2, seed=4, shift=shuffle), MujocoVecEnv(gs("Hopper-v5"), 2, seed=4)
    # actuator j receives the policy's dimension perm[j]
    assert np.array_equal(rollout(shuffled, actions), rollout(plain2, actions[..., shuffle.action_perm]))
    for env in (plain, permuted, shuffled, plain2):
        env.close()


def test_discrete_gymnasium_shuffle():
    shuffle = ShiftState(action_perm=[1, 0])
    shuffled, plain = GymVecEnv(gs("CartPole-v1"), 3, seed=0, shift=shuffle), GymVecEnv(gs("CartPole-v1"), 3, seed=0)
    acts = np.random.default_rng(0).integers(0, 2, (30, 3))
    assert np.array_equal(rollout(shuffled, acts), rollout(plain, 1 - acts))
    with pytest.raises(ValueError, match="integer actions"):
        plain.step(np.zeros(3))


def test_action_bounding_clip_and_squash():
    clip, squash = GymVecEnv(gs("Pendulum-v1"), 2, seed=0), GymVecEnv(gs("Pendulum-v1", "squash"), 2, seed=0)
    a = np.array([[5.0], [-0.5]])
    assert np.allclose(clip.env_actions(a), [[2.0], [-0.5]])  # Pendulum's torque box is [-2, 2]
    assert np.allclose(squash.env_actions(a), 2.0 * np.tanh(a))
    with pytest.raises(ValueError, match="finite actions"):
        clip.step(np.array([[np.nan], [0.0]]))


def test_truncation_gives_the_final_observation():
    env = GymVecEnv(gs("Pendulum-v1", steps=5), 2, seed=0)
    for t in range(5):
        res = env.step(np.zeros((2, 1)))
    assert res.truncated.all() and not res.terminated.any() and res.episode_length.tolist() == [5, 5]
    assert res.final_obs is not None and not np.allclose(res.final_obs, res.obs)
    env.close()


def test_resume_restarts_episodes_deterministically():
    env = MujocoVecEnv(gs("Hopper-v5"), 2, seed=0)
    env.apply_shift(ShiftState(round=1, friction=0.5))
    for _ in range(5):
        env.step(np.zeros((2, 3)))
    state = env.get_state()
    a, b = MujocoVecEnv(gs("Hopper-v5"), 2, seed=11), MujocoVecEnv(gs("Hopper-v5"), 2, seed=12)
    a.set_state(state)
    b.set_state(state)
    assert a.shift == env.shift and np.allclose(a.models()[0][0].geom_friction[:, 0], env.models()[0][0].geom_friction[:, 0])
    assert np.array_equal(a.observe_current(), b.observe_current())
    assert a._ep_len.tolist() == [0, 0]  # the episodes in progress were restarted
    with pytest.raises(ValueError, match="environment state is for"):
        GymVecEnv(gs("Hopper-v5"), 2, seed=0).set_state(state)
