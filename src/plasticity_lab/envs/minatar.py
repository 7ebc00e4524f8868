"""MinAtar (Young & Tian 2019, the ``minatar`` package): five miniature Atari games on 10x10
binary frames, vectorised over ``env_copies``, under the toolkit's shifts.

Every copy is the package's own ``minatar.Environment``: its sticky actions (the previous action
is repeated with probability ``sticky_actions``, 0.1 by default) and difficulty ramping, and all
6 actions in every game (the gym wrapper's ``minimal_action_set=False``). Each copy's random
stream (the package draws sticky actions and game events from one ``RandomState`` per copy) is
seeded from this environment's generator.

Observations are uint8 (10, 10, 10): the game's C channels as 0/255 (the network scales them to
0/1) in channels [0, C), in the package's channel order, and zeros in channels [C, 10), 10 being
the widest game (Seaquest); every game, and so a game sequence, has one network input. Episodes
end at the game's terminal state or, as a truncation, after ``max_episode_steps`` agent steps
(the package has no cap, but a Breakout policy that never misses would never finish an
evaluation). Rewards are the package's, unclipped, in training and evaluation alike.

Shifts: ``game`` steps through ``minatar.games`` (a new game restarts every episode with newly
seeded copies), ``permute`` moves the 100 cells of the frame (one permutation for all channels),
``shuffle`` the 6 actions, ``none``. There are no test levels: evaluation plays the current game
from other seeds.

The games are plain Python objects, so a checkpoint holds each copy's variables, random stream
and last action, and a resumed run continues its episodes bit-exactly.
"""

from __future__ import annotations

import copy
import pkgutil
from dataclasses import dataclass
from typing import Any

import minatar
import minatar.environments
import numpy as np

from plasticity_lab.envs.base import StepResult, finish_episodes
from plasticity_lab.envs.registry import EnvSpec
from plasticity_lab.envs.shifts import ShiftState, game_sequence, gather_image, image_tile_source, map_actions

SIZE = 10
CHANNELS = 10
"""Observation channels: the widest game's (Seaquest); narrower games are zero-padded."""
NUM_ACTIONS = 6
SHIFTS = ("game", "permute", "shuffle", "none")
ENCODERS = ("minatar", "conv11", "mlp")
GAMES = tuple(sorted(m.name for m in pkgutil.iter_modules(minatar.environments.__path__)))


@dataclass(frozen=True)
class MinatarSettings:
    """The ``environment.minatar`` options this module reads (plain values, hashable)."""

    games: tuple[str, ...]
    sticky_actions: float
    difficulty_ramping: bool
    max_episode_steps: int

    @classmethod
    def from_config(cls, cfg: Any) -> MinatarSettings:
        m = cfg.minatar
        return cls(
            games=game_sequence(cfg.task, m.games, check_game, "minatar.games"), sticky_actions=m.sticky_actions,
            difficulty_ramping=m.difficulty_ramping, max_episode_steps=m.max_episode_steps,
        )  # fmt: skip


def check_game(game: str) -> None:
    if game not in GAMES:
        raise ValueError(f"unknown MinAtar game {game!r} (allowed: {', '.join(GAMES)})")


def spec(cfg: Any) -> EnvSpec:
    settings = MinatarSettings.from_config(cfg)
    return EnvSpec(
        obs_shape=(SIZE, SIZE, CHANNELS), obs_dtype="uint8", num_actions=NUM_ACTIONS, continuous=False,
        shift_types=SHIFTS, encoders=ENCODERS, num_tiles=SIZE * SIZE, num_games=len(settings.games),
        info={"games": settings.games},
    )  # fmt: skip


def make(cfg: Any, num_envs: int, seed: int, train: bool, shift: ShiftState | None) -> MinatarVecEnv:
    return MinatarVecEnv(MinatarSettings.from_config(cfg), num_envs, seed, train, shift)


