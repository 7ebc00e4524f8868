"""Modelled seconds of a training epoch and of each diagnostics item, from the config alone.

The diagnostics budget (:func:`plasticity_lab.experiment.probes.plan_diagnostics`) compares what
the probes cost with what training costs. Both depend on the environment family as much as on the
network: an ALE copy takes ~0.3 s to create and ~1 ms per step, a gridworld copy microseconds, so
a probe set of random-action frames can cost 20 training epochs on the ALE CPU config and a
fraction of one on ProcGen. The model therefore prices each part in seconds on a reference
machine: network compute from the network's own shape (multiply-accumulates, activation elements,
the sizes of the matrices whose singular values a probe computes), fixed per-call overheads, and
per-family costs of creating and stepping one environment copy (:data:`ENV_COSTS`).

The constants were measured in CPU seconds with ``plab bench --config X.yaml`` (each item beside
the model) on the project's machine (2 CPU cores with AVX-512, torch on one thread) and checked
against whole runs with ``bench/bench_diagnostics_cost.py`` (BENCHMARKS.md, "Diagnostics overhead").
Absolute seconds vary with the machine and its load; the budget only uses ratios of modelled
seconds, which hold as long as the machine's network speed and environment speed keep their
proportion (on a GPU the network parts shrink and the environment parts do not: not modelled).

Everything here is a pure function of the config (never of wall-clock time), so a resumed run
gets the same plan as the uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from plasticity_lab.config import RunConfig
from plasticity_lab.envs import env_spec
from plasticity_lab.nets import build_model

MAC_S = 35e-12
"""Seconds per multiply-accumulate of a batched forward pass."""
TRAIN_MACS = 3.0
"""Forward + backward of a frame, in forward passes."""
FORWARD_CALL_S = 1e-4
"""Fixed cost of one forward call (a probe chunk, a batch of rollout observations)."""
ROLLOUT_STEP_S = 1e-3
"""Per batched rollout step besides the environment and the network: sampling, storage, copies."""
UPDATE_STEP_S = 4.6e-3
"""Per PPO minibatch besides its network compute: loss terms, clipping, AdamW, statistics."""
FIT_STEP_S = 2e-3
"""Per trainability-fit step besides its network compute (Adam on a plain MSE)."""
ACTIVATION_S = 1.5e-8
"""Per activation element of a probe frame: the per-unit activity and dormancy accumulators."""
SVD_S = 2.5e-10
"""Per ``rows x cols^2`` of a float64 singular-value decomposition (rows >= cols)."""
PROBE_FIXED_S = 0.01
"""Per probe: per-layer statistics, head matrices, result assembly."""
PROBE_CHUNK = 256
"""Frames per forward call of a probe (:class:`~plasticity_lab.experiment.probes.PlasticityProbe`)."""
EPISODE_OVERSHOOT = 1.5
"""Transitions of an epoch of ``rollout: episodes`` per ``buffer_size`` (it collects complete
episodes until at least buffer_size; 1.0-2.2x measured on CoinRun, BENCHMARKS.md)."""


@dataclass(frozen=True)
class EnvCost:
    """Seconds to step one environment copy once (random actions) and to create one copy."""

    step: float
    make: float


ENV_COSTS: dict[str, EnvCost] = {
    "gridworld": EnvCost(step=4e-6, make=1e-5),  # numpy, vectorised over copies
    "procgen": EnvCost(step=1.35e-4, make=1e-3),  # C++, vectorised
    "ale": EnvCost(step=8e-4, make=0.27),  # frame skip 4 + preprocessing; ROM load per copy
    "mujoco": EnvCost(step=5e-4, make=5e-3),  # Ant: physics + Gymnasium wrappers per copy
    "gymnasium": EnvCost(step=5e-4, make=5e-3),  # any task: priced like MuJoCo (classic control is cheaper)
    "minatar": EnvCost(step=1e-5, make=1e-4),  # pure Python; Breakout 9 us, Space Invaders 12 us (random actions)
}
"""Per-family environment costs (measured with ``plab bench --config``; random actions)."""

EVAL_EPISODE_STEPS: dict[str, int] = {
    "procgen": 1000,  # ProcGen's own time limit: an untrained or shifted agent's longest episode reaches it
    "ale": 5000,  # a few thousand agent steps (frame skip 4) for the longest of a test batch
    "mujoco": 1000,  # the registered limit of the MuJoCo tasks
    "gymnasium": 500,  # CartPole-v1's limit; other tasks' differ
    "minatar": 300,  # permuted Breakout: the longest of 50 test episodes, 100-300 steps (results/minatar_study)
}
"""Agent steps of an evaluation in families whose episodes have no length in the config: the
longest of a test batch's first episodes (an evaluation steps every copy until all have ended).
The gridworld's is its ``episode_steps``; a configured cap bounds the others."""


