"""Atari 2600 games (ALE, the ale-py package with its ROMs) with Machado et al. (2018)
preprocessing, vectorised, under the toolkit's shifts.

Preprocessing: sticky actions (the emulator repeats the previous action with probability
``sticky_actions``), ``frame_skip`` emulator frames per agent step with the max over the last two,
84x84 grayscale, a stack of the last ``frame_stack`` frames, game over ends an episode (no
life-loss signal), an episode cap of ``max_episode_frames`` emulator frames (a truncation),
training rewards clipped to [-1, 1] and episode returns (what evaluation reports) on raw scores.

Two backends produce these observations:

* ``native`` (the default): ale-py's ``AtariVectorEnv``, stepping all games in C++ threads.
* ``python``: one ``ALEInterface`` per environment stepped from Python, used only where the
  native one cannot go: the ``flavour`` shift (game modes and difficulties, which the native
  vector interface does not expose). It downsamples with exact area averaging; a test checks
  it agrees with the native frames.

Shifts: ``game`` steps through ``ale.games`` (continual Atari; the full 18-action set keeps the
policy head the same), ``flavour`` through ``ale.flavours`` ((mode, difficulty) pairs),
``permute`` shuffles the 4x4 tiles of every stacked frame, ``shuffle`` the actions, ``none``.
A new game or flavour restarts every episode; permutations act at once.

Neither backend can save an emulator mid-episode from the vector interface, so a resumed run
restarts the episodes in progress (README, "Resuming").
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import ale_py
import numpy as np
from ale_py import roms

from plasticity_lab.envs.base import StepResult, finish_episodes
from plasticity_lab.envs.registry import EnvSpec
from plasticity_lab.envs.shifts import ShiftState, game_sequence, gather_image, image_tile_source, map_actions

FRAME = 84
FULL_ACTIONS = 18
SHIFTS = ("permute", "shuffle", "game", "flavour", "none")
ENCODERS = ("nature", "conv64", "mlp")
ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)


@dataclass(frozen=True)
class AleSettings:
    """The ``environment.ale`` options this module reads (plain values, hashable)."""

    games: tuple[str, ...]
    flavours: tuple[tuple[int, int], ...]
    full_action_space: bool
    sticky_actions: float
    frame_skip: int
    frame_stack: int
    noop_max: int
    max_episode_frames: int
    clip_rewards: bool
    threads: int

    @classmethod
    def from_config(cls, cfg: Any) -> AleSettings:
        a = cfg.ale
        games = game_sequence(cfg.task, a.games, check_game, "ale.games")
        flavours = tuple((int(m), int(d)) for m, d in a.flavours) if a.flavours else ()
        if cfg.shift_type == "flavour" and not flavours:
            flavours = all_flavours(games[0])
        for mode, difficulty in flavours:
            modes, difficulties = game_flavours(games[0])
            if mode not in modes or difficulty not in difficulties:
                raise ValueError(
                    f"ale.flavours: {games[0]} has no mode {mode} / difficulty {difficulty} "
                    f"(modes {list(modes)}, difficulties {list(difficulties)})"
                )
        if len(games) > 1 and len(flavours) > 1:
            raise ValueError("ale: a game sequence and a flavour list cannot be combined (modes differ per game)")
        return cls(
            games=games, flavours=flavours, full_action_space=a.full_action_space,
            sticky_actions=a.sticky_actions, frame_skip=a.frame_skip, frame_stack=a.frame_stack,
            noop_max=a.noop_max, max_episode_frames=a.max_episode_frames, clip_rewards=a.clip_rewards,
            threads=a.threads,
        )  # fmt: skip


def check_game(game: str) -> None:
    if game not in roms.get_all_rom_ids():
        raise ValueError(
            f"unknown Atari game {game!r}: use the ROM id in snake_case, e.g. pong, breakout, space_invaders, ms_pacman"
        )


@functools.lru_cache(maxsize=None)
def _rom_facts(game: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(modes, difficulties, minimal action set) of a ROM."""
    ale = ale_py.ALEInterface()
    ale.loadROM(roms.get_rom_path(game))
    minimal = tuple(int(a.value) for a in ale.getMinimalActionSet())
    return tuple(ale.getAvailableModes()), tuple(ale.getAvailableDifficulties()), minimal


