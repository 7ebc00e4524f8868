"""Environments: ProcGen, the gridworld gather testbed, Atari (ALE), MuJoCo and any Gymnasium
task, each a family of :mod:`plasticity_lab.envs.registry` behind one factory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from plasticity_lab.envs.registry import EnvSpec, env_spec, make_env
from plasticity_lab.envs.shifts import ShiftState

__all__ = ["EnvSpec", "env_spec", "make_env", "first_episodes", "first_episode_steps", "evaluate"]


class EpisodeStep(NamedTuple):
    """One step of :func:`first_episode_steps`; rows where ``active`` is False are not part of
    any first episode (those envs had finished and repeated their last action)."""

    active: np.ndarray  # bool (n,): env still in its first episode when this step was taken
    obs: np.ndarray  # (n, *obs_shape) observations the step was taken from
    actions: np.ndarray  # (n,) discrete or (n, d) continuous
    result: Any  # the env's StepResult


def first_episode_steps(policy: Any, env: Any) -> Iterator[EpisodeStep]:
    """Step every env of ``env`` until each has finished its first episode (counted from its
    current state), yielding every step.

    ``policy(obs)`` gets only the observations of envs still in their first episode and returns
    their actions; finished envs repeat their last action (discrete or continuous alike) and are
    not run through the network. The episode cap bounds the loop.
    """
    n = env.num_envs
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
        yield EpisodeStep(active, obs, actions.copy(), result)
        finished |= (result.terminated | result.truncated) & active
        obs = result.obs


def first_episodes(policy: Any, env: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return and length of exactly the first episode of every env of ``env``.

    Taking one episode per env avoids the bias towards short episodes that collecting "the first
    N finished" would have.
    """
    returns = np.zeros(env.num_envs, dtype=np.float32)
    lengths = np.zeros(env.num_envs, dtype=np.int64)
    for step in first_episode_steps(policy, env):
        ended = (step.result.terminated | step.result.truncated) & step.active
        returns[ended] = step.result.episode_return[ended]
        lengths[ended] = step.result.episode_length[ended]
    return returns, lengths


def evaluate(policy: Any, cfg: Any, num_episodes: int, seed: int, shift: ShiftState | None) -> tuple[np.ndarray, np.ndarray]:
    """Returns/lengths of ``num_episodes`` complete episodes on the TEST levels/layouts (ProcGen,
    gridworld) or fresh seeds (ALE, Gymnasium), under ``shift``; returns are raw scores."""
    env = make_env(cfg, num_episodes, seed, train=False, shift=shift)
    try:
        return first_episodes(policy, env)
    finally:
        env.close()
