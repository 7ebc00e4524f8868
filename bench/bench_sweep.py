"""Sweep throughput (runs per hour) for W = 1 and W = 2 workers on this machine, one process.

Fixed small config: CoinRun, study-report network and PPO settings, 8 epochs per run, 4 runs
(2 conditions x 2 seeds), diagnostics off. Prints runs/hour for each W and the scaling W2 / W1.

    python bench/bench_sweep.py [--runs-epochs 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from plasticity_lab.experiment.sweep import sweep

CONFIG = {
    "experiment": {"save_freq": 100, "conditions": {"baseline": {}, "layernorm": {"model.norm": "layernorm"}}},
    "environment": {"task": "coinrun_100", "env_copies": 16},
    "ppo_trainer": {"shift_points": [4], "test_interval": 100, "test_episodes": 50},
    "diagnostics": {"enabled": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    CONFIG["ppo_trainer"]["num_epochs"] = args.epochs
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench_sweep.yaml"
        cfg.write_text(yaml.safe_dump(CONFIG))
        for workers in (1, 2):
            t0 = time.perf_counter()
            states = sweep(cfg, seeds=[0, 1], workers=workers, out_dir=Path(tmp) / f"w{workers}")
            elapsed = time.perf_counter() - t0
            assert all(s.status == "done" for s in states), [s.error for s in states]
            rates[workers] = len(states) / elapsed * 3600
            print(f"W={workers}: {len(states)} runs of {args.epochs} epochs in {elapsed:.1f} s = {rates[workers]:.1f} runs/hour")
    print(f"scaling W=2 / W=1 = {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
