"""MinAtar environment: copies are the package's games, padding, shifts against hand-computed
references, sticky-action rate, bit-exact resume (environment and whole run), bad input."""

from __future__ import annotations

import csv
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("minatar")

import minatar  # noqa: E402

from plasticity_lab.cli import train_main  # noqa: E402
from plasticity_lab.config import ModelConfig, RunConfig  # noqa: E402
from plasticity_lab.envs.minatar import GAMES, MinatarSettings, MinatarVecEnv, spec  # noqa: E402
from plasticity_lab.envs.shifts import ShiftState, next_shift  # noqa: E402
from plasticity_lab.experiment.runner import Run  # noqa: E402
from plasticity_lab.nets.actor_critic import build_model  # noqa: E402
from tests.conftest import interrupt_at, merge


def settings(*games: str, sticky: float = 0.1, cap: int = 10_000) -> MinatarSettings:
    return MinatarSettings(games=games or ("breakout",), sticky_actions=sticky, difficulty_ramping=True, max_episode_steps=cap)


def minatar_cfg(task="breakout", shift_type="none", **minatar_opts) -> NS:
    opts = dict(games=[], sticky_actions=0.1, difficulty_ramping=True, max_episode_steps=10_000)
    opts.update(minatar_opts)
    return NS(name="minatar", task=task, shift_type=shift_type, minatar=NS(**opts))


def package_copies(game: str, seeds: list[int]) -> list[minatar.Environment]:
    envs = []
    for seed in seeds:
        env = minatar.Environment(game)  # the package defaults: sticky actions 0.1, difficulty ramping
        env.seed(seed)
        env.reset()
        envs.append(env)
    return envs


def test_spec_lists_the_family():
    sp = spec(minatar_cfg())
    assert sp.obs_shape == (10, 10, 10) and sp.obs_dtype == "uint8" and sp.num_actions == 6 and not sp.continuous
    assert sp.encoders[0] == "minatar" and set(sp.shift_types) == {"game", "permute", "shuffle", "none"}
    assert sp.num_tiles == 100 and sp.num_games == 1
    assert GAMES == ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
    assert spec(minatar_cfg("space_invaders", games=["space_invaders", "asterix", "seaquest"])).num_games == 3


@pytest.mark.parametrize("game", GAMES)
def test_copies_play_the_package_game_with_its_channels_zero_padded(game):
    """Copy i is ``minatar.Environment(game)`` seeded with the generator's i-th draw: same
    rewards, terminations and frames (its C channels as 0/255 in channels [0, C), zeros after)
    step for step, sticky actions included."""
    env = MinatarVecEnv(settings(game), 3, seed=7)
    refs = package_copies(game, np.random.default_rng(7).integers(0, 2**31 - 1, 3).tolist())
    channels = refs[0].state_shape()[2]
    rng = np.random.default_rng(1)
    ended = 0
    for _ in range(400):
        actions = rng.integers(0, 6, 3)
        res = env.step(actions)
        for i, ref in enumerate(refs):
            reward, done = ref.act(int(actions[i]))
            assert res.reward[i] == reward and res.terminated[i] == done
            if done:
                ended += 1
                ref.reset()
            assert np.array_equal(res.obs[i, ..., :channels], ref.state().astype(np.uint8) * 255)
            assert not res.obs[i, ..., channels:].any()
    assert res.obs.shape == (3, 10, 10, 10) and res.obs.dtype == np.uint8
    assert ended > 0 or game == "freeway"  # episode ends and restarts were compared (Freeway lasts 2500 steps)


def test_widest_game_sets_the_padding():
    widths = {game: minatar.Environment(game).state_shape()[2] for game in GAMES}
    assert max(widths.values()) == 10 == widths["seaquest"] and widths["breakout"] == 4


