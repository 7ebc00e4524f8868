"""Seconds and transitions per epoch: `rollout: episodes` (the reproduction configs: 11 copies,
whole episodes, 201-step terminal cap) vs `rollout: fixed` (16 copies x 64 steps), both on the
study report's protocol (coinrun_100, conv64 h256, 3 passes of 64) with an untrained network.

    python bench/bench_rollout.py [--epochs 3] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from plasticity_lab.config import load_study
from plasticity_lab.experiment.runner import Run


def make_run(rollout: str, root: Path, device: str) -> Run:
    cfg = load_study("hyperparams_quick.yaml").condition("baseline").model_copy(deep=True)
    if rollout == "fixed":
        cfg.ppo_trainer.rollout, cfg.environment.env_copies, cfg.environment.time_limit = "fixed", 16, "truncate"
    cfg.ppo_trainer.test_interval = 10**6  # training only
    cfg.diagnostics.enabled = False
    return Run(cfg, root / rollout, seed=0, device=device, label=rollout)


def measure(rollout: str, epochs: int, device: str) -> tuple[list[float], list[float], list[int]]:
    """Per-epoch wall seconds, process CPU seconds (comparable on a loaded machine) and
    transitions of ``epochs`` epochs after one warm-up epoch."""
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(rollout, Path(tmp), device)
        wall, cpu, transitions = [], [], []
        for epoch in range(epochs + 1):
            before = run.member.env_steps
            t0, c0 = time.perf_counter(), time.process_time()
            run.run_epoch(epoch + 1)
            if epoch:
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                transitions.append(run.member.env_steps - before)
        run.member.env.close()
    return wall, cpu, transitions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{args.epochs} epochs after 1 warm-up, untrained network")
    for rollout in ("fixed", "episodes"):
        wall, cpu, transitions = measure(rollout, args.epochs, args.device)
        per_1024 = [1024 * s / n for s, n in zip(cpu, transitions)]
        print(f"{rollout:9s} wall s/epoch {', '.join(f'{s:.2f}' for s in wall)}; "
              f"CPU s/epoch {', '.join(f'{s:.2f}' for s in cpu)} (median {statistics.median(cpu):.2f}); "
              f"transitions/epoch {transitions} (mean {statistics.mean(transitions):.0f}); "
              f"CPU s per 1024 transitions {statistics.median(per_1024):.2f}")


if __name__ == "__main__":
    main()
