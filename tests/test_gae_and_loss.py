"""GAE against a hand-computed example and the PPO loss pieces."""

import math

import torch

from plasticity_lab.agents.ppo import compute_gae, ppo_loss
from plasticity_lab.distributions import Categorical


def test_gae_hand_computed_with_termination_and_truncation():
    gamma, lam = 0.9, 0.5
    # one env, 4 steps: step 1 terminates, step 3 is truncated by the time limit.
    rewards = torch.tensor([[1.0], [2.0], [0.5], [1.0]])
    values = torch.tensor([[0.5], [1.0], [0.2], [0.4]])
    terminated = torch.tensor([[False], [True], [False], [False]])
    truncated = torch.tensor([[False], [False], [False], [True]])
    next_values = torch.tensor([[0.0], [0.0], [0.0], [3.0]])  # V(pre-reset obs) at step 3
    last_values = torch.tensor([7.0])  # V(first obs of the next episode): must NOT be used
    adv = compute_gae(rewards, values, terminated, truncated, next_values, last_values, gamma, lam)
    d3 = 1.0 + 0.9 * 3.0 - 0.4  # truncation bootstraps from next_values, not last_values
    d2 = 0.5 + 0.9 * 0.4 - 0.2
    d1 = 2.0 - 1.0  # terminated: no bootstrap
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    a3 = d3
    a2 = d2 + 0.45 * a3
    a1 = d1  # recursion cut at termination
    a0 = d0 + 0.45 * a1
    expected = torch.tensor([[a0], [a1], [a2], [a3]])
    torch.testing.assert_close(adv, expected)


def test_gae_bootstraps_from_last_value_at_rollout_end():
    rewards = torch.zeros(2, 2)
    values = torch.zeros(2, 2)
    flags = torch.zeros(2, 2, dtype=torch.bool)
    adv = compute_gae(rewards, values, flags, flags, torch.zeros(2, 2), torch.tensor([1.0, 2.0]), 0.5, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.25, 0.5], [0.5, 1.0]]))


def _loss(logits, old_logp, adv, clip=0.2, actions=None):
    n = logits.shape[0]
    actions = torch.zeros(n, dtype=torch.long) if actions is None else actions
    values = torch.zeros(n, requires_grad=True)
    return ppo_loss(Categorical(logits), values, actions, old_logp, adv, torch.ones(n), clip)


def test_policy_loss_is_minus_mean_normalised_advantage_at_ratio_one():
    logits = torch.randn(5, 9)
    old = torch.log_softmax(logits, -1)[:, 0]
    adv = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    parts = _loss(logits, old, adv)
    assert abs(parts.policy.item()) < 1e-6  # normalised advantages have mean 0
    assert parts.approx_kl.item() == 0 and parts.clipfrac.item() == 0
    torch.testing.assert_close(parts.value, torch.tensor(1.0))  # MSE of 0 vs 1


def test_clipping_stops_gradient_beyond_the_trust_region():
    logits = torch.zeros(2, 9, requires_grad=True)
    old = torch.log(torch.tensor([1 / 9, 1 / 9])) - 1.0  # ratio = e > 1 + clip
    parts = _loss(logits, old, torch.tensor([1.0, -1.0]))
    # adv>0 with ratio above 1+clip is clipped (no gradient); adv<0 row is not clipped
    parts.policy.backward()
    assert torch.all(logits.grad[0] == 0)
    assert torch.any(logits.grad[1] != 0)
    assert parts.clipfrac.item() == 1.0


def test_entropy_of_uniform_policy():
    parts = _loss(torch.zeros(3, 9), torch.full((3,), -math.log(9)), torch.tensor([1.0, 0.0, -1.0]))
    assert abs(parts.entropy.item() - math.log(9)) < 1e-6
