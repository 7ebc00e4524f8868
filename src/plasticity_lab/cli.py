"""`plab` command line; `train.py` at the repo root is the same `train` sub-command.

Exit codes: 0 done, 2 bad input (one-line error, nothing written), 130/143 stopped by
SIGINT/SIGTERM after writing a checkpoint (resume with -r).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from plasticity_lab.config import ConfigError

EXIT_BAD_INPUT = 2


def add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--name", required=True, help="experiment name: results go to OUT_DIR/results/NAME/")
    parser.add_argument("-p", "--hyperparams", default="hyperparams.yaml", help="config file (root names are looked up in configs/ too)")
    parser.add_argument("-c", "--condition", default=None, help="run only this condition (default: all, one after another)")
    parser.add_argument("-s", "--seed", default="0", help="random seed (runs go to seed_<s>/); several: 0,1,2 (run one after another, or as one population)")
    parser.add_argument("-o", "--out_dir", default=".", help="output root (default: current directory)")
    parser.add_argument("-r", "--resume", action="store_true", help="continue existing runs from their latest checkpoint")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device (auto: CUDA when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--population", action="store_true",
                        help="train the seeds of each condition as one population in this process (= experiment.population: true)")
    parser.add_argument("--handover", type=Path, default=None, metavar="STEM",
                        help="(set by plab sweep) where an idle worker may ask this population for members: "
                             "STEM.handover.json, answered in STEM.handed-over.json")
    add_override_args(parser)


def add_override_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys for every condition, e.g. --set ppo_trainer.lr=1e-3 model.h_size=128 "
                             "(VALUE is YAML: 1e-3, false, [1000, 2000], {tau: 0.1})")
    parser.add_argument("--wandb", action="store_true",
                        help="also log to Weights & Biases (= --set logging.wandb.enabled=true; needs the wandb extra)")


def overrides(args: argparse.Namespace) -> list[str]:
    """The --set texts, plus the one --wandb stands for."""
    return [*args.set, *(["logging.wandb.enabled=true"] if args.wandb else [])]


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from plasticity_lab.config import load_study
    from plasticity_lab.experiment.determinism import set_deterministic
    from plasticity_lab.experiment.population import check_population_fits, population_groups
    from plasticity_lab.experiment.runner import pick_device
    from plasticity_lab.experiment.study import EXIT_DIVERGED, check_unlocked, plan_runs

    study = load_study(args.hyperparams, overrides(args))
    conditions = [args.condition] if args.condition else None
    seeds = list(dict.fromkeys(parse_int_list(args.seed, "-s")))
    if not seeds:
        raise ConfigError("-s: give at least one seed")
    specs = plan_runs(study, args.name, conditions, seeds, args.out_dir, args.resume)
    for note in study.shadowed(conditions):
        print(note, flush=True)
    try:
        device = pick_device(args.device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for spec in specs:
        check_unlocked(spec.run_dir)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads}: must be >= 1")
        torch.set_num_threads(args.threads)
    set_deterministic(study.base.experiment.deterministic)
    for spec in specs:
        if (spec.run_dir / "DONE").exists():
            print(f"{spec.label}: already finished, skipping")
    if args.population or study.base.experiment.population:
        groups = population_groups(specs, study.base.experiment.population_size, args.resume)
        if args.handover is not None and len(groups) > 1:
            raise ConfigError(f"--handover: this command trains {len(groups)} populations; it is for one (one condition, as plab sweep starts them)")
        for group in groups:  # every refusal before any population starts
            check_population_fits(group[0].cfg, len(group), device, f"{args.name}/{group[0].condition}")
    else:
        if args.handover is not None:
            raise ConfigError("--handover: only for a population (--population)")
        groups = [[spec] for spec in specs if not (spec.run_dir / "DONE").exists()]
    diverged = 0
    for group in groups:
        code = train_group(study, args, group, str(device))
        if code == EXIT_DIVERGED:  # the other groups still train
            diverged = code
        elif code:
            return code
    return diverged


def train_group(study, args: argparse.Namespace, group: list, device: str) -> int:
    """Train ``group`` (the specs of one condition) as one run or one population; returns the
    exit code (0, bad input, a member diverged, or 128 + the signal that stopped it)."""
    import contextlib

    from plasticity_lab.experiment.checkpoint import CheckpointError
    from plasticity_lab.experiment.handover import Handover
    from plasticity_lab.experiment.runner import Run
    from plasticity_lab.experiment.study import EXIT_DIVERGED, prepare_run_dir, run_lock, write_study_config

    run = Run(group[0].cfg, [s.run_dir for s in group], [s.seed for s in group], device=device, label=[s.label for s in group])
    with contextlib.ExitStack() as locks:
        member_locks = {}  # seed -> its run directory's lock, released on its own when the member is handed over
        for spec in group:
            member_locks[spec.seed] = locks.enter_context(contextlib.ExitStack())
            member_locks[spec.seed].enter_context(run_lock(spec.run_dir))
        try:
            # checked before anything is written, so a refused resume leaves the runs as they were
            states = run.load_resume_state() if args.resume else None
        except CheckpointError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        write_study_config(study, args.out_dir, args.name)
        for spec in group:
            prepare_run_dir(spec, run.hook_list(), device, population=len(group))
        what = group[0].label if len(group) == 1 else f"{group[0].condition} (population of {len(group)}: seeds {','.join(str(s.seed) for s in group)})"
        print(f"{what}: {group[0].run_dir.parent if len(group) > 1 else group[0].run_dir} on {device}; "
              f"hooks: {', '.join(run.hook_list()) or 'none'}", flush=True)
        status = run.train(
            states, Handover(args.handover) if args.handover is not None else None,
            released=lambda seeds: release_locks(member_locks, seeds),
        )
    if status == "interrupted":
        print(f"{group[0].condition}: stopped; checkpoints written. Resume with the same command plus -r.", flush=True)
        return 128 + int(run.stop_signal or signal.SIGINT)
    if run.failed:
        failed = ", ".join(f"{m.label} (epoch {epoch}: {cause})" for m, epoch, cause in run.failed)
        print(f"FAILED: {failed}; each run directory has a FAILED file, the other runs finished", flush=True)
        return EXIT_DIVERGED
    return 0


def release_locks(locks: dict, seeds: list[int]) -> None:
    """Unlock the run directories of ``seeds`` (handed over to another process)."""
    for seed in seeds:
        locks[seed].close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plab", description="plasticity-lab: plasticity loss in on-policy deep RL")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train conditions of a config (same flags as train.py)")
    add_train_args(train)
    train.set_defaults(func=cmd_train)
    sw = sub.add_parser("sweep", help="all conditions x seeds, in parallel processes or on a Ray cluster")
    sw.add_argument("config", help="config file")
    sw.add_argument("--conditions", default=None, help="comma-separated subset of conditions (default: all)")
    seeds = sw.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: experiment.num_sessions)")
    seeds.add_argument("--seed-list", default=None, help="explicit comma-separated seeds, e.g. 0,3,7")
    sw.add_argument("--workers", type=int, default=1, help="runs at a time (local: each gets cores/W threads)")
    sw.add_argument("--backend", default="local", choices=["local", "ray"])
    sw.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: start a local Ray")
    sw.add_argument("--cpus-per-run", type=int, default=None, help="Ray: CPUs requested per run (default cores/W)")
    sw.add_argument("--gpus-per-run", type=float, default=0.0, help="Ray: GPUs requested per run")
    sw.add_argument("--name", default=None, help="study name (default: the config file's stem)")
    sw.add_argument("-o", "--out_dir", default=".", help="output root (default: current directory)")
    sw.add_argument("--resume", action="store_true", help="accepted for clarity: a sweep always skips finished runs and resumes interrupted ones")
    sw.add_argument("--retries", type=int, default=1, help="re-attempts of a failed run (each resumes from its checkpoint)")
    sw.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    sw.add_argument("--population", action="store_true",
                    help="train each condition's seeds as one population per process (= experiment.population: true); "
                         "--workers counts populations")
    add_override_args(sw)
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="cross the conditions with these values, e.g. --grid interventions.redo.tau=0.0,0.025,0.1 "
                         "(several --grid flags: every combination)")
    sw.set_defaults(func=cmd_sweep)
    st = sub.add_parser("status", help="every run of a study: state, epoch, last test return, ETA (while a sweep runs, too)")
    st.add_argument("results_dir", help="study directory (results/NAME)")
    st.set_defaults(func=cmd_status)
    demo = sub.add_parser("demo", help="minute-scale study on CPU: baseline vs. reset-all vs. mitigations, then the report")
    demo.add_argument("-o", "--out_dir", default=".", help="output root (results go to OUT_DIR/results/NAME)")
    demo.add_argument("--name", default=None,
                      help="study name (default: a new demo-YYYYmmdd-HHMMSS; results/demo is the committed reference demo)")
    demo.add_argument("--seeds", type=int, default=None,
                      help="seeds per condition, trained as one population per condition (default: the config's num_sessions)")
    demo.add_argument("--workers", type=int, default=2, help="populations at a time")
    demo.set_defaults(func=cmd_demo)
    an = sub.add_parser("analyze", help="probe-set diagnostics of saved networks: spectra, activation rates")
    an.add_argument("results_dir", help="study directory (results/NAME)")
    an.add_argument("--frames", type=int, default=2560, help="real frames collected per task")
    an.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    an.add_argument("--out", default=None, metavar="DIR",
                    help="output folder (default: RESULTS_DIR/feature_analysis; reports/NAME/feature_analysis for a committed reference study)")
    an.set_defaults(func=cmd_analyze)
    rep = sub.add_parser("report", help="figures, paired comparisons with CIs, summary.md, comparisons.csv, report.html")
    rep.add_argument("results_dir", help="study directory (results/NAME)")
    rep.add_argument("--out", default=None, metavar="DIR",
                     help="write the report here (default: RESULTS_DIR; for a committed reference study reports/NAME)")
    rep.add_argument("--in-place", action="store_true",
                     help="write into RESULTS_DIR even when it is a committed reference study (regenerates its summary)")
    rep.add_argument("--final-window", type=int, default=None, metavar="N",
                     help="final values average the last N test evaluations, within the last task (default: the "
                          "study's analysis.final_window, else the last 10%%)")
    rep.add_argument("--primary", default=None, metavar="METRIC",
                     help="metric whose verdicts are confirmatory and on which conditions are ranked (default: the "
                          "study's analysis.primary, else test_r)")
    rep.add_argument("--equivalence-margin", type=float, default=None, metavar="F",
                     help="'equivalent' needs the difference shown within +-F x the baseline's mean (default: the "
                          "study's analysis.equivalence_margin, else 0.1)")
    rep.add_argument("--baseline", default=None, metavar="NAME",
                     help="condition to compare against (default: experiment.baseline of RESULTS_DIR/config.yaml)")
    rep.add_argument("--reference", default=None, metavar="NAME",
                     help="condition scores are normalised by, e.g. reset-all (default: experiment.reference, if set)")
    rep.add_argument("--allow-mixed", action="store_true",
                     help="pool runs from different code versions or with configs that differ beyond their condition "
                          "(the differences are listed in the report)")
    rep.add_argument("--reps", type=int, default=99_999, metavar="N",
                     help="random sign patterns of a sign-flip test with more than 20 seeds (below: exact)")
    rep.add_argument("--smooth", type=int, default=None, metavar="W",
                     help="curve smoothing window in epochs, within each task (default: 1%% of the epochs; 1: none)")
    rep.set_defaults(func=cmd_report)
    pw = sub.add_parser("power", help="seeds needed to detect a given effect, from a study's paired seed-to-seed spread")
    pw.add_argument("results_dir", help="study directory (results/NAME)")
    pw.add_argument("--effects", default="10,20", metavar="PCTS",
                    help="effects to detect, percent of the baseline's mean final test return (default: 10,20)")
    pw.add_argument("--power", type=float, default=0.8, help="power to reach (default: 0.8)")
    pw.add_argument("--alpha", type=float, default=0.05, help="two-sided significance level (default: 0.05)")
    pw.add_argument("--baseline", default=None, metavar="NAME", help="condition to compare against (default: experiment.baseline)")
    pw.add_argument("--final-window", type=int, default=None, metavar="N", help="as for plab report")
    pw.add_argument("--allow-mixed", action="store_true", help="as for plab report")
    pw.set_defaults(func=cmd_power)
    cl = sub.add_parser("claims", help="regenerate a document's claim and per-round tables from a study's comparisons.csv")
    cl.add_argument("claims", help="claims file (YAML: study, document, tables), e.g. docs/findings_claims.yaml")
    cl.add_argument("--check", action="store_true", help="change nothing; exit 1 if the document's tables are out of date")
    cl.set_defaults(func=cmd_claims)
    bench = sub.add_parser("bench", help="seconds per 1024 transitions vs. the pure network-compute floor")
    bench.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    bench.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up)")
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.add_argument("--diagnostics", action="store_true",
                       help="also time each diagnostics item beside the budget's cost model")
    bench.add_argument("--config", help="time the diagnostics items of this config only (no epoch bench)")
    bench.set_defaults(func=cmd_bench)
    return parser


def parse_int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated integers") from None


def cmd_sweep(args: argparse.Namespace) -> int:
    from plasticity_lab.config import load_study
    from plasticity_lab.experiment.sweep import sweep

    if args.seed_list is not None:
        seeds = parse_int_list(args.seed_list, "--seed-list")
    else:
        count = args.seeds if args.seeds is not None else load_study(args.config, overrides(args)).base.experiment.num_sessions
        if count < 1:
            raise ConfigError(f"--seeds {count}: must be >= 1")
        seeds = list(range(count))
    seeds = list(dict.fromkeys(seeds))  # a repeated seed or condition is one run, not two
    conditions = list(dict.fromkeys(args.conditions.split(","))) if args.conditions else None
    try:
        states = sweep(
            args.config, name=args.name, conditions=conditions, seeds=seeds, workers=args.workers,
            backend=args.backend, address=args.address, out_dir=args.out_dir, retries=args.retries,
            device=args.device, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
            overrides=overrides(args), grid=args.grid, population=True if args.population else None,
        )
    except KeyboardInterrupt:
        print("sweep interrupted; running runs wrote checkpoints. Re-run the same command to continue.")
        return 130
    return 1 if any(s.status == "failed" for s in states) else 0


DEMO_CONFIG = "demo_gridworld.yaml"


def cmd_demo(args: argparse.Namespace) -> int:
    """Sweep configs/demo_gridworld.yaml, each condition's seeds as one population, write the
    report, print what it found (read from its comparisons.csv) and where it is."""
    from plasticity_lab.analysis.claims import findings
    from plasticity_lab.analysis.report import report
    from plasticity_lab.config import load_study, resolve_config_path
    from plasticity_lab.experiment.study import new_study_name, study_dir
    from plasticity_lab.experiment.sweep import sweep

    config = resolve_config_path(DEMO_CONFIG)
    study = load_study(config)
    seeds = args.seeds if args.seeds is not None else study.base.experiment.num_sessions
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: must be >= 1")
    name = args.name or new_study_name(args.out_dir, "demo")
    start = time.monotonic()
    states = sweep(config, name=name, seeds=list(range(seeds)), workers=args.workers, out_dir=args.out_dir,
                   population=True)
    html = report(study_dir(args.out_dir, name))  # the analysis plan is the config's
    minutes = (time.monotonic() - start) / 60
    plan = study.base.analysis
    window = f"mean of the last {plan.final_window} test evaluations" if plan.final_window else "the last 10% of the test evaluations"
    print(f"\nWhat the demo found ({len(study.conditions)} conditions x {seeds} seeds, {minutes:.1f} min): final {plan.primary} "
          f"({window}) of each condition minus the baseline's, paired by seed, with its 95% interval, n and p "
          f"(Holm-adjusted over the k comparisons), from comparisons.csv:")
    for line in findings(html.parent):  # against the baseline and reference the study's config.yaml declares
        print(f"  {line}")
    print(f"Full report: {html.parent / 'summary.md'} and {html}")
    return 1 if any(s.status == "failed" for s in states) else 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from plasticity_lab.analysis.feature_analysis import analyze

    try:
        out = analyze(args.results_dir, frames=args.frames, device=args.device, out=args.out)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    print(f"wrote {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from plasticity_lab.analysis.report import report

    path = report(
        args.results_dir, out=args.out, in_place=args.in_place, final_window=args.final_window, baseline=args.baseline,
        reference=args.reference, reps=args.reps, smooth=args.smooth, allow_mixed=args.allow_mixed,
        primary=args.primary, equivalence_margin=args.equivalence_margin,
    )
    print(f"report: {path}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from plasticity_lab.experiment.status import print_status

    print_status(args.results_dir)
    return 0


def cmd_power(args: argparse.Namespace) -> int:
    from plasticity_lab.analysis.report import power_text

    try:
        effects = tuple(float(x) for x in args.effects.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--effects {args.effects!r}: expected comma-separated percentages, e.g. 10,20") from None
    if not effects or any(e <= 0 for e in effects):
        raise ConfigError(f"--effects {args.effects!r}: each effect must be a percentage > 0")
    if not 0 < args.power < 1 or not 0 < args.alpha < 1:
        raise ConfigError(f"--power {args.power} / --alpha {args.alpha}: each must lie in (0, 1)")
    print(power_text(args.results_dir, effects, args.alpha, args.power, baseline=args.baseline,
                     allow_mixed=args.allow_mixed, final_window=args.final_window))
    return 0


def cmd_claims(args: argparse.Namespace) -> int:
    from plasticity_lab.analysis.claims import update

    document, changed = update(args.claims, check=args.check)
    if args.check:
        print(f"{document}: {'out of date: run plab claims ' + args.claims if changed else 'up to date'}")
        return 1 if changed else 0
    print(f"{document}: {'tables regenerated' if changed else 'already up to date'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from plasticity_lab.bench import run_bench, run_diagnostics_bench

    if args.config:
        run_diagnostics_bench(device=args.device, config=args.config)
        return 0
    run_bench(precision=args.precision, epochs=args.epochs, device=args.device)
    if args.diagnostics:
        run_diagnostics_bench(device=args.device)
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
