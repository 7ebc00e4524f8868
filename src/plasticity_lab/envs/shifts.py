"""Distribution shifts between training rounds (arXiv 2405.19153, ProcGen protocol).

This module is the single definition of every shift type: round 1's state (`initial_shift`), how
the shift state evolves from one round to the next (`next_shift`) and how a state translates into
what the environment does (tile permutation of frames, action remapping, level range,
difficulty). Train and test environments are configured from the same `ShiftState`, so they
always shift together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SHIFT_TYPES = (
    "permute", "shuffle", "window", "expand", "difficulty", "none",
    "game", "flavour", "friction", "mass", "gravity",
)  # fmt: skip
PHYSICS_SHIFTS = ("friction", "mass", "gravity")
DEFAULT_SCALE_RANGE = (0.02, 2.0)  # loss-of-plasticity's slippery-ant friction range

FRAME_SIZE = 64
FRAME_SHAPE = (FRAME_SIZE, FRAME_SIZE, 3)
TILE_SIZE = 4
GRID_SIZE = FRAME_SIZE // TILE_SIZE
NUM_TILES = GRID_SIZE * GRID_SIZE
_WORDS_PER_TILE_ROW = TILE_SIZE * 3 // 4  # 4 RGB pixels = 12 bytes = 3 uint32 words
_WORDS_PER_ROW = GRID_SIZE * _WORDS_PER_TILE_ROW
NUM_ACTIONS = 9
TEST_LEVEL_START = 10_000


def _as_perm(perm: Any, name: str) -> np.ndarray | None:
    """Validate and freeze a permutation so a ShiftState can never be mutated through it.

    Any length is accepted: ProcGen permutes 256 tiles and 9 actions, the gridworld its cells
    and 4 actions; the environment checks that the length fits it.
    """
    if perm is None:
        return None
    arr = np.array(perm, dtype=np.int64)
    if arr.ndim != 1 or not len(arr) or not np.array_equal(np.sort(arr), np.arange(len(arr))):
        raise ValueError(f"{name} must be a permutation of range(n)")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class ShiftState:
    """Everything a round's environment configuration depends on; `None` perms mean identity."""

    round: int = 0
    tile_perm: np.ndarray | None = None
    action_perm: np.ndarray | None = None
    level_offset: int = 0
    level_extra: int = 0
    hard: bool = False
    game: int = 0
    """Index into the environment's game sequence (ALE and MinAtar ``game`` shift)."""
    flavour: int = 0
    """Index into the environment's (mode, difficulty) list (ALE ``flavour`` shift)."""
    friction: float = 1.0
    """Multiplier on every geom's sliding friction (MuJoCo ``friction`` shift)."""
    mass: float = 1.0
    """Multiplier on every body's mass (MuJoCo ``mass`` shift)."""
    gravity: float = 1.0
    """Multiplier on the gravity vector (MuJoCo ``gravity`` shift)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile_perm", _as_perm(self.tile_perm, "tile_perm"))
        object.__setattr__(self, "action_perm", _as_perm(self.action_perm, "action_perm"))
        if min(self.round, self.level_offset, self.level_extra, self.game, self.flavour) < 0:
            raise ValueError("round, level_offset, level_extra, game and flavour must be non-negative")
        if not min(self.friction, self.mass, self.gravity) > 0:
            raise ValueError("friction, mass and gravity multipliers must be positive")

    def to_dict(self) -> dict[str, Any]:
        """Plain python types only, so checkpoints need no numpy pickling."""
        return {
            "round": int(self.round),
            "tile_perm": None if self.tile_perm is None else self.tile_perm.tolist(),
            "action_perm": None if self.action_perm is None else self.action_perm.tolist(),
            "level_offset": int(self.level_offset),
            "level_extra": int(self.level_extra),
            "hard": bool(self.hard),
            "game": int(self.game),
            "flavour": int(self.flavour),
            "friction": float(self.friction),
            "mass": float(self.mass),
            "gravity": float(self.gravity),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShiftState:
        return cls(
            round=int(data["round"]),
            tile_perm=data["tile_perm"],
            action_perm=data["action_perm"],
            level_offset=int(data["level_offset"]),
            level_extra=int(data["level_extra"]),
            hard=bool(data["hard"]),
            # absent from checkpoints written before these shift types existed
            game=int(data.get("game", 0)),
            flavour=int(data.get("flavour", 0)),
            friction=float(data.get("friction", 1.0)),
            mass=float(data.get("mass", 1.0)),
            gravity=float(data.get("gravity", 1.0)),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShiftState):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


def _new_perm(rng: np.random.Generator, size: int, current: np.ndarray | None) -> np.ndarray:
    """Draw a permutation that differs from the current one, so every shift really changes."""
    previous = np.arange(size) if current is None else current
    while True:
        perm = rng.permutation(size)
        if not np.array_equal(perm, previous):
            return perm


def initial_shift(
    shift_type: str,
    rng: np.random.Generator,
    num_tiles: int = NUM_TILES,
) -> ShiftState:
    """Round 1's state, as the reference builds its environments.

    ``permute`` scrambles the frame from construction (a random tile permutation drawn from the
    run's shift generator), so round 1 already sees a permuted frame; every other shift type
    starts from the unshifted task (identity actions, levels [0, K), easy mode), as the
    reference's wrapper does.
    """
    if shift_type not in SHIFT_TYPES:
        raise ValueError(f"unknown shift type {shift_type!r}; allowed: {', '.join(SHIFT_TYPES)}")
    if shift_type == "permute":
        return ShiftState(tile_perm=_new_perm(rng, num_tiles, None))
    return ShiftState()


def next_shift(
    state: ShiftState,
    shift_type: str,
    rng: np.random.Generator,
    k: int,
    num_tiles: int = NUM_TILES,
    num_actions: int = NUM_ACTIONS,
    num_games: int = 1,
    num_flavours: int = 1,
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
) -> ShiftState:
    """The next round's state; `k` is the level step for `window` and `expand`.

    `num_tiles` / `num_actions` size the permutations (defaults: ProcGen's 256 tiles, 9 actions).
    `game` / `flavour` step cyclically through `num_games` / `num_flavours` entries; `friction`,
    `mass` and `gravity` draw a new multiplier log-uniformly from `scale_range` (as
    loss-of-plasticity draws the slippery ant's frictions).
    """
    if shift_type not in SHIFT_TYPES:
        raise ValueError(f"unknown shift type {shift_type!r}; allowed: {', '.join(SHIFT_TYPES)}")
    if shift_type in ("window", "expand") and k <= 0:
        raise ValueError(f"shift {shift_type!r} needs k > 0, got {k}")
    if (shift_type == "game" and num_games < 2) or (shift_type == "flavour" and num_flavours < 2):
        raise ValueError(f"shift {shift_type!r} needs at least 2 entries to move between")
    low, high = scale_range
    if shift_type in PHYSICS_SHIFTS and not 0 < low < high:
        raise ValueError(f"shift {shift_type!r} needs 0 < low < high, got {scale_range}")
    fields = state.to_dict()
    fields["round"] += 1
    if shift_type == "permute":
        fields["tile_perm"] = _new_perm(rng, num_tiles, state.tile_perm)
    elif shift_type == "shuffle":
        fields["action_perm"] = _new_perm(rng, num_actions, state.action_perm)
    elif shift_type == "window":
        fields["level_offset"] += k
    elif shift_type == "expand":
        fields["level_extra"] += k
    elif shift_type == "difficulty":
        fields["hard"] = not state.hard
    elif shift_type == "game":
        fields["game"] = (state.game + 1) % num_games
    elif shift_type == "flavour":
        fields["flavour"] = (state.flavour + 1) % num_flavours
    elif shift_type in PHYSICS_SHIFTS:
        fields[shift_type] = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    return ShiftState.from_dict(fields)


def game_sequence(task: str, games: Sequence[str], check: Callable[[str], None], key: str) -> tuple[str, ...]:
    """The games a ``game`` shift steps through (state ``game`` indexes it): ``games``, read from
    config key ``key``, which must start with the task, or the task alone when empty; ``check``
    raises a one-line error for a game the family does not have (ALE, MinAtar)."""
    sequence = tuple(games) if games else (task,)
    if sequence[0] != task:
        raise ValueError(f"{key} must start with the task {task!r} (got {sequence[0]!r})")
    for game in sequence:
        check(game)
    return sequence


def level_range(num_levels: int, state: ShiftState, train: bool) -> tuple[int, int]:
    """(start_level, num_levels) for ProcGen: train [off, off+K+extra), test the same + 10000."""
    base = 0 if train else TEST_LEVEL_START
    return base + state.level_offset, num_levels + state.level_extra


def distribution_mode(state: ShiftState) -> str:
    return "hard" if state.hard else "easy"


def map_actions(actions: np.ndarray, action_perm: np.ndarray | None) -> np.ndarray:
    """Agent action a becomes env action perm[a]."""
    return actions if action_perm is None else action_perm[actions]


def tile_index_map(tile_perm: np.ndarray) -> np.ndarray:
    """Gather map over the 4-byte words of a flat RGB frame: output tile j = input tile perm[j].

    One 4-pixel row of a tile is 12 bytes = 3 whole words, so moving words instead of pixels
    makes the permutation a single gather with 4x fewer (and wider) elements.
    """
    words = np.arange(FRAME_SIZE * _WORDS_PER_ROW).reshape(
        GRID_SIZE, TILE_SIZE, GRID_SIZE, _WORDS_PER_TILE_ROW
    )
    tiles = words.transpose(0, 2, 1, 3).reshape(NUM_TILES, TILE_SIZE, _WORDS_PER_TILE_ROW)
    moved = tiles[np.asarray(tile_perm)].reshape(
        GRID_SIZE, GRID_SIZE, TILE_SIZE, _WORDS_PER_TILE_ROW
    )
    return moved.transpose(0, 2, 1, 3).reshape(-1)


def gather_pixels(obs_batch: np.ndarray, index_map: np.ndarray) -> np.ndarray:
    """Apply a `tile_index_map` to a (n, 64, 64, 3) uint8 batch in a single take."""
    if obs_batch.shape[1:] != FRAME_SHAPE or obs_batch.dtype != np.uint8:
        raise ValueError(f"expected uint8 (n, 64, 64, 3), got {obs_batch.dtype} {obs_batch.shape}")
    frame_bytes = FRAME_SIZE * FRAME_SIZE * 3
    words = np.ascontiguousarray(obs_batch).reshape(len(obs_batch), frame_bytes).view(np.uint32)
    # mode="clip" skips the bounds check; the map is in range by construction.
    return np.take(words, index_map, axis=1, mode="clip").view(np.uint8).reshape(obs_batch.shape)


def permute_tiles(obs_batch: np.ndarray, tile_perm: np.ndarray | None) -> np.ndarray:
    """Shuffle the 4x4 tiles of every frame; returns the input itself when tile_perm is None."""
    if tile_perm is None:
        return obs_batch
    return gather_pixels(obs_batch, tile_index_map(tile_perm))



def image_tile_source(height: int, width: int, tile_perm: np.ndarray, tile: int = TILE_SIZE) -> np.ndarray:
    """Pixel gather map of a ``tile_perm`` over (height, width) frames of any channel count:
    output pixel p shows input pixel source[p], so that output tile j (row-major tile grid) is
    input tile ``tile_perm[j]``. Computed once per shift; applied by :func:`gather_image`."""
    if height % tile or width % tile:
        raise ValueError(f"a {height}x{width} frame does not split into {tile}x{tile} tiles")
    rows, cols = height // tile, width // tile
    grid = np.arange(height * width).reshape(rows, tile, cols, tile).transpose(0, 2, 1, 3).reshape(rows * cols, -1)
    if len(tile_perm) != len(grid):
        raise ValueError(f"tile_perm has {len(tile_perm)} entries, a {height}x{width} frame has {len(grid)} tiles")
    source = np.empty(height * width, dtype=np.int64)
    source[grid.reshape(-1)] = grid[np.asarray(tile_perm)].reshape(-1)
    return source


def gather_image(obs_batch: np.ndarray, source: np.ndarray | None) -> np.ndarray:
    """Apply an :func:`image_tile_source` map to (n, H, W, C) frames (a copy; None: the input).

    The generic counterpart of :func:`gather_pixels` (specialised to ProcGen's 64x64x3) for
    Atari's 84x84x4 stacks and Gymnasium image observations.
    """
    if source is None:
        return obs_batch
    n, height, width, channels = obs_batch.shape
    flat = obs_batch.reshape(n, height * width, channels)
    return np.take(flat, source, axis=1, mode="clip").reshape(obs_batch.shape)


def permute_vector(obs_batch: np.ndarray, perm: np.ndarray | None) -> np.ndarray:
    """Entry j of every observation vector shows entry ``perm[j]`` (identity when None)."""
    return obs_batch if perm is None else obs_batch[:, perm]
