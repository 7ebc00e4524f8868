"""The environment families and what each declares about itself.

Every family is a module with two functions, ``spec(cfg) -> EnvSpec`` and
``make(cfg, num_envs, seed, train, shift) -> VecEnv`` (optionally a third, ``make_population``,
for a population's environments in one program), listed in :data:`FAMILIES` with the
optional dependency extra that provides its simulator. The config validator, the network
builder and the training loop ask the spec (observation shape and type, discrete or continuous
actions, supported shifts, fitting encoders) instead of knowing any family, so a new environment
is a new module and one line here.

This module imports nothing of the toolkit but ``shifts``: the config imports it, never the
reverse. ``cfg`` is an ``environment`` config section (read by attribute).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Family:
    module: str
    """Module implementing ``spec`` and ``make``."""
    needs: tuple[str, ...] = ()
    """Top-level packages the simulator needs (checked before importing ``module``)."""
    extra: str | None = None
    """pip extra of plasticity-lab that installs ``needs``."""


FAMILIES: dict[str, Family] = {
    "procgen": Family("plasticity_lab.envs.procgen", ("procgen",)),
    "gridworld": Family("plasticity_lab.envs.gridworld"),
    "ale": Family("plasticity_lab.envs.ale", ("ale_py", "gymnasium"), extra="ale"),
    "mujoco": Family("plasticity_lab.envs.mujoco", ("mujoco", "gymnasium"), extra="mujoco"),
    "gymnasium": Family("plasticity_lab.envs.gym_vector", ("gymnasium",), extra="gymnasium"),
    "minatar": Family("plasticity_lab.envs.minatar", ("minatar",), extra="minatar"),
}
ENV_NAMES = tuple(FAMILIES)


class MissingDependency(ValueError):
    """An environment family whose simulator is not installed; names the pip extra."""


@dataclass(frozen=True)
class EnvSpec:
    """What the rest of the toolkit may know about an environment (no simulator needed)."""

    obs_shape: tuple[int, ...]
    """(H, W, C) for image observations, (D,) for vectors."""
    obs_dtype: str
    """``uint8`` (images, scaled by 1/255 in the network) or ``float32`` (vectors)."""
    num_actions: int
    """Discrete actions, or dimensions of a continuous action."""
    continuous: bool
    shift_types: tuple[str, ...]
    """Shift types this environment implements."""
    encoders: tuple[str, ...]
    """``model.enc_type`` values that fit the observations; the first is the recommended one."""
    num_tiles: int
    """Length of the ``permute`` shift's permutation (frame tiles or vector entries)."""
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()
    num_levels: int = 0
    """K of a level-based task (the ``window`` / ``expand`` step); 0 when there are no levels."""
    num_games: int = 1
    num_flavours: int = 1
    resumes_mid_episode: bool = True
    """Whether a checkpoint holds the episodes in progress (False: a resume restarts them, so a
    resumed run is reproducible but not its uninterrupted one; README, "Resuming")."""
    info: dict[str, Any] = field(default_factory=dict, compare=False)
    """Family-specific facts for messages (e.g. the resolved game list)."""

    @property
    def is_image(self) -> bool:
        return len(self.obs_shape) == 3


def family(name: str) -> ModuleType:
    """The module of family ``name``; a one-line error naming the extra when it is missing."""
    if name not in FAMILIES:
        raise ValueError(f"unknown environment {name!r} (allowed: {', '.join(FAMILIES)})")
    fam = FAMILIES[name]
    missing = [pkg for pkg in fam.needs if importlib.util.find_spec(pkg) is None]
    if missing:
        how = f"pip install 'plasticity-lab[{fam.extra}]'" if fam.extra else f"pip install {' '.join(missing)}"
        raise MissingDependency(f"environment {name!r} needs {', '.join(missing)}, which is not installed: {how}")
    return importlib.import_module(fam.module)


def env_spec(cfg: Any) -> EnvSpec:
    """The spec of the configured environment (validates the task; may load a ROM or model)."""
    return family(cfg.name).spec(cfg)


def make_env(cfg: Any, num_envs: int, seed: int, train: bool = True, shift: Any = None) -> Any:
    """A vectorised environment of the configured family (see :class:`~plasticity_lab.envs.base.VecEnv`)."""
    if num_envs <= 0:
        raise ValueError(f"num_envs must be positive, got {num_envs}")
    return family(cfg.name).make(cfg, num_envs, seed, train, shift)


def make_population_env(cfg: Any, num_envs: int, seeds: Any, train: bool = True, shifts: Any = None) -> Any:
    """The environments of a population, member k built with ``seeds[k]`` under ``shifts[k]``
    (see :mod:`plasticity_lab.envs.population`)."""
    if num_envs <= 0:
        raise ValueError(f"num_envs must be positive, got {num_envs}")
    shifts = list(shifts) if shifts is not None else [None] * len(seeds)
    module = family(cfg.name)
    if hasattr(module, "make_population"):
        return module.make_population(cfg, num_envs, list(seeds), train, shifts)
    from plasticity_lab.envs.population import EnvList

    return EnvList([module.make(cfg, num_envs, seed, train, shift) for seed, shift in zip(seeds, shifts)])
