"""Which runs train together as a population, and whether a population fits in memory.

A population is the seeds of one condition in one process (DESIGN.md section 8). Runs that
already finished are not re-run; a population's members resume together from the newest
checkpoint epoch they share (its checkpoints are written as one unit:
:func:`~plasticity_lab.experiment.checkpoint.save_population`), and runs with no shared epoch
form one population per epoch. Members compute the same whatever population they are in, so
either way every member continues exactly where it stopped.

Memory grows linearly with the number of members K (README, "Populations"): per member, the
network's parameters with their gradients, AdamW moments and one reference copy (L2 Init,
soft shrink-and-perturb and similar keep theta_0), the epoch's experience twice (the rollout and
the update's batch), a minibatch's activations kept for the backward pass, and the member's
environments; plus one process's fixed cost. :func:`population_memory` estimates it, and a
population over ``experiment.population_memory_gib`` (default: 80% of the device's available
memory) is refused before anything is written.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from plasticity_lab.config import ConfigError, RunConfig
from plasticity_lab.envs import env_spec
from plasticity_lab.experiment.checkpoint import CheckpointError, checkpoint_epochs
from plasticity_lab.experiment.study import RunSpec
from plasticity_lab.nets import build_model

GIB = 1024**3
PROCESS_BYTES = 600 * 1024**2
"""A training process before any member: Python, torch, numpy, the environment libraries."""
ENV_BYTES = {"procgen": 8 * 1024**2, "ale": 4 * 1024**2, "mujoco": 4 * 1024**2, "gymnasium": 1024**2, "gridworld": 64 * 1024, "minatar": 256 * 1024}
"""Memory of one environment copy by family, rounded up from measurements (resident memory of 64
CoinRun copies: 6.2 MB each; 16 Pong copies of ale-py's vector env: 1.8 MB each)."""
PARAM_COPIES = 5
"""Parameter, gradient, two AdamW moments, one reference copy (theta_0 of an anchored method)."""
SAVED_ACTIVATIONS = 3
"""Activation tensors kept per layer output for the backward pass (pre-norm, post-norm, post-activation)."""
EPISODE_BUFFER_FACTOR = 3
"""Episode collection stores buffer_size to about 3 x buffer_size transitions per epoch (reference-protocol.md)."""


@dataclass(frozen=True)
class MemoryEstimate:
    per_member: int
    fixed: int

    def total(self, members: int) -> int:
        return self.fixed + members * self.per_member


def population_memory(cfg: RunConfig) -> MemoryEstimate:
    """Bytes a population of ``cfg``'s runs needs: fixed + K x per member (see module docstring)."""
    spec = env_spec(cfg.environment)
    # shapes only: one frame through a CPU copy of the network, the global RNG left as it was (on
    # the meta device its layers would run torch's Python decompositions, whose first use imports
    # torch's compiler stack: ~1.5 s of every training process's start here); spectral norm adds
    # two vectors per layer, left out
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        model = build_model(cfg.model.model_copy(update={"spectral_norm": "none"}), spec.num_actions, spec.obs_shape, spec.continuous)
        obs = torch.zeros((1, *spec.obs_shape), dtype=torch.uint8 if spec.obs_dtype == "uint8" else torch.float32)
        activation_floats = sum(a.numel() for a in model.activations(obs))
    params = sum(p.numel() for p in model.parameters())
    p = cfg.ppo_trainer
    transitions = p.buffer_size * (EPISODE_BUFFER_FACTOR if p.rollout == "episodes" else 1)
    obs_bytes = math.prod(spec.obs_shape) * (1 if spec.obs_dtype == "uint8" else 4)
    experience = transitions * 2 * (obs_bytes + 8 * 4)  # frames + actions, log-probs, values, rewards ...
    activations = p.batch_size * activation_floats * 4 * SAVED_ACTIVATIONS
    envs = (cfg.environment.env_copies + p.test_episodes) * ENV_BYTES.get(cfg.environment.name, 1024**2)
    return MemoryEstimate(per_member=params * 4 * PARAM_COPIES + experience + activations + envs, fixed=PROCESS_BYTES)


def available_memory(device: torch.device) -> int:
    """Bytes available now: free GPU memory, or the machine's MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_population_fits(cfg: RunConfig, members: int, device: torch.device, where: str) -> None:
    """Refuse (one line, nothing written) a population whose estimate exceeds the limit."""
    estimate = population_memory(cfg)
    limit_gib = cfg.experiment.population_memory_gib
    limit = limit_gib * GIB if limit_gib is not None else 0.8 * available_memory(device)
    need = estimate.total(members)
    if need > limit:
        fits = max(0, int((limit - estimate.fixed) // estimate.per_member))
        source = f"experiment.population_memory_gib = {limit_gib:g}" if limit_gib is not None else f"80% of the {device.type} memory available"
        raise ConfigError(
            f"{where}: a population of {members} members needs about {need / GIB:.1f} GiB "
            f"({estimate.per_member / 1024**2:.0f} MiB per member), over {limit / GIB:.1f} GiB ({source}); "
            f"at most {fits} members fit: set experiment.population_size (or --set experiment.population_size={max(fits, 1)})"
        )


def resume_epochs(run_dir: Path) -> set[int]:
    """The epochs a run could continue from ({0} without a checkpoint; {-1} if one is unreadable:
    its own population, where the full check reports it)."""
    try:
        return set(checkpoint_epochs(Path(run_dir) / "checkpoints")) or {0}
    except CheckpointError:
        return {-1}


def population_groups(specs: list[RunSpec], size: int | None, resume: bool) -> list[list[RunSpec]]:
    """Unfinished runs grouped into populations: per condition, in seed order, split by the epoch
    they resume from, then into chunks of at most ``size`` members. Runs that share a checkpoint
    epoch resume together from the newest one they share (a population killed while committing
    its checkpoints stays one population); the others from their own newest."""
    unfinished: dict[str, list[RunSpec]] = defaultdict(list)
    for spec in specs:
        if not (spec.run_dir / "DONE").exists():
            unfinished[spec.condition].append(spec)
    groups = []
    for members in unfinished.values():
        epochs = [resume_epochs(spec.run_dir) if resume else {0} for spec in members]
        shared = set.intersection(*epochs)
        by_epoch: dict[int, list[RunSpec]] = defaultdict(list)
        for spec, own in zip(members, epochs):
            by_epoch[max(shared) if shared else max(own)].append(spec)
        for group in by_epoch.values():
            step = size or len(group)
            groups += [group[i : i + step] for i in range(0, len(group), step)]
    return groups
