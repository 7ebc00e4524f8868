"""The policy's action distribution, behind one interface that PPO, evaluation, diagnostics and
interventions use, so no code outside this module knows whether actions are discrete. It imports
nothing of the toolkit, so the networks, metrics and interventions that build it need not reach
into the agent.

``Categorical`` wraps ``torch.distributions.Categorical`` over the policy head's logits;
``DiagGaussian`` wraps ``Independent(Normal)`` with the head's outputs as means and a
state-independent log standard deviation (a parameter of the network, as in PPO's MuJoCo
setting). Sampling takes an explicit ``torch.Generator`` (torch.distributions samples from the
global RNG only), so a run's action draws stay on its own checkpointed stream. Argument
validation is off: it costs time on every minibatch and the inputs are network outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import distributions as D

# Samples per probe frame for the Monte-Carlo total variation of Gaussian policies.
TV_SAMPLES = 64

Generators = torch.Generator | Sequence[torch.Generator]
"""One generator for all rows, or one per index of the leading (population member) dimension, so
member k's draws come from member k's stream only, whatever the other members do."""


def _noise(shape: torch.Size, generators: Generators, like: torch.Tensor, normal: bool) -> torch.Tensor:
    """float64 U[0, 1) (or N(0, 1)) noise of ``shape``, member by member (see :data:`Generators`)."""
    draw = torch.randn if normal else torch.rand
    f = dict(device=like.device, dtype=torch.float64)
    if isinstance(generators, torch.Generator):
        return draw(shape, generator=generators, **f)
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for {shape[0]} population members")
    return torch.stack([draw(shape[1:], generator=g, **f) for g in generators])


class Categorical:
    """Discrete actions: the head's outputs are logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.dist = D.Categorical(logits=logits if logits.dtype == torch.float64 else logits.float(), validate_args=False)

    @property
    def params(self) -> torch.Tensor:
        return self.dist.logits

    def sample(self, generators: Generators) -> torch.Tensor:
        """Inverse-CDF draws: the first action whose cumulative probability exceeds U[0, 1)."""
        probs = self.dist.probs
        u = _noise(probs.shape[:-1], generators, probs, normal=False)
        cdf = probs.double().cumsum(-1)
        return torch.searchsorted(cdf, u.unsqueeze(-1), right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)

    def mode(self) -> torch.Tensor:
        return self.dist.probs.argmax(-1)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return self.dist.log_prob(actions)

    def entropy(self) -> torch.Tensor:
        return self.dist.entropy()

    def kl_from(self, prev: Categorical) -> torch.Tensor:
        """KL(prev || self) per state."""
        return D.kl_divergence(prev.dist, self.dist)

    def total_variation(self, other: Categorical, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact 0.5 * sum_a |p(a) - q(a)| per state."""
        return 0.5 * (self.dist.probs.double() - other.dist.probs.double()).abs().sum(-1)

    def detach(self) -> Categorical:
        return Categorical(self.dist.logits.detach())


class DiagGaussian:
    """Continuous actions: the head's outputs are means, ``log_std`` is one value per dimension."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor) -> None:
        dtype = torch.float64 if mean.dtype == torch.float64 else torch.float32
        mean = mean.to(dtype)
        self.log_std = log_std.to(dtype).expand_as(mean)
        self.dist = D.Independent(D.Normal(mean, self.log_std.exp(), validate_args=False), 1, validate_args=False)

    @property
    def params(self) -> torch.Tensor:
        return torch.cat([self.dist.mean, self.log_std], dim=-1)

    def sample(self, generators: Generators) -> torch.Tensor:
        mean, std = self.dist.mean, self.dist.stddev
        return mean + std * _noise(mean.shape, generators, mean, normal=True).to(mean.dtype)

    def mode(self) -> torch.Tensor:
        return self.dist.mean

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return self.dist.log_prob(actions.float())

    def entropy(self) -> torch.Tensor:
        return self.dist.entropy()

    def kl_from(self, prev: DiagGaussian) -> torch.Tensor:
        """KL(prev || self) per state (closed form, torch.distributions)."""
        return D.kl_divergence(prev.dist, self.dist)

    def total_variation(self, other: DiagGaussian, generator: torch.Generator | None = None) -> torch.Tensor:
        """TV(self, other) per state, Monte Carlo: E_{x~self}[max(0, 1 - q(x)/p(x))].

        No closed form exists for Gaussians of different covariances; the estimate is unbiased,
        in [0, 1], and deterministic for a seeded ``generator``.
        """
        mean, std = self.dist.mean.double(), self.dist.stddev.double()
        noise = torch.randn((TV_SAMPLES, *mean.shape), generator=generator, device=mean.device, dtype=torch.float64)
        x = mean + std * noise
        p = D.Independent(D.Normal(mean, std), 1)
        q = D.Independent(D.Normal(other.dist.mean.double(), other.dist.stddev.double()), 1)
        return (1.0 - (q.log_prob(x) - p.log_prob(x)).exp()).clamp(min=0.0).mean(0)

    def detach(self) -> DiagGaussian:
        return DiagGaussian(self.dist.mean.detach(), self.log_std.detach())


ActionDistribution = Categorical | DiagGaussian


def make_distribution(head_out: torch.Tensor, log_std: torch.Tensor | None) -> ActionDistribution:
    """The distribution of a policy head's output: Gaussian when a log std is given, else
    categorical over logits."""
    return Categorical(head_out) if log_std is None else DiagGaussian(head_out, log_std)
