"""ALE environment: preprocessing backends agree, shifts change the game, clipping, resume."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest

pytest.importorskip("ale_py")

from plasticity_lab.envs.ale import (  # noqa: E402
    AleSettings,
    AleVecEnv,
    _NativeBackend,
    _PythonBackend,
    area_matrix,
    spec,
)
from plasticity_lab.envs.shifts import ShiftState, gather_image, image_tile_source, next_shift  # noqa: E402


def settings(**kw) -> AleSettings:
    base = dict(
        games=("breakout",), flavours=(), full_action_space=True, sticky_actions=0.0, frame_skip=4, frame_stack=4,
        noop_max=0, max_episode_frames=108000, clip_rewards=True, threads=1,
    )  # fmt: skip
    base.update(kw)
    return AleSettings(**base)


def ale_cfg(task="breakout", shift_type="none", **ale) -> NS:
    base = dict(games=[], flavours=[], full_action_space=True, sticky_actions=0.25, frame_skip=4, frame_stack=4,
                noop_max=0, max_episode_frames=108000, clip_rewards=True, threads=1)  # fmt: skip
    base.update(ale)
    return NS(name="ale", task=task, shift_type=shift_type, ale=NS(**base))


def test_area_matrix_rows_average_and_cover_the_input():
    m = area_matrix(210, 84)
    assert np.allclose(m.sum(axis=1), 1.0)  # each output pixel is an average
    assert np.allclose(m.sum(axis=0), 84 / 210)  # each input pixel is used by total weight n_out/n_in
    flat = np.full((1, 210, 160), 77.0)
    assert np.allclose(m @ flat[0] @ area_matrix(160, 84).T, 77.0)


def test_python_backend_matches_native_frames():
    """The flavour backend (Python, area averaging) reproduces ale-py's C++ preprocessing:
    frames within one grey level, identical rewards and terminations (sticky actions off so both
    emulators are deterministic)."""
    s = settings()
    native, python = _NativeBackend("breakout", 2, s), _PythonBackend("breakout", 2, s, (0, 0))
    a, b = native.reset(np.array([1, 2])), python.reset(np.array([1, 2]))
    assert a.shape == b.shape == (2, 4, 84, 84)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(300):
        act = rng.integers(0, 18, 2)
        oa, ra, ta, tra, _ = native.step(act)
        ob, rb, tb, trb, _ = python.step(act)
        assert np.abs(oa.astype(int) - ob.astype(int)).max() <= 1
        assert np.array_equal(ra, rb) and np.array_equal(ta, tb) and np.array_equal(tra, trb)
        ended += int(ta.sum())
    assert ended > 0  # the comparison covered episode ends and restarts
    native.close()


def test_spec_and_observation_layout():
    sp = spec(ale_cfg())
    assert sp.obs_shape == (84, 84, 4) and sp.obs_dtype == "uint8" and sp.num_actions == 18 and not sp.continuous
    assert sp.encoders[0] == "nature" and {"game", "flavour", "permute", "shuffle", "none"} <= set(sp.shift_types)
    assert spec(ale_cfg(full_action_space=False)).num_actions == 4  # breakout's minimal set
    env = AleVecEnv(settings(), 3, seed=0)
    obs = env.observe_current()
    assert obs.shape == (3, 84, 84, 4) and obs.dtype == np.uint8
    assert obs[..., :3].max() == 0 and obs[..., 3].max() > 0  # newest frame last, blanks before it
    env.close()


def test_game_shift_changes_the_game_and_keeps_the_action_set():
    s = settings(games=("breakout", "pong"))
    env = AleVecEnv(s, 2, seed=0)
    state = next_shift(ShiftState(), "game", np.random.default_rng(0), k=1, num_games=2)
    env.apply_shift(state)
    assert env.game == "pong" and env.num_actions == 18
    pong = AleVecEnv(settings(games=("pong",)), 2, seed=0)
    rng = np.random.default_rng(1)
    for _ in range(5):
        act = rng.integers(0, 18, 2)
        got, want = env.step(act).obs, pong.step(act).obs
    assert np.array_equal(got, want)  # now playing pong exactly as a pong env does
    breakout = AleVecEnv(settings(), 2, seed=0)
    assert not np.array_equal(breakout.observe_current(), pong.observe_current())
    for e in (env, pong, breakout):
        e.close()


def test_flavour_shift_changes_mode_and_difficulty():
    """Breakout difficulty 1 (smaller paddle) and mode 4 play differently from the default."""
    flavours = ((0, 0), (0, 1), (4, 0))
    env = AleVecEnv(settings(flavours=flavours), 1, seed=0)
    frames = []
    for k in range(3):
        if k:
            env.apply_shift(next_shift(env.shift, "flavour", np.random.default_rng(0), k=1, num_flavours=3))
        assert env.flavour == flavours[k]
        rng = np.random.default_rng(0)
        for _ in range(60):
            obs = env.step(rng.integers(0, 18, 1)).obs
        frames.append(obs)
    assert not np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[0], frames[2])
    env.close()


def test_default_flavour_list_is_every_mode_and_difficulty():
    sp = spec(ale_cfg(shift_type="flavour"))
    assert sp.num_flavours == 12 * 2 and sp.info["flavours"][0] == (0, 0)
    with pytest.raises(ValueError, match="no mode 3"):
        spec(ale_cfg(shift_type="flavour", flavours=[[3, 0], [0, 0]]))


def test_permute_and_shuffle_shifts():
    base = AleVecEnv(settings(), 2, seed=5)
    rng = np.random.default_rng(0)
    state = next_shift(ShiftState(), "permute", rng, k=1, num_tiles=441)
    permuted = AleVecEnv(settings(), 2, seed=5, shift=state)
    source = image_tile_source(84, 84, state.tile_perm)
    for _ in range(10):
        act = rng.integers(0, 18, 2)
        a, b = base.step(act).obs, permuted.step(act).obs
    assert np.array_equal(b, gather_image(a, source)) and not np.array_equal(a, b)
    # shuffle: agent action i is game action perm[i]
    shuffle = next_shift(ShiftState(), "shuffle", rng, k=1, num_actions=18)
    shuffled = AleVecEnv(settings(), 2, seed=9, shift=shuffle)
    plain = AleVecEnv(settings(), 2, seed=9)
    for _ in range(20):
        act = rng.integers(0, 18, 2)
        assert np.array_equal(shuffled.step(act).obs, plain.step(shuffle.action_perm[act]).obs)
    for e in (base, permuted, shuffled, plain):
        e.close()


class ScriptedBackend:
    """Backend stub: rewards 7 and -3 each step; env 0's episode ends at the second step."""

    def __init__(self):
        self.t = 0

    def step(self, actions):
        self.t += 1
        obs = np.zeros((2, 4, 84, 84), np.uint8)
        return obs, np.array([7.0, -3.0]), np.array([self.t == 2, False]), np.zeros(2, bool), obs

    def close(self):
        pass


