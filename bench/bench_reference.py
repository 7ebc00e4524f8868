"""Our episode collection vs the network floor vs the reference code, in one invocation.

The reproduction protocol (``hyperparams_quick.yaml`` by default: ProcGen CoinRun, 11 env copies,
complete episodes per epoch), training time only, in CPU seconds per 1024 training transitions of
this process (``time.process_time``: on a machine shared with other jobs, wall time depends on
what they do meanwhile). Three figures, measured one after another:

- ours: ``plab bench``'s episode-mode epoch (collect + update + the epoch's metrics);
- floor: the same network compute with no environment (``plasticity_lab.bench.network_floor``);
- reference: awjuliani/deep-rl-plasticity's ``PPOTrainer.train`` on the same settings, from a
  checkout given on the command line, run with that checkout's own Python (``reference_driver.py``);

and prints ours / floor and reference / ours. Pin it to one core and give both the same torch
thread count, e.g.

    taskset -c 1 python bench/bench_reference.py --reference /work/refcode \\
        --python /work/refenv/bin/python [--epochs 3] [--threads 1]

On an idle machine, ``--threads 2 --wall`` times wall-clock seconds instead (CPU seconds would
count both threads).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from plasticity_lab.bench import make_run, network_floor, time_epochs
from plasticity_lab.config import RunConfig, load_study
from plasticity_lab.experiment.provenance import code_version

DRIVER = Path(__file__).with_name("reference_driver.py")
NO_TEST = 10**6
"""test_interval for both codes: training time only."""


def reference_overrides(cfg: RunConfig) -> dict[str, object]:
    """The reference's hyperparams.yaml keys (dotted) set to our config's values: its baseline
    condition on our config's protocol, with no test evaluation."""
    p, env, model = cfg.ppo_trainer, cfg.environment, cfg.model
    if p.rollout != "episodes" or env.name != "procgen" or env.time_limit != "terminal":
        raise SystemExit(
            f"the reference collects complete ProcGen episodes with a terminal cap: the config needs "
            f"environment.name procgen, environment.time_limit terminal and ppo_trainer.rollout episodes "
            f"(got {env.name}, {env.time_limit}, {p.rollout})"
        )
    return {
        "environment.task": env.task, "environment.shift_type": env.shift_type, "environment.env_copies": env.env_copies,
        "model.h_size": model.h_size, "model.activation": model.activation, "model.lr": p.lr,
        "model.l2_norm": p.weight_decay, "model.adapt_info": ["none", None],
        "ppo_trainer.batch_size": p.batch_size, "ppo_trainer.buffer_size": p.buffer_size,
        "ppo_trainer.num_passes": p.num_passes, "ppo_trainer.ent_coef": p.ent_coef, "ppo_trainer.gamma": p.gamma,
        "ppo_trainer.lambda": p.gae_lambda, "ppo_trainer.clip_param": p.clip_param,
        "ppo_trainer.num_epochs": p.num_epochs, "ppo_trainer.shift_points": p.shift_points,
        "ppo_trainer.test_interval": NO_TEST,
    }  # fmt: skip


def time_reference(python: str, checkout: Path, epochs: int, threads: int, overrides: dict[str, object], wall: bool) -> dict:
    if not (checkout / "shared" / "runner.py").exists():
        raise SystemExit(f"--reference {checkout}: not a checkout of awjuliani/deep-rl-plasticity (no shared/runner.py)")
    done = subprocess.run(
        [python, str(DRIVER), str(checkout), str(epochs), str(threads), json.dumps(overrides), *(["wall"] if wall else [])],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the reference run failed ({python} {DRIVER.name}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of awjuliani/deep-rl-plasticity")
    parser.add_argument("--python", default=sys.executable, help="Python with the reference's dependencies")
    parser.add_argument("--config", default="hyperparams_quick.yaml")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up (floor: repeats)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, both codes")
    parser.add_argument("--wall", action="store_true", help="wall-clock seconds instead of CPU seconds (an idle machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_study(args.config).condition("baseline")
    overrides = reference_overrides(cfg)
    clock = time.perf_counter if args.wall else time.process_time
    version = code_version()
    print(f"{datetime.date.today()}, plasticity-lab {version['git_commit'][:7]}{' (dirty)' if version['git_dirty'] else ''}, "
          f"torch {torch.__version__}, {args.threads} thread(s); {args.config}: {cfg.environment.task}, "
          f"{cfg.environment.env_copies} copies, complete episodes, {args.epochs} epochs after a warm-up; {'wall-clock' if args.wall else 'CPU'} seconds")
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run("fp32", "cpu", Path(tmp), config=args.config, rollout="episodes")  # no test evaluation
        floor = network_floor(run, args.epochs, clock=clock) * 1024 / cfg.ppo_trainer.buffer_size
        ours = time_epochs(run, args.epochs, clock=clock)
        run.member.env.close()
    ref = time_reference(args.python, args.reference, args.epochs, args.threads, overrides, args.wall)
    reference = ref["seconds_per_1024"]
    print(f"ours (rollout: episodes) {ours:.3f} s per 1024 transitions; network floor {floor:.3f} s; "
          f"reference {reference:.3f} s (epochs of {ref['epoch_transitions']} transitions, torch {ref['torch']})")
    print(f"ours / floor = {ours / floor:.2f}x; reference / ours = {reference / ours:.2f}x")


if __name__ == "__main__":
    main()
