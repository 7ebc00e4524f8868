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

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from plasticity_lab.envs.base import TIME_LIMITS, PopulationStep, StepResult
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


def make_population(
    cfg: Any, num_envs: int, seeds: Sequence[int], train: bool, shifts: Sequence[ShiftState | None]
) -> GridGatherPopulation:
    """Every member's ``num_envs`` environments in one array program (see :class:`GridGatherPopulation`)."""
    return GridGatherPopulation(
        cfg.task, num_envs, seeds, train, shifts, size=cfg.grid_size, episode_steps=cfg.episode_steps,
        time_limit=cfg.time_limit,
    )  # fmt: skip


@dataclass(frozen=True)
class Layouts:
    """Walls, object values (+1 / -1 / 0) and start cell of a contiguous range of layout ids."""

    walls: np.ndarray  # bool (L, N, N)
    objects: np.ndarray  # int8 (L, N, N)
    start: np.ndarray  # int64 (L, 2)


@functools.lru_cache(maxsize=64)
def make_layouts(first: int, count: int, size: int, good: int, bad: int) -> Layouts:
    """Layout ``i`` depends only on (i, size, good, bad): the same id is the same layout in every
    run, so the train/test split and window/expand shifts are reproducible. Cached, read-only:
    every evaluation builds its test environments afresh, and drawing 20 layouts cost ~5% of an
    evaluation of a 30-member population."""
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
    for array in (walls, objects, start):
        array.flags.writeable = False  # shared by every environment built on this range
    return Layouts(walls, objects, start)


