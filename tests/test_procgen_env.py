"""Tests for plasticity_lab.envs.procgen: protocol fidelity, shifts, resets, checkpoints.

Maze with the no-op action never ends an episode on its own, which makes the 200-step cap
exactly observable; a scripted fake backend pins down the action-repeat reward accounting.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from plasticity_lab.envs.procgen import (
    GAMES,
    MAX_EPISODE_STEPS,
    NOOP_ACTION,
    ProcgenGym3Env,
    ProcgenVecEnv,
    StepResult,
    draw_rand_seed,
    parse_task,
)
from plasticity_lab.config import EnvironmentConfig
from plasticity_lab.envs import evaluate
from plasticity_lab.envs.shifts import ShiftState, next_shift, permute_tiles

PENALTY = np.float32(0.01)


def raw_env(game: str, num: int, rand_seed: int, start: int, count: int, mode: str = "easy"):
    """Plain ProcGen env with the protocol's options, built independently of the wrapper."""
    return ProcgenGym3Env(
        num=num, env_name=game, num_levels=count, start_level=start, distribution_mode=mode,
        use_backgrounds=True, restrict_themes=False, paint_vel_info=True, rand_seed=rand_seed,
    )  # fmt: skip


def noop(n: int) -> np.ndarray:
    return np.full(n, NOOP_ACTION)


