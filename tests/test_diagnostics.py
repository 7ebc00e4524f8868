"""Probe-set diagnostics: streamed statistics equal the plasticity.py definitions on the full set,
churn, the trainability probe's isolation, the diagnostics files' resume semantics, probe frames."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from plasticity_lab.config import EnvironmentConfig, ModelConfig
from plasticity_lab.envs import make_env
from plasticity_lab.envs.shifts import ShiftState, next_shift, permute_tiles
from plasticity_lab.experiment.probes import (
    RUN_COLUMNS,
    DiagnosticsLogger,
    PlasticityProbe,
    collect_members_probe_frames,
    collect_probe_frames,
    default_probe_interval,
    diagnostic_columns,
)
from plasticity_lab.metrics.diagnostics import (
    DORMANT_TAUS,
    churn,
    layer_names,
    policy_outputs,
    probe_columns,
    probe_network,
)
from plasticity_lab.metrics.plasticity import (
    activation_rate,
    dead_fraction,
    dormant_fraction_from_scores,
    dormant_scores,
    effective_rank,
    feature_rank,
    srank,
    stable_rank,
)
from plasticity_lab.metrics.trainability import TrainabilityProbe
from plasticity_lab.nets import build_model

ENV = EnvironmentConfig(task="coinrun_10")
GRID = EnvironmentConfig(name="gridworld", task="gather_5")
SMALL = ModelConfig(h_size=32)
CONV64_LAYERS = ["conv1", "conv2", "conv3", "conv4", "dense"]


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return collect_probe_frames(ENV, ShiftState(), n=96, seed=3, num_envs=32, warmup=2, stride=2)


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(SMALL, 9)
    with torch.no_grad():
        model.blocks[-1].layer.bias[:5] = -1e3  # some dead trunk units, so dead/dormant are not 0
    return model


def params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.state_dict().values()]


def test_streamed_probe_equals_full_set_definitions(frames):
    model = small_model()
    before = params(model)
    result = probe_network(model, frames, chunk=32)
    s = result.stats
    with torch.no_grad():
        chunks = [model.activations(torch.from_numpy(frames[i : i + 32])) for i in range(0, len(frames), 32)]
        acts = [torch.cat(layer) for layer in zip(*chunks)]
        logits, values, _ = model(torch.from_numpy(frames))
    assert model.training and all(torch.equal(a, b) for a, b in zip(before, params(model)))
    assert layer_names(model) == CONV64_LAYERS
    assert set(s) == set(probe_columns(CONV64_LAYERS)) and set(diagnostic_columns(CONV64_LAYERS)) > set(s)
    for name, h in zip(CONV64_LAYERS, acts):
        assert s[f"{name}/dead_frac"] == dead_fraction(h)
        assert s[f"{name}/activation_rate"] == activation_rate(h)
        scores = dormant_scores(h)
        for tau in DORMANT_TAUS:
            assert s[f"{name}/dormant_{tau:g}"] == dormant_fraction_from_scores(scores, tau)
        phi = h.mean(dim=(2, 3)) if h.ndim == 4 else h
        assert s[f"{name}/effective_rank"] == pytest.approx(effective_rank(phi), rel=1e-9)
        assert s[f"{name}/srank"] == srank(phi)
        assert s[f"{name}/feature_rank"] == feature_rank(phi)
        phi64 = phi.double()
        assert s[f"{name}/feature_norm"] == pytest.approx(float(phi64.norm(dim=1).mean()), rel=1e-9)
        assert s[f"{name}/feature_var"] == pytest.approx(float(phi64.var(dim=0, unbiased=False).mean()), rel=1e-9)
    assert s["dense/dead_frac"] >= 5 / 32
    all_scores = torch.cat([dormant_scores(h) for h in acts])
    for tau in DORMANT_TAUS:
        assert s[f"overall/dormant_{tau:g}"] == dormant_fraction_from_scores(all_scores, tau)
    n_units = sum(h.shape[1] for h in acts)
    assert s["overall/dead_frac"] == pytest.approx(sum(dead_fraction(h) * h.shape[1] for h in acts) / n_units)
    for name, block in zip(CONV64_LAYERS, model.blocks):
        assert s[f"{name}/stable_rank"] == stable_rank(block.layer.weight)
        assert s[f"{name}/weight_norm"] == pytest.approx(float(block.layer.weight.detach().double().norm()), rel=1e-9)
    for name in ("policy", "value"):
        weight = getattr(model, name).weight
        assert s[f"{name}/stable_rank"] == pytest.approx(stable_rank(weight), rel=1e-4)
        assert s[f"{name}/weight_norm"] == pytest.approx(float(weight.detach().double().norm()), rel=1e-4)
    np.testing.assert_allclose(result.spectrum, torch.linalg.svdvals(acts[-1].double()).numpy(), rtol=1e-9)
    np.testing.assert_array_equal(result.unit_rates, (acts[-1] > 0).double().mean(dim=0).numpy())
    torch.testing.assert_close(result.logits, logits)
    torch.testing.assert_close(result.values, values)


def test_churn_zero_unchanged_and_positive_after_change(frames):
    model = small_model()
    first = policy_outputs(model, frames, chunk=40)
    assert churn(*first, *policy_outputs(model, frames)) == {"policy_churn": 0.0, "value_churn": 0.0}
    with torch.no_grad():
        model.blocks[0].layer.weight.mul_(1.5)
    changed = churn(*first, *policy_outputs(model, frames))
    assert 0 < changed["policy_churn"] <= 1 and changed["value_churn"] > 0


def test_plasticity_probe_churn_across_shift_and_resume():
    model = small_model()
    probe = PlasticityProbe(ENV, seed=0, num_epochs=10, probe_size=64, trainability_every=0, chunk=32)
    first = probe.measure(model, 0, ShiftState(), epoch=0).stats
    assert "policy_churn" not in first and first["probe_seconds"] > 0
    again = probe.measure(model, 0, ShiftState(), epoch=1).stats
    assert again["policy_churn"] == 0.0 and again["value_churn"] == 0.0
    # a resumed probe rebuilds the previous frames from its seed: still no churn for the same net
    resumed = PlasticityProbe(ENV, seed=0, num_epochs=10, probe_size=64, trainability_every=0, chunk=32)
    resumed.load_state_dict(probe.state_dict())
    shifted = next_shift(ShiftState(), "permute", np.random.default_rng(0), 0)
    across = resumed.measure(model, 1, shifted, epoch=2).stats  # churn on task 0's frames
    assert across["policy_churn"] == 0.0 and across["value_churn"] == 0.0
    with torch.no_grad():
        model.value.bias.add_(1.0)
    assert resumed.measure(model, 1, shifted, epoch=3).stats["value_churn"] == pytest.approx(1.0)


def test_probe_schedule():
    assert default_probe_interval(3000) == 100 and default_probe_interval(10) == 1
    probe = PlasticityProbe(ENV, seed=0, num_epochs=3000, shift_points=[1000, 2000])
    probes = [e for e in range(3000) if probe.due(e)]
    assert len(probes) >= 30 and {0, 999, 1999, 2999} <= set(probes)
    assert [e for e in range(3000) if probe.trainability_due(e)] == [0, 499, 999, 1499, 1999, 2499, 2999]
    uneven = PlasticityProbe(ENV, seed=0, num_epochs=95, shift_points=[50], trainability_every=0)
    assert {0, 49, 94} <= {e for e in range(95) if uneven.due(e)}
    assert not any(uneven.trainability_due(e) for e in range(95))


def test_trainability_fresh_vs_itself_dead_network_and_isolation(frames):
    probe = TrainabilityProbe(steps=15, seed=1, batch_size=32)
    fresh = probe.fresh_network(small_model())
    same = probe.measure(fresh, frames, key=0)
    assert same["trainability_ratio"] == 1.0
    assert same["trainability_loss"] == same["trainability_fresh_loss"] < 1.0

    dead = probe.fresh_network(fresh)
    with torch.no_grad():
        dead.blocks[-1].layer.bias.fill_(-1e3)  # every trunk ReLU unit dead
    before, rng = params(dead), torch.get_rng_state()
    out = probe.measure(dead, frames, key=0)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(a, b) for a, b in zip(before, params(dead)))
    assert out["trainability_fresh_loss"] == same["trainability_fresh_loss"]  # reference reused
    assert out["trainability_loss"] > out["trainability_fresh_loss"] and out["trainability_ratio"] > 1
    assert out["trainability_loss"] == pytest.approx(1.0, abs=0.05)  # can only fit the mean


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_diagnostics_logger_resume_cuts_rows_and_spectra(tmp_path):
    stats = {"conv1/dead_frac": 0.25, "policy_churn": None, "trainability_ratio": float("nan"), "probe_seconds": 1.5}
    columns = diagnostic_columns(CONV64_LAYERS)
    log = DiagnosticsLogger(tmp_path, 0, CONV64_LAYERS)
    for epoch in (0, 9, 19):
        tb = log.log(epoch, 0, stats, np.full(4, epoch, dtype=np.float64))
    log.close()
    assert tb == {"conv1/dead_frac": 0.25, "probe_seconds": 1.5}
    rows = read_rows(tmp_path / "diagnostics.csv")
    assert list(rows[0]) == columns
    assert [r["epoch"] for r in rows] == ["0", "9", "19"] and rows[0]["policy_churn"] == ""

    log = DiagnosticsLogger(tmp_path, 10, CONV64_LAYERS)  # resumed from a checkpoint at epoch 10
    assert [r["epoch"] for r in read_rows(tmp_path / "diagnostics.csv")] == ["0", "9"]
    with np.load(tmp_path / "spectra.npz") as saved:
        assert saved.files == ["epoch_000000", "epoch_000009"]
    log.log(19, 1, stats, np.full(4, 19.0))
    log.close()
    assert [r["epoch"] for r in read_rows(tmp_path / "diagnostics.csv")] == ["0", "9", "19"]
    with np.load(tmp_path / "spectra.npz") as saved:
        assert saved.files == ["epoch_000000", "epoch_000009", "epoch_000019"]
        np.testing.assert_array_equal(saved["epoch_000019"], np.full(4, 19.0))
    with pytest.raises(KeyError):
        DiagnosticsLogger(tmp_path, 20, CONV64_LAYERS).log(20, 1, {"no/such_column": 1.0}, np.ones(2))
    DiagnosticsLogger(tmp_path, 0, CONV64_LAYERS).close()  # resumed before the first checkpoint
    assert read_rows(tmp_path / "diagnostics.csv") == []
    with np.load(tmp_path / "spectra.npz") as saved:
        assert saved.files == []


def test_collect_probe_frames_deterministic_count_and_permuted():
    kwargs = dict(n=40, seed=5, num_envs=16, warmup=1, stride=2)
    plain = collect_probe_frames(ENV, ShiftState(), **kwargs)
    assert plain.shape == (40, 64, 64, 3) and plain.dtype == np.uint8
    np.testing.assert_array_equal(plain, collect_probe_frames(ENV, ShiftState(), **kwargs))
    assert not np.array_equal(plain, collect_probe_frames(ENV, ShiftState(), **{**kwargs, "seed": 6}))
    shifted = next_shift(ShiftState(), "permute", np.random.default_rng(1), 0)
    permuted = collect_probe_frames(ENV, shifted, **kwargs)
    np.testing.assert_array_equal(permuted, permute_tiles(plain, shifted.tile_perm))
    assert not np.array_equal(permuted, plain)


def one_env_probe_frames(env_cfg, shift, seed, n, num_envs, warmup, stride) -> np.ndarray:
    """The probe-set definition with one member's own vectorised environment and generator."""
    env_seed, action_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    rng = np.random.default_rng(action_seed)
    env = make_env(env_cfg, num_envs, seed=env_seed, train=True, shift=shift)
    kept, obs, t = [], env.observe_current(), 0
    while sum(len(k) for k in kept) < n:
        if t >= warmup and (t - warmup) % stride == 0:
            kept.append(obs.copy())
        obs = env.step(rng.integers(0, env.num_actions, num_envs)).obs
        t += 1
    env.close()
    return np.concatenate(kept)[:n]


