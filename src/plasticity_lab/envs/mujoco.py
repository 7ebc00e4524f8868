"""MuJoCo continuous control (Gymnasium's Ant-v5, HalfCheetah-v5, Hopper-v5, ...) with physics
shifts, on top of :class:`~plasticity_lab.envs.gym_vector.GymVecEnv`.

``friction`` scales the sliding friction of every geom by a new factor drawn at each shift
(log-uniform over ``mujoco.scale_range``, by default loss-of-plasticity's slippery-ant range
[0.02, 2]); MuJoCo takes the larger friction of two touching geoms, so scaling all of them (as
that code's edit of the default geom class does) is what changes the contacts. ``mass`` scales
every body's mass and inertia (a change of density), ``gravity`` the gravity vector; derived
constants are recomputed with ``mj_setConst``. Every sub-environment's model is edited, relative
to the values it was built with, and the episodes restart in the new world.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from plasticity_lab.envs.gym_vector import SHIFTS as GENERIC_SHIFTS
from plasticity_lab.envs.gym_vector import GymSettings, GymVecEnv, gym_spec
from plasticity_lab.envs.registry import EnvSpec
from plasticity_lab.envs.shifts import PHYSICS_SHIFTS, ShiftState

SHIFTS = GENERIC_SHIFTS + PHYSICS_SHIFTS


def spec(cfg: Any) -> EnvSpec:
    settings = GymSettings.from_config(cfg, cfg.mujoco)
    out = gym_spec(settings, SHIFTS)
    if not out.continuous or len(out.obs_shape) != 1:
        raise ValueError(f"task {cfg.task!r} is not a MuJoCo control task (vector observations, continuous actions)")
    return out


def make(cfg: Any, num_envs: int, seed: int, train: bool, shift: ShiftState | None) -> MujocoVecEnv:
    return MujocoVecEnv(GymSettings.from_config(cfg, cfg.mujoco), num_envs, seed, train, shift)


class MujocoVecEnv(GymVecEnv):
    """GymVecEnv whose shift state also sets friction, mass and gravity of every sub-env."""

    shift_types = SHIFTS

    def __init__(self, settings: GymSettings, num_envs: int, seed: int, train: bool = True, shift: ShiftState | None = None) -> None:
        self._originals: list[dict[str, np.ndarray]] | None = None
        super().__init__(settings, num_envs, seed, train, shift)

    def models(self) -> list[tuple[Any, Any]]:
        """(MjModel, MjData) of every sub-environment."""
        out = []
        for sub in self.env.envs:
            base = sub.unwrapped
            if not hasattr(base, "model") or not isinstance(base.model, mujoco.MjModel):
                raise ValueError(f"task {self.settings.task!r} has no MuJoCo model to edit")
            out.append((base.model, base.data))
        return out

    def world_of(self, state: ShiftState) -> tuple[Any, ...]:
        return (state.friction, state.mass, state.gravity)

    def configure_world(self, state: ShiftState) -> None:
        models = self.models()
        if self._originals is None:
            self._originals = [
                {"friction": m.geom_friction[:, 0].copy(), "mass": m.body_mass.copy(),
                 "inertia": m.body_inertia.copy(), "gravity": m.opt.gravity.copy()}
                for m, _ in models
            ]  # fmt: skip
        for (model, data), orig in zip(models, self._originals):
            model.geom_friction[:, 0] = orig["friction"] * state.friction
            model.body_mass[:] = orig["mass"] * state.mass
            model.body_inertia[:] = orig["inertia"] * state.mass
            model.opt.gravity[:] = orig["gravity"] * state.gravity
            mujoco.mj_setConst(model, data)
