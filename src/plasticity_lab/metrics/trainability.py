"""Trainability probe, in the style of Lyle et al. (2022), "Understanding and Preventing Capacity
Loss in Reinforcement Learning", ICLR: can the network still fit a new function?

A copy of the network gets a fresh linear head of ``dim`` outputs in place of its policy and
value heads, and all of its trunk and that head train with Adam for a fixed number of steps to
regress random targets on the probe frames. The final MSE over the whole probe set is compared
with the same budget spent on a freshly initialised network of the same architecture (same
targets, head initialisation and batch order): ``ratio = loss / fresh_loss``, > 1 meaning the
trained network has lost plasticity.

Targets are the outputs of a randomly initialised network with the probed one's encoder type and
width (but ReLU, no norm, so every condition of a study fits the same kind of function) and a
``dim``-output head, standardised per output over the probe set (so predicting the mean scores
1.0). Unlike i.i.d. Gaussian labels they are a function of the frame, so near-identical frames get
near-identical targets and a plastic network can actually fit them in a short budget.

All randomness comes from seeds derived from ``seed`` inside :func:`torch.random.fork_rng`, and
the probe trains a deep copy, so the probed model and the global RNG streams are left untouched.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from plasticity_lab.config import ModelConfig
from plasticity_lab.nets import ActorCritic, build_model


class TrainabilityProbe:
    """Fits random targets with a copy of a network and with a fresh one (see module docstring).

    The targets and the fresh network's loss depend only on the frames, so they are computed
    once per frame set (``key``) and reused: each later probe on the same set costs one fit.
    """

    BATCH_SIZE = 128
    """Default minibatch of the fits."""

    def __init__(
        self,
        steps: int = 200,
        seed: int = 0,
        dim: int = 16,
        lr: float = 1e-3,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        if steps <= 0 or dim <= 0 or batch_size <= 0 or lr <= 0:
            raise ValueError("trainability: steps, dim, batch_size and lr must be positive")
        self.steps, self.dim, self.lr, self.batch_size = steps, dim, lr, batch_size
        self.target_seed, self.fresh_seed, self.head_seed = (
            int(s) for s in np.random.SeedSequence([seed]).generate_state(3)
        )
        self._reference: tuple[object, torch.Tensor, float] | None = None

    def fresh_network(self, like: ActorCritic) -> ActorCritic:
        """The freshly initialised reference network of ``like``'s architecture (seeded: the
        same every call), on the CPU; vector observations are standardised by ``like``'s
        running statistics (as of the frame set's first probe)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.fresh_seed)
            net = build_model(like.cfg, like.num_actions, like.obs_shape, like.continuous)
        if like.obs_norm is not None:  # the same input standardisation as the probed network
            net.obs_norm.load_state_dict(like.obs_norm.state_dict())
            net.obs_norm.clip = like.obs_norm.clip
        return net

    def measure(self, model: ActorCritic, frames: np.ndarray, key: object = None) -> dict[str, float]:
        """``trainability_loss``, ``trainability_fresh_loss`` and ``trainability_ratio`` of
        ``model`` on uint8 ``frames``; ``key`` names the frame set for reuse (None: no reuse)."""
        device = next(model.parameters()).device
        obs = torch.from_numpy(frames).to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if key is None or self._reference is None or self._reference[0] != key:
                targets = self._targets(model, obs)
                self._reference = (key, targets, self._fit(self.fresh_network(model).to(device), obs, targets))
            _, targets, fresh_loss = self._reference
            loss = self._fit(copy.deepcopy(model), obs, targets)
        return {
            "trainability_loss": loss,
            "trainability_fresh_loss": fresh_loss,
            "trainability_ratio": loss / fresh_loss if fresh_loss > 0 else float("nan"),
        }

    @torch.no_grad()
    def _targets(self, like: ActorCritic, obs: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(self.target_seed)
        cfg = ModelConfig(enc_type=like.cfg.enc_type, h_size=like.cfg.h_size)
        net = build_model(cfg, self.dim, like.obs_shape).to(obs.device).eval()
        y = torch.cat([net(chunk)[0] for chunk in obs.split(self.batch_size)])
        std = y.std(dim=0, unbiased=False)
        return (y - y.mean(dim=0)) / torch.where(std > 0, std, torch.ones_like(std))

    def _fit(self, net: nn.Module, obs: torch.Tensor, targets: torch.Tensor) -> float:
        """Train ``net``'s trunk plus a fresh head on the targets; final MSE on all frames."""
        torch.manual_seed(self.head_seed)
        head = nn.Linear(net.feature_dim, self.dim).to(obs.device)
        order = torch.randperm(len(obs)).to(obs.device)
        net.train()
        params = [p for p in net.blocks.parameters() if p.requires_grad] + list(head.parameters())
        optimizer = torch.optim.Adam(params, lr=self.lr)
        for step in range(self.steps):
            start = (step * self.batch_size) % len(obs)
            idx = order[start : start + self.batch_size]
            loss = nn.functional.mse_loss(head(net.trunk(obs[idx])), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            sq_err = sum(
                float((head(net.trunk(chunk)) - y).pow(2).sum())
                for chunk, y in zip(obs.split(self.batch_size), targets.split(self.batch_size))
            )
        return sq_err / targets.numel()
