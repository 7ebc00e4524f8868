"""Environments: vectorised ProcGen and the gridworld gather testbed, behind one factory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from plasticity_lab.envs.shifts import ShiftState

if TYPE_CHECKING:
    from plasticity_lab.config import EnvironmentConfig


def make_env(cfg: EnvironmentConfig, num_envs: int, seed: int, train: bool = True, shift: ShiftState | None = None) -> Any:
    """A vectorised env of the config's family (ProcgenVecEnv or GridGatherVecEnv)."""
    if cfg.name == "gridworld":
        from plasticity_lab.envs.gridworld import GridGatherVecEnv

        return GridGatherVecEnv(
            cfg.task, num_envs, seed, train, shift, size=cfg.grid_size, episode_steps=cfg.episode_steps,
            time_limit=cfg.time_limit,
        )
    from plasticity_lab.envs.procgen import ProcgenVecEnv

    return ProcgenVecEnv(cfg.task, num_envs, seed, train, shift, time_limit=cfg.time_limit)


def env_spec(cfg: EnvironmentConfig) -> tuple[tuple[int, int, int], int]:
    """(observation shape HWC, number of actions) without building an environment."""
    if cfg.name == "gridworld":
        from plasticity_lab.envs.gridworld import GRID_ACTIONS

        return (cfg.grid_size, cfg.grid_size, 3), GRID_ACTIONS
    from plasticity_lab.envs.shifts import FRAME_SHAPE, NUM_ACTIONS

    return FRAME_SHAPE, NUM_ACTIONS


def num_levels(cfg: EnvironmentConfig) -> int:
    """K of the task name (ProcGen levels or gridworld layouts in the training range)."""
    if cfg.name == "gridworld":
        from plasticity_lab.envs.gridworld import parse_gather_task

        return parse_gather_task(cfg.task)
    from plasticity_lab.envs.procgen import parse_task

    return parse_task(cfg.task)[1]


class EpisodeStep(NamedTuple):
    """One step of :func:`first_episode_steps`; rows where ``active`` is False are not part of
    any first episode (those envs had finished and took action 0)."""

    active: Any  # bool (n,): env still in its first episode when this step was taken
    obs: Any  # (n, H, W, 3) observations the step was taken from
    actions: Any  # int64 (n,)
    result: Any  # the env's StepResult


def first_episode_steps(policy: Any, env: Any) -> Iterator[EpisodeStep]:
    """Step every env of ``env`` until each has finished its first episode (counted from its
    current state), yielding every step.

    ``policy(frames)`` gets only the frames of envs still in their first episode and returns their
    actions; finished envs wait (they take action 0 and are not run through the network). The
    episode cap bounds the loop.
    """
    n = env.num_envs
    finished = np.zeros(n, dtype=bool)
    obs = env.observe_current()
    while not finished.all():
        active = ~finished
        actions = np.zeros(n, dtype=np.int64)
        actions[active] = np.asarray(policy(obs[active]))
        result = env.step(actions)
        yield EpisodeStep(active, obs, actions, result)
        finished |= result.terminated | result.truncated
        obs = result.obs


def first_episodes(policy: Any, env: Any) -> tuple[Any, Any]:
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


def evaluate(policy: Any, cfg: EnvironmentConfig, num_episodes: int, seed: int, shift: ShiftState | None) -> tuple[Any, Any]:
    """Mean-able returns/lengths of ``num_episodes`` complete episodes on the TEST levels/layouts."""
    env = make_env(cfg, num_episodes, seed, train=False, shift=shift)
    try:
        return first_episodes(policy, env)
    finally:
        env.close()