@dataclass(frozen=True)
class NetworkShape:
    """What a network's compute scales with, per frame (from one forward pass on one frame)."""

    macs: float
    """Multiply-accumulates of a forward pass (blocks and heads)."""
    activations: int
    """Elements of all blocks' activations."""
    svd_work: float
    """Sum of ``cols^2`` over a probe's feature decompositions, one per layer for its three rank
    measures and the spectrum (times the frame count: their cost)."""
    weight_svd_work: float
    """Sum of ``rows x cols^2`` over the weight matrices a probe decomposes (stable ranks)."""

    @classmethod
    def of(cls, cfg: RunConfig) -> NetworkShape:
        """The shape of ``cfg``'s network (built on the CPU under a forked RNG, so the run's
        random streams are untouched)."""
        spec = env_spec(cfg.environment)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model = build_model(cfg.model, spec.num_actions, spec.obs_shape, spec.continuous)
            dtype = torch.uint8 if spec.obs_dtype == "uint8" else torch.float32
            acts = model.activations(torch.zeros((1, *spec.obs_shape), dtype=dtype))
        # (out units, inputs per output) of each block's affine map; a block's activation has
        # out_units x positions elements (x2 after a concatenating activation such as CReLU)
        matrices = [(b.out_units, math.prod(b.layer.weight.shape[1:])) for b in model.blocks]
        positions = [a[0, 0].numel() for a in acts]
        heads = model.feature_dim * (spec.num_actions + 1)
        macs = heads + sum(units * inputs * pos for (units, inputs), pos in zip(matrices, positions))
        widths = [a.shape[1] for a in acts]
        matrices += [(spec.num_actions, model.feature_dim), (1, model.feature_dim)]
        return cls(
            macs=float(macs),
            activations=sum(a.numel() for a in acts),
            svd_work=float(sum(w * w for w in widths)),
            weight_svd_work=float(sum(max(r, c) * min(r, c) ** 2 for r, c in matrices)),
        )

    def forward(self, frames: int, calls: int) -> float:
        return frames * self.macs * MAC_S + calls * FORWARD_CALL_S

    def train_step(self, batch: int, overhead: float) -> float:
        return batch * self.macs * TRAIN_MACS * MAC_S + overhead


@dataclass(frozen=True)
class ItemCosts:
    """Modelled seconds of one training epoch and of each diagnostics item of a run."""

    epoch: float
    """Collect (environment steps, rollout forwards) + update of one epoch; no evaluation."""
    probe: float
    """One probe: forward with accumulators, feature ranks, weight statistics."""
    collect: float
    """Collecting one task's probe frames (at the task's first probe)."""
    churn: float
    """Forward on the previous task's frames (at a task's first probe after a shift)."""
    fit: float
    """One trainability fit."""
    reference: float
    """Extra at a task's first fit: the fresh network's fit and the targets."""
    matrix_evaluation: float = 0.0
    """One evaluation of the task-return matrix (``evaluation.task_matrix_episodes`` episodes);
    a run has :func:`task_matrix_evaluations` of them."""