def test_permute_moves_cells_of_every_channel_by_one_permutation():
    perm = next_shift(ShiftState(), "permute", np.random.default_rng(0), k=1, num_tiles=100).tile_perm
    plain = MinatarVecEnv(settings("seaquest"), 2, seed=3)
    permuted = MinatarVecEnv(settings("seaquest"), 2, seed=3, shift=ShiftState(tile_perm=perm))
    rng = np.random.default_rng(0)
    for _ in range(30):
        actions = rng.integers(0, 6, 2)
        a, b = plain.step(actions).obs, permuted.step(actions).obs
        expected = np.zeros_like(a)
        for cell in range(100):  # output cell (r, c) shows input cell perm[10 r + c], all channels
            src = perm[cell]
            expected[:, cell // 10, cell % 10, :] = a[:, src // 10, src % 10, :]
        assert np.array_equal(b, expected)
    assert not np.array_equal(a, b)


def test_shuffle_maps_agent_action_i_to_game_action_perm_i():
    perm = next_shift(ShiftState(), "shuffle", np.random.default_rng(0), k=1, num_actions=6).action_perm
    shuffled = MinatarVecEnv(settings("space_invaders"), 2, seed=9, shift=ShiftState(action_perm=perm))
    plain = MinatarVecEnv(settings("space_invaders"), 2, seed=9)
    rng = np.random.default_rng(2)
    for _ in range(200):
        actions = rng.integers(0, 6, 2)
        got, want = shuffled.step(actions), plain.step(perm[actions])
        assert np.array_equal(got.obs, want.obs) and np.array_equal(got.reward, want.reward)
    different = MinatarVecEnv(settings("space_invaders"), 2, seed=9, shift=ShiftState(action_perm=perm))
    same_plain = MinatarVecEnv(settings("space_invaders"), 2, seed=9)
    outs = [(different.step(a).obs, same_plain.step(a).obs) for a in rng.integers(0, 6, (50, 2))]
    assert any(not np.array_equal(x, y) for x, y in outs)  # the shuffle changes what an action does


def test_game_shift_plays_the_next_game_in_the_same_observation_layout():
    env = MinatarVecEnv(settings("breakout", "seaquest"), 2, seed=5)
    breakout = env.observe_current()
    assert not breakout[..., 4:].any()  # Breakout's 4 channels, the rest padding
    env.apply_shift(next_shift(env.shift, "game", np.random.default_rng(0), k=1, num_games=2))
    assert env.game == "seaquest" and env.num_actions == 6
    draws = np.random.default_rng(5)
    draws.integers(0, 2**31 - 1, 2)  # Breakout's copies took the first draws
    refs = package_copies("seaquest", draws.integers(0, 2**31 - 1, 2).tolist())
    obs = env.observe_current()
    assert obs.shape == breakout.shape and obs[..., 7].any()  # Seaquest's oxygen gauge, channel 7
    rng = np.random.default_rng(3)
    for _ in range(100):
        actions = rng.integers(0, 6, 2)
        res = env.step(actions)
        for i, ref in enumerate(refs):
            reward, done = ref.act(int(actions[i]))
            if done:
                ref.reset()
            assert res.reward[i] == reward and np.array_equal(res.obs[i] == 255, ref.state())


@pytest.mark.parametrize("sticky", [0.1, 0.0])
def test_sticky_actions_repeat_the_previous_action_at_the_configured_rate(sticky):
    """Agent actions cycle through all 6, so the game executing another action than the chosen
    one is a sticky repeat (a repeat is invisible only after 5 sticky steps in a row, p = 1e-5)."""
    env = MinatarVecEnv(settings("breakout", sticky=sticky), 16, seed=0)
    executed = []
    for copy in env._copies:
        act = copy.env.act
        copy.env.act = lambda a, act=act: (executed.append(a), act(a))[1]
    steps = 2000
    for t in range(steps):
        env.step(np.full(16, t % 6))
    executed_by_step = np.array(executed).reshape(steps, 16)
    rate = (executed_by_step != (np.arange(steps) % 6)[:, None]).mean()
    assert abs(rate - sticky) < 0.01  # 32000 Bernoulli draws: sd 0.0017 at p = 0.1


def test_episode_cap_truncates_with_the_final_frame():
    env = MinatarVecEnv(settings("freeway", cap=5), 2, seed=0)
    for t in range(5):
        res = env.step(np.zeros(2, np.int64))
    assert res.truncated.all() and not res.terminated.any() and (res.episode_length == 5).all()
    assert res.final_obs is not None and not np.array_equal(res.final_obs, res.obs)


def test_state_round_trip_continues_bit_exactly():
    s = settings("breakout", "asterix")
    perm = np.random.default_rng(1).permutation(100)
    a = MinatarVecEnv(s, 4, seed=3)
    a.apply_shift(ShiftState(game=1, tile_perm=perm))
    rng = np.random.default_rng(0)
    for _ in range(50):
        a.step(rng.integers(0, 6, 4))
    snap = a.get_state()
    actions = rng.integers(0, 6, (300, 4))
    first = [a.step(x) for x in actions]
    b = MinatarVecEnv(s, 4, seed=99)  # another seed and game: everything comes from the snapshot
    b.set_state(snap)
    assert b.game == "asterix"
    second = [b.step(x) for x in actions]
    assert sum(int(r.terminated.sum()) for r in first) > 0
    for r1, r2 in zip(first, second):
        assert np.array_equal(r1.obs, r2.obs) and np.array_equal(r1.reward, r2.reward)
        assert np.array_equal(r1.terminated, r2.terminated) and np.array_equal(r1.episode_return, r2.episode_return)
    assert a.rng.bit_generator.state == b.rng.bit_generator.state
    with pytest.raises(ValueError, match="not a MinAtar state"):
        b.set_state({"family": "ale"})


def test_run_resumes_bit_exactly_from_a_checkpoint(tmp_path):
    """A run stopped after its checkpoint and resumed writes the uninterrupted run's metrics and
    diagnostics: the checkpoint after epoch 3 (past the game shift, not at it) holds Space
    Invaders episodes in progress, which continue."""
    raw = {
        "experiment": {"save_freq": 2},
        "environment": {"name": "minatar", "task": "breakout", "shift_type": "game", "env_copies": 4,
                        "minatar": {"games": ["breakout", "space_invaders"]}},
        "model": {"enc_type": "minatar", "h_size": 16},
        "ppo_trainer": {"num_epochs": 6, "shift_points": [2], "buffer_size": 64, "batch_size": 32,
                        "num_passes": 1, "test_interval": 2, "test_episodes": 2},
        "diagnostics": {"probe_interval": 2, "probe_size": 32, "trainability_every": 1, "trainability_steps": 2,
                        "budget": None},
    }  # fmt: skip
    cfg = RunConfig.model_validate(raw)
    for name in ("full", "cut"):
        (tmp_path / name).mkdir()
    Run(cfg, tmp_path / "full", 0, device="cpu").train()
    stopped = Run(cfg, tmp_path / "cut", 0, device="cpu")
    interrupt_at(stopped, 4)  # after the checkpoint written at the end of epoch 3 (save_freq 2)
    resumed = Run(cfg, tmp_path / "cut", 0, device="cpu")
    resumed.train(resumed.load_resume_state())

    def rows(path):
        with open(path, newline="") as handle:
            timings = ("wall_time", "steps_per_s", "probe_seconds")
            return [{k: v for k, v in r.items() if k not in timings} for r in csv.DictReader(handle)]

    full, cut = rows(tmp_path / "full" / "metrics.csv"), rows(tmp_path / "cut" / "metrics.csv")
    assert [r["epoch"] for r in cut] == ["0", "1", "2", "3", "4", "5"] and cut == full
    assert rows(tmp_path / "cut" / "diagnostics.csv") == rows(tmp_path / "full" / "diagnostics.csv")


def test_minatar_network_is_young_and_tian():
    """conv 16 3x3 stride 1, no padding (10x10 -> 8x8), flatten 1024, dense 128, then the heads."""
    model = build_model(ModelConfig(enc_type="minatar", h_size=128), 6, (10, 10, 10))
    conv, dense = model.blocks[0].layer, model.blocks[1].layer
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (10, 16, (3, 3), (1, 1), (0, 0))
    assert (dense.in_features, dense.out_features) == (16 * 8 * 8, 128) and len(model.blocks) == 2
    logits, value, features = model(torch.zeros(5, 10, 10, 10, dtype=torch.uint8))
    assert logits.shape == (5, 6) and value.shape == (5,) and features.shape == (5, 128)


BASE = {
    "experiment": {"conditions": {"baseline": {}}},
    "environment": {"name": "minatar", "task": "breakout", "shift_type": "none", "env_copies": 2},
    "model": {"enc_type": "minatar", "h_size": 16},
    "ppo_trainer": {"num_epochs": 2, "shift_points": [], "buffer_size": 32, "batch_size": 16},
}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"environment": {"task": "pong"}}, "environment.task: unknown MinAtar game 'pong' (allowed: asterix, breakout, freeway, seaquest, space_invaders)"),
        ({"environment": {"minatar": {"games": ["breakout", "tetris"]}}}, "unknown MinAtar game 'tetris'"),
        ({"environment": {"minatar": {"games": ["seaquest", "breakout"]}}}, "minatar.games must start with the task 'breakout'"),
        ({"environment": {"shift_type": "window"}}, "environment.shift_type: 'window' does not apply to minatar breakout (allowed: game, permute, shuffle, none)"),
        ({"model": {"enc_type": "conv64"}}, "does not fit environment minatar breakout (allowed: minatar, conv11, mlp)"),
        ({"environment": {"minatar": {"sticky_actions": 1.5}}}, "environment.minatar.sticky_actions"),
    ],
)  # fmt: skip
def test_bad_input_is_a_one_line_config_error(change, message, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(merge(BASE, change)))
    assert train_main(["-n", "t", "-p", str(cfg), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "results").exists()


def test_game_shift_needs_a_sequence(tmp_path, capsys):
    cfg = tmp_path / "one_game.yaml"
    cfg.write_text(yaml.safe_dump(merge(BASE, {"environment": {"shift_type": "game"}})))
    assert train_main(["-n", "t", "-p", str(cfg), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "environment.shift_type: 'game' needs a sequence of at least 2 games in minatar.games" in err


def test_missing_package_names_the_extra(monkeypatch, tmp_path, capsys):
    from plasticity_lab.envs import registry

    real = registry.importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None if name == "minatar" else real(name))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    assert train_main(["-n", "t", "-p", str(cfg), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "environment.name: environment 'minatar' needs minatar" in err and "pip install 'plasticity-lab[minatar]'" in err
    assert "\n" not in err


def test_shipped_configs_play_the_chain_and_the_study_conditions():
    from plasticity_lab.config import load_study

    gridworld = load_study("configs/gridworld_study.yaml")
    for name, shift in (("configs/minatar_continual.yaml", "game"), ("configs/minatar_permuted.yaml", "permute")):
        study = load_study(name)
        assert study.conditions == gridworld.conditions  # the study report's seven + reset-all, ssp-ln, l2-init
        for condition in study.conditions:
            cfg = study.condition(condition)
            assert cfg.environment.name == "minatar" and cfg.environment.shift_type == shift
            assert cfg.model.enc_type == "minatar" and cfg.model.h_size == 128
    chain = load_study("configs/minatar_continual.yaml").condition("baseline").environment
    assert chain.task == "space_invaders" and chain.minatar.games == ["space_invaders", "asterix", "seaquest"]


def test_evaluation_plays_the_current_game_from_its_own_seeds():
    from plasticity_lab.envs import evaluate

    cfg = minatar_cfg("breakout", "game", games=["breakout", "seaquest"])
    seen = []

    def policy(obs, active):
        seen.append(obs)
        return np.zeros(obs.shape[:2], dtype=np.int64)  # always NOOP

    returns, lengths = evaluate(policy, cfg, 3, seeds=[5], shifts=[ShiftState(game=1)])
    assert returns.shape == lengths.shape == (1, 3) and (lengths > 0).all()
    assert seen[0].shape == (1, 3, 10, 10, 10) and seen[0][..., 7].any()  # Seaquest's oxygen gauge
    first = [o[0, 0] for o in seen[:40]]
    again = []
    evaluate(lambda o, active: (again.append(o), np.zeros(o.shape[:2], dtype=np.int64))[1], cfg, 3, seeds=[6], shifts=[ShiftState(game=1)])
    assert any(not np.array_equal(a, b[0, 0]) for a, b in zip(first, again))  # another seed, other episodes
