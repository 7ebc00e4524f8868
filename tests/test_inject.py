"""Plasticity injection: structure, unchanged outputs, checkpoints, everything that reads the heads,
and the claimed effect (fresh capacity for the paper's variant, none for the reference code's)."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from plasticity_lab.experiment.loading import load_agent
from plasticity_lab.experiment.runner import Run
from plasticity_lab.interventions.inject import FrozenHeads, HeadNetwork, LinearInjection
from plasticity_lab.interventions.redo import recycle_units
from plasticity_lab.metrics.diagnostics import probe_network, weight_stats
from plasticity_lab.metrics.trainability import TrainabilityProbe
from tests.conftest import tiny_gridworld
from tests.test_interventions import build, count, frames, make_model, make_optimizer, snapshot, train_step, trainable

CONFIGS = [
    {},
    {"spectral_norm": "all", "norm": "layernorm"},
    {"enc_type": "mlp", "norm": "rmsnorm", "obs_shape": (9, 9, 3)},
    {"activation": "crelu"},
]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, restored after the module


def head_network_size(model: nn.Module) -> int:
    return count(model.blocks[-1]) + count(model.policy) + count(model.value)


# ---------------------------------------------------------------------------- paper variant: structure


@pytest.mark.parametrize("cfg", CONFIGS)
def test_paper_injection_keeps_outputs_freezes_the_head_network_and_adds_a_fresh_one(cfg):
    model = make_model(**cfg)
    obs = frames(shape=model.obs_shape)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_step(model, [], opt, 0)
    iv = build("inject", model)
    size, total, learning = head_network_size(model), count(model), trainable(model)
    for injection in (1, 2):  # a repeated shift freezes the whole current head again
        uninjected = copy.deepcopy(model)  # train mode: spectral norm advances per forward, alike in both
        old_trunk, old_policy = model.blocks[-1].layer, model.policy
        iv.at_shift(model, opt)
        with torch.no_grad():
            for before, after in zip(uninjected(obs)[:2], model(obs)[:2], strict=True):
                assert torch.equal(before, after)
        assert isinstance(model.injected, FrozenHeads)
        assert len(model.injected.old) == len(model.injected.refs) == injection
        assert model.injected.old[-1].block.layer is old_trunk and model.injected.old[-1].policy is old_policy
        assert model.blocks[-1].layer is not old_trunk and not torch.equal(model.blocks[-1].layer.bias, old_trunk.bias)
        # the paper: the same number of trainable parameters; two head networks more in all
        assert trainable(model) == learning
        assert count(model) == total + 2 * injection * size
        assert all(not p.requires_grad for p in model.injected.parameters())
        train_step(model, [], opt, injection)

    model.zero_grad(set_to_none=True)
    logits, values, _ = model(obs)
    (logits.pow(2).mean() + values.pow(2).mean()).backward()
    assert all(p.grad is None for p in model.injected.parameters())
    fresh = [*model.blocks[-1].parameters(), *model.policy.parameters(), *model.value.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fresh)
    assert all(p.grad.abs().sum() > 0 for p in model.blocks[:-1].parameters())  # the encoder keeps learning

    # the runner may keep this optimiser across the shift: it trains the new head, not the frozen ones
    frozen, new = snapshot(model.injected), snapshot(model.policy)
    opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.injected.named_parameters())
    assert all(not torch.equal(p, new[n]) for n, p in model.policy.named_parameters())


def test_paper_injection_gradient_reaches_the_encoder_through_the_frozen_head_not_the_reference():
    """out = h_old(phi) + h_new(phi) - stopgrad(h_ref(phi)): d out / d phi = h_old' + h_new'."""
    model = make_model(enc_type="mlp", obs_shape=(9, 9, 3))
    build("inject", model).at_shift(model, torch.optim.AdamW(model.parameters()))
    obs = frames(shape=model.obs_shape)
    acts = model.activations(obs)
    phi = acts[-2].detach().requires_grad_(True)
    logits, values = model.outputs([phi, model.blocks[-1](phi)])
    (logits.sum() + values.sum()).backward()
    expected = phi.detach().clone().requires_grad_(True)
    old, new = model.injected.old[0], HeadNetwork(model.blocks[-1], model.policy, model.value)
    (sum(t.sum() for t in old(expected)) + sum(t.sum() for t in new(expected))).backward()
    torch.testing.assert_close(phi.grad, expected.grad)


# ---------------------------------------------------------------------------- the claimed effect


def fixed_task(n: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (n, 9, 9, 3), dtype=torch.uint8, generator=gen)
    return obs, torch.randint(0, 9, (n,), generator=gen), torch.randn(n, generator=gen)


def fit(model: nn.Module, task, steps: int, lr: float) -> list[float]:
    obs, actions, returns = task
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        logits, values, _ = model(obs)
        loss = nn.functional.cross_entropy(logits, actions) + 0.5 * (values - returns.to(values.dtype)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_paper_injection_gives_a_network_with_a_dead_trunk_fresh_capacity():
    """Nikishin et al.'s diagnostic: when the head has lost its plasticity (here: every trunk unit
    dead), the baseline cannot fit a new target beyond a constant prediction; injection can. The
    reference code's injection, a re-parameterised linear head on the same dead features, cannot."""
    model = make_model(enc_type="mlp", obs_shape=(9, 9, 3))
    with torch.no_grad():
        model.blocks[-1].layer.bias.fill_(-100.0)  # no trunk unit is ever active
    task = fixed_task()
    final = {}
    for variant in ("baseline", "paper", "reference"):
        net = copy.deepcopy(model)
        if variant != "baseline":
            build("inject", net, variant=variant).at_shift(net, torch.optim.AdamW(net.parameters()))
        losses = fit(net, task, steps=150, lr=3e-3)
        final[variant] = losses[-1]
    _, actions, returns = task
    freq = torch.bincount(actions, minlength=9).float() / len(actions)
    floor = float(-(freq[freq > 0] * freq[freq > 0].log()).sum() + 0.5 * returns.var(unbiased=False))
    assert final["baseline"] > floor - 1e-3 and final["reference"] > floor - 1e-3  # a constant is all they fit
    assert final["paper"] < 0.2 * floor


