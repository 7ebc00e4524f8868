"""Normalize-and-project: every constrained group back at its initial norm after each step, the norm
layers' scale and offset constrained jointly, the heads' biases free, networks without norm layers
refused, and the claimed effect (a constant effective learning rate)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from plasticity_lab.config import ConfigError, ModelConfig, load_study
from plasticity_lab.interventions import TrainingPlan, build_interventions
from plasticity_lab.nets import build_model
from plasticity_lab.nets.surgery import weight_param
from tests.test_interventions import build, make_model, snapshot, train_step


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, restored after the module


def joint_norm(*tensors: torch.Tensor) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def expected_groups(model: nn.Module, spectral: bool) -> list[tuple[str, list[torch.Tensor]]]:
    """What the paper's constraint holds fixed, written out per layer for this architecture."""
    groups = []
    for i, block in enumerate(model.blocks):
        layer = block.layer
        groups.append((f"block {i} layer", [weight_param(layer)] if spectral else [layer.weight, layer.bias]))
        groups.append((f"block {i} norm", [p for p in (block.norm.weight, getattr(block.norm, "bias", None)) if p is not None]))
    groups += [("policy weight", [weight_param(model.policy)]), ("value weight", [weight_param(model.value)])]
    return groups


@pytest.mark.parametrize("cfg", [{"norm": "layernorm"}, {"norm": "rmsnorm"}, {"norm": "layernorm", "spectral_norm": "all"}])
def test_every_constrained_group_keeps_its_initial_norm(cfg):
    model = make_model(**cfg)
    groups = expected_groups(model, spectral=cfg.get("spectral_norm") == "all")
    targets = [joint_norm(*tensors) for _, tensors in groups]
    for (name, tensors), target in zip(groups, targets, strict=True):
        if name.endswith("norm"):  # scale 1 and offset 0 per channel: sqrt(C)
            assert target == pytest.approx(math.sqrt(tensors[0].numel()))
    iv = build("nap", model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    for step in range(3):
        train_step(model, [], opt, step)
        stepped = snapshot(model)
        moved = [abs(joint_norm(*tensors) - target) / target for (_, tensors), target in zip(groups, targets, strict=True)]
        assert max(moved) > 1e-3  # the step did change the norms...
        iv.after_step(model, opt)
        for (name, tensors), target in zip(groups, targets, strict=True):  # ...and every one is restored
            assert joint_norm(*tensors) == pytest.approx(target, rel=1e-5), name
        params = dict(model.named_parameters())
        for (name, tensors) in groups:  # by one common factor per group: directions kept
            names = [n for n, p in params.items() if any(p is t for t in tensors)]
            factors = {round(float(params[n].detach().double().norm() / stepped[n].double().norm()), 5) for n in names}
            assert len(factors) == 1, name
        for head in ("policy", "value"):  # the heads' biases are free
            assert torch.equal(params[f"{head}.bias"], stepped[f"{head}.bias"])
        if cfg.get("spectral_norm") == "all":  # a spectral-norm layer's bias is free too
            assert torch.equal(params["blocks.0.layer.bias"], stepped["blocks.0.layer.bias"])


def test_projecting_a_hidden_layer_leaves_the_function_unchanged():
    """The projection only changes the effective learning rate: a normalised layer's output is
    invariant to the joint scale of its weight and bias."""
    model = make_model(norm="layernorm")
    iv = build("nap", model)
    obs = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    initial = [joint_norm(b.layer.weight, b.layer.bias) for b in model.blocks]
    with torch.no_grad():
        for block in model.blocks:
            block.layer.weight.mul_(3.0)
            block.layer.bias.mul_(3.0)
        before = model(obs)[0]
        iv.after_step(model, None)
        torch.testing.assert_close(model(obs)[0], before, rtol=1e-3, atol=1e-5)
    assert [joint_norm(b.layer.weight, b.layer.bias) for b in model.blocks] == pytest.approx(initial, rel=1e-5)


def test_nap_without_norm_layers_is_refused(write_config):
    with pytest.raises(ValueError, match="set model.norm: layernorm or rmsnorm"):
        build("nap", make_model())
    path = write_config({"experiment": {"conditions": {
        "nap": {"interventions.nap": {}},
        "nap-ln": {"model.norm": "layernorm", "interventions.nap": {}},
    }}})
    study = load_study(path)
    with pytest.raises(ConfigError) as err:
        study.condition("nap")
    message = str(err.value)
    assert "experiment.conditions.nap -> interventions.nap: needs normalisation layers" in message
    assert "\n" not in message
    assert study.condition("nap-ln").interventions == {"nap": {}}


def test_an_injected_head_is_projected_to_its_own_initial_norm():
    model = make_model(norm="layernorm")
    iv = build("nap", model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    build("inject", model).at_shift(model, opt)
    new, frozen = model.policy, model.injected  # the fresh trainable head; the frozen old and reference heads
    new_norm, frozen_before = joint_norm(new.weight), snapshot(frozen)
    train_step(model, [iv], opt, 0)
    assert joint_norm(new.weight) == pytest.approx(new_norm, rel=1e-5)
    assert all(torch.equal(p, frozen_before[n]) for n, p in frozen.named_parameters())  # frozen: untouched


def relative_updates(spec: dict, rounds: int = 4, steps: int = 100) -> tuple[float, float]:
    """Mean per-step change of the first layer's weight direction, ||w'/|w'| - w/|w|||, over
    the first and the last round of a random-label memorisation task (labels re-drawn each round)."""
    obs_shape = (8, 8, 3)
    torch.manual_seed(0)
    model = build_model(ModelConfig(enc_type="mlp", h_size=64, norm="layernorm"), 9, obs_shape)
    plan = TrainingPlan(num_epochs=rounds, shift_points=tuple(range(1, rounds)), updates_per_epoch=steps, lr=1e-2)
    ivs = build_interventions(spec, model, plan)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(123)
    obs = torch.randint(0, 256, (64, *obs_shape), dtype=torch.uint8, generator=gen)
    weight = model.blocks[0].layer.weight
    changes = []
    for _ in range(rounds):
        labels = torch.randint(0, 9, (64,), generator=gen)
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(obs)[0], labels)
            before = weight.detach().clone()
            opt.zero_grad()
            loss.backward()
            opt.step()
            for iv in ivs:
                iv.after_step(model, opt)
            changes.append((weight.detach() / weight.norm() - before / before.norm()).norm().item())
    return sum(changes[:steps]) / steps, sum(changes[-steps:]) / steps


def test_claimed_effect_the_effective_learning_rate_stays_constant():
    """Lyle et al.: with normalisation, weight-norm growth silently decays the effective learning
    rate (Adam's step has a fixed size, the weights grow); NaP fixes the norm, so it stays put."""
    base_first, base_last = relative_updates({})
    nap_first, nap_last = relative_updates({"nap": {}})
    assert base_last < 0.6 * base_first  # the first layer grows and its steps shrink relative to it
    assert 0.8 < nap_last / nap_first < 1.25  # (round-to-round noise of the gradient directions)
    assert nap_last > base_last
