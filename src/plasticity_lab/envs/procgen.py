"""Vectorised ProcGen environment with the protocol of arXiv 2405.19153.

9 movement actions, action repeat 2, a -0.01 penalty per agent step, an episode cap with real
resets (200 steps, truncated; or the reference's 201 steps as a terminal), and the distribution
shifts of `shifts.py`. Per-step work is numpy-vectorised over environments so stepping stays
close to raw ProcGen speed.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import numpy as np

from plasticity_lab.envs.base import TIME_LIMITS, StepResult, finish_episodes
from plasticity_lab.envs.registry import EnvSpec
from plasticity_lab.envs.shifts import (
    FRAME_SHAPE,
    NUM_ACTIONS,
    NUM_TILES,
    ShiftState,
    distribution_mode,
    gather_pixels,
    level_range,
    map_actions,
    tile_index_map,
)

# Importing procgen pulls in gym, which prints an "unmaintained" notice to stderr.
with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from procgen import ProcgenGym3Env

GAMES = (
    "bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball", "fruitbot",
    "heist", "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot",
)  # fmt: skip
NOOP_ACTION = 4
STEP_PENALTY = 0.01
MAX_EPISODE_STEPS = 200


def parse_task(task: str) -> tuple[str, int]:
    """Split `GAME_K` into the game and its number of training levels K."""
    game, sep, count = task.rpartition("_")
    if not sep or game not in GAMES or not (count.isascii() and count.isdigit()) or int(count) <= 0:
        raise ValueError(
            f"invalid task {task!r}: expected GAME_K with K > 0 and GAME one of {', '.join(GAMES)}"
        )
    return game, int(count)


def spec(cfg: Any) -> EnvSpec:
    """ProcGen's fixed 64x64 frames and 9 actions; K training levels from the task name."""
    _, k = parse_task(cfg.task)
    return EnvSpec(
        obs_shape=FRAME_SHAPE, obs_dtype="uint8", num_actions=NUM_ACTIONS, continuous=False,
        shift_types=("permute", "shuffle", "window", "expand", "difficulty", "none"),
        encoders=("conv64", "nature"), num_tiles=NUM_TILES, num_levels=k,
    )  # fmt: skip


def make(cfg: Any, num_envs: int, seed: int, train: bool, shift: ShiftState | None) -> ProcgenVecEnv:
    return ProcgenVecEnv(cfg.task, num_envs, seed, train, shift, time_limit=cfg.time_limit)


def draw_rand_seed(rng: np.random.Generator) -> int:
    """ProcGen seed drawn from the wrapper's Generator, so every rebuild/reset is reproducible."""
    return int(rng.integers(0, 2**31 - 1))


