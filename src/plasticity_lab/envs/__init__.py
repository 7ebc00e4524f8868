"""Environments: vectorised ProcGen and the gridworld gather testbed, behind one factory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plasticity_lab.envs.shifts import ShiftState

if TYPE_CHECKING:
    from plasticity_lab.config import EnvironmentConfig


def make_env(cfg: EnvironmentConfig, num_envs: int, seed: int, train: bool = True, shift: ShiftState | None = None) -> Any:
    """A vectorised env of the config's family (ProcgenVecEnv or GridGatherVecEnv)."""
    if cfg.name == "gridworld":
        from plasticity_lab.envs.gridworld import GridGatherVecEnv

        return GridGatherVecEnv(cfg.task, num_envs, seed, train, shift, size=cfg.grid_size, episode_steps=cfg.episode_steps)
    from plasticity_lab.envs.procgen import ProcgenVecEnv

    return ProcgenVecEnv(cfg.task, num_envs, seed, train, shift)


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


def first_episodes(policy: Any, env: Any) -> tuple[Any, Any]:
    """Return and length of exactly the first episode of every env of ``env``.

    Taking one episode per env avoids the bias towards short episodes that collecting "the first
    N finished" would have; the episode cap bounds the loop. Finished envs take action 0 and are
    not run through the network.
    """
    import numpy as np

    n = env.num_envs
    returns = np.zeros(n, dtype=np.float32)
    lengths = np.zeros(n, dtype=np.int64)
    finished = np.zeros(n, dtype=bool)
    actions = np.zeros(n, dtype=np.int64)
    obs = env.observe_current()
    while not finished.all():
        active = ~finished
        actions[active] = np.asarray(policy(obs[active]))
        result = env.step(actions)
        first_end = (result.terminated | result.truncated) & ~finished
        returns[first_end] = result.episode_return[first_end]
        lengths[first_end] = result.episode_length[first_end]
        finished |= first_end
        obs = result.obs
    return returns, lengths


def evaluate(policy: Any, cfg: EnvironmentConfig, num_episodes: int, seed: int, shift: ShiftState | None) -> tuple[Any, Any]:
    """Mean-able returns/lengths of ``num_episodes`` complete episodes on the TEST levels/layouts."""
    env = make_env(cfg, num_episodes, seed, train=False, shift=shift)
    try:
        return first_episodes(policy, env)
    finally:
        env.close()
