"""Populations: seconds per member-epoch at K = 1, 8, 30, 100 and the network-arithmetic floor.

Protocol: the findings study (configs/gridworld_study.yaml, one condition), every member trained
as in the study (evaluation every 5 epochs, probes every 25, a shift at epoch 25) for ``--epochs``
epochs. For each K the same process measures

* ``run``: wall time of ``Run.train()`` of a population of K members, per member-epoch;
* ``floor``: the pure network arithmetic of one epoch of the same K members, per member-epoch:
  ``steps_per_env`` rollout forwards of (K, env_copies) synthetic frames, then ``num_passes`` x
  ``buffer_size / batch_size`` minibatch forward + backward + per-member clip + AdamW step of
  (K, batch_size) frames (no environment, storage, hooks, evaluation or diagnostics);

and prints run / floor. ``--precision bf16`` autocasts both.

    python bench/bench_population.py [--members 1,8,30,100] [--epochs 30] [--precision fp32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from plasticity_lab.agents.population_optim import PopulationAdamW, clip_member_grad_norms
from plasticity_lab.config import load_study
from plasticity_lab.experiment.runner import Run

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gridworld_study.yaml"


def make_run(condition: str, members: int, epochs: int, precision: str, root: Path) -> Run:
    cfg = load_study(CONFIG).condition(condition).model_copy(deep=True)
    cfg.ppo_trainer.num_epochs = epochs
    cfg.ppo_trainer.shift_points = [p for p in cfg.ppo_trainer.shift_points if p < epochs]
    cfg.ppo_trainer.precision = precision
    dirs = [root / f"{condition}_{members}" / f"seed_{k}" for k in range(members)]
    for d in dirs:
        d.mkdir(parents=True)
    return Run(cfg, dirs, list(range(members)), device="cpu")


def floor_seconds(run: Run, repeats: int = 3) -> float:
    """Median seconds of one epoch's pure network arithmetic for the run's K members."""
    p, K, envs = run.ppo, run.size, run.env_cfg.env_copies
    net = run.net
    opt = PopulationAdamW(net.trainable(), lr=p.lr)
    frames = torch.randint(0, 256, (K, p.buffer_size, *run.obs_shape), dtype=torch.uint8)
    actions = torch.randint(0, run.num_actions, (K, p.buffer_size))
    params = list(net.trainable().values())
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        with torch.no_grad(), run.amp():
            for start in range(0, p.buffer_size, envs):
                net(frames[:, start : start + envs])
        for _ in range(p.num_passes):
            for start in range(0, p.buffer_size - p.batch_size + 1, p.batch_size):
                with run.amp():
                    head, values, _ = net(frames[:, start : start + p.batch_size])
                    log_prob = net.distribution(head).log_prob(actions[:, start : start + p.batch_size])
                    loss = (-log_prob.mean(-1) + values.float().pow(2).mean(-1)).sum()
                net.zero_grad()
                loss.backward()
                clip_member_grad_norms(params, p.max_grad_norm)
                opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="1,8,30,100")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--condition", default="baseline")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; {CONFIG.name} condition {args.condition}, {args.epochs} epochs, {args.precision}")
    print("K | run s/member-epoch | floor s/member-epoch | run / floor")
    with tempfile.TemporaryDirectory() as tmp:
        for members in (int(k) for k in args.members.split(",")):
            run = make_run(args.condition, members, args.epochs, args.precision, Path(tmp))
            floor = floor_seconds(run) / members
            run = make_run(args.condition, members, args.epochs, args.precision, Path(tmp) / "timed")
            t0 = time.perf_counter()
            run.train()
            per = (time.perf_counter() - t0) / (members * args.epochs)
            print(f"{members} | {per * 1e3:.1f} ms | {floor * 1e3:.1f} ms | {per / floor:.2f}x", flush=True)


if __name__ == "__main__":
    main()
