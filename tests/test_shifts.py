"""Tests for plasticity_lab.envs.shifts (pure numpy, no ProcGen)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from plasticity_lab.envs.shifts import (
    NUM_ACTIONS,
    NUM_TILES,
    SHIFT_TYPES,
    TEST_LEVEL_START,
    ShiftState,
    distribution_mode,
    level_range,
    map_actions,
    next_shift,
    permute_tiles,
)


def tiles_of(frames: np.ndarray) -> np.ndarray:
    """(n, 256, 4, 4, 3) view of the 4x4 tiles in row-major grid order, written independently."""
    n = frames.shape[0]
    out = np.empty((n, 256, 4, 4, 3), dtype=frames.dtype)
    for r in range(16):
        for c in range(16):
            out[:, r * 16 + c] = frames[:, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4]
    return out


def distinct_tile_frames(n: int, seed: int = 0) -> np.ndarray:
    """Random frames whose 256 tiles are pairwise distinct (tile id written into one pixel)."""
    frames = np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    ids = np.arange(256, dtype=np.uint8).reshape(16, 16)
    frames[:, ::4, ::4, 0] = ids
    return frames


def test_shift_types_are_the_protocol_set() -> None:
    assert SHIFT_TYPES[:6] == ("permute", "shuffle", "window", "expand", "difficulty", "none")
    assert set(SHIFT_TYPES[6:]) == {"game", "flavour", "friction", "mass", "gravity"}


def test_permute_tiles_is_a_true_tile_permutation() -> None:
    frames = distinct_tile_frames(3)
    state = next_shift(ShiftState(), "permute", np.random.default_rng(1), k=1)
    out = permute_tiles(frames, state.tile_perm)
    assert out.shape == frames.shape and out.dtype == np.uint8
    src, dst = tiles_of(frames), tiles_of(out)
    for b in range(len(frames)):
        # Each output tile equals exactly one input tile, and every input tile is used once.
        matches = np.all(dst[b][:, None] == src[b][None, :], axis=(2, 3, 4))
        assert np.array_equal(matches.sum(axis=1), np.ones(256))
        assert np.array_equal(matches.sum(axis=0), np.ones(256))
        # Convention: output tile j shows input tile tile_perm[j].
        assert np.array_equal(matches.argmax(axis=1), state.tile_perm)
    assert not np.array_equal(out, frames)


def test_permute_tiles_identity_when_none() -> None:
    frames = distinct_tile_frames(2)
    assert np.array_equal(permute_tiles(frames, None), frames)
    assert np.array_equal(permute_tiles(frames, np.arange(NUM_TILES)), frames)


def test_permute_tiles_rejects_bad_frames() -> None:
    with pytest.raises(ValueError):
        permute_tiles(np.zeros((1, 32, 32, 3), dtype=np.uint8), np.arange(NUM_TILES))
    with pytest.raises(ValueError):
        permute_tiles(np.zeros((1, 64, 64, 3), dtype=np.float32), np.arange(NUM_TILES))


def test_permute_each_shift_draws_a_new_permutation() -> None:
    rng = np.random.default_rng(0)
    s0 = ShiftState()
    assert s0.tile_perm is None
    s1 = next_shift(s0, "permute", rng, k=1)
    s2 = next_shift(s1, "permute", rng, k=1)
    assert s1.round == 1 and s2.round == 2
    assert sorted(s1.tile_perm.tolist()) == list(range(NUM_TILES))
    assert not np.array_equal(s1.tile_perm, np.arange(NUM_TILES))
    assert not np.array_equal(s1.tile_perm, s2.tile_perm)
    frames = distinct_tile_frames(1)
    out1, out2 = permute_tiles(frames, s1.tile_perm), permute_tiles(frames, s2.tile_perm)
    assert not np.array_equal(out1, out2)
    # Only the permutation changes.
    assert (s2.action_perm, s2.level_offset, s2.level_extra, s2.hard) == (None, 0, 0, False)


def test_shuffle_permutes_actions() -> None:
    rng = np.random.default_rng(3)
    s1 = next_shift(ShiftState(), "shuffle", rng, k=1)
    s2 = next_shift(s1, "shuffle", rng, k=1)
    perm = s1.action_perm
    assert sorted(perm.tolist()) == list(range(NUM_ACTIONS))
    assert not np.array_equal(perm, np.arange(NUM_ACTIONS))
    assert not np.array_equal(s2.action_perm, perm)
    actions = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 0])
    assert np.array_equal(map_actions(actions, perm), [perm[a] for a in actions])
    assert np.array_equal(map_actions(actions, None), actions)
    assert s2.tile_perm is None


def test_window_slides_train_and_test_ranges() -> None:
    rng = np.random.default_rng(0)
    s = ShiftState()
    assert level_range(100, s, train=True) == (0, 100)
    assert level_range(100, s, train=False) == (TEST_LEVEL_START, 100)
    s = next_shift(next_shift(s, "window", rng, k=25), "window", rng, k=25)
    assert s.level_offset == 50 and s.round == 2
    assert level_range(100, s, train=True) == (50, 100)
    assert level_range(100, s, train=False) == (TEST_LEVEL_START + 50, 100)


def test_expand_grows_ranges() -> None:
    rng = np.random.default_rng(0)
    s = next_shift(next_shift(ShiftState(), "expand", rng, k=30), "expand", rng, k=30)
    assert s.level_extra == 60
    assert level_range(100, s, train=True) == (0, 160)
    assert level_range(100, s, train=False) == (TEST_LEVEL_START, 160)


def test_difficulty_toggles() -> None:
    rng = np.random.default_rng(0)
    s0 = ShiftState()
    s1 = next_shift(s0, "difficulty", rng, k=1)
    s2 = next_shift(s1, "difficulty", rng, k=1)
    assert [distribution_mode(s) for s in (s0, s1, s2)] == ["easy", "hard", "easy"]


def test_none_only_increments_round() -> None:
    s = ShiftState(
        round=3, action_perm=np.arange(9)[::-1], level_offset=7, level_extra=2, hard=True
    )
    n = next_shift(s, "none", np.random.default_rng(0), k=5)
    assert n.round == 4
    assert {**n.to_dict(), "round": 3} == s.to_dict()


def test_shifts_compose() -> None:
    rng = np.random.default_rng(0)
    s = next_shift(ShiftState(), "permute", rng, k=10)
    s = next_shift(s, "window", rng, k=10)
    perm = s.tile_perm.copy()
    s = next_shift(s, "difficulty", rng, k=10)
    assert np.array_equal(s.tile_perm, perm) and s.level_offset == 10 and s.hard and s.round == 3


def test_unknown_shift_and_bad_k() -> None:
    with pytest.raises(ValueError, match="permute.*shuffle.*window.*expand.*difficulty.*none"):
        next_shift(ShiftState(), "rotate", np.random.default_rng(0), k=1)
    for kind in ("window", "expand"):
        with pytest.raises(ValueError):
            next_shift(ShiftState(), kind, np.random.default_rng(0), k=0)


def test_state_roundtrip_is_plain_and_frozen() -> None:
    rng = np.random.default_rng(0)
    s = ShiftState()
    for kind in ("permute", "shuffle", "window", "expand", "difficulty"):
        s = next_shift(s, kind, rng, k=4)
    data = s.to_dict()
    restored = ShiftState.from_dict(json.loads(json.dumps(data)))
    assert restored == s
    assert np.array_equal(restored.tile_perm, s.tile_perm)
    assert restored != ShiftState()
    with pytest.raises(AttributeError):
        s.round = 0  # type: ignore[misc]
    with pytest.raises(ValueError):
        s.tile_perm[0] = 1


def test_invalid_permutations_rejected() -> None:
    with pytest.raises(ValueError):
        ShiftState(tile_perm=np.zeros(NUM_TILES, dtype=int))
    with pytest.raises(ValueError):
        ShiftState(action_perm=np.array([0, 2, 2]))


def test_new_shift_types_step_and_draw() -> None:
    rng = np.random.default_rng(0)
    state = ShiftState()
    games = []
    for _ in range(4):
        state = next_shift(state, "game", rng, k=1, num_games=3)
        games.append(state.game)
    assert games == [1, 2, 0, 1] and state.round == 4
    assert next_shift(ShiftState(), "flavour", rng, k=1, num_flavours=2).flavour == 1
    draws = [next_shift(ShiftState(), "friction", rng, k=1).friction for _ in range(2000)]
    logs = np.log10(draws)
    # log-uniform over [0.02, 2] as loss-of-plasticity's frictions file
    assert logs.min() >= np.log10(0.02) and logs.max() <= np.log10(2.0)
    assert abs(np.mean(logs) - np.mean(np.log10([0.02, 2.0]))) < 0.03
    with pytest.raises(ValueError, match="at least 2"):
        next_shift(ShiftState(), "game", rng, k=1, num_games=1)
    old = ShiftState().to_dict()
    for key in ("game", "flavour", "friction", "mass", "gravity"):
        old.pop(key)
    assert ShiftState.from_dict(old) == ShiftState()  # checkpoints written before these fields


def test_image_tile_permutation_on_atari_stacks() -> None:
    from plasticity_lab.envs.shifts import gather_image, image_tile_source

    frames = np.random.default_rng(0).integers(0, 256, (2, 84, 84, 4), dtype=np.uint8)
    perm = np.random.default_rng(1).permutation(441)
    out = gather_image(frames, image_tile_source(84, 84, perm))
    for j in (0, 5, 440):
        r, c = divmod(j, 21)
        sr, sc = divmod(int(perm[j]), 21)
        assert np.array_equal(out[:, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4], frames[:, 4 * sr : 4 * sr + 4, 4 * sc : 4 * sc + 4])
    with pytest.raises(ValueError, match="does not split"):
        image_tile_source(210, 160, perm)
