"""Mitigation methods: each check compares against an independent computation of what the method
should do (formula, numpy, analytic gradient), on the small conv64 model and random frames."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from plasticity_lab.config import ModelConfig
from plasticity_lab.config import RunConfig
from plasticity_lab.interventions import REGISTRY, LossContext, TrainingPlan, build_interventions
from plasticity_lab.interventions import make_optimizer as runner_optimizer
from plasticity_lab.interventions.base import validate_params
from plasticity_lab.nets import build_model
from plasticity_lab.nets.surgery import fresh_draws, fresh_init, fresh_params, init_bound, param_layers, weight_param

B = 8

# importing kron_torch imports torch's inductor, which warns about its own deprecated internals
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    pytest.mark.usefixtures("one_thread"),  # conftest: one torch thread, restored after the module
]


def make_model(seed: int = 0, obs_shape: tuple[int, int, int] = (64, 64, 3), **cfg) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(h_size=32, **cfg), 9, obs_shape)


def frames(n: int = B, seed: int = 0, shape: tuple[int, int, int] = (64, 64, 3)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)


PLAN = TrainingPlan.from_config(RunConfig())


def build(name: str, model: nn.Module, plan: TrainingPlan = PLAN, **params):
    return REGISTRY[name](validate_params(name, params), model, plan)


def ctx(obs: torch.Tensor, policy_loss: float = 1.0) -> LossContext:
    """A loss-hook context for ``obs`` as the minibatch (and the whole buffer)."""
    return LossContext(obs, torch.tensor(policy_loss), obs, torch.Generator().manual_seed(0))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def make_optimizer(model: nn.Module, ivs, lr: float = 1e-3) -> torch.optim.Optimizer:
    """The runner's optimiser with the tests' learning rate."""
    return runner_optimizer(model, ivs, dict(lr=lr, betas=(0.9, 0.999), weight_decay=0.0))


def train_step(model, ivs, opt, seed: int) -> torch.Tensor:
    """One minibatch as the runner does it, with a PPO-like loss on synthetic targets."""
    gen = torch.Generator().manual_seed(1000 + seed)
    obs = frames(B, seed, model.obs_shape)
    actions = torch.randint(0, 9, (B,), generator=gen)
    returns = torch.randn(B, generator=gen)
    logits, values, _ = model(obs)
    loss = nn.functional.cross_entropy(logits, actions) + 0.5 * (values - returns).pow(2).mean()
    for iv in ivs:
        extra = iv.loss(model, ctx(obs))
        if extra is not None:
            loss = loss + extra
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    opt.step()
    for iv in ivs:
        iv.after_step(model, opt)
    return loss.detach()


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------- surgery helpers


@pytest.mark.parametrize("cfg", [{}, {"norm": "layernorm", "spectral_norm": "all"}, {"norm": "rmsnorm"}])
def test_fresh_params_cover_every_parameter(cfg):
    model = make_model(**cfg)
    covered = [p for layer in param_layers(model) for p, _ in fresh_params(layer)]
    assert len(covered) == len(list(model.parameters()))
    assert {id(p) for p in covered} == {id(p) for p in model.parameters()}


def test_cheap_draw_has_torchs_default_init_bounds():
    layers = [nn.Linear(900, 300), nn.Conv2d(16, 64, 4)]
    for layer in layers:
        bound = init_bound(layer)
        assert bound == pytest.approx(1 / math.sqrt(weight_param(layer)[0].numel()))
        reference = fresh_init(layer)
        cheap = [d.fill_(torch.empty_like(d.param)) for d in fresh_draws(layer)]
        for ref, val in zip(reference, cheap, strict=True):
            assert val.shape == ref.shape
            # torch's own draw and the cheap one fill the same interval
            assert ref.abs().max() <= bound and val.abs().max() <= bound
            assert ref.abs().max() > 0.9 * bound and val.abs().max() > 0.9 * bound
        assert cheap[0].std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


# ---------------------------------------------------------------------------- reset family


def test_reset_final_reinitialises_the_heads_only_and_clears_their_moments():
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_step(model, [], opt, 0)
    before = snapshot(model)
    build("reset", model).at_shift(model, opt)
    bound = 1 / math.sqrt(model.feature_dim)
    for name, p in model.named_parameters():
        if name.startswith("blocks."):
            assert torch.equal(p, before[name]), name
            assert opt.state[p]["exp_avg"].abs().sum() > 0
        else:
            assert (p != before[name]).float().mean() > 0.9, name
            assert p.abs().max() <= bound
            assert opt.state[p]["exp_avg"].abs().sum() == 0 and opt.state[p]["exp_avg_sq"].abs().sum() == 0


@pytest.mark.parametrize("cfg", [{"norm": "layernorm"}, {"spectral_norm": "all"}])
def test_reset_all_reinitialises_everything_including_norm_affine(cfg):
    model = make_model(**cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(3.0)  # far outside any default init
    build("reset", model, parts=["encoder", "policy", "value"]).at_shift(model, None)
    for layer in param_layers(model):
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            bound = init_bound(layer)
            assert weight_param(layer).abs().max() <= bound and layer.bias.abs().max() <= bound
        else:
            assert torch.equal(layer.weight, torch.ones_like(layer.weight))
            assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_shrink_perturb_matches_the_formula_with_the_same_fresh_draw():
    model = make_model(norm="layernorm")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    before = {id(p): p.detach().clone() for p in model.parameters()}
    torch.manual_seed(123)
    layers = param_layers(model.blocks) + param_layers(model.policy) + param_layers(model.value)
    expected = {id(p): 0.3 * before[id(p)] + 0.7 * fresh for layer in layers for p, fresh in fresh_params(layer)}
    torch.manual_seed(123)
    build("shrink_perturb", model, shrink=0.3, perturb=0.7).at_shift(model, None)
    for p in model.parameters():
        torch.testing.assert_close(p.detach(), expected[id(p)], rtol=1e-6, atol=1e-7)
    norm = model.blocks[0].norm
    torch.testing.assert_close(norm.weight.detach(), 0.3 * before[id(norm.weight)] + 0.7)


def test_shrink_perturb_leaves_parts_not_named():
    model = make_model()
    before = snapshot(model)
    build("shrink_perturb", model, parts=["value"]).at_shift(model, None)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"value.weight", "value.bias"}


def test_soft_shrink_perturb_fresh_step_formula(monkeypatch):
    model = make_model(norm="layernorm")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    frozen = model.value.bias
    frozen.requires_grad_(False)

    # Cheap: no module may be built per step.
    def refuse(*args, **kwargs):
        raise AssertionError("module built inside after_step")

    monkeypatch.setattr(nn.Linear, "__init__", refuse)
    monkeypatch.setattr(nn.Conv2d, "__init__", refuse)

    before = {id(p): p.detach().clone() for p in model.parameters()}
    build("soft_shrink_perturb", model, shrink=0.5, perturb=0.0).after_step(model, None)
    for p in model.parameters():
        expected = before[id(p)] if p is frozen else 0.5 * before[id(p)]
        assert torch.equal(p, expected)

    # shrink 1, perturb 1: the increment is exactly one fresh default-init draw
    iv = build("soft_shrink_perturb", model, shrink=1.0, perturb=1.0)
    increments = []
    for _ in range(2):
        before = {id(p): p.detach().clone() for p in model.parameters()}
        iv.after_step(model, None)
        increments.append({id(p): p.detach() - before[id(p)] for p in model.parameters()})
    for layer in param_layers(model):
        for p in layer.parameters():
            eps = increments[0][id(p)]
            if p is frozen:
                assert torch.equal(eps, torch.zeros_like(eps))
            elif isinstance(layer, (nn.Linear, nn.Conv2d)):
                bound = init_bound(layer)
                assert eps.abs().max() <= bound * (1 + 1e-5) and eps.abs().max() > 0.5 * bound
                assert not torch.equal(eps, increments[1][id(p)])  # a new draw every step
            else:  # norm scale -> +1, offset -> +0
                target = 1.0 if p is layer.weight else 0.0
                torch.testing.assert_close(eps, torch.full_like(eps, target), rtol=0, atol=1e-6)
    dense = model.blocks[-1].layer
    assert increments[0][id(dense.weight)].std().item() == pytest.approx(init_bound(dense) / math.sqrt(3), rel=0.05)


def test_soft_shrink_perturb_init_target_and_its_checkpoint():
    model = make_model()
    theta0 = snapshot(model)
    iv = build("soft_shrink_perturb", model, shrink=0.9, perturb=0.1, target="init")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    moved = snapshot(model)
    iv.after_step(model, None)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), 0.9 * moved[n] + 0.1 * theta0[n], rtol=1e-6, atol=1e-7)

    # theta_0 comes from the checkpoint, not from the restored model's own (different) init
    other = make_model(seed=5)
    restored = build("soft_shrink_perturb", other, shrink=0.9, perturb=0.1, target="init")
    restored.load_state_dict(iv.state_dict())
    other.load_state_dict(model.state_dict())
    now = snapshot(other)
    restored.after_step(other, None)
    for n, p in other.named_parameters():
        torch.testing.assert_close(p.detach(), 0.9 * now[n] + 0.1 * theta0[n], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------- loss regularisers


def perturbed(model: nn.Module, scale: float = 0.01, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("squared", [False, True])
def test_l2_init_value_and_gradient_are_the_analytic_ones(squared):
    model = make_model()
    theta0 = {id(p): p.detach().clone() for p in model.parameters()}
    iv = build("l2_init", model, coef=0.3, squared=squared)
    at_init = iv.loss(model, ctx(frames()))
    at_init.backward()
    assert at_init.item() == 0
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())  # not NaN

    model.zero_grad(set_to_none=True)
    perturbed(model)
    diff = {id(p): p.detach() - theta0[id(p)] for p in model.parameters()}
    norm = torch.sqrt(sum(d.double().pow(2).sum() for d in diff.values()))
    value = iv.loss(model, ctx(frames()))
    value.backward()
    expected = 0.3 * (norm**2 if squared else norm)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    for p in model.parameters():
        grad = 0.3 * 2 * diff[id(p)] if squared else 0.3 * diff[id(p)] / norm.float()
        torch.testing.assert_close(p.grad, grad, rtol=1e-4, atol=1e-9)


def test_l2_init_anchors_injected_heads_at_their_initial_value():
    model = make_model()
    iv = build("l2_init", model)
    build("inject", model).at_shift(model, torch.optim.AdamW(model.parameters()))
    assert iv.loss(model, ctx(frames())).item() == 0  # new heads anchored now; frozen old heads skipped
    with torch.no_grad():
        model.policy.bias.add_(0.5)
    assert iv.loss(model, ctx(frames())).item() == pytest.approx(0.01 * 0.5 * math.sqrt(9), rel=1e-5)


def test_w2_init_matches_numpy_and_ignores_permutations():
    model = make_model()
    theta0 = [p.detach().numpy().copy() for p in model.parameters()]
    iv = build("w2_init", model, coef=0.02)
    perturbed(model, scale=0.05)
    now = [p.detach().numpy() for p in model.parameters()]
    diff = np.concatenate([np.sort(a.ravel()) - np.sort(b.ravel()) for a, b in zip(now, theta0, strict=True)])
    assert iv.loss(model, ctx(frames())).item() == pytest.approx(0.02 * np.linalg.norm(diff.astype(np.float64)), rel=1e-5)

    fresh = make_model()
    w2 = build("w2_init", fresh)
    l2 = build("l2_init", fresh)
    with torch.no_grad():
        w = fresh.blocks[1].layer.weight
        w.copy_(w.flatten()[torch.randperm(w.numel())].view_as(w))
    assert w2.loss(fresh, ctx(frames())).item() == 0
    assert l2.loss(fresh, ctx(frames())).item() > 0


# ---------------------------------------------------------------------------- optimisers


def defaults() -> dict:
    return dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)


def test_trac_wraps_adamw_and_starts_with_a_tiny_scale():
    from trac_optimizer.trac import is_trac

    plain_model, trac_model = make_model(), make_model()
    plain = torch.optim.AdamW(plain_model.parameters(), **defaults())
    trac = build("trac", trac_model).optimizer(list(trac_model.parameters()), defaults())
    assert is_trac(trac) and isinstance(trac, torch.optim.AdamW)
    start = snapshot(trac_model)
    train_step(plain_model, [], plain, 0)
    train_step(trac_model, [], trac, 0)
    plain_move = max((p - start[n]).abs().max().item() for n, p in plain_model.named_parameters())
    trac_move = max((p - start[n]).abs().max().item() for n, p in trac_model.named_parameters())
    assert plain_move > 1e-4 and trac_move < 1e-6  # TRAC's scale s starts at s_prev = 1e-8


def test_kron_is_used_eagerly_with_diagonal_large_dimensions():
    from kron_torch import Kron

    torch._dynamo.utils.counters.clear()
    model = make_model()
    opt = runner_optimizer(model, [build("kron", model, lr=1e-3)], defaults())
    assert isinstance(opt, Kron) and opt.param_groups[0]["lr"] == 1e-3
    start = snapshot(model)
    train_step(model, [], opt, 0)
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters())
    assert not torch._dynamo.utils.counters["stats"]  # nothing went through torch.compile
    dense = opt.state[model.blocks[-1].layer.weight]["Q"]  # (32, 2048): 32x32 triangular, 2048 diagonal
    assert [tuple(q.shape) for q in dense] == [(32, 32), (2048,)]


# ---------------------------------------------------------------------------- composition and resume


ALL_LOSS_AND_STEP = {
    "soft_shrink_perturb": {}, "l2_init": {}, "nap": {}, "parseval": {}, "w2_init": {}, "cchain": {}, "cbp": {},
}


@pytest.mark.parametrize("cfg, spec", [
    ({"norm": "layernorm", "spectral_norm": "encoder"}, ALL_LOSS_AND_STEP),
    ({"enc_type": "mlp", "norm": "rmsnorm"}, {**ALL_LOSS_AND_STEP, "inject": {}, "adam_beta": {}}),
    ({"enc_type": "conv11", "obs_shape": (11, 11, 3), "activation": "crelu"},  # no norm layers: no nap
     {**{k: v for k, v in ALL_LOSS_AND_STEP.items() if not REGISTRY[k].edits_weights}, "trac": {}, "l2": {"decay_per_task": 0.5}}),
    ({"spectral_norm": "all"}, {"redo": {"every": 1, "tau": 0.5}, "inject": {}, "shrink_perturb": {}, "kron": {}}),
    ({"norm": "layernorm"}, {"reset": {"parts": ["encoder", "policy", "value"]}, "l2": {}, "cbp": {"maturity_threshold": 0}}),
])
def test_a_composed_condition_trains_through_every_hook(cfg, spec):
    model = make_model(**cfg)
    ivs = build_interventions(spec, model, PLAN)
    opt = make_optimizer(model, ivs)
    start = snapshot(model)
    losses = []
    for step in range(3):
        if step == 1:
            for iv in ivs:
                iv.at_shift(model, opt)
        losses.append(train_step(model, ivs, opt, step))
        for iv in ivs:
            assert set(iv.periodic(model, opt, frames(16, 9, model.obs_shape), step + 1)) == set(getattr(iv, "stat_keys", ()))
    assert all(torch.isfinite(loss) for loss in losses)
    for n, p in model.named_parameters():
        assert torch.isfinite(p).all(), n
        # TRAC's scale starts at 1e-8: three of its steps move weights below float32 resolution
        if n in start and "trac" not in spec:
            assert not torch.equal(p, start[n]), n


STATEFUL = {
    "inject": {}, "cbp": {"maturity_threshold": 2, "replacement_rate": 0.2}, "cchain": {"value_coef": 1.0},
    "l2_init": {}, "soft_shrink_perturb": {"target": "init"}, "nap": {}, "w2_init": {},
}


@pytest.mark.parametrize("swap", [{}, {"trac": {}}, {"kron": {}}, {"adam_beta": {}}])
def test_checkpoint_resume_matches_the_uninterrupted_run(swap):
    """The runner's order: intervention states, then model weights, then a fresh optimiser."""
    provider = any("optimizer" in REGISTRY[name].hooks() for name in swap)  # cbp provides one too
    sole = any(REGISTRY[name].needs_sole_updates for name in swap)  # TRAC: no weight edits beside it
    spec = {**{k: v for k, v in STATEFUL.items() if not (provider and k == "cbp") and not (sole and REGISTRY[k].edits_weights)}, **swap}

    def run(model, ivs, opt, steps, shift_at=2):
        for step in steps:
            if step == shift_at:
                for iv in ivs:
                    iv.at_shift(model, opt)  # optimiser kept across the shift
            train_step(model, ivs, opt, step)

    model = make_model(norm="layernorm")  # nap needs norm layers
    ivs = build_interventions(spec, model, PLAN)
    opt = make_optimizer(model, ivs)
    run(model, ivs, opt, range(4))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "ivs": [iv.state_dict() for iv in ivs],
                "rng": torch.get_rng_state()}, buffer)
    run(model, ivs, opt, range(4, 7))

    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    resumed = make_model(seed=9, norm="layernorm")
    resumed_ivs = build_interventions(spec, resumed, PLAN)
    for iv, iv_state in zip(resumed_ivs, state["ivs"], strict=True):
        iv.load_state_dict(iv_state)
    resumed.load_state_dict(state["model"])
    resumed_opt = make_optimizer(resumed, resumed_ivs)
    resumed_opt.load_state_dict(state["opt"])
    torch.set_rng_state(state["rng"])
    run(resumed, resumed_ivs, resumed_opt, range(4, 7))
    for (n, a), b in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), n
