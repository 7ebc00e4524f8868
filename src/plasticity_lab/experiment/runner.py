"""One training run: PPO on a shifting ProcGen task, with interventions, metrics and checkpoints.

``Run.train()`` reads top to bottom: shift if due -> collect experience (a fixed-length
vectorised rollout, or the reference's batches of complete episodes) -> PPO update (intervention
hooks at their points) -> periodic hooks -> test evaluation -> metrics row -> checkpoint if due.
Every random draw comes from a generator stored in the checkpoint, so a resumed run continues
exactly where the uninterrupted one would be.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from plasticity_lab.agents.ppo import Batch, Rollout, ppo_loss
from plasticity_lab.agents.reward_scaling import RewardScaler
from plasticity_lab.config import RunConfig
from plasticity_lab.envs import env_spec, evaluate, first_episode_steps, make_env
from plasticity_lab.envs.shifts import ShiftState, initial_shift, next_shift
from plasticity_lab.experiment.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, save_atomic
from plasticity_lab.experiment.logger import BASE_COLUMNS, MetricsCSV, Progress
from plasticity_lab.experiment.probes import DiagnosticsLogger, PlasticityProbe
from plasticity_lab.experiment.tracking import WandbTracker
from plasticity_lab.interventions import LossContext, TrainingPlan, build_interventions, make_optimizer
from plasticity_lab.metrics.diagnostics import layer_names
from plasticity_lab.metrics.plasticity import (
    REDO_TAU,
    dormant_fraction_from_scores,
    dormant_scores_from_mean_abs,
    reference_dead_units,
    weight_change_rms,
    weight_rms,
)
from plasticity_lab.nets import build_model
from plasticity_lab.nets.surgery import applied_weights


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


class Run:
    """A single (condition, seed) run writing into ``run_dir``."""

    def __init__(self, cfg: RunConfig, run_dir: Path, seed: int, device: str = "auto", label: str = "") -> None:
        self.cfg, self.run_dir, self.seed = cfg, Path(run_dir), seed
        self.label = label or run_dir.name
        self.device = pick_device(device)
        self.ppo = cfg.ppo_trainer
        self.env_cfg = cfg.environment
        self.spec = env_spec(self.env_cfg)
        self.shift_k = self.env_cfg.shift_k or self.spec.num_levels
        self.obs_shape, self.num_actions = self.spec.obs_shape, self.spec.num_actions
        self.config_dict = cfg.to_yaml_dict()
        opts = self.env_cfg.options()
        self.normalize_obs = bool(opts and opts.normalize_obs)
        self.reward_scaler = RewardScaler(self.env_cfg.env_copies, self.ppo.gamma, opts.reward_clip) if opts and opts.normalize_reward else None

        seeds = np.random.SeedSequence(seed).generate_state(4)
        torch.manual_seed(int(seeds[0]))
        self.model = build_model(
            cfg.model, self.num_actions, self.obs_shape, self.spec.continuous, opts.obs_clip if opts else 10.0
        ).to(self.device)
        self.interventions = build_interventions(cfg.interventions, self.model, TrainingPlan.from_config(cfg))
        self.optimizer = self.make_optimizer()
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(int(seeds[1]))
        self.shift_rng = np.random.default_rng(int(seeds[2]))
        self.eval_seed = int(seeds[3])
        self.task_index = 0
        self.env = make_env(self.env_cfg, self.env_cfg.env_copies, seed=int(seeds[2]) + 1, train=True)
        # Round 1 as the reference builds it (permute: already scrambled); checkpointed with the run.
        self.shift_state = initial_shift(self.env_cfg.shift_type, self.shift_rng, num_tiles=self.env.num_tiles)
        self.env.apply_shift(self.shift_state)
        self.steps_per_env = self.ppo.buffer_size // self.env_cfg.env_copies
        self.start_epoch = 0
        self.env_steps = 0
        self.wall_offset = 0.0
        self.columns = BASE_COLUMNS + [k for iv in self.interventions for k in iv.stat_keys]
        self.autocast = self.ppo.precision == "bf16"
        self.stop_signal: int | None = None
        self.probe = PlasticityProbe.from_config(cfg, seed) if cfg.diagnostics.enabled else None
        self.current_epoch = 0

    # ------------------------------------------------------------------ optimiser and hooks
    def make_optimizer(self) -> torch.optim.Optimizer:
        defaults = dict(lr=self.ppo.lr, betas=self.ppo.adam_betas, weight_decay=self.ppo.weight_decay)
        return make_optimizer(self.model, self.interventions, defaults)

    def hook_list(self) -> list[str]:
        return [f"{iv.name}:{hook}" for iv in self.interventions for hook in iv.hooks()]

    def amp(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self, next_epoch: int, wall_time: float) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "next_epoch": next_epoch,
            "env_steps": self.env_steps,
            "wall_time": wall_time,
            "task_index": self.task_index,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "interventions": [iv.state_dict() for iv in self.interventions],
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "device_type": self.device.type,
            "gen": self.gen.get_state(),
            "shift_rng": self.shift_rng.bit_generator.state,
            "shift_state": self.shift_state.to_dict(),
            "env": self.env.get_state(),
            "reward_scaler": self.reward_scaler.state_dict() if self.reward_scaler else None,
            "diagnostics": self.probe.state_dict() if self.probe else None,
            "config": self.config_dict,
        }

    def restore(self, state: dict[str, Any]) -> None:
        # Interventions first: one may have changed the network's structure (e.g. injection)
        # and must rebuild it before the weights are loaded.
        for iv, iv_state in zip(self.interventions, state["interventions"]):
            iv.load_state_dict(iv_state)
        self.model.load_state_dict(state["model"])
        self.optimizer = self.make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        # RNG states are CPU byte tensors whatever map_location moved them to
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.gen.set_state(state["gen"].cpu())
        self.shift_rng.bit_generator.state = state["shift_rng"]
        self.shift_state = ShiftState.from_dict(state["shift_state"])
        self.env.set_state(state["env"])
        if self.reward_scaler is not None and state.get("reward_scaler") is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])
            self.reward_scaler.restart_episodes()  # environments that cannot resume restarted theirs
        if self.probe:
            self.probe.load_state_dict(state.get("diagnostics"))
        self.task_index = state["task_index"]
        self.start_epoch = state["next_epoch"]
        self.env_steps = state["env_steps"]
        self.wall_offset = state["wall_time"]

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def save(self, next_epoch: int, wall_time: float) -> None:
        state = self.checkpoint_state(next_epoch, wall_time)
        save_atomic(state, self.ckpt_dir / "latest.pt")
        if next_epoch in self.ppo.shift_points or next_epoch == self.ppo.num_epochs:
            # one model per task (its end), kept for analysis
            save_atomic({"format": FORMAT_VERSION, "model": state["model"], "interventions": state["interventions"],
                         "config": self.config_dict, "next_epoch": next_epoch, "task_index": self.task_index,
                         "shift_state": state["shift_state"]},
                        self.ckpt_dir / f"task_{self.task_index}.pt")

    # ------------------------------------------------------------------ experience
    def policy_sample(self, obs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            with self.amp():
                head, values, _ = self.model(obs)
            dist = self.model.distribution(head)
            actions = dist.sample(generator)
            return actions, dist.log_prob(actions), values.float()

    def collect(self) -> tuple[Batch, list[float], list[int]]:
        """One epoch's experience (``ppo_trainer.rollout``) with the return and length of every
        episode that ended in it."""
        if self.ppo.rollout == "episodes":
            return self.collect_episodes()
        ro, returns, lengths = self.collect_fixed()
        return ro.to_batch(self.ppo.gamma, self.ppo.gae_lambda), returns, lengths

    def scaled_reward(self, res: Any, active: np.ndarray | None = None) -> np.ndarray:
        """The step's training reward, through the reward scaler where the environment has one."""
        if self.reward_scaler is None:
            return res.reward
        return self.reward_scaler(res.reward, res.terminated | res.truncated, active)

    def bootstrap_truncated(self, ro: Rollout, finals: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        """``ro.next_values`` = V(cut-off state) of every (step, envs, frames) in ``finals``."""
        if not finals:
            return
        with torch.no_grad(), self.amp():
            batch = torch.from_numpy(np.concatenate([f[2] for f in finals])).to(self.device)
            boot = self.model(batch)[1].float()
        offset = 0
        for t, idx, _ in finals:
            ro.next_values[t, torch.from_numpy(idx).to(self.device)] = boot[offset : offset + len(idx)]
            offset += len(idx)

    def collect_fixed(self) -> tuple[Rollout, list[float], list[int]]:
        """buffer_size / env_copies steps of every env, carrying episodes across epochs."""
        steps, envs = self.steps_per_env, self.env_cfg.env_copies
        ro = Rollout.allocate(
            steps, envs, self.env.obs_shape, self.device,
            obs_dtype=torch.float32 if self.spec.obs_dtype == "float32" else torch.uint8,
            action_dim=self.num_actions if self.spec.continuous else None,
        )  # fmt: skip
        returns: list[float] = []
        lengths: list[int] = []
        finals: list[tuple[int, np.ndarray, np.ndarray]] = []
        obs = torch.from_numpy(self.env.observe_current()).to(self.device)
        for t in range(steps):
            ro.obs[t] = obs
            actions, log_probs, values = self.policy_sample(obs, self.gen)
            res = self.env.step(actions.cpu().numpy())
            ro.actions[t], ro.log_probs[t], ro.values[t] = actions, log_probs, values
            done = res.terminated | res.truncated
            ro.rewards[t] = torch.from_numpy(self.scaled_reward(res)).to(self.device)
            ro.terminated[t] = torch.from_numpy(res.terminated).to(self.device)
            ro.truncated[t] = torch.from_numpy(res.truncated).to(self.device)
            if done.any():
                returns.extend(res.episode_return[done].tolist())
                lengths.extend(res.episode_length[done].tolist())
            if res.truncated.any():
                idx = np.flatnonzero(res.truncated)
                finals.append((t, idx, res.final_obs[idx]))
            obs = torch.from_numpy(res.obs).to(self.device)
        with torch.no_grad(), self.amp():
            ro.last_values = self.model(obs)[1].float()
        self.bootstrap_truncated(ro, finals)
        self.env_steps += steps * envs
        return ro, returns, lengths

    def collect_episodes(self) -> tuple[Batch, list[float], list[int]]:
        """The reference's collection: batches of complete episodes until at least buffer_size
        transitions are stored (so buffer_size to buffer_size + env_copies * cap - 1)."""
        batches: list[Batch] = []
        returns: list[float] = []
        lengths: list[int] = []
        stored = 0
        while stored < self.ppo.buffer_size:
            ro, batch_returns, batch_lengths = self.collect_episode_batch()
            batches.append(ro.to_batch(self.ppo.gamma, self.ppo.gae_lambda))
            stored += len(batches[-1])
            returns += batch_returns
            lengths += batch_lengths
        self.env_steps += stored
        return Batch.concat(batches), returns, lengths

    def collect_episode_batch(self) -> tuple[Rollout, list[float], list[int]]:
        """One complete episode from every env copy, all started by a reset and run together; an
        env that finished waits for the others. Column i of the rollout is env i's episode,
        ``active`` marks its steps."""
        self.env.restart()
        if self.reward_scaler is not None:
            self.reward_scaler.restart_episodes()
        sampled: list[tuple[torch.Tensor, torch.Tensor]] = []

        def policy(frames: np.ndarray) -> np.ndarray:
            actions, log_probs, values = self.policy_sample(torch.from_numpy(frames).to(self.device), self.gen)
            sampled.append((log_probs, values))
            return actions.cpu().numpy()

        keys = ("obs", "actions", "log_probs", "values", "rewards", "terminated", "truncated", "active")
        cols: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
        returns: list[float] = []
        lengths: list[int] = []
        finals: list[tuple[int, np.ndarray, np.ndarray]] = []
        for t, step in enumerate(first_episode_steps(policy, self.env)):
            res, active = step.result, step.active
            log_probs, values = sampled.pop()
            mask = torch.from_numpy(active).to(self.device)
            full_log_probs = torch.zeros(len(active), device=self.device)
            full_values = torch.zeros(len(active), device=self.device)
            full_log_probs[mask], full_values[mask] = log_probs, values
            row = {
                "obs": torch.from_numpy(step.obs), "actions": torch.from_numpy(step.actions),
                "log_probs": full_log_probs, "values": full_values,
                "rewards": torch.from_numpy(np.where(active, self.scaled_reward(res, active), 0.0).astype(np.float32)),
                "terminated": torch.from_numpy(res.terminated & active),
                "truncated": torch.from_numpy(res.truncated & active), "active": mask,
            }
            for key, value in row.items():
                cols[key].append(value.to(self.device))
            ended = (res.terminated | res.truncated) & active
            returns.extend(res.episode_return[ended].tolist())
            lengths.extend(res.episode_length[ended].tolist())
            cut = res.truncated & active
            if cut.any():
                idx = np.flatnonzero(cut)
                finals.append((t, idx, res.final_obs[idx]))
        stacked = {key: torch.stack(values) for key, values in cols.items()}
        ro = Rollout(
            **stacked, next_values=torch.zeros_like(stacked["values"]),
            last_values=torch.zeros(len(active), device=self.device),  # every episode ends inside the batch
        )
        self.bootstrap_truncated(ro, finals)
        return ro, returns, lengths

    # ------------------------------------------------------------------ learning
    def update(self, batch: Batch) -> dict[str, float]:
        """num_passes passes of shuffled batch_size minibatches; a partial last one is skipped."""
        p = self.ppo
        obs, actions, old_logp, adv = batch.obs, batch.actions, batch.log_probs, batch.advantages
        rets = adv + batch.values
        n = obs.shape[0]
        sums: dict[str, float] = {}
        count = 0
        unit_abs_sum, rows = torch.zeros((), dtype=torch.float64, device=self.device), 0  # for dormant_units
        for _ in range(p.num_passes):
            perm = torch.randperm(n, generator=self.gen, device=self.device)
            for start in range(0, n - p.batch_size + 1, p.batch_size):
                mb = perm[start : start + p.batch_size]
                with self.amp():
                    head, values, features = self.model(obs[mb])
                parts = ppo_loss(self.model.distribution(head), values, actions[mb], old_logp[mb], adv[mb], rets[mb], p.clip_param)
                loss = parts.policy + p.value_coef * parts.value - p.ent_coef * parts.entropy
                ctx = LossContext(obs[mb], parts.policy.detach(), obs, self.gen)
                for iv in self.interventions:
                    extra = iv.loss(self.model, ctx)
                    if extra is not None:
                        loss = loss + extra
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), p.max_grad_norm)
                self.optimizer.step()
                for iv in self.interventions:
                    iv.after_step(self.model, self.optimizer)
                stats = {
                    "p_loss": parts.policy, "v_loss": parts.value, "entropy": parts.entropy,
                    "v_error": parts.value_error, "approx_kl": parts.approx_kl, "clipfrac": parts.clipfrac,
                    "grad_norm": grad_norm,
                }
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                sums["dead_units"] = sums.get("dead_units", 0.0) + reference_dead_units(features, self.cfg.model.activation)
                count += 1
                unit_abs_sum = unit_abs_sum + features.detach().abs().sum(dim=0, dtype=torch.float64)
                rows += features.shape[0]
        out = {k: v / count for k, v in sums.items()}
        # ReDo scores of the trunk units over every minibatch row of the update (no extra forward)
        out["dormant_units"] = dormant_fraction_from_scores(dormant_scores_from_mean_abs(unit_abs_sum / rows), REDO_TAU)
        var = torch.var(rets)
        out["explained_variance"] = float(1 - torch.var(rets - batch.values) / var) if var > 0 else float("nan")
        out["v_estimate"] = float(batch.values.mean())
        periodic_obs = obs[perm[: min(n, 256)]]
        for iv in self.interventions:
            out.update(iv.periodic(self.model, self.optimizer, periodic_obs, self.current_epoch))
        if self.normalize_obs:
            # after the update, so the epoch's actions and its PPO ratios saw the same statistics
            self.model.obs_norm.update(obs)
        return out

    def shift(self) -> None:
        self.shift_state = next_shift(
            self.shift_state, self.env_cfg.shift_type, self.shift_rng, self.shift_k,
            num_tiles=self.env.num_tiles,
            num_actions=self.num_actions,
            num_games=self.spec.num_games,
            num_flavours=self.spec.num_flavours,
            scale_range=self.env_cfg.mujoco.scale_range,
        )
        self.env.apply_shift(self.shift_state)
        if self.reward_scaler is not None:
            self.reward_scaler.restart_episodes()  # a new world (friction, game, ...) restarts episodes
        self.task_index += 1
        for iv in self.interventions:
            iv.at_shift(self.model, self.optimizer)
        if self.ppo.reset_optimizer_at_shift and not any(iv.keeps_optimizer for iv in self.interventions):
            self.optimizer = self.make_optimizer()

    def evaluate(self, epoch: int) -> float:
        """Mean return of test_episodes complete test episodes. Eval mode, so evaluating does
        not advance spectral norm's power iteration (evaluation settings never change training)."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.eval_seed + epoch)

        def policy(frames: np.ndarray) -> np.ndarray:
            return self.policy_sample(torch.from_numpy(frames).to(self.device), gen)[0].cpu().numpy()

        self.model.eval()
        try:
            returns, _ = evaluate(policy, self.env_cfg, self.ppo.test_episodes, self.eval_seed + epoch, self.shift_state)
        finally:
            self.model.train()
        return float(np.mean(returns))

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Collect, update, evaluate if due; returns the epoch's metrics row (minus wall_time)."""
        p = self.ppo
        self.current_epoch = epoch
        t_train, steps_before = time.monotonic(), self.env_steps
        ro, ep_returns, ep_lengths = self.collect()
        before = applied_weights(self.model)
        stats = self.update(ro)
        steps_per_s = (self.env_steps - steps_before) / (time.monotonic() - t_train)  # training only: collect + update
        after = applied_weights(self.model)
        test_r = self.evaluate(epoch) if epoch % p.test_interval == 0 or epoch == p.num_epochs - 1 or epoch + 1 in p.shift_points else None
        return {
            "epoch": epoch, "env_steps": self.env_steps, "task": self.task_index,
            "train_r": float(np.mean(ep_returns)) if ep_returns else None,
            "train_l": float(np.mean(ep_lengths)) if ep_lengths else None,
            "test_r": test_r,
            "weight_m": weight_rms(after),
            "weight_diff": weight_change_rms(before, after),
            "steps_per_s": steps_per_s,
            **stats,
        }

    # ------------------------------------------------------------------ main loop
    def load_resume_state(self) -> dict[str, Any] | None:
        """The checked latest checkpoint, or None when there is none (a fresh start).

        Raises CheckpointError for a corrupt or incompatible file; call it before writing
        anything into the run directory.
        """
        path = self.ckpt_dir / "latest.pt"
        if not path.exists():
            return None
        state = load_checkpoint(path, self.config_dict, RunConfig().to_yaml_dict(), self.device)
        saved = state.get("device_type", "cpu")
        if saved != self.device.type:
            raise CheckpointError(
                f"{path}: written on {saved}, resuming on {self.device.type}: resume with --device {saved}"
            )
        return state

    def train(self, resume_state: dict[str, Any] | None = None) -> str:
        """Run (or continue from ``resume_state``) to the last epoch. Returns "done" or "interrupted"."""
        if resume_state is not None:
            self.restore(resume_state)
        p = self.ppo
        metrics = MetricsCSV(self.run_dir / "metrics.csv", self.columns, self.start_epoch)
        writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.start_epoch)
        progress = Progress(self.label, p.num_epochs, self.start_epoch)
        diagnostics = DiagnosticsLogger(self.run_dir, self.start_epoch, layer_names(self.model)) if self.probe else None
        if self.probe:
            print(f"[{self.label}] {self.probe.plan.describe()}", flush=True)
        tracker = WandbTracker(self.cfg, self.run_dir, self.seed) if self.cfg.logging.wandb.enabled else None
        t0 = time.monotonic() - self.wall_offset
        status = "failed"
        try:
            with StopRequested() as stop:
                for epoch in range(self.start_epoch, p.num_epochs):
                    if epoch in p.shift_points:
                        self.shift()
                    row = self.run_epoch(epoch)
                    row["wall_time"] = time.monotonic() - t0
                    metrics.write(row)
                    scalars = {key: row[key] for key in self.columns[1:] if isinstance(row.get(key), (int, float))
                               and not (isinstance(row[key], float) and math.isnan(row[key]))}
                    for key, value in scalars.items():
                        writer.add_scalar(key, value, epoch)
                    if tracker is not None:
                        tracker.log(scalars, epoch)
                    progress.update(epoch, row)
                    if diagnostics is not None and self.probe.due(epoch):
                        # before the checkpoint, so it holds this probe's churn reference
                        result = self.probe.measure(self.model, self.task_index, self.shift_state, epoch)
                        probed = diagnostics.log(epoch, self.task_index, result.stats, result.spectrum)
                        for key, value in probed.items():
                            writer.add_scalar(key, value, epoch)
                        if tracker is not None:
                            tracker.log(probed, epoch)
                    nxt = epoch + 1
                    stop_signal = stop.signal  # read once: a signal arriving now is seen next epoch
                    if stop_signal is not None or nxt % self.cfg.experiment.save_freq == 0 or nxt in p.shift_points or nxt == p.num_epochs:
                        self.save(nxt, time.monotonic() - t0)
                    if stop_signal is not None and nxt < p.num_epochs:
                        status = "interrupted"
                        self.stop_signal = stop_signal
                        break
                else:
                    status = "done"
        finally:
            if tracker is not None:
                tracker.close(ok=status == "done")
            if diagnostics is not None:
                print(f"[{self.label}] {diagnostics.cost_line(time.monotonic() - t0)}", flush=True)
                diagnostics.close()
            progress.close()
            writer.close()
            metrics.close()
        if status == "done":
            (self.run_dir / "DONE").write_text(f"finished {p.num_epochs} epochs\n")
        return status
