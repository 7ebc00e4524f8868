"""Optimiser methods: settings changes (l2, adam_beta) that combine with an optimiser provider,
l2's per-round strength, the compatibility rules, and TRAC keeping its state across shifts in the
runner."""

from __future__ import annotations

import pytest
import torch
import yaml

from plasticity_lab.config import ConfigError, RunConfig, load_study
from plasticity_lab.experiment.runner import Run
from plasticity_lab.agents.population_optim import PopulationAdamW
from plasticity_lab.interventions import (
    REGISTRY, TrainingPlan, build_interventions, check_compatible, resolve_optimizer,
)
from plasticity_lab.interventions.base import torch_adam, validate_params
from plasticity_lab.interventions.cbp import EntrywiseAdamW
from tests.conftest import tiny_gridworld
from tests.test_interventions import build, frames, make_model, make_optimizer, snapshot

# importing kron_torch imports torch's inductor, which warns about its own deprecated internals
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    pytest.mark.usefixtures("one_thread"),  # conftest: one torch thread, restored after the module
]

# 30 epochs of 3 passes x 16 minibatches, shifts at 10 and 20: 480 optimiser steps per round
PLAN = TrainingPlan.from_config(RunConfig.model_validate(
    {"ppo_trainer": {"num_epochs": 30, "shift_points": [10, 20], "buffer_size": 1024, "batch_size": 64, "num_passes": 3}}
))


def settings(opt: torch.optim.Optimizer) -> tuple:
    group = opt.param_groups[0]
    return group["lr"], tuple(group["betas"]), group["weight_decay"]


def test_adam_beta_defaults_to_dohare_et_al_and_l2_to_1e_3_on_adamw():
    model = make_model()
    assert validate_params("adam_beta", {}).beta == 0.99
    opt = make_optimizer(model, [build("adam_beta", model), build("l2", model)], lr=2e-4)
    assert type(opt) is torch.optim.AdamW and settings(opt) == (2e-4, (0.99, 0.99), 1e-3)


@pytest.mark.parametrize("provider", ["cbp", "trac"])
def test_settings_methods_combine_with_an_optimiser_provider(provider):
    from trac_optimizer.trac import is_trac

    model = make_model()
    ivs = [build("l2", model, coef=0.05), build(provider, model), build("adam_beta", model, beta=0.95)]
    check_compatible([iv.name for iv in ivs])
    opt = make_optimizer(model, ivs, lr=2e-4)
    assert (type(opt) is EntrywiseAdamW) if provider == "cbp" else is_trac(opt)
    assert settings(opt) == (2e-4, (0.95, 0.95), 0.05)


def test_l2_decay_per_task_is_the_weight_decay_that_halves_weights_over_a_round():
    """decay_per_task d over steps s at learning rate lr: (1 - lr*wd)^s = 1 - d, so
    wd = (1 - (1 - d)^(1/s)) / lr; with zero gradients AdamW's only change is that decay."""
    lr, steps, d = 5e-4, 480, 0.5
    assert PLAN.updates_per_round == steps
    model = make_model()
    opt = make_optimizer(model, [build("l2", model, plan=PLAN, decay_per_task=d)], lr=lr)
    wd = opt.param_groups[0]["weight_decay"]
    assert wd == pytest.approx((1 - 0.5 ** (1 / 480)) / 5e-4, rel=1e-12)
    assert wd == pytest.approx(2.88603, rel=1e-5)  # by hand: (ln 2/480 - (ln 2/480)^2/2) / 5e-4
    start = snapshot(model)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), start[name] * (1 - d), rtol=1e-4, atol=1e-9)


def test_l2_decay_per_task_uses_the_learning_rate_kron_sets():
    model = make_model()
    opt = make_optimizer(model, [build("l2", model, plan=PLAN, decay_per_task=0.5), build("kron", model, lr=1e-3)])
    assert opt.param_groups[0]["lr"] == 1e-3
    assert opt.param_groups[0]["weight_decay"] == pytest.approx((1 - 0.5 ** (1 / 480)) / 1e-3, rel=1e-12)


