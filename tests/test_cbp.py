"""Continual backprop as Dohare et al.'s generate-and-test: per-entry Adam steps, utility and its
bias correction, the next layer's bias compensation, replacement accounting, and the claimed
effect (replaced units keep the network from filling up with dead ones)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from plasticity_lab.config import RunConfig
from plasticity_lab.experiment.runner import Run
from plasticity_lab.interventions import validate_interventions
from plasticity_lab.interventions.cbp import EntrywiseAdamW
from plasticity_lab.nets.surgery import clear_state, init_bound
from tests.test_interventions import build, frames, make_model, make_optimizer, snapshot, train_step

BETAS = (0.9, 0.999)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, restored after the module


# ---------------------------------------------------------------------------- the optimiser


def test_entrywise_adamw_is_torch_adamw_until_an_entry_is_reset():
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(5, 3, generator=gen)
    ours, theirs = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    opts = (EntrywiseAdamW([ours], lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1),
            torch.optim.AdamW([theirs], lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1))
    for _ in range(40):
        grad = torch.randn(5, 3, generator=gen)
        for p, opt in zip((ours, theirs), opts, strict=True):
            p.grad = grad.clone()
            opt.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_a_recycled_entry_takes_a_first_adam_step_not_a_stale_bias_corrected_one():
    """After 3000 steps, entries 1 and 2 are recycled (moments cleared) and then see a constant
    gradient g. Per-entry counts: every step is lr * g / (|g| + eps), as a first step. One count per
    tensor (torch.optim.AdamW): step k is lr * (1-b1^k)/(1-b1^t) / sqrt((1-b2^k)/(1-b2^t)) with t =
    3000 + k, over 6 lr around k = 10 (hand computation below)."""
    lr, g, t0 = 1e-3, 0.3, 3000
    gen = torch.Generator().manual_seed(1)
    history = [torch.randn(4, generator=gen) for _ in range(t0)]
    ours, theirs = torch.zeros(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    opts = (EntrywiseAdamW([ours], lr=lr, betas=BETAS, weight_decay=0.0), torch.optim.AdamW([theirs], lr=lr, betas=BETAS, weight_decay=0.0))
    for p, opt in zip((ours, theirs), opts, strict=True):
        for grad in history:
            p.grad = grad.clone()
            opt.step()
        recycled = torch.tensor([False, True, True, False])
        with torch.no_grad():  # what a unit replacement does
            p[recycled] = 0.0
        clear_state(opt, p, recycled)
    assert opts[0].state[ours]["entry_steps"].tolist() == [t0, 0, 0, t0]
    steps = {"ours": [], "theirs": []}
    for _ in range(30):
        for name, p, opt in (("ours", ours, opts[0]), ("theirs", theirs, opts[1])):
            before = p.detach()[1].item()
            p.grad = torch.full((4,), g)
            opt.step()
            steps[name].append(before - p.detach()[1].item())
    b1, b2 = BETAS
    first_step = lr * g / (g + 1e-8)
    stale = [lr * (1 - b1**k) / (1 - b1 ** (t0 + k)) / (math.sqrt((1 - b2**k) / (1 - b2 ** (t0 + k))) + 1e-8 / g)
             for k in range(1, 31)]
    assert steps["ours"] == pytest.approx([first_step] * 30, rel=1e-5)
    assert steps["theirs"] == pytest.approx(stale, rel=1e-4)
    assert max(stale) > 6 * lr  # what the per-entry count prevents


def test_the_runner_builds_entrywise_adamw_for_cbp_with_the_ppo_settings(tmp_path):
    cfg = RunConfig.model_validate({
        "environment": {"name": "gridworld", "task": "gather_4", "env_copies": 4},
        "model": {"enc_type": "conv11", "h_size": 16},
        "ppo_trainer": {"num_epochs": 2, "shift_points": [1], "buffer_size": 32, "batch_size": 16, "lr": 3e-4,
                        "adam_betas": [0.8, 0.95], "weight_decay": 0.01},
        "diagnostics": {"enabled": False},
        "interventions": {"cbp": {}},
    })
    cfg.interventions = validate_interventions(cfg)
    run = Run(cfg, tmp_path, seed=0, device="cpu")
    (opt,) = run.optimizer.optimizers  # one per population member
    assert type(opt) is EntrywiseAdamW
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (3e-4, (0.8, 0.95), 0.01)
    run.shift(0)  # a re-created optimiser is one again
    assert type(run.optimizer.optimizers[0]) is EntrywiseAdamW


def test_cbp_optimiser_takes_the_settings_of_l2_and_adam_beta():
    model = make_model()
    ivs = [build("cbp", model), build("l2", model, coef=0.05), build("adam_beta", model)]
    opt = make_optimizer(model, ivs, lr=2e-4)
    group = opt.param_groups[0]
    assert type(opt) is EntrywiseAdamW
    assert (group["lr"], group["betas"], group["weight_decay"]) == (2e-4, (0.99, 0.99), 0.05)


# ---------------------------------------------------------------------------- utility and its correction


def test_cbp_utility_is_the_decayed_contribution_of_each_feature():
    model = make_model()
    iv = build("cbp", model, decay=0.5, maturity_threshold=10**6)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with torch.no_grad():
        acts = model.activations(frames(8, 0))  # train_step's batch for seed 0
    train_step(model, [iv], opt, 0)
    w = {name: p.detach().abs() for name, p in model.named_parameters()}
    conv_next = acts[0].abs().mean(dim=(0, 2, 3)) * w["blocks.1.layer.weight"].sum(dim=(0, 2, 3))
    # conv -> dense: every position of a channel is a feature with its own outgoing weights
    per_feature = acts[3].abs().mean(0).flatten() * w["blocks.4.layer.weight"].sum(0)
    dense_cols = per_feature.view(128, model.spatial).sum(1)
    head_cols = acts[4].abs().mean(0) * (w["policy.weight"].sum(0) + w["value.weight"].sum(0))
    for block, contribution in ((0, conv_next), (3, dense_cols), (4, head_cols)):
        torch.testing.assert_close(iv.utility[block], 0.5 * contribution, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(iv.mean_act[block], 0.5 * acts[block].mean(0), rtol=1e-5, atol=1e-9)
    assert all(torch.equal(a, torch.ones_like(a)) for a in iv.ages)


def test_cbp_ranks_units_by_bias_corrected_utility():
    """u / (1 - decay^age): a unit 2 steps old with u = 0.3 (corrected 0.3/0.75 = 0.4) is more useful
    than one 50 steps old with u = 0.35 (corrected ~0.35): the older one is replaced."""
    model = make_model()
    iv = build("cbp", model, decay=0.5, replacement_rate=1 / 32, maturity_threshold=0)
    iv.ages[0].fill_(49)
    iv.ages[0][7] = 1
    iv.utility[0].fill_(5.0)
    iv.utility[0][7], iv.utility[0][9] = 0.3, 0.35
    iv.after_step(model, None)  # no recorded batch: utilities stay; ages become 50 and 2
    assert iv.ages[0][7] == 2 and iv.ages[0][9] == 0  # unit 9 was replaced, and only it
    assert int((iv.ages[0] == 0).sum()) == 1


def test_cbp_replaces_the_lowest_utility_mature_units_only():
    model = make_model()
    iv = build("cbp", model, decay=1.0, replacement_rate=0.25, maturity_threshold=5)
    opt = make_optimizer(model, [iv])
    train_step(model, [iv], opt, 0)  # Adam moments everywhere
    mature = torch.tensor([1, 4, 6, 9, 12, 20, 25, 31])
    iv.ages[0][mature] = 10
    iv.utility[0].copy_(torch.linspace(1.0, 2.0, 32))
    iv.utility[0][torch.tensor([9, 25])] = 0.1  # the two lowest mature ones
    iv.utility[0][3] = 0.0  # lower still, but not mature
    utility = iv.utility[0].clone()
    iv.mean_act[0] = torch.full_like(iv.mean_act[0], 0.5)  # decay 1: no correction, f stays
    before = snapshot(model)
    moments = {n: opt.state[p]["exp_avg"].clone() for n, p in model.named_parameters()}
    with torch.enable_grad():
        model(frames())  # the minibatch forward whose activations after_step uses
    iv.after_step(model, opt)

    units = torch.tensor([9, 25])
    others = torch.tensor([u for u in range(32) if u not in (9, 25)])
    layer, reader = model.blocks[0].layer, model.blocks[1].layer
    assert torch.equal(layer.weight[others], before["blocks.0.layer.weight"][others])
    assert torch.equal(layer.bias[others], before["blocks.0.layer.bias"][others])
    assert (layer.weight[units] != before["blocks.0.layer.weight"][units]).all()
    assert layer.weight[units].abs().max() <= init_bound(layer)  # the network's own initialiser
    assert torch.equal(layer.bias[units], torch.zeros(2))  # GnT: a new unit's bias is 0
    assert torch.equal(reader.weight[:, units], torch.zeros_like(reader.weight[:, units]))
    assert torch.equal(reader.weight[:, others], before["blocks.1.layer.weight"][:, others])
    # the paper's runs (gnt.py adds 0, the default): the reader's bias does not absorb their contribution
    assert torch.equal(reader.bias, before["blocks.1.layer.bias"])
    for name in ("exp_avg", "exp_avg_sq", "entry_steps"):
        assert opt.state[layer.weight][name][units].abs().sum() == 0
        assert opt.state[reader.weight][name][:, units].abs().sum() == 0
    assert (opt.state[layer.weight]["entry_steps"][others] == 1).all()
    assert torch.equal(opt.state[layer.weight]["exp_avg"][others], moments["blocks.0.layer.weight"][others])
    for name, p in model.named_parameters():
        if not name.startswith(("blocks.0.", "blocks.1.layer.")):
            assert torch.equal(p, before[name]), name
    assert torch.equal(iv.ages[0][units], torch.zeros(2, dtype=torch.long))
    assert set(iv.ages[0][others].tolist()) == {2, 11}
    assert torch.equal(iv.utility[0][units], torch.zeros(2))
    assert torch.equal(iv.utility[0][others], utility[others])
    assert torch.equal(iv.mean_act[0][units], torch.zeros_like(iv.mean_act[0][units]))
    assert iv.periodic(model, opt, frames(), 1) == {"cbp_replaced_units": 2.0}


def test_cbp_default_is_the_papers_replacement_without_bias_compensation():
    """lop/algos/gnt.py zeroes the chosen units' mean before adding it to the next bias, so the
    paper's runs added 0: that is the default; the intended compensation is a setting."""
    assert build("cbp", make_model()).params.bias_compensation is False
    assert build("cbp", make_model(), bias_compensation=True).params.bias_compensation is True


