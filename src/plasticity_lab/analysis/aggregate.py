"""Load a study's run directories and compute every number of its report.

Only numbers live here (figures.py draws them, report.py formats them), so each one can be checked
against a hand computation. Runs that cannot be compared fairly are never averaged in silently:
they are kept out with a reason, and every such decision is added to ``Comparison.notes``.

Layout read (DESIGN.md section 3): ``RESULTS_DIR/config.yaml`` and
``RESULTS_DIR/<condition>/seed_<s>/{metrics.csv, diagnostics.csv, config.yaml, run.json, DONE}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from plasticity_lab.config import ConfigError

NOT_METRICS = ("epoch", "env_steps", "wall_time", "task")
"""metrics.csv columns that describe the row rather than the agent."""
DIAGNOSTICS_PREFIX = "diagnostics/"
"""Series from diagnostics.csv are stored under this prefix, so they never collide with metrics.csv."""
CORRELATED = ("weight_m", "weight_diff", "grad_norm", "dead_units", "entropy")
"""metrics.csv columns set against final test return."""
CORRELATED_PROBES = ("overall/", "dense/", "trainability_ratio", "policy_churn", "value_churn")
"""diagnostics.csv columns (by prefix) set against final test return: pooled unit statistics, the
trunk output layer and the trainability probe; per-conv-layer columns are shown as curves only,
since 75 scatter panels would hide the ones that matter."""
DEFAULT_WINDOW_FRACTION = 0.1
"""Final values average the last 10% of the test evaluations when no window is given."""
CI_LEVEL = 0.95


@dataclass(eq=False)
class Run:
    """One ``<condition>/seed_<s>`` directory as read from disk (compared by identity)."""

    condition: str
    seed: int
    series: dict[str, np.ndarray]
    """Metric name -> values indexed by epoch, NaN where nothing was logged."""
    length: int
    """Epochs logged (last epoch + 1)."""
    done: bool
    num_epochs: int | None
    shift_points: list[int]
    invocations: list[dict[str, Any]]
    excluded: str | None = None
    """Why the run is left out of every comparison (another protocol, nothing logged)."""

    @property
    def label(self) -> str:
        return f"{self.condition}/seed_{self.seed}"


@dataclass
class Study:
    root: Path
    config_text: str
    baseline: str
    conditions: list[str]
    num_epochs: int
    shift_points: list[int]
    runs: list[Run]
    notes: list[str] = field(default_factory=list)

    def runs_of(self, condition: str) -> list[Run]:
        """The condition's comparable runs (those not excluded), by seed."""
        return [r for r in self.runs if r.condition == condition and r.excluded is None]

    def metric_names(self) -> list[str]:
        """Every series logged by some comparable run: metrics.csv order first, then diagnostics."""
        names: dict[str, None] = {}
        for run in self.runs:
            if run.excluded is None:
                names.update(dict.fromkeys(run.series))
        return sorted(names, key=lambda n: n.startswith(DIAGNOSTICS_PREFIX))


@dataclass
class Estimate:
    """A point estimate with its 95% CI (``lo``/``hi`` are NaN when there are too few seeds)."""

    value: float
    lo: float = math.nan
    hi: float = math.nan


@dataclass
class ConditionResult:
    condition: str
    finals: dict[str, dict[str, float]]
    """Seed label -> metric -> final value, for the runs that reached the horizon."""
    test: Estimate | None = None
    """Mean final test return over seeds, bootstrap CI of the mean."""
    dead: Estimate | None = None
    iqm: Estimate | None = None
    vs_baseline_pct: float = math.nan
    improvement: Estimate | None = None
    """P(this condition's final test return > the baseline's), rliable."""
    incomplete: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)
    """Run label -> why it has no final values."""

    def final_values(self, name: str) -> np.ndarray:
        return np.array([values.get(name, math.nan) for values in self.finals.values()])


@dataclass
class Correlation:
    name: str
    r: float
    p: float
    n: int
    why_none: str = ""


@dataclass
class Comparison:
    horizon: int
    """Final values are taken from epochs before this one (the planned length unless no run reached it)."""
    window: tuple[int, int]
    """Epochs [start, horizon) averaged for final values."""
    results: dict[str, ConditionResult]
    rounds: list[tuple[int, int]]
    """Epoch range [start, end) of each round (task) that ends within the horizon."""
    round_ends: dict[str, list[float]]
    """Condition -> mean over seeds of test return at the end of each round."""
    correlations: list[Correlation]
    notes: list[str]


