"""Environments: ProcGen, the gridworld gather testbed, Atari (ALE), MuJoCo and any Gymnasium
task, each a family of :mod:`plasticity_lab.envs.registry` behind one factory."""

from __future__ import annotations

from typing import Any

import numpy as np

from plasticity_lab.envs.registry import EnvSpec, env_spec, make_env
from plasticity_lab.envs.shifts import ShiftState

__all__ = ["EnvSpec", "env_spec", "make_env", "first_episodes", "evaluate"]


def first_episodes(policy: Any, env: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return and length of exactly the first episode of every env of ``env``.

    Taking one episode per env avoids the bias towards short episodes that collecting "the first
    N finished" would have; the episode cap bounds the loop. Finished envs repeat their last
    action (discrete or continuous alike) and are not run through the network.
    """
    n = env.num_envs
    returns = np.zeros(n, dtype=np.float32)
    lengths = np.zeros(n, dtype=np.int64)
    finished = np.zeros(n, dtype=bool)
    actions: np.ndarray | None = None
    obs = env.observe_current()
    while not finished.all():
        active = ~finished
        chosen = np.asarray(policy(obs[active]))
        if actions is None:
            actions = np.zeros((n, *chosen.shape[1:]), dtype=chosen.dtype)
        actions[active] = chosen
        result = env.step(actions)
        first_end = (result.terminated | result.truncated) & ~finished
        returns[first_end] = result.episode_return[first_end]
        lengths[first_end] = result.episode_length[first_end]
        finished |= first_end
        obs = result.obs
    return returns, lengths


def evaluate(policy: Any, cfg: Any, num_episodes: int, seed: int, shift: ShiftState | None) -> tuple[np.ndarray, np.ndarray]:
    """Returns/lengths of ``num_episodes`` complete episodes on the TEST levels/layouts (ProcGen,
    gridworld) or fresh seeds (ALE, Gymnasium), under ``shift``; returns are raw scores."""
    env = make_env(cfg, num_episodes, seed, train=False, shift=shift)
    try:
        return first_episodes(policy, env)
    finally:
        env.close()
