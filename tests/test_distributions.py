"""Action distributions (against closed forms), running statistics, reward scaling, Nature-DQN
encoder and the vector-observation network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from plasticity_lab.agents.reward_scaling import RewardScaler
from plasticity_lab.config import ModelConfig
from plasticity_lab.distributions import Categorical, DiagGaussian
from plasticity_lab.nets import build_model
from plasticity_lab.nets.normalization import ObsNormalizer, RunningMoments


def test_gaussian_log_prob_and_entropy_closed_form():
    torch.manual_seed(0)
    mean, log_std = torch.randn(5, 3), torch.randn(3) * 0.5
    a = torch.randn(5, 3)
    d = DiagGaussian(mean, log_std)
    std = log_std.exp()
    want_lp = (-0.5 * ((a - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    want_h = (log_std + 0.5 * (1 + math.log(2 * math.pi))).sum().expand(5)
    assert torch.allclose(d.log_prob(a), want_lp, atol=1e-5)
    assert torch.allclose(d.entropy(), want_h, atol=1e-5)
    assert torch.allclose(d.mode(), mean)


def test_gaussian_kl_and_sampling():
    m1, m2, s1, s2 = torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(2), torch.log(torch.tensor([2.0, 0.5]))
    p, q = DiagGaussian(m1, s1), DiagGaussian(m2, s2)
    sig1, sig2 = s1.exp(), s2.exp()
    want = (torch.log(sig2 / sig1) + (sig1**2 + (m1 - m2) ** 2) / (2 * sig2**2) - 0.5).sum(-1)
    assert torch.allclose(q.kl_from(p), want)  # KL(p || q)
    gen = torch.Generator().manual_seed(0)
    big = DiagGaussian(torch.full((20000, 2), 3.0), torch.log(torch.tensor([0.5, 2.0])))
    x = big.sample(gen)
    assert torch.allclose(x.mean(0), torch.tensor([3.0, 3.0]), atol=0.05)
    assert torch.allclose(x.std(0), torch.tensor([0.5, 2.0]), atol=0.05)
    again = big.sample(torch.Generator().manual_seed(0))
    assert torch.equal(x, again)  # draws come only from the given generator


def test_gaussian_total_variation_matches_the_equal_covariance_formula():
    """TV of N(m1, s^2 I) and N(m2, s^2 I) is 2 Phi(delta / 2) - 1, delta the Mahalanobis distance."""
    mean = torch.tensor([[0.0, 0.0], [0.3, -0.2], [2.0, 1.0]])
    p, q = DiagGaussian(torch.zeros(3, 2), torch.zeros(2)), DiagGaussian(mean, torch.zeros(2))
    tv = torch.stack([p.total_variation(q, torch.Generator().manual_seed(s)) for s in range(60)]).mean(0)
    delta = mean.norm(dim=-1).numpy()
    assert np.allclose(tv.numpy(), 2 * stats.norm.cdf(delta / 2) - 1, atol=0.01)
    assert float(p.total_variation(p, torch.Generator().manual_seed(0)).abs().max()) == 0.0


def test_categorical_matches_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, -1.0]])
    d = Categorical(logits)
    logp = torch.log_softmax(logits, -1)
    a = torch.tensor([2, 1])
    assert torch.allclose(d.log_prob(a), logp[[0, 1], a])
    assert torch.allclose(d.entropy(), -(logp.exp() * logp).sum(-1))
    other = Categorical(torch.zeros(2, 3))
    assert torch.allclose(d.total_variation(other), 0.5 * (logp.exp() - 1 / 3).abs().sum(-1).double())
    assert torch.allclose(other.kl_from(d), (logp.exp() * (logp - math.log(1 / 3))).sum(-1))
    draws = torch.stack([d.sample(torch.Generator().manual_seed(s)) for s in range(2000)])
    assert abs(float((draws[:, 0] == 2).float().mean()) - float(logp[0, 2].exp())) < 0.03


def test_categorical_equals_torch_distributions_up_to_rounding():
    """The action-first computation gives torch.distributions.Categorical's numbers (float
    rounding aside) for population-shaped logits, impossible actions (-inf logits) included, and
    its inverse-CDF draw is searchsorted's on the same uniforms."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, 6, generator=g) * 4
    logits[0, :5, 2] = -torch.inf  # an action the policy never takes
    ref = torch.distributions.Categorical(logits=logits)
    d = Categorical(logits)
    actions = torch.randint(0, 6, (3, 50), generator=g)
    actions[0, :5] = 0
    assert torch.allclose(d.params, ref.logits, atol=1e-6)
    assert torch.allclose(d.probs.movedim(0, -1), ref.probs, atol=1e-7)
    assert torch.allclose(d.log_prob(actions), ref.log_prob(actions), atol=1e-6)
    assert torch.allclose(d.entropy(), ref.entropy(), atol=1e-6)
    assert torch.equal(d.mode(), ref.probs.argmax(-1))
    prev_logits = torch.randn(3, 50, 6, generator=g)
    prev = Categorical(prev_logits)
    kl = d.kl_from(prev)
    want = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=prev_logits), ref)
    assert torch.isinf(kl[0, :5]).all() and torch.isinf(want[0, :5]).all()  # prev takes what d never does
    assert torch.allclose(kl[:, 5:], want[:, 5:], atol=1e-5) and torch.allclose(kl[1:], want[1:], atol=1e-5)
    assert torch.allclose(prev.kl_from(d), torch.distributions.kl_divergence(ref, torch.distributions.Categorical(logits=prev_logits)), atol=1e-5)
    gens = [torch.Generator().manual_seed(k) for k in range(3)]
    u = torch.stack([torch.rand(50, generator=torch.Generator().manual_seed(k), dtype=torch.float64) for k in range(3)])
    expected = torch.searchsorted(d.probs.movedim(0, -1).double().cumsum(-1), u.unsqueeze(-1), right=True).squeeze(-1).clamp(max=5)
    drawn = d.sample(gens)
    assert torch.equal(drawn, expected)
    assert not (drawn[0, :5] == 2).any()  # never the impossible action