class GridGatherPopulation:
    """``num_envs`` gather episodes for each of K population members, stepped together.

    Member k's environments are rows ``[k * num_envs, (k + 1) * num_envs)`` of every state array;
    each member has its own random stream (its layout draws), shift state, cell and action
    permutation, so member k behaves exactly as a single environment built with ``seeds[k]``
    (:class:`GridGatherVecEnv` is a population of one). Members at the same round share their
    layouts (no copy); members on different layout ranges (while a shift reaches them one by
    one) are looked up in a concatenation.
    """

    def __init__(
        self,
        task: str,
        num_envs: int,
        seeds: Sequence[int],
        train: bool = True,
        shifts: Sequence[ShiftState | None] | None = None,
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
        self.members = len(seeds)
        self.num_layouts = parse_gather_task(task)
        self.size, self.episode_steps, self.good, self.bad = size, episode_steps, good, bad
        self.num_actions = GRID_ACTIONS
        self.num_tiles = size * size
        self.obs_shape = (size, size, 3)
        rows = self.members * num_envs
        self.rngs = [np.random.default_rng(seed) for seed in seeds]
        self.block = np.repeat(np.arange(self.members), num_envs)
        self.layout_idx = np.zeros(rows, dtype=np.int64)
        self.pos = np.zeros((rows, 2), dtype=np.int64)
        self.objects = np.zeros((rows, size, size), dtype=np.int8)
        self.steps = np.zeros(rows, dtype=np.int64)
        self.returns = np.zeros(rows, dtype=np.float32)
        self.shifts: list[ShiftState] = [ShiftState()] * self.members
        self.member_layouts: list[Layouts | None] = [None] * self.members
        self._keys: list[tuple | None] = [None] * self.members
        self.cell_perm: np.ndarray | None = None  # (K, cells), or None: no member permutes
        self.action_perm: np.ndarray | None = None  # (K, actions)
        shifts = shifts or [None] * self.members
        for k, state in enumerate(shifts):
            self.apply_shift(k, state or ShiftState())

    def rows(self, k: int) -> slice:
        return slice(k * self.num_envs, (k + 1) * self.num_envs)

    def member(self, k: int) -> GridGatherVecEnv:
        """Member ``k``'s environments as a VecEnv (views of this population's state)."""
        return GridGatherVecEnv.view(self, k)

    # ------------------------------------------------------------------ configuration
    def apply_shift(self, k: int, state: ShiftState) -> None:
        """Member ``k`` takes the round's configuration; a new layout range or difficulty starts
        its new episodes."""
        for name, perm, size in (("tile_perm", state.tile_perm, self.num_tiles), ("action_perm", state.action_perm, GRID_ACTIONS)):
            if perm is not None and len(perm) != size:
                raise ValueError(f"{name} has {len(perm)} entries, this grid needs {size}")
        first, count = level_range(self.num_layouts, state, self.train)
        bad = self.bad * (2 if state.hard else 1)
        key = (first, count, bad)
        self.shifts[k] = state
        self.cell_perm = self._set_perm(self.cell_perm, k, state.tile_perm, self.num_tiles)
        self.cell_shown_at = None if self.cell_perm is None else np.argsort(self.cell_perm, axis=1)  # input cell -> output cell
        self._every_gather: np.ndarray | None = None
        self.action_perm = self._set_perm(self.action_perm, k, state.action_perm, GRID_ACTIONS)
        if self._keys[k] != key:
            shared = next((self.member_layouts[j] for j in range(self.members) if self._keys[j] == key), None)
            self._keys[k] = key
            self.member_layouts[k] = shared or make_layouts(first, count, self.size, self.good, bad)
            self._index_layouts()
            self._reset(np.arange(self.rows(k).start, self.rows(k).stop))

    def _set_perm(self, current: np.ndarray | None, k: int, perm: np.ndarray | None, size: int) -> np.ndarray | None:
        if current is None:
            if perm is None:
                return None
            current = np.tile(np.arange(size), (self.members, 1))
        current[k] = np.arange(size) if perm is None else perm
        return current

    def _index_layouts(self) -> None:
        """The layouts every row is looked up in: the shared ones, or a concatenation with each
        member's offset."""
        if None in self.member_layouts:
            return
        distinct = list({id(lay): lay for lay in self.member_layouts}.values())
        if len(distinct) == 1:
            self.layouts, self.offset = distinct[0], np.zeros(self.members, dtype=np.int64)
            return
        self.layouts = Layouts(*(np.concatenate([getattr(lay, f) for lay in self.member_layouts]) for f in ("walls", "objects", "start")))
        self.offset = np.cumsum([0] + [len(lay.start) for lay in self.member_layouts[:-1]])

    def restart(self, members: Sequence[int]) -> None:
        """A fresh episode in every env of ``members`` (episode-based collection starts every batch this way)."""
        self._reset(np.concatenate([np.arange(self.rows(k).start, self.rows(k).stop) for k in members]))

    def _reset(self, idx: np.ndarray) -> None:
        """New episodes in rows ``idx`` (ascending), each member drawing its layouts from its own stream."""
        blocks = self.block[idx]
        for k in np.unique(blocks):
            rows = idx[blocks == k]
            layouts = self.member_layouts[k]
            chosen = self.rngs[k].integers(0, len(layouts.start), len(rows))
            self.layout_idx[rows] = chosen
            self.pos[rows] = layouts.start[chosen]
            self.objects[rows] = layouts.objects[chosen]
        self.steps[idx] = 0
        self.returns[idx] = 0.0

    # ------------------------------------------------------------------ observation
    def render(self, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Frames of ``rows`` (all by default), each member's cell permutation applied: output
        cell j shows input cell perm[j], so the walls and objects are gathered through the
        permutation and the agent drawn at the cell that shows its position."""
        index = np.arange(self.members * self.num_envs)[rows]
        n, cells = len(index), self.num_tiles
        walls = self.layouts.walls[self.offset[self.block[index]] + self.layout_idx[index]].reshape(n, cells)
        objects = self.objects[index].reshape(n, cells)
        agent = self.pos[index, 0] * self.size + self.pos[index, 1]
        if self.cell_perm is not None:
            walls, objects = (np.take(a, self._cell_gather(index, rows)) for a in (walls, objects))
            agent = self.cell_shown_at[self.block[index], agent]
        on = np.uint8(255)  # uint8 products: no int64 temporaries
        obs = np.stack([walls.view(np.uint8) * on, (objects > 0).view(np.uint8) * on, (objects < 0).view(np.uint8) * on], axis=-1)
        obs[np.arange(n), agent] = 255
        return obs.reshape(n, self.size, self.size, 3)

    def _cell_gather(self, index: np.ndarray, rows: slice | np.ndarray) -> np.ndarray:
        """Flat indices that gather row r's cells through its member's permutation (the same
        gather as take_along_axis(a, perm, axis=1) at a quarter of its cost per step); the one
        of every row is kept until the next shift, as every step renders every row."""
        every = isinstance(rows, slice) and rows == slice(None)
        if every and self._every_gather is not None:
            return self._every_gather
        flat = self.cell_perm[self.block[index]] + (np.arange(len(index)) * self.num_tiles)[:, None]
        if every:
            self._every_gather = flat
        return flat

    def observe_current(self) -> np.ndarray:
        """(K, num_envs, size, size, 3) frames of every member."""
        return self.render().reshape(self.members, self.num_envs, *self.obs_shape)

    # ------------------------------------------------------------------ dynamics
    def step(self, actions: np.ndarray, members: Sequence[int] | None = None) -> PopulationStep:
        """One step of every env of ``members`` (default: all), ``actions[j]`` for member
        ``members[j]``; row j of the result is member ``members[j]``'s."""
        members = list(range(self.members)) if members is None else list(members)
        actions = np.asarray(actions, dtype=np.int64).reshape(len(members), -1)
        if actions.shape[1] != self.num_envs or actions.min() < 0 or actions.max() >= GRID_ACTIONS:
            raise ValueError(f"actions must be ({self.num_envs},) integers in [0, {GRID_ACTIONS}) per member")
        every = members == list(range(self.members))  # every member, in order: all rows as they lie
        if every:
            rows = np.arange(self.members * self.num_envs)
        else:
            rows = np.concatenate([np.arange(self.rows(k).start, self.rows(k).stop) for k in members])
        # the rows' state: views of whole arrays when every member steps (a fancy index copies)
        own = slice(None) if every else rows
        actions = actions.reshape(-1)
        if self.action_perm is not None:
            actions = self.action_perm[self.block[own], actions]
        pos = self.pos[own]
        target = pos + MOVES[actions]
        ok = (target >= 0) & (target < self.size)
        target = np.where((ok[:, 0] & ok[:, 1])[:, None], target, pos)
        layout = self.offset[self.block[own]] + self.layout_idx[own]
        blocked = self.layouts.walls[layout, target[:, 0], target[:, 1]]
        pos = np.where(blocked[:, None], pos, target)
        self.pos[own] = pos
        reward = self.objects[rows, pos[:, 0], pos[:, 1]].astype(np.float32)
        self.objects[rows, pos[:, 0], pos[:, 1]] = 0
        self.steps[own] += 1
        self.returns[own] += reward
        terminated = ~np.any(self.objects[own] > 0, axis=(1, 2))  # every good object collected
        steps = self.steps[own]  # a view when every member steps: read before _reset zeroes it
        capped = ~terminated & (steps >= self.episode_steps)
        if self.time_limit == "terminal":  # the reference gridworld: `steps >= step_limit` is a terminal
            terminated, truncated = terminated | capped, np.zeros_like(capped)
        else:
            truncated = capped
        done = terminated | truncated
        episode_return = np.where(done, self.returns[own], 0.0).astype(np.float32)
        episode_length = np.where(done, steps, 0)
        final_obs = self.render(own) if truncated.any() else None
        if done.any():
            self._reset(rows[done])
        obs = self.render(own)
        per_member = (len(members), self.num_envs)  # every field (K, num_envs, ...): views of the flat rows
        return PopulationStep(
            obs=obs.reshape(*per_member, *self.obs_shape), reward=reward.reshape(per_member),
            terminated=terminated.reshape(per_member), truncated=truncated.reshape(per_member),
            final_obs=None if final_obs is None else final_obs.reshape(*per_member, *self.obs_shape),
            episode_return=episode_return.reshape(per_member), episode_length=episode_length.reshape(per_member),
        )  # fmt: skip

    # ------------------------------------------------------------------ checkpoints
    def get_state(self, k: int) -> dict[str, Any]:
        rows = self.rows(k)
        return {
            "rng": self.rngs[k].bit_generator.state, "layout_idx": self.layout_idx[rows].copy(), "pos": self.pos[rows].copy(),
            "objects": self.objects[rows].copy(), "steps": self.steps[rows].copy(), "returns": self.returns[rows].copy(),
            "shift": self.shifts[k].to_dict(),
        }

    def set_state(self, k: int, state: dict[str, Any]) -> None:
        self.apply_shift(k, ShiftState.from_dict(state["shift"]))
        self.rngs[k].bit_generator.state = state["rng"]
        rows = self.rows(k)
        for name in ("layout_idx", "pos", "objects", "steps", "returns"):
            getattr(self, name)[rows] = state[name]

    def close(self) -> None:
        """Nothing to release (interface parity with ProcgenVecEnv)."""


class GridGatherVecEnv:
    """``num_envs`` gather episodes stepped together; the interface of ``ProcgenVecEnv``.

    One member of a :class:`GridGatherPopulation` (its own population of one when built
    directly); its state arrays are views of the population's rows.
    """

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
        population = GridGatherPopulation(task, num_envs, [seed], train, [shift], size, episode_steps, good, bad, time_limit)
        self._attach(population, 0)

    @classmethod
    def view(cls, population: GridGatherPopulation, k: int) -> GridGatherVecEnv:
        env = cls.__new__(cls)
        env._attach(population, k)
        return env

    def _attach(self, population: GridGatherPopulation, k: int) -> None:
        self.population, self.k = population, k
        self.task, self.num_envs, self.train = population.task, population.num_envs, population.train
        self.num_actions, self.num_tiles, self.obs_shape = population.num_actions, population.num_tiles, population.obs_shape
        rows = population.rows(k)
        self.layout_idx, self.pos, self.objects = population.layout_idx[rows], population.pos[rows], population.objects[rows]
        self.steps, self.returns = population.steps[rows], population.returns[rows]

    @property
    def layouts(self) -> Layouts:
        return self.population.member_layouts[self.k]

    @property
    def shift(self) -> ShiftState:
        return self.population.shifts[self.k]

    def apply_shift(self, state: ShiftState) -> None:
        self.population.apply_shift(self.k, state)

    def restart(self) -> None:
        self.population.restart([self.k])

    def observe_current(self) -> np.ndarray:
        return self.population.render(self.population.rows(self.k))

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions, dtype=np.int64)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must be ({self.num_envs},) integers in [0, {GRID_ACTIONS})")
        return self.population.step(actions[None], [self.k])[0]

    def get_state(self) -> dict[str, Any]:
        return self.population.get_state(self.k)

    def set_state(self, state: dict[str, Any]) -> None:
        self.population.set_state(self.k, state)

    def close(self) -> None:
        """Nothing to release (interface parity with ProcgenVecEnv)."""
