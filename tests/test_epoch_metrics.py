"""Per-epoch metrics of metrics.csv: dead_units (the reference's definition, NaN where it means
nothing), dormant_units (ReDo, any activation), weight_m / weight_diff (the applied weights of
every trainable affine layer) and steps_per_s (training time only).

Every value is checked against an independent numpy computation written here.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from plasticity_lab.config import ACTIVATIONS, NORMS, ModelConfig, RunConfig
from plasticity_lab.experiment import runner as runner_module
from plasticity_lab.experiment.runner import Run
from plasticity_lab.metrics import reference_dead_units, weight_change_rms, weight_rms
from plasticity_lab.metrics.plasticity import (
    NonFiniteInput, reference_dead_units_per_member, weight_change_rms_members, weight_rms_members,
)
from plasticity_lab.nets import build_model
from plasticity_lab.nets.layers import make_activation
from plasticity_lab.nets.population import PopulationNetwork
from plasticity_lab.nets.surgery import applied_weights

GRID = {
    "environment": {"name": "gridworld", "task": "gather_5", "grid_size": 7, "episode_steps": 20, "env_copies": 8},
    "model": {"enc_type": "mlp", "h_size": 16},
    "ppo_trainer": {"num_epochs": 4, "shift_points": [2], "buffer_size": 128, "batch_size": 32, "num_passes": 2,
                    "test_interval": 2, "test_episodes": 4},
    "diagnostics": {"enabled": False},
}


def np_rms(arrays) -> float:
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    return float(np.sqrt(np.mean(flat**2)))


def grid_run(tmp_path, **model) -> Run:
    torch.set_num_threads(1)
    raw = {**GRID, "model": {**GRID["model"], **model}}
    return Run(RunConfig.model_validate(raw), tmp_path / "run", seed=0, device="cpu")


# ----------------------------------------------------------------- dead_units: the reference's rule


NP_DEAD = {"relu": lambda h: h == 0, "tanh": lambda h: np.abs(h) > 0.99}


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(64, 16), (8, 4, 5, 5)])
def test_reference_dead_units_matches_numpy_and_is_nan_where_undefined(activation, shape):
    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(shape, generator=gen) * 2.0
    h = make_activation(activation)(pre)
    value = reference_dead_units(h, activation)
    if activation in NP_DEAD:
        expected = float(np.mean(NP_DEAD[activation](h.numpy())))
        assert value == pytest.approx(expected, abs=1e-12)
        assert 0.05 < value < 0.95  # the draw exercises both outcomes
    else:
        assert math.isnan(value)


@pytest.mark.parametrize("activation", ["relu", "tanh", "mish"])
def test_reference_dead_units_per_member_is_each_members_own_value(activation):
    """The training loop's batched count (for ReLU a sum of signs) equals numpy's count of each
    member's dead entries exactly, negative zeros and members with no dead entry included."""
    gen = torch.Generator().manual_seed(1)
    pre = torch.randn(4, 40, 17, generator=gen) * 2.0
    pre[0, :5] = 0.0
    pre[3] = pre[3].abs() + 0.1  # a member without dead entries
    h = make_activation(activation)(pre)
    if activation == "relu":
        h[1, :3] = -0.0  # ReLU can output -0.0: dead by the reference's h == 0
    values = reference_dead_units_per_member(h, activation)
    assert values.dtype == torch.float64 and values.shape == (4,)
    for k in range(4):
        if activation in NP_DEAD:
            assert float(values[k]) == float(np.mean(NP_DEAD[activation](h[k].numpy())))
        else:
            assert math.isnan(float(values[k]))
    if activation == "relu":
        assert float(values[3]) == 0.0 and float(values[0]) > float(values[2])
        # bf16 features (autocast): counted exactly, although a bf16 sum of 680 ones would round
        assert torch.equal(reference_dead_units_per_member(h.bfloat16(), activation), values)


def test_crelu_exact_zero_fraction_is_at_least_half_by_construction():
    """Why crelu's dead_units is NaN: the reference's exact-zero count is >= 0.5 for any input."""
    pre = torch.randn(256, 32)
    pre[:, :4] = 0.0  # exact zeros in the pre-activation make both halves zero
    h = make_activation("crelu")(pre)
    zero = float((h == 0).double().mean())
    assert zero == pytest.approx(0.5 + 0.5 * float((pre == 0).double().mean()))
    assert zero >= 0.5


# ----------------------------------------------------------------- weight_m / weight_diff


