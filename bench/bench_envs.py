"""Speed of the ALE and MuJoCo protocols: environment steps per second (random actions, no
network), seconds per training epoch, and the epoch's ratio to the network-compute floor
measured in the same process (as ``plab bench`` does for ProcGen).

    python bench/bench_envs.py [--epochs 2] [--configs atari_continual.yaml slippery_ant.yaml]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from plasticity_lab.bench import make_run, network_floor, time_epochs


def env_steps_per_second(run, seconds: float = 5.0) -> float:
    """Steps/s of the run's training environments alone, under its current shift."""
    env, spec = run.env, run.spec
    rng = np.random.default_rng(0)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if spec.continuous:
            actions = rng.standard_normal((env.num_envs, spec.num_actions)).astype(np.float32)
        else:
            actions = rng.integers(0, spec.num_actions, env.num_envs)
        env.step(actions)
        steps += env.num_envs
    return steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=["atari_continual.yaml", "slippery_ant.yaml"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for config in args.configs:
        with tempfile.TemporaryDirectory() as tmp:
            run = make_run("fp32", "cpu", Path(tmp), config=config)
            p = run.ppo
            sps = env_steps_per_second(run)
            floor = network_floor(run, args.epochs)
            epoch = time_epochs(run, args.epochs)
            run.env.close()
        print(f"{config}: {run.env_cfg.name} {run.env_cfg.task}, {run.env_cfg.env_copies} envs, "
              f"{p.buffer_size} steps/epoch, {p.num_passes} passes of {p.batch_size}, {run.cfg.model.enc_type} h{run.cfg.model.h_size}")
        print(f"  env alone {sps:,.0f} steps/s; epoch {epoch:.2f} s ({p.buffer_size / epoch:,.0f} steps/s); "
              f"floor {floor:.2f} s; epoch / floor = {epoch / floor:.2f}x")


if __name__ == "__main__":
    main()
