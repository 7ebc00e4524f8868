"""The policy's action distribution, behind one interface that PPO, evaluation, diagnostics and
interventions use, so no code outside this module knows whether actions are discrete. It imports
nothing of the toolkit, so the networks, metrics and interventions that build it need not reach
into the agent.

``Categorical`` is the categorical distribution over the policy head's logits, computed with
the actions on the first axis (see its docstring for why it is not ``torch.distributions``');
``DiagGaussian`` wraps ``Independent(Normal)`` with the head's outputs as means and a
state-independent log standard deviation (a parameter of the network, as in PPO's MuJoCo
setting). Sampling takes an explicit ``torch.Generator`` (torch.distributions samples from the
global RNG only), so a run's action draws stay on its own checkpointed stream. The Gaussian's
argument validation is off: it costs time on every minibatch and the inputs are network outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import distributions as D

# Samples per probe frame for the Monte-Carlo total variation of Gaussian policies.
TV_SAMPLES = 64

VECTOR_LOOP = 32
"""Elements per iteration of the widest vectorised loop of torch's CPU kernels (2 vectors of 16
float32 with AVX-512)."""

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


class _ActionsFirst(torch.autograd.Function):
    """(..., A) logits -> (A, rows padded to :data:`VECTOR_LOOP`) contiguous, whose backward
    hands the logits a contiguous gradient in their own layout (a transposed view's would reach
    the policy head's reductions with strides that depend on the number of rows)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, rows: int, actions: int) -> torch.Tensor:
        ctx.batch, ctx.rows = logits.shape[:-1], rows
        out = logits.new_zeros((actions, rows + -rows % VECTOR_LOOP))
        out[:, :rows].view(actions, *ctx.batch).copy_(logits.movedim(-1, 0))
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad[:, : ctx.rows].reshape(grad.shape[0], *ctx.batch).movedim(0, -1).contiguous(), None, None


def _over_actions(t: torch.Tensor) -> torch.Tensor:
    """The sum over the action axis (dim 0), one add per action in order: torch's ``sum(0)`` over
    five or more rows associates differently with the number of columns, so a row's sum would
    depend on how many rows share the call."""
    total = t[0]
    for row in t[1:]:
        total = total + row
    return total


class Categorical:
    """Discrete actions: the head's outputs (..., A) are logits.

    The quantities of ``torch.distributions.Categorical`` (normalised logits, probabilities, its
    entropy and KL conventions), computed with the actions on the first axis: torch's CPU softmax
    and logsumexp over a last axis as short as an action set spend ~80 ns per row (measured:
    softmax of (30, 256, 4) logits 632 us, 30 us over the first axis of the same numbers), and PPO
    takes log-probabilities and entropy on every minibatch and probabilities on every rollout
    step. Every number of a row is computed from that row alone, in an order that does not depend
    on how many rows (population members) share the call: elementwise operations on a buffer of
    whole vector loops and sums over the actions as one add per action (torch's own softmax and
    sums over dim 0 associate differently with the number of columns or threads). Results equal
    torch's up to float rounding.
    """

    def __init__(self, logits: torch.Tensor) -> None:
        logits = logits if logits.dtype == torch.float64 else logits.float()
        *batch, actions = logits.shape
        rows = math.prod(batch)
        # (A, rows) padded to whole vector loops: torch's CPU exp and log may round the last ulp
        # differently in a loop's scalar remainder
        by_action = _ActionsFirst.apply(logits, rows, actions)
        top = by_action.detach().amax(0, keepdim=True)
        top = top.masked_fill(top.abs() == math.inf, 0.0)  # all -inf (or +inf) rows: as logsumexp does
        log_norm = _over_actions((by_action - top).exp()).log() + top[0]
        log_pmf = by_action - log_norm
        self.log_pmf = log_pmf[:, :rows].reshape(actions, *batch)
        self.probs = log_pmf.exp()[:, :rows].reshape(actions, *batch)

    @classmethod
    def _of(cls, log_pmf: torch.Tensor, probs: torch.Tensor) -> Categorical:
        out = cls.__new__(cls)
        out.log_pmf, out.probs = log_pmf, probs
        return out

    @property
    def params(self) -> torch.Tensor:
        """The normalised logits, (..., A)."""
        return self.log_pmf.movedim(0, -1)

    def sample(self, generators: Generators) -> torch.Tensor:
        """Inverse-CDF draws: the first action whose cumulative probability exceeds U[0, 1)
        (the number of cumulative probabilities at or below the draw)."""
        u = _noise(self.probs.shape[1:], generators, self.probs, normal=False)
        cdf = self.probs.double().cumsum(0)
        return (cdf <= u.unsqueeze(0)).sum(0).clamp_(max=self.probs.shape[0] - 1)

    def mode(self) -> torch.Tensor:
        return self.probs.argmax(0)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        if actions.shape != self.log_pmf.shape[1:]:
            raise ValueError(f"Categorical.log_prob: actions of shape {tuple(actions.shape)} "
                             f"for a batch of shape {tuple(self.log_pmf.shape[1:])}")
        return self.log_pmf.gather(0, actions.long().unsqueeze(0)).squeeze(0)

    def entropy(self) -> torch.Tensor:
        """-sum p log p, with log 0 taken as the dtype's lowest finite value (so 0 log 0 = 0), as
        torch.distributions does."""
        return -_over_actions(self.log_pmf.clamp(min=torch.finfo(self.log_pmf.dtype).min) * self.probs)

    def kl_from(self, prev: Categorical) -> torch.Tensor:
        """KL(prev || self) per state, with torch.distributions' conventions: terms where prev has
        probability 0 are 0, terms where only self has probability 0 are infinite."""
        t = prev.probs * (prev.log_pmf - self.log_pmf)
        t = torch.where(self.probs == 0, math.inf, t)
        return _over_actions(torch.where(prev.probs == 0, 0.0, t))

    def total_variation(self, other: Categorical, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact 0.5 * sum_a |p(a) - q(a)| per state."""
        return 0.5 * _over_actions((self.probs.double() - other.probs.double()).abs())

    def detach(self) -> Categorical:
        return Categorical._of(self.log_pmf.detach(), self.probs.detach())


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
