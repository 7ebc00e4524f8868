"""A check of the demo's verdict outside the toolkit: paired t tests (scipy) of reset-all vs the
baseline on each seed's final test return and late-round training return, read straight from the
runs' per-epoch CSVs (no plasticity_lab import, no comparisons.csv).

    python bench/demo_ttest.py results/demo            # or a new results/demo-<date>-<time>

Per seed (a seed_<s> directory in both conditions):
- final test return: the mean of the last 3 test evaluations of the last round (the demo's declared
  analysis window, epochs 240, 245 and 249 of 250);
- late-round training return: the mean training return over the last 10 epochs of each of the
  last 5 rounds (rounds 6-10; the epochs of those rounds' last 3 test evaluations).

Prints n, the mean paired difference and the two-sided p of scipy.stats.ttest_rel for each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from scipy import stats


def metrics(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "metrics.csv"
    return pd.read_csv(path if path.exists() else run_dir / "metrics.csv.gz")


def final_test(df: pd.DataFrame, window: int) -> float:
    last = df[df["task"] == df["task"].max()]
    return float(last["test_r"].dropna().iloc[-window:].mean())


def late_train(df: pd.DataFrame, rounds: int, epochs: int) -> float:
    tasks = sorted(df["task"].unique())[-rounds:]
    return float(pd.concat([df[df["task"] == t].iloc[-epochs:] for t in tasks])["train_r"].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="study directory (results/NAME)")
    parser.add_argument("--baseline", default="baseline")
    parser.add_argument("--reference", default="reset-all")
    parser.add_argument("--window", type=int, default=3, help="test evaluations in the final value (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="late rounds of the training return (default 5)")
    parser.add_argument("--epochs", type=int, default=10, help="last epochs of each late round (default 10)")
    args = parser.parse_args()
    seeds = sorted({d.name for d in (args.study / args.baseline).glob("seed_*")}
                   & {d.name for d in (args.study / args.reference).glob("seed_*")}, key=lambda s: int(s[5:]))
    if len(seeds) < 2:
        raise SystemExit(f"{args.study}: fewer than 2 seeds in both {args.baseline} and {args.reference}")
    runs = {c: [metrics(args.study / c / s) for s in seeds] for c in (args.reference, args.baseline)}
    measures = {
        f"final test return (last {args.window} evaluations)": lambda df: final_test(df, args.window),
        f"late-round training return (last {args.epochs} epochs of each of the last {args.rounds} rounds)":
            lambda df: late_train(df, args.rounds, args.epochs),
    }
    print(f"{args.study}: {args.reference} - {args.baseline}, paired t test (scipy.stats.ttest_rel), n = {len(seeds)} seeds")
    for name, measure in measures.items():
        ref = [measure(df) for df in runs[args.reference]]
        base = [measure(df) for df in runs[args.baseline]]
        result = stats.ttest_rel(ref, base)
        diff = sum(r - b for r, b in zip(ref, base)) / len(seeds)
        print(f"  {name}: mean difference {diff:+.3f}, t {result.statistic:.2f}, p {result.pvalue:.2g}")


if __name__ == "__main__":
    main()
