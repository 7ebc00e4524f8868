"""Soft shrink-and-perturb's per-round strength: the conversion to per-step factors, its hand-computed
effect over exactly one round, its validation, and its claimed effect on plasticity."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from plasticity_lab.config import ConfigError, ModelConfig, load_study
from plasticity_lab.interventions import TrainingPlan, build_interventions
from plasticity_lab.interventions.base import validate_params
from plasticity_lab.nets import build_model
from tests.test_interventions import build, make_model, snapshot

# 3 rounds (shifts at epochs 2 and 4) of 2 epochs of 5 steps: 10 steps per round
PLAN = TrainingPlan(num_epochs=6, shift_points=(2, 4), updates_per_epoch=5, lr=1e-3)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, restored after the module


def zero_gradient_round(model: nn.Module, iv) -> None:
    """One round of optimiser steps whose gradients are all zero (Adam then moves nothing)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(int(PLAN.updates_per_round)):
        opt.zero_grad()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        iv.after_step(model, opt)


def test_per_round_strength_converts_to_per_step_factors():
    assert PLAN.updates_per_round == 10
    iv = build("soft_shrink_perturb", make_model(), PLAN, shrink_per_task=0.5)
    assert iv.shrink == pytest.approx(0.5 ** (1 / 10), rel=1e-12)
    assert iv.perturb == pytest.approx(1 - 0.5 ** (1 / 10), rel=1e-12)  # the reference's pairing perturb = 1 - shrink
    iv = build("soft_shrink_perturb", make_model(), PLAN, shrink_per_task=0.5, perturb_ratio=0.25)
    assert iv.perturb == pytest.approx(0.25 * (1 - 0.5 ** (1 / 10)), rel=1e-12)
    # the reference's per-step values stay the default
    iv = build("soft_shrink_perturb", make_model(), PLAN)
    assert (iv.shrink, iv.perturb) == (0.999999, 1e-6)


def test_one_round_shrinks_by_the_stated_factor():
    model = make_model(norm="layernorm")
    start = snapshot(model)
    zero_gradient_round(model, build("soft_shrink_perturb", model, PLAN, shrink_per_task=0.3, perturb_ratio=0.0))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), 0.3 * start[name], rtol=1e-5, atol=1e-8)


def test_one_round_towards_the_initial_weights_closes_the_stated_fraction_of_the_gap():
    model = make_model()
    theta0 = snapshot(model)
    iv = build("soft_shrink_perturb", model, PLAN, shrink_per_task=0.5, target="init")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    moved = snapshot(model)
    zero_gradient_round(model, iv)
    # theta_N - theta_0 = s^N (theta_start - theta_0) with s^N = 0.5, since perturb = 1 - s
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach() - theta0[name], 0.5 * (moved[name] - theta0[name]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("raw, message", [
    ({"shrink_per_task": 0.5, "shrink": 0.9}, "give either shrink/perturb (per step) or shrink_per_task/perturb_ratio"),
    ({"shrink_per_task": 0.5, "perturb": 1e-3}, "not both"),
    ({"perturb_ratio": 1.0}, "perturb_ratio needs shrink_per_task"),
    ({"shrink_per_task": 0.0}, "shrink_per_task: Input should be greater than 0"),
    ({"shrink_per_task": 1.5}, "shrink_per_task: Input should be less than or equal to 1"),
])
def test_mixing_the_parametrisations_is_a_one_line_error(raw, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        validate_params("soft_shrink_perturb", raw)
    assert "\n" not in str(err.value) and str(err.value).startswith("interventions.soft_shrink_perturb")


def test_validated_parameters_survive_the_round_trip_through_the_run_config(write_config):
    path = write_config({"experiment": {"conditions": {
        "ssp": {"interventions.soft_shrink_perturb": {"shrink_per_task": 0.5}},
        "ssp-6": {"interventions.soft_shrink_perturb": {}},
        "bad": {"interventions.soft_shrink_perturb": {"shrink_per_task": 0.5, "shrink": 0.99}},
    }}})
    study = load_study(path)
    dumped = study.condition("ssp").interventions["soft_shrink_perturb"]
    assert dumped["shrink_per_task"] == 0.5 and dumped["shrink"] is None
    assert validate_params("soft_shrink_perturb", dumped).perturb_ratio == 1.0  # what the runner re-validates
    assert study.condition("ssp-6").interventions["soft_shrink_perturb"]["shrink"] == 0.999999
    with pytest.raises(ConfigError, match="not both"):
        study.condition("bad")


def random_label_rounds(spec: dict, rounds: int = 8, steps: int = 100, seed: int = 0) -> tuple[float, float]:
    """Memorise 64 fixed frames under labels re-drawn every round (a plasticity benchmark):
    (mean accuracy over the last half of the rounds, final/initial parameter norm)."""
    obs_shape = (8, 8, 3)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(enc_type="mlp", h_size=64), 9, obs_shape)
    plan = TrainingPlan(num_epochs=rounds, shift_points=tuple(range(1, rounds)), updates_per_epoch=steps, lr=3e-3)
    ivs = build_interventions(spec, model, plan)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(123)
    obs = torch.randint(0, 256, (64, *obs_shape), dtype=torch.uint8, generator=gen)
    norm0 = torch.cat([p.detach().flatten() for p in model.parameters()]).norm()
    accuracy = []
    for _ in range(rounds):
        labels = torch.randint(0, 9, (64,), generator=gen)
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(obs)[0], labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for iv in ivs:
                iv.after_step(model, opt)
        with torch.no_grad():
            accuracy.append((model(obs)[0].argmax(-1) == labels).float().mean().item())
    norm = torch.cat([p.detach().flatten() for p in model.parameters()]).norm()
    late = accuracy[rounds // 2 :]
    return sum(late) / len(late), (norm / norm0).item()


def test_claimed_effect_keeps_fitting_new_targets_and_the_weights_near_their_initial_scale():
    """Ash & Adams / the reference paper: shrinking towards a fresh initialisation keeps a
    network able to fit new targets. Without it the memorising MLP's weights grow ~2.5x and it
    fails to fit the later label sets (about half of them); shrinking by half per round keeps
    the norm near its initial scale and the later sets fitted."""
    base_acc, base_norm = random_label_rounds({})
    ssp_acc, ssp_norm = random_label_rounds({"soft_shrink_perturb": {"shrink_per_task": 0.5}})
    assert ssp_acc > 0.9 and ssp_acc > base_acc + 0.2
    assert ssp_norm < 1.6 and base_norm > 2.0
