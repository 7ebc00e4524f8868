"""What every vectorised environment of the toolkit returns and offers to the training loop.

The loop, evaluation and probe collection only use this interface, so a new environment family
is a new module implementing it plus a registry entry (:mod:`plasticity_lab.envs.registry`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from plasticity_lab.envs.shifts import ShiftState

TIME_LIMITS = ("truncate", "terminal")
"""Episode caps of ProcGen and the gridworld. truncate: the episode is cut at the cap (200 agent
steps on ProcGen, ``episode_steps`` on the gridworld) and the cut-off state's value bootstrapped;
terminal: the reference's caps, ending the episode as a terminal state (no bootstrap): ProcGen's
``steps > 200`` (201 agent steps), the gridworld's ``steps >= step_limit``."""


@dataclass(frozen=True)
class StepResult:
    """One agent step; episode_* are only meaningful where terminated | truncated.

    final_obs is None unless some env was truncated; then it is the whole batch of obs *before*
    the truncation resets (rows of non-truncated envs equal `obs`), for bootstrapping V.
    ``reward`` is the training reward (e.g. clipped on Atari); ``episode_return`` is the raw score.
    """

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    final_obs: np.ndarray | None
    episode_return: np.ndarray
    episode_length: np.ndarray


@dataclass(frozen=True)
class PopulationStep(StepResult):
    """One step of a population's environments: every :class:`StepResult` field stacked over
    the stepped members (leading dimension), and member j's own result as ``step[j]`` (made when
    asked for). The loop reads the stacked arrays where it treats every member alike, rather
    than a population splitting its step into K results for the loop to stack again (~0.1 ms of
    a K = 30 gridworld step). ``final_obs`` is None unless some env was truncated; then rows of
    envs that were not equal ``obs``."""

    @classmethod
    def stack(cls, results: Sequence[StepResult]) -> PopulationStep:
        """The members' results (one vectorised environment each) as one population step."""
        cut_off = any(r.final_obs is not None for r in results)
        return cls(
            obs=np.stack([r.obs for r in results]), reward=np.stack([r.reward for r in results]),
            terminated=np.stack([r.terminated for r in results]), truncated=np.stack([r.truncated for r in results]),
            final_obs=np.stack([r.obs if r.final_obs is None else r.final_obs for r in results]) if cut_off else None,
            episode_return=np.stack([r.episode_return for r in results]),
            episode_length=np.stack([r.episode_length for r in results]),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.obs)

    def __getitem__(self, j: int) -> StepResult:
        cut = self.truncated[j]
        return StepResult(
            obs=self.obs[j], reward=self.reward[j], terminated=self.terminated[j], truncated=cut,
            final_obs=self.final_obs[j] if self.final_obs is not None and cut.any() else None,
            episode_return=self.episode_return[j], episode_length=self.episode_length[j],
        )  # fmt: skip

    def __iter__(self) -> Iterator[StepResult]:
        return (self[j] for j in range(len(self)))


def finish_episodes(length: np.ndarray, ret: np.ndarray, done: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(episode_return, episode_length) of a step's ``done`` envs (0 elsewhere), read from the
    running tallies ``length`` and ``ret``, which restart at 0 for those envs (in place)."""
    episode_return = np.where(done, ret, 0.0).astype(np.float32)
    episode_length = np.where(done, length, 0)
    length[done] = 0
    ret[done] = 0.0
    return episode_return, episode_length


class VecEnv(Protocol):
    """The interface the loop uses (ProcgenVecEnv, GridGatherVecEnv, AleVecEnv, GymVecEnv ...).

    ``num_tiles`` is the length of the observation permutation of the ``permute`` shift;
    ``num_actions`` the length of the action permutation of ``shuffle`` (discrete actions, or
    action dimensions of continuous ones).
    """

    num_envs: int
    obs_shape: tuple[int, ...]
    num_actions: int
    num_tiles: int

    def observe_current(self) -> np.ndarray: ...

    def step(self, actions: np.ndarray) -> StepResult: ...

    def restart(self) -> None:
        """A fresh episode in every env (episode-based collection starts every batch this way)."""

    def apply_shift(self, state: ShiftState) -> None: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...
