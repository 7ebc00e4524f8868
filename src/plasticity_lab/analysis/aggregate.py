"""Every number of a study report, computed from the frames of :func:`analysis.frames.load_study`.

Only numbers live here (figures.py draws them, report.py formats them), so each one can be checked
against a hand computation. The statistics follow DESIGN.md section 7 (see analysis/stats.py):
intervals valid at the study's n, comparisons paired by seed, Holm-adjusted p-values, verdicts
worded from them alone (analysis/verdicts.py), correlations within condition. Runs that cannot be compared fairly are never averaged in silently: they are kept
out with a reason, runs that failed are counted and shown in a sensitivity line, and every such
decision is added to ``Comparison.notes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from plasticity_lab.analysis import stats, verdicts
from plasticity_lab.analysis.frames import ROW_KEYS, STATUS_RUNNING, StudyData, load_study
from plasticity_lab.analysis.stats import Interval
from plasticity_lab.analysis.task_matrices import CONTINUAL, continual_frame, run_matrices
from plasticity_lab.config import AnalysisConfig, ConfigError

DIAGNOSTICS_PREFIX = "diagnostics/"
"""Series from diagnostics.csv are stored under this prefix, so they never collide with metrics.csv."""
PERCENT = ("dead_units", "dormant_units")
"""metrics.csv fractions the report shows in percent, as the study report does."""
COMPARED = (
    "test_r", "train_r", "dead_units", "dormant_units",
    DIAGNOSTICS_PREFIX + "overall/dead_frac", DIAGNOSTICS_PREFIX + "overall/activation_rate",
    DIAGNOSTICS_PREFIX + "dense/effective_rank", *CONTINUAL,
)
"""Final values compared with the baseline, seed by seed (comparisons.csv): returns, the training
loop's unit statistics, the probe's never-active fraction, activation rate and trunk-output
effective rank where diagnostics ran (the study report's feature-analysis quantities), and where
runs wrote task matrices their continual-learning metrics (analysis.task_matrices)."""
LOWER_IS_BETTER = ("dead_units", "dormant_units", DIAGNOSTICS_PREFIX + "overall/dead_frac", "forgetting")
"""Compared metrics where less is better (fewer dead or dormant units)."""
UNDIRECTED = (DIAGNOSTICS_PREFIX + "overall/activation_rate", DIAGNOSTICS_PREFIX + "dense/effective_rank")
"""Compared metrics with no better direction: a difference is higher or lower, nothing beats."""
CORRELATED = ("weight_m", "weight_diff", "grad_norm", "dead_units", "dormant_units", "entropy")
"""metrics.csv columns set against final test return."""
CORRELATED_PROBES = ("overall/", "dense/", "trainability_ratio", "policy_churn", "value_churn")
"""diagnostics.csv columns (by prefix) set against final test return: pooled unit statistics, the
trunk output layer and the trainability probe; per-conv-layer columns are shown as curves only,
since 75 scatter panels would hide the ones that matter."""
DEFAULT_WINDOW_FRACTION = 0.1
"""Final values average the last 10% of the test evaluations when no window is given."""
POWER_EFFECTS = (10.0, 20.0)
"""Effects (percent of the baseline's mean final test return) the seeds-needed table is for."""


@dataclass(eq=False)
class Run:
    """One ``<condition>/seed_<s>`` directory (compared by identity)."""

    condition: str
    seed: int
    series: dict[str, np.ndarray]
    """Metric name -> values indexed by epoch, NaN where nothing was logged (dead/dormant units in %)."""
    length: int
    """Epochs logged (last epoch + 1)."""
    done: bool
    status: str
    num_epochs: int | None
    shift_points: list[int]
    invocations: list[dict]
    """run.json's entries: command, device, start time, code version."""
    code_version: str
    config_differences: list[str]
    log_tail: str = ""
    failure: str = ""
    """The FAILED file's first line (a diverged run, or one the sweep gave up), if any."""
    excluded: str | None = None
    """Why the run is left out of every comparison (another protocol, nothing logged)."""

    @property
    def label(self) -> str:
        return f"{self.condition}/seed_{self.seed}"


@dataclass
class Study:
    root: Path
    data: StudyData
    baseline: str
    reference: str | None
    """Condition that normalised scores are relative to (experiment.reference or --reference)."""
    conditions: list[str]
    num_epochs: int
    shift_points: list[int]
    runs: list[Run]
    notes: list[str] = field(default_factory=list)
    provenance: list[str] = field(default_factory=list)
    """Differences between pooled runs (code versions, configs), listed when --allow-mixed pooled them."""

    @property
    def config_text(self) -> str:
        return self.data.config_text

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


def direction(metric: str) -> int:
    """+1 when a higher value of ``metric`` is better (returns), -1 when lower is, 0 when neither."""
    return -1 if metric in LOWER_IS_BETTER else 0 if metric in UNDIRECTED else 1


@dataclass
class PairedComparison:
    """One condition against another (the baseline, the reference, or any other condition when
    methods are ranked) on one metric, seed by seed."""

    condition: str
    against: str
    metric: str
    seeds: list[int]
    """Seeds with a final value in both conditions (the pairs)."""
    differences: np.ndarray
    """Per paired seed: condition - baseline."""
    diff: Interval
    """Mean paired difference, Student-t interval."""
    iqm_diff: Interval
    """IQM of the paired differences, Tukey-McLaughlin interval."""
    relative: Interval
    """Change of the condition's mean relative to the baseline's, percent, Fieller interval."""
    win: Interval
    """P(the condition beats the other in a seed) in the metric's direction (fewer dead units wins),
    Clopper-Pearson interval; NaN for a metric without a better direction."""
    test: stats.PairedTest
    """Test of mean difference 0 (sign-flip, or paired t where the differences are skewed)."""
    margin: float
    """Equivalence margin, a fraction of the other condition's mean."""
    margin_abs: float
    """The same in the metric's units: margin x |the other condition's mean over the pairs|."""
    p_equivalence: float
    """Paired TOST of a difference within +-margin of the other condition's mean."""
    unpaired: list[int] = field(default_factory=list)
    """Seeds with a final value in one of the two conditions only (left out of the pairs)."""
    p_holm: float = math.nan
    """``test.p`` Holm-adjusted over the comparisons of its table (this metric's conditions, the
    rounds of a row, or every pair of conditions)."""
    p_equivalence_holm: float = math.nan
    verdict: str = ""
    """better / worse / equivalent / inconclusive (higher / lower without a direction): analysis.verdicts."""

    @property
    def p(self) -> float:
        return self.test.p



@dataclass
class ConditionResult:
    condition: str
    finals: dict[int, dict[str, float]]
    """Seed -> metric -> final value, for the runs with a final test return."""
    test: Interval | None = None
    """Mean final test return over seeds, Student-t interval."""
    iqm: Interval | None = None
    """IQM of final test return over seeds, Tukey-McLaughlin interval."""
    dead: Interval | None = None
    dormant: Interval | None = None
    normalised: Interval | None = None
    """Mean final test return / the reference condition's, paired by seed, Fieller interval."""
    continual: dict[str, Interval] = field(default_factory=dict)
    """Continual-learning metric (analysis.task_matrices.CONTINUAL) -> mean over the seeds that
    have it, Student-t interval; only the metrics some seed has."""
    incomplete: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Run label -> why it has no final value although it should (crashed, stopped, NaN return)."""
    left_out: dict[str, str] = field(default_factory=dict)
    """Run label -> why it has no final values (failed runs included)."""

    def final_values(self, name: str) -> np.ndarray:
        return np.array([values.get(name, math.nan) for values in self.finals.values()])

    def final(self, name: str) -> dict[int, float]:
        return {seed: values.get(name, math.nan) for seed, values in self.finals.items()}


@dataclass
class MeanMatrix:
    """A condition's task-return matrices averaged over its seeds (the report's heat map)."""

    mean: np.ndarray
    """(T, T): mean over seeds of R[i][j], the test return on task j after training task i; NaN above the diagonal."""
    seeds: list[int]


@dataclass
class RoundEnd:
    """Test return at the end of each round for one condition."""

    values: list[Interval]
    """Mean over seeds of each run's end-of-round value, Student-t interval."""
    relative: list[Interval]
    """End of round k / end of round 1, paired within runs, Fieller interval."""


@dataclass
class CorrelationRow:
    names: list[str]
    """Series with identical final values in every run share one row."""
    within: stats.Correlation
    between: stats.Correlation
    runs: dict[str, list[int]]
    """Condition -> seeds the row rests on."""
    within_holm: float = math.nan
    between_holm: float = math.nan


@dataclass
class Sensitivity:
    """Results with every run that has no final value (failed) scored as the study's worst."""

    worst: float
    means: dict[str, Interval]
    paired: dict[str, PairedComparison]
    failed: dict[str, int]


@dataclass
class Comparison:
    plan: AnalysisConfig
    """The analysis plan the verdicts follow (the study's declared one, with any flags applied)."""
    horizon: int
    """Final values are taken from epochs before this one (the planned length unless no run reached it)."""
    window: tuple[int, int]
    """Epochs [start, horizon) averaged for final values."""
    evaluations: int
    """Test evaluations a final value (and each round's end) averages at most."""
    results: dict[str, ConditionResult]
    paired: dict[str, dict[str, PairedComparison]]
    """Metric -> condition -> comparison with the baseline."""
    pairwise: list[PairedComparison]
    """Every pair of conditions on the primary metric, Holm-adjusted over all pairs."""
    rounds: list[tuple[int, int]]
    """Epoch range [start, end) of each round (task) that ends within the horizon."""
    round_windows: list[tuple[int, int]]
    """Epochs each round's end value averages."""
    round_ends: dict[str, RoundEnd]
    round_loss: dict[str, list[PairedComparison]]
    """Plasticity loss itself: metric (train_r, test_r, plasticity_ratio where runs wrote task
    matrices) -> per round, the baseline minus the reference condition at the round's end, paired
    by seed, Holm-adjusted over the rounds; empty without a reference condition."""
    correlations: list[CorrelationRow]
    sensitivity: Sensitivity | None
    notes: list[str]
    task_matrices: dict[str, MeanMatrix] = field(default_factory=dict)
    """Condition -> its mean task-return matrix over the seeds whose metrics are compared; empty
    when no run wrote task_matrix.csv."""


# ---------------------------------------------------------------------------------------- loading
def _series(data: StudyData, condition: str, seed: int) -> tuple[dict[str, np.ndarray], int]:
    """Per-epoch arrays of one run, metrics then diagnostics (prefixed), NaN-padded to its length."""
    def of(frame, skip):
        part = frame[(frame["condition"] == condition) & (frame["seed"] == seed)]
        return part, [c for c in part.columns if c not in skip and part[c].notna().any()]

    metrics, names = of(data.metrics, ("condition", "seed", *ROW_KEYS))
    length = int(metrics["epoch"].max()) + 1 if len(metrics) else 0
    series = {}
    epochs = metrics["epoch"].to_numpy()
    for name in names:
        values = np.full(length, np.nan)
        values[epochs] = metrics[name].to_numpy(dtype=float) * (100.0 if name in PERCENT else 1.0)
        series[name] = values
    probes, names = of(data.diagnostics, ("condition", "seed", "epoch", "task"))
    epochs = probes["epoch"].to_numpy()
    inside = epochs < length  # probes logged past the last metrics row are dropped
    for name in names:
        values = np.full(length, np.nan)
        values[epochs[inside]] = probes[name].to_numpy(dtype=float)[inside]
        series[DIAGNOSTICS_PREFIX + name] = values
    return series, length


def open_study(
    source: str | Path | StudyData, baseline: str | None = None, reference: str | None = None, allow_mixed: bool = False,
) -> Study:
    """The report's view of a study: runs as per-epoch arrays, checked for comparability.

    Raises ConfigError when there is nothing to report, when ``baseline``/``reference`` has no
    runs, or when the pooled runs differ beyond their condition's overrides or come from different
    code versions (unless ``allow_mixed``; then the differences are in ``Study.provenance``).
    """
    data = source if isinstance(source, StudyData) else load_study(source)
    trainer = data.config.get("ppo_trainer") or {}
    experiment = data.config.get("experiment") or {}
    found = sorted(set(data.runs["condition"]))
    for flag, name in (("--baseline", baseline), ("--reference", reference)):
        if name is not None and name not in found:
            raise ConfigError(f"{flag} {name}: no runs of that condition; conditions with runs: {', '.join(found)}")
    runs = []
    for row in data.runs.itertuples(index=False):
        series, length = _series(data, row.condition, row.seed)
        runs.append(Run(
            row.condition, int(row.seed), series, length, bool(row.done), row.status,
            None if row.num_epochs is None or (isinstance(row.num_epochs, float) and math.isnan(row.num_epochs)) else int(row.num_epochs),
            list(row.shift_points), list(row.invocations), row.code_version, list(row.config_differences), row.log_tail,
            row.failure,
        ))
    study = Study(
        data.root, data, baseline or experiment.get("baseline", "baseline"),
        reference or experiment.get("reference"), data.conditions,
        int(trainer["num_epochs"]), list(trainer.get("shift_points") or []), runs,
    )
    if study.reference is not None and study.reference not in found:
        study.notes.append(f"reference condition '{study.reference}' has no runs: no normalised scores.")
        study.reference = None
    _check_runs(study)
    _check_provenance(study, allow_mixed)
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
    unmarked = [r.label for r in study.runs if not r.done and r.length >= study.num_epochs]
    for run in study.runs:
        if not run.done and run.length < study.num_epochs:
            state = "running" if run.status == STATUS_RUNNING else "stopped: no DONE file and no live process"
            study.notes.append(f"{run.label} is incomplete ({state}): {run.length} of {study.num_epochs} epochs logged.")
        elif run.done and run.excluded is None and run.length < study.num_epochs:
            study.notes.append(f"{run.label} has a DONE file but metrics.csv stops after {run.length} of {study.num_epochs} epochs.")
    if unmarked:
        study.notes.append(
            f"{len(unmarked)} run(s) logged all {study.num_epochs} epochs but have no DONE file (e.g. copied or "
            f"committed without it); they are treated as finished: {', '.join(unmarked)}."
        )
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


def _check_provenance(study: Study, allow_mixed: bool) -> None:
    """Refuse to pool runs made by different code or with configs that differ beyond their
    condition, unless ``allow_mixed``; list the differences either way."""
    pooled = [r for r in study.runs if r.excluded is None]
    versions: dict[str, list[str]] = {}
    for run in pooled:
        versions.setdefault(run.code_version, []).append(run.label)
    differing = {r.label: r.config_differences for r in pooled if r.config_differences}
    known = [v for v in versions if v != "unknown"]
    if not known:
        study.notes.append(
            "no run records its code version (runs made before run.json recorded it): the report cannot check "
            "that the pooled runs come from one version of the code."
        )
    elif any(v.endswith("dirty") or "+dirty " in v for v in known):
        study.notes.append("some runs were made from a working tree with uncommitted changes (+dirty): those changes are not recorded.")
    mixed_code = len(versions) > 1 or any(", " in v for v in versions)
    if not (mixed_code or differing):
        return
    lines = []
    if mixed_code:
        lines += [f"code version {version}: {', '.join(labels)}" for version, labels in versions.items()]
    lines += [f"{label}: {'; '.join(diffs)}" for label, diffs in differing.items()]
    if not allow_mixed:
        what = " and ".join(filter(None, (
            f"{len(versions)} code versions ({', '.join(versions)})" if mixed_code else "",
            f"{len(differing)} run(s) whose config differs beyond its condition's overrides (e.g. "
            f"{next(iter(differing))}: {next(iter(differing.values()))[0]})" if differing else "",
        )))
        raise ConfigError(
            f"{study.root}: the runs to pool come from {what}; pass --allow-mixed to pool them anyway "
            "(every difference is then listed in the report)"
        )
    study.provenance = lines
    study.notes.append(
        "runs that differ in code version or config are pooled because --allow-mixed was given; see 'Provenance' for every difference."
    )


# ------------------------------------------------------------------------------------- helpers
def curve_matrix(runs: list[Run], name: str) -> np.ndarray:
    """(runs, epochs) values of one series, NaN-padded to the longest run."""
    length = max((r.length for r in runs), default=0)
    out = np.full((len(runs), length), np.nan)
    for i, run in enumerate(runs):
        if name in run.series:
            out[i, : run.length] = run.series[name]
    return out


def curve_band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds (axis 0) of ``values`` (seeds, points) with a pointwise Student-t 95% band,
    and the number of seeds behind each point.

    Each point uses the seeds that have a value there (points are grouped by which seeds those are,
    one vectorised interval per group); points with fewer than two seeds get no band.
    """
    present = np.isfinite(values)
    count = present.sum(axis=0)
    mean, lo, hi = (np.full(values.shape[1], np.nan) for _ in range(3))
    patterns, group = np.unique(present.T, axis=0, return_inverse=True)
    for k, pattern in enumerate(patterns):
        seeds, points = np.flatnonzero(pattern), np.flatnonzero(group.ravel() == k)
        if len(seeds):
            mean[points], lo[points], hi[points] = stats.t_interval(values[np.ix_(seeds, points)].T)
    return mean, lo, hi, count


def epoch_range(start: int, end: int) -> str:
    """Human text for epochs [start, end)."""
    return f"epoch {start}" if end - start == 1 else f"epochs {start}-{end - 1}"


def seed_list(seeds: list[int]) -> str:
    """0,1,2,3,5 -> '0-3, 5'."""
    out, seeds = [], sorted(seeds)
    i = 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        out.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}" if j > i + 1 else f"{seeds[i]}, {seeds[j]}")
        i = j + 1
    return ", ".join(out)


def window_mean(values: np.ndarray, start: int, end: int) -> float:
    """Mean of the logged values in epochs [start, end); NaN when none was logged there."""
    part = values[start:end]
    part = part[np.isfinite(part)]
    return float(part.mean()) if len(part) else math.nan


def evaluation_count(total: int, final_window: int | None) -> int:
    """Test evaluations averaged for a final value: ``final_window`` or the last 10%."""
    return final_window or max(1, math.ceil(DEFAULT_WINDOW_FRACTION * total))


def last_evaluations_start(test_epochs: np.ndarray, count: int, floor: int) -> int:
    """First epoch of a window holding the last ``count`` of ``test_epochs``, never before ``floor``."""
    return max(floor, int(test_epochs[-min(count, len(test_epochs))])) if len(test_epochs) else floor


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


def _evaluated(runs: list[Run], start: int, end: int) -> np.ndarray:
    """Epochs in [start, end) at which any of ``runs`` logged a test return."""
    found = [start + np.flatnonzero(np.isfinite(r.series.get("test_r", np.array([]))[start:end])) for r in runs]
    return np.unique(np.concatenate(found)) if found else np.array([], dtype=int)


def compare(study: Study, plan: AnalysisConfig | None = None, reps: int = 99_999, seed: int = 0) -> Comparison:
    """Final values, paired comparisons with verdicts, all pairs of conditions on the primary
    metric, per-round view, correlations and sensitivity of a study.

    ``plan`` (default: AnalysisConfig's defaults): ``final_window``, the number of last test
    evaluations averaged for final values (default: the last 10% of the evaluations before the
    horizon), never reaching back before the last task's first epoch; the primary metric, the
    equivalence margin and alpha of the verdicts. ``reps``: random sign patterns of a sign-flip
    test with more than 20 pairs (below, every pattern is enumerated).
    """
    plan = plan or AnalysisConfig()
    final_window = plan.final_window
    notes = list(study.notes)
    horizon = _horizon(study, notes)
    pooled = [r for r in study.runs if r.excluded is None]
    eligible = [r for r in pooled if r.length >= horizon > 0]
    test_epochs = _evaluated(eligible, 0, horizon)
    count = evaluation_count(len(test_epochs), final_window)
    last_task = max([0, *(s for s in study.shift_points if s < horizon)])
    start = last_evaluations_start(test_epochs, count, last_task) if len(test_epochs) else horizon
    if len(test_epochs) and int(test_epochs[-min(count, len(test_epochs))]) < last_task:
        notes.append(
            f"final window clipped to the last task ({epoch_range(start, horizon)}): the last {count} test evaluations "
            f"would reach back across the shift at epoch {last_task}, into another task."
        )
    if final_window and final_window > len(test_epochs) and len(test_epochs):
        notes.append(f"--final-window {final_window} is more than the {len(test_epochs)} test evaluations; all are used.")
    results = {
        condition: _condition_result(study, condition, eligible, start, horizon, last_task, notes) for condition in study.conditions
    }
    task_matrices = _continual(study, results, notes)
    paired = {metric: _paired(study, results, metric, plan, reps, seed) for metric in COMPARED}
    paired = {metric: table for metric, table in paired.items() if table}
    _normalised(study, results)
    rounds, windows, round_ends = _round_view(study, results, horizon, count, notes)
    return Comparison(
        plan, horizon, (start, horizon), count, results, paired, _pairwise(results, plan, reps, seed), rounds, windows,
        round_ends, _round_loss(study, results, windows, plan, reps, seed), _correlations(study, results),
        _sensitivity(study, results, plan, reps, seed), notes, task_matrices,
    )


def _condition_result(
    study: Study, condition: str, eligible: list[Run], start: int, horizon: int, last_task: int, notes: list[str],
) -> ConditionResult:
    result = ConditionResult(condition, {})
    for run in study.runs:
        if run.condition != condition:
            continue
        if not run.done and run.length < study.num_epochs:
            result.incomplete.append(f"seed_{run.seed} ({run.length}/{study.num_epochs})")
        if run.excluded:
            result.left_out[run.label] = run.excluded
            continue
        if run not in eligible:
            why = f"only {run.length} of {horizon} epochs logged"
            if run.status == STATUS_RUNNING:
                result.left_out[run.label] = why + " (still running; in the curves only)"
            else:
                result.failed[run.label] = why + (
                    f": FAILED ({run.failure})" if run.failure else " and no live process: crashed, killed or stopped"
                    + (f" (train.log: {run.log_tail})" if run.log_tail else ""))
            continue
        if not np.isfinite(run.series.get("test_r", np.array([]))).any():
            result.failed[run.label] = "test_r never logged"
            notes.append(f"{run.label}: test_r is empty in every row (no evaluation logged); counted as failed.")
            continue
        finals = _final_values(run, start, horizon, last_task)
        if math.isnan(finals["test_r"]):
            result.failed[run.label] = f"no test_r in the final window ({epoch_range(start, horizon)})"
            notes.append(f"{run.label}: no test_r in the final window ({epoch_range(start, horizon)}); counted as failed.")
        else:
            result.finals[run.seed] = finals
    result.left_out.update(result.failed)
    test = result.final_values("test_r")
    if len(test):
        result.test = stats.mean_estimate(test)
        result.iqm = stats.iqm_estimate(test)
        for attr, name in (("dead", "dead_units"), ("dormant", "dormant_units")):
            values = result.final_values(name)
            if np.isfinite(values).any():
                setattr(result, attr, stats.mean_estimate(values))
    return result


def _final_values(run: Run, start: int, horizon: int, last_task: int) -> dict[str, float]:
    """Each series averaged over the final window; a probe series with no probe inside the window
    uses its last probe of the same (last) task, since probes are rarer than evaluations, and is
    NaN when the last task has none."""
    finals = {}
    for name, values in run.series.items():
        begin = start
        if name.startswith(DIAGNOSTICS_PREFIX):
            logged = np.flatnonzero(np.isfinite(values[:horizon]))
            begin = min(start, max(last_task, int(logged[-1]))) if len(logged) else start
        finals[name] = window_mean(values, begin, horizon)
    finals.setdefault("test_r", math.nan)
    return finals


def paired_comparison(
    condition: str, against: str, metric: str, values: dict[int, float], base: dict[int, float],
    plan: AnalysisConfig, reps: int = 99_999, seed: int = 0,
) -> PairedComparison:
    """``values`` (of ``condition``) vs ``base`` (of ``against``), seed -> final value, over the
    seeds both have; Holm's adjustment and the verdict come from :func:`decide` over its table."""
    have = {s for s, v in values.items() if math.isfinite(v)}
    have_base = {s for s, v in base.items() if math.isfinite(v)}
    seeds = sorted(have & have_base)
    x = np.array([values[s] for s in seeds])
    y = np.array([base[s] for s in seeds])
    d = x - y
    sign = direction(metric)
    win = stats.win_rate(x, y) if sign > 0 else stats.win_rate(y, x) if sign < 0 else Interval(math.nan, n=len(d))
    margin = plan.equivalence_margin
    return PairedComparison(
        condition, against, metric, seeds, d, stats.mean_estimate(d), stats.iqm_estimate(d), stats.relative_change(x, y),
        win, stats.paired_test(d, reps, seed), margin, margin * abs(float(y.mean())) if len(y) else math.nan,
        float(stats.equivalence_p(x, y, margin)) if len(d) else math.nan, unpaired=sorted(have ^ have_base),
    )


def decide(table: list[PairedComparison], alpha: float) -> None:
    """Holm-adjust a table's tests (of a difference, of equivalence) over its rows, then word each
    row's verdict (analysis.verdicts)."""
    adjusted = zip(stats.holm([c.p for c in table]), stats.holm([c.p_equivalence for c in table]))
    for c, (p_holm, p_equivalence_holm) in zip(table, adjusted):
        c.p_holm, c.p_equivalence_holm = float(p_holm), float(p_equivalence_holm)
        c.verdict = verdicts.verdict(c.diff.value, c.p_holm, c.p_equivalence_holm, direction(c.metric), alpha)


def _paired(
    study: Study, results: dict[str, ConditionResult], metric: str, plan: AnalysisConfig, reps: int, seed: int,
) -> dict[str, PairedComparison]:
    """Every condition vs the baseline on ``metric``, Holm-adjusted across the conditions."""
    base = results.get(study.baseline)
    if base is None or not base.finals or not any(math.isfinite(v) for v in base.final(metric).values()):
        return {}
    table = {
        condition: paired_comparison(condition, study.baseline, metric, result.final(metric), base.final(metric), plan, reps, seed)
        for condition, result in results.items()
        if condition != study.baseline and result.finals and any(math.isfinite(v) for v in result.final(metric).values())
    }
    decide(list(table.values()), plan.alpha)
    return table


def _pairwise(
    results: dict[str, ConditionResult], plan: AnalysisConfig, reps: int, seed: int,
) -> list[PairedComparison]:
    """Every pair of conditions on the primary metric, Holm-adjusted over all the pairs: the family
    that a claim "X is best" (X chosen after seeing the data) implies."""
    metric = plan.primary
    finals = {c: r.final(metric) for c, r in results.items() if any(math.isfinite(v) for v in r.final(metric).values())}
    names = list(finals)
    table = [
        paired_comparison(a, b, metric, finals[a], finals[b], plan, reps, seed)
        for i, a in enumerate(names) for b in names[i + 1:]
    ]
    table = [c for c in table if c.seeds]
    decide(table, plan.alpha)
    return table


def pairwise_verdicts(table: list[PairedComparison], condition: str) -> dict[str, str]:
    """Other condition -> the verdict of ``condition`` against it, from the all-pairs table."""
    out = {}
    for c in table:
        if c.condition == condition:
            out[c.against] = c.verdict
        elif c.against == condition:
            out[c.condition] = verdicts.OPPOSITE.get(c.verdict, c.verdict)
    return out


def _normalised(study: Study, results: dict[str, ConditionResult]) -> None:
    """Mean final test return relative to the reference condition's, paired by seed."""
    reference = results.get(study.reference) if study.reference else None
    if reference is None or not reference.finals:
        return
    ref = reference.final("test_r")
    for result in results.values():
        own = result.final("test_r")
        seeds = sorted(s for s in own if s in ref)
        if seeds:
            result.normalised = stats.ratio_estimate(np.array([own[s] for s in seeds]), np.array([ref[s] for s in seeds]))


def _round_view(
    study: Study, results: dict[str, ConditionResult], horizon: int, count: int, notes: list[str],
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], dict[str, RoundEnd]]:
    """Test return at the end of each round (task) that ends within the horizon.

    A round's end is measured like the final value: the mean of its last ``count`` test
    evaluations, never reaching into the previous round; so the last round's value is the results
    table's final value. Since round-end evaluation was added to the training loop, each round's
    last epoch is among them; older runs may end their rounds earlier, which is noted.
    """
    bounds = [0, *study.shift_points, study.num_epochs]
    rounds = [(a, b) for a, b in zip(bounds, bounds[1:]) if b <= horizon]
    if len(rounds) < len(bounds) - 1 and horizon:
        notes.append(f"per-round view: only the {len(rounds)} round(s) that end by epoch {horizon} are shown.")
    runs = {c: [r for r in study.runs_of(c) if r.seed in results[c].finals] for c in results}
    everyone = [r for group in runs.values() for r in group]
    windows, early = [], []
    for k, (a, b) in enumerate(rounds):
        evaluated = _evaluated(everyone, a, b)
        windows.append((last_evaluations_start(evaluated, count, a), b))
        if len(evaluated) and evaluated[-1] < b - 1:
            early.append(f"round {k + 1} at epoch {evaluated[-1]} ({b - 1 - evaluated[-1]} before its end)")
    if early:
        notes.append(
            "some rounds have no test evaluation at their last epoch (runs made before round-end evaluation), so their "
            f"end values are measured early; last evaluation of {', '.join(early)}."
        )
    round_ends = {}
    for condition, group in runs.items():
        if not group:
            continue
        per_run = np.array([[window_mean(r.series["test_r"], a, b) for a, b in windows] for r in group]).reshape(len(group), len(windows))
        values = [stats.mean_estimate(per_run[:, k]) for k in range(len(windows))]
        relative = [stats.ratio_estimate(per_run[:, k], per_run[:, 0]) for k in range(len(windows))]
        round_ends[condition] = RoundEnd(values, relative)
    return rounds, windows, round_ends


ROUND_LOSS_METRICS = ("train_r", "test_r", "plasticity_ratio")
"""Training return (trainability: can it still fit the new task), test return (generalisation) and,
where runs wrote task matrices, each task's plasticity ratio (the return right after training it
over the reference's, whose own ratio is 1)."""


def round_metric(metric: str, k: int) -> str:
    """comparisons.csv's name of ``metric`` at the end of round ``k`` (0-based): ``<metric>_round_<k + 1>``."""
    return f"{metric}_round_{k + 1}"


def _round_loss(
    study: Study, results: dict[str, ConditionResult], windows: list[tuple[int, int]], plan: AnalysisConfig, reps: int, seed: int,
) -> dict[str, list[PairedComparison]]:
    """The baseline minus the reference condition (e.g. reset-all: a fresh network every round,
    which carries nothing across shifts) at the end of every round, seed by seed, on the
    round-end windows of the per-round view. A baseline that falls further behind round after
    round is losing plasticity; round 1, before any shift, is the check of the pairing (0 when
    both conditions run the same first task from the same initialisation)."""
    ref = study.reference
    if ref is None or ref == study.baseline or not windows or study.baseline not in results or ref not in results:
        return {}
    out: dict[str, list[PairedComparison]] = {}
    for metric in ROUND_LOSS_METRICS:
        def ends(condition: str) -> list[dict[int, float]]:
            if metric == "plasticity_ratio":  # per task, among the final values (_continual)
                return [results[condition].final(round_metric(metric, k)) for k in range(len(windows))]
            runs = [r for r in study.runs_of(condition) if r.seed in results[condition].finals and metric in r.series]
            return [{r.seed: window_mean(r.series[metric], a, b) for r in runs} for a, b in windows]

        base, reference = ends(study.baseline), ends(ref)
        table = [paired_comparison(study.baseline, ref, metric, base[k], reference[k], plan, reps, seed) for k in range(len(windows))]
        if not any(c.seeds for c in table):
            continue
        decide(table, plan.alpha)
        out[metric] = table
    return out


def _continual(study: Study, results: dict[str, ConditionResult], notes: list[str]) -> dict[str, MeanMatrix]:
    """Each run's continual-learning metrics (analysis.task_matrices) added to its final values, so
    they are compared like any other metric, with per task the plasticity ratio as
    ``plasticity_ratio_round_K``; forward transfer and plasticity ratios against the reference
    condition's run of the same seed. Only runs with final values and a matrix of every task of the
    study count. Returns each condition's mean matrix over those runs; notes every run left out and
    every metric without a value (absent, never 0)."""
    unreadable = {(row.condition, row.seed): row.task_matrix_error for row in study.data.runs.itertuples(index=False)
                  if row.task_matrix_error}
    notes += [f"{c}/seed_{s}: {error}; no continual-learning metrics." for (c, s), error in unreadable.items()]
    if study.data.task_matrix.empty:
        return {}
    tasks = len(study.shift_points) + 1
    matrices = {}
    for (condition, seed), matrix in run_matrices(study.data.task_matrix).items():
        if condition not in results or seed not in results[condition].finals:
            continue
        if len(matrix) == tasks:
            matrices[(condition, seed)] = matrix
        else:
            notes.append(f"{condition}/seed_{seed}: task_matrix.csv covers {len(matrix)} of the study's {tasks} tasks; "
                         "no continual-learning metrics.")
    written = set(zip(study.data.task_matrix["condition"], study.data.task_matrix["seed"])) | set(unreadable)
    without: dict[str, list[int]] = {}
    for condition, result in results.items():
        for seed in result.finals:
            if (condition, seed) not in written:
                without.setdefault(condition, []).append(seed)
    if without:
        notes.append(f"no task_matrix.csv (evaluation.task_matrix off, or a run made before it) for {_runs_text(without)}: "
                     "their continual-learning metrics are absent.")
    reasons: dict[str, dict[str, list[int]]] = {}
    for row in continual_frame(matrices, study.reference).to_dict("records"):
        values = results[row["condition"]].finals[row["seed"]]
        values.update({name: row[name] for name in CONTINUAL if math.isfinite(row[name])})
        values.update({round_metric("plasticity_ratio", k): r for k, r in enumerate(row["plasticity_ratios"]) if math.isfinite(r)})
        for reason in row["undefined"]:
            reasons.setdefault(reason, {}).setdefault(row["condition"], []).append(row["seed"])
    notes += [f"{reason}: absent for {_runs_text(runs)} (not counted as 0)." for reason, runs in reasons.items()]
    for result in results.values():
        for name in CONTINUAL:
            values = result.final_values(name)
            if np.isfinite(values).any():
                result.continual[name] = stats.mean_estimate(values)
    by_condition: dict[str, dict[int, np.ndarray]] = {}
    for (condition, seed), matrix in matrices.items():
        by_condition.setdefault(condition, {})[seed] = matrix
    return {
        condition: MeanMatrix(np.mean(list(seeds.values()), axis=0), sorted(seeds))
        for condition, seeds in by_condition.items()
    }


def _runs_text(runs: dict[str, list[int]]) -> str:
    """{condition: seeds} -> 'baseline seeds 0-3; method seed 2'."""
    return "; ".join(f"{c} seed{'s' if len(s) > 1 else ''} {seed_list(s)}" for c, s in runs.items())


def _correlated_names(study: Study) -> list[str]:
    return [
        n for n in study.metric_names()
        if n in CORRELATED or (n.startswith(DIAGNOSTICS_PREFIX) and n[len(DIAGNOSTICS_PREFIX):].startswith(CORRELATED_PROBES))
    ]


def _correlations(study: Study, results: dict[str, ConditionResult]) -> list[CorrelationRow]:
    """Each plasticity metric's final value against final test return: within condition (repeated
    measures over runs) and between conditions (over condition means), Holm-adjusted per view.
    Series whose final values are identical in every run (e.g. dead_frac and dormant_0 of a ReLU
    network) share one row."""
    entries = [(c, s, f) for c, result in results.items() for s, f in result.finals.items()]
    if not entries:
        return []
    groups = np.array([c for c, _, _ in entries])
    test = np.array([f["test_r"] for _, _, f in entries])
    rows: list[CorrelationRow] = []
    seen: list[np.ndarray] = []
    for name in _correlated_names(study):
        x = np.array([f.get(name, math.nan) for _, _, f in entries])
        duplicate = next((i for i, other in enumerate(seen) if np.allclose(x, other, equal_nan=True, rtol=0, atol=1e-12)), None)
        if duplicate is not None:
            rows[duplicate].names.append(name)
            continue
        seen.append(x)
        keep = np.isfinite(x) & np.isfinite(test)
        runs: dict[str, list[int]] = {}
        for (c, s, _), used in zip(entries, keep):
            if used:
                runs.setdefault(c, []).append(s)
        means = [(np.mean(x[(groups == c) & keep]), np.mean(test[(groups == c) & keep])) for c in runs]
        between = stats.between_correlation(np.array([m[0] for m in means]), np.array([m[1] for m in means]))
        rows.append(CorrelationRow([name], stats.within_correlation(x, test, groups), between, runs))
    for attr, view in (("within_holm", "within"), ("between_holm", "between")):
        for row, adjusted in zip(rows, stats.holm([getattr(r, view).p for r in rows])):
            setattr(row, attr, float(adjusted))
    return rows


def _sensitivity(
    study: Study, results: dict[str, ConditionResult], plan: AnalysisConfig, reps: int, seed: int,
) -> Sensitivity | None:
    """When runs failed: every condition's mean and paired comparison with each failed run scored as
    the worst final test return of the study, so a method that crashes often cannot look better
    for it."""
    failed = {c: r.failed for c, r in results.items() if r.failed}
    finals = [v for r in results.values() for v in r.final_values("test_r") if math.isfinite(v)]
    if not failed or not finals:
        return None
    worst = float(min(finals))
    scored = {condition: result.final("test_r") for condition, result in results.items()}
    for run in study.runs:
        if run.label in results[run.condition].failed:
            scored[run.condition][run.seed] = worst
    means = {c: stats.mean_estimate(np.array(list(v.values()))) for c, v in scored.items() if v}
    paired = {}
    if study.baseline in scored and scored[study.baseline]:
        paired = {
            c: paired_comparison(c, study.baseline, "test_r", v, scored[study.baseline], plan, reps, seed)
            for c, v in scored.items() if c != study.baseline and v
        }
        decide(list(paired.values()), plan.alpha)
    return Sensitivity(worst, means, paired, {c: len(f) for c, f in failed.items()})


# ------------------------------------------------------------------------------------------ power
@dataclass
class PowerRow:
    label: str
    n_pairs: int
    sd: float
    seeds: dict[tuple[float, bool], int]
    """(effect in % of the baseline mean, Holm over the table's comparisons) -> seeds needed."""


@dataclass
class PowerAnalysis:
    baseline_mean: float
    effects: tuple[float, ...]
    comparisons: int
    alpha: float
    power: float
    rows: list[PowerRow]


def power_analysis(
    study: Study, comparison: Comparison, effects: tuple[float, ...] = POWER_EFFECTS, alpha: float = 0.05, power: float = 0.8,
) -> PowerAnalysis | None:
    """Seeds needed per condition to detect a paired difference of ``effects`` percent of the
    baseline's mean final test return, from the observed spread of per-seed differences.

    Rows: the pooled standard deviation of the differences over all conditions (degrees of freedom
    summed), the same at its one-sided 80% upper confidence bound (a planning value that a lucky
    small-sample estimate cannot talk down), and each condition's own. Seeds are given for a single
    comparison at ``alpha`` and for the smallest p of a Holm-adjusted table of all the comparisons
    (``alpha / k``).
    """
    table = comparison.paired.get("test_r", {})
    base = comparison.results.get(study.baseline)
    if not table or base is None or base.test is None or not math.isfinite(base.test.value):
        return None
    k = len(table)
    usable = [c for c in table.values() if len(c.differences) >= 2]
    df = sum(len(c.differences) - 1 for c in usable)
    pooled = math.sqrt(sum((len(c.differences) - 1) * np.var(c.differences, ddof=1) for c in usable) / df) if df else math.nan

    def row(label: str, n: int, sd: float) -> PowerRow:
        seeds = {
            (pct, strict): stats.seeds_needed(pct / 100 * abs(base.test.value), sd, alpha / k if strict else alpha, power).seeds
            for pct in effects for strict in (False, True)
        }
        return PowerRow(label, n, sd, seeds)

    rows = [row("all conditions (pooled SD)", df + len(usable), pooled),
            row("all conditions (80% upper bound of SD)", df + len(usable), stats.sd_upper_bound(pooled, df))]
    rows += [row(c.condition, len(c.differences), float(np.std(c.differences, ddof=1)) if len(c.differences) >= 2 else math.nan)
             for c in table.values()]
    return PowerAnalysis(base.test.value, tuple(effects), k, alpha, power, rows)