def test_reference_injection_trains_like_the_baseline_with_a_doubled_head_step_paper_injection_does_not():
    """Why the reference code's variant is weak (float64, no clipping or weight decay): on fixed
    features its old and new linear heads get the same gradient and, from fresh Adam states, the
    same update, so it follows the baseline with twice the head learning rate to rounding; the
    paper's variant learns differently. (With a learning encoder the reference variant also differs
    from that baseline, but only in the encoder's gradient, which flows through old + new, new0
    being detached; it never adds capacity, see the test above.)"""
    model = make_model(enc_type="mlp", obs_shape=(9, 9, 3)).double()
    model.preprocess = lambda obs, plain=model.preprocess: plain(obs).double()
    fit(model, fixed_task(seed=1), steps=10, lr=1e-3)  # a first task
    model.blocks.requires_grad_(False)  # fixed features
    after_shift = fixed_task(seed=2)
    curves = {}
    for name, variant, lr in (("baseline", None, 1e-3), ("baseline_2x", None, 2e-3), ("reference", "reference", 1e-3), ("paper", "paper", 1e-3)):
        net = copy.deepcopy(model)
        if variant:
            build("inject", net, variant=variant).at_shift(net, torch.optim.AdamW(net.parameters()))
            net.double()
        curves[name] = torch.tensor(fit(net, after_shift, steps=30, lr=lr), dtype=torch.float64)
    assert all(c[0] == curves["baseline"][0] for c in curves.values())  # outputs unchanged at injection
    torch.testing.assert_close(curves["reference"], curves["baseline_2x"], rtol=1e-12, atol=1e-12)
    for baseline in ("baseline", "baseline_2x"):
        assert (curves["paper"] - curves[baseline]).abs().max() > 1e-3  # 1e9 x the tolerance above


# ---------------------------------------------------------------------------- reference variant


