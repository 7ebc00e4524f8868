"""Seed k of a population == ``plab train -s k``, bit for bit, on the findings protocol.

For each condition, trains seeds 0..K-1 as one population (``plab train --population``) and each
seed alone (``plab train -s k``), every process on one thread, two processes at a time, then
compares the run directories (:func:`plasticity_lab.experiment.identity.run_differences`: every
value of metrics.csv and diagnostics.csv as written, timings aside, and the final checkpoint's
weights, optimiser state, method state, random streams and environments, exactly).

Protocol: ``configs/gridworld_study.yaml`` (250 epochs, ten rounds) with one added condition,
``cbp`` (continual backprop at settings that replace units within a round: replacement rate 1e-4,
maturity 100 steps; CBP computes member by member, through its activation hooks).
``--epochs N`` shortens every run to N epochs (CI runs a short version: tests/test_population.py).

    python bench/population_identity.py [--conditions baseline,reset-all,...] [--seeds 8] [--epochs 250] [-o OUT]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from plasticity_lab.bench import BENCH_CONDITIONS
from plasticity_lab.config import resolve_config_path
from plasticity_lab.experiment.identity import run_differences

CONDITIONS = ["baseline", "reset-all", "specnorm", "redo-reset", "ssp-ln", "l2-init", "cbp"]


def study_config(out: Path, epochs: int | None) -> Path:
    """The findings protocol plus the cbp condition, cut to ``epochs`` if given."""
    raw = yaml.safe_load(resolve_config_path("gridworld_study.yaml").read_text())
    raw["experiment"]["conditions"]["cbp"] = BENCH_CONDITIONS["cbp"]
    if epochs is not None:
        trainer = raw["ppo_trainer"]
        trainer["num_epochs"] = epochs
        trainer["shift_points"] = [e for e in trainer["shift_points"] if e < epochs]
    path = out / "identity.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def train(config: Path, out: Path, condition: str, seeds: str, population: bool) -> None:
    cmd = [sys.executable, "-m", "plasticity_lab.cli", "train", "-n", "identity", "-p", str(config), "-c", condition,
           "-s", seeds, "-o", str(out), "--threads", "1", "--device", "cpu"] + (["--population"] if population else [])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def check(conditions: list[str], seeds: int, epochs: int | None, out: Path) -> dict[str, list[list[str]]]:
    """Condition -> the differences of each seed (all [] when every member is its single run)."""
    config = study_config(out, epochs)
    jobs = [(out / "population", c, ",".join(map(str, range(seeds))), True) for c in conditions]
    jobs += [(out / "single", c, str(k), False) for c in conditions for k in range(seeds)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(train, config, root, c, s, pop) for root, c, s, pop in jobs]:
            future.result()
    run = lambda root, c, k: root / "results" / "identity" / c / f"seed_{k}"  # noqa: E731
    return {c: [run_differences(run(out / "population", c, k), run(out / "single", c, k)) for k in range(seeds)] for c in conditions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--seeds", type=int, default=8, help="population size K (seeds 0..K-1)")
    parser.add_argument("--epochs", type=int, default=None, help="shorten every run (default: the protocol's 250)")
    parser.add_argument("-o", "--out", default=None, help="where the runs go (default: a temporary directory)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="identity-"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    results = check(args.conditions.split(","), args.seeds, args.epochs, out)
    print(f"seed k of a K = {args.seeds} population vs plab train -s k, {args.epochs or 250} epochs ({out}):")
    for condition, diffs in results.items():
        same = sum(not d for d in diffs)
        first = next((f"seed {k}: {d[0]}" for k, d in enumerate(diffs) if d), "")
        print(f"  {condition:12s} {same}/{len(diffs)} bit-identical {first}")
    print(f"{time.monotonic() - start:.0f} s")
    sys.exit(0 if all(not d for diffs in results.values() for d in diffs) else 1)


if __name__ == "__main__":
    main()
