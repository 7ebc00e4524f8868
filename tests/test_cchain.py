"""C-CHAIN against the paper's code: the churn term against the network before the last update on
an independent reference batch, the coefficient rule on a constructed loss sequence, its
checkpoint, and the claimed effect (less churn on held-out data per update)."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from plasticity_lab.config import ModelConfig
from plasticity_lab.interventions import LossContext, TrainingPlan, build_interventions
from plasticity_lab.nets import build_model
from tests.test_interventions import build, frames, make_model

LOG9 = math.log(9)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, restored after the module


def indexed_frames(n: int) -> torch.Tensor:
    """Frames whose first pixel spells their index, so a batch can be traced back to the buffer."""
    out = frames(n, seed=4)
    out[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    out[:, 0, 0, 1] = 0
    return out


def uniform_policy(model: nn.Module) -> None:
    """Zero policy head: every policy is uniform, so CE(pi_prev, pi) = log 9 exactly."""
    with torch.no_grad():
        model.policy.weight.zero_()
        model.policy.bias.zero_()


def test_reference_batch_is_an_independent_pass_over_the_buffer_from_the_run_generator():
    model = make_model()
    iv = build("cchain", model)
    buffer = indexed_frames(32)
    seen = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(args[0][:, 0, 0, 0].tolist()) if torch.is_grad_enabled() else None)
    gen = torch.Generator().manual_seed(7)
    global_state = torch.get_rng_state()
    for step in range(4):
        minibatch = buffer[8 * step : 8 * step + 8]
        ctx = LossContext(minibatch, torch.tensor(0.1), buffer, gen)
        seen.clear()
        penalty = iv.loss(model, ctx)
        assert (penalty is None) == (step == 0)  # no network before an update yet
        if step:
            (ref,) = seen  # one gradient forward: the reference batch
            assert sorted(ref) != list(range(8 * step, 8 * step + 8))  # not the trained minibatch
            refs = refs + ref if step > 1 else ref
    assert torch.equal(torch.get_rng_state(), global_state)  # drawn from the run's generator only
    expected = torch.randperm(32, generator=torch.Generator().manual_seed(7)).tolist()
    assert refs == expected[:24]  # a shuffled pass: each buffer frame once, in the generator's order


def test_penalty_is_the_churn_against_the_network_before_the_last_update():
    model = make_model()
    iv = build("cchain", model, coef=2.0, value_coef=3.0, target_ratio=0.0)
    buffer = frames(16, seed=1)
    gen = torch.Generator().manual_seed(3)
    iv.loss(model, LossContext(buffer[:8], torch.tensor(0.0), buffer, gen))  # step t-1: remembers theta_{t-1}
    previous = copy.deepcopy(model)
    with torch.no_grad():  # the update of step t-1
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = buffer[torch.randperm(16, generator=torch.Generator().manual_seed(3))[:8]]
    penalty = iv.loss(model, LossContext(buffer[8:], torch.tensor(0.0), buffer, gen))
    with torch.no_grad():
        prev_logits, prev_values, _ = (t.double() for t in previous(ref))
        logits, values, _ = (t.double() for t in model(ref))
    p_prev, p_now = prev_logits.softmax(-1), logits.softmax(-1)
    cross_entropy = -(p_prev * p_now.log()).sum(-1).mean()
    expected = 2.0 * cross_entropy + 3.0 * (values - prev_values).pow(2).mean()
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-4)
    penalty.backward()
    # d CE(p_prev, softmax z) / dz = softmax(z) - p_prev, the gradient of KL(p_prev || softmax z)
    torch.testing.assert_close(model.policy.bias.grad, (2.0 * (p_now - p_prev).mean(0)).float(), rtol=1e-3, atol=1e-7)
    value_grad = 3.0 * 2 * (values - prev_values).mean().view(1)
    torch.testing.assert_close(model.value.bias.grad, value_grad.float(), rtol=1e-3, atol=1e-7)
    # unchanged network: the churn KL is zero, the CE term is the policy's entropy
    out = iv.periodic(model, None, buffer, 0)
    kl = (p_prev * (p_prev.log() - p_now.log())).sum(-1).mean().item()
    assert out["cchain_policy_churn"] == pytest.approx(kl, rel=1e-3)
    assert iv.prev is not None
    iv.at_shift(model, None)
    assert iv.loss(model, LossContext(buffer[:8], torch.tensor(0.0), buffer, gen)) is None  # restarts per task


# policy losses of two minibatches per epoch; epoch means -0.1, 0.2, 0.05, -0.2, 0.001, then 0
EPOCHS = [(0.1, -0.3), (0.2, 0.2), (0.05, 0.05), (-0.5, 0.1), (0.0, 0.002), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)]


def test_coefficient_follows_the_paper_rule_on_a_constructed_sequence():
    model = make_model()
    uniform_policy(model)
    iv = build("cchain", model, coef=10.0, target_ratio=100.0, warmup_iters=2, window=3)
    buffer = frames(16, seed=2)
    gen = torch.Generator().manual_seed(0)
    # hand computation: coef = max(100 * mean|epoch means| over the last 3 epochs / log 9, 1), from epoch 2
    expected = [10.0, 10.0,
                100 * (0.1 + 0.2 + 0.05) / 3 / LOG9,
                100 * (0.2 + 0.05 + 0.2) / 3 / LOG9,
                100 * (0.05 + 0.2 + 0.001) / 3 / LOG9,
                100 * (0.2 + 0.001 + 0.0) / 3 / LOG9,
                1.0,  # 100 * (0.001 + 0 + 0) / 3 / log 9 = 0.015: the floor
                1.0]
    coefs, penalties = [], []
    for losses in EPOCHS:
        for loss in losses:
            penalty = iv.loss(model, LossContext(buffer[:8], torch.tensor(loss), buffer, gen))
            if penalty is not None:
                penalties.append(penalty.item() / LOG9)  # coef * CE with CE = log 9
        coefs.append(iv.periodic(model, None, buffer, len(coefs))["cchain_coef"])
        assert iv.coef == pytest.approx(expected[len(coefs) - 1], rel=1e-6)
    # the logged coefficient is the one the epoch trained with, applied to every minibatch
    assert coefs == pytest.approx([10.0, *expected[:-1]], rel=1e-6)
    # (the run's first minibatch has no network before an update, hence no term)
    assert penalties == pytest.approx([coefs[0]] + [c for c in coefs[1:] for _ in range(2)], rel=1e-5)
    iv.at_shift(model, None)
    assert iv.coef == 10.0 and iv.policy_means == [] and iv.iters == 0  # per task, as the paper


def test_a_fixed_coefficient_when_target_ratio_is_zero():
    model = make_model()
    iv = build("cchain", model, coef=4.0, target_ratio=0.0, warmup_iters=0)
    buffer = frames(16)
    for epoch in range(3):
        for _ in range(2):
            iv.loss(model, LossContext(buffer[:8], torch.tensor(0.5), buffer, torch.Generator().manual_seed(epoch)))
        iv.periodic(model, None, buffer, epoch)
        assert iv.coef == 4.0


def test_checkpoint_resume_continues_identically_mid_epoch():
    def drive(model, iv, steps, gen):
        penalties = []
        for step in steps:
            buffer = frames(16, seed=10 + step // 3)
            penalty = iv.loss(model, LossContext(buffer[:8], torch.tensor(0.01 * step), buffer, gen))
            penalties.append(None if penalty is None else penalty.item())
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1e-3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(step)))
            if step % 3 == 2:
                iv.periodic(model, None, buffer, step // 3)
        return penalties

    model, gen = make_model(), torch.Generator().manual_seed(0)
    iv = build("cchain", model, warmup_iters=1, window=2)
    drive(model, iv, range(10), gen)
    saved = io.BytesIO()
    torch.save({"iv": iv.state_dict(), "model": model.state_dict(), "gen": gen.get_state()}, saved)
    expected = drive(model, iv, range(10, 17), gen)
    saved.seek(0)
    state = torch.load(saved, weights_only=False)
    other = make_model(seed=3)
    restored = build("cchain", other, warmup_iters=1, window=2)
    restored.load_state_dict(state["iv"])
    other.load_state_dict(state["model"])
    other_gen = torch.Generator()
    other_gen.set_state(state["gen"])
    assert drive(other, restored, range(10, 17), other_gen) == expected
    assert restored.coef == iv.coef and restored.coef != 10.0


def held_out_churn(spec: dict, steps: int = 60, seed: int = 0) -> float:
    """Mean KL(pi_before || pi_after) per update on frames never trained on."""
    obs_shape = (8, 8, 3)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(enc_type="mlp", h_size=64), 9, obs_shape)
    ivs = build_interventions(spec, model, TrainingPlan(10, (), 8, 1e-3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(123)
    buffer = torch.randint(0, 256, (256, *obs_shape), dtype=torch.uint8, generator=gen)
    held_out = torch.randint(0, 256, (256, *obs_shape), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 9, (256,), generator=gen)
    churn = []
    for _ in range(steps):
        idx = torch.randint(0, 256, (32,), generator=gen)
        loss = nn.functional.cross_entropy(model(buffer[idx])[0], labels[idx])
        for iv in ivs:
            extra = iv.loss(model, LossContext(buffer[idx], loss.detach(), buffer, gen))
            if extra is not None:
                loss = loss + extra
        with torch.no_grad():
            before = model(held_out)[0].log_softmax(-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            after = model(held_out)[0].log_softmax(-1)
        churn.append((before.exp() * (before - after)).sum(-1).mean().item())
    return sum(churn[5:]) / len(churn[5:])


def test_claimed_effect_less_policy_churn_on_held_out_data():
    """Tang et al.: the churn term reduces how much each update changes the policy on data
    outside the minibatch; measured here on frames that are in no batch at all."""
    baseline = held_out_churn({})
    reduced = held_out_churn({"cchain": {"coef": 10.0, "target_ratio": 0.0}})
    assert reduced < 0.6 * baseline
