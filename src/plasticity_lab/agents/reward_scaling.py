"""Reward scaling for PPO on continuous control (Engstrom et al. 2020; CleanRL's NormalizeReward).

Each environment keeps a discounted running return ``G = gamma * G * (1 - done) + r``; rewards
are divided by the standard deviation of all returns seen so far and clipped. Only the scale
changes, not the sign or the optimum; reported episode returns stay raw. The statistics and the
per-environment returns are checkpoint state (:meth:`state_dict`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from plasticity_lab.nets.normalization import EPS, RunningMoments


class RewardScaler:
    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0) -> None:
        self.gamma, self.clip = gamma, clip
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.moments = RunningMoments(())

    def __call__(self, reward: np.ndarray, done: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """Scaled rewards of one step; ``done`` (terminated | truncated) restarts each return
        after this step's reward, as the wrapper does. ``active``: the envs whose step is
        experience (episode-based collection); the others leave the statistics alone."""
        rows = slice(None) if active is None else active
        self.returns[rows] = self.returns[rows] * self.gamma + reward[rows]
        self.moments.update(torch.from_numpy(self.returns[rows]))
        scaled = reward / np.sqrt(float(self.moments.var) + EPS)
        self.returns[done] = 0.0
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def restart_episodes(self) -> None:
        """Episodes restarted outside the loop's control (a shift of the world, a resume)."""
        self.returns[:] = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"returns": self.returns.copy(), "moments": {k: v.clone() for k, v in self.moments.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns = np.array(state["returns"], dtype=np.float64)
        self.moments.load_state_dict(state["moments"])