def test_cbp_bias_compensation_keeps_the_output_on_the_recent_batch():
    """Two units whose activation is constant on the batch (zero incoming weights, positive bias),
    one read by the dense layer through the flattened conv map, one by the heads: replacing them
    moves their mean contribution into the readers' biases, so the outputs do not change. Without
    the compensation (what lop/algos/gnt.py effectively does) they change."""
    model = make_model()
    units = {3: 5, 4: 17}
    with torch.no_grad():
        for block, unit in units.items():
            model.blocks[block].layer.weight[unit] = 0.0
            model.blocks[block].layer.bias[unit] = 0.7
    obs = frames(16)
    with torch.no_grad():
        before = model(obs)
    outputs = {}
    for compensate in (True, False):
        net = copy.deepcopy(model)
        # decay 0: the mean is this batch's; maturity 5 with age 10: the only eligible units
        iv = build("cbp", net, decay=0.0, replacement_rate=1.0, maturity_threshold=5, bias_compensation=compensate)
        for block, unit in units.items():
            iv.ages[block][unit] = 10
        with torch.enable_grad():
            net(obs)
        iv.after_step(net, None)
        assert iv.periodic(net, None, obs, 1) == {"cbp_replaced_units": 2.0}
        with torch.no_grad():
            outputs[compensate] = net(obs)
    for a, b, c in zip(before[:2], outputs[True][:2], outputs[False][:2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert (a - c).abs().max() > 1e-3


def test_cbp_accumulates_fractional_replacements():
    model = make_model()
    iv = build("cbp", model, replacement_rate=1 / 16, maturity_threshold=50)
    iv.ages[0][:8] = 100  # 8 mature units: half a replacement per step
    replaced = []
    for _ in range(5):
        model(frames())
        iv.after_step(model, None)
        replaced.append(iv.periodic(model, None, frames(), 1)["cbp_replaced_units"])
    # 8 * 1/16 per step, then 7 * 1/16 once one mature unit was replaced (and became young)
    assert replaced == [0.0, 1.0, 0.0, 0.0, 1.0]


def test_cbp_restarts_the_units_of_a_layer_that_injection_replaced():
    model = make_model()
    cbp, inject = build("cbp", model), build("inject", model)
    opt = make_optimizer(model, [cbp, inject])
    for step in range(3):
        train_step(model, [cbp, inject], opt, step)
    inject.at_shift(model, opt)
    train_step(model, [cbp, inject], opt, 3)
    assert (cbp.ages[4] == 1).all() and (cbp.ages[3] == 4).all()  # the trunk units are new


# ---------------------------------------------------------------------------- the claimed effect


def dead_fraction(model: nn.Module, obs: torch.Tensor) -> float:
    with torch.no_grad():
        trunk = model.activations(obs)[-1]
    return float(((trunk > 0).sum(0) == 0).float().mean())


def test_cbp_replaces_dead_units_that_the_baseline_keeps_forever():
    """Half the trunk units are dead (never active: no gradient reaches them). Plain training keeps
    them dead (and loses a few more); CBP finds them (zero contribution, lowest utility) once mature
    and replaces them with live ones, so the network keeps its capacity (seeds 0-3 and lr 1e-3 or
    3e-3 all end at 0.00-0.22 dead with CBP, 0.53-0.69 without)."""
    model = make_model(enc_type="mlp", obs_shape=(9, 9, 3))
    with torch.no_grad():
        model.blocks[-1].layer.bias[:16] = -100.0
    gen = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 256, (64, 9, 9, 3), dtype=torch.uint8, generator=gen)
    actions, returns = torch.randint(0, 9, (64,), generator=gen), torch.randn(64, generator=gen)
    assert dead_fraction(model, obs) >= 0.5
    results = {}
    for name, spec in (("baseline", {}), ("cbp", {"cbp": {"maturity_threshold": 20, "replacement_rate": 0.05}})):
        net = make_model(enc_type="mlp", obs_shape=(9, 9, 3))
        net.load_state_dict(model.state_dict())
        ivs = [build(n, net, **p) for n, p in spec.items()]
        opt = make_optimizer(net, ivs, lr=3e-3)
        for _ in range(200):
            logits, values, _ = net(obs)
            loss = nn.functional.cross_entropy(logits, actions) + 0.5 * (values - returns).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for iv in ivs:
                iv.after_step(net, opt)
        results[name] = dead_fraction(net, obs)
    assert results["baseline"] >= 0.5  # (training kills a few more: 0.53 -> 0.69 here)
    assert results["cbp"] <= 0.3 and results["cbp"] < results["baseline"] / 2
