"""PPO pieces: preallocated rollout storage, GAE with time-limit bootstrapping, clipped loss.

The update itself lives in :func:`ppo_update` and reads top to bottom; interventions enter only
through the hook calls (``loss``, ``after_step``), never through branches here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from plasticity_lab.agents.distributions import ActionDistribution

ADV_EPS = 1e-8


@dataclass
class Batch:
    """Experience flattened for the update: one row per transition, in any order."""

    obs: torch.Tensor  # uint8 (M, H, W, C) frames or float32 (M, D) vectors
    actions: torch.Tensor  # int64 (M,) discrete or float32 (M, A) continuous
    log_probs: torch.Tensor  # (M,)
    values: torch.Tensor  # (M,)
    advantages: torch.Tensor  # (M,)

    def __len__(self) -> int:
        return self.actions.shape[0]

    @classmethod
    def concat(cls, batches: list[Batch]) -> Batch:
        return cls(*(torch.cat([getattr(b, f.name) for b in batches]) for f in fields(cls)))


@dataclass
class Rollout:
    """Vectorised experience shaped (steps, envs, ...): a fixed-length rollout, or one batch of
    complete episodes (one per env, each from its reset) with ``active`` marking the steps that
    belong to them."""

    obs: torch.Tensor  # uint8 (T, N, H, W, C) frames or float32 (T, N, D) vectors
    actions: torch.Tensor  # int64 (T, N) discrete or float32 (T, N, A) continuous
    log_probs: torch.Tensor  # (T, N)
    values: torch.Tensor  # (T, N)
    rewards: torch.Tensor  # (T, N)
    terminated: torch.Tensor  # bool (T, N): episode ended, no bootstrap
    truncated: torch.Tensor  # bool (T, N): time limit hit, bootstrap from next_values
    next_values: torch.Tensor  # (T, N): V of the true next state where truncated, else unused
    last_values: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (N,) V(s_T)
    active: torch.Tensor | None = None  # bool (T, N): rows that are experience; None = all

    def to_batch(self, gamma: float, lam: float) -> Batch:
        """GAE per env column, then the experience rows flattened (time-major)."""
        adv = compute_gae(
            self.rewards, self.values, self.terminated, self.truncated, self.next_values, self.last_values, gamma, lam
        )
        columns = (self.obs, self.actions, self.log_probs, self.values, adv)
        if self.active is None:
            return Batch(*(c.flatten(0, 1) for c in columns))
        return Batch(*(c[self.active] for c in columns))

    @classmethod
    def allocate(
        cls,
        steps: int,
        envs: int,
        obs_shape: tuple[int, ...],
        device: torch.device,
        obs_dtype: torch.dtype = torch.uint8,
        action_dim: int | None = None,
    ) -> Rollout:
        """``action_dim`` None: discrete actions; else continuous actions of that dimension."""
        f = dict(device=device)
        actions = (
            torch.zeros((steps, envs), dtype=torch.long, **f) if action_dim is None
            else torch.zeros((steps, envs, action_dim), **f)
        )  # fmt: skip
        return cls(
            obs=torch.zeros((steps, envs, *obs_shape), dtype=obs_dtype, **f),
            actions=actions,
            log_probs=torch.zeros((steps, envs), **f),
            values=torch.zeros((steps, envs), **f),
            rewards=torch.zeros((steps, envs), **f),
            terminated=torch.zeros((steps, envs), dtype=torch.bool, **f),
            truncated=torch.zeros((steps, envs), dtype=torch.bool, **f),
            next_values=torch.zeros((steps, envs), **f),
            last_values=torch.zeros(envs, **f),
        )


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    next_values: torch.Tensor,
    last_values: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Generalised advantage estimation over (T, N) tensors.

    For step t the bootstrap value is V(s_{t+1}) of the same episode: the next row's value, or
    ``last_values`` after the final step; 0 when the episode terminated; ``next_values[t]`` (the
    value of the pre-reset observation) when it was truncated by the time limit. The advantage
    recursion is cut at every episode end, terminated or truncated.
    """
    steps = rewards.shape[0]
    following = torch.cat([values[1:], last_values.unsqueeze(0)], dim=0)
    bootstrap = torch.where(truncated, next_values, following)
    bootstrap = torch.where(terminated, torch.zeros_like(bootstrap), bootstrap)
    deltas = rewards + gamma * bootstrap - values
    carry = (~(terminated | truncated)).to(rewards.dtype) * (gamma * lam)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(steps - 1, -1, -1):
        running = deltas[t] + carry[t] * running
        advantages[t] = running
    return advantages


@dataclass
class LossParts:
    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor
    value_error: torch.Tensor


def ppo_loss(
    dist: ActionDistribution,
    values: torch.Tensor,
    actions: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    clip: float,
) -> LossParts:
    """Clipped surrogate, MSE value loss and entropy for one minibatch, for any action
    distribution (:mod:`plasticity_lab.agents.distributions`).

    Advantages are normalised within the minibatch (as the reference implementation does).
    """
    adv = (advantages - advantages.mean()) / (advantages.std() + ADV_EPS)
    log_probs = dist.log_prob(actions)
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    entropy = dist.entropy().mean()
    values = values.float()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clipfrac = ((ratio - 1.0).abs() > clip).float().mean()
        value_error = (returns - values).mean()
    return LossParts(
        policy=-surrogate.mean(),
        value=F.mse_loss(values, returns),
        entropy=entropy,
        approx_kl=approx_kl,
        clipfrac=clipfrac,
        value_error=value_error,
    )