def test_reference_injection_trains_the_old_heads_and_merges_at_the_next_injection():
    model = make_model()
    obs = frames()
    heads = count(model.policy) + count(model.value)
    total = trainable(model)
    iv = build("inject", model, variant="reference")
    opt = make_optimizer(model, [iv])
    iv.at_shift(model, opt)
    assert isinstance(model.policy, LinearInjection) and trainable(model) == total + heads
    assert not any(p.requires_grad for p in model.policy.new0.parameters())
    train_step(model, [iv], opt, 0)
    before = model(obs)
    first_old = model.policy.old
    iv.at_shift(model, opt)
    assert isinstance(model.policy.old, nn.Linear) and model.policy.old is not first_old  # merged, not nested
    assert trainable(model) == total + heads
    for a, b in zip(before[:2], model(obs)[:2], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # the merge re-rounds old + new - new0


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_injection_checkpoint_round_trip(variant):
    model = make_model(spectral_norm="all")
    iv = build("inject", model, variant=variant)
    opt = make_optimizer(model, [iv])
    for step in range(4):
        if step in (1, 3):
            iv.at_shift(model, opt)
        train_step(model, [iv], opt, step)
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "iv": iv.state_dict()}, saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=False)
    assert state["iv"] == {"injections": 2}

    fresh = make_model(seed=7, spectral_norm="all")
    restored = build("inject", fresh, variant=variant)
    restored.load_state_dict(state["iv"])  # rebuilds the structure before the weights load
    fresh.load_state_dict(state["model"])
    fresh_opt = make_optimizer(fresh, [restored])
    fresh_opt.load_state_dict(state["opt"])
    obs = frames(seed=3)
    with torch.no_grad():
        for a, b in zip(model(obs), fresh(obs), strict=True):
            assert torch.equal(a, b)
    train_step(model, [iv], opt, 5)
    train_step(fresh, [restored], fresh_opt, 5)
    for (n, a), b in zip(model.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b), n


def test_a_run_with_injection_loads_back_with_load_agent(tmp_path: Path):
    cfg = tiny_gridworld({"inject": {}}, enc_type="conv11", shift_points=(1, 2))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_yaml_dict()))
    run = Run(cfg, run_dir, seed=0, device="cpu")
    assert run.train() == "done"
    agent = load_agent(run_dir)
    assert len(agent.injected.old) == 2
    obs = frames(shape=run.obs_shape)
    run.member.model.eval()
    with torch.no_grad():
        for a, b in zip(run.member.model(obs), agent(obs), strict=True):
            assert torch.equal(a, b)


# ---------------------------------------------------------------------------- what reads the heads


def test_unit_resets_reach_the_frozen_trunk_layers_and_keep_the_output():
    model = make_model()
    build("inject", model).at_shift(model, torch.optim.AdamW(model.parameters()))
    link = model.unit_links()[-2]  # the last conv block: read by the trainable and the frozen trunk layers
    frozen_trunks = [h.block.layer for h in (*model.injected.old, *model.injected.refs)]
    assert link.readers == (model.blocks[-1].layer, *frozen_trunks)
    units = torch.tensor([3, 70])
    recycle_units(model.blocks[link.block], link, units, None)
    cols = (units.unsqueeze(1) * link.span + torch.arange(link.span)).flatten()
    for layer in link.readers:
        assert torch.equal(layer.weight[:, cols], torch.zeros_like(layer.weight[:, cols]))
    obs = frames()
    with torch.no_grad():
        before = model(obs)[:2]
        model.blocks[link.block].layer.weight[units] += 1.0  # no layer reads the recycled units now
        for a, b in zip(before, model(obs)[:2], strict=True):
            assert torch.equal(a, b)


def test_unit_resets_zero_every_linear_of_a_reference_wrapped_head():
    model = make_model()
    build("inject", model, variant="reference").at_shift(model, torch.optim.AdamW(model.parameters()))
    link = model.unit_links()[-1]
    units = torch.tensor([2, 5])
    recycle_units(model.blocks[-1], link, units, None)
    for head in model.heads:
        for layer in (head.old, head.new, head.new0):
            assert torch.equal(layer.weight[:, units], torch.zeros_like(layer.weight[:, units]))


