"""A population's environments: every member's vectorised environment, stepped as one.

The loop steps all members with one call and gets a :class:`PopulationStep` (each member's
results stacked; ``step[j]`` is member j's :class:`StepResult`); member k's
environments are exactly those a single run of its seed would build (its seeds, levels, shift
and random streams). A family may implement the population natively (the gridworld steps every
member's environments in one array program: ``make_population`` in its module); otherwise
:class:`EnvList` steps the members' environments one after another, which costs nothing extra
where a step is dominated by the simulator (ProcGen, ALE, MuJoCo).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from plasticity_lab.envs.base import PopulationStep


class EnvList:
    """Members' environments (one VecEnv each) behind the population interface."""

    def __init__(self, envs: Sequence[Any]) -> None:
        self.envs = list(envs)
        first = self.envs[0]
        self.members, self.num_envs = len(self.envs), first.num_envs
        self.obs_shape, self.num_actions, self.num_tiles = first.obs_shape, first.num_actions, first.num_tiles

    def member(self, k: int) -> Any:
        return self.envs[k]

    def observe_current(self) -> np.ndarray:
        """(K, num_envs, ...) observations of every member."""
        return np.stack([env.observe_current() for env in self.envs])

    def step(self, actions: np.ndarray, members: Sequence[int] | None = None) -> PopulationStep:
        """One step of every env of ``members`` (default: all), ``actions[j]`` for member ``members[j]``."""
        members = range(self.members) if members is None else members
        return PopulationStep.stack([self.envs[k].step(actions[j]) for j, k in enumerate(members)])

    def restart(self, members: Sequence[int]) -> None:
        for k in members:
            self.envs[k].restart()

    def close(self) -> None:
        for env in self.envs:
            env.close()


class MemberSubset:
    """Some members of a population environment, as a population environment of their own:
    member j here is member ``members[j]`` there. The loop uses it for the members still
    collecting an episode batch, and for the members left when one has failed (the others'
    environments are never stepped again, so each kept member's environments go on exactly as
    they would have)."""

    def __init__(self, envs: Any, members: Sequence[int]) -> None:
        self.envs, self.index = envs, list(members)
        self.members, self.num_envs = len(self.index), envs.num_envs
        self.obs_shape, self.num_actions, self.num_tiles = envs.obs_shape, envs.num_actions, envs.num_tiles

    def member(self, j: int) -> Any:
        return self.envs.member(self.index[j])

    def observe_current(self) -> np.ndarray:
        return self.envs.observe_current()[self.index]

    def step(self, actions: np.ndarray, members: Sequence[int] | None = None) -> PopulationStep:
        members = range(self.members) if members is None else members
        return self.envs.step(actions, [self.index[j] for j in members])

    def restart(self, members: Sequence[int]) -> None:
        self.envs.restart([self.index[j] for j in members])

    def close(self) -> None:
        self.envs.close()
