"""ReDo's unit selection and surgery on planted dormant units, and reset's fresh draw."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from plasticity_lab.nets.surgery import init_bound
from tests.test_interventions import build, frames, make_model, snapshot, train_step

TAU = 0.025


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, restored after the module


def numpy_scores(act: torch.Tensor) -> np.ndarray:
    """ReDo score s_i = E|h_i| / mean_k E|h_k| (conv: E over batch and positions), in numpy."""
    a = np.abs(act.detach().double().numpy())
    per_unit = a.mean(axis=(0, *range(2, a.ndim)))
    return per_unit / per_unit.mean()


# block 0: a conv layer read by a conv; block 3: the last conv, flattened into the dense layer;
# block 4: the dense trunk, read by both heads
PLANTED = {0: [3, 17], 3: [5, 64, 100], 4: [0, 9, 31]}


@pytest.fixture
def planted():
    """conv64 (h 32) with the PLANTED units silenced (zero weights, bias -1: ReLU outputs 0), every
    other unit clearly active on the scoring batch, and Adam moments everywhere."""
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_step(model, [], opt, 0)
    obs = frames(64, seed=5)
    with torch.no_grad():
        for block in model.blocks:  # non-negative weights on non-negative inputs: every unit active
            block.layer.weight.abs_()
            block.layer.bias.abs_()
        for block, units in PLANTED.items():
            layer = model.blocks[block].layer
            layer.weight[units] = 0.0
            layer.bias[units] = -1.0
        acts = model.activations(obs)
    for i, act in enumerate(acts):
        scores = numpy_scores(act)
        dormant = set(np.flatnonzero(scores <= TAU).tolist())
        assert dormant == set(PLANTED.get(i, [])), f"block {i}: the test needs only the planted units dormant"
    return model, opt, obs


def test_redo_recycles_exactly_the_planted_units(planted):
    model, opt, obs = planted
    before = snapshot(model)
    moments = {n: opt.state[p]["exp_avg"].clone() for n, p in model.named_parameters()}
    iv = build("redo", model, tau=TAU, every=1, batch=64)
    assert iv.periodic(model, opt, obs, epoch=1) == {"redo_reset_units": float(sum(len(u) for u in PLANTED.values()))}

    # expected: outgoing weights of every planted unit zeroed (all 16 spatial columns of a conv
    # channel in the dense layer; both heads for the trunk), the planted rows fresh draws, the rest kept
    expected = {n: t.clone() for n, t in before.items()}
    expected["blocks.1.layer.weight"][:, PLANTED[0]] = 0.0
    expected["blocks.4.layer.weight"].view(32, 128, model.spatial)[:, PLANTED[3]] = 0.0
    for head in ("policy", "value"):
        expected[f"{head}.weight"][:, PLANTED[4]] = 0.0
    fresh = {f"blocks.{b}.layer.{k}": units for b, units in PLANTED.items() for k in ("weight", "bias")}
    for name, p in model.named_parameters():
        kept = [r for r in range(p.shape[0]) if r not in fresh.get(name, [])]
        assert torch.equal(p[kept], expected[name][kept]), name
        moment = opt.state[p]["exp_avg"]
        cleared = (expected[name] != before[name]) | torch.zeros_like(p, dtype=torch.bool).index_fill_(
            0, torch.tensor(fresh.get(name, []), dtype=torch.long), True)
        assert torch.equal(moment[cleared], torch.zeros_like(moment[cleared])), name  # Adam moments cleared
        assert torch.equal(moment[~cleared], moments[name][~cleared]), name  # and only there
    for name, units in fresh.items():
        layer = model.get_submodule(name.rsplit(".", 1)[0])
        new = dict(model.named_parameters())[name][units]
        assert (new != before[name][units]).float().mean() > 0.99, name  # re-drawn: not the silenced values
        assert (new != 0).float().mean() > 0.99 and new.abs().max() <= init_bound(layer), name  # default init

    # nobody reads a recycled unit: making the units fire leaves the output unchanged
    with torch.no_grad():
        out_now = model(obs)[0]
        for block, units in PLANTED.items():
            model.blocks[block].layer.bias[units] += 5.0
        assert torch.equal(model(obs)[0], out_now)


def test_redo_waits_for_its_epoch_and_leaves_active_networks_alone(planted):
    model, opt, obs = planted
    before = snapshot(model)
    iv = build("redo", model, tau=TAU, every=3, batch=64)
    assert iv.periodic(model, opt, obs, epoch=2) == {}
    assert iv.periodic(model, opt, obs, epoch=0) == {}
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    fresh = make_model(seed=3)
    with torch.no_grad():
        for block in fresh.blocks:  # every unit active, as in the fixture
            block.layer.weight.abs_()
            block.layer.bias.abs_()
    assert iv.periodic(fresh, None, obs, epoch=3) == {"redo_reset_units": 0.0}


# ---------------------------------------------------------------------------- reset


@pytest.mark.parametrize("parts", [["policy", "value"], ["encoder", "policy", "value"]])
def test_reset_draws_fresh_default_init_values(parts):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(2):
        train_step(model, [], opt, step)
    iv = build("reset", model, parts=parts)
    draws = []
    for _ in range(2):
        before = snapshot(model)
        iv.at_shift(model, opt)
        draws.append(snapshot(model))
        for name, p in model.named_parameters():
            reset = name.startswith(("policy", "value")) or "encoder" in parts
            if not reset:
                assert torch.equal(p, before[name]), name
                continue
            assert (p != 0).float().mean() > 0.99, name  # not zeros
            assert (p != before[name]).float().mean() > 0.99, name  # not the old values
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for layer in layers:
        name = next(n for n, m in model.named_modules() if m is layer)
        if not (name.startswith(("policy", "value")) or "encoder" in parts):
            continue
        bound = init_bound(layer)
        assert bound == pytest.approx(1 / math.sqrt(layer.weight[0].numel()))
        for draw in draws:
            w = draw[f"{name}.weight"].flatten().double().numpy()
            assert np.abs(w).max() <= bound
            if w.size >= 200:  # U(-b, b): Kolmogorov-Smirnov against the uniform law
                assert stats.kstest(w, stats.uniform(loc=-bound, scale=2 * bound).cdf).pvalue > 1e-3
        # a new draw at every reset
        assert not torch.equal(draws[0][f"{name}.weight"], draws[1][f"{name}.weight"])
        assert not torch.equal(draws[0][f"{name}.bias"], draws[1][f"{name}.bias"])