# ---------------------------------------------------------------------------------------- loading
def read_epoch_csv(path: Path) -> dict[str, np.ndarray]:
    """Columns of a per-epoch CSV as float arrays indexed by epoch (NaN for empty cells).

    The training loop appends and flushes one row per epoch, so a file read mid-run may end in a
    half-written line: a last line without its newline, or any row with a wrong field count, is
    skipped rather than parsed into a wrong number.
    """
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines = lines[:-1]
    if not lines:
        return {}
    header = [h.strip() for h in lines[0].split(",")]
    if "epoch" not in header:
        return {}
    rows: list[tuple[int, list[str]]] = []
    epoch_col = header.index("epoch")
    for line in lines[1:]:
        cells = line.split(",")
        if len(cells) != len(header):
            continue
        try:
            epoch = int(cells[epoch_col])
        except ValueError:
            continue
        if epoch >= 0:
            rows.append((epoch, cells))
    length = max((epoch for epoch, _ in rows), default=-1) + 1
    columns = {name: np.full(length, np.nan) for name in header if name not in NOT_METRICS}
    for epoch, cells in rows:
        for name, cell in zip(header, cells):
            if name in columns and cell.strip():
                try:
                    columns[name][epoch] = float(cell)
                except ValueError:
                    pass
    return columns


