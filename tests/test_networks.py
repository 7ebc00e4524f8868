"""Network options against independent computations: rmsnorm (per-channel gain, numpy), crelu and
dff (the concatenations and the halved widths), leaky slope, and every spectral-norm scope."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from plasticity_lab.interventions.redo import recycle_units
from plasticity_lab.nets.layers import ChannelRMSNorm, make_activation
from plasticity_lab.nets.surgery import fresh_params, param_layers, weight_param
from tests.test_interventions import build, frames, make_model


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, restored after the module


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------- rmsnorm


def test_rmsnorm_has_per_channel_gains_only_like_layernorm():
    ln, rms, plain = make_model(norm="layernorm"), make_model(norm="rmsnorm"), make_model()
    channels = sum(block.out_units for block in plain.blocks)  # 32 + 64 + 128 + 128 + 32
    assert count(ln) - count(plain) == 2 * channels  # layernorm: gain and offset per channel
    assert count(rms) - count(plain) == channels  # rmsnorm: gain per channel, no offset
    for block in rms.blocks:
        assert isinstance(block.norm, ChannelRMSNorm)
        assert [tuple(p.shape) for p in block.norm.parameters()] == [(block.out_units,)]


@pytest.mark.parametrize("shape", [(4, 6, 5, 5), (4, 7)])
def test_rmsnorm_matches_numpy_with_a_per_channel_gain(shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen) * 3 + 0.5
    norm = ChannelRMSNorm(shape[1])
    with torch.no_grad():
        norm.weight.copy_(torch.rand(shape[1], generator=gen) + 0.5)
    xn = x.double().numpy()
    axes = tuple(range(1, xn.ndim))
    rms = np.sqrt((xn**2).mean(axis=axes, keepdims=True) + 1e-5)
    gain = norm.weight.detach().double().numpy().reshape(1, -1, *([1] * (xn.ndim - 2)))
    np.testing.assert_allclose(norm(x).detach().double().numpy(), xn / rms * gain, rtol=1e-5, atol=1e-6)


def test_rmsnorm_gain_is_handled_by_reset_redo_and_soft_shrink_perturb():
    model = make_model(norm="rmsnorm")
    gains = [block.norm.weight for block in model.blocks]
    covered = {id(p) for layer in param_layers(model) for p, _ in fresh_params(layer)}
    assert all(id(g) in covered for g in gains)
    with torch.no_grad():
        for g in gains:
            g.fill_(3.0)
    build("reset", model, parts=["encoder", "policy", "value"]).at_shift(model, None)
    assert all(torch.equal(g, torch.ones_like(g)) for g in gains)

    with torch.no_grad():
        gains[0].fill_(3.0)
    recycle_units(model.blocks[0], model.unit_links()[0], torch.tensor([1, 4]), None)
    expected = torch.full_like(gains[0], 3.0)
    expected[[1, 4]] = 1.0
    assert torch.equal(gains[0], expected)

    with torch.no_grad():
        gains[1].fill_(3.0)
    build("soft_shrink_perturb", model, shrink=0.5, perturb=0.25).after_step(model, None)
    torch.testing.assert_close(gains[1], torch.full_like(gains[1], 0.5 * 3.0 + 0.25 * 1.0))


# ---------------------------------------------------------------------------- activations


def test_crelu_and_dff_are_the_concatenations():
    x = torch.randn(5, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(make_activation("crelu")(x), torch.cat([x.clamp(min=0), (-x).clamp(min=0)], dim=1))
    torch.testing.assert_close(make_activation("dff")(x), torch.cat([torch.sin(x), torch.cos(x)], dim=1))
    leaky = make_activation("leaky-relu", 0.2)(x)
    torch.testing.assert_close(leaky, torch.where(x > 0, x, 0.2 * x))


@pytest.mark.parametrize("activation, fn", [
    ("crelu", lambda z: torch.cat([torch.relu(z), torch.relu(-z)], dim=1)),
    ("dff", lambda z: torch.cat([torch.sin(z), torch.cos(z)], dim=1)),
])
def test_concatenating_activations_halve_the_widths_inside_the_network(activation, fn):
    plain, model = make_model(), make_model(activation=activation)
    for block, half in zip(model.blocks, plain.blocks, strict=True):
        assert block.out_units == half.out_units // 2
    assert model.feature_dim == plain.feature_dim  # the heads read h features either way
    assert model.policy.in_features == plain.policy.in_features
    obs = frames(3)
    acts = model.activations(obs)
    z0 = model.blocks[0].layer(model.preprocess(obs))
    torch.testing.assert_close(acts[0], fn(z0))
    z_dense = model.blocks[-1].layer(acts[-2].flatten(1))
    torch.testing.assert_close(acts[-1], fn(z_dense))
    assert acts[0].shape[1] == 2 * model.blocks[0].out_units


# ---------------------------------------------------------------------------- spectral norm


@pytest.mark.parametrize("scope", ["none", "encoder", "all", "penultimate"])
def test_spectral_norm_scopes_parametrise_exactly_their_layers(scope):
    from torch.nn.utils import parametrize

    model = make_model(spectral_norm=scope)
    blocks = [b.layer for b in model.blocks]
    expected = {
        "none": [], "encoder": blocks, "all": blocks + [model.policy, model.value], "penultimate": [blocks[-1]],
    }[scope]
    affine = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert {id(m) for m in affine if parametrize.is_parametrized(m, "weight")} == {id(m) for m in expected}
    model.train()
    with torch.no_grad():
        for _ in range(300):  # one power iteration per training-mode forward (15 at construction)
            model(frames(2))
    for layer in expected:
        applied = layer.weight.detach().flatten(1).double()  # torch's spectral norm: kernel as (out, -1)
        assert torch.linalg.matrix_norm(applied, ord=2).item() == pytest.approx(1.0, abs=1e-3)
        original = weight_param(layer).detach().flatten(1).double()  # the trained tensor, divided by its sigma
        torch.testing.assert_close(applied, original / torch.linalg.matrix_norm(original, ord=2), rtol=1e-3, atol=1e-6)


ENCODERS = [("conv64", (64, 64, 3)), ("nature", (84, 84, 4)), ("conv11", (11, 11, 3)), ("minatar", (10, 10, 4))]


@pytest.mark.parametrize("enc_type, shape", ENCODERS)
@pytest.mark.parametrize("rows", [1, 3, 11])
def test_frozen_conv_weights_give_bit_identical_outputs(enc_type, shape, rows):
    """A rollout's forwards with the frozen channels-last conv weights equal the plain ones
    exactly (torch convolves a channels-last frame with a channels-last weight either way), and
    the copies are what they read."""
    from plasticity_lab.nets.layers import CHANNELS_LAST_WEIGHTS, frozen_conv_weights

    model, obs = make_model(enc_type=enc_type, obs_shape=shape), frames(rows, shape=shape)
    with torch.no_grad():
        plain = model(obs)
        with frozen_conv_weights([model]):
            frozen = model(obs)
            for _, weight in CHANNELS_LAST_WEIGHTS.get().values():
                weight.zero_()
            zeroed = model(obs)
    for a, b in zip(plain, frozen):
        assert torch.equal(a, b)
    assert not torch.equal(zeroed[0], plain[0])


def test_frozen_conv_weights_are_used_and_never_stale_or_in_a_gradient():
    from plasticity_lab.nets.layers import CHANNELS_LAST_WEIGHTS, frozen_conv_weights

    model, obs = make_model(), frames(4)
    conv = model.blocks[0].layer
    with torch.no_grad():
        plain = model(obs)[0]
    with frozen_conv_weights([model]):
        cache = CHANNELS_LAST_WEIGHTS.get()
        assert set(cache) == {m for m in model.modules() if isinstance(m, nn.Conv2d)}
        with torch.no_grad():
            cache[conv][1].zero_()  # the copy is what the forward reads ...
            assert not torch.equal(model(obs)[0], plain)
            conv.weight.mul_(1.0)  # ... until the weight changes (version counter): then the weight itself
            assert torch.equal(model(obs)[0], plain)
            cache[conv] = (conv.weight._version, torch.zeros_like(cache[conv][1]))
            handle = conv.register_forward_hook(lambda *args: None)  # a hooked layer runs as layer(x)
            assert torch.equal(model(obs)[0], plain)
            handle.remove()
        model(obs)[1].sum().backward()  # with grad: the parameter, so its gradient is computed
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
