"""Estimated vs measured diagnostics cost of every shipped config, each in one short training run.

For each config (shortened with ``--set``-style overrides where the shipped run is long) the
baseline condition trains in this process with the default diagnostics budget. The estimate is
the plan's (``diagnostics.budget`` cost model, printed by every run); the measured fraction is the
probes' CPU seconds (timed around the probe's ``measure``: frame collection, probe, churn, fits)
over the CPU seconds of training proper (collect + update of every epoch, timed around
``Run.run_epoch`` minus its test evaluations), both from the same run; CPU seconds
(``time.process_time``), so that another job on the same core does not count. ``run`` is the
figure of the cost line every run prints: probe seconds over the rest of the run (evaluations and
checkpoints included).

    taskset -c 1 python bench/bench_diagnostics_cost.py [--configs gridworld_study.yaml ...] [--json out.jsonl]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from plasticity_lab.config import load_study
from plasticity_lab.experiment.runner import Run

SHORT = ["ppo_trainer.num_epochs=10", "ppo_trainer.shift_points=[5]"]
SHORTER = ["ppo_trainer.num_epochs=20", "ppo_trainer.shift_points=[10]"]
CHECK = ["diagnostics.budget=null", "diagnostics.probe_interval=5", "diagnostics.trainability_steps=50"]
ROWS = [
    ("gridworld_study.yaml", []),
    ("demo_gridworld.yaml", []),
    ("coinrun_short.yaml", SHORT),
    ("coinrun_quick_short.yaml", SHORT),
    ("hyperparams_quick.yaml", SHORT),
    ("hyperparams.yaml", SHORT),
    ("atari_continual_cpu.yaml", []),
    ("atari_continual.yaml", SHORT),
    ("slippery_ant_cpu.yaml", []),
    ("slippery_ant.yaml", SHORT),
    ("minatar_continual.yaml", SHORTER),
    ("minatar_permuted.yaml", SHORTER),
]
"""(config, overrides) of the default-budget rows: each run at most a few CPU minutes (no
overrides: the shipped run)."""
CHECKS = [
    ("atari_continual_cpu.yaml", CHECK[:2]),
    ("slippery_ant_cpu.yaml", CHECK[:2]),
    ("atari_continual.yaml", SHORT + CHECK),
    ("slippery_ant.yaml", SHORT + CHECK),
]
"""Model checks without a budget (probes every 5 epochs, and shortened trainability fits where
the config has them) for configs whose default-budget row probes nothing or fits nothing."""


def measure(config: str, overrides: list[str], root: Path) -> dict[str, object]:
    study = load_study(config, overrides)
    cfg = study.condition(study.conditions[0])
    (root / config).mkdir(parents=True)
    run = Run(cfg, root / config, seed=0, device="cpu", label=config)
    seconds = dict.fromkeys(("epochs", "eval", "probes"), 0.0)

    def timed(name, fn):
        def wrapper(*args):
            t0 = time.process_time()
            try:
                return fn(*args)
            finally:
                seconds[name] += time.process_time() - t0
        return wrapper

    probe = run.members[0].probe
    run.run_epoch, run.evaluate = timed("epochs", run.run_epoch), timed("eval", run.evaluate)
    probe.measure = timed("probes", probe.measure)
    log = io.StringIO()  # the run's plan and progress lines (the plan goes to --json)
    t0 = time.process_time()
    with contextlib.redirect_stdout(log):
        run.train()
    total = time.process_time() - t0
    training = seconds["epochs"] - seconds["eval"]
    return {
        "config": config, "overrides": " ".join(overrides), "probes": len(probe.plan.probes),
        # the probes' own estimate: the plan's cost includes the task matrix, timed here with "eval"
        "fits": len(probe.plan.fits), "estimated": probe.plan.cost - probe.plan.matrix, "cheapest": probe.plan.cheapest,
        "measured": seconds["probes"] / training, "run": seconds["probes"] / (total - seconds["probes"]),
        "plan": probe.plan.describe(), "train_s": training, "eval_s": seconds["eval"], "probe_s": seconds["probes"], "total_s": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", help="only these configs' rows")
    parser.add_argument("--checks", action="store_true", help="also the rows without a budget (CHECKS)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also append each result as a JSON line here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    version = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    print(f"code {version}, torch {torch.__version__}, {args.threads} threads")
    print("| config | overrides | probes | fits | estimated | measured | measured / estimated | run (cost line) |")
    print("|---|---|---|---|---|---|---|---|")
    rows = ROWS + (CHECKS if args.checks else [])
    for config, overrides in rows:
        if args.configs and config not in args.configs:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            r = measure(config, overrides, Path(tmp))
        ratio = f"{r['measured'] / r['estimated']:.2f}" if r["probes"] else "-"
        print(f"| {config} | {r['overrides'] or '-'} | {r['probes']} | {r['fits']} | {100 * r['estimated']:.1f}% | "
              f"{100 * r['measured']:.1f}% | {ratio} | {100 * r['run']:.1f}% |", flush=True)
        if args.json:
            with open(args.json, "a") as handle:
                handle.write(json.dumps({**r, "code": version}) + "\n")


if __name__ == "__main__":
    main()
