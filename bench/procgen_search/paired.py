"""Paired per-round comparison of a study's baseline against reset-all (plasticity-loss screen).

Runs of one seed share shift permutations and evaluation levels, so the comparison is paired by
seed. Per round r (rounds between consecutive shift points) and seed:
  train: mean training return over all epochs of the round (learning speed / trainability);
  test:  mean test return of the round's last evaluations (the last quarter of them, at least
         one, never the evaluation on the round's first epoch) (generalisation);
  test_all: mean of all the round's evaluations but the first (less noisy: one evaluation of
         50 episodes on 10 levels has a standard deviation of about 0.8 on jumper).
Then baseline minus reference per seed, and over seeds: mean difference, paired t, n.
"pooled" is each seed's mean difference over rounds >= 2, then the same paired t;
"slope" is each seed's least-squares slope of the difference against the round number
(rounds >= 1), then its t over seeds: negative = the baseline falls increasingly behind.

    python bench/procgen_search/paired.py STUDY_DIR [--baseline baseline] [--reference reset-all]

Prints Markdown tables (per-round means of both conditions and paired differences).
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
import pandas as pd
import yaml
from scipy import stats


def round_bounds(cfg: dict) -> list[tuple[int, int]]:
    p = cfg["ppo_trainer"]
    sp = list(p.get("shift_points") or [])
    return list(zip([0] + sp, sp + [p["num_epochs"]]))


def per_round(study: str, cond: str, bounds: list[tuple[int, int]]) -> dict[str, pd.DataFrame]:
    """{'train' | 'test' | 'test_all': seeds x rounds} for one condition (finished runs only)."""
    train, test, test_all = {}, {}, {}
    for path in sorted(glob.glob(os.path.join(study, cond, "seed_*", "metrics.csv"))):
        seed = int(path.split("seed_")[1].split(os.sep)[0])
        d = pd.read_csv(path)
        if d.epoch.max() < bounds[-1][1] - 1:
            continue  # unfinished run
        tr, te, ta = [], [], []
        for a, b in bounds:
            rows = d[(d.epoch >= a) & (d.epoch < b)]
            tr.append(rows.train_r.dropna().mean())
            ev = rows[rows.epoch > a].test_r.dropna().values
            te.append(ev[-max(1, len(ev) // 4):].mean() if len(ev) else np.nan)
            ta.append(ev.mean() if len(ev) else np.nan)
        train[seed], test[seed], test_all[seed] = tr, te, ta
    cols = [f"r{i + 1}" for i in range(len(bounds))]
    return {k: pd.DataFrame(v, index=cols).T for k, v in (("train", train), ("test", test), ("test_all", test_all))}


def tstat(x: np.ndarray) -> tuple[float, float, int]:
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return float(np.mean(x)) if len(x) else np.nan, np.nan, len(x)
    res = stats.ttest_1samp(x, 0.0)
    return float(x.mean()), float(res.statistic), len(x)


def report(study: str, base: str, ref: str) -> str:
    cfg = yaml.safe_load(open(os.path.join(study, "config.yaml")))
    bounds = round_bounds(cfg)
    b, r = per_round(study, base, bounds), per_round(study, ref, bounds)
    out = [f"study `{study}`: {base} - {ref}, rounds {bounds}"]
    for key in ("train", "test", "test_all"):
        seeds = b[key].index.intersection(r[key].index)
        d = b[key].loc[seeds] - r[key].loc[seeds]
        rounds = list(d.columns)
        out.append(f"\n{key} return (n = {len(seeds)} paired seeds)\n")
        out.append("| | " + " | ".join(rounds) + " | pooled r>=2 | slope/round |")
        out.append("|---" * (len(rounds) + 3) + "|")
        out.append(f"| {base} | " + " | ".join(f"{v:.2f}" for v in b[key].loc[seeds].mean()) + " | | |")
        out.append(f"| {ref} | " + " | ".join(f"{v:.2f}" for v in r[key].loc[seeds].mean()) + " | | |")
        cells = []
        for c in rounds:
            m, t, n = tstat(d[c].values)
            cells.append(f"{m:+.2f} (t {t:+.1f})")
        pooled = d[rounds[1:]].mean(axis=1).values if len(rounds) > 1 else np.array([])
        pm, pt, _ = tstat(pooled)
        x = np.arange(1, len(rounds) + 1)
        slopes = np.array([np.polyfit(x, row, 1)[0] for row in d.values]) if len(rounds) > 2 else np.array([])
        sm, st, _ = tstat(slopes)
        out.append(f"| diff (t) | " + " | ".join(cells) + f" | {pm:+.2f} (t {pt:+.1f}) | {sm:+.3f} (t {st:+.1f}) |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("--baseline", default="baseline")
    ap.add_argument("--reference", default="reset-all")
    a = ap.parse_args()
    print(report(a.study, a.baseline, a.reference))


if __name__ == "__main__":
    main()