@pytest.mark.parametrize("train, rewards", [(True, [1.0, -1.0]), (False, [7.0, -3.0])])
def test_training_rewards_clipped_episode_returns_raw(train, rewards):
    env = AleVecEnv(settings(), 2, seed=0, train=train)
    env._backend.close()
    env._backend = ScriptedBackend()
    first = env.step(np.zeros(2, np.int64))
    second = env.step(np.zeros(2, np.int64))
    assert first.reward.tolist() == rewards
    assert second.terminated.tolist() == [True, False]
    assert second.episode_return[0] == 14.0 and second.episode_length[0] == 2  # raw score


def test_resume_restarts_episodes_from_the_saved_generator():
    s = settings(sticky_actions=0.25, games=("breakout", "pong"))
    env = AleVecEnv(s, 2, seed=3)
    env.apply_shift(next_shift(ShiftState(), "game", np.random.default_rng(0), k=1, num_games=2))
    for _ in range(7):
        env.step(np.ones(2, np.int64))
    state = env.get_state()
    fresh = AleVecEnv(s, 2, seed=99)
    fresh.set_state(state)
    again = AleVecEnv(s, 2, seed=42)
    again.set_state(state)
    assert fresh.game == "pong" and fresh.shift == env.shift
    # episodes restart (a new pong game, not the one in progress), deterministically
    assert np.array_equal(fresh.observe_current(), again.observe_current())
    assert fresh.observe_current()[..., :3].max() == 0
    with pytest.raises(ValueError, match="not an ALE state"):
        fresh.set_state({"family": "gym"})
    for e in (env, fresh, again):
        e.close()


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown Atari game 'Pong'"):
        spec(ale_cfg(task="Pong"))
    with pytest.raises(ValueError, match="must start with the task"):
        spec(ale_cfg(games=["pong", "breakout"]))
    with pytest.raises(ValueError, match="full action set"):
        spec(ale_cfg(games=["breakout", "pong"], full_action_space=False))


@pytest.mark.parametrize("flavours", [(), ((0, 0),)], ids=["native", "python"])
@pytest.mark.parametrize("frame_skip", [4, 2])
def test_episode_cap_counts_emulator_frames_not_agent_steps(flavours, frame_skip):
    """max_episode_frames 40: a truncation after 40 / frame_skip agent steps, in both backends
    (breakout does not start without FIRE, so NOOPs never end a game)."""
    env = AleVecEnv(settings(max_episode_frames=40, frame_skip=frame_skip, flavours=flavours), 2, seed=0)
    cap = 40 // frame_skip
    for step in range(1, cap + 1):
        res = env.step(np.zeros(2, dtype=np.int64))
        assert not res.terminated.any()
        assert res.truncated.all() == (step == cap) and res.truncated.any() == (step == cap), step
    assert res.episode_length.tolist() == [cap, cap]
    env.close()