def test_diagnostics_probes_and_resets_read_the_injected_network():
    model = make_model(spectral_norm="all")
    build("inject", model).at_shift(model, torch.optim.AdamW(model.parameters()))
    frames_np = frames(16).numpy()
    result = probe_network(model, frames_np)
    model.eval()
    with torch.no_grad():
        logits, values, _ = model(torch.from_numpy(frames_np))
    torch.testing.assert_close(result.logits, logits)
    torch.testing.assert_close(result.values, values)
    stats = weight_stats(model)  # the heads read are the trainable ones, affine maps
    with torch.no_grad():
        assert stats["policy/weight_norm"] == pytest.approx(float(model.policy.weight.double().norm()), rel=1e-6)
    model.train()
    probe = TrainabilityProbe(steps=2, batch_size=8)
    assert all(torch.isfinite(torch.tensor(v)) for v in probe.measure(model, frames_np).values())
    frozen = snapshot(model.injected)
    build("reset", model, parts=["encoder", "policy", "value"]).at_shift(model, None)
    assert all(torch.equal(p, frozen[n]) for n, p in model.injected.named_parameters())



def shifted(tmp_path: Path, interventions: dict) -> Run:
    """A gridworld run (K = 1) of ``interventions`` after its first epoch and the shift after it."""
    cfg = tiny_gridworld(interventions, num_epochs=2)
    run_dir = tmp_path / "_".join(interventions)
    run_dir.mkdir(parents=True)
    run = Run(cfg, run_dir, seed=0, device="cpu")
    run.run_epoch(0)
    run.shift(1)
    return run


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_a_method_after_injection_at_a_shift_acts_on_the_network_injection_built(tmp_path, variant):
    """Methods run in the config's order at a shift, the population re-stacking after each: a
    reset after injection re-draws the heads injection added (not the frozen copies), and a
    shrink-perturb after it reaches the wrapped heads."""
    alone = shifted(tmp_path, {"inject": {"variant": variant}}).member.model
    both = shifted(tmp_path, {"inject": {"variant": variant}, "reset": {"parts": ["policy", "value"]}}).member.model
    frozen = {n: p for n, p in alone.named_parameters() if not p.requires_grad}
    assert frozen or variant == "reference"
    for name, value in both.named_parameters():
        if name in frozen:
            assert torch.equal(value, frozen[name]), name  # the frozen copies keep what they had
    heads = [n for n, p in both.named_parameters() if p.requires_grad and n.startswith(("policy", "value"))]
    assert heads and all(not torch.equal(dict(both.named_parameters())[n], dict(alone.named_parameters())[n]) for n in heads)
    perturbed = shifted(tmp_path / "sp", {"inject": {"variant": variant}, "shrink_perturb": {"parts": ["policy", "value"]}})
    assert sorted(n for n, _ in perturbed.member.model.named_parameters()) == sorted(n for n, _ in alone.named_parameters())


def test_a_repeated_reference_injection_reaches_the_populations_stacked_state(tmp_path):
    """The reference variant's second injection replaces each head by a merged layer of the same
    shape; the population re-stacks it, so the members' modules (checkpoints, probes) and the
    stacked compute (training) stay one network."""
    cfg = tiny_gridworld({"inject": {"variant": "reference"}}, shift_points=(1, 2))
    dirs = [tmp_path / f"m{k}" for k in range(2)]
    for d in dirs:
        d.mkdir()
    run = Run(cfg, dirs, [0, 1], device="cpu")
    for epoch in range(3):
        if epoch in cfg.ppo_trainer.shift_points:
            run.shift(epoch)
        run.run_epoch(epoch)
    obs = torch.from_numpy(run.envs.observe_current())
    run.net.train(False)
    with torch.no_grad():
        head, value, _ = run.net(obs)
        for k, member in enumerate(run.members):
            for name, p in member.model.named_parameters():
                assert p.data_ptr() == run.net.params[name][k].data_ptr(), name
            member.model.eval()
            alone = member.model(obs[k])  # the module's own call rounds unlike the batched one: close, not equal
            torch.testing.assert_close(head[k], alone[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(value[k], alone[1], rtol=1e-5, atol=1e-6)
