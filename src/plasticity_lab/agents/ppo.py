"""PPO pieces: preallocated rollout storage, GAE with time-limit bootstrapping, clipped loss.

Every tensor carries a population's member dimension (K = 1 for a single run), so the same
code serves one run and many. The update itself is ``Run.update`` in
:mod:`plasticity_lab.experiment.runner`; interventions enter only through its hook calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from plasticity_lab.distributions import ActionDistribution

ADV_EPS = 1e-8


@dataclass
class Batch:
    """Experience flattened for the update, per population member: member k's rows are
    ``[k, :lengths[k]]`` (one row per transition); rows past a member's length are padding
    (members of a population may gather different numbers of transitions: episode collection)."""

    obs: torch.Tensor  # uint8 (K, M, H, W, C) frames or float32 (K, M, D) vectors
    actions: torch.Tensor  # int64 (K, M) discrete or float32 (K, M, A) continuous
    log_probs: torch.Tensor  # (K, M)
    values: torch.Tensor  # (K, M)
    advantages: torch.Tensor  # (K, M)
    lengths: list[int]  # valid rows of each member

    @property
    def members(self) -> int:
        return len(self.lengths)

    def columns(self) -> tuple[torch.Tensor, ...]:
        return self.obs, self.actions, self.log_probs, self.values, self.advantages

    def member_rows(self, k: int) -> tuple[torch.Tensor, ...]:
        """Member ``k``'s valid rows of every column."""
        return tuple(c[k, : self.lengths[k]] for c in self.columns())

    @classmethod
    def from_member_rows(cls, rows: list[tuple[torch.Tensor, ...]]) -> Batch:
        """Stack every member's columns, zero-padded to the longest member."""
        lengths = [int(r[0].shape[0]) for r in rows]
        if len(set(lengths)) == 1:
            return cls(*(torch.stack(cols) for cols in zip(*rows)), lengths=lengths)
        longest = max(lengths)
        columns = []
        for cols in zip(*rows):
            out = cols[0].new_zeros((len(rows), longest, *cols[0].shape[1:]))
            for k, c in enumerate(cols):
                out[k, : c.shape[0]] = c
            columns.append(out)
        return cls(*columns, lengths=lengths)

    @classmethod
    def concat(cls, batches: list[Batch]) -> Batch:
        """Every member's rows of ``batches``, in order."""
        if len(batches) == 1:
            return batches[0]
        members = batches[0].members
        return cls.from_member_rows([
            tuple(torch.cat(parts) for parts in zip(*(b.member_rows(k) for b in batches))) for k in range(members)
        ])


@dataclass
class Rollout:
    """Vectorised experience of a population shaped (steps, members, envs, ...): a fixed-length
    rollout, or one batch of complete episodes (one per env, each from its reset) with ``active``
    marking the steps that belong to them."""

    obs: torch.Tensor  # uint8 (T, K, N, H, W, C) frames or float32 (T, K, N, D) vectors
    actions: torch.Tensor  # int64 (T, K, N) discrete or float32 (T, K, N, A) continuous
    log_probs: torch.Tensor  # (T, K, N)
    values: torch.Tensor  # (T, K, N)
    rewards: torch.Tensor  # (T, K, N)
    terminated: torch.Tensor  # bool (T, K, N): episode ended, no bootstrap
    truncated: torch.Tensor  # bool (T, K, N): time limit hit, bootstrap from next_values
    next_values: torch.Tensor  # (T, K, N): V of the true next state where truncated, else unused
    last_values: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (K, N) V(s_T)
    active: torch.Tensor | None = None  # bool (T, K, N): rows that are experience; None = all

    def to_batch(self, gamma: float, lam: float) -> Batch:
        """GAE per env column, then each member's experience rows flattened (time-major)."""
        adv = compute_gae(
            self.rewards, self.values, self.terminated, self.truncated, self.next_values, self.last_values, gamma, lam
        )
        columns = (self.obs, self.actions, self.log_probs, self.values, adv)
        members = self.rewards.shape[1]
        if self.active is None:
            return Batch(*(c.transpose(0, 1).flatten(1, 2) for c in columns), lengths=[self.rewards.shape[0] * self.rewards.shape[2]] * members)
        return Batch.from_member_rows([tuple(c[:, k][self.active[:, k]] for c in columns) for k in range(members)])

    @classmethod
    def allocate(
        cls,
        steps: int,
        members: int,
        envs: int,
        obs_shape: tuple[int, ...],
        device: torch.device,
        obs_dtype: torch.dtype = torch.uint8,
        action_dim: int | None = None,
    ) -> Rollout:
        """``action_dim`` None: discrete actions; else continuous actions of that dimension."""
        f = dict(device=device)
        shape = (steps, members, envs)
        actions = (
            torch.zeros(shape, dtype=torch.long, **f) if action_dim is None
            else torch.zeros((*shape, action_dim), **f)
        )  # fmt: skip
        return cls(
            obs=torch.zeros((*shape, *obs_shape), dtype=obs_dtype, **f),
            actions=actions,
            log_probs=torch.zeros(shape, **f),
            values=torch.zeros(shape, **f),
            rewards=torch.zeros(shape, **f),
            terminated=torch.zeros(shape, dtype=torch.bool, **f),
            truncated=torch.zeros(shape, dtype=torch.bool, **f),
            next_values=torch.zeros(shape, **f),
            last_values=torch.zeros((members, envs), **f),
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
    """Generalised advantage estimation over (T, ...) tensors (every trailing index a column).

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
    distribution (:mod:`plasticity_lab.distributions`).

    The minibatch is the last dimension: (B,) inputs give scalars, (K, B) inputs (one minibatch
    per population member) give one value per member, each computed from its own rows only.
    Advantages are normalised within each minibatch (as the reference implementation does).
    """
    adv = (advantages - advantages.mean(-1, keepdim=True)) / (advantages.std(-1, keepdim=True) + ADV_EPS)
    log_probs = dist.log_prob(actions)
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    entropy = dist.entropy().mean(-1)
    values = values.float()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean(-1)
        clipfrac = ((ratio - 1.0).abs() > clip).float().mean(-1)
        value_error = (returns - values).mean(-1)
    return LossParts(
        policy=-surrogate.mean(-1),
        value=(values - returns).pow(2).mean(-1),
        entropy=entropy,
        approx_kl=approx_kl,
        clipfrac=clipfrac,
        value_error=value_error,
    )
