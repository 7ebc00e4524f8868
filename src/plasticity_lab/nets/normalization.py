"""Running observation statistics as part of the network.

Vector observations (MuJoCo, Gymnasium control tasks) are standardised by running mean and
variance before the encoder, as PPO's MuJoCo setting does. Keeping the statistics as buffers of
the network puts them into every checkpoint, ``task_<k>.pt`` and loaded agent, and makes
evaluation, probe sets and interventions see observations exactly as training does. The
statistics change only through :meth:`ObsNormalizer.update`, called by the training loop on the
observations it collects; they are not parameters, so no optimiser or intervention touches them.

Under a ``permute`` shift the environment shows its raw features in another order each round.
The statistics belong to the raw features, not to input positions, so the normaliser keeps them
in raw order and is told the order the environment presents (:meth:`ObsNormalizer.set_order`):
input j is standardised with raw feature ``order[j]``'s statistics, which is normalising before
permuting. The environment knows nothing of the network; the training loop, which holds both,
passes the shift's permutation on.

Written here rather than taken from gymnasium's ``RunningMeanStd`` because the statistics must
be torch buffers of the module (state_dict, device moves) and gymnasium is an optional extra.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

EPS = 1e-8


class RunningMoments(nn.Module):
    """Mean and (population) variance of everything passed to :meth:`update`, in float64,
    merged batch by batch with Chan et al.'s parallel formula."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> None:
        """Merge a batch of samples (leading dimension) into the statistics."""
        batch = batch.to(self.mean.device, torch.float64).reshape(-1, *self.mean.shape)
        n = batch.shape[0]
        if n == 0:
            return
        b_mean, b_var = batch.mean(0), batch.var(0, unbiased=False)
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta.pow(2) * self.count * n / total
        self.mean.add_(delta * n / total)
        self.var.copy_(m2 / total)
        self.count.fill_(total)


class ObsNormalizer(RunningMoments):
    """``clip((x - mean) / sqrt(var + eps), -clip, clip)`` once statistics exist; the identity
    before the first update (and for runs that never update it). Vector observations (D,): the
    statistics are per raw feature and input j is raw feature ``order[j]`` (identity until
    :meth:`set_order`)."""

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0) -> None:
        super().__init__(shape)
        self.clip = clip
        self.register_buffer("order", torch.arange(shape[0]))

    @torch.no_grad()
    def set_order(self, perm: Sequence[int] | None) -> None:
        """Input j now shows raw feature ``perm[j]`` (None: the raw order). In place, so a
        population's stacked buffer sees it."""
        order = torch.arange(len(self.order)) if perm is None else torch.tensor(perm, dtype=torch.long)
        if order.shape != self.order.shape:
            raise ValueError(f"observation order has {len(order)} entries, the observation {len(self.order)}")
        self.order.copy_(order)

    def update(self, batch: torch.Tensor) -> None:
        """Merge a batch of presented observations into their raw features' statistics."""
        batch = batch.reshape(-1, *self.mean.shape)
        super().update(batch[:, torch.argsort(self.order).to(batch.device)])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # A select instead of branching on count.item(): no host sync per forward, and a
        # population's vmapped forward cannot branch on one member's data.
        obs = obs.float()
        mean = self.mean[self.order].to(obs.dtype)
        std = (self.var[self.order] + EPS).sqrt().to(obs.dtype)
        return torch.where(self.count > 0, ((obs - mean) / std).clamp(-self.clip, self.clip), obs)