def test_categorical_gradients_equal_torch_distributions():
    """PPO's loss terms (log-probability and entropy) backpropagate as torch's do."""
    logits = torch.randn(2, 40, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    actions = torch.randint(0, 4, (2, 40), generator=torch.Generator().manual_seed(2))
    d = Categorical(logits)
    (grad,) = torch.autograd.grad((d.log_prob(actions) * 0.7 + d.entropy() * 0.01).sum(), logits)
    ref = torch.distributions.Categorical(logits=logits)
    (want,) = torch.autograd.grad((ref.log_prob(actions) * 0.7 + ref.entropy() * 0.01).sum(), logits)
    assert torch.allclose(grad, want, atol=1e-6)


@pytest.mark.parametrize("actions", [4, 6, 15])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_categorical_row_numbers_do_not_depend_on_the_rows_beside_them(actions, dtype):
    """A member's log-probabilities, entropy, probabilities, draws, KL, total variation and
    gradients in a (K, N, A) call equal its own (N, A) call bit for bit, for action counts where
    torch's sum over dim 0 associates differently with the number of columns (A >= 5) and row
    counts that are not whole vector loops."""
    for members, rows in ((2, 11), (3, 20), (5, 16)):
        g = torch.Generator().manual_seed(members * 100 + rows)
        logits = (torch.randn(members, rows, actions, generator=g, dtype=dtype) * 3).requires_grad_()
        prev = torch.randn(members, rows, actions, generator=g, dtype=dtype)
        acts = torch.randint(0, actions, (members, rows), generator=g)
        both = Categorical(logits)
        loss = (both.log_prob(acts) * 0.7 + both.entropy() * 0.01).sum()
        (grad,) = torch.autograd.grad(loss, logits)
        drawn = both.sample([torch.Generator().manual_seed(k) for k in range(members)])
        for k in range(members):
            own_logits = logits[k].detach().clone().requires_grad_()
            own = Categorical(own_logits)
            (own_grad,) = torch.autograd.grad((own.log_prob(acts[k]) * 0.7 + own.entropy() * 0.01).sum(), own_logits)
            assert torch.equal(both.log_prob(acts)[k], own.log_prob(acts[k]))
            assert torch.equal(both.entropy()[k], own.entropy())
            assert torch.equal(both.probs[:, k], own.probs)
            assert torch.equal(grad[k], own_grad)
            assert torch.equal(drawn[k], own.sample(torch.Generator().manual_seed(k)))
            assert torch.equal(both.kl_from(Categorical(prev))[k], own.kl_from(Categorical(prev[k])))
            assert torch.equal(both.total_variation(Categorical(prev))[k], own.total_variation(Categorical(prev[k])))


def test_categorical_draw_on_a_cumulative_probability_takes_the_next_action(monkeypatch):
    """Inverse CDF with ties resolved as searchsorted(right=True): a uniform equal to the
    cumulative probability of actions 0..a draws action a + 1; the mode is the first of equal
    maxima; a uniform at the top of the last cumulative value stays the last action."""
    import plasticity_lab.distributions as dist_module

    d = Categorical(torch.zeros(3, 4))  # cdf 0.25, 0.5, 0.75, 1.0: exact in float64
    monkeypatch.setattr(dist_module, "_noise", lambda shape, *a, **k: torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64))
    assert d.sample(torch.Generator()).tolist() == [1, 2, 3]
    assert d.mode().tolist() == [0, 0, 0]


def test_categorical_kl_is_infinite_where_a_probability_underflows():
    """float32 exp(-120) is 0: self never takes action 1 although its log-probability is finite,
    so KL(prev || self) is infinite where prev takes it (torch.distributions' convention)."""
    d = Categorical(torch.tensor([[0.0, -120.0]]))
    prev = Categorical(torch.zeros(1, 2))
    want = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=torch.zeros(1, 2)),
                                             torch.distributions.Categorical(logits=torch.tensor([[0.0, -120.0]])))
    assert torch.isinf(want).all() and torch.isinf(d.kl_from(prev)).all()
    assert torch.equal(d.kl_from(d), torch.zeros(1))


