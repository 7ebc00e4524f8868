"""Any Gymnasium environment (``environment.name: gymnasium``, ``environment.task`` an id such
as CartPole-v1 or Pendulum-v1), vectorised with ``gymnasium.vector.SyncVectorEnv``.

Observations must be a Box: a vector (float32 for the network) or an (H, W, C) uint8 image.
Actions are Discrete or a 1-D Box. A user's own environment works once registered: an id of the
form ``my_package.envs:MyEnv-v0`` makes Gymnasium import the module that registers it.

Continuous actions: the policy's Gaussian sample is mapped into the action box either by
clipping (``clip``, as CleanRL's ClipAction) or by ``low + (tanh(a) + 1) (high - low) / 2``
(``squash``); the stored action and its log-probability are those of the unbounded sample, which
is what the PPO ratio needs (the bounding is part of the environment's dynamics).

Shifts that apply to any environment: ``permute`` (vector entries, or 4x4 tiles of image
frames), ``shuffle`` (discrete actions, or the dimensions of a continuous action: actuator j
receives the policy's dimension ``perm[j]``) and ``none``. :mod:`plasticity_lab.envs.mujoco`
adds physics shifts on top of this class.

Gymnasium cannot save an environment mid-episode, so a resumed run restarts the episodes in
progress (README, "Resuming").
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from plasticity_lab.envs.base import StepResult, finish_episodes
from plasticity_lab.envs.registry import EnvSpec
from plasticity_lab.envs.shifts import ShiftState, gather_image, image_tile_source, map_actions, permute_vector

SHIFTS = ("permute", "shuffle", "none")
VECTOR_ENCODERS = ("mlp",)
IMAGE_ENCODERS = ("nature", "conv64", "conv11", "mlp")
TILE = 4


@dataclass(frozen=True)
class GymSettings:
    """The options of ``environment.gymnasium`` / ``environment.mujoco`` this module reads."""

    task: str
    action_bounding: str
    max_episode_steps: int | None

    @classmethod
    def from_config(cls, cfg: Any, section: Any) -> GymSettings:
        return cls(task=cfg.task, action_bounding=section.action_bounding, max_episode_steps=section.max_episode_steps)


def build_one(settings: GymSettings) -> gymnasium.Env:
    kwargs = {} if settings.max_episode_steps is None else {"max_episode_steps": settings.max_episode_steps}
    try:
        return gymnasium.make(settings.task, **kwargs)
    except gymnasium.error.Error as err:
        raise ValueError(f"task {settings.task!r}: {str(err).splitlines()[0]}") from None
    except ModuleNotFoundError as err:
        raise ValueError(f"task {settings.task!r}: cannot import {err.name!r} (is its package installed?)") from None


@functools.lru_cache(maxsize=None)
def read_spaces(settings: GymSettings) -> tuple[spaces.Box, spaces.Space]:
    """Observation and action space of the task, checked to be ones the toolkit handles."""
    env = build_one(settings)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(obs_space, spaces.Box) or not (
        len(obs_space.shape) == 1 or (len(obs_space.shape) == 3 and obs_space.dtype == np.uint8)
    ):
        raise ValueError(
            f"task {settings.task!r}: observations must be a 1-D Box or an (H, W, C) uint8 image Box, got {obs_space}"
        )
    if isinstance(act_space, spaces.Box):
        if len(act_space.shape) != 1 or not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
            raise ValueError(f"task {settings.task!r}: continuous actions must be a bounded 1-D Box, got {act_space}")
    elif not isinstance(act_space, spaces.Discrete):
        raise ValueError(f"task {settings.task!r}: actions must be Discrete or a 1-D Box, got {act_space}")
    return obs_space, act_space


def gym_spec(settings: GymSettings, shift_types: tuple[str, ...]) -> EnvSpec:
    obs_space, act_space = read_spaces(settings)
    image = len(obs_space.shape) == 3
    continuous = isinstance(act_space, spaces.Box)
    if image:
        h, w = obs_space.shape[:2]
        tiles = (h // TILE) * (w // TILE) if h % TILE == 0 and w % TILE == 0 else 0
    else:
        tiles = obs_space.shape[0]
    if not tiles:
        shift_types = tuple(s for s in shift_types if s != "permute")
    return EnvSpec(
        resumes_mid_episode=False,
        obs_shape=tuple(int(d) for d in obs_space.shape), obs_dtype="uint8" if image else "float32",
        num_actions=int(act_space.shape[0]) if continuous else int(act_space.n), continuous=continuous,
        shift_types=shift_types, encoders=IMAGE_ENCODERS if image else VECTOR_ENCODERS, num_tiles=tiles,
        action_low=tuple(float(x) for x in act_space.low) if continuous else (),
        action_high=tuple(float(x) for x in act_space.high) if continuous else (),
    )  # fmt: skip


def spec(cfg: Any) -> EnvSpec:
    return gym_spec(GymSettings.from_config(cfg, cfg.gymnasium), SHIFTS)


def make(cfg: Any, num_envs: int, seed: int, train: bool, shift: ShiftState | None) -> GymVecEnv:
    return GymVecEnv(GymSettings.from_config(cfg, cfg.gymnasium), num_envs, seed, train, shift)


class GymVecEnv:
    """``num_envs`` copies of a Gymnasium task stepped together under a ShiftState."""

    shift_types = SHIFTS

    def __init__(self, settings: GymSettings, num_envs: int, seed: int, train: bool = True, shift: ShiftState | None = None) -> None:
        self.settings, self.num_envs, self.train = settings, num_envs, train
        self.spec = gym_spec(settings, self.shift_types)
        self.obs_shape = self.spec.obs_shape
        self.num_actions = self.spec.num_actions
        self.num_tiles = self.spec.num_tiles
        self.continuous = self.spec.continuous
        self._low = np.asarray(self.spec.action_low, dtype=np.float64)
        self._high = np.asarray(self.spec.action_high, dtype=np.float64)
        self.rng = np.random.default_rng(seed)
        self.env = SyncVectorEnv([functools.partial(build_one, settings) for _ in range(num_envs)], autoreset_mode=AutoresetMode.SAME_STEP)
        self.shift = ShiftState()
        self._world: tuple[Any, ...] | None = None
        self.apply_shift(shift or ShiftState())

    # ------------------------------------------------------------------ configuration
    def world_of(self, state: ShiftState) -> tuple[Any, ...]:
        """The part of a shift state that changes the dynamics (subclasses add physics)."""
        return ()

    def configure_world(self, state: ShiftState) -> None:
        """Put the simulator into ``state``'s world (subclasses: physics edits)."""

    def apply_shift(self, state: ShiftState) -> None:
        """Permutations act at once; a change of the world restarts every episode."""
        if state.tile_perm is not None and len(state.tile_perm) != self.num_tiles:
            raise ValueError(f"tile_perm has {len(state.tile_perm)} entries, this observation needs {self.num_tiles}")
        if state.action_perm is not None and len(state.action_perm) != self.num_actions:
            raise ValueError(f"action_perm has {len(state.action_perm)} entries, this task needs {self.num_actions}")
        self.shift = state
        image = len(self.obs_shape) == 3
        self._tiles = (
            image_tile_source(self.obs_shape[0], self.obs_shape[1], state.tile_perm, TILE)
            if image and state.tile_perm is not None else None
        )  # fmt: skip
        world = self.world_of(state)
        if world != self._world:
            self._world = world
            self.configure_world(state)
            self.restart()

    def restart(self) -> None:
        """Fresh episodes in every env, seeded from this env's generator."""
        seeds = [int(s) for s in self.rng.integers(0, 2**31 - 1, self.num_envs)]
        obs, _ = self.env.reset(seed=seeds)
        self._raw = np.asarray(obs)
        self._ep_len = np.zeros(self.num_envs, dtype=np.int64)
        self._ep_ret = np.zeros(self.num_envs, dtype=np.float64)

    # ------------------------------------------------------------------ stepping
    def _present(self, raw: np.ndarray) -> np.ndarray:
        if len(self.obs_shape) == 3:
            return gather_image(np.array(raw, dtype=np.uint8), self._tiles)
        return permute_vector(np.asarray(raw, dtype=np.float32), self.shift.tile_perm).copy()

    def observe_current(self) -> np.ndarray:
        return self._present(self._raw)

    def env_actions(self, actions: np.ndarray) -> np.ndarray:
        """The simulator's actions for the policy's: permuted, then bounded (continuous)."""
        perm = self.shift.action_perm
        if not self.continuous:
            actions = np.asarray(actions)
            if actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer):
                raise ValueError(f"expected {self.num_envs} integer actions, got {actions.shape}")
            if actions.min() < 0 or actions.max() >= self.num_actions:
                raise ValueError(f"actions must lie in [0, {self.num_actions})")
            return map_actions(actions, perm).astype(np.int64)
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, self.num_actions) or not np.all(np.isfinite(actions)):
            raise ValueError(f"expected finite actions of shape {(self.num_envs, self.num_actions)}, got {actions.shape}")
        if perm is not None:
            actions = actions[:, perm]
        if self.settings.action_bounding == "squash":
            return self._low + (np.tanh(actions) + 1.0) * 0.5 * (self._high - self._low)
        return np.clip(actions, self._low, self._high)

    def step(self, actions: np.ndarray) -> StepResult:
        obs, reward, terminated, truncated, info = self.env.step(self.env_actions(actions))
        reward = np.asarray(reward, dtype=np.float64)
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool) & ~np.asarray(terminated, bool)
        self._ep_len += 1
        self._ep_ret += reward
        done = terminated | truncated
        episode_return, episode_length = finish_episodes(self._ep_len, self._ep_ret, done)
        final_obs = None
        if truncated.any():
            final = np.array(obs, copy=True)
            for i in np.flatnonzero(truncated):
                final[i] = info["final_obs"][i]
            final_obs = self._present(final)
        self._raw = np.asarray(obs)
        return StepResult(
            obs=self._present(self._raw), reward=reward.astype(np.float32), terminated=terminated,
            truncated=truncated, final_obs=final_obs, episode_return=episode_return, episode_length=episode_length,
        )  # fmt: skip

    # ------------------------------------------------------------------ checkpoints
    def get_state(self) -> dict[str, Any]:
        """Generator and shift only: :meth:`set_state` restarts the episodes in progress."""
        return {"family": type(self).__name__, "rng": self.rng.bit_generator.state, "shift": self.shift.to_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("family") != type(self).__name__:
            raise ValueError(f"environment state is for {state.get('family')}, this is {type(self).__name__}")
        # restart the episodes from the checkpointed generator, then rewind it: the next restart
        # (an episode-based batch) draws the seeds the uninterrupted run draws
        self.rng.bit_generator.state = state["rng"]
        self._world = None  # force the world to be configured and the episodes restarted
        self.apply_shift(ShiftState.from_dict(state["shift"]))
        self.rng.bit_generator.state = state["rng"]

    def close(self) -> None:
        self.env.close()
