"""Speed of the ALE, MuJoCo and MinAtar protocols: environment steps per second (random actions,
no network), seconds per training epoch, and the epoch's ratio to the network-compute floor
measured in the same process (as ``plab bench`` does for ProcGen).

    python bench/bench_envs.py [--epochs 2] [--configs atari_continual.yaml slippery_ant.yaml]
    python bench/bench_envs.py --minatar-games [--copies 32]   # env alone, every MinAtar game

``--cpu-time`` also reports epoch and floor in CPU seconds of this process: on a machine shared
with other jobs the wall-clock ratio depends on what they do meanwhile, the CPU-time one much less.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

from plasticity_lab import bench
from plasticity_lab.bench import make_run, network_floor, time_epochs
from plasticity_lab.config import EnvironmentConfig
from plasticity_lab.envs import env_spec, make_env


def env_steps_per_second(env, spec, seconds: float = 5.0) -> tuple[float, float]:
    """Steps per second of wall time and per second of this process's CPU time (all its threads)
    of a vectorised environment alone (random actions), under its current shift. On a shared
    machine the CPU-time figure is the per-core speed; the wall-time one depends on the load."""
    rng = np.random.default_rng(0)
    steps, t0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        if spec.continuous:
            actions = rng.standard_normal((env.num_envs, spec.num_actions)).astype(np.float32)
        else:
            actions = rng.integers(0, spec.num_actions, env.num_envs)
        env.step(actions)
        steps += env.num_envs
    return steps / (time.perf_counter() - t0), steps / (time.process_time() - cpu0)


def in_cpu_seconds(measure, *args):
    """``measure(*args)`` (network_floor or time_epochs: medians of ``time.perf_counter``
    intervals) with the bench module's clock switched to this process's CPU time."""
    clock = bench.time
    bench.time = types.SimpleNamespace(perf_counter=time.process_time)
    try:
        return measure(*args)
    finally:
        bench.time = clock


def minatar_games(copies: int, seconds: float) -> None:
    """Env-alone steps/s of every MinAtar game (package defaults, ``copies`` copies, one process)."""
    from plasticity_lab.envs.minatar import GAMES

    for game in GAMES:
        cfg = EnvironmentConfig(name="minatar", task=game, shift_type="none", env_copies=copies)
        env = make_env(cfg, copies, seed=0)
        wall, cpu = env_steps_per_second(env, env_spec(cfg), seconds)
        print(f"minatar {game}: {copies} copies, env alone {cpu:,.0f} steps per CPU second ({wall:,.0f} per wall second)")
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=["atari_continual.yaml", "slippery_ant.yaml"])
    parser.add_argument("--minatar-games", action="store_true", help="only the env-alone speed of every MinAtar game")
    parser.add_argument("--copies", type=int, default=32, help="environment copies for --minatar-games")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds each env-alone measurement steps for")
    parser.add_argument("--cpu-time", action="store_true", help="also measure epoch and floor in CPU seconds")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.minatar_games:
        minatar_games(args.copies, args.seconds)
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for config in args.configs:
        with tempfile.TemporaryDirectory() as tmp:
            run = make_run("fp32", "cpu", Path(tmp), config=config)
            p = run.ppo
            sps, _ = env_steps_per_second(run.member.env, run.spec, args.seconds)
            floor = network_floor(run, args.epochs)
            epoch = time_epochs(run, args.epochs)
            if args.cpu_time:
                floor_cpu, epoch_cpu = in_cpu_seconds(network_floor, run, args.epochs), in_cpu_seconds(time_epochs, run, args.epochs)
            run.member.env.close()
        print(f"{config}: {run.env_cfg.name} {run.env_cfg.task}, {run.env_cfg.env_copies} envs, "
              f"{p.buffer_size} steps/epoch, {p.num_passes} passes of {p.batch_size}, {run.cfg.model.enc_type} h{run.cfg.model.h_size}")
        print(f"  env alone {sps:,.0f} steps/s; epoch {epoch:.2f} s ({p.buffer_size / epoch:,.0f} steps/s); "
              f"floor {floor:.2f} s; epoch / floor = {epoch / floor:.2f}x")
        if args.cpu_time:
            print(f"  CPU time: epoch {epoch_cpu:.3f} s; floor {floor_cpu:.3f} s; epoch / floor = {epoch_cpu / floor_cpu:.2f}x")


if __name__ == "__main__":
    main()