# ---------------------------------------------------------------------------- coupled vs decoupled L2

P0, G, LR, WD, EPS = 1.0, -0.01, 0.1, 0.1, 1e-8
# One Adam step from zero moments moves by lr * g / (|g| + eps) (m_hat = g, sqrt(v_hat) = |g|):
DECOUPLED = P0 * (1 - LR * WD) - LR * G / (abs(G) + EPS)  # AdamW: decay beside the step
COUPLED = P0 - LR * (G + WD * P0) / (abs(G + WD * P0) + EPS)  # Adam's L2: g + wd*p = 0.09 enters the moments


def one_step(make, shape=(3,)) -> torch.Tensor:
    """Entries at P0 with gradient G, one step of the optimiser ``make(param)`` builds."""
    p = torch.full(shape, P0, dtype=torch.float64, requires_grad=True)
    opt = make(p)
    p.grad = torch.full_like(p, G)
    opt.step()
    return p.detach().flatten()


@pytest.mark.parametrize("coupled", [False, True])
def test_l2_coupled_and_decoupled_single_step_match_the_hand_computation(coupled):
    """The settings l2 makes, applied by every Adam the toolkit builds: the runner's stacked
    AdamW, CBP's entry-wise AdamW and torch's Adam/AdamW (make_optimizer, TRAC's base)."""
    assert DECOUPLED == pytest.approx(1.0899999, abs=1e-10) and COUPLED == pytest.approx(0.9000000111, abs=1e-10)
    expected = COUPLED if coupled else DECOUPLED
    l2 = build("l2", make_model(), coef=WD, coupled=coupled)
    _, settings = resolve_optimizer([l2], dict(lr=LR, betas=(0.9, 0.999), weight_decay=0.0))
    assert (settings["weight_decay"], settings.get("coupled_weight_decay", 0.0)) == ((0.0, WD) if coupled else (WD, 0.0))
    cls, kwargs = torch_adam(settings)
    assert cls is (torch.optim.Adam if coupled else torch.optim.AdamW)
    steps = [one_step(lambda p: cls([p], **kwargs)), one_step(lambda p: EntrywiseAdamW([p], **settings)),
             one_step(lambda p: PopulationAdamW({"w": p}, **settings), shape=(2, 3))]  # 2 members
    for moved in steps:
        torch.testing.assert_close(moved, torch.full_like(moved, expected), rtol=0, atol=1e-12)


def test_coupled_l2_refuses_what_cannot_apply_it(write_config):
    with pytest.raises(ValueError, match="kron's optimiser has no coupled_weight_decay, which l2 sets"):
        check_compatible({"l2": {"coupled": True}, "kron": {}})
    check_compatible({"l2": {"coupled": True}, "trac": {}, "adam_beta": {}})
    check_compatible({"l2": {}, "kron": {}})
    path = write_config({"ppo_trainer": {"weight_decay": 0.01}, "experiment": {"conditions": {"bad": {"interventions.l2": {"coupled": True}}}}})
    with pytest.raises(ConfigError, match="interventions.l2.coupled: ppo_trainer.weight_decay 0.01 is a decoupled decay already") as err:
        load_study(path).condition("bad")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("raw, message", [
    ({"coef": 0.1, "decay_per_task": 0.5}, "interventions.l2: give coef or decay_per_task, not both"),
    ({"decay_per_task": 0.5, "coupled": True}, "interventions.l2: decay_per_task assumes decoupled decay; give coef with coupled: true"),
    ({"decay_per_task": 1.0}, "interventions.l2.decay_per_task: Input should be less than 1"),
])
def test_l2_strength_errors_are_one_line(raw, message):
    with pytest.raises(ValueError) as err:
        validate_params("l2", raw)
    assert str(err.value) == message