class ProcgenVecEnv:
    """`num_envs` ProcGen episodes of one task stepped together, under a ShiftState."""

    num_actions = NUM_ACTIONS
    num_tiles = NUM_TILES
    obs_shape = FRAME_SHAPE

    def __init__(
        self,
        task: str,
        num_envs: int,
        seed: int,
        train: bool = True,
        shift: ShiftState | None = None,
        time_limit: str = "truncate",
    ) -> None:
        if num_envs <= 0:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        if time_limit not in TIME_LIMITS:
            raise ValueError(f"time_limit must be one of {', '.join(TIME_LIMITS)}, got {time_limit!r}")
        self.time_limit = time_limit
        self.task = task
        self.game, self.num_levels = parse_task(task)
        self.num_envs = num_envs
        self.train = train
        self._rng = np.random.default_rng(seed)
        self._env: Any = None
        self._configure(ShiftState() if shift is None else shift)
        self._rebuild()

    # ------------------------------------------------------------------ configuration

    @property
    def shift(self) -> ShiftState:
        return self._shift

    @property
    def distribution_mode(self) -> str:
        return self._mode

    @property
    def level_range(self) -> tuple[int, int]:
        """(start_level, num_levels) the underlying ProcGen env samples from."""
        return self._start_level, self._level_count

    def current_level_seeds(self) -> np.ndarray:
        """ProcGen level seed of each env's current episode (diagnostics; loops over envs)."""
        return np.array([info["level_seed"] for info in self._env.get_info()], dtype=np.int64)

    def _configure(self, state: ShiftState) -> bool:
        """Adopt `state`; True when the level distribution changed and envs must be rebuilt."""
        start, count = level_range(self.num_levels, state, self.train)
        mode = distribution_mode(state)
        changed = self._env is None or (start, count, mode) != self.level_range + (self._mode,)
        self._shift = state
        self._start_level, self._level_count, self._mode = start, count, mode
        self._index_map = None if state.tile_perm is None else tile_index_map(state.tile_perm)
        return changed

    def _make(self, num: int) -> Any:
        env = ProcgenGym3Env(
            num=num,
            env_name=self.game,
            num_levels=self._level_count,
            start_level=self._start_level,
            distribution_mode=self._mode,
            use_backgrounds=True,
            restrict_themes=False,
            paint_vel_info=True,
            rand_seed=draw_rand_seed(self._rng),
        )
        # gym3 gives every env its own cffi library whose C functions are looked up on first use
        # under the FFI's one non-reentrant lock. An unclosed env finalised by the garbage
        # collector while another env is being built (lock held) would look up libenv_close under
        # that lock and hang the process for good (it hung CI). Looked up now, a later close
        # needs no lock.
        env._c_lib.libenv_close  # noqa: B018 (the lookup caches the function)
        return env

    def _rebuild(self) -> None:
        """Fresh episodes from the current level distribution."""
        if self._env is not None:
            self._env.close()
        self._env = self._make(self.num_envs)
        self._raw_obs = self._env.observe()[1]["rgb"]
        self._ep_len = np.zeros(self.num_envs, dtype=np.int64)
        self._ep_ret = np.zeros(self.num_envs, dtype=np.float64)

    def apply_shift(self, state: ShiftState) -> None:
        """Frame/action remaps act at once; level or difficulty changes restart all episodes."""
        if self._configure(state):
            self._rebuild()

    def restart(self) -> None:
        """A fresh episode in every env (episode-based collection starts every batch this way)."""
        self._rebuild()

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    # ------------------------------------------------------------------ stepping

    def _present(self, raw: np.ndarray) -> np.ndarray:
        """What the agent sees: tile-permuted, and never an alias of internal buffers."""
        return raw.copy() if self._index_map is None else gather_pixels(raw, self._index_map)

    def observe_current(self) -> np.ndarray:
        return self._present(self._raw_obs)

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"expected {self.num_envs} integer actions, got {actions.shape}")
        if actions.min() < 0 or actions.max() >= NUM_ACTIONS:
            raise ValueError(f"actions must lie in [0, {NUM_ACTIONS})")
        env_actions = map_actions(actions, self._shift.action_perm).astype(np.int32)

        # Action repeat 2. An env whose episode ends on frame 1 idles (no-op) on frame 2, and
        # that frame's reward belongs to the next episode, so it is dropped.
        self._env.act(env_actions)
        reward_1, _, ended_1 = self._env.observe()
        self._env.act(np.where(ended_1, NOOP_ACTION, env_actions).astype(np.int32))
        reward_2, obs, ended_2 = self._env.observe()
        reward = (reward_1 + np.where(ended_1, 0.0, reward_2) - STEP_PENALTY).astype(np.float32)
        raw = obs["rgb"]

        terminated = ended_1 | ended_2
        self._ep_len += 1
        self._ep_ret += reward
        if self.time_limit == "terminal":
            capped = ~terminated & (self._ep_len > MAX_EPISODE_STEPS)
            terminated = terminated | capped
            truncated = np.zeros_like(capped)
        else:
            capped = truncated = ~terminated & (self._ep_len >= MAX_EPISODE_STEPS)
        done = terminated | truncated
        episode_return, episode_length = finish_episodes(self._ep_len, self._ep_ret, done)

        final_obs = self._present(raw) if truncated.any() else None
        if capped.any():  # ProcGen resets only the episodes it ended itself
            self._reset_envs(np.flatnonzero(capped), raw)
        self._raw_obs = raw
        return StepResult(
            obs=self._present(raw),
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            final_obs=final_obs,
            episode_return=episode_return,
            episode_length=episode_length,
        )

    def _reset_envs(self, idx: np.ndarray, raw: np.ndarray) -> None:
        """Really reset envs `idx` (gym3 has no per-env reset): transplant fresh envs' states."""
        fresh = self._make(len(idx))
        states = fresh.callmethod("get_state")
        raw[idx] = fresh.observe()[1]["rgb"]
        fresh.close()
        for env_idx, state in zip(idx.tolist(), states):
            # Per-env C call: BaseProcgenEnv.set_state would reserialise every env in the batch.
            self._env.call_c_func("set_state", env_idx, state, len(state))

    # ------------------------------------------------------------------ checkpointing

    def get_state(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly in a new instance."""
        return {
            "task": self.task,
            "train": self.train,
            "num_envs": self.num_envs,
            "procgen_states": list(self._env.callmethod("get_state")),
            "episode_length": self._ep_len.copy(),
            "episode_return": self._ep_ret.copy(),
            "rng_state": self._rng.bit_generator.state,
            "raw_obs": self._raw_obs.copy(),
            "shift": self._shift.to_dict(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        mine = (self.task, self.train, self.num_envs)
        theirs = (state["task"], state["train"], state["num_envs"])
        if mine != theirs:
            raise ValueError(f"state is for (task, train, num_envs)={theirs}, this env is {mine}")
        if self._configure(ShiftState.from_dict(state["shift"])):
            # The new env's own rand_seed is irrelevant: every per-env state is overwritten.
            self._rebuild()
        self._env.callmethod("set_state", list(state["procgen_states"]))
        self._ep_len = np.array(state["episode_length"], dtype=np.int64)
        self._ep_ret = np.array(state["episode_return"], dtype=np.float64)
        self._rng.bit_generator.state = state["rng_state"]
        self._raw_obs = np.array(state["raw_obs"], dtype=np.uint8)
