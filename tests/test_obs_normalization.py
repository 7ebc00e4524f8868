"""Observation statistics under a ``permute`` shift: they belong to the environment's raw features,
so after a shift every presented input is standardised with its own feature's statistics
(normalising before permuting), in a single network and in a population's vmapped forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plasticity_lab.config import ModelConfig
from plasticity_lab.nets import build_model
from plasticity_lab.nets.normalization import EPS, RunningMoments
from plasticity_lab.nets.population import PopulationNetwork

pytest.importorskip("gymnasium")

from plasticity_lab.envs.gym_vector import GymSettings, GymVecEnv  # noqa: E402
from plasticity_lab.envs.shifts import initial_shift, next_shift  # noqa: E402


def play(env: GymVecEnv, steps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(presented, raw) observations of ``steps`` random steps of every env copy."""
    presented, raw = [env.observe_current()], [env._raw.copy()]
    for _ in range(steps):
        env.step(rng.uniform(-2.0, 2.0, (env.num_envs, env.num_actions)))
        presented.append(env.observe_current())
        raw.append(env._raw.copy())
    return np.concatenate(presented), np.concatenate(raw)


def test_after_a_permute_shift_each_feature_is_standardised_by_its_own_statistics():
    """Pendulum's raw features (cos, sin, angular velocity) have different scales. The loop's
    order: round 1 permuted from the start, statistics updated with what the env presents, a
    shift to another permutation, then the network standardises the new round's inputs. Each
    must equal its raw feature standardised by that feature's statistics (gathered in round 1
    under the other permutation); statistics kept per input position (before) standardise with
    another feature's. Round 2's update merges into the same raw features."""
    settings = GymSettings(task="Pendulum-v1", action_bounding="clip", max_episode_steps=50)
    rng = np.random.default_rng(0)
    state = initial_shift("permute", rng, num_tiles=3)
    env = GymVecEnv(settings, 4, seed=1, shift=state)
    model = build_model(ModelConfig(enc_type="mlp", h_size=8), 1, (3,), continuous=True)
    positional = RunningMoments((3,))
    model.follow_input_order(state.tile_perm)
    presented, raw_first = play(env, 60, rng)
    model.obs_norm.update(torch.from_numpy(presented))
    positional.update(torch.from_numpy(presented))

    state = next_shift(state, "permute", rng, k=1, num_tiles=3)
    env.apply_shift(state)
    model.follow_input_order(state.tile_perm)
    presented, raw = play(env, 20, rng)

    mean, var = raw_first.astype(np.float64).mean(0), raw_first.astype(np.float64).var(0)
    np.testing.assert_allclose(model.obs_norm.mean.numpy(), mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.obs_norm.var.numpy(), var, rtol=1e-9, atol=1e-12)
    own = (raw - mean) / np.sqrt(var + EPS)  # every raw feature by its own statistics
    expected = own[:, state.tile_perm]  # then presented in the round's order
    with torch.no_grad():
        got = model.obs_norm(torch.from_numpy(presented)).double().numpy()
    np.testing.assert_allclose(got, np.clip(expected, -10, 10), rtol=1e-5, atol=1e-5)
    by_position = (presented - positional.mean.numpy()) / np.sqrt(positional.var.numpy() + EPS)
    assert np.abs(by_position - expected).max() > 1.0  # what per-position statistics gave
    model.obs_norm.update(torch.from_numpy(presented))
    both = np.concatenate([raw_first, raw]).astype(np.float64)
    np.testing.assert_allclose(model.obs_norm.mean.numpy(), both.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.obs_norm.var.numpy(), both.var(0), rtol=1e-9, atol=1e-12)


def test_a_population_forward_uses_each_members_order():
    """Members with different statistics and orders, one vmapped forward: member k's rows are
    what member k's own module computes."""
    gen = torch.Generator().manual_seed(0)
    members = []
    for k, perm in enumerate(([2, 0, 3, 1], [1, 3, 0, 2])):
        torch.manual_seed(k)
        model = build_model(ModelConfig(enc_type="mlp", h_size=8), 2, (4,), continuous=True)
        model.obs_norm.update(torch.randn(64, 4, generator=gen) * torch.tensor([1.0, 5.0, 0.1, 2.0]) + k)
        model.follow_input_order(perm)
        members.append(model)
    net = PopulationNetwork(members)
    obs = torch.randn(2, 6, 4, generator=gen) * 3
    with torch.no_grad():
        head, value, _ = net(obs)
        for k, model in enumerate(members):
            own_head, own_value, _ = model(obs[k])
            torch.testing.assert_close(head[k], own_head)
            torch.testing.assert_close(value[k], own_value)