def collection_steps(n: int, envs: int, warmup: int, stride: int) -> int:
    """Steps of ``envs`` copies that :func:`~plasticity_lab.experiment.probes.collect_probe_frames`
    takes for ``n`` frames: frames are kept at step ``warmup`` and every ``stride``-th after it."""
    return warmup + stride * (math.ceil(n / envs) - 1) + 1


def evaluation_seconds(cfg: RunConfig, episodes: int, shape: NetworkShape) -> float:
    """Modelled seconds of one evaluation of ``episodes`` test episodes (one environment copy per
    episode, stepped until all have ended: :func:`plasticity_lab.envs.evaluate`)."""
    e = cfg.environment
    env = ENV_COSTS[e.name]
    caps = {"gridworld": e.episode_steps, "minatar": e.minatar.max_episode_steps,
            "ale": math.ceil(e.ale.max_episode_frames / e.ale.frame_skip)}
    options = e.options()
    steps = min(x for x in (EVAL_EPISODE_STEPS.get(e.name), caps.get(e.name),
                            options.max_episode_steps if options else None) if x is not None)
    return episodes * env.make + steps * (ROLLOUT_STEP_S + episodes * env.step) + shape.forward(episodes * steps, steps)


def matrix_episodes(cfg: RunConfig) -> int:
    """Episodes of each task-matrix evaluation: ``evaluation.task_matrix_episodes``, else the
    ordinary evaluation's ``test_episodes``."""
    return cfg.evaluation.task_matrix_episodes or cfg.ppo_trainer.test_episodes


def task_matrix_evaluations(cfg: RunConfig) -> int:
    """Evaluations the task matrix adds to a run: at the end of task i, one per task j <= i, less
    the diagonal when it is the epoch's ordinary evaluation (same episode count); 0 when off."""
    if not cfg.evaluation.task_matrix:
        return 0
    tasks = len(cfg.ppo_trainer.shift_points) + 1
    reused = tasks if matrix_episodes(cfg) == cfg.ppo_trainer.test_episodes else 0
    return tasks * (tasks + 1) // 2 - reused


def item_costs(
    cfg: RunConfig, collect_envs: int, warmup: int, stride: int, fit_batch: int, shape: NetworkShape | None = None
) -> ItemCosts:
    """The modelled seconds of ``cfg``'s epoch and diagnostics items (see the module docstring);
    ``collect_envs`` / ``warmup`` / ``stride``: the probe-frame collection's settings, ``fit_batch``
    the trainability fit's minibatch."""
    shape = shape or NetworkShape.of(cfg)
    p, d, e = cfg.ppo_trainer, cfg.diagnostics, cfg.environment
    env = ENV_COSTS[e.name]
    transitions = p.buffer_size * (EPISODE_OVERSHOOT if p.rollout == "episodes" else 1.0)
    steps = transitions / e.env_copies
    rollout = steps * (ROLLOUT_STEP_S + e.env_copies * env.step) + shape.forward(transitions, math.ceil(steps))
    update = p.num_passes * (transitions // p.batch_size) * shape.train_step(p.batch_size, UPDATE_STEP_S)
    n = d.probe_size
    chunks = math.ceil(n / PROBE_CHUNK)
    probe = (shape.forward(n, chunks) + n * shape.activations * ACTIVATION_S
             + (n * shape.svd_work + shape.weight_svd_work) * SVD_S + PROBE_FIXED_S)
    envs = min(collect_envs, n)
    collect = envs * env.make + collection_steps(n, envs, warmup, stride) * envs * env.step
    fit_chunks = math.ceil(n / fit_batch)
    fit = d.trainability_steps * shape.train_step(fit_batch, FIT_STEP_S) + shape.forward(n, fit_chunks)
    return ItemCosts(
        epoch=rollout + update, probe=probe, collect=collect, churn=shape.forward(n, chunks),
        fit=fit, reference=fit + shape.forward(n, fit_chunks),
        matrix_evaluation=evaluation_seconds(cfg, matrix_episodes(cfg), shape),
    )
