"""`plab` command line; `train.py` at the repo root is the same `train` sub-command.

Exit codes: 0 done, 2 bad input (one-line error, nothing written), 130/143 stopped by
SIGINT/SIGTERM after writing a checkpoint (resume with -r).
"""

from __future__ import annotations

import argparse
import signal
import sys

from plasticity_lab.config import ConfigError

EXIT_BAD_INPUT = 2


def add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--name", required=True, help="experiment name: results go to OUT_DIR/results/NAME/")
    parser.add_argument("-p", "--hyperparams", default="hyperparams.yaml", help="config file (root names are looked up in configs/ too)")
    parser.add_argument("-c", "--condition", default=None, help="run only this condition (default: all, one after another)")
    parser.add_argument("-s", "--seed", type=int, default=0, help="random seed (runs go to seed_<s>/)")
    parser.add_argument("-o", "--out_dir", default=".", help="output root (default: current directory)")
    parser.add_argument("-r", "--resume", action="store_true", help="continue existing runs from their latest checkpoint")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device (auto: CUDA when available)")


def cmd_train(args: argparse.Namespace) -> int:
    from plasticity_lab.config import load_study
    from plasticity_lab.experiment.checkpoint import CheckpointError
    from plasticity_lab.experiment.runner import Run, pick_device
    from plasticity_lab.experiment.study import plan_runs, prepare_run_dir, write_study_config

    study = load_study(args.hyperparams)
    conditions = [args.condition] if args.condition else None
    specs = plan_runs(study, args.name, conditions, [args.seed], args.out_dir, args.resume)
    try:
        device = str(pick_device(args.device))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    write_study_config(study, args.out_dir, args.name)
    for spec in specs:
        if (spec.run_dir / "DONE").exists():
            print(f"{spec.label}: already finished, skipping")
            continue
        run = Run(spec.cfg, spec.run_dir, spec.seed, device=device, label=spec.label)
        prepare_run_dir(spec, run.hook_list(), device)
        print(f"{spec.label}: {spec.run_dir} on {device}; hooks: {', '.join(run.hook_list()) or 'none'}", flush=True)
        try:
            status = run.train(resume=args.resume)
        except CheckpointError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if status == "interrupted":
            print(f"{spec.label}: stopped; checkpoint written. Resume with the same command plus -r.", flush=True)
            return 128 + int(run.stop_signal or signal.SIGINT)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plab", description="plasticity-lab: plasticity loss in on-policy deep RL")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train conditions of a config (same flags as train.py)")
    add_train_args(train)
    train.set_defaults(func=cmd_train)
    bench = sub.add_parser("bench", help="seconds per 1024 transitions vs. the pure network-compute floor")
    bench.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    bench.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up)")
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.set_defaults(func=cmd_bench)
    return parser


def cmd_bench(args: argparse.Namespace) -> int:
    from plasticity_lab.bench import run_bench

    run_bench(precision=args.precision, epochs=args.epochs, device=args.device)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def train_main(argv: list[str] | None = None) -> int:
    """Entry point of train.py: the study report's flags, no sub-command."""
    parser = argparse.ArgumentParser(prog="train.py", description="Train PPO conditions of a config (study-report CLI)")
    add_train_args(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_train(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
