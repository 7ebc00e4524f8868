"""Populations: seconds per member-epoch at K = 1, 8, 30, 100 and the network-arithmetic floor;
the findings study with --population against --workers 2.

Protocol: the findings study (configs/gridworld_study.yaml, one condition), every member trained
as in the study (evaluation every 5 epochs, probes every 25, a shift at epoch 25) for ``--epochs``
epochs. For each K the same process measures

* ``run``: wall time of ``Run.train()`` of a population of K members, per member-epoch;
* ``floor``: the pure network arithmetic of one epoch of the same K members, per member-epoch:
  ``steps_per_env`` rollout forwards of (K, env_copies) synthetic frames, then ``num_passes`` x
  ``buffer_size / batch_size`` minibatch forward + backward + per-member clip + AdamW step of
  (K, batch_size) frames (no environment, storage, hooks, evaluation or diagnostics);

and prints run / floor, and the run's CPU seconds per member-epoch (``time.process_time``: what a
loaded machine's wall clock hides). ``--precision bf16`` autocasts both; ``--config`` times another
study's condition (e.g. configs/minatar_permuted.yaml) instead of the findings study.

``--study N`` instead times the findings study itself (every condition, N seeds, the full
250-epoch protocol) three ways on the same cores, one after another in this process: ``plab
sweep --workers 2`` of single runs (fp32), then ``--population --workers 2`` in fp32 and in bf16;
and the network-arithmetic floor of the study in each precision (the floor per member-epoch at
K = N, times the study's member-epochs, over 2 cores), measured with both cores busy (two
processes side by side, as the study runs, timing epochs over the same 20 s), before and after the
timed runs. ``--conditions`` picks a subset,
``--modes`` which of the three (single, population, bf16) are timed.

``--condition a,b,...`` times several conditions (the study's, or cbp, trac, cchain at the settings of
:data:`BENCH_CONDITIONS`) and prints each one's CPU seconds per member-epoch against the first's.

    python bench/bench_population.py [--members 1,8,30,100] [--epochs 30] [--precision fp32] [--config FILE]
    python bench/bench_population.py --members 30 --condition baseline,reset-all,...,cbp,trac,cchain
    python bench/bench_population.py --study 30 [--conditions baseline,l2-init] [--modes single,population,bf16]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml

from plasticity_lab.agents.population_optim import PopulationAdamW, clip_member_grad_norms
from plasticity_lab.bench import BENCH_CONDITIONS
from plasticity_lab.config import load_study
from plasticity_lab.experiment.runner import Run
from plasticity_lab.experiment.sweep import sweep

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gridworld_study.yaml"


def study_config(config: Path, root: Path) -> Path:
    """``config`` with :data:`BENCH_CONDITIONS` added, written under ``root``."""
    raw = yaml.safe_load(config.read_text())
    raw["experiment"]["conditions"].update(BENCH_CONDITIONS)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"with_extras_{config.name}"
    path.write_text(yaml.safe_dump(raw))
    return path


def make_run(condition: str, members: int, epochs: int, precision: str, root: Path, config: Path = CONFIG) -> Run:
    cfg = load_study(study_config(config, root)).condition(condition).model_copy(deep=True)
    cfg.ppo_trainer.num_epochs = epochs
    cfg.ppo_trainer.shift_points = [p for p in cfg.ppo_trainer.shift_points if p < epochs]
    cfg.ppo_trainer.precision = precision
    dirs = [root / f"{condition}_{members}" / f"seed_{k}" for k in range(members)]
    for d in dirs:
        d.mkdir(parents=True)
    return Run(cfg, dirs, list(range(members)), device="cpu")


def floor_epochs(run: Run) -> Iterator[float]:
    """Seconds of one epoch's pure network arithmetic for the run's K members, epoch after epoch
    (the first, which warms up the allocator, not yielded)."""
    p, K, envs = run.ppo, run.size, run.env_cfg.env_copies
    net = run.net
    opt = PopulationAdamW(net.trainable(), lr=p.lr)
    frames = torch.randint(0, 256, (K, p.buffer_size, *run.obs_shape), dtype=torch.uint8)
    actions = torch.randint(0, run.num_actions, (K, p.buffer_size))
    params = list(net.trainable().values())
    for repeat in itertools.count():
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
        if repeat:
            yield time.perf_counter() - t0


def floor_seconds(run: Run, repeats: int = 3) -> float:
    """Median seconds of one epoch's pure network arithmetic for the run's K members."""
    return statistics.median(itertools.islice(floor_epochs(run), repeats))


FLOOR_SECONDS = 20.0
"""How long each process of :func:`study_floor` times epochs: ~25 epochs at K = 30, so the
median moves ~1% between measurements where 5 epochs moved it up to 8%."""


def member_epoch_floor(job: tuple[str, int, str, Path], start: Any, seconds: float = FLOOR_SECONDS) -> float:
    """:func:`floor_epochs` per member-epoch of one condition at K = ``members``, in a process of
    its own (one thread, as a study's workers): the median epoch of those begun within
    ``seconds`` after every process has passed the barrier ``start``."""
    condition, members, precision, root = job
    torch.set_num_threads(1)
    try:
        epochs = floor_epochs(make_run(condition, members, 2, precision, root))
        next(epochs)  # warm, then start together
    except BaseException:
        start.abort()  # the other process would wait at the barrier for ever
        raise
    start.wait(timeout=600)
    t0, times = time.perf_counter(), []
    while time.perf_counter() - t0 < seconds:
        times.append(next(epochs))
    return statistics.median(times) / members


def study_floor(chosen: list[str], members: int, precision: str, root: Path) -> float:
    """The study's network floor per member-epoch with both cores busy, as they are in the study:
    the first two conditions' floors measured in two processes over the same window (cores that
    share caches, memory bandwidth and a power budget run slower together than one alone; a
    barrier starts both clocks at once, so neither times epochs while the other is still
    starting), their mean."""
    context = multiprocessing.get_context("spawn")
    jobs = [(c, members, precision, root / f"{precision}_{i}") for i, c in enumerate((chosen * 2)[:2])]
    with context.Manager() as manager, ProcessPoolExecutor(2, mp_context=context) as pool:
        start = manager.Barrier(2)  # a proxy: it can be sent to the workers with their jobs
        return statistics.mean(pool.map(member_epoch_floor, jobs, [start] * 2))


STUDY_MODES = {  # --modes name -> (label, population, precision)
    "single": ("workers 2, single runs, fp32", False, "fp32"),
    "population": ("population, workers 2, fp32", True, "fp32"),
    "bf16": ("population, workers 2, bf16", True, "bf16"),
}


def time_study(seeds: int, conditions: list[str] | None, root: Path, modes: list[str]) -> None:
    study = load_study(CONFIG)
    chosen = conditions or study.conditions
    runs = len(chosen) * seeds
    epochs = study.base.ppo_trainer.num_epochs
    precisions = sorted({STUDY_MODES[m][2] for m in modes})

    def floors(when: str) -> dict[str, float]:
        """The study's floor in each precision: per member-epoch x member-epochs / 2 cores."""
        out = {p: study_floor(chosen, seeds, p, root / f"floor_{when}") * epochs * runs / 2 for p in precisions}
        print(f"network floor of the study on 2 cores ({when} the runs): "
              + ", ".join(f"{p} {floor:.0f} s" for p, floor in out.items()), flush=True)
        return out

    print(f"study: {len(chosen)} conditions x {seeds} seeds, {epochs} epochs", flush=True)
    before = floors("before")
    walls = {}
    for label, population, precision in (STUDY_MODES[m] for m in modes):
        raw = yaml.safe_load(CONFIG.read_text())
        raw["ppo_trainer"]["precision"] = precision
        config = root / f"{precision}.yaml"
        config.write_text(yaml.safe_dump(raw))
        t0 = time.perf_counter()
        states = sweep(config, name=label.replace(" ", "_").replace(",", ""), conditions=conditions, seeds=list(range(seeds)),
                       workers=2, out_dir=root / "studies", population=population)
        walls[label] = time.perf_counter() - t0
        assert all(s.status == "done" for s in states), [s.error for s in states if s.status != "done"]
        print(f"{label}: {walls[label]:.0f} s", flush=True)
    after = floors("after")  # the machine's speed can drift during an hour of runs: the floor is bracketed
    base = walls.get(STUDY_MODES["single"][0])
    print("mode | wall s | speed-up vs workers 2 | wall / floor of its precision (mean of before and after)")
    for label, wall in walls.items():
        precision = label.rsplit(" ", 1)[1]
        speedup = f"{base / wall:.2f}x" if base else "- (single not timed)"
        floor = (before[precision] + after[precision]) / 2
        print(f"{label} | {wall:.0f} | {speedup} | {wall / floor:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="1,8,30,100")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--condition", default="baseline", help="comma-separated conditions of the study, or "
                        f"{', '.join(BENCH_CONDITIONS)}; the last column compares each with the first")
    parser.add_argument("--config", type=Path, default=CONFIG, help="study config whose condition is timed (K = 1, 8, ... only)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--study", type=int, default=None, metavar="SEEDS", help="time the whole findings study instead")
    parser.add_argument("--conditions", default=None, help="with --study: comma-separated subset of conditions")
    parser.add_argument("--modes", default=",".join(STUDY_MODES), help=f"with --study: which of {', '.join(STUDY_MODES)} to time")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.study:
        with tempfile.TemporaryDirectory() as tmp:
            modes = args.modes.split(",")
            unknown = sorted(set(modes) - set(STUDY_MODES))
            if unknown:
                parser.error(f"--modes: unknown {', '.join(unknown)}; allowed: {', '.join(STUDY_MODES)}")
            time_study(args.study, args.conditions.split(",") if args.conditions else None, Path(tmp), modes)
        return
    conditions = args.condition.split(",")
    print(f"torch {torch.__version__}, 1 thread; {args.config.name}, {args.epochs} epochs, {args.precision}")
    print("condition | K | run s/member-epoch | floor s/member-epoch | run / floor | run CPU s/member-epoch | CPU / first condition's")
    with tempfile.TemporaryDirectory() as tmp:
        first: dict[int, float] = {}
        for condition in conditions:
            for members in (int(k) for k in args.members.split(",")):
                root = Path(tmp) / condition / str(members)
                run = make_run(condition, members, args.epochs, args.precision, root / "floor", args.config)
                floor = floor_seconds(run) / members
                run = make_run(condition, members, args.epochs, args.precision, root / "timed", args.config)
                t0, c0 = time.perf_counter(), time.process_time()
                run.train()
                per = (time.perf_counter() - t0) / (members * args.epochs)
                cpu = (time.process_time() - c0) / (members * args.epochs)
                first.setdefault(members, cpu)
                print(f"{condition} | {members} | {per * 1e3:.1f} ms | {floor * 1e3:.1f} ms | {per / floor:.2f}x | "
                      f"{cpu * 1e3:.1f} ms | {cpu / first[members]:.2f}x", flush=True)

if __name__ == "__main__":
    main()