def test_weight_rms_and_change_match_numpy():
    gen = torch.Generator().manual_seed(1)
    before = [torch.randn(5, 3, generator=gen), torch.randn(4, 2, 3, 3, generator=gen), torch.randn(1, 7, generator=gen)]
    after = [w + 0.1 * torch.randn(w.shape, generator=gen) for w in before]
    assert weight_rms(before) == pytest.approx(np_rms([w.numpy() for w in before]), rel=1e-12)
    diffs = [a.double().numpy() - b.double().numpy() for a, b in zip(after, before)]
    assert weight_change_rms(before, after) == pytest.approx(np_rms(diffs), rel=1e-12)
    assert weight_change_rms(before, before) == 0.0
    with pytest.raises(ValueError, match="shape"):
        weight_change_rms(before, [after[1], after[0], after[2]])
    with pytest.raises(ValueError, match="at least one"):
        weight_rms([])


def test_weight_rms_of_members_is_each_members_own_and_checks_them():
    """The stacked per-member form (what the training loop reports for a population) gives each
    member its own pooled RMS (numpy reference per member), refuses lists of different shapes,
    and names a non-finite weight of any member."""
    gen = torch.Generator().manual_seed(2)
    shapes = [(6, 4), (3, 2, 2, 2), (1, 5)]
    before = [[k * torch.randn(s, generator=gen) for s in shapes] for k in range(1, 4)]  # members of different scales
    after = [[w + 0.1 * k * torch.randn(w.shape, generator=gen) for w in ws] for k, ws in enumerate(before)]
    for got, ws in zip(weight_rms_members(before), before):
        assert got == pytest.approx(np_rms([w.numpy() for w in ws]), rel=1e-12)
    for got, b, a in zip(weight_change_rms_members(before, after), before, after):
        assert got == pytest.approx(np_rms([x.double().numpy() - y.double().numpy() for x, y in zip(a, b)]), rel=1e-12)
    assert len(set(weight_rms_members(before))) == 3
    with pytest.raises(ValueError, match="shapes"):
        weight_rms_members([before[0], [before[1][1], before[1][0], before[1][2]]])
    poisoned = [list(ws) for ws in after]
    poisoned[2][1] = poisoned[2][1].clone()
    poisoned[2][1][0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteInput, match="weight_change_rms"):
        weight_change_rms_members(before, poisoned)


def affine_count(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())


def test_norm_gains_and_biases_do_not_count_so_norms_start_equal():
    """Same seed, same widths: the affine weights are identical, so weight_m must be too (the old
    all-parameter RMS counted RMSNorm's ones and made rmsnorm's weight_m many times baseline's)."""
    values = {}
    for norm in NORMS:
        torch.manual_seed(3)
        model = build_model(ModelConfig(norm=norm, h_size=32), num_actions=9)
        weights = applied_weights(model)
        assert len(weights) == affine_count(model) == 7  # 4 convs, dense, 2 heads; no bias, no gain
        values[norm] = weight_rms(weights)
        expected = np_rms([m.weight.detach().numpy() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))])
        assert values[norm] == pytest.approx(expected, rel=1e-12)
    assert values["none"] == values["layernorm"] == values["rmsnorm"]


def sn_parts(model: nn.Module):
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and hasattr(m, "parametrizations"):
            yield m, m.parametrizations.weight.original, m.parametrizations.weight[0]