def test_running_moments_equal_numpy_over_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3, 2, (n, 4)) for n in (1, 7, 50)]
    m = RunningMoments((4,))
    for b in batches:
        m.update(torch.from_numpy(b))
    allx = np.concatenate(batches)
    assert np.allclose(m.mean.numpy(), allx.mean(0)) and np.allclose(m.var.numpy(), allx.var(0))
    assert float(m.count) == len(allx)


def test_obs_normalizer_identity_then_standardises_and_clips():
    norm = ObsNormalizer((2,), clip=3.0)
    x = torch.tensor([[100.0, -4.0]])
    assert torch.equal(norm(x), x)  # no statistics yet
    norm.update(torch.tensor([[0.0, 0.0], [2.0, 4.0]]))  # mean (1, 2), var (1, 4)
    assert torch.allclose(norm(torch.tensor([[2.0, 0.0]])), torch.tensor([[1.0, -1.0]]), atol=1e-6)
    assert torch.allclose(norm(x), torch.tensor([[3.0, -3.0]]))


def test_reward_scaler_divides_by_discounted_return_std():
    scaler = RewardScaler(2, gamma=0.5, clip=100.0)
    rewards = [np.array([1.0, 2.0]), np.array([1.0, 0.0]), np.array([3.0, 1.0])]
    dones = [np.array([False, True]), np.array([False, False]), np.array([False, False])]
    g, seen = np.zeros(2), []
    for r, d in zip(rewards, dones):
        g = g * 0.5 + r
        seen.extend(g.tolist())
        want = r / np.sqrt(np.var(seen) + 1e-8)
        assert np.allclose(scaler(r, d), want)
        g[d] = 0.0
    state = scaler.state_dict()
    other = RewardScaler(2, gamma=0.5, clip=100.0)
    other.load_state_dict(state)
    r = np.array([0.5, 0.5])
    assert np.allclose(other(r, np.zeros(2, bool)), scaler(r, np.zeros(2, bool)))


def test_nature_encoder_is_the_dqn_network():
    model = build_model(ModelConfig(enc_type="nature", h_size=512), 18, (84, 84, 4))
    convs = [b.layer for b in model.blocks[: model.num_conv]]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [(32, 8, 4), (64, 4, 2), (64, 3, 1)]
    assert model.flat_dim == 64 * 7 * 7 and model.feature_dim == 512
    trunk = sum(p.numel() for p in model.blocks.parameters())
    assert trunk == (32 * 4 * 64 + 32) + (64 * 32 * 16 + 64) + (64 * 64 * 9 + 64) + (3136 * 512 + 512)
    logits, value, _ = model(torch.zeros(3, 84, 84, 4, dtype=torch.uint8))
    assert logits.shape == (3, 18) and value.shape == (3,)


def test_vector_network_is_gaussian_with_state_independent_std():
    model = build_model(ModelConfig(enc_type="mlp", h_size=16), 3, (11,), continuous=True)
    obs = torch.randn(4, 11)
    head, value, _ = model(obs)
    dist = model.distribution(head)
    assert isinstance(dist, DiagGaussian) and head.shape == (4, 3)
    assert torch.equal(dist.dist.stddev, torch.ones(4, 3))  # log_std starts at 0, one per dimension
    assert "log_std" in dict(model.named_parameters()) and "obs_norm.mean" in model.state_dict()
    with pytest.raises(ValueError, match="needs image observations"):
        build_model(ModelConfig(enc_type="conv64"), 3, (11,))
    with pytest.raises(ValueError, match="does not fit 9x9"):
        build_model(ModelConfig(enc_type="nature"), 3, (9, 9, 3))


def test_continuous_ppo_loss_uses_the_gaussian():
    """ppo_loss on a DiagGaussian: entropy is the Gaussian's, the surrogate is -mean(normalised
    advantage) at ratio 1, and the gradient reaches the state-independent log std."""
    from plasticity_lab.agents.ppo import ppo_loss

    torch.manual_seed(0)
    mean = torch.randn(6, 2, requires_grad=True)
    log_std = torch.tensor([0.1, -0.3], requires_grad=True)
    dist = DiagGaussian(mean, log_std)
    actions = torch.randn(6, 2)
    ref = torch.distributions.Normal(mean.detach(), log_std.detach().exp())
    old = ref.log_prob(actions).sum(-1)
    adv = torch.arange(6.0)
    parts = ppo_loss(dist, torch.zeros(6, requires_grad=True), actions, old, adv, torch.zeros(6), 0.2)
    assert torch.allclose(parts.entropy, ref.entropy().sum(-1).mean())
    assert torch.allclose(parts.policy, -((adv - adv.mean()) / (adv.std() + 1e-8)).mean(), atol=1e-6)
    (parts.policy - parts.entropy).backward()
    assert log_std.grad is not None and log_std.grad.abs().sum() > 0