def game_flavours(game: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    modes, difficulties, _ = _rom_facts(game)
    return modes, difficulties


def all_flavours(game: str) -> tuple[tuple[int, int], ...]:
    """Every (mode, difficulty) of the game, default (first) mode and difficulty first."""
    modes, difficulties = game_flavours(game)
    return tuple((m, d) for m in modes for d in difficulties)


def num_game_actions(settings: AleSettings) -> int:
    if settings.full_action_space:
        return FULL_ACTIONS
    sizes = {len(_rom_facts(game)[2]) for game in settings.games}
    if len(sizes) > 1:
        raise ValueError("ale.full_action_space: a game sequence needs the full action set (minimal sets differ in size)")
    return sizes.pop()


def spec(cfg: Any) -> EnvSpec:
    settings = AleSettings.from_config(cfg)
    return EnvSpec(
        resumes_mid_episode=False,
        obs_shape=(FRAME, FRAME, settings.frame_stack), obs_dtype="uint8",
        num_actions=num_game_actions(settings), continuous=False, shift_types=SHIFTS, encoders=ENCODERS,
        num_tiles=(FRAME // 4) ** 2, num_games=len(settings.games), num_flavours=max(1, len(settings.flavours)),
        info={"games": settings.games, "flavours": settings.flavours},
    )  # fmt: skip


def make(cfg: Any, num_envs: int, seed: int, train: bool, shift: ShiftState | None) -> AleVecEnv:
    return AleVecEnv(AleSettings.from_config(cfg), num_envs, seed, train, shift)


# --------------------------------------------------------------------------- backends


class _NativeBackend:
    """ale-py's C++ vector environment; observations (n, stack, 84, 84)."""

    def __init__(self, game: str, num_envs: int, s: AleSettings) -> None:
        from ale_py.vector_env import AtariVectorEnv

        self.env = AtariVectorEnv(
            game, num_envs, num_threads=s.threads, autoreset_mode="SameStep",
            repeat_action_probability=s.sticky_actions, full_action_space=s.full_action_space,
            frameskip=s.frame_skip, stack_num=s.frame_stack, img_height=FRAME, img_width=FRAME,
            grayscale=True, maxpool=True, noop_max=s.noop_max, use_fire_reset=False, episodic_life=False,
            reward_clipping=False, max_num_frames_per_episode=s.max_episode_frames,
        )  # fmt: skip

    def reset(self, seeds: np.ndarray) -> np.ndarray:
        obs, _ = self.env.reset(seed=seeds.astype(np.int64))
        return obs

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        obs, reward, terminated, truncated, info = self.env.step(actions.astype(np.int32))
        if not np.array_equal(info["env_id"], np.arange(len(actions))):
            raise RuntimeError("ALE vector env returned environments out of order")
        final = info.get("final_obs", obs)
        return obs, reward.astype(np.float64), terminated.astype(bool), truncated.astype(bool), final

    def close(self) -> None:
        self.env.close()


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of area-averaging resampling: output pixel i averages the input
    interval [i * n_in / n_out, (i + 1) * n_in / n_out), partial pixels by their overlap."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    left, right = edges[:-1, None], edges[1:, None]
    pix = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(right, pix + 1) - np.maximum(left, pix), 0, None)
    return overlap / (n_in / n_out)


class _PythonBackend:
    """One ALEInterface per env (modes and difficulties); same preprocessing as the native one."""

    def __init__(self, game: str, num_envs: int, s: AleSettings, flavour: tuple[int, int]) -> None:
        self.s, self.n = s, num_envs
        self.rom = roms.get_rom_path(game)
        self.flavour = flavour
        self.ales = [ale_py.ALEInterface() for _ in range(num_envs)]
        self.actions: list[Any] = []
        self.rows = area_matrix(210, FRAME)
        self.cols = area_matrix(160, FRAME)
        self.stack = np.zeros((num_envs, s.frame_stack, FRAME, FRAME), dtype=np.uint8)
        self.frames = np.zeros(num_envs, dtype=np.int64)
        self.rngs: list[np.random.Generator] = []

    def _load(self, i: int, seed: int) -> None:
        ale = self.ales[i]
        ale.setInt("random_seed", int(seed) % 2**31)
        ale.setFloat("repeat_action_probability", self.s.sticky_actions)
        ale.setInt("frame_skip", 1)
        ale.loadROM(self.rom)
        ale.setMode(self.flavour[0])
        ale.setDifficulty(self.flavour[1])
        ale.reset_game()

    def _frame(self, screens: np.ndarray) -> np.ndarray:
        """(n, 210, 160) grayscale -> (n, 84, 84) by exact area averaging, rounded."""
        small = np.einsum("ij,njk,lk->nil", self.rows, screens.astype(np.float64), self.cols, optimize=True)
        return np.clip(np.rint(small), 0, 255).astype(np.uint8)

    def reset(self, seeds: np.ndarray) -> np.ndarray:
        self.rngs = [np.random.default_rng(int(seed)) for seed in seeds]
        for i, seed in enumerate(seeds):
            self._load(i, int(seed))
        full = self.s.full_action_space
        self.actions = list(self.ales[0].getLegalActionSet() if full else self.ales[0].getMinimalActionSet())
        for i in range(self.n):
            self._new_episode(i)
        return self.stack.copy()

    def _new_episode(self, i: int) -> None:
        ale = self.ales[i]
        ale.reset_game()
        noops = int(self.rngs[i].integers(0, self.s.noop_max + 1)) if self.s.noop_max else 0
        for _ in range(noops):
            ale.act(ale_py.Action.NOOP)
            if ale.game_over():
                ale.reset_game()
        self.frames[i] = 0
        self.stack[i] = 0  # as the native backend: the first frame, blank frames before it
        self.stack[i, -1] = self._frame(ale.getScreenGrayscale()[None])[0]

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        n, skip = self.n, self.s.frame_skip
        reward = np.zeros(n, dtype=np.float64)
        terminated = np.zeros(n, dtype=bool)
        screens = np.zeros((n, 2, 210, 160), dtype=np.uint8)
        for i, ale in enumerate(self.ales):
            action = self.actions[int(actions[i])]
            for k in range(skip):
                reward[i] += ale.act(action)
                self.frames[i] += 1
                if k >= skip - 2:
                    screens[i, k - (skip - 2)] = ale.getScreenGrayscale()
                if ale.game_over():
                    terminated[i] = True
                    if k < skip - 1:  # ended early: the last screen is the one to keep
                        screens[i, 1] = ale.getScreenGrayscale()
                    break
        pooled = self._frame(screens.max(axis=1) if skip > 1 else screens[:, 1])
        self.stack = np.concatenate([self.stack[:, 1:], pooled[:, None]], axis=1)
        truncated = ~terminated & (self.frames >= self.s.max_episode_frames)
        final = self.stack.copy()
        for i in np.flatnonzero(terminated | truncated):
            self._new_episode(int(i))
        return self.stack.copy(), reward, terminated, truncated, final

    def close(self) -> None:
        self.ales = []


# --------------------------------------------------------------------------- the environment


class AleVecEnv:
    """``num_envs`` Atari games stepped together under a ShiftState (interface: ``VecEnv``)."""

    def __init__(self, settings: AleSettings, num_envs: int, seed: int, train: bool = True, shift: ShiftState | None = None) -> None:
        self.settings, self.num_envs, self.train = settings, num_envs, train
        self.num_actions = num_game_actions(settings)
        self.obs_shape = (FRAME, FRAME, settings.frame_stack)
        self.num_tiles = (FRAME // 4) ** 2
        self.rng = np.random.default_rng(seed)
        self._backend: Any = None
        self._world: tuple[int, int] | None = None
        self.apply_shift(shift or ShiftState())

    @property
    def game(self) -> str:
        return self.settings.games[self.shift.game % len(self.settings.games)]

    @property
    def flavour(self) -> tuple[int, int] | None:
        flavours = self.settings.flavours
        return flavours[self.shift.flavour % len(flavours)] if flavours else None

    def apply_shift(self, state: ShiftState) -> None:
        """A new game or flavour restarts every episode; tile and action permutations act at once."""
        if state.action_perm is not None and len(state.action_perm) != self.num_actions:
            raise ValueError(f"action_perm has {len(state.action_perm)} entries, this game has {self.num_actions} actions")
        self.shift = state
        self._tiles = None if state.tile_perm is None else image_tile_source(FRAME, FRAME, state.tile_perm)
        world = (state.game, state.flavour)
        if world != self._world:
            self._world = world
            self.restart()

    def restart(self) -> None:
        """Fresh episodes of the current game/flavour, seeded from this env's generator."""
        if self._backend is not None:
            self._backend.close()
        s = self.settings
        if s.flavours:  # modes and difficulties: only the Python backend can set them
            self._backend = _PythonBackend(self.game, self.num_envs, s, self.flavour)
        else:
            self._backend = _NativeBackend(self.game, self.num_envs, s)
        seeds = self.rng.integers(0, 2**31 - 1, self.num_envs)
        self._raw = self._backend.reset(seeds)
        self._ep_len = np.zeros(self.num_envs, dtype=np.int64)
        self._ep_ret = np.zeros(self.num_envs, dtype=np.float64)

    def _present(self, stacked: np.ndarray) -> np.ndarray:
        """(n, stack, 84, 84) -> the agent's (n, 84, 84, stack), tile-permuted."""
        return gather_image(np.ascontiguousarray(stacked.transpose(0, 2, 3, 1)), self._tiles)

    def observe_current(self) -> np.ndarray:
        return self._present(self._raw)

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"expected {self.num_envs} integer actions, got {actions.shape}")
        if actions.min() < 0 or actions.max() >= self.num_actions:
            raise ValueError(f"actions must lie in [0, {self.num_actions})")
        obs, raw_reward, terminated, truncated, final = self._backend.step(map_actions(actions, self.shift.action_perm))
        self._ep_len += 1
        self._ep_ret += raw_reward
        done = terminated | truncated
        episode_return, episode_length = finish_episodes(self._ep_len, self._ep_ret, done)
        self._raw = obs
        reward = np.clip(raw_reward, -1.0, 1.0) if self.settings.clip_rewards and self.train else raw_reward
        return StepResult(
            obs=self._present(obs), reward=reward.astype(np.float32), terminated=terminated, truncated=truncated,
            final_obs=self._present(final) if truncated.any() else None,
            episode_return=episode_return, episode_length=episode_length,
        )  # fmt: skip

    # ------------------------------------------------------------------ checkpoints
    def get_state(self) -> dict[str, Any]:
        """The generator and shift only: emulators cannot be saved through the vector interface,
        so :meth:`set_state` restarts the episodes in progress."""
        return {"family": "ale", "rng": self.rng.bit_generator.state, "shift": self.shift.to_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("family") != "ale":
            raise ValueError("environment state is not an ALE state")
        self.rng.bit_generator.state = state["rng"]
        self.shift = ShiftState.from_dict(state["shift"])
        self._tiles = None if self.shift.tile_perm is None else image_tile_source(FRAME, FRAME, self.shift.tile_perm)
        self._world = (self.shift.game, self.shift.flavour)
        self.restart()  # from the checkpointed generator, which is then rewound for the next restart
        self.rng.bit_generator.state = state["rng"]

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