def test_spectral_norm_weight_m_is_rms_of_w_over_sigma_and_reading_it_changes_nothing():
    torch.manual_seed(4)
    model = build_model(ModelConfig(h_size=32, spectral_norm="encoder"), num_actions=9)
    obs = torch.randint(0, 255, (4, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        for _ in range(150):  # training-mode forwards run the power iteration towards sigma_max
            model(obs)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    value = weight_rms(applied_weights(model))
    # nothing moved: weights, u and v buffers, training flags
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert any(k.endswith("_u") for k in state)

    expected, exact = [], []
    for m, raw, sn in sn_parts(model):
        w = raw.detach().numpy().reshape(raw.shape[0], -1)
        sigma = float(sn._u.numpy() @ w @ sn._v.numpy())  # the estimate the forward pass divides by
        expected.append(w / sigma)
        exact.append(np.linalg.svd(w, compute_uv=False)[0])
        assert sigma == pytest.approx(exact[-1], rel=2e-3)  # converged: W/sigma has spectral norm 1
    expected += [m.weight.detach().numpy() for m in (model.policy, model.value)]
    assert len(expected) == 7
    assert value == pytest.approx(np_rms(expected), rel=1e-6)
    raw_rms = np_rms([raw.detach().numpy() for _, raw, _ in sn_parts(model)] + expected[-2:])
    assert abs(value - raw_rms) > 1e-3 * raw_rms  # it is not the raw weight


def test_frozen_layers_are_left_out():
    torch.manual_seed(5)
    model = build_model(ModelConfig(h_size=32), num_actions=9)
    model.value.requires_grad_(False)
    assert len(applied_weights(model)) == 6


def test_a_populations_applied_weights_are_each_members_stacked():
    """PopulationNetwork.applied_weights (what the loop reads every epoch) is every member's
    applied_weights stacked: the stacked tensors where no parametrization sits between, W / sigma
    member by member under spectral norm, frozen layers left out; reading changes nothing, and a
    later update of the stacked state does not reach the copies."""
    torch.manual_seed(6)
    members = [build_model(ModelConfig(enc_type="mlp", h_size=16, spectral_norm="encoder"), num_actions=4, obs_shape=(5, 5, 3))
               for _ in range(3)]
    for model in members:
        with torch.no_grad():
            for _ in range(3):
                model(torch.randint(0, 255, (4, 5, 5, 3), dtype=torch.uint8))  # the power iterations move apart
        model.value.requires_grad_(False)
    net = PopulationNetwork(members)
    state = {k: v.clone() for k, v in net.buffers.items()}
    got = net.applied_weights()
    want = [torch.stack(ws) for ws in zip(*(applied_weights(m) for m in members))]
    assert len(got) == len(want) == len(applied_weights(members[0])) and all(torch.equal(a, b) for a, b in zip(got, want))
    assert any(parametrize.is_parametrized(m, "weight") for m in members[0].modules())
    assert all(torch.equal(state[k], v) for k, v in net.buffers.items())
    with torch.no_grad():
        for p in net.trainable().values():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


# ----------------------------------------------------------------- the runner's columns


def capture_update_features(run: Run) -> list[torch.Tensor]:
    """Record the trunk features of every forward that builds a graph (the update's minibatches):
    the population's batched call, which a single run's network goes through too."""
    seen: list[torch.Tensor] = []
    batched = run.net._batched

    def recording(params, buffers, obs):
        out = batched(params, buffers, obs)
        if torch.is_grad_enabled():
            seen.append(out[2][0].detach().clone())
        return out

    run.net._batched = recording
    return seen


@pytest.mark.parametrize("activation", ["relu", "leaky-relu"])
def test_epoch_row_dead_dormant_and_weights_match_numpy(tmp_path, activation):
    run = grid_run(tmp_path, activation=activation)
    features = capture_update_features(run)
    before = [w.double().numpy() for w in applied_weights(run.member.model)]
    (row,) = run.run_epoch(0)
    assert len(features) == 2 * 128 // 32  # passes x minibatches
    h = torch.cat(features).double().numpy()

    a = np.abs(h).mean(axis=0)
    scores = a / a.mean()
    assert row["dormant_units"] == pytest.approx(float(np.mean(scores <= 0.025)), abs=1e-12)
    if activation == "relu":
        assert row["dead_units"] == pytest.approx(np.mean([np.mean(f.numpy() == 0) for f in features]), abs=1e-12)
    else:
        assert math.isnan(row["dead_units"])

    after = [w.double().numpy() for w in applied_weights(run.member.model)]
    assert row["weight_m"] == pytest.approx(np_rms(after), rel=1e-9)
    assert row["weight_diff"] == pytest.approx(np_rms([b - a for a, b in zip(before, after)]), rel=1e-9)
    assert row["weight_diff"] > 0


def test_dormant_units_sees_a_dormant_unit_whatever_the_activation(tmp_path):
    """A trunk unit whose incoming weights are zero outputs act(0) = const; with mish that is 0
    and the unit is dormant, although exact-zero counting (dead_units) is not defined for mish."""
    run = grid_run(tmp_path, activation="mish", h_size=16)
    dense = run.member.model.blocks[-1].layer
    run.ppo = run.ppo.model_copy(update={"lr": 1e-12})  # keep the zeroed units zero through the update
    run.optimizer = run.make_optimizer()
    with torch.no_grad():
        dense.weight[:4] = 0
        dense.bias[:4] = 0
    (row,) = run.run_epoch(0)
    assert math.isnan(row["dead_units"])
    assert row["dormant_units"] >= 4 / 16


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_steps_per_s_counts_collection_and_update_but_not_evaluation(tmp_path, monkeypatch):
    run = grid_run(tmp_path)
    clock = FakeClock()
    monkeypatch.setattr(runner_module, "time", SimpleNamespace(monotonic=clock.monotonic))

    def advancing(method, seconds):
        def wrapped(*args, **kwargs):
            clock.now += seconds
            return method(*args, **kwargs)
        return wrapped

    run.collect = advancing(run.collect, 2.0)
    run.update = advancing(run.update, 1.0)
    run.evaluate = advancing(run.evaluate, 500.0)
    run.ppo = run.ppo.model_copy(update={"test_interval": 3})
    (evaluated,) = run.run_epoch(0)  # epoch 0 is evaluated
    (plain,) = run.run_epoch(2)  # epoch 2 is not (1 ends round 1, 3 is the last)
    assert evaluated["test_r"] is not None and plain["test_r"] is None
    assert evaluated["steps_per_s"] == plain["steps_per_s"] == 128 / 3.0