class MinatarVecEnv:
    """``num_envs`` copies of one MinAtar game stepped together under a ShiftState (interface:
    ``VecEnv``). ``train`` is accepted for the interface: training and evaluation play alike."""

    def __init__(
        self, settings: MinatarSettings, num_envs: int, seed: int, train: bool = True, shift: ShiftState | None = None
    ) -> None:
        self.settings, self.num_envs, self.train = settings, num_envs, train
        self.num_actions = NUM_ACTIONS
        self.obs_shape = (SIZE, SIZE, CHANNELS)
        self.num_tiles = SIZE * SIZE
        self.rng = np.random.default_rng(seed)
        self._copies: list[minatar.Environment] = []
        self._game_index: int | None = None
        self._ep_len = np.zeros(num_envs, dtype=np.int64)
        self._ep_ret = np.zeros(num_envs, dtype=np.float64)
        self.apply_shift(shift or ShiftState())

    @property
    def game(self) -> str:
        return self.settings.games[self.shift.game]

    def apply_shift(self, state: ShiftState) -> None:
        """A new game restarts every episode; cell and action permutations act at once."""
        if state.game >= len(self.settings.games):
            raise ValueError(f"game index {state.game} is outside the game sequence {list(self.settings.games)}")
        for name, perm, size in (("tile_perm", state.tile_perm, self.num_tiles), ("action_perm", state.action_perm, NUM_ACTIONS)):
            if perm is not None and len(perm) != size:
                raise ValueError(f"{name} has {len(perm)} entries, MinAtar needs {size}")
        self.shift = state
        self._cells = None if state.tile_perm is None else image_tile_source(SIZE, SIZE, state.tile_perm, tile=1)
        if state.game != self._game_index:
            self._load(state.game)
            self.restart()

    def _load(self, game_index: int) -> None:
        """New copies of game ``game_index``, each seeded from this environment's generator."""
        self._game_index = game_index
        s = self.settings
        self._copies = []
        for seed in self.rng.integers(0, 2**31 - 1, self.num_envs).tolist():
            env = minatar.Environment(self.game, sticky_action_prob=s.sticky_actions, difficulty_ramping=s.difficulty_ramping)
            env.seed(seed)
            self._copies.append(env)
        # every copy's unpadded (10, 10, C) frame, contiguous per copy: one row write per step
        self._state = np.zeros((self.num_envs, *self._copies[0].state_shape()), dtype=bool)

    def restart(self) -> None:
        """A fresh episode in every copy, continuing each copy's random stream."""
        for i, env in enumerate(self._copies):
            env.reset()
            self._state[i] = env.state()
        self._ep_len[:] = 0
        self._ep_ret[:] = 0.0

    def observe_current(self) -> np.ndarray:
        """(n, 10, 10, 10) uint8 frames: the game's channels 0/255, zero-padded, cell-permuted."""
        frames = np.zeros((self.num_envs, SIZE, SIZE, CHANNELS), dtype=np.uint8)
        frames[..., : self._state.shape[3]] = self._state
        frames *= 255
        return gather_image(frames, self._cells)

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"expected {self.num_envs} integer actions, got {actions.dtype} {actions.shape}")
        if actions.min() < 0 or actions.max() >= NUM_ACTIONS:
            raise ValueError(f"actions must lie in [0, {NUM_ACTIONS})")
        outcomes = [env.act(a) for env, a in zip(self._copies, map_actions(actions, self.shift.action_perm).tolist())]
        for i, env in enumerate(self._copies):
            self._state[i] = env.state()
        reward = np.array([r for r, _ in outcomes], dtype=np.float64)
        terminated = np.array([t for _, t in outcomes], dtype=bool)
        self._ep_len += 1
        self._ep_ret += reward
        truncated = ~terminated & (self._ep_len >= self.settings.max_episode_steps)
        final_obs = self.observe_current() if truncated.any() else None
        done = terminated | truncated
        episode_return, episode_length = finish_episodes(self._ep_len, self._ep_ret, done)
        for i in np.flatnonzero(done).tolist():
            env = self._copies[i]
            env.reset()
            self._state[i] = env.state()
        return StepResult(
            obs=self.observe_current(), reward=reward.astype(np.float32), terminated=terminated,
            truncated=truncated, final_obs=final_obs, episode_return=episode_return, episode_length=episode_length,
        )  # fmt: skip

    # ------------------------------------------------------------------ checkpoints
    def get_state(self) -> dict[str, Any]:
        """Everything: the generator, the shift, and per copy its game variables, random stream
        and last action (plain data, copied, so the snapshot never changes with the games)."""
        return {
            "family": "minatar", "rng": self.rng.bit_generator.state, "shift": self.shift.to_dict(),
            "copies": [_snapshot(env) for env in self._copies],
            "ep_len": self._ep_len.copy(), "ep_ret": self._ep_ret.copy(),
        }  # fmt: skip

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("family") != "minatar":
            raise ValueError("environment state is not a MinAtar state")
        if len(state["copies"]) != self.num_envs:
            raise ValueError(f"environment state has {len(state['copies'])} copies, this environment {self.num_envs}")
        shift = ShiftState.from_dict(state["shift"])
        self.apply_shift(shift)  # loads the saved game if it differs; every copy is overwritten below
        for i, (env, saved) in enumerate(zip(self._copies, state["copies"])):
            _restore(env, saved)
            self._state[i] = env.state()
        self.rng.bit_generator.state = state["rng"]
        self._ep_len[:] = state["ep_len"]
        self._ep_ret[:] = state["ep_ret"]

    def close(self) -> None:
        self._copies = []


def _snapshot(env: minatar.Environment) -> dict[str, Any]:
    variables = {k: copy.deepcopy(v) for k, v in vars(env.env).items() if k != "random"}
    return {"random": env.random.get_state(), "last_action": int(env.last_action), "game": variables}


def _restore(env: minatar.Environment, saved: dict[str, Any]) -> None:
    """Inverse of :func:`_snapshot`; the wrapper and the game share one random stream, as after
    ``Environment.seed``."""
    env.random = np.random.RandomState()
    env.random.set_state(saved["random"])
    env.env.random = env.random
    env.last_action = saved["last_action"]
    for key, value in saved["game"].items():
        setattr(env.env, key, copy.deepcopy(value))