def test_two_optimiser_providers_or_an_ignored_setting_are_config_errors(write_config):
    check_compatible(["l2", "redo", "nap", "cchain", "adam_beta"])
    check_compatible(["l2", "cchain", "l2_init", "parseval", "inject", "trac", "adam_beta"])
    check_compatible(["l2", "kron"])
    check_compatible(["cbp", "adam_beta", "l2"])
    with pytest.raises(ValueError, match="cbp and trac each replace the optimiser") as err:
        check_compatible(["l2", "cbp", "trac"])
    assert "\n" not in str(err.value)
    path = write_config({"experiment": {"conditions": {"bad": {"interventions.kron": {}, "interventions.adam_beta": {}}}}})
    with pytest.raises(ConfigError, match="kron's optimiser has no betas, which adam_beta sets"):
        load_study(path).condition("bad")
    path = write_config({"experiment": {"conditions": {"bad": {"interventions.l2": {"coef": 0.1, "decay_per_task": 0.5}}}}},
                        name="both.yaml")
    with pytest.raises(ConfigError, match="interventions.l2: give coef or decay_per_task, not both") as err:
        load_study(path).condition("bad")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------- TRAC and weight edits

EDITORS = ("shrink_perturb", "soft_shrink_perturb", "reset", "redo", "nap", "cbp")


@pytest.mark.parametrize("editor", [e for e in EDITORS if e != "cbp"])  # cbp: refused as a second optimiser first
def test_trac_with_a_method_that_edits_weights_is_a_one_line_config_error(editor, write_config):
    with pytest.raises(ValueError) as err:
        check_compatible(["trac", "l2", editor])
    assert str(err.value) == (
        f"interventions: trac assumes only its optimiser moves the weights, but {editor} edits them outside it; "
        "use one or the other"
    )
    cond = {"interventions.trac": {}, f"interventions.{editor}": {}}
    path = write_config({"model": {"norm": "layernorm"}, "experiment": {"conditions": {"bad": cond}}})
    with pytest.raises(ConfigError, match=f"trac assumes only its optimiser moves the weights, but {editor} edits") as err:
        load_study(path).condition("bad")
    assert "\n" not in str(err.value)


# parameters that make each method act at once (after one step, at a shift or at epoch 10)
ACTING = {"redo": {"every": 1, "tau": 1.0}, "cbp": {"maturity_threshold": 0, "replacement_rate": 1.0}}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_edits_weights_is_declared_by_exactly_the_methods_whose_hooks_change_weights(name):
    """Every hook that can run outside the optimiser's step (after_step, at_shift, periodic) is
    called without any optimiser step on weights moved away from their initial values; the
    parameter objects that existed before (injection adds new ones and freezes the old) change
    only for methods declaring ``edits_weights``, which TRAC refuses."""
    model = make_model(norm="layernorm")  # nap needs norm layers
    ivs = build_interventions({name: ACTING.get(name, {})}, model, PLAN)
    opt = make_optimizer(model, ivs)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # away from the initial norms (nap) and values (shrinking targets)
    before = {p: p.detach().clone() for p in model.parameters()}
    for iv in ivs:
        iv.after_step(model, opt)
        iv.at_shift(model, opt)
        iv.periodic(model, opt, frames(16, 3), 10)
    changed = any(not torch.equal(p, value) for p, value in before.items())
    assert changed == REGISTRY[name].edits_weights


# ---------------------------------------------------------------------------- TRAC in the runner


def test_trac_keeps_its_anchor_and_scale_across_a_shift_in_the_runner(tmp_path):
    """The runner re-creates the optimiser at shifts (reset_optimizer_at_shift: true, the default);
    TRAC's must survive: its reference stays the initial weights and its step count runs on."""
    cfg = tiny_gridworld({"trac": {}}, enc_type="conv11")
    assert cfg.ppo_trainer.reset_optimizer_at_shift
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.to_yaml_dict()))
    run = Run(cfg, tmp_path, seed=0, device="cpu")
    initial = [p.detach().clone() for p in run.member.model.parameters()]
    assert run.train() == "done"
    trac = run.optimizer.optimizers[0].state["_trac"]
    assert trac["iter_count"] == 3 * 2  # every step of the run, not only those since the shift
    for p, p0 in zip(run.member.model.parameters(), initial, strict=True):
        assert torch.equal(trac[p]["ref"], p0)
