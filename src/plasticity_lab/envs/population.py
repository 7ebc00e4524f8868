"""A population's environments: every member's vectorised environment, stepped as one.

The loop steps all members with one call and gets each member's :class:`StepResult`; member k's
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

from plasticity_lab.envs.base import StepResult


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

    def step(self, actions: np.ndarray, members: Sequence[int] | None = None) -> list[StepResult]:
        """One step of every env of ``members`` (default: all), ``actions[j]`` for member ``members[j]``."""
        members = range(self.members) if members is None else members
        return [self.envs[k].step(actions[j]) for j, k in enumerate(members)]

    def restart(self, members: Sequence[int]) -> None:
        for k in members:
            self.envs[k].restart()

    def close(self) -> None:
        for env in self.envs:
            env.close()
