"""Parseval regularisation as Chung et al.'s code (wechu/parseval_reg, agent.py): the penalty and
its gradient against numpy, lambda's (64 / width)^2 scaling, the orthogonal gain-sqrt(s)
initialisation under which the penalty starts at its minimum, and the claimed effect (rows stay
orthogonal with singular values near sqrt(s) while the targets keep changing)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from plasticity_lab.config import ModelConfig
from plasticity_lab.interventions import build_interventions
from plasticity_lab.nets import build_model
from tests.test_interventions import PLAN, build, ctx, frames, make_model

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, restored after the module


def test_parseval_value_and_gradient_match_numpy():
    """On torch's default init (far from orthogonal): coef * sum_l (64 / width_l)^2 ||W W^T - s I||^2."""
    model = make_model()
    iv = build("parseval", model, coef=0.01, scale=3.0)
    expected = 0.0
    for block in model.blocks:
        w = block.layer.weight.detach().numpy().reshape(block.out_units, -1).astype(np.float64)
        expected += (64 / block.out_units) ** 2 * np.sum((w @ w.T - 3.0 * np.eye(w.shape[0])) ** 2)
    value = iv.loss(model, ctx(frames()))
    assert value.item() == pytest.approx(0.01 * expected, rel=1e-5)
    value.backward()
    w = model.blocks[2].layer.weight.detach().numpy().reshape(128, -1).astype(np.float64)
    grad = 0.01 * (64 / 128) ** 2 * 4 * (w @ w.T - 3.0 * np.eye(128)) @ w  # d/dW ||W W^T - sI||^2 = 4 (W W^T - sI) W
    np.testing.assert_allclose(model.blocks[2].layer.weight.grad.numpy().reshape(128, -1), grad, rtol=1e-4, atol=1e-8)
    assert model.policy.weight.grad is None  # heads are exempt


def test_lambda_is_scaled_by_the_width_the_next_layer_reads():
    """Their (64 / net_width)^2, net_width the features a layer outputs: with zero weights each term
    is (64 / width)^2 * s^2 * rows. h 32: relu layers have 32 rows and width 32; crelu layers 16
    rows and width 32 (2 layers each; a scaling by rows would give crelu 2 * 16 * 4 * 16 = 2048)."""
    for activation, expected in (("relu", 2 * 4 * 4.0 * 32), ("crelu", 2 * 4 * 4.0 * 16)):
        model = make_model(enc_type="mlp", obs_shape=(6, 6, 3), activation=activation)
        with torch.no_grad():
            for block in model.blocks:
                block.layer.weight.zero_()
        value = build("parseval", model, coef=1.0, scale=2.0).loss(model, ctx(frames(2, shape=(6, 6, 3))))
        assert value.item() == pytest.approx(expected, rel=1e-6), activation


@pytest.mark.parametrize("cfg", [
    {}, {"spectral_norm": "encoder"}, {"enc_type": "conv11", "obs_shape": (11, 11, 3)},
    {"enc_type": "mlp", "obs_shape": (6, 6, 3), "activation": "crelu"},
])
def test_initialisation_is_orthogonal_with_gain_sqrt_s_and_the_penalty_starts_at_its_minimum(cfg):
    """Every governed layer starts with all singular values sqrt(s) (spectral norm: its applied
    W / sigma, target 1) and bias 0, so the penalty is ~0 where rows <= fan_in (conv64, the mlp)
    and at the lowest reachable value s^2 (rows - fan_in) where a layer has more rows than inputs
    (conv11's first conv: 32 rows, 27 inputs), with zero gradient either way. The heads keep
    torch's init, as the baseline's network."""
    baseline = make_model(seed=4, **cfg)
    model = make_model(seed=4, **cfg)
    (iv,) = build_interventions({"parseval": {"scale": 2.0}}, model, PLAN)
    floor = 0.0
    for block in model.blocks:
        w = block.layer.weight.detach().flatten(1).double()
        target = 1.0 if cfg.get("spectral_norm") else 2.0
        rows, fan_in = w.shape
        singular = torch.linalg.svdvals(w)
        torch.testing.assert_close(singular, torch.full_like(singular, math.sqrt(target)), rtol=1e-5, atol=1e-5)
        assert torch.equal(block.layer.bias, torch.zeros_like(block.layer.bias))
        floor += (64 / (rows * (2 if cfg.get("activation") == "crelu" else 1))) ** 2 * target**2 * max(rows - fan_in, 0)
    for head in ("policy", "value"):
        assert torch.equal(getattr(model, head).weight, getattr(baseline, head).weight)
    value = iv.loss(model, ctx(frames(2, shape=model.obs_shape)))
    assert value.item() == pytest.approx(1e-3 * floor, abs=1e-6)
    value.backward()
    for block in model.blocks:
        grad = block.layer.parametrizations.weight.original.grad if cfg.get("spectral_norm") else block.layer.weight.grad
        assert grad.abs().max() < 1e-6
    # on torch's default init the same penalty is far above its minimum
    default = build("parseval", baseline, scale=2.0).loss(baseline, ctx(frames(2, shape=baseline.obs_shape)))
    assert default.item() > 1e-3 * floor + 0.05


def train_on_shifting_targets(coef: float, steps: int = 600, every: int = 100) -> list[float]:
    """An mlp (96 inputs, two 64-unit layers) regressing its value and logits on 256 fixed inputs
    to random targets re-drawn every ``every`` steps (Adam, lr 3e-3). Returns per hidden layer the
    mean |sigma_i / sqrt(s) - 1| over its singular values at the end."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(enc_type="mlp", h_size=64), 4, (96,))
    ivs = build_interventions({"parseval": {"coef": coef, "scale": 2.0}}, model, PLAN)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 96, generator=gen)
    for step in range(steps):
        if step % every == 0:
            values, logits = torch.randn(256, generator=gen), torch.randn(256, 4, generator=gen)
        out, v, _ = model(x)
        loss = (v - values).pow(2).mean() + (out - logits).pow(2).mean()
        for iv in ivs:
            loss = loss + iv.loss(model, ctx(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [float((torch.linalg.svdvals(b.layer.weight.detach()) / math.sqrt(2) - 1).abs().mean()) for b in model.blocks]


def test_parseval_keeps_singular_values_near_sqrt_s_on_shifting_targets():
    """Same orthogonal start (coef 0 re-initialises too), six target changes: without the penalty
    the spectra spread (measured: mean deviation ~0.55-0.6), with lambda = 1e-2 they stay within
    ~0.012 of sqrt(2)."""
    free, regularised = train_on_shifting_targets(0.0), train_on_shifting_targets(1e-2)
    for a, b in zip(free, regularised, strict=True):
        assert a > 0.3 and b < 0.05 and b < 0.1 * a, (free, regularised)