def _yaml(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def _read_run(condition: str, seed: int, path: Path) -> Run:
    series = read_epoch_csv(path / "metrics.csv") if (path / "metrics.csv").exists() else {}
    if "dead_units" in series:
        series["dead_units"] = series["dead_units"] * 100.0  # the study report shows dead units in %
    length = max((len(v) for v in series.values()), default=0)
    if (path / "diagnostics.csv").exists():
        for name, values in read_epoch_csv(path / "diagnostics.csv").items():
            series[DIAGNOSTICS_PREFIX + name] = values
    series = {name: _pad(values, length) for name, values in series.items()}
    trainer = _yaml(path / "config.yaml").get("ppo_trainer", {})
    try:
        invocations = json.loads((path / "run.json").read_text()).get("invocations", [])
    except (OSError, ValueError):  # not written yet, or cut short: the report just lists no command
        invocations = []
    return Run(
        condition, seed, series, length, (path / "DONE").exists(),
        trainer.get("num_epochs"), list(trainer.get("shift_points") or []), invocations,
    )


def _pad(values: np.ndarray, length: int) -> np.ndarray:
    """Cut or NaN-pad to ``length`` epochs (probes logged past the last metrics row are dropped)."""
    out = np.full(length, np.nan)
    out[: min(length, len(values))] = values[:length]
    return out


def load_study(results_dir: str | Path, baseline: str | None = None) -> Study:
    """Read every run under ``results_dir``; raises ConfigError when there is nothing to report."""
    root = Path(results_dir)
    config_path = root / "config.yaml"
    if not config_path.exists():
        raise ConfigError(f"{config_path}: not found; is {root} a study directory (results/NAME)?")
    config_text = config_path.read_text()
    config = yaml.safe_load(config_text) or {}
    trainer = config.get("ppo_trainer", {})
    if "num_epochs" not in trainer:
        raise ConfigError(f"{config_path}: ppo_trainer.num_epochs is missing")
    experiment = config.get("experiment", {})
    runs = [
        _read_run(cond_dir.name, int(seed_dir.name[len("seed_"):]), seed_dir)
        for cond_dir in sorted(p for p in root.iterdir() if p.is_dir())
        for seed_dir in sorted(cond_dir.glob("seed_*"), key=lambda p: p.name)
        if seed_dir.is_dir() and seed_dir.name[len("seed_"):].isdigit()
    ]
    runs.sort(key=lambda r: (r.condition, r.seed))
    if not runs:
        raise ConfigError(f"{root}: no run directories (<condition>/seed_<s>/) found")
    configured = list(experiment.get("conditions", {}))
    found = sorted({r.condition for r in runs})
    chosen = baseline or experiment.get("baseline", "baseline")
    if baseline is not None and baseline not in found:
        raise ConfigError(f"--baseline {baseline}: no runs of that condition; conditions with runs: {', '.join(found)}")
    study = Study(
        root, config_text, chosen, configured + [c for c in found if c not in configured],
        int(trainer["num_epochs"]), list(trainer.get("shift_points", [])), runs,
    )
    _check_runs(study)
    return study


def _check_runs(study: Study) -> None:
    """Mark runs that cannot be compared, and note every irregularity a reader should know."""
    for run in study.runs:
        if run.length == 0:
            run.excluded = "metrics.csv is missing or has no complete row yet"
        elif run.num_epochs is not None and (run.num_epochs, run.shift_points) != (study.num_epochs, study.shift_points):
            run.excluded = (
                f"trained for {run.num_epochs} epochs with shifts at {run.shift_points}, but the study's "
                f"config.yaml says {study.num_epochs} epochs with shifts at {study.shift_points}"
            )
        elif run.length > study.num_epochs:
            run.excluded = f"metrics.csv has {run.length} epochs, more than the study's {study.num_epochs}"
        if run.excluded:
            study.notes.append(f"{run.label} is left out of all curves and final values: {run.excluded}.")
    for run in study.runs:
        if not run.done:
            study.notes.append(f"{run.label} is incomplete (no DONE file): {run.length} of {study.num_epochs} epochs logged.")
        elif run.excluded is None and run.length < study.num_epochs:
            study.notes.append(f"{run.label} has a DONE file but metrics.csv stops after {run.length} of {study.num_epochs} epochs.")
    if study.baseline not in {r.condition for r in study.runs}:
        study.notes.append(f"baseline condition '{study.baseline}' has no runs: changes vs baseline cannot be computed.")
    for condition in study.conditions:
        runs = study.runs_of(condition)
        lengths = sorted({r.length for r in runs})
        if len(lengths) > 1:
            study.notes.append(
                f"{condition}: seeds have different lengths ({', '.join(f'{r.seed}: {r.length}' for r in runs)} epochs); "
                "its curves are dotted where they average fewer seeds."
            )
        if not [r for r in study.runs if r.condition == condition]:
            study.notes.append(f"{condition}: configured but no runs yet.")


# ------------------------------------------------------------------------------------- statistics
def curve_matrix(runs: list[Run], name: str) -> np.ndarray:
    """(runs, epochs) values of one series, NaN-padded to the longest run."""
    length = max((r.length for r in runs), default=0)
    out = np.full((len(runs), length), np.nan)
    for i, run in enumerate(runs):
        if name in run.series:
            out[i, : run.length] = run.series[name]
    return out


def bootstrap_mean_ci(values: np.ndarray, reps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds (axis 0) of ``values`` (seeds, points) with a 95% percentile-bootstrap band.

    Whole seeds are resampled, so a band says how much the curve depends on which seeds were run.
    Each point uses the seeds that have a value there (points are grouped by which seeds those
    are, one vectorised bootstrap per group); points with fewer than two seeds get no band.
    """
    present = np.isfinite(values)
    count = present.sum(axis=0)
    mean = np.where(count > 0, np.where(present, values, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
    lo, hi = np.full(values.shape[1], np.nan), np.full(values.shape[1], np.nan)
    patterns, group = np.unique(present.T, axis=0, return_inverse=True)
    for k, pattern in enumerate(patterns):
        seeds, points = np.flatnonzero(pattern), np.flatnonzero(group.ravel() == k)
        if len(seeds) < 2:
            continue
        weights = rng.multinomial(len(seeds), np.full(len(seeds), 1 / len(seeds)), size=reps) / len(seeds)
        boot = weights @ values[np.ix_(seeds, points)]
        tail = 100 * (1 - CI_LEVEL) / 2
        lo[points], hi[points] = np.percentile(boot, [tail, 100 - tail], axis=0)
    return mean, lo, hi


def _rliable_interval(scores: np.ndarray | list[np.ndarray], func: Callable[..., float], reps: int, seed: int) -> Estimate:
    """rliable's stratified-bootstrap CI; each score array is (runs, 1): one task per study.

    rliable draws its resamples from numpy's global RNG (its ``random_state`` is not used for
    them), so the global state is seeded for reproducible reports and restored afterwards.
    """
    from rliable import library

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        points, intervals = library.get_interval_estimates(
            {"x": scores}, lambda *s: np.array([func(*s)]), reps=reps, confidence_interval_size=CI_LEVEL,
        )
    finally:
        np.random.set_state(state)
    return Estimate(float(points["x"][0]), float(intervals["x"][0, 0]), float(intervals["x"][1, 0]))


def iqm_ci(scores: np.ndarray, reps: int, seed: int = 0) -> Estimate:
    """Interquartile mean over seeds with a 95% stratified-bootstrap CI (no CI below 2 seeds)."""
    from rliable import metrics

    scores = np.asarray(scores, dtype=float).reshape(-1, 1)
    if len(scores) < 2:
        return Estimate(float(metrics.aggregate_iqm(scores)))
    return _rliable_interval(scores, metrics.aggregate_iqm, reps, seed)


def improvement_ci(scores: np.ndarray, baseline_scores: np.ndarray, reps: int, seed: int = 0) -> Estimate:
    """P(a run of ``scores`` beats a run of ``baseline_scores``) with a 95% CI (rliable)."""
    from rliable import metrics

    x = np.asarray(scores, dtype=float).reshape(-1, 1)
    y = np.asarray(baseline_scores, dtype=float).reshape(-1, 1)
    if len(x) < 2 or len(y) < 2:
        return Estimate(float(metrics.probability_of_improvement(x, y)))
    return _rliable_interval([x, y], metrics.probability_of_improvement, reps, seed)


def change_pct(value: float, baseline: float) -> float:
    """Change of ``value`` relative to ``baseline`` in percent (NaN when the baseline is 0)."""
    return (value - baseline) / abs(baseline) * 100.0 if baseline else math.nan


def epoch_range(start: int, end: int) -> str:
    """Human text for epochs [start, end)."""
    return f"epoch {start}" if end - start == 1 else f"epochs {start}-{end - 1}"


def window_mean(values: np.ndarray, start: int, end: int) -> float:
    """Mean of the logged values in epochs [start, end); NaN when none was logged there."""
    part = values[start:end]
    part = part[np.isfinite(part)]
    return float(part.mean()) if len(part) else math.nan


def last_evaluations_start(test_epochs: np.ndarray, final_window: int | None) -> int:
    """First epoch of the final window: the last ``final_window`` evaluations (default: last 10%)."""
    n = final_window or max(1, math.ceil(DEFAULT_WINDOW_FRACTION * len(test_epochs)))
    return int(test_epochs[-min(n, len(test_epochs))])


def pearson(x: np.ndarray, y: np.ndarray, name: str) -> Correlation:
    """Pearson r (and its two-sided p) over the runs where both values exist."""
    from scipy import stats

    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return Correlation(name, math.nan, math.nan, len(x), "fewer than 3 runs")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(name, math.nan, math.nan, len(x), "constant across runs")
    r, p = stats.pearsonr(x, y)
    return Correlation(name, float(r), float(p), len(x))


# ------------------------------------------------------------------------------------- comparison
def _horizon(study: Study, notes: list[str]) -> int:
    """The epoch count final values compare at: the planned length, else the shortest run with test_r."""
    tested = [r for r in study.runs if r.excluded is None and np.isfinite(r.series.get("test_r", [])).any()]
    if any(r.length >= study.num_epochs for r in tested):
        return study.num_epochs
    if not tested:
        notes.append("no run has logged test_r yet: there are no final values to compare.")
        return 0
    horizon = min(r.length for r in tested)
    notes.append(
        f"no run has reached the planned {study.num_epochs} epochs yet: final values compare every run over "
        f"its first {horizon} epochs (the common range), not at the end of training."
    )
    return horizon


def compare(study: Study, final_window: int | None = None, reps: int = 2000, seed: int = 0) -> Comparison:
    """Final values, table statistics, per-round view and correlations of a loaded study.

    ``final_window``: number of last test evaluations averaged for final values (default: the last
    10% of the evaluations before the horizon). Other metrics are averaged over the same epochs.
    """
    notes = list(study.notes)
    horizon = _horizon(study, notes)
    eligible = [r for r in study.runs if r.excluded is None and r.length >= horizon > 0]
    tested = [r for r in eligible if np.isfinite(r.series.get("test_r", [])[:horizon]).any()]
    for run in sorted(set(eligible) - set(tested), key=lambda r: r.label):
        notes.append(f"{run.label}: test_r is empty in every row (no evaluation logged); left out of final values.")
    test_epochs = np.unique(np.concatenate(
        [np.flatnonzero(np.isfinite(r.series["test_r"][:horizon])) for r in tested] or [np.array([], dtype=int)]
    ))
    start = last_evaluations_start(test_epochs, final_window) if len(test_epochs) else horizon
    if final_window and final_window > len(test_epochs) and len(test_epochs):
        notes.append(f"--final-window {final_window} is more than the {len(test_epochs)} test evaluations; all are used.")
    results = {}
    for condition in study.conditions:
        result = ConditionResult(condition, {})
        for run in study.runs:
            if run.condition != condition:
                continue
            if not run.done:
                result.incomplete.append(f"seed_{run.seed} ({run.length}/{study.num_epochs})")
            if run.excluded:
                result.left_out[run.label] = run.excluded
            elif run in tested:
                finals = _final_values(run, start, horizon)
                if math.isnan(finals["test_r"]):
                    result.left_out[run.label] = f"no test_r in the final window ({epoch_range(start, horizon)})"
                    notes.append(f"{run.label}: no test_r in the final window ({epoch_range(start, horizon)}); left out of final values.")
                else:
                    result.finals[run.label] = finals
            elif run in eligible:
                result.left_out[run.label] = "test_r never logged"
            else:
                result.left_out[run.label] = f"only {run.length} of {horizon} epochs logged (in the curves only)"
        results[condition] = result
    _table_statistics(results, study.baseline, reps, seed)
    rounds, round_ends = _round_view(study, results, horizon, final_window, notes)
    return Comparison(horizon, (start, horizon), results, rounds, round_ends, _correlations(study, results), notes)


def _final_values(run: Run, start: int, horizon: int) -> dict[str, float]:
    """Each series averaged over the final window; a probe series with no probe inside the window
    uses its last probe before the horizon, since probes are rarer than evaluations."""
    finals = {}
    for name, values in run.series.items():
        begin = start
        if name.startswith(DIAGNOSTICS_PREFIX):
            logged = np.flatnonzero(np.isfinite(values[:horizon]))
            begin = min(start, int(logged[-1])) if len(logged) else start
        finals[name] = window_mean(values, begin, horizon)
    finals.setdefault("test_r", math.nan)
    return finals


def _table_statistics(results: dict[str, ConditionResult], baseline: str, reps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = results.get(baseline)
    base_test = base.final_values("test_r") if base else np.array([])
    for result in results.values():
        test = result.final_values("test_r")
        if not len(test):
            continue
        result.test = Estimate(*(float(v[0]) for v in bootstrap_mean_ci(test[:, None], reps, rng)))
        dead = result.final_values("dead_units")
        if np.isfinite(dead).all():
            result.dead = Estimate(*(float(v[0]) for v in bootstrap_mean_ci(dead[:, None], reps, rng)))
        result.iqm = iqm_ci(test, reps, seed)
        if len(base_test) and result.condition != baseline:
            result.vs_baseline_pct = change_pct(result.test.value, float(base_test.mean()))
            result.improvement = improvement_ci(test, base_test, reps, seed)


def _round_view(
    study: Study, results: dict[str, ConditionResult], horizon: int, final_window: int | None, notes: list[str],
) -> tuple[list[tuple[int, int]], dict[str, list[float]]]:
    """Test return at the end of each round (task) that ends within the horizon, mean over seeds.

    The end of a round is its own final window: its last ``final_window`` evaluations, or its
    last 10% by default, so a round's value never includes the next task.
    """
    bounds = [0, *study.shift_points, study.num_epochs]
    rounds = [(a, b) for a, b in zip(bounds, bounds[1:]) if b <= horizon]
    if len(rounds) < len(bounds) - 1 and horizon:
        notes.append(f"per-round view: only the {len(rounds)} round(s) that end by epoch {horizon} are shown.")
    round_ends = {}
    for condition, result in results.items():
        runs = [r for r in study.runs_of(condition) if r.label in result.finals]
        if not runs:
            continue
        ends = []
        for a, b in rounds:
            per_run = []
            for run in runs:
                logged = a + np.flatnonzero(np.isfinite(run.series["test_r"][a:b]))
                per_run.append(window_mean(run.series["test_r"], last_evaluations_start(logged, final_window), b) if len(logged) else math.nan)
            ends.append(float(np.mean(per_run)))
        round_ends[condition] = ends
    return rounds, round_ends


def relative_to_first_round(ends: list[float]) -> list[float]:
    """Each round's end-of-round return divided by round 1's (NaN when round 1's is not positive)."""
    first = ends[0] if ends else math.nan
    return [e / first if first > 0 else math.nan for e in ends]


def _correlations(study: Study, results: dict[str, ConditionResult]) -> list[Correlation]:
    finals = [values for result in results.values() for values in result.finals.values()]
    names = [
        n for n in study.metric_names()
        if n in CORRELATED or (n.startswith(DIAGNOSTICS_PREFIX) and n[len(DIAGNOSTICS_PREFIX):].startswith(CORRELATED_PROBES))
    ]
    test = np.array([f["test_r"] for f in finals])
    return [pearson(np.array([f.get(name, math.nan) for f in finals]), test, name) for name in names]
