"""Environments: ProcGen, the gridworld gather testbed, Atari (ALE), MuJoCo and any Gymnasium
task, each a family of :mod:`plasticity_lab.envs.registry` behind one factory."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from plasticity_lab.envs.registry import EnvSpec, env_spec, make_env, make_population_env
from plasticity_lab.envs.shifts import ShiftState

__all__ = ["EnvSpec", "env_spec", "make_env", "make_population_env", "first_episodes", "first_episode_steps", "evaluate"]


class EpisodeStep(NamedTuple):
    """One step of :func:`first_episode_steps` over a population's environments (leading member
    dimension K); rows where ``active`` is False are not part of any first episode (those envs
    had finished and repeated their last action, or their member had finished: that member's
    environments were not stepped)."""

    active: np.ndarray  # bool (K, n): env still in its first episode when this step was taken
    obs: np.ndarray  # (K, n, *obs_shape) observations the step was taken from
    actions: np.ndarray  # (K, n) discrete or (K, n, d) continuous
    stepped: np.ndarray  # the members stepped (ascending indices)
    step: Any  # their PopulationStep: row j is member stepped[j]'s

    @property
    def results(self) -> list[Any]:
        """Each member's StepResult, or None where the member was not stepped."""
        results: list[Any] = [None] * len(self.active)
        for j, k in enumerate(self.stepped):
            results[k] = self.step[j]
        return results


def first_episode_steps(policy: Any, envs: Any) -> Iterator[EpisodeStep]:
    """Step every env of every member of the population environment ``envs``
    (:mod:`plasticity_lab.envs.population`) until each has finished its first episode (counted
    from its current state), yielding every step.

    ``policy(obs, active)`` gets the observations of all members (K, n, ...) and which envs are
    still in their first episode (bool (K, n)) and returns actions for all rows; rows of finished
    envs are ignored (those envs repeat their last action, discrete or continuous alike, and are
    not part of the data). A member whose envs have all finished is not
    stepped again. The episode cap bounds the loop.
    """
    finished = np.zeros((envs.members, envs.num_envs), dtype=bool)
    actions: np.ndarray | None = None
    obs = envs.observe_current()
    while not finished.all():
        active = ~finished
        chosen = np.asarray(policy(obs, active))
        if actions is None:
            actions = np.zeros_like(chosen)
        actions[active] = chosen[active]
        stepping = np.flatnonzero(active.any(axis=1))
        step = envs.step(actions[stepping], stepping.tolist())
        yield EpisodeStep(active, obs, actions.copy(), stepping, step)
        obs = obs.copy()
        finished[stepping] |= (step.terminated | step.truncated) & active[stepping]
        obs[stepping] = step.obs


def first_episodes(policy: Any, envs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return and length (K, n) of exactly the first episode of every env of every member.

    Taking one episode per env avoids the bias towards short episodes that collecting "the first
    N finished" would have.
    """
    returns = np.zeros((envs.members, envs.num_envs), dtype=np.float32)
    lengths = np.zeros((envs.members, envs.num_envs), dtype=np.int64)
    for step in first_episode_steps(policy, envs):
        res, members = step.step, step.stepped  # res.obs: after the step (step.obs: before it)
        ended = (res.terminated | res.truncated) & step.active[members]
        returns[members] = np.where(ended, res.episode_return, returns[members])
        lengths[members] = np.where(ended, res.episode_length, lengths[members])
    return returns, lengths


def evaluate(
    policy: Any, cfg: Any, num_episodes: int, seeds: Sequence[int], shifts: Sequence[ShiftState | None]
) -> tuple[np.ndarray, np.ndarray]:
    """Returns/lengths (K, num_episodes) of ``num_episodes`` complete episodes per member on the
    TEST levels/layouts (ProcGen, gridworld) or fresh seeds (ALE, Gymnasium), member k with its
    own ``seeds[k]`` under ``shifts[k]``; returns are raw scores. ``policy`` as in
    :func:`first_episode_steps`."""
    envs = make_population_env(cfg, num_episodes, seeds, train=False, shifts=shifts)
    try:
        return first_episodes(policy, envs)
    finally:
        envs.close()
