"""``precision: bf16``: the encoder runs in bf16, the heads and spectral norm's sigma in fp32."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from plasticity_lab.config import ModelConfig
from plasticity_lab.nets import build_model
from plasticity_lab.nets.layers import spectral_norm

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def frames(n: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_bf16_cannot_tell_a_step_reward_apart_at_v_10():
    # The premise: bf16 spacing at |V| in [8, 16) is 0.0625, so 10.0 and 10.01 are one number.
    assert torch.tensor(10.0).bfloat16() == torch.tensor(10.01).bfloat16()


def test_heads_are_fp32_under_autocast():
    torch.manual_seed(0)
    model = build_model(ModelConfig(h_size=8), 9)
    with torch.no_grad():
        model.value.weight.zero_()
        model.value.weight[0, 0] = 0.01
        model.value.bias.fill_(10.0)
    # Trunk features as the bf16 encoder would hand them over: unit 0 off, then on.
    features = torch.zeros(2, 8, dtype=torch.bfloat16)
    features[1, 0] = 1.0
    model.activations = lambda obs: [features, features]
    with torch.no_grad(), torch.autocast(**BF16):
        logits, values, feats = model(frames())
    assert values.dtype == torch.float32 and logits.dtype == torch.float32
    assert abs(float(values[1] - values[0]) - 0.01) < 1e-6
    assert abs(float(values[0]) - 10.0) < 1e-6


def test_encoder_stays_bf16_and_outputs_fp32():
    torch.manual_seed(0)
    model = build_model(ModelConfig(h_size=16), 9)
    with torch.autocast(**BF16):
        logits, values, features = model(frames())
    assert features.dtype == torch.bfloat16  # the encoder's compute is what bf16 speeds up
    assert logits.dtype == torch.float32 and values.dtype == torch.float32
    # The heads see exactly the bf16 features, computed in fp32.
    torch.testing.assert_close(values, model.value(features.float()).squeeze(-1), rtol=0, atol=0)


def autocast_seen_by_power_iteration(layer: nn.Module, monkeypatch, owner, name: str) -> list[bool]:
    """Whether autocast was on at every matrix-vector product (``owner.name``) of the
    spectral-norm computation."""
    seen: list[bool] = []
    product = getattr(owner, name)

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return product(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    layer.train()  # the power iteration runs on training forwards
    with torch.autocast(**BF16):
        layer.weight
    return seen


def test_spectral_norm_power_iteration_and_sigma_run_without_autocast(monkeypatch):
    from plasticity_lab.nets import layers

    torch.manual_seed(0)
    ours = autocast_seen_by_power_iteration(spectral_norm(nn.Linear(40, 30)), monkeypatch, layers, "member_invariant_mv")
    assert ours and not any(ours)
    # The spy does detect autocast: torch's own parametrization runs its products under it
    # (bf16 on CUDA, where autocast lowers mv).
    torch_own = autocast_seen_by_power_iteration(parametrizations.spectral_norm(nn.Linear(40, 30)), monkeypatch, torch, "mv")
    assert torch_own and all(torch_own)


def test_spectral_norm_weight_is_identical_to_fp32_and_keeps_torchs_state_keys():
    torch.manual_seed(0)
    ours = spectral_norm(nn.Linear(40, 30))
    torch.manual_seed(0)
    theirs = parametrizations.spectral_norm(nn.Linear(40, 30))
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key in ours.state_dict():
        if key.endswith(("_u", "_v")):  # the same draws, then 15 power iterations whose products
            # round differently (a product and a sum instead of torch.mv: docs/fidelity.md)
            torch.testing.assert_close(ours.state_dict()[key], theirs.state_dict()[key], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(ours.state_dict()[key], theirs.state_dict()[key])  # same init draws
    ours.eval()
    fp32 = ours.weight
    with torch.autocast(**BF16):
        under = ours.weight
    assert under.dtype == torch.float32 and torch.equal(under, fp32)


@pytest.mark.parametrize("scope", ["encoder", "all"])
def test_model_spectral_norm_uses_the_fp32_parametrization(scope):
    from plasticity_lab.nets.layers import FP32SpectralNorm

    model = build_model(ModelConfig(h_size=16, spectral_norm=scope), 9)
    norms = [m for m in model.modules() if isinstance(m, parametrizations._SpectralNorm)]
    assert norms and all(isinstance(m, FP32SpectralNorm) for m in norms)
