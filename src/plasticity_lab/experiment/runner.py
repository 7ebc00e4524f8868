"""The training loop: PPO on a shifting task for a population of K members (K = 1: a single run).

``Run.train()`` reads top to bottom: shift if due -> collect experience (a fixed-length
vectorised rollout, or the reference's batches of complete episodes) -> PPO update (intervention
hooks at their points) -> periodic hooks -> test evaluation -> metrics rows -> checkpoints if due.

A population trains the seeds of one condition together (DESIGN.md section 8). Every tensor of
the loop carries a leading member dimension; the network compute of all members is one call
(:class:`~plasticity_lab.nets.population.PopulationNetwork`), the optimiser steps every member at
once (:mod:`plasticity_lab.agents.population_optim`). Everything else is a member's own
(:class:`Member`): its network module, interventions, environments, random streams, shift
sequence, minibatch order, gradient clip, advantage normalisation, evaluation, diagnostics,
checkpoints and run directory. A method that is elementwise or per unit runs once for all acting
members on the stacked state (:mod:`plasticity_lab.interventions.cohort`); the others run per
member on the member's module (docs/populations.md lists them). Either way a member computes
what the single run of its seed computes. Every random draw comes from a member's own generators,
stored in its checkpoint (:mod:`plasticity_lab.streams`), so a resumed run continues exactly
where the uninterrupted one would be.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import scalar

from plasticity_lab.agents.population_optim import (
    MemberOptimizers,
    PopulationAdamW,
    PopulationOptimizer,
    clip_member_grad_norms,
)
from plasticity_lab.agents.ppo import Batch, Rollout, ppo_loss
from plasticity_lab.agents.reward_scaling import RewardScaler
from plasticity_lab.config import RunConfig
from plasticity_lab.envs import env_spec, evaluate, first_episode_steps, make_population_env
from plasticity_lab.envs.population import MemberSubset
from plasticity_lab.envs.shifts import ShiftState, initial_shift, next_shift
from plasticity_lab.experiment.checkpoint import (
    FORMAT_VERSION, CheckpointError, checkpoint_epochs, common_epoch, load_checkpoint, save_atomic, save_population,
)
from plasticity_lab.experiment.logger import BASE_COLUMNS, MetricsCSV, Progress
from plasticity_lab.experiment.cost_model import matrix_episodes
from plasticity_lab.experiment.handover import MIN_REMAINING, Handover
from plasticity_lab.experiment.probes import DiagnosticsLogger, PlasticityProbe, prefetch_probe_frames, task_matrix_estimate
from plasticity_lab.experiment.study import FAILED_NAME, write_atomic
from plasticity_lab.experiment.tracking import WandbTracker
from plasticity_lab.interventions import Intervention, LossContext, TrainingPlan, build_interventions, resolve_optimizer
from plasticity_lab.interventions.cohort import Cohort
from plasticity_lab.streams import Streams
from plasticity_lab.metrics.continual import TASK_MATRIX_COLUMNS, TASK_MATRIX_SECONDS
from plasticity_lab.metrics.diagnostics import layer_names
from plasticity_lab.metrics.plasticity import (
    REDO_TAU,
    NonFiniteInput,
    dormant_fraction_from_scores,
    dormant_scores_from_mean_abs,
    reference_dead_units_per_member,
    weight_change_rms_stacked,
    weight_rms_stacked,
)
from plasticity_lab.nets import ActorCritic, build_model
from plasticity_lab.nets.layers import compute_dtype, frozen_conv_weights
from plasticity_lab.nets.population import PopulationNetwork


TASK_MATRIX_KEY = "task_matrix"
"""Key of a member's metrics row holding its task-matrix rows (task ends only; task_matrix.csv)."""
FAILURE_KEY = "failed"
"""Key of a member's update result that says why the member diverged (and has no metrics)."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine")
    return torch.device(name)


class StopRequested:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the end of the epoch and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequested:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Member:
    """One seed of a population: everything a single run owns besides the shared compute."""

    def __init__(self, run: Run, index: int, seed: int, run_dir: Path, label: str) -> None:
        cfg, device = run.cfg, run.device
        self.index, self.seed, self.run_dir, self.label = index, seed, Path(run_dir), label
        seeds = np.random.SeedSequence(seed).generate_state(4)
        torch.manual_seed(int(seeds[0]))
        self.model: ActorCritic = build_model(
            cfg.model, run.num_actions, run.obs_shape, run.spec.continuous, run.opts.obs_clip if run.opts else 10.0
        ).to(device)
        self.interventions: list[Intervention] = build_interventions(cfg.interventions, self.model, run.plan)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(int(seeds[1]))
        self.shift_rng = np.random.default_rng(int(seeds[2]))
        self.eval_seed = int(seeds[3])
        self.env_seed = int(seeds[2]) + 1
        self.env: Any = None
        """The member's training environments (a view of the population's, set by the run)."""
        # Round 1 as the reference builds it (permute: already scrambled); checkpointed with the run.
        self.shift_state = initial_shift(run.env_cfg.shift_type, self.shift_rng, num_tiles=run.spec.num_tiles)
        self.model.follow_input_order(self.shift_state.tile_perm)  # statistics per raw feature under permute
        self.task_shifts = [self.shift_state]
        """The shift state of every task so far (task i's at index i), for the task matrix."""
        self.reward_scaler = (
            RewardScaler(run.env_cfg.env_copies, run.ppo.gamma, run.opts.reward_clip)
            if run.opts and run.opts.normalize_reward else None
        )  # fmt: skip
        self.probe = PlasticityProbe.from_config(cfg, seed) if cfg.diagnostics.enabled else None
        self.task_index = 0
        self.env_steps = 0
        self.start_epoch = 0
        self.wall_offset = 0.0
        self.streams = Streams.split_from_global(device)
        """The methods' draws (re-initialisations, perturbations): this member's own generators,
        continuing the global RNG's stream where the construction left it."""
        for iv in self.interventions:
            iv.streams = self.streams

    def scaled_reward(self, res: Any, active: np.ndarray | None = None) -> np.ndarray:
        """The step's training reward, through the reward scaler where the environment has one."""
        if self.reward_scaler is None:
            return res.reward
        return self.reward_scaler(res.reward, res.terminated | res.truncated, active)

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"


class Run:
    """A population of runs of one condition, one per seed, trained in lockstep; ``Run(cfg,
    run_dir, seed)`` is a single run (a population of one).

    ``run_dir``, ``seed`` and ``label`` are per member: a list, or a single value for one member.
    """

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path | Sequence[Path],
        seed: int | Sequence[int],
        device: str = "auto",
        label: str | Sequence[str] = "",
    ) -> None:
        single = isinstance(seed, int)
        seeds = [seed] if single else list(seed)
        run_dirs = [Path(run_dir)] if single else [Path(d) for d in run_dir]
        label = label if single or not isinstance(label, str) else [label] * len(seeds)
        labels = [label] if isinstance(label, str) else list(label)
        labels = [lab or d.name for lab, d in zip(labels, run_dirs)]
        if len(run_dirs) != len(seeds) or not seeds:
            raise ValueError("a population needs one run directory per seed")
        self.cfg = cfg
        self.device = pick_device(device)
        self.ppo = cfg.ppo_trainer
        self.env_cfg = cfg.environment
        self.spec = env_spec(self.env_cfg)
        self.shift_k = self.env_cfg.shift_k or self.spec.num_levels
        self.obs_shape, self.num_actions = self.spec.obs_shape, self.spec.num_actions
        self.config_dict = cfg.to_yaml_dict()
        self.opts = self.env_cfg.options()
        self.normalize_obs = bool(self.opts and self.opts.normalize_obs)
        self.plan = TrainingPlan.from_config(cfg)
        self.members = [Member(self, k, seed, d, lab) for k, (seed, d, lab) in enumerate(zip(seeds, run_dirs, labels))]
        self.envs = make_population_env(self.env_cfg, self.env_cfg.env_copies, [m.env_seed for m in self.members], train=True)
        for k, member in enumerate(self.members):
            member.env = self.envs.member(k)
            member.env.apply_shift(member.shift_state)
        self.net = PopulationNetwork([m.model for m in self.members])
        self.optimizer = self.make_optimizer()
        self.steps_per_env = self.ppo.buffer_size // self.env_cfg.env_copies
        self.start_epoch = 0
        self.columns = BASE_COLUMNS + [k for iv in self.members[0].interventions for k in iv.stat_keys]
        self.low_precision = torch.bfloat16 if self.ppo.precision == "bf16" else None
        self.stop_signal: int | None = None
        self.current_epoch = 0
        self.failed: list[tuple[Member, int, str]] = []
        """Members stopped as FAILED: (member, epoch, cause), in the order they failed."""
        self.handed_over: list[Member] = []
        """Members stopped so that another process resumes them (:meth:`hand_over`)."""

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def member(self) -> Member:
        """The only member of a single run."""
        if self.size != 1:
            raise AttributeError("a population of several members has no single member")
        return self.members[0]

    # ------------------------------------------------------------------ optimiser and hooks
    def make_optimizer(self) -> PopulationOptimizer:
        """AdamW over the stacked parameters, or one optimiser per member where a method brings
        its own (built by that member's instance of the method)."""
        defaults = dict(lr=self.ppo.lr, betas=self.ppo.adam_betas, weight_decay=self.ppo.weight_decay)
        provider, settings = resolve_optimizer(self.members[0].interventions, defaults)
        self._views: dict[int, Any] = {}
        self._cohorts: dict[int, Cohort] = {}
        if provider is None:
            return PopulationAdamW(self.net.trainable(), **settings)
        slot = self.members[0].interventions.index(provider)
        return MemberOptimizers(
            [m.model for m in self.members], lambda k, params: self.members[k].interventions[slot].optimizer(params, settings),
            [m.streams.keyed_global if provider.optimizer_draws else contextlib.nullcontext for m in self.members],
        )

    def cohort(self, slot: int, acting: Sequence[int], failing: dict[int, str]) -> Cohort:
        """The members at ``acting`` for the batched hooks of method ``slot`` (their stacked
        state, their instances of the method); built once per set of members, structure and
        optimiser: :meth:`make_optimizer` clears them, and it runs whenever the members
        (:meth:`drop`) or their structure (:meth:`follow_structure`) change."""
        full = self._cohorts.get(slot)
        if full is None:
            full = self._cohorts[slot] = Cohort(
                [m.interventions[slot] for m in self.members], [m.model for m in self.members], self.net.params,
                lambda k: self.optimizer_view(self.members[k]),
                buffers=self.net.buffers, forward=self.net.forward_members,
            )  # fmt: skip
        return full.acting(acting, failing)

    def run_hook(
        self, hook: str, acting: Sequence[int], failing: dict[int, str], what: str, call: Any,
        after_slot: Callable[[], None] | None = None,
    ) -> list[Any]:
        """Hook ``hook`` of every method, in the config's order, for the members at ``acting``
        that are not failing (a member that fails in one method's hook is skipped by the next):
        once for all of them where the method is batched (``call(iv, cohort=...)``), else member
        by member on its module, a non-finite metric failing that member alone (``call(iv,
        member=...)``). ``after_slot`` runs after each method (the shift re-stacks there, so the
        next method acts on what the previous one built). Returns each batched call's result and
        each member call's, in order."""
        out = []
        acting = list(acting)
        for slot, method in enumerate(self.members[0].interventions):
            members = [self.members[k] for k in acting if k not in failing]
            if not members:
                break
            if not method.uses(hook):
                continue
            if method.batched(hook):
                cohort = self.cohort(slot, [m.index for m in members], failing)
                out.append(call(members[0].interventions[slot], cohort=cohort))
            else:
                for member in members:
                    with self.isolated(member, failing, what):
                        out.append(call(member.interventions[slot], member=member))
            if after_slot is not None:
                after_slot()
        return out

    def optimizer_view(self, member: Member) -> Any:
        """What a hook of ``member`` gets as its optimiser (its slice of the population's)."""
        view = self._views.get(member.index)
        if view is None:
            view = self._views[member.index] = self.optimizer.member_view(member.index, member.model)
        return view

    # ------------------------------------------------------------------ isolation
    @contextlib.contextmanager
    def isolated(self, member: Member, failing: dict[int, str], what: str) -> Iterator[None]:
        """Inside, a non-finite value met by a metric (:class:`NonFiniteInput`) fails ``member``
        alone (recorded in ``failing``) instead of stopping every member."""
        try:
            yield
        except NonFiniteInput as err:
            failing.setdefault(member.index, f"non-finite values in {what} ({err})")

    @torch.no_grad()
    def diverged(self, sums: dict[str, torch.Tensor], trainable: list[torch.Tensor], failing: dict[int, str]) -> dict[int, str]:
        """``failing`` plus the members whose update went non-finite: loss, gradient norm or
        parameters (checked once per epoch: a NaN stays inside its member, every computation of
        the update being per member)."""
        checks = (
            ("loss", torch.stack([torch.isfinite(sums[key]) for key in ("p_loss", "v_loss", "entropy")]).all(0)),
            ("gradient norm", torch.isfinite(sums["grad_norm"])),
            # NaN and inf propagate into a sum, and float32 entries summed in float64 cannot
            # overflow: a finite float64 sum per member proves its parameters finite (5x cheaper
            # than isfinite().all() on every entry)
            ("parameters", sum(t.detach().flatten(1).sum(1, dtype=torch.float64) for t in trainable).isfinite()),
        )
        failing = dict(failing)
        for k in range(self.size):
            bad = next((what for what, ok in checks if not bool(ok[k])), None)
            if bad is not None:
                failing.setdefault(k, f"non-finite {bad}")
        return failing

    def drop(self, failing: dict[int, str], epoch: int) -> None:
        """Stop the members in ``failing`` (index -> cause) and go on without them: the others'
        stacked state, optimiser state and environments are carried over as they are, so each
        continues exactly as in a population without the failed ones (DESIGN.md section 8)."""
        for k, cause in sorted(failing.items()):
            self.failed.append((self.members[k], epoch, cause))
        self.continue_with([k for k in range(self.size) if k not in failing])

    def continue_with(self, keep: list[int]) -> None:
        """Go on with the members at ``keep`` only (a failure, a hand-over), each exactly as it
        would have gone on with the others."""
        self.members = [self.members[k] for k in keep]
        if not self.members:
            return
        moved = {(name, k): (name, j) for j, k in enumerate(keep) for name in self.net.params}
        for j, member in enumerate(self.members):
            member.index = j
        self.envs = MemberSubset(self.envs, keep)
        self.net = PopulationNetwork([m.model for m in self.members])
        self._views = {}
        old = self.optimizer
        self.optimizer = self.make_optimizer()
        self.optimizer.carry_over(old, moved)

    def hook_list(self) -> list[str]:
        return [f"{iv.name}:{hook}" for iv in self.members[0].interventions for hook in iv.hooks()]

    def amp(self) -> contextlib.AbstractContextManager:
        """The network's compute precision (``ppo_trainer.precision``) for the loop's forwards."""
        return compute_dtype(self.low_precision)

    def follow_structure(self) -> None:
        """After hooks that may change the networks' structure (injection): re-stack, carrying
        the kept optimiser's state along with its parameters."""
        if not self.net.structure_changed():
            return
        old_names = {(name, k): p for k, m in enumerate(self.members) for name, p in m.model.named_parameters()}
        old_names = {key: p for key, p in old_names.items() if key[0] in self.net.params}
        where = self.net.restack()
        moved = {key: where[p] for key, p in old_names.items() if p in where}
        old = self.optimizer
        self.optimizer = self.make_optimizer()
        self.optimizer.carry_over(old, moved)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self, member: Member, next_epoch: int, wall_time: float) -> dict[str, Any]:
        """Everything member ``member`` needs to continue bit-exactly, as a single run would."""
        streams = member.streams.state_dict()
        return {
            "format": FORMAT_VERSION,
            "next_epoch": next_epoch,
            "env_steps": member.env_steps,
            "wall_time": wall_time,
            "task_index": member.task_index,
            # clones: the module's tensors are views of the whole population's storage
            "model": {k: v.clone() for k, v in member.model.state_dict().items()},
            "optimizer": self.optimizer.member_state_dict(member.index),
            "interventions": [iv.state_dict() for iv in member.interventions],
            "torch_rng": streams["cpu"],
            "cuda_rng": streams["device"],
            "device_type": self.device.type,
            "gen": member.gen.get_state(),
            "shift_rng": member.shift_rng.bit_generator.state,
            "shift_state": member.shift_state.to_dict(),
            "task_shifts": [shift.to_dict() for shift in member.task_shifts],
            "env": member.env.get_state(),
            "reward_scaler": member.reward_scaler.state_dict() if member.reward_scaler else None,
            "diagnostics": member.probe.state_dict() if member.probe else None,
            "config": self.config_dict,
        }

    def restore(self, states: Sequence[dict[str, Any] | None]) -> None:
        """Continue every member from its checkpoint (all at the same epoch)."""
        epochs = {s["next_epoch"] if s is not None else 0 for s in states}
        if len(epochs) > 1:
            raise CheckpointError(f"members of one population must resume at one epoch, got {sorted(epochs)}")
        if not any(s is not None for s in states):
            return
        for member, state in zip(self.members, states):
            # Interventions first: one may have changed the network's structure (e.g. injection)
            # and must rebuild it before the weights are loaded.
            for iv, iv_state in zip(member.interventions, state["interventions"]):
                iv.load_state_dict(iv_state)
        self.follow_structure()
        self.optimizer = self.make_optimizer()
        for member, state in zip(self.members, states):
            member.model.load_state_dict(state["model"])  # in place: into the stacked tensors
            self.optimizer.load_member_state_dict(member.index, state["optimizer"])
            # RNG states are CPU byte tensors whatever map_location moved them to
            member.streams.load_state_dict({"cpu": state["torch_rng"], "device": state["cuda_rng"]})
            member.gen.set_state(state["gen"].cpu())
            member.shift_rng.bit_generator.state = state["shift_rng"]
            member.shift_state = ShiftState.from_dict(state["shift_state"])
            if "task_shifts" in state:
                member.task_shifts = [ShiftState.from_dict(shift) for shift in state["task_shifts"]]
            elif self.cfg.evaluation.task_matrix:
                raise CheckpointError(f"{member.ckpt_dir}: written before the task matrix existed; "
                                      "its earlier tasks' shift states are unknown: start the run anew for evaluation.task_matrix")
            else:
                member.task_shifts = [member.shift_state] * (state["task_index"] + 1)  # not read without the matrix
            member.env.set_state(state["env"])
            if member.reward_scaler is not None and state.get("reward_scaler") is not None:
                member.reward_scaler.load_state_dict(state["reward_scaler"])
                member.reward_scaler.restart_episodes()  # environments that cannot resume restarted theirs
            if member.probe:
                member.probe.load_state_dict(state.get("diagnostics"))
            member.task_index = state["task_index"]
            member.env_steps = state["env_steps"]
            member.wall_offset = state["wall_time"]
        self.start_epoch = epochs.pop()

    def save(self, next_epoch: int, wall_time: float) -> None:
        """Every member's checkpoint, written as one unit (every member at ``next_epoch``)."""
        states = [self.checkpoint_state(member, next_epoch, wall_time) for member in self.members]
        save_population([(member.ckpt_dir, state) for member, state in zip(self.members, states)])
        if next_epoch in self.ppo.shift_points or next_epoch == self.ppo.num_epochs:
            for member, state in zip(self.members, states):
                # one model per task (its end), kept for analysis
                save_atomic({"format": FORMAT_VERSION, "model": state["model"], "interventions": state["interventions"],
                             "config": self.config_dict, "next_epoch": next_epoch, "task_index": member.task_index,
                             "shift_state": state["shift_state"]},
                            member.ckpt_dir / f"task_{member.task_index}.pt")

    # ------------------------------------------------------------------ experience
    def policy_sample(
        self, obs: torch.Tensor, generators: Sequence[torch.Generator], needed: np.ndarray | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Actions, their log-probabilities and the values of ``obs`` (K, N, ...), member k's
        actions drawn from ``generators[k]`` (one draw per row, ``needed`` or not, so a member's
        stream does not depend on how it is computed)."""
        with torch.no_grad():
            with self.amp():
                head, values, _ = self.net(obs, None if needed is None else torch.from_numpy(needed).to(self.device))
            dist = self.net.distribution(head)
            actions = dist.sample(generators)
            return actions, dist.log_prob(actions), values.float()

    def values_of(self, obs: torch.Tensor, needed: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad(), self.amp():
            return self.net(obs, needed)[1].float()

    def collect(self) -> tuple[Batch, list[list[float]], list[list[int]]]:
        """One epoch's experience (``ppo_trainer.rollout``) with the return and length of every
        episode that ended in it, per member."""
        with frozen_conv_weights(m.model for m in self.members):  # no weight changes while collecting
            if self.ppo.rollout == "episodes":
                return self.collect_episodes()
            ro, returns, lengths = self.collect_fixed()
        return ro.to_batch(self.ppo.gamma, self.ppo.gae_lambda), returns, lengths

    def bootstrap_truncated(
        self, next_values: torch.Tensor, finals: list[list[tuple[int, np.ndarray, np.ndarray]]], members: Sequence[int] | None = None
    ) -> None:
        """``next_values[t, j, envs]`` = V(cut-off frames) for every (t, envs, frames) in
        ``finals[j]``, where column j is member ``members[j]`` (default: column k is member k).
        The cut-off frames of every member, zero-padded to the longest list, go through one
        population forward that computes only the members with cut-off frames."""
        members = list(range(self.size)) if members is None else list(members)
        counts = [sum(len(idx) for _, idx, _ in fin) for fin in finals]
        if not any(counts):
            return
        frames = np.zeros((self.size, max(counts), *self.members[0].env.obs_shape), dtype=self._obs_numpy_dtype())
        needed = np.zeros((self.size, max(counts)), dtype=bool)  # padding rows and members are not computed
        for j, k in enumerate(members):
            if counts[j]:
                frames[k, : counts[j]] = np.concatenate([f for _, _, f in finals[j]])
                needed[k, : counts[j]] = True
        boot = self.values_of(torch.from_numpy(frames).to(self.device), torch.from_numpy(needed).to(self.device))
        for j, k in enumerate(members):
            offset = 0
            for t, idx, _ in finals[j]:
                next_values[t, j, torch.from_numpy(idx).to(self.device)] = boot[k, offset : offset + len(idx)]
                offset += len(idx)

    def _obs_numpy_dtype(self) -> type:
        return np.float32 if self.spec.obs_dtype == "float32" else np.uint8

    def _obs_dtype(self) -> torch.dtype:
        return torch.float32 if self.spec.obs_dtype == "float32" else torch.uint8

    def collect_fixed(self) -> tuple[Rollout, list[list[float]], list[list[int]]]:
        """buffer_size / env_copies steps of every env of every member, carrying episodes across epochs."""
        steps, envs, K = self.steps_per_env, self.env_cfg.env_copies, self.size
        ro = Rollout.allocate(
            steps, K, envs, self.members[0].env.obs_shape, self.device, obs_dtype=self._obs_dtype(),
            action_dim=self.num_actions if self.spec.continuous else None,
        )  # fmt: skip
        returns: list[list[float]] = [[] for _ in range(K)]
        lengths: list[list[int]] = [[] for _ in range(K)]
        finals: list[list[tuple[int, np.ndarray, np.ndarray]]] = [[] for _ in range(K)]
        generators = [m.gen for m in self.members]
        scaled = any(m.reward_scaler is not None for m in self.members)
        obs = torch.from_numpy(self.envs.observe_current()).to(self.device)
        for t in range(steps):
            ro.obs[t] = obs
            actions, log_probs, values = self.policy_sample(obs, generators)
            ro.actions[t], ro.log_probs[t], ro.values[t] = actions, log_probs, values
            results = self.envs.step(actions.cpu().numpy())
            # (K, envs) arrays of every member at once; only members with ended episodes are visited
            terminated = results.terminated.astype(bool, copy=False)
            truncated = results.truncated.astype(bool, copy=False)
            done = terminated | truncated
            for k in np.flatnonzero(done.any(axis=1)):
                ended = done[k]
                returns[k].extend(results.episode_return[k][ended].tolist())
                lengths[k].extend(results.episode_length[k][ended].tolist())
                if truncated[k].any():
                    idx = np.flatnonzero(truncated[k])
                    finals[k].append((t, idx, results.final_obs[k][idx]))
            if scaled:
                rewards = np.stack([member.scaled_reward(res) for member, res in zip(self.members, results)])
            else:
                rewards = results.reward
            ro.rewards[t] = torch.from_numpy(rewards.astype(np.float32, copy=False)).to(self.device)
            ro.terminated[t] = torch.from_numpy(terminated).to(self.device)
            ro.truncated[t] = torch.from_numpy(truncated).to(self.device)
            obs = torch.from_numpy(results.obs.astype(self._obs_numpy_dtype(), copy=False)).to(self.device)
        ro.last_values = self.values_of(obs)
        self.bootstrap_truncated(ro.next_values, finals)
        for member in self.members:
            member.env_steps += steps * envs
        return ro, returns, lengths

    def collect_episodes(self) -> tuple[Batch, list[list[float]], list[list[int]]]:
        """The reference's collection: batches of complete episodes until at least buffer_size
        transitions are stored (so buffer_size to buffer_size + env_copies * cap - 1), per member;
        a member that has enough waits (its environments are not stepped) for the others."""
        K = self.size
        rows: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in range(K)]
        returns: list[list[float]] = [[] for _ in range(K)]
        lengths: list[list[int]] = [[] for _ in range(K)]
        stored = [0] * K
        while True:
            needing = [k for k in range(K) if stored[k] < self.ppo.buffer_size]
            if not needing:
                break
            ro, batch_returns, batch_lengths = self.collect_episode_batch(needing)
            batch = ro.to_batch(self.ppo.gamma, self.ppo.gae_lambda)
            for j, k in enumerate(needing):
                rows[k].append(batch.member_rows(j))
                stored[k] += batch.lengths[j]
                returns[k] += batch_returns[j]
                lengths[k] += batch_lengths[j]
        for k, member in enumerate(self.members):
            member.env_steps += stored[k]
        per_member = [tuple(torch.cat(parts) for parts in zip(*member_rows)) for member_rows in rows]
        return Batch.from_member_rows(per_member), returns, lengths

    def collect_episode_batch(self, members: list[int]) -> tuple[Rollout, list[list[float]], list[list[int]]]:
        """One complete episode from every env copy of each member in ``members``, all started by
        a reset and run together; an env that finished waits for the others. Column j of the
        rollout is member ``members[j]``, env i of it that env's episode, ``active`` marks its
        steps. Only members with an env still in its episode are computed and draw actions (one
        draw per env row of theirs, finished envs included, as the single run draws), so every
        member's stream depends on its own episodes only."""
        chosen = [self.members[k] for k in members]
        self.envs.restart(members)
        for member in chosen:
            if member.reward_scaler is not None:
                member.reward_scaler.restart_episodes()
        sampled: list[tuple[torch.Tensor, torch.Tensor]] = []
        obs_full = np.zeros((self.size, self.env_cfg.env_copies, *self.members[0].env.obs_shape), dtype=self._obs_numpy_dtype())
        needed = np.zeros(obs_full.shape[:2], dtype=bool)
        every = torch.tensor(members, device=self.device)

        def policy(frames: np.ndarray, active: np.ndarray) -> np.ndarray:
            obs_full[members], needed[members] = frames, active
            drawing = [j for j in range(len(members)) if active[j].any()]
            index = torch.tensor([members[j] for j in drawing], device=self.device)
            with torch.no_grad():
                with self.amp():
                    head, values, _ = self.net(torch.from_numpy(obs_full).to(self.device), torch.from_numpy(needed).to(self.device))
                dist = self.net.distribution(head.index_select(0, index), index)
                drawn = dist.sample([chosen[j].gen for j in drawing])
                rows = torch.tensor(drawing, device=self.device)
                actions = drawn.new_zeros((len(members), *drawn.shape[1:])).index_copy(0, rows, drawn)
                log_probs = torch.zeros(actions.shape[:2], device=self.device).index_copy(0, rows, dist.log_prob(drawn).float())
                sampled.append((log_probs, values.index_select(0, every).float()))
            return actions.cpu().numpy()

        keys = ("obs", "actions", "log_probs", "values", "rewards", "terminated", "truncated", "active")
        cols: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
        n = len(chosen)
        returns: list[list[float]] = [[] for _ in range(n)]
        lengths: list[list[int]] = [[] for _ in range(n)]
        finals: list[list[tuple[int, np.ndarray, np.ndarray]]] = [[] for _ in range(n)]
        for t, step in enumerate(first_episode_steps(policy, MemberSubset(self.envs, members))):
            log_probs, values = sampled.pop()
            active = step.active
            rewards = np.zeros(active.shape, dtype=np.float32)
            terminated = np.zeros(active.shape, dtype=bool)
            truncated = np.zeros(active.shape, dtype=bool)
            for j, (member, res) in enumerate(zip(chosen, step.results)):
                if res is None:
                    continue
                rewards[j] = np.where(active[j], member.scaled_reward(res, active[j]), 0.0)
                terminated[j], truncated[j] = res.terminated & active[j], res.truncated & active[j]
                ended = (res.terminated | res.truncated) & active[j]
                returns[j].extend(res.episode_return[ended].tolist())
                lengths[j].extend(res.episode_length[ended].tolist())
                if truncated[j].any():
                    idx = np.flatnonzero(truncated[j])
                    finals[j].append((t, idx, res.final_obs[idx]))
            mask = torch.from_numpy(active).to(self.device)
            row = {
                "obs": torch.from_numpy(step.obs), "actions": torch.from_numpy(step.actions),
                "log_probs": torch.where(mask, log_probs, 0.0), "values": torch.where(mask, values, 0.0),
                "rewards": torch.from_numpy(rewards), "terminated": torch.from_numpy(terminated),
                "truncated": torch.from_numpy(truncated), "active": mask,
            }
            for key, value in row.items():
                cols[key].append(value.to(self.device))
        stacked = {key: torch.stack(values) for key, values in cols.items()}
        ro = Rollout(
            **stacked, next_values=torch.zeros_like(stacked["values"]),
            last_values=torch.zeros(stacked["values"].shape[1:], device=self.device),  # every episode ends inside the batch
        )
        self.bootstrap_truncated(ro.next_values, finals, members)
        return ro, returns, lengths

    # ------------------------------------------------------------------ learning
    def update(self, batch: Batch) -> list[dict[str, float]]:
        """num_passes passes of shuffled batch_size minibatches per member (a partial last one is
        skipped); members with fewer minibatches (episode collection) wait for the others."""
        p, K, dev = self.ppo, self.size, self.device
        obs, actions, old_logp, adv = batch.obs, batch.actions, batch.log_probs, batch.advantages
        rets = adv + batch.values
        # every member's minibatch order for the whole update, each from its own generator
        orders, last_perms = [], []
        for member, n in zip(self.members, batch.lengths):
            used = n // p.batch_size * p.batch_size
            perms = [torch.randperm(n, generator=member.gen, device=dev) for _ in range(p.num_passes)]
            orders.append(torch.cat([perm[:used] for perm in perms]).view(-1, p.batch_size))
            last_perms.append(perms[-1])
        steps = max(len(o) for o in orders)
        uniform = all(len(o) == steps for o in orders)
        width = obs.shape[1]
        offsets = torch.arange(K, device=dev).unsqueeze(1) * width  # member k's rows in the flattened batch
        flat = [c.flatten(0, 1) for c in (obs, actions, old_logp, adv, rets)]
        stat_keys = ("p_loss", "v_loss", "entropy", "v_error", "approx_kl", "clipfrac", "grad_norm", "dead_units")
        totals = torch.zeros(len(stat_keys), K, dtype=torch.float64, device=dev)  # one row per key: one add per minibatch
        taken = torch.zeros(K, dtype=torch.float64, device=dev)
        unit_abs_sum = None  # for dormant_units
        failing: dict[int, str] = {}  # member index -> why it diverged (its hooks stop running)
        everyone = list(range(K))
        trainable = list(self.net.trainable().values())
        stacked_orders = torch.stack(orders) if uniform else None  # (K, steps, batch_size)
        for i in range(steps):
            if uniform:
                active, mb = None, stacked_orders[:, i]
            else:
                active = torch.tensor([i < len(o) for o in orders], device=dev)
                mb = torch.stack([o[i] if i < len(o) else torch.zeros(p.batch_size, dtype=torch.long, device=dev) for o in orders])
            index = (mb + offsets).flatten()
            mb_obs, mb_actions, mb_logp, mb_adv, mb_rets = (c.index_select(0, index).view(K, p.batch_size, *c.shape[1:]) for c in flat)
            # members without a minibatch this step are padding: not computed (their outputs are 0)
            needed = None if active is None else active.unsqueeze(1).expand(K, p.batch_size)
            with self.amp():
                head, values, features = self.net(mb_obs, needed)
            parts = ppo_loss(self.net.distribution(head), values, mb_actions, mb_logp, mb_adv, mb_rets, p.clip_param)
            member_loss = parts.policy + p.value_coef * parts.value - p.ent_coef * parts.entropy
            weight = torch.ones(K, device=dev) if active is None else active.float()
            loss = (member_loss * weight).sum()
            self.net.zero_grad()
            acting = everyone if active is None else [k for k in everyone if bool(active[k])]

            def context(k: int) -> LossContext:
                return LossContext(mb_obs[k], parts.policy[k].detach(), obs[k, : batch.lengths[k]], self.members[k].gen)

            extras = self.run_hook("loss", acting, failing, "a loss term", lambda iv, cohort=None, member=None: (
                iv.loss_members(cohort, [context(k) for k in cohort.positions]) if cohort is not None
                else iv.loss(member.model, context(member.index))))
            for extra in extras:
                if extra is not None:
                    loss = loss + extra
            loss.backward()
            grad_norm = clip_member_grad_norms(trainable, p.max_grad_norm)
            self.optimizer.step(active)
            self.run_hook("after_step", acting, failing, "a step hook", lambda iv, cohort=None, member=None: (
                iv.after_step_members(cohort) if cohort is not None else iv.after_step(member.model, self.optimizer_view(member))))
            stats = (parts.policy, parts.value, parts.entropy, parts.value_error, parts.approx_kl, parts.clipfrac,
                     grad_norm, reference_dead_units_per_member(features, self.cfg.model.activation))
            totals += torch.stack([value.detach() for value in stats]).double() * weight
            taken += weight
            # each minibatch's float32 sum (relative error ~1e-7, far from moving a unit across ReDo's
            # 2.5% threshold; bf16 features too), accumulated over the update in float64: a third of
            # a float64 pass's cost
            # a ReLU trunk's features are >= 0: their sum is their absolute sum (one pass fewer)
            magnitude = features.detach() if self.cfg.model.activation == "relu" else features.detach().abs()
            abs_sum = magnitude.sum(dim=1, dtype=torch.float32).double() * weight.double().unsqueeze(1)
            unit_abs_sum = abs_sum if unit_abs_sum is None else unit_abs_sum + abs_sum
        sums = dict(zip(stat_keys, totals))
        means = {key: (value / taken).tolist() for key, value in sums.items()}
        failing = self.diverged(sums, trainable, failing)
        outs = [{key: values[k] for key, values in means.items()} for k in everyone]
        for k, member in enumerate(self.members):
            if k in failing:
                continue
            out = outs[k]
            n = batch.lengths[k]
            # a metric meeting non-finite values fails this member alone
            with self.isolated(member, failing, "the epoch's statistics"):
                # ReDo scores of the trunk units over every minibatch row of the update (no extra forward)
                out["dormant_units"] = dormant_fraction_from_scores(
                    dormant_scores_from_mean_abs(unit_abs_sum[k] / (float(taken[k]) * p.batch_size)), REDO_TAU)
                rets_k, values_k = rets[k, :n], batch.values[k, :n]
                var = torch.var(rets_k)
                out["explained_variance"] = float(1 - torch.var(rets_k - values_k) / var) if var > 0 else float("nan")
                out["v_estimate"] = float(values_k.mean())
        recent = [obs[k, : batch.lengths[k]][last_perms[k][: min(batch.lengths[k], 256)]] for k in everyone]

        def periodic(iv: Intervention, cohort: Cohort | None = None, member: Member | None = None) -> None:
            if cohort is not None:
                stats = iv.periodic_members(cohort, [recent[k] for k in cohort.positions], self.current_epoch)
                for k, values in zip(cohort.positions, stats):
                    outs[k].update(values)
            else:
                outs[member.index].update(iv.periodic(member.model, self.optimizer_view(member), recent[member.index], self.current_epoch))

        self.run_hook("periodic", everyone, failing, "a periodic hook", periodic)
        for k, member in enumerate(self.members):
            if k in failing:
                outs[k] = {FAILURE_KEY: failing[k]}
            elif self.normalize_obs:
                # after the update, so the epoch's actions and its PPO ratios saw the same statistics
                member.model.obs_norm.update(obs[k, : batch.lengths[k]])
        return outs

    def shift(self, epoch: int) -> None:
        """Every member's next task, then the methods' shift hooks (a member whose hook meets
        non-finite values fails alone)."""
        for member in self.members:
            member.shift_state = next_shift(
                member.shift_state, self.env_cfg.shift_type, member.shift_rng, self.shift_k,
                num_tiles=member.env.num_tiles,
                num_actions=self.num_actions,
                num_games=self.spec.num_games,
                num_flavours=self.spec.num_flavours,
                scale_range=self.env_cfg.mujoco.scale_range,
            )
            member.env.apply_shift(member.shift_state)
            member.model.follow_input_order(member.shift_state.tile_perm)
            if member.reward_scaler is not None:
                member.reward_scaler.restart_episodes()  # a new world (friction, game, ...) restarts episodes
            member.task_index += 1
            member.task_shifts.append(member.shift_state)
        failing: dict[int, str] = {}
        self.run_hook("at_shift", range(self.size), failing, "a shift hook", lambda iv, cohort=None, member=None: (
            iv.at_shift_members(cohort) if cohort is not None else iv.at_shift(member.model, self.optimizer_view(member))),
            after_slot=self.follow_structure)
        if failing:
            self.drop(failing, epoch)
            if not self.members:
                return
        keeps = any(iv.keeps_optimizer for iv in self.members[0].interventions)
        if self.ppo.reset_optimizer_at_shift and not keeps:
            self.optimizer = self.make_optimizer()

    def evaluate(self, epoch: int, shifts: Sequence[ShiftState] | None = None, episodes: int | None = None) -> list[float]:
        """Mean return of ``episodes`` (default test_episodes) complete test episodes per member,
        under each member's current shift state or ``shifts`` (an earlier task's, for the task
        matrix; the network's input statistics follow that task's order meanwhile). Eval mode,
        so evaluating does not advance spectral norm's power iteration (evaluation settings
        never change training)."""
        generators = []
        for member in self.members:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(member.eval_seed + epoch)
            generators.append(gen)

        def policy(frames: np.ndarray, active: np.ndarray) -> np.ndarray:
            return self.policy_sample(torch.from_numpy(frames).to(self.device), generators, active)[0].cpu().numpy()

        shifts = list(shifts) if shifts is not None else [m.shift_state for m in self.members]
        self.net.train(False)
        try:
            for member, shift in zip(self.members, shifts):
                member.model.follow_input_order(shift.tile_perm)
            with frozen_conv_weights(m.model for m in self.members):
                returns, _ = evaluate(
                    policy, self.env_cfg, episodes or self.ppo.test_episodes, [m.eval_seed + epoch for m in self.members], shifts,
                )  # fmt: skip
        finally:
            for member in self.members:
                member.model.follow_input_order(member.shift_state.tile_perm)
            self.net.train(True)
        return [float(r) for r in returns.mean(axis=1)]

    def task_matrix(self, epoch: int, test_r: list[float]) -> list[list[dict[str, Any]]]:
        """At the end of task i: each member's return on every task j <= i under task j's own
        shift state, with the seeds of this epoch's ordinary evaluation (R[i][i] is that
        evaluation when the episode counts agree); rows (i, j, epoch, return, episodes,
        eval_seconds) per member."""
        episodes = matrix_episodes(self.cfg)
        i = self.members[0].task_index
        rows: list[list[dict[str, Any]]] = [[] for _ in self.members]
        for j in range(i + 1):
            if j == i and episodes == self.ppo.test_episodes:
                returns, seconds = test_r, 0.0
            else:
                t0 = time.monotonic()
                returns = self.evaluate(epoch, [m.task_shifts[j] for m in self.members], episodes)
                seconds = time.monotonic() - t0
            for k, value in enumerate(returns):
                rows[k].append({"i": i, "j": j, "epoch": epoch, "return": value, "episodes": episodes,
                                TASK_MATRIX_SECONDS: seconds})
        return rows

    def run_epoch(self, epoch: int) -> list[dict[str, Any]]:
        """Collect, update, evaluate if due; returns the metrics row (minus wall_time) of each
        member still training. A member whose update diverged is dropped before the evaluation
        (:meth:`drop`) and has no row. ``steps_per_s`` is a member's transitions over the
        population's training time (collect + update, shared by all members)."""
        p = self.ppo
        self.current_epoch = epoch
        t_train, steps_before = time.monotonic(), [m.env_steps for m in self.members]
        batch, ep_returns, ep_lengths = self.collect()
        before = self.net.applied_weights()
        stats = self.update(batch)
        seconds = time.monotonic() - t_train
        failing = {k: out[FAILURE_KEY] for k, out in enumerate(stats) if FAILURE_KEY in out}
        keep = [k for k in range(self.size) if k not in failing]
        if failing:
            self.drop(failing, epoch)
            if not self.members:
                return []
        after = self.net.applied_weights()
        due = epoch % p.test_interval == 0 or epoch == p.num_epochs - 1 or epoch + 1 in p.shift_points
        test_r = self.evaluate(epoch) if due else [None] * self.size
        task_end = epoch + 1 in p.shift_points or epoch == p.num_epochs - 1
        matrix = self.task_matrix(epoch, test_r) if self.cfg.evaluation.task_matrix and task_end else [None] * self.size
        weight_m = weight_rms_stacked(after)
        if len(keep) < len(before[0]):
            kept = torch.tensor(keep, device=self.device)
            before = [w.index_select(0, kept) for w in before]
        weight_diff = weight_change_rms_stacked(before, after)
        rows = []
        for j, (k, member) in enumerate(zip(keep, self.members)):
            rows.append({
                "epoch": epoch, "env_steps": member.env_steps, "task": member.task_index,
                "train_r": float(np.mean(ep_returns[k])) if ep_returns[k] else None,
                "train_l": float(np.mean(ep_lengths[k])) if ep_lengths[k] else None,
                "test_r": test_r[j],
                "weight_m": weight_m[j],
                "weight_diff": weight_diff[j],
                "steps_per_s": (member.env_steps - steps_before[k]) / seconds,
                TASK_MATRIX_KEY: matrix[j],
                **stats[k],
            })
        return rows

    # ------------------------------------------------------------------ main loop
    def load_resume_state(self) -> list[dict[str, Any] | None]:
        """Every member's checked checkpoint at the newest epoch all members have one (a
        population's checkpoints are one unit, :func:`save_population`), or None for every member
        when none has a checkpoint (a fresh start).

        Raises CheckpointError for a corrupt or incompatible file, or members without a common
        checkpoint epoch; call it before writing anything into the run directories.
        """
        found = [checkpoint_epochs(member.ckpt_dir) for member in self.members]
        if not any(found):
            return [None] * self.size
        epoch = common_epoch(found)
        if epoch is None:
            listing = "; ".join(f"{m.label}: {sorted(e) or 'none'}" for m, e in zip(self.members, found))
            raise CheckpointError(f"members of one population have no checkpoint at a common epoch ({listing}): resume them separately")
        states: list[dict[str, Any] | None] = []
        for files in found:
            path = files[epoch]
            state = load_checkpoint(path, self.config_dict, RunConfig().to_yaml_dict(), self.device)
            saved = state.get("device_type", "cpu")
            if saved != self.device.type:
                raise CheckpointError(
                    f"{path}: written on {saved}, resuming on {self.device.type}: resume with --device {saved}"
                )
            states.append(state)
        return states

    def train(
        self, resume_states: Sequence[dict[str, Any] | None] | None = None, handover: Handover | None = None,
        released: Callable[[list[int]], None] = lambda seeds: None,
    ) -> str:
        """Run (or continue from ``resume_states``, one per member) to the last epoch. Returns
        "done" (every member still training finished; those that diverged are in
        :attr:`failed`, each with a FAILED file; those handed over to another process, see
        ``handover``, in :attr:`handed_over`), "interrupted", or "failed" (no member left).

        ``handover``: where a sweep's idle worker may ask for members (experiment/handover.py);
        ``released(seeds)`` runs when members are handed over, before the answer (the caller
        unlocks their run directories there)."""
        if resume_states is not None:
            self.restore(resume_states)
        p = self.ppo
        logs = {member: MemberLogs(self, member) for member in self.members}
        label = self.members[0].label if self.size == 1 else f"{self.members[0].label} +{self.size - 1} members"
        progress = Progress(label, p.num_epochs, self.start_epoch)
        if self.members[0].probe:
            print(f"[{label}] {self.members[0].probe.plan.describe()}", flush=True)
        elif self.cfg.evaluation.task_matrix:
            print(f"[{label}] {task_matrix_estimate(self.cfg)}", flush=True)
        t0 = time.monotonic() - max(m.wall_offset for m in self.members)
        status = "failed"
        try:
            with StopRequested() as stop:
                for epoch in range(self.start_epoch, p.num_epochs):
                    if epoch in p.shift_points:
                        self.shift(epoch)
                    rows = self.run_epoch(epoch) if self.members else []
                    wall = time.monotonic() - t0
                    self.retire(logs, wall)
                    if not self.members:
                        break
                    for member, row in zip(self.members, rows):
                        row["wall_time"] = wall
                        logs[member].write(epoch, row)
                    progress.update(epoch, rows[0] if self.size == 1 else population_row(rows))
                    self.probe(epoch, logs)
                    self.retire(logs, time.monotonic() - t0)
                    if not self.members:
                        break
                    nxt = epoch + 1
                    stop_signal = stop.signal  # read once: a signal arriving now is seen next epoch
                    asked = handover.asked() if handover is not None and stop_signal is None else None
                    leaving = self.members_to_hand_over(asked, nxt) if asked is not None else []
                    if asked is not None and not leaving:
                        handover.reply([], nxt)  # declined
                    if (stop_signal is not None or nxt % self.cfg.experiment.save_freq == 0 or nxt in p.shift_points
                            or nxt == p.num_epochs or leaving):
                        self.save(nxt, time.monotonic() - t0)
                    if leaving:
                        self.hand_over(leaving, logs, handover, nxt, time.monotonic() - t0, released)
                    if stop_signal is not None and nxt < p.num_epochs:
                        status = "interrupted"
                        self.stop_signal = stop_signal
                        break
                else:
                    status = "done"
        finally:
            for log in logs.values():
                log.close(status == "done", time.monotonic() - t0)
            progress.close()
        if status == "done":
            for member in self.members:
                (member.run_dir / "DONE").write_text(f"finished {p.num_epochs} epochs\n")
        return status

    def members_to_hand_over(self, asked: int, next_epoch: int) -> list[Member]:
        """The last ``asked`` members (all but one at most) for a sweep's idle worker; none where
        moving them would save too little (fewer than :data:`MIN_REMAINING` of the epochs left)
        or change them: environments that restart their episodes on resume (ALE, Gymnasium,
        MuJoCo with fixed-length collection), or a GPU, whose batched kernels round differently
        with the number of members."""
        remaining = self.ppo.num_epochs - next_epoch
        exact = self.spec.resumes_mid_episode or self.ppo.rollout == "episodes"
        if not exact or self.device.type != "cpu" or remaining < max(1.0, MIN_REMAINING * self.ppo.num_epochs):
            return []
        return self.members[max(1, self.size - asked) :]

    def hand_over(
        self, leaving: list[Member], logs: dict[Member, MemberLogs], handover: Handover, next_epoch: int, wall_time: float,
        released: Callable[[list[int]], None],
    ) -> None:
        """Stop ``leaving`` (their checkpoint at ``next_epoch`` is written) so another process
        resumes them; the others go on as if nothing happened."""
        for member in leaving:
            logs.pop(member).close(False, wall_time)
        self.handed_over += leaving
        gone = {m.index for m in leaving}
        self.continue_with([k for k in range(self.size) if k not in gone])
        seeds = [m.seed for m in leaving]
        released(seeds)
        handover.reply(seeds, next_epoch)
        print(f"[{self.members[0].label}] handed seeds {','.join(map(str, seeds))} over at epoch {next_epoch} "
              f"to an idle worker; {self.size} members go on here", flush=True)

    def probe(self, epoch: int, logs: dict[Member, MemberLogs]) -> None:
        """The diagnostics probes due at ``epoch`` (before the checkpoint, so it holds this
        probe's churn reference); a member whose probe meets non-finite values fails alone."""
        failing: dict[int, str] = {}
        due = [member for member in self.members if member.probe is not None and member.probe.due(epoch)]
        prefetch_probe_frames([(member.probe, member.task_index, member.shift_state) for member in due])
        for member in due:
            with self.isolated(member, failing, "a diagnostics probe"):
                result = member.probe.measure(member.model, member.task_index, member.shift_state, epoch)
            if member.index not in failing:
                logs[member].probe(epoch, member.task_index, result)
        if failing:
            self.drop(failing, epoch)

    def retire(self, logs: dict[Member, MemberLogs], wall_time: float) -> None:
        """Close the run directories of members that failed since the last call: logs closed
        unfinished, and a FAILED file with the epoch and the cause (its checkpoint stays the last
        one before the failure, so a retry resumes from there)."""
        for member, epoch, cause in self.failed:
            log = logs.pop(member, None)
            if log is None:
                continue
            log.close(False, wall_time)
            write_atomic(member.run_dir / FAILED_NAME, f"diverged at epoch {epoch}: {cause}\n")
            print(f"[{member.label}] FAILED at epoch {epoch}: {cause}; the other members go on without it", flush=True)


def population_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The progress line of a population: the members' mean of each shown value."""
    out: dict[str, Any] = {}
    for key in ("steps_per_s", "train_r", "test_r"):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = float(np.mean(values)) * (len(rows) if key == "steps_per_s" else 1) if values else None
    return out


class MemberLogs:
    """A member's run-directory outputs: metrics.csv, TensorBoard, diagnostics, W&B."""

    def __init__(self, run: Run, member: Member) -> None:
        self.run, self.member = run, member
        self.columns = run.columns
        self.metrics = MetricsCSV(member.run_dir / "metrics.csv", run.columns, run.start_epoch)
        self.task_matrix = (
            MetricsCSV(member.run_dir / "task_matrix.csv", [*TASK_MATRIX_COLUMNS, TASK_MATRIX_SECONDS], run.start_epoch)
            if run.cfg.evaluation.task_matrix else None
        )  # fmt: skip
        self.matrix_seconds, self.matrix_evaluations = 0.0, 0
        self.writer = SummaryWriter(str(member.run_dir / "tb"), purge_step=run.start_epoch)
        self.diagnostics = (
            DiagnosticsLogger(member.run_dir, run.start_epoch, layer_names(member.model)) if member.probe else None
        )
        self.tracker = WandbTracker(run.cfg, member.run_dir, member.seed) if run.cfg.logging.wandb.enabled else None

    def write(self, epoch: int, row: dict[str, Any]) -> None:
        self.metrics.write(row)
        for cell in row.get(TASK_MATRIX_KEY) or []:
            self.task_matrix.write(cell)
            self.matrix_seconds += cell[TASK_MATRIX_SECONDS]
            self.matrix_evaluations += cell[TASK_MATRIX_SECONDS] > 0
        scalars = {key: row[key] for key in self.columns[1:] if isinstance(row.get(key), (int, float))
                   and not (isinstance(row[key], float) and math.isnan(row[key]))}
        self.scalars(scalars, epoch)
        if self.tracker is not None:
            self.tracker.log(scalars, epoch)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """One TensorBoard event holding every scalar of the step (the same records as one
        ``add_scalar`` per value, which costs a queue round trip each: ~80 us, 20 per epoch, per
        member of a population)."""
        if values:
            merged = Summary(value=[v for key, value in values.items() for v in scalar(key, value).value])
            self.writer._get_file_writer().add_summary(merged, step)

    def probe(self, epoch: int, task: int, result: Any) -> None:
        probed = self.diagnostics.log(epoch, task, result.stats, result.spectrum)
        self.scalars(probed, epoch)
        if self.tracker is not None:
            self.tracker.log(probed, epoch)

    def close(self, done: bool, wall_time: float) -> None:
        if self.tracker is not None:
            self.tracker.close(ok=done)
        if self.diagnostics is not None:
            print(f"[{self.member.label}] {self.diagnostics.cost_line(wall_time)}", flush=True)
            self.diagnostics.close()
        self.writer.close()
        self.metrics.close()
        if self.task_matrix is not None:
            training = wall_time - self.member.wall_offset - self.matrix_seconds  # this session's
            share = f" = {100 * self.matrix_seconds / training:.1f}% on top of {training:.0f} s" if training > 0 else ""
            print(f"[{self.member.label}] task matrix: {self.matrix_evaluations} evaluations took "
                  f"{self.matrix_seconds:.1f} s{share} (this session; the population's time)", flush=True)
            self.task_matrix.close()
