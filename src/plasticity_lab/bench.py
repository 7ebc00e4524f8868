"""`plab bench`: seconds per 1024 training transitions vs. the pure network-compute floor.

The floor is the same network work with no environment, storage or bookkeeping: forward passes
of env_copies-sized batches for the rollout, then forward+backward+AdamW for every minibatch of
the update, on synthetic frames already on the device. The ratio epoch / floor says how much the
toolkit adds on top of the unavoidable compute; both are measured in the same process.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from plasticity_lab.config import load_study
from plasticity_lab.experiment.runner import Run
from plasticity_lab.nets.layers import frozen_conv_weights

WARMUP = 1
BENCH_CONDITIONS = {
    # methods outside the findings study, at settings that act within its 25-epoch rounds (CBP
    # replaces units within a round at this rate and maturity): the benches time and check them
    "cbp": {"interventions.cbp": {"replacement_rate": 1.0e-4, "maturity_threshold": 100}},
    "trac": {"interventions.trac": {}},
    "cchain": {"interventions.cchain": {}},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def network_floor(run: Run, repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds of the pure network compute of one epoch (see module docstring), read from
    ``clock`` (``time.process_time`` for CPU seconds on a loaded machine)."""
    p, envs, spec = run.ppo, run.env_cfg.env_copies, run.spec
    model = run.member.model
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr)
    if spec.obs_dtype == "uint8":
        frames = torch.randint(0, 256, (p.buffer_size, *spec.obs_shape), dtype=torch.uint8, device=run.device)
    else:
        frames = torch.randn((p.buffer_size, *spec.obs_shape), device=run.device)
    if spec.continuous:
        actions = torch.randn((p.buffer_size, spec.num_actions), device=run.device)
    else:
        actions = torch.randint(0, spec.num_actions, (p.buffer_size,), device=run.device)
    times = []
    for _ in range(repeats + WARMUP):
        _sync(run.device)
        t0 = clock()
        with torch.no_grad(), run.amp(), frozen_conv_weights([model]):  # as the loop's collection
            for start in range(0, p.buffer_size, envs):
                model(frames[start : start + envs])
        for _ in range(p.num_passes):
            for start in range(0, p.buffer_size - p.batch_size + 1, p.batch_size):
                with run.amp():
                    head, values, _ = model(frames[start : start + p.batch_size])
                    log_prob = model.distribution(head).log_prob(actions[start : start + p.batch_size])
                    loss = -log_prob.mean() + values.float().pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), p.max_grad_norm)
                opt.step()
        _sync(run.device)
        times.append(clock() - t0)
    return statistics.median(times[WARMUP:])


def make_run(precision: str, device: str, root: Path, config: str = "hyperparams_quick.yaml", rollout: str = "fixed") -> Run:
    study = load_study(config)
    cfg = study.condition(study.conditions[0]).model_copy(deep=True)
    # fixed: the toolkit's fast path, so figures stay comparable (for the ProcGen default exactly
    # 16 x 64 = 1024 transitions per epoch); episodes: the reproduction configs' collection as the
    # config has it (11 copies, whole episodes), timed per 1024 transitions.
    if rollout == "fixed":
        cfg.ppo_trainer.rollout = "fixed"
        if config == "hyperparams_quick.yaml":
            cfg.environment.env_copies = 16
    cfg.ppo_trainer.precision = precision
    cfg.ppo_trainer.test_interval = 10**6  # evaluation is timed separately
    run = Run(cfg, root / f"{precision}-{rollout}", seed=0, device=device, label=f"bench-{precision}-{rollout}")
    run.shift(0)  # apply one shift (e.g. the tile permutation) so it is part of every step
    return run