def random_policy(seed: int) -> Callable[[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    return lambda obs: rng.integers(0, 9, len(obs))


def run(env: ProcgenVecEnv, actions: np.ndarray) -> list[StepResult]:
    return [env.step(a) for a in actions]


def assert_same(a: list[StepResult], b: list[StepResult]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for field in StepResult.__dataclass_fields__:
            u, v = getattr(x, field), getattr(y, field)
            assert (u is None) == (v is None), field
            if u is not None:
                assert np.array_equal(u, v), field


# ------------------------------------------------------------------ task names


def test_parse_task() -> None:
    assert parse_task("coinrun_100") == ("coinrun", 100)
    assert parse_task("bigfish_200") == ("bigfish", 200)
    assert len(GAMES) == 16
    for game in GAMES:
        assert parse_task(f"{game}_7") == (game, 7)
    bad_tasks = ("pong_10", "coinrun", "coinrun_0", "coinrun_-3", "coinrun_x", "_10", "Coinrun_5")
    for bad in (*bad_tasks, "coinrun_²"):
        with pytest.raises(ValueError, match="bigfish.*starpilot"):
            parse_task(bad)
    with pytest.raises(ValueError):
        ProcgenVecEnv("coinrun_0", 2, seed=0)


# ------------------------------------------------------------------ stepping basics


def test_step_shapes_and_action_validation() -> None:
    env = ProcgenVecEnv("coinrun_10", 4, seed=0)
    assert (env.num_envs, env.num_actions, env.obs_shape) == (4, 9, (64, 64, 3))
    obs = env.observe_current()
    assert obs.shape == (4, 64, 64, 3) and obs.dtype == np.uint8
    res = env.step(np.arange(4))
    assert res.obs.shape == (4, 64, 64, 3) and res.obs.dtype == np.uint8
    assert res.reward.dtype == np.float32 and res.reward.shape == (4,)
    assert res.terminated.dtype == bool and res.truncated.dtype == bool
    assert res.episode_return.dtype == np.float32 and res.episode_length.shape == (4,)
    assert np.array_equal(env.observe_current(), res.obs)
    for bad in (np.zeros(3, int), np.full(4, 9), np.full(4, -1), np.zeros(4)):
        with pytest.raises(ValueError):
            env.step(bad)
    env.close()


def test_noop_maze_penalty_and_exact_truncation() -> None:
    n, seed = 3, 5
    env = ProcgenVecEnv("maze_10", n, seed=seed)
    first_seed = draw_rand_seed(np.random.default_rng(seed))
    for t in range(1, MAX_EPISODE_STEPS):
        res = env.step(noop(n))
        assert np.all(res.reward == -PENALTY), t
        assert not res.terminated.any() and not res.truncated.any() and res.final_obs is None, t

    rng_before = np.random.default_rng()
    rng_before.bit_generator.state = env.get_state()["rng_state"]
    res = env.step(noop(n))
    assert res.truncated.all() and not res.terminated.any()
    assert np.array_equal(res.episode_length, [200] * n)
    assert np.allclose(res.episode_return, -2.0)

    # final_obs is the frame after 400 no-op frames of the *original* episode.
    reference = raw_env("maze", n, first_seed, 0, 10)
    for _ in range(2 * MAX_EPISODE_STEPS):
        reference.act(noop(n).astype(np.int32))
    assert np.array_equal(res.final_obs, reference.observe()[1]["rgb"])
    reference.close()  # closed here, not by a finaliser (see the regression test at the end)

    # The returned obs and the procgen state are those of a fresh env seeded from the wrapper's rng.
    fresh = raw_env("maze", n, draw_rand_seed(rng_before), 0, 10)
    assert np.array_equal(res.obs, fresh.observe()[1]["rgb"])
    assert not np.array_equal(res.obs, res.final_obs)
    assert env.get_state()["procgen_states"] == fresh.callmethod("get_state")
    fresh.close()

    # The new episode really restarted: it runs another full 200 steps before truncation.
    for t in range(1, MAX_EPISODE_STEPS):
        res = env.step(noop(n))
        assert not (res.terminated | res.truncated).any(), t
    res = env.step(noop(n))
    assert res.truncated.all() and np.array_equal(res.episode_length, [200] * n)


class ScriptedBackend:
    """Stands in for ProcgenGym3Env: replays scripted per-frame rewards/episode ends."""

    def __init__(self, frames: list[tuple[list[float], list[bool]]]) -> None:
        self.frames = frames
        self.actions: list[np.ndarray] = []
        self.rgb = np.zeros((len(frames[0][0]), 64, 64, 3), dtype=np.uint8)

    def act(self, ac: np.ndarray) -> None:
        self.actions.append(ac.copy())
        self.rgb = self.rgb + 1

    def observe(self):
        rew, first = self.frames[len(self.actions) - 1]
        return np.array(rew, dtype=np.float32), {"rgb": self.rgb.copy()}, np.array(first)

    def close(self) -> None:
        pass


def test_action_repeat_reward_accounting_and_shuffle() -> None:
    perm = np.array([3, 8, 0, 1, 2, 4, 5, 6, 7])
    env = ProcgenVecEnv("coinrun_10", 3, seed=0, shift=ShiftState(action_perm=perm))
    env.close()
    backend = ScriptedBackend(
        [
            ([1.0, 2.0, 3.0], [False, True, False]),  # env 1 ends on frame 1
            ([10.0, 20.0, 30.0], [False, False, True]),  # env 2 ends on frame 2
            ([0.0, 0.0, 0.0], [False, False, False]),
            ([5.0, 0.0, 0.0], [False, False, False]),
        ]
    )
    env._env = backend
    res = env.step(np.array([0, 1, 2]))
    assert np.array_equal(backend.actions[0], perm[[0, 1, 2]])
    # Env 1's episode is over, so it idles on frame 2 and that frame's reward is dropped.
    assert np.array_equal(backend.actions[1], [perm[0], NOOP_ACTION, perm[2]])
    assert np.allclose(res.reward, [11 - 0.01, 2 - 0.01, 33 - 0.01])
    assert np.array_equal(res.terminated, [False, True, True])
    assert np.allclose(res.episode_return[1:], [2 - 0.01, 33 - 0.01])
    assert np.array_equal(res.episode_length, [0, 1, 1])
    assert np.array_equal(res.obs, backend.rgb)  # obs after the second frame

    res = env.step(np.array([8, 8, 8]))
    assert np.all(backend.actions[2] == perm[8]) and np.all(backend.actions[3] == perm[8])
    assert np.allclose(res.reward, [5 - 0.01, -0.01, -0.01])
    assert not res.terminated.any()


# ------------------------------------------------------------------ determinism & checkpoints


def test_same_seed_same_trajectory() -> None:
    actions = np.random.default_rng(0).integers(0, 9, (60, 4))
    a = run(ProcgenVecEnv("coinrun_10", 4, seed=7), actions)
    b = run(ProcgenVecEnv("coinrun_10", 4, seed=7), actions)
    assert_same(a, b)
    c = run(ProcgenVecEnv("coinrun_10", 4, seed=8), actions)
    assert not all(np.array_equal(x.obs, y.obs) for x, y in zip(a, c))


def test_snapshot_restore_into_new_instance_replays_exactly() -> None:
    rng = np.random.default_rng(1)
    shift = ShiftState()
    for kind in ("permute", "shuffle", "window"):
        shift = next_shift(shift, kind, rng, k=3)
    env = ProcgenVecEnv("maze_5", 4, seed=3, shift=shift)
    run(env, rng.integers(0, 9, (185, 4)))
    snapshot = env.get_state()
    actions = rng.integers(0, 9, (30, 4))
    original = run(env, actions)
    # The replay window must cross time-limit resets, which consume the wrapper's rng.
    assert any(r.truncated.any() for r in original)

    other = ProcgenVecEnv("maze_5", 4, seed=99)
    other.set_state(snapshot)
    assert other.shift == shift and other.level_range == (3, 5)
    replay = run(other, actions)
    assert_same(original, replay)
    # Hidden state (procgen RNGs, wrapper rng, counters) must match too, not just the frames.
    end_a, end_b = env.get_state(), other.get_state()
    assert end_a["procgen_states"] == end_b["procgen_states"]
    assert end_a["rng_state"] == end_b["rng_state"]
    assert np.array_equal(end_a["episode_length"], end_b["episode_length"])
    assert np.array_equal(end_a["episode_return"], end_b["episode_return"])

    with pytest.raises(ValueError):
        ProcgenVecEnv("maze_5", 3, seed=0).set_state(snapshot)


# ------------------------------------------------------------------ shifts in the env


def test_permute_shift_permutes_observations_immediately() -> None:
    actions = np.random.default_rng(0).integers(0, 9, (20, 4))
    perm_state = next_shift(ShiftState(), "permute", np.random.default_rng(0), k=1)
    plain = ProcgenVecEnv("coinrun_10", 4, seed=2)
    permuted = ProcgenVecEnv("coinrun_10", 4, seed=2, shift=perm_state)
    assert np.array_equal(
        permuted.observe_current(), permute_tiles(plain.observe_current(), perm_state.tile_perm)
    )
    for a in actions:
        p, q = plain.step(a), permuted.step(a)
        assert np.array_equal(q.obs, permute_tiles(p.obs, perm_state.tile_perm))
        assert np.array_equal(q.reward, p.reward)

    # Applying a permutation mid-episode changes only what the agent sees.
    before = plain.get_state()["procgen_states"]
    raw = plain.observe_current()
    plain.apply_shift(perm_state)
    assert plain.get_state()["procgen_states"] == before
    assert np.array_equal(plain.observe_current(), permute_tiles(raw, perm_state.tile_perm))
    assert not np.array_equal(plain.observe_current(), raw)


def test_shuffle_shift_remaps_actions_in_real_env() -> None:
    state = next_shift(ShiftState(), "shuffle", np.random.default_rng(4), k=1)
    actions = np.random.default_rng(1).integers(0, 9, (40, 4))
    shuffled = run(ProcgenVecEnv("coinrun_10", 4, seed=6, shift=state), actions)
    mapped = run(ProcgenVecEnv("coinrun_10", 4, seed=6), state.action_perm[actions])
    assert_same(shuffled, mapped)
    unmapped = run(ProcgenVecEnv("coinrun_10", 4, seed=6), actions)
    assert not all(np.array_equal(x.obs, y.obs) for x, y in zip(shuffled, unmapped))


def test_window_and_expand_change_generated_levels() -> None:
    rng = np.random.default_rng(0)
    window = next_shift(next_shift(ShiftState(), "window", rng, k=5), "window", rng, k=5)
    train = ProcgenVecEnv("coinrun_5", 16, seed=0)
    test = ProcgenVecEnv("coinrun_5", 16, seed=0, train=False)
    assert np.all(train.current_level_seeds() < 5)
    assert np.all((test.current_level_seeds() >= 10_000) & (test.current_level_seeds() < 10_005))
    train.step(np.zeros(16, dtype=int))
    train.apply_shift(window)
    test.apply_shift(window)
    assert train.level_range == (10, 5) and test.level_range == (10_010, 5)
    seeds = train.current_level_seeds()
    assert np.all((seeds >= 10) & (seeds < 15))
    seeds = test.current_level_seeds()
    assert np.all((seeds >= 10_010) & (seeds < 10_015))
    # Fresh episodes: no truncation before a full 200 steps (counters were reset).
    res = train.step(np.zeros(16, dtype=int))
    assert not res.truncated.any()

    expand = next_shift(next_shift(ShiftState(), "expand", rng, k=20), "expand", rng, k=20)
    train.apply_shift(expand)
    seeds = train.current_level_seeds()
    assert train.level_range == (0, 45)
    assert np.all(seeds < 45) and np.any(seeds >= 5)


def test_difficulty_builds_hard_env() -> None:
    easy = ProcgenVecEnv("coinrun_10", 4, seed=0)
    hard = ProcgenVecEnv("coinrun_10", 4, seed=0, shift=ShiftState(hard=True))
    assert easy.distribution_mode == "easy" and hard.distribution_mode == "hard"
    # Same rand_seed, same levels, different generator: frames differ.
    assert np.array_equal(easy.current_level_seeds(), hard.current_level_seeds())
    assert not np.any(
        [np.array_equal(e, h) for e, h in zip(easy.observe_current(), hard.observe_current())]
    )
    easy.apply_shift(next_shift(easy.shift, "difficulty", np.random.default_rng(0), k=1))
    assert easy.distribution_mode == "hard" and easy.shift.round == 1


# ------------------------------------------------------------------ evaluation


def test_evaluate_noop_maze_is_capped() -> None:
    returns, lengths = evaluate(lambda obs, active: noop(obs.shape[1])[None], EnvironmentConfig(task="maze_5"), 3, seeds=[0], shifts=[None])
    assert np.array_equal(lengths, [[200, 200, 200]])
    assert np.allclose(returns, -2.0)


def test_evaluate_takes_first_episode_of_every_env() -> None:
    n, seed = 6, 11
    calls, actives = [], []

    def policy(obs: np.ndarray, active: np.ndarray) -> np.ndarray:
        calls.append(obs[0].copy())  # one member
        actives.append(active[0].copy())
        return inner(obs[0])[None]

    def inner(obs: np.ndarray) -> np.ndarray:
        # depends only on each frame, so it gives the same action whichever envs are batched
        return obs.reshape(len(obs), -1).sum(axis=1, dtype=np.int64) % 9

    (returns,), (lengths,) = evaluate(policy, EnvironmentConfig(task="coinrun_10"), n, seeds=[seed], shifts=[None])

    # Independent replay: the same test-level env and the same action stream.
    env = ProcgenVecEnv("coinrun_10", n, seed=seed, train=False)
    assert np.array_equal(env.observe_current(), calls[0])
    replay_policy = inner
    first_len = np.zeros(n, dtype=int)
    first_ret = np.zeros(n, dtype=np.float32)
    obs = env.observe_current()
    for _ in range(MAX_EPISODE_STEPS):
        res = env.step(replay_policy(obs))
        obs = res.obs
        for i in np.flatnonzero((res.terminated | res.truncated) & (first_len == 0)):
            first_len[i], first_ret[i] = res.episode_length[i], res.episode_return[i]
    assert np.all(first_len > 0)
    assert np.array_equal(lengths, first_len) and np.array_equal(returns, first_ret)
    assert len(calls) == lengths.max()  # stops as soon as every env has finished once
    assert all(len(c) == n for c in calls)  # the policy sees every env; finished ones repeat their last action
    assert [int(a.sum()) for a in actives] == [int((lengths > t).sum()) for t in range(len(calls))]  # and which are still in
    assert lengths.min() < lengths.max()  # mixed lengths, so a short-episode bias would show


def test_an_env_closes_while_another_env_is_being_built() -> None:
    """Regression: the garbage collector can finalise an unclosed env while gym3 builds another one
    under cffi's non-reentrant lock; that close must not need the lock (it hung CI forever)."""
    import threading

    env = ProcgenVecEnv("coinrun_10", 2, seed=0)
    inner = env._env
    closed = threading.Event()
    closer = threading.Thread(target=lambda: (inner.close(), closed.set()), daemon=True)
    with inner._ffi._lock:  # what an env build in progress holds
        closer.start()
        closer.join(timeout=30)
        finished_under_lock = closed.is_set()
    closer.join(timeout=30)
    assert finished_under_lock, "closing an env waited for cffi's lock: a finaliser would deadlock"
