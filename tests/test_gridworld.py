"""Gridworld gather testbed: dynamics by hand, shifts, determinism, checkpoint replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plasticity_lab.config import ModelConfig
from plasticity_lab.envs.gridworld import GridGatherVecEnv, Layouts, make_layouts, parse_gather_task
from plasticity_lab.envs.shifts import ShiftState, next_shift
from plasticity_lab.nets import build_model


def own_layouts(env: GridGatherVecEnv) -> GridGatherVecEnv:
    """``env`` (a population of one) with a writable copy of its layouts to build a world by
    hand (make_layouts' are cached and read-only)."""
    population = env.population
    population.member_layouts = [Layouts(*(np.array(a) for a in (lay.walls, lay.objects, lay.start))) for lay in population.member_layouts]
    population._index_layouts()
    return env


def blank_env(n: int = 2, size: int = 5, steps: int = 4) -> GridGatherVecEnv:
    env = own_layouts(GridGatherVecEnv("gather_3", n, seed=0, size=size, episode_steps=steps))
    env.layouts.walls[:] = False
    env.layout_idx[:] = 0
    env.objects[:] = 0
    env.pos[:] = [2, 2]
    env.steps[:] = 0
    env.returns[:] = 0
    return env


def test_moves_walls_borders_and_rewards_by_hand():
    env = blank_env()
    env.layouts.walls[0, 1, 2] = True  # above the agent
    env.objects[:, 2, 3] = 1  # right of the agent
    env.objects[:, 3, 2] = -1  # below
    env.objects[:, 0, 0] = 1  # keeps the episode going
    res = env.step(np.array([0, 3]))  # up (blocked by the wall), right (collect +1)
    assert env.pos.tolist() == [[2, 2], [2, 3]]
    assert res.reward.tolist() == [0.0, 1.0]
    assert env.objects[1, 2, 3] == 0 and env.objects[0, 2, 3] == 1
    res = env.step(np.array([1, 3]))  # down onto -1; right
    assert res.reward.tolist() == [-1.0, 0.0] and env.pos.tolist() == [[3, 2], [2, 4]]
    res = env.step(np.array([1, 3]))  # down; right is the border: stays
    assert env.pos.tolist() == [[4, 2], [2, 4]]


def test_time_limit_truncates_with_final_obs_and_really_resets():
    env = blank_env(steps=3)
    env.objects[:, 0, 0] = 1
    for action in (2, 3):  # left, right
        res = env.step(np.array([action, action]))
        assert not res.truncated.any()
    before = env.observe_current()
    res = env.step(np.array([2, 2]))
    assert res.truncated.all() and not res.terminated.any()
    assert res.final_obs is not None and not np.array_equal(res.final_obs, before)  # agent moved
    assert res.episode_length.tolist() == [3, 3]
    assert env.steps.tolist() == [0, 0]


def test_collecting_every_good_object_terminates():
    env = blank_env()
    env.objects[0, 2, 3] = 1
    env.objects[1, 0, 0] = 1
    res = env.step(np.array([3, 0]))
    assert res.terminated.tolist() == [True, False]
    assert res.episode_return[0] == 1.0


def test_layouts_are_fixed_by_id_and_train_test_differ():
    a = make_layouts(0, 3, 9, 6, 3)
    with pytest.raises(ValueError, match="read-only"):  # cached: shared by every environment on these ids
        a.walls[0, 0, 0] = True
    b = make_layouts(1, 2, 9, 6, 3)
    assert np.array_equal(a.walls[1:], b.walls) and np.array_equal(a.objects[1:], b.objects)
    train = GridGatherVecEnv("gather_4", 4, seed=0)
    test = GridGatherVecEnv("gather_4", 4, seed=0, train=False)
    assert not np.array_equal(train.layouts.walls, test.layouts.walls)
    assert ((train.layouts.objects > 0).sum(axis=(1, 2)) == 6).all()


def test_permute_shift_is_a_cell_permutation_of_the_same_state():
    plain = GridGatherVecEnv("gather_4", 3, seed=5)
    shifted_state = next_shift(ShiftState(), "permute", np.random.default_rng(0), k=1, num_tiles=81, num_actions=4)
    permuted = GridGatherVecEnv("gather_4", 3, seed=5, shift=shifted_state)
    perm = shifted_state.tile_perm
    for _ in range(5):
        a, b = plain.observe_current(), permuted.observe_current()
        assert np.array_equal(b.reshape(3, 81, 3), a.reshape(3, 81, 3)[:, perm])
        acts = np.array([0, 1, 3])
        plain.step(acts)
        permuted.step(acts)


def test_shuffle_maps_actions():
    state = next_shift(ShiftState(), "shuffle", np.random.default_rng(1), k=1, num_tiles=81, num_actions=4)
    plain = blank_env(n=4)
    shuffled = blank_env(n=4)
    shuffled.apply_shift(state)
    own_layouts(shuffled).layouts.walls[:] = False
    shuffled.objects[:, 0, 0] = plain.objects[:, 0, 0] = 1
    shuffled.step(np.arange(4))
    plain.step(state.action_perm[np.arange(4)])
    assert np.array_equal(shuffled.pos, plain.pos)


@pytest.mark.parametrize("kind,first,count,bad", [("window", 4, 4, 3), ("expand", 0, 8, 3), ("difficulty", 0, 4, 6)])
def test_layout_shifts_change_what_is_generated(kind, first, count, bad):
    env = GridGatherVecEnv("gather_4", 2, seed=0)
    env.apply_shift(next_shift(ShiftState(), kind, np.random.default_rng(0), k=4, num_tiles=81, num_actions=4))
    expected = make_layouts(first, count, 9, 6, bad)
    assert np.array_equal(env.layouts.walls, expected.walls) and np.array_equal(env.layouts.objects, expected.objects)
    assert ((env.layouts.objects < 0).sum(axis=(1, 2)) == bad).all()


def test_determinism_and_state_round_trip():
    a = GridGatherVecEnv("gather_5", 8, seed=3)
    rng = np.random.default_rng(0)
    for _ in range(30):
        a.step(rng.integers(0, 4, 8))
    snap = a.get_state()
    acts = rng.integers(0, 4, (80, 8))
    first = [a.step(x) for x in acts]
    b = GridGatherVecEnv("gather_5", 8, seed=99)
    b.set_state(snap)
    second = [b.step(x) for x in acts]
    for r1, r2 in zip(first, second):
        assert np.array_equal(r1.obs, r2.obs) and np.array_equal(r1.reward, r2.reward)
        assert np.array_equal(r1.terminated, r2.terminated) and np.array_equal(r1.truncated, r2.truncated)


def test_bad_task_and_actions():
    with pytest.raises(ValueError, match="gather_K"):
        parse_gather_task("gather_0")
    env = GridGatherVecEnv("gather_2", 2, seed=0)
    with pytest.raises(ValueError):
        env.step(np.array([0, 4]))


@pytest.mark.parametrize("enc", ["conv11", "mlp"])
def test_small_encoders(enc):
    model = build_model(ModelConfig(enc_type=enc, h_size=64), 4, (9, 9, 3))
    logits, value, feats = model(torch.zeros(5, 9, 9, 3, dtype=torch.uint8))
    assert logits.shape == (5, 4) and value.shape == (5,) and feats.shape == (5, 64)
    assert len(model.activations(torch.zeros(2, 9, 9, 3, dtype=torch.uint8))) == len(model.blocks)


def test_a_population_renders_each_members_current_permutation_after_a_shift():
    """The gather index of every row is kept between steps: after one member's shift (and after
    a restored state) the whole population's frames are each member's own, as a member's view
    renders them alone."""
    from plasticity_lab.envs.gridworld import GridGatherPopulation

    rng = np.random.default_rng(3)
    states = [ShiftState(tile_perm=rng.permutation(49)) for _ in range(3)]
    population = GridGatherPopulation("gather_4", 5, [0, 1, 2], shifts=states, size=7, episode_steps=6)

    def agrees() -> bool:
        every = population.observe_current()
        return all(np.array_equal(every[k], population.member(k).observe_current()) for k in range(3))

    for t in range(8):
        population.step(rng.integers(0, 4, (3, 5)))
        assert agrees()
        if t == 2:
            population.apply_shift(1, next_shift(states[1], "permute", rng, k=1, num_tiles=49))
        if t == 5:
            saved = population.get_state(0)
            population.apply_shift(0, ShiftState(tile_perm=rng.permutation(49)))
            assert agrees()
            population.set_state(0, saved)