def time_epochs(run: Run, epochs: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds per 1024 transitions of ``epochs`` epochs after a warm-up (an episode-based
    epoch holds 1024 or more), read from ``clock`` as in :func:`network_floor`."""
    times = []
    for epoch in range(epochs + WARMUP):
        _sync(run.device)
        before = run.member.env_steps
        t0 = clock()
        run.run_epoch(epoch + 1)
        _sync(run.device)
        times.append((clock() - t0) * 1024 / (run.member.env_steps - before))
    return statistics.median(times[WARMUP:])


def time_eval(run: Run, episodes: int) -> float:
    run.ppo.test_episodes = episodes
    t0 = time.perf_counter()
    run.evaluate(0)
    return time.perf_counter() - t0


def run_bench(precision: str = "fp32", epochs: int = 3, device: str = "auto") -> dict[str, float]:
    """Print and return the measured seconds and ratios (fp32 floor is always measured)."""
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = make_run("fp32", device, Path(tmp))
        print(f"device {fp32.device}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
              "study-report protocol: coinrun_100, conv64 h256, 1024 transitions, 16 envs, 3 passes of 64")
        results["floor_fp32_s"] = network_floor(fp32, epochs)
        runs = {"fp32": fp32}
        if precision == "bf16":
            runs["bf16"] = make_run("bf16", device, Path(tmp))
        for name, run in runs.items():
            if name != "fp32":
                results[f"floor_{name}_s"] = network_floor(run, epochs)
            results[f"epoch_{name}_s"] = time_epochs(run, epochs)
            results[f"ratio_{name}_vs_fp32_floor"] = results[f"epoch_{name}_s"] / results["floor_fp32_s"]
            print(f"[{name}] epoch {results[f'epoch_{name}_s']:.3f} s per 1024 transitions; "
                  f"floor {results.get(f'floor_{name}_s', results['floor_fp32_s']):.3f} s; "
                  f"epoch / fp32 floor = {results[f'ratio_{name}_vs_fp32_floor']:.2f}x")
        if precision == "bf16":
            results["ratio_bf16_floor_vs_fp32_floor"] = results["floor_bf16_s"] / results["floor_fp32_s"]
            print(f"bf16 floor / fp32 floor = {results['ratio_bf16_floor_vs_fp32_floor']:.2f}x")
        episodes = make_run("fp32", device, Path(tmp), rollout="episodes")
        runs["episodes"] = episodes
        results["floor_episodes_s"] = network_floor(episodes, epochs)
        results["epoch_episodes_s"] = time_epochs(episodes, epochs)
        results["ratio_episodes_vs_floor"] = results["epoch_episodes_s"] / results["floor_episodes_s"]
        print(f"[fp32, rollout: episodes, {episodes.env_cfg.env_copies} copies] {results['epoch_episodes_s']:.3f} s per 1024 "
              f"transitions; floor ({episodes.env_cfg.env_copies}-frame rollout batches) {results['floor_episodes_s']:.3f} s; "
              f"epoch / floor = {results['ratio_episodes_vs_floor']:.2f}x")
        results["eval_50_episodes_s"] = time_eval(fp32, 50)
        results["eval_fraction_of_epoch"] = results["eval_50_episodes_s"] / results["epoch_fp32_s"]
        print(f"test evaluation of 50 episodes: {results['eval_50_episodes_s']:.3f} s "
              f"= {results['eval_fraction_of_epoch']:.2f} epochs (run every test_interval=10 epochs)")
        for run in runs.values():
            with contextlib.suppress(Exception):
                run.member.env.close()
    return results


def run_diagnostics_bench(device: str = "auto", config: str = "hyperparams_quick.yaml") -> dict[str, float]:
    """Time a training epoch and each diagnostics item of ``config``'s protocol (frame collection,
    probe, churn forward, trainability fit, a task's first fit) in this process, in CPU seconds
    (another job on the core does not count), print each beside the cost model's seconds
    (:mod:`plasticity_lab.experiment.cost_model`) and their ratio to the epoch (the ratios are
    what the budget uses), then the plan of the config."""
    from plasticity_lab.experiment.probes import PlasticityProbe, run_item_costs
    from plasticity_lab.metrics.diagnostics import policy_outputs

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run("fp32", device, Path(tmp), config=config)
        cfg, member = run.cfg, run.member
        costs = run_item_costs(cfg)  # of the fixed-length epochs make_run sets
        run.run_epoch(1)  # warm-up
        t0 = time.process_time()
        for epoch in (2, 3):
            run.run_epoch(epoch)
        out["epoch"] = (time.process_time() - t0) / 2
        probe = PlasticityProbe(run.env_cfg, seed=0, num_epochs=cfg.ppo_trainer.num_epochs,
                                probe_size=cfg.diagnostics.probe_size, trainability_steps=cfg.diagnostics.trainability_steps)
        t0 = time.process_time()
        frames = probe.frames(member.task_index, member.shift_state)
        out["collect"] = time.process_time() - t0
        t0 = time.process_time()
        probe.measure(member.model, member.task_index, member.shift_state, 1)  # not a trainability epoch
        out["probe"] = time.process_time() - t0
        t0 = time.process_time()
        policy_outputs(member.model, frames)
        out["churn"] = time.process_time() - t0
        t0 = time.process_time()
        probe.trainability.measure(member.model, frames, key=0)  # first of a task: targets, fresh net, copy
        first = time.process_time() - t0
        t0 = time.process_time()
        probe.trainability.measure(member.model, frames, key=0)  # later fit of the same task: copy only
        out["fit"] = time.process_time() - t0
        out["reference"] = first - out["fit"]
        member.env.close()
    print(f"{config}: {run.env_cfg.name}, {cfg.model.enc_type} h{cfg.model.h_size}, probe_size "
          f"{cfg.diagnostics.probe_size}; seconds measured [modelled], and in epochs measured [modelled]:")
    for item, seconds in out.items():
        model_s = getattr(costs, item)
        print(f"  {item:9s} {seconds:8.3f} s [{model_s:8.3f}]  {seconds / out['epoch']:8.3f} [{model_s / costs.epoch:8.3f}]"
              f"  measured / modelled in epochs: {seconds / out['epoch'] / (model_s / costs.epoch):.2f}")
    study = load_study(config)
    print(f"plan of {config} as shipped: "
          f"{PlasticityProbe.from_config(study.condition(study.conditions[0]), seed=0).plan.describe()}")
    return out
