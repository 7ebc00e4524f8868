"""Round 1 starts permuted, as the reference builds its environments (envs/mdps.py permutes the
frame from construction); evaluation and a resumed run see the same initial state."""

from __future__ import annotations

import numpy as np
import pytest

from plasticity_lab.config import RunConfig
from plasticity_lab.envs import make_env
from plasticity_lab.envs.shifts import SHIFT_TYPES, ShiftState, initial_shift, next_shift, permute_tiles
from plasticity_lab.experiment.runner import Run

pytestmark = pytest.mark.usefixtures("one_thread")

PROCGEN = {
    "environment": {"task": "coinrun_10", "env_copies": 4},
    "model": {"h_size": 16},
    "ppo_trainer": {"num_epochs": 4, "shift_points": [2], "buffer_size": 64, "batch_size": 32, "num_passes": 1,
                    "test_interval": 2, "test_episodes": 3},
    "diagnostics": {"enabled": False},
}
GRID = {**PROCGEN, "environment": {"name": "gridworld", "task": "gather_4", "env_copies": 4}, "model": {"h_size": 16, "enc_type": "conv11"}}


def make_run(raw: dict, tmp_path, seed: int = 0) -> Run:
    return Run(RunConfig.model_validate(raw), tmp_path / f"run{seed}", seed=seed, device="cpu")


def unpermuted(env) -> np.ndarray:
    """The env's current frames without any tile permutation (the permutation is only a view)."""
    shift = env.shift
    env.apply_shift(ShiftState())
    raw = env.observe_current()
    env.apply_shift(shift)
    return raw


def cell_permute(frames: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Gridworld: output cell j shows input cell perm[j] (one cell = one pixel)."""
    n, h, w, c = frames.shape
    return frames.reshape(n, h * w, c)[:, perm].reshape(frames.shape)


def test_initial_shift_permutes_only_for_permute():
    state = initial_shift("permute", np.random.default_rng(0))
    assert state.round == 0 and state.tile_perm is not None
    assert not np.array_equal(state.tile_perm, np.arange(len(state.tile_perm)))
    assert state.action_perm is None and (state.level_offset, state.level_extra, state.hard) == (0, 0, False)
    # Each later shift draws a new permutation from the same generator.
    rng = np.random.default_rng(0)
    first = initial_shift("permute", rng)
    second = next_shift(first, "permute", rng, k=1)
    assert second.round == 1 and not np.array_equal(first.tile_perm, second.tile_perm)
    # The reference starts every other shift type unshifted (identity actions, levels [0, K), easy).
    for kind in set(SHIFT_TYPES) - {"permute"}:
        rng = np.random.default_rng(0)
        assert initial_shift(kind, rng) == ShiftState()
        assert rng.integers(1 << 30) == np.random.default_rng(0).integers(1 << 30)  # no draw consumed
    with pytest.raises(ValueError, match="unknown shift type"):
        initial_shift("rotate", np.random.default_rng(0))


def test_round1_training_frames_are_a_tile_permutation_of_the_raw_frames(tmp_path):
    run = make_run(PROCGEN, tmp_path)
    perm = run.member.shift_state.tile_perm
    assert run.member.task_index == 0 and perm is not None and run.member.env.shift == run.member.shift_state
    raw = unpermuted(run.member.env)
    seen = run.member.env.observe_current()
    assert not np.array_equal(seen, raw)
    assert np.array_equal(seen, permute_tiles(raw, perm))
    # Same seed, same round-1 permutation; another seed, another one.
    assert make_run(PROCGEN, tmp_path, seed=0).member.shift_state == run.member.shift_state
    assert make_run(PROCGEN, tmp_path, seed=1).member.shift_state != run.member.shift_state


def test_round1_gridworld_cells_are_permuted(tmp_path):
    run = make_run(GRID, tmp_path)
    perm = run.member.shift_state.tile_perm
    assert perm is not None and len(perm) == 9 * 9
    raw = unpermuted(run.member.env)
    assert np.array_equal(run.member.env.observe_current(), cell_permute(raw, perm))
    assert not np.array_equal(run.member.env.observe_current(), raw)


def test_evaluation_sees_the_round1_permutation(tmp_path):
    run = make_run(PROCGEN, tmp_path)
    seen: list[np.ndarray] = []
    sample = run.policy_sample

    def spy(obs, gen, needed=None):
        seen.append(obs.numpy().copy())
        return sample(obs, gen, needed)

    run.policy_sample = spy
    run.evaluate(0)
    # The evaluation env is built from seed eval_seed + epoch on the test levels.
    test_env = make_env(run.env_cfg, run.ppo.test_episodes, seed=run.member.eval_seed, train=False)
    assert np.array_equal(seen[0][0], permute_tiles(test_env.observe_current(), run.member.shift_state.tile_perm))


def test_a_restored_run_keeps_the_checkpointed_round1_state(tmp_path):
    original = make_run(PROCGEN, tmp_path, seed=0)
    original.run_epoch(0)
    state = original.checkpoint_state(original.member, 1, 0.0)
    assert state["shift_state"]["tile_perm"] == original.member.shift_state.tile_perm.tolist()
    other = make_run(PROCGEN, tmp_path, seed=1)  # draws its own, different round-1 permutation
    assert other.member.shift_state != original.member.shift_state
    other.restore([state])
    assert other.member.shift_state == original.member.shift_state and other.member.env.shift == original.member.shift_state
    assert np.array_equal(other.member.env.observe_current(), original.member.env.observe_current())
    # The next shift continues the original's sequence.
    original.shift(0)
    other.shift(0)
    assert other.member.shift_state == original.member.shift_state and other.member.shift_state.round == 1