@pytest.mark.parametrize("env_cfg", [GRID, ENV], ids=["gridworld (one array program)", "procgen (env list)"])
def test_members_probe_frames_are_each_members_own_set(env_cfg):
    """A population collects its members' probe sets in one environment; each member's set is the
    one its own environment and generator give (so diagnostics do not depend on the population)."""
    tiles = 81 if env_cfg.name == "gridworld" else 256
    shifts = [ShiftState(), next_shift(ShiftState(), "permute", np.random.default_rng(1), 0, num_tiles=tiles), ShiftState()]
    seeds = [5, 6, 5]
    kwargs = dict(n=40, num_envs=16, warmup=1, stride=2)
    sets = collect_members_probe_frames(env_cfg, shifts, seeds, **kwargs)
    for shift, seed, got in zip(shifts, seeds, sets):
        np.testing.assert_array_equal(got, one_env_probe_frames(env_cfg, shift, seed, **kwargs))
    np.testing.assert_array_equal(sets[0], sets[2])
    assert not np.array_equal(sets[0], sets[1])


@pytest.mark.parametrize("enc_type, layers", [("conv11", ["conv1", "conv2", "dense"]), ("mlp", ["dense1", "dense"])])
def test_gridworld_encoders_probe_and_trainability(enc_type, layers):
    frames = collect_probe_frames(GRID, ShiftState(), n=48, seed=0, num_envs=16)
    assert frames.shape == (48, 9, 9, 3)
    torch.manual_seed(0)
    model = build_model(ModelConfig(enc_type=enc_type, h_size=32), 4, (9, 9, 3))
    assert layer_names(model) == layers
    result = probe_network(model, frames, chunk=20)
    assert set(result.stats) == set(diagnostic_columns(layers)) - set(RUN_COLUMNS)
    assert result.spectrum.shape == (32,) and result.logits.shape == (48, 4)
    out = TrainabilityProbe(steps=5, batch_size=16).measure(model, frames)
    assert np.isfinite(out["trainability_ratio"])
