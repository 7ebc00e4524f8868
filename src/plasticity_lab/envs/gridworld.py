"""Vectorised gridworld gather task: the minute-scale testbed (in the spirit of the reference
paper's Neuro Nav gather experiments).

An agent on an N x N grid collects rewarding objects (+1) and avoids punishing ones (-1) in one
of K layouts (walls, objects and start cell drawn from the layout id). The observation is a small
RGB image (walls red, good objects green, bad objects blue, agent white). Every environment is
stepped at once with array operations; there is no per-environment Python loop.

The same shift types as ProcGen (``shifts.py``): ``permute`` shuffles the grid cells of the
image, ``shuffle`` the 4 actions, ``window``/``expand`` the layout range, ``difficulty`` doubles
the punishing objects; ``none`` changes nothing. Training layouts are [0, K), test layouts
[10000, 10000+K), as ProcGen levels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from plasticity_lab.envs.base import TIME_LIMITS, StepResult
from plasticity_lab.envs.registry import EnvSpec
from plasticity_lab.envs.shifts import ShiftState, level_range

GRID_ACTIONS = 4  # up, down, left, right
MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int64)
WALL_DENSITY = 0.12


def parse_gather_task(task: str) -> int:
    """``gather_K`` -> K (number of training layouts)."""
    match = re.fullmatch(r"gather_([1-9][0-9]*)", task)
    if not match:
        raise ValueError(f"gridworld task {task!r} must look like gather_K with K >= 1 (e.g. gather_20)")
    return int(match.group(1))


def spec(cfg: Any) -> EnvSpec:
    size = cfg.grid_size
    return EnvSpec(
        obs_shape=(size, size, 3), obs_dtype="uint8", num_actions=GRID_ACTIONS, continuous=False,
        shift_types=("permute", "shuffle", "window", "expand", "difficulty", "none"),
        encoders=("conv11", "mlp"), num_tiles=size * size, num_levels=parse_gather_task(cfg.task),
    )  # fmt: skip


def make(cfg: Any, num_envs: int, seed: int, train: bool, shift: ShiftState | None) -> GridGatherVecEnv:
    return GridGatherVecEnv(
        cfg.task, num_envs, seed, train, shift, size=cfg.grid_size, episode_steps=cfg.episode_steps,
        time_limit=cfg.time_limit,
    )  # fmt: skip


@dataclass(frozen=True)
class Layouts:
    """Walls, object values (+1 / -1 / 0) and start cell of a contiguous range of layout ids."""

    walls: np.ndarray  # bool (L, N, N)
    objects: np.ndarray  # int8 (L, N, N)
    start: np.ndarray  # int64 (L, 2)


def make_layouts(first: int, count: int, size: int, good: int, bad: int) -> Layouts:
    """Layout ``i`` depends only on (i, size, good, bad): the same id is the same layout in every
    run, so the train/test split and window/expand shifts are reproducible."""
    walls = np.zeros((count, size, size), dtype=bool)
    objects = np.zeros((count, size, size), dtype=np.int8)
    start = np.zeros((count, 2), dtype=np.int64)
    cells = size * size
    for j in range(count):  # once per shift, not per step
        rng = np.random.default_rng([first + j, size, good, bad])
        order = rng.permutation(cells)
        n_walls = int(WALL_DENSITY * cells)
        walls[j].flat[order[:n_walls]] = True
        objects[j].flat[order[n_walls : n_walls + good]] = 1
        objects[j].flat[order[n_walls + good : n_walls + good + bad]] = -1
        start[j] = divmod(int(order[n_walls + good + bad]), size)
    return Layouts(walls, objects, start)


class GridGatherVecEnv:
    """``num_envs`` gather episodes stepped together; the interface of ``ProcgenVecEnv``."""

    def __init__(
        self,
        task: str,
        num_envs: int,
        seed: int,
        train: bool = True,
        shift: ShiftState | None = None,
        size: int = 9,
        episode_steps: int = 50,
        good: int = 6,
        bad: int = 3,
        time_limit: str = "truncate",
    ) -> None:
        if time_limit not in TIME_LIMITS:
            raise ValueError(f"time_limit must be one of {', '.join(TIME_LIMITS)}, got {time_limit!r}")
        self.time_limit = time_limit
        self.task, self.num_envs, self.train = task, num_envs, train
        self.num_layouts = parse_gather_task(task)
        self.size, self.episode_steps, self.good, self.bad = size, episode_steps, good, bad
        self.num_actions = GRID_ACTIONS
        self.num_tiles = size * size
        self.obs_shape = (size, size, 3)
        self.rng = np.random.default_rng(seed)
        self.layout_idx = np.zeros(num_envs, dtype=np.int64)
        self.pos = np.zeros((num_envs, 2), dtype=np.int64)
        self.objects = np.zeros((num_envs, size, size), dtype=np.int8)
        self.steps = np.zeros(num_envs, dtype=np.int64)
        self.returns = np.zeros(num_envs, dtype=np.float32)
        self.apply_shift(shift or ShiftState())

    # ------------------------------------------------------------------ configuration
    def apply_shift(self, state: ShiftState) -> None:
        """Take the round's configuration; a new layout range or difficulty starts new episodes."""
        for name, perm, size in (("tile_perm", state.tile_perm, self.num_tiles), ("action_perm", state.action_perm, GRID_ACTIONS)):
            if perm is not None and len(perm) != size:
                raise ValueError(f"{name} has {len(perm)} entries, this grid needs {size}")
        first, count = level_range(self.num_layouts, state, self.train)
        bad = self.bad * (2 if state.hard else 1)
        key = (first, count, bad)
        rebuild = getattr(self, "_layout_key", None) != key
        self.shift = state
        self.cell_perm = state.tile_perm
        self.action_perm = state.action_perm
        if rebuild:
            self._layout_key = key
            self.layouts = make_layouts(first, count, self.size, self.good, bad)
            self._reset(np.arange(self.num_envs))

    def restart(self) -> None:
        """A fresh episode in every env (episode-based collection starts every batch this way)."""
        self._reset(np.arange(self.num_envs))

    def _reset(self, idx: np.ndarray) -> None:
        chosen = self.rng.integers(0, len(self.layouts.start), len(idx))
        self.layout_idx[idx] = chosen
        self.pos[idx] = self.layouts.start[chosen]
        self.objects[idx] = self.layouts.objects[chosen]
        self.steps[idx] = 0
        self.returns[idx] = 0.0

    # ------------------------------------------------------------------ observation
    def _render(self) -> np.ndarray:
        walls = self.layouts.walls[self.layout_idx]
        obs = np.zeros((self.num_envs, self.size, self.size, 3), dtype=np.uint8)
        obs[..., 0] = walls * 255
        obs[..., 1] = (self.objects > 0) * 255
        obs[..., 2] = (self.objects < 0) * 255
        obs[np.arange(self.num_envs), self.pos[:, 0], self.pos[:, 1]] = 255
        if self.cell_perm is not None:
            # one gather over the batch: output cell j shows input cell perm[j]
            flat = obs.reshape(self.num_envs, self.num_tiles, 3)
            obs = flat[:, self.cell_perm].reshape(obs.shape)
        return obs

    def observe_current(self) -> np.ndarray:
        return self._render()

    # ------------------------------------------------------------------ dynamics
    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions, dtype=np.int64)
        if actions.shape != (self.num_envs,) or actions.min() < 0 or actions.max() >= GRID_ACTIONS:
            raise ValueError(f"actions must be ({self.num_envs},) integers in [0, {GRID_ACTIONS})")
        if self.action_perm is not None:
            actions = self.action_perm[actions]
        target = self.pos + MOVES[actions]
        inside = np.all((target >= 0) & (target < self.size), axis=1)
        target = np.where(inside[:, None], target, self.pos)
        rows = np.arange(self.num_envs)
        blocked = self.layouts.walls[self.layout_idx, target[:, 0], target[:, 1]]
        self.pos = np.where(blocked[:, None], self.pos, target)
        reward = self.objects[rows, self.pos[:, 0], self.pos[:, 1]].astype(np.float32)
        self.objects[rows, self.pos[:, 0], self.pos[:, 1]] = 0
        self.steps += 1
        self.returns += reward
        terminated = ~np.any(self.objects > 0, axis=(1, 2))  # every good object collected
        capped = ~terminated & (self.steps >= self.episode_steps)
        if self.time_limit == "terminal":  # the reference gridworld: `steps >= step_limit` is a terminal
            terminated, truncated = terminated | capped, np.zeros_like(capped)
        else:
            truncated = capped
        done = terminated | truncated
        episode_return = np.where(done, self.returns, 0.0).astype(np.float32)
        episode_length = np.where(done, self.steps, 0)
        final_obs = self._render() if truncated.any() else None
        if done.any():
            self._reset(np.flatnonzero(done))
        return StepResult(
            obs=self._render(), reward=reward, terminated=terminated, truncated=truncated,
            final_obs=final_obs, episode_return=episode_return, episode_length=episode_length,
        )

    # ------------------------------------------------------------------ checkpoints
    def get_state(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state, "layout_idx": self.layout_idx.copy(), "pos": self.pos.copy(),
            "objects": self.objects.copy(), "steps": self.steps.copy(), "returns": self.returns.copy(),
            "shift": self.shift.to_dict(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.apply_shift(ShiftState.from_dict(state["shift"]))
        self.rng.bit_generator.state = state["rng"]
        for name in ("layout_idx", "pos", "objects", "steps", "returns"):
            getattr(self, name)[...] = state[name]

    def close(self) -> None:
        """Nothing to release (interface parity with ProcgenVecEnv)."""
