"""``plab report``: figures, ``summary.md``, ``comparisons.csv`` and one self-contained
``report.html`` for a study.

Both documents are rendered from the same sections (paragraphs, bullet lists, tables, figures),
so the Markdown and the HTML never disagree. The HTML embeds its figures as base64 PNG data URIs
and has no script or external stylesheet: it opens offline, attached to a mail or an issue.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pydantic import ValidationError

from plasticity_lab.analysis import verdicts
from plasticity_lab.analysis.aggregate import (
    Comparison,
    PairedComparison,
    PowerAnalysis,
    Study,
    compare,
    direction,
    epoch_range,
    open_study,
    pairwise_verdicts,
    power_analysis,
    round_metric,
    seed_list,
)
from plasticity_lab.analysis.figures import label, write_figures
from plasticity_lab.analysis.frames import code_version_text
from plasticity_lab.analysis.stats import (
    CI_LEVEL,
    EXACT_SIGN_FLIP_MAX,
    SKEW_ALPHA,
    SKEW_TEST_MIN,
    WEAK_BELOW,
    Interval,
    min_sign_flip_pairs,
)
from plasticity_lab.analysis.task_matrices import CONTINUAL, matrix_cost
from plasticity_lab.config import AnalysisConfig, ConfigError, load_analysis
from plasticity_lab.experiment.study import is_reference_study, write_atomic

REPORTS_DIR = "reports"
"""Where ``plab report`` writes the report of a committed reference study unless told otherwise."""


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Code:
    text: str


@dataclass
class Images:
    figures: dict[str, Path]
    grid: bool = False
    """Small multiples side by side in the HTML (one per row otherwise)."""


Block = str | list[str] | Table | Code | Images


def output_dir(results_dir: Path, out: str | Path | None, in_place: bool) -> Path:
    """Where a report goes: ``out``; else the study itself, except for a committed reference study
    (read-only unless ``in_place``), whose report goes to reports/<name>/ (gitignored)."""
    if out is not None and in_place:
        raise ConfigError("--out and --in-place: give one of them (--in-place writes into RESULTS_DIR itself)")
    if in_place:
        return results_dir
    if out is not None:
        target = Path(out)
        if is_reference_study(target):
            raise ConfigError(
                f"--out {target}: a committed reference study (REFERENCE.md) is read-only; "
                "pass --in-place with it as RESULTS_DIR to regenerate its committed report"
            )
        return target
    if is_reference_study(results_dir):
        return Path(REPORTS_DIR) / results_dir.resolve().name
    return results_dir


def report(
    results_dir: str | Path,
    *,
    out: str | Path | None = None,
    in_place: bool = False,
    final_window: int | None = None,
    baseline: str | None = None,
    reference: str | None = None,
    reps: int = 99_999,
    smooth: int | None = None,
    allow_mixed: bool = False,
    primary: str | None = None,
    equivalence_margin: float | None = None,
) -> Path:
    """Write comparison_figures/, summary.md, comparisons.csv and report.html; returns report.html.

    Output goes to ``out`` (default: ``results_dir``; for a committed reference study
    reports/<name>/ unless ``in_place``). ``final_window`` (last test evaluations averaged for
    final values), ``primary`` and ``equivalence_margin`` override the study's declared analysis
    plan (config.yaml's ``analysis``; default: the last 10% within the last task, test_r, 0.1),
    and the report says which were overridden. ``baseline``/``reference``:
    conditions compared against / normalised by (default: config.yaml's experiment.baseline /
    experiment.reference). ``reps``: random sign patterns of sign-flip tests with more than 20
    pairs. ``smooth``: curve smoothing window in epochs (default: 1% of the planned epochs).
    ``allow_mixed``: pool runs from different code versions or with configs that differ beyond
    their condition (listed in the report). Notes on incomplete or mismatched runs are printed too.
    """
    for flag, value in (("--final-window", final_window), ("--reps", reps), ("--smooth", smooth)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: must be a whole number >= 1")
    root = Path(results_dir)
    target = output_dir(root, out, in_place)
    study = open_study(root, baseline, reference, allow_mixed)
    plan, plan_text = analysis_plan(study, final_window=final_window, primary=primary, equivalence_margin=equivalence_margin)
    comparison = compare(study, plan, reps=reps)
    power = power_analysis(study, comparison)
    smooth_epochs = smooth if smooth is not None else max(1, study.num_epochs // 100)
    target.mkdir(parents=True, exist_ok=True)
    figures = write_figures(study, comparison, target / "comparison_figures", smooth_epochs=smooth_epochs)
    sections = _sections(study, comparison, power, figures, target, plan_text, reps)
    title = f"Study report: {root.resolve().name}"
    write_atomic(target / "comparisons.csv", comparisons_frame(study, comparison).to_csv(index=False, float_format="%.6g"))
    write_atomic(target / "summary.md", _markdown(title, sections, target))
    commands = ("Commands that produced the runs", [_commands_table(study)])
    config = ("Resolved config (config.yaml)", [Code(study.config_text)])
    html_path = target / "report.html"
    write_atomic(html_path, _html(title, [*sections, commands, config]))
    if target != root:
        print(f"note: report of {root} written to {target}")
    print(f"note: {plan_text}")
    for note in comparison.notes:
        print(f"note: {note}")
    return html_path


def analysis_plan(study: Study, **flags: object) -> tuple[AnalysisConfig, str]:
    """The study's declared analysis plan (config.yaml's ``analysis``) with the command-line
    ``flags`` that are not None applied, and a sentence saying which was declared and which overridden."""
    declared = load_analysis(study.data.config, str(study.root / "config.yaml"))
    base = declared or AnalysisConfig()
    given = {key: value for key, value in flags.items() if value is not None}
    try:
        plan = AnalysisConfig.model_validate({**base.model_dump(), **given})
    except ValidationError as err:
        first = err.errors()[0]
        key = str(first["loc"][0])
        raise ConfigError(f"--{key.replace('_', '-')} {given.get(key)}: {first['msg']}") from None
    window = ("the last test evaluation" if plan.final_window == 1 else f"the last {plan.final_window} test evaluations"
              if plan.final_window else "the last 10% of the test evaluations")
    text = (f"Analysis plan: final values over {window}; primary metric {plan.primary}; equivalence margin "
            f"+-{plan.equivalence_margin:.0%} of the baseline's mean; alpha {plan.alpha:g} after Holm's adjustment. ")
    text += ("Declared in the study's config.yaml (analysis)." if declared else
             "The study's config.yaml declares no analysis section, so these are the defaults, not a plan fixed before the runs.")
    changed = [f"--{k.replace('_', '-')} {v} (declared: {getattr(base, k)})" for k, v in given.items() if v != getattr(base, k)]
    if changed:
        text += f" Overridden on the command line: {', '.join(changed)}."
    return plan, text


# ------------------------------------------------------------------------------------- numbers as text
def _num(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def _ci(estimate: Interval | None, spec: str = ".2f", unit: str = "") -> str:
    """``value [lo, hi] (n=N)``; weak below WEAK_BELOW values, 'no CI' for one value."""
    if estimate is None or not math.isfinite(estimate.value):
        return "n/a"
    value = _num(estimate.value, spec) + unit
    weak = ", weak" if estimate.n < WEAK_BELOW else ""
    if not estimate.has_interval:
        return f"{value} (n={estimate.n}, no CI)"
    if not estimate.bounded:
        return f"{value} [unbounded] (n={estimate.n}{weak})"
    return f"{value} [{_num(estimate.lo, spec)}, {_num(estimate.hi, spec)}] (n={estimate.n}{weak})"


def _p(value: float) -> str:
    return _num(value, ".3g")


def _seed_values(values: dict[int, float], spec: str = ".2f") -> str:
    """The seeds themselves (shown where there are too few for a strong interval)."""
    return ", ".join(f"s{seed}: {_num(v, spec)}" for seed, v in sorted(values.items()))


def _window_text(study: Study, comparison: Comparison) -> str:
    start, end = comparison.window
    if end <= start:
        return "No final values yet: no run has a test evaluation to compare."
    planned = "" if end == study.num_epochs else f" (the planned length is {study.num_epochs} epochs)"
    return (
        f"Final values are means over {epoch_range(start, end)}{planned}, at most the last {comparison.evaluations} test "
        f"evaluation{'s' if comparison.evaluations != 1 else ''} and never before the last task's first epoch: test return "
        "over the evaluations in that range, every "
        "other metric over the same epochs. Each round's end in the per-round view is measured the same way, so the last "
        "round equals the final value."
    )


def statistics_text(plan: AnalysisConfig, reps: int) -> str:
    return (
        "Statistics (DESIGN.md section 7). The seed is the unit: runs of one seed share evaluation levels, shift "
        "permutations and (where shapes match) initialisation across conditions, so every comparison uses per-seed "
        "differences (pairs). Every interval is a two-sided 95% interval with its n beside it: means use Student's t; "
        "IQMs (interquartile means, rliable's definition) the Tukey-McLaughlin trimmed-mean interval; changes in "
        "percent, normalised scores and round ratios Fieller's interval for a ratio of paired means ('unbounded' when "
        "the denominator is not clearly away from 0); P(beats) the exact Clopper-Pearson interval, in the metric's "
        "direction (fewer dead or dormant units beats). The README's simulated coverage names its conditions: these "
        "intervals hold about 95% when the per-seed differences are roughly symmetric (normal scores, or skewed scores "
        "with symmetric noise), but under-cover when the differences themselves are skewed (lognormal differences: "
        "t 0.82-0.84, Fieller 0.90-0.94 at n = 3-10), and both tests below are then liberal. "
        "p tests a mean difference of 0 with the sign-flip permutation test, which assumes the differences are "
        f"symmetric: exact (all 2^n sign patterns) up to n = {EXACT_SIGN_FLIP_MAX}, smallest p 2/2^n, so fewer than "
        f"{min_sign_flip_pairs(0.05)} pairs can never give p < 0.05; above, Monte Carlo over {reps} random patterns, "
        f"smallest p 2/{reps + 1} = {2 / (reps + 1):.2g}. With {SKEW_TEST_MIN} or more pairs the differences are "
        f"checked for skew (D'Agostino's skewtest); where its p < {SKEW_ALPHA:g}, p is the paired t test's instead. "
        "Below that, symmetry is assumed. Each p says which test it is. p (Holm) is adjusted over its table's rows. "
        f"Verdicts: better / worse only when p (Holm) <= {plan.alpha:g}, in the metric's direction (higher / lower "
        "where a metric has none); equivalent only when the paired TOST (two one-sided t tests) shows the difference "
        f"within +-{plan.equivalence_margin:.0%} of the compared-against condition's mean, Holm-adjusted; otherwise "
        f"inconclusive, never 'no effect'. With fewer than {WEAK_BELOW} seeds an interval is marked weak and the seeds "
        "are listed."
    )


def _sections(
    study: Study, comparison: Comparison, power: PowerAnalysis | None, figures: dict[str, Path], target: Path,
    plan_text: str, reps: int,
) -> list[tuple[str, list[Block]]]:
    intro = [
        f"Results directory: {study.root}. Baseline: {study.baseline}. "
        f"Reference for normalised scores: {study.reference or 'none (set experiment.reference)'}. Shift points: "
        f"{', '.join(map(str, study.shift_points)) or 'none'}. Planned epochs: {study.num_epochs}.",
        plan_text,
        _window_text(study, comparison),
        statistics_text(comparison.plan, reps),
    ]
    sections: list[tuple[str, list[Block]]] = [("Overview", intro)]
    if comparison.notes:
        sections.append(("Notes: incomplete, mismatched, failed or excluded runs", [comparison.notes]))

    def pick(*names: str) -> dict[str, Path]:
        return {caption: path for caption, path in figures.items() if path.name in names}

    results: list[Block] = [_results_table(study, comparison), _paired_table(study, comparison), _verdict_table(comparison)]
    if comparison.sensitivity is not None:
        results.append(_sensitivity_table(study, comparison))
    results.append(Images(pick("test_reward_comparison.png", "dead_units_comparison.png", "summary_comparison.png",
                               "paired_differences.png", "iqm_test_return.png", "performance_profiles.png")))
    sections += [
        ("Results", results),
        ("Return at the end of each round",
         [_rounds_table(comparison) if comparison.rounds and comparison.round_ends else "No round has ended within the compared epochs yet."]
         + ([_round_loss_table(study, comparison)] if comparison.round_loss else [])),
        *([("Forgetting and transfer (task-return matrix)", [
            *_continual_tables(study, comparison),
            Images(pick(*(p.name for p in figures.values() if p.name.startswith("task_matrix_"))), grid=True),
        ])] if comparison.task_matrices else []),
        ("Method vs method: every pair of conditions", _pairwise_blocks(comparison)),
        ("Plasticity metrics vs. final test return", [_correlation_table(comparison), Images(pick("correlations.png"))]),
        ("Seeds needed", [_power_table(power) if power else "Needs paired final values of the baseline and another condition."]),
        ("Provenance", _provenance_blocks(study)),
        ("Every logged metric", [Images(pick(*(p.name for p in figures.values() if p.name.startswith("metric_"))), grid=True)]),
        ("Runs", [_runs_table(study, comparison)]),
    ]
    # plab analyze writes beside the report (reports/<name>/ for a committed study), else into the study
    feature_dir = next((d for d in (target / "feature_analysis", study.root / "feature_analysis") if d.is_dir()), None)
    if feature_dir is not None:
        blocks: list[Block] = ["Probe-set analysis of the saved networks, as written by plab analyze."]
        if (feature_dir / "summary.csv").exists():
            blocks.append(_csv_table(feature_dir / "summary.csv"))
        blocks.append(Images({p.stem.replace("_", " "): p for p in sorted(feature_dir.glob("*.png"))}))
        sections.insert(-1, ("Feature analysis", blocks))
    return sections


def _results_table(study: Study, comparison: Comparison) -> Table:
    dormant = any(r.dormant is not None for r in comparison.results.values())
    normalised = study.reference is not None
    header = ["Condition", "Test return: mean [95% CI]", "IQM [95% CI]", "Dead units"]
    header += ["Dormant units"] if dormant else []
    header += [f"Test return / {study.reference}"] if normalised else []
    header += ["Seeds (final test return)", "Failed", "Incomplete runs (epochs)"]
    rows = []
    for condition, result in comparison.results.items():
        runs = sum(r.condition == condition for r in study.runs)
        test = result.final("test_r")
        row = [
            condition, _ci(result.test), _ci(result.iqm),
            _ci(result.dead, ".1f", "%") if result.dead else "n/a",
        ]
        row += [_ci(result.dormant, ".1f", "%") if result.dormant else "n/a"] if dormant else []
        if normalised:
            row.append("1 (reference)" if condition == study.reference else _ci(result.normalised) if result.normalised else "n/a")
        seeds = _seed_values(test) if 0 < len(test) < WEAK_BELOW else f"{len(test)} of {runs}" if len(test) else "none"
        row += [seeds, str(len(result.failed)) if result.failed else "0", ", ".join(result.incomplete) or "-"]
        rows.append(row)
    return Table(
        header, rows,
        "Mean and IQM of the seeds' final test returns with 95% intervals (t; Tukey-McLaughlin) and n. Dead units: "
        "exactly-zero trunk outputs (n/a where the activation has no exact zeros)"
        + ("; dormant units: ReDo score <= 0.025, defined for every activation" if dormant else "")
        + (f"; / {study.reference}: ratio of means paired by seed (Fieller)" if normalised else "")
        + f". Seeds: with fewer than {WEAK_BELOW} the values themselves, else how many of the condition's runs have one. "
        "Failed: runs that should have a final value and have none (crashed, stopped, no test return); see the "
        "sensitivity table when there are any.",
    )


def _test_name(c: PairedComparison) -> str:
    """The test behind a p, short: 'sign-flip, exact', 'sign-flip, Monte Carlo' or 'paired t'."""
    return c.test.test.split(" (")[0]


def _paired_table(study: Study, comparison: Comparison) -> Table | str:
    metric = comparison.plan.primary
    table = comparison.paired.get(metric, {})
    if not table:
        return f"No paired comparison: {study.baseline} and the other conditions share no seed with a final {label(metric)} yet."
    rows = []
    for condition, c in table.items():
        differences = dict(zip(c.seeds, c.differences))
        rows.append([
            condition, _ci(c.diff), _ci(c.relative, "+.1f", "%"), _ci(c.iqm_diff), f"{_p(c.p)} ({_test_name(c)})",
            _p(c.p_holm), f"{_p(c.p_equivalence_holm)} (+-{_num(c.margin_abs, '.3g')})", _ci(c.win), c.verdict,
            _seed_values(differences, "+.2f") if len(c.seeds) < WEAK_BELOW else "-",
        ])
    better = "lower" if direction(metric) < 0 else "higher"
    return Table(
        ["Condition", f"Difference vs {study.baseline} [95% CI]", "Change [95% CI]", "IQM of differences [95% CI]",
         "p (test)", f"p (Holm, k={len(table)})", f"Equivalence p (Holm; margin)",
         f"P(beats {study.baseline} in a seed) [95% CI]", "Verdict", "Per-seed differences"],
        rows,
        f"Primary metric ({label(metric)}), paired by seed: condition minus {study.baseline} in the same seed's final "
        "value; n = seeds with both. Change: relative to the baseline's mean (Fieller). p: the test named beside it "
        "(see Statistics: sign-flip, exact or Monte Carlo, or the paired t test where the differences are skewed; "
        "comparisons.csv has both and the skewness check); p (Holm): adjusted over the table's rows. Equivalence p: "
        f"paired TOST of a difference within +-{comparison.plan.equivalence_margin:.0%} of the baseline's mean (the "
        f"margin in the metric's units beside it), Holm-adjusted. P(beats): fraction of seeds where the condition's "
        f"value is {better} (the metric's better direction), Clopper-Pearson interval (never [1, 1] from a few "
        "seeds). Verdict: from these numbers alone (Statistics). All numbers, also for the other metrics, are in "
        "comparisons.csv.",
    )


def _verdict_table(comparison: Comparison) -> Table | str:
    primary = comparison.plan.primary
    metrics = sorted(comparison.paired, key=lambda m: m != primary)
    conditions = list(dict.fromkeys(c for m in metrics for c in comparison.paired[m]))
    if not conditions:
        return "No verdicts: no paired comparison yet."
    rows = []
    for condition in conditions:
        cells = []
        for metric in metrics:
            c = comparison.paired[metric].get(condition)
            cells.append(f"{c.verdict} ({_num(c.relative.value, '+.1f')}%)" if c else "-")
        rows.append([condition, *cells])
    header = [f"{label(m)} ({'primary' if m == primary else 'secondary'}; {'lower' if direction(m) < 0 else 'no direction' if direction(m) == 0 else 'higher'} is better)"
              for m in metrics]
    return Table(
        ["Condition", *header], rows,
        "Verdict of each condition against the baseline per compared metric, with the change in percent; each "
        "metric's column is Holm-adjusted over its conditions. Only the primary metric's verdicts are confirmatory: "
        "the secondary columns are not adjusted across metrics and are exploratory. Metrics without a better "
        "direction say higher or lower.",
    )


def _pairwise_blocks(comparison: Comparison) -> list[Block]:
    table = comparison.pairwise
    if not table:
        return ["Needs two conditions with paired final values."]
    metric = comparison.plan.primary
    names = list(dict.fromkeys(n for c in table for n in (c.condition, c.against)))
    best = [n for n in names if verdicts.best(n, pairwise_verdicts(table, n)) == "holds"]
    decided = [c for c in table if c.verdict != verdicts.INCONCLUSIVE]
    blocks: list[Block] = [
        f"All {len(table)} pairs of the {len(names)} conditions on {label(metric)}, Holm-adjusted over every pair: "
        "the family that a claim 'X is the best method' implies when X is chosen after seeing the data. "
        + (f"Best: {best[0]}, better than every other condition." if best else "No condition is better than every other.")
        + " A method-vs-method comparison made any other way (e.g. plab report --baseline X) is exploratory."
    ]
    if decided:
        blocks.append(Table(
            ["Condition", "vs", "Difference [95% CI]", "Change [95% CI]", "p (test)", f"p (Holm, k={len(table)})",
             "Equivalence p (Holm)", "Verdict"],
            [[c.condition, c.against, _ci(c.diff), _ci(c.relative, "+.1f", "%"), f"{_p(c.p)} ({_test_name(c)})",
              _p(c.p_holm), _p(c.p_equivalence_holm), c.verdict] for c in decided],
            "The pairs with a verdict other than inconclusive; every pair is in comparisons.csv (role 'all pairs').",
        ))
    blocks.append(f"{len(table) - len(decided)} of {len(table)} pairs are inconclusive.")
    return blocks


def _sensitivity_table(study: Study, comparison: Comparison) -> Table:
    sensitivity = comparison.sensitivity
    rows = []
    for condition, result in comparison.results.items():
        paired = sensitivity.paired.get(condition)
        rows.append([
            condition, str(sensitivity.failed.get(condition, 0)), _ci(result.test), _ci(sensitivity.means.get(condition)),
            _ci(paired.diff) if paired else "-", _p(paired.p_holm) if paired else "-",
        ])
    return Table(
        ["Condition", "Failed runs", "Mean as reported [95% CI]", "Mean, failed runs as worst [95% CI]",
         f"Difference vs {study.baseline}, failed as worst [95% CI]", "p (Holm)"],
        rows,
        f"Sensitivity: every failed run scored as the worst final test return of the study ({_num(sensitivity.worst)}), "
        "so a method that fails often cannot look better for leaving its failures out.",
    )


def _rounds_table(comparison: Comparison) -> Table:
    header = ["Condition", "n"] + [
        f"round {k + 1} (end: {epoch_range(*w)})" for k, w in enumerate(comparison.round_windows)
    ]
    rows = []
    for condition, ends in comparison.round_ends.items():
        n = max((v.n for v in ends.values), default=0)
        cells = [
            f"{_ci(value)}; x{_num(rel.value)}" + (f" [{_num(rel.lo)}, {_num(rel.hi)}]" if k and rel.has_interval else "")
            for k, (value, rel) in enumerate(zip(ends.values, ends.relative))
        ]
        rows.append([condition, str(n)] + cells)
    return Table(
        header, rows,
        "Test return at the end of each round (task): per run the mean of the round's last test evaluations (as many "
        "as the final window, within the round), then the mean over seeds with its 95% t interval; x: relative to the "
        "end of round 1, paired within runs (Fieller; 'unbounded' shown as n/a ends when round 1 is not clearly away "
        "from 0). The last round equals the results table.",
    )


def _round_loss_table(study: Study, comparison: Comparison) -> Table:
    names = {"train_r": "training return", "test_r": "test return", "plasticity_ratio": "plasticity ratio - 1 (task matrix)"}
    rows = []
    for metric, table in comparison.round_loss.items():
        n = max(len(c.seeds) for c in table)
        rows.append([names.get(metric, metric), str(n)] + [
            f"{_ci(c.diff, '+.3g')}; p {_p(c.p_holm)}; {c.verdict}" if c.seeds else "- (see Notes)" for c in table])
    return Table(
        ["Return", "n"] + [f"round {k + 1}" for k in range(len(comparison.round_windows))], rows,
        f"Plasticity loss per round: {study.baseline} minus {study.reference} at each round's end (the windows of the "
        f"table above; training return averaged over the same epochs), paired by seed: mean difference with its 95% t "
        f"interval, p (the test named in comparisons.csv) Holm-adjusted over the rounds of the row, and the verdict of "
        f"{study.baseline} against {study.reference}. {study.reference} carries "
        f"nothing across a shift, so a difference that grows negative round after round is plasticity lost; round 1 "
        "precedes every shift. Every number of this table, with the seeds paired, is in comparisons.csv (metric "
        "train_r_round_K / test_r_round_K"
        + (" / plasticity_ratio_round_K). Plasticity ratio: per seed, the baseline's return on task K right after "
           f"training it over {study.reference}'s (the task-return matrix's diagonal), minus {study.reference}'s own "
           "ratio of 1." if "plasticity_ratio" in comparison.round_loss else ")."),
    )


CONTINUAL_HEADINGS = {
    "final_average_return": "Final average return", "forgetting": "Forgetting (lower is better)",
    "backward_transfer": "Backward transfer", "forward_transfer": "Forward transfer vs {reference}",
    "plasticity_ratio": "Plasticity ratio vs {reference} (mean over tasks)",
}


def _continual_tables(study: Study, comparison: Comparison) -> list[Block]:
    """Each condition's continual-learning metrics, then each condition against the baseline on them."""
    headings = {m: CONTINUAL_HEADINGS[m].format(reference=study.reference) for m in CONTINUAL}
    shown = [m for m in CONTINUAL if any(m in r.continual for r in comparison.results.values())]
    means = Table(
        ["Condition", "Runs with a matrix", *(headings[m] for m in shown)],
        [[condition, str(len(comparison.task_matrices[condition].seeds)), *(_ci(result.continual.get(m)) for m in shown)]
         for condition, result in comparison.results.items() if condition in comparison.task_matrices],
        "Mean over seeds of each run's metric of its task-return matrix R[i][j] (test return on task j after training "
        "task i, at task i's last epoch), 95% t interval. Final average return: the last row's mean. Forgetting: over "
        "the earlier tasks, the best return before the last task minus the final one. Backward transfer: over the "
        "earlier tasks, the final return minus the one right after training the task. Forward transfer: over the "
        f"tasks, R[j][j] minus the reference condition's ({study.reference or 'none'}) of the same seed; plasticity "
        "ratio: R[j][j] / the reference's. "
        "A metric without a value (one task, no reference condition, a reference return <= 0) is absent, its reason "
        "under Notes.",
    )
    rows = [
        [condition, headings[metric], _ci(c.diff, "+.3g"), _ci(c.relative, "+.1f", "%"), f"{_p(c.p)} ({_test_name(c)})",
         _p(c.p_holm), c.verdict]
        for metric in CONTINUAL for condition, c in comparison.paired.get(metric, {}).items()
    ]
    cost = matrix_cost(study.data.task_matrix, study.data.metrics)
    cost = cost.set_index("condition").reindex([c for c in comparison.results if c in set(cost["condition"])]).reset_index()
    costs = [] if cost.empty else [Table(
        ["Condition", "Runs timed", "Seconds per run", "% of the rest of the run"],
        [[row.condition, str(row.runs), f"{row.seconds:.1f}", "-" if math.isnan(row.share) else f"{row.share:.1f}%"] for row in cost.itertuples(index=False)],
        "What the matrix's evaluations took (the sum of task_matrix.csv's eval_seconds, the population's wall time when "
        "the runs were populations), mean over runs, against the rest of the run's wall time: measured on the machine "
        "and load that made the runs.",
    )]
    if not rows:
        return [means, *costs, f"No paired comparison: {study.baseline} and the other conditions share no seed with these metrics."]
    paired = Table(
        ["Condition", "Metric", f"Difference vs {study.baseline} [95% CI]", "Change [95% CI]", "p (test)",
         "p (Holm over conditions)", "Verdict"],
        rows,
        f"Each condition minus {study.baseline} in the same seed, like the other secondary metrics (Statistics), "
        "Holm-adjusted over the conditions of each metric; exploratory. In comparisons.csv as metric "
        + ", ".join(CONTINUAL) + " (role secondary).",
    )
    return [means, paired, *costs]


def _correlation_table(comparison: Comparison) -> Table:
    rows = []
    for row in comparison.correlations:
        w, b = row.within, row.between
        rows.append([
            " = ".join(label(n) for n in row.names),
            _num(w.r) if math.isfinite(w.r) else f"n/a ({w.why_none})", _p(w.p), _p(row.within_holm), f"{w.n} runs, {w.groups} cond.",
            f"{_num(b.r)} (uninformative)" if math.isfinite(b.r) else f"n/a ({b.why_none})", _p(b.p), _p(row.between_holm), str(b.n),
            "; ".join(f"{c} {seed_list(s)}" for c, s in row.runs.items()),
        ])
    return Table(
        ["Metric (final value)", "Within r", "p", "p (Holm)", "n", "Between r", "p", "p (Holm)", "Conditions",
         "Runs (condition seeds)"],
        rows,
        "Within: repeated-measures correlation (each run's final metric and final test return centred on its "
        "condition's means; df = runs - conditions - 1): does a run with more of the metric end with more return "
        "than other runs of its condition? Between: Pearson r of the conditions' means (n = conditions, however many "
        "seeds), labelled uninformative: it rests on a handful of condition means, and conditions differ in much "
        "more than this metric, so it supports no claim that the metric predicts return, nor that it does not. "
        "p (Holm): adjusted over the table's rows, per view. Series with identical final values in every run share "
        "a row.",
    )


def _power_table(power: PowerAnalysis) -> Table:
    header = ["SD of per-seed differences from", "Pairs", "SD"]
    for pct in power.effects:
        header += [f"seeds for {pct:g}%", f"{pct:g}%, Holm k={power.comparisons}"]
    rows = []
    for row in power.rows:
        cells = [row.label, str(row.n_pairs), _num(row.sd, ".3g")]
        for pct in power.effects:
            cells += [_seeds(row.seeds[(pct, False)]), _seeds(row.seeds[(pct, True)])]
        rows.append(cells)
    return Table(
        header, rows,
        f"Seeds per condition needed to detect a paired difference of the given percent of {_num(power.baseline_mean)} "
        f"(the baseline's mean final test return) with {power.power:.0%} power, two-sided paired t test at "
        f"alpha = {power.alpha:g} (one comparison) or alpha / k (the smallest p of a Holm-adjusted table of k), and at "
        "least as many as the exact sign-flip test needs to reach that alpha at all. SD from few pairs is itself "
        "uncertain: the 80% upper bound is the safer planning value. Also: plab power RESULTS_DIR.",
    )


def _seeds(value: int) -> str:
    return "n/a" if value < 0 else str(value)


def _provenance_blocks(study: Study) -> list[Block]:
    versions: dict[str, list[str]] = {}
    for run in study.runs:
        versions.setdefault(run.code_version, []).append(run.label)
    blocks: list[Block] = [Table(
        ["Code version (git commit, package)", "Runs"],
        [[version, ", ".join(labels)] for version, labels in versions.items()],
        "From each run's run.json ('unknown': made before runs recorded their code version).",
    )]
    if study.provenance:
        blocks += ["Pooled despite these differences (--allow-mixed):", study.provenance]
    else:
        blocks.append("Every pooled run's resolved config equals the study config with its condition's overrides"
                      + (" and all come from one code version." if len(versions) == 1 and "unknown" not in versions else "."))
    return blocks


def _runs_table(study: Study, comparison: Comparison) -> Table:
    rows = []
    for run in study.runs:
        left_out = comparison.results[run.condition].left_out.get(run.label)
        rows.append([run.label, f"{run.length}/{study.num_epochs}", run.status, run.code_version,
                     "yes" if left_out is None else f"no: {left_out}"])
    return Table(["Run", "Epochs logged", "Status", "Code version", "In final values"], rows)


def _csv_table(path: Path) -> Table:
    """A CSV file as a table, numbers to 4 significant digits."""
    with open(path, newline="") as handle:
        header, *rows = list(csv.reader(handle)) or [[]]

    def cell(text: str) -> str:
        try:
            return format(float(text), ".4g")
        except ValueError:
            return text

    return Table(header, [[cell(c) for c in row] for row in rows], f"From {path.parent.name}/{path.name}.")


def _commands_table(study: Study) -> Table:
    rows = [
        [run.label, str(inv.get("started", "")), str(inv.get("device", "")), code_version_text(inv.get("code")),
         str(inv.get("command", ""))]
        for run in study.runs
        for inv in run.invocations
    ]
    return Table(["Run", "Started", "Device", "Code version", "Command"], rows,
                 "From each run's run.json; a resumed run lists every invocation.")


# ------------------------------------------------------------------------------------- data
ROLES = ("primary", "secondary", "per round", "all pairs")
"""comparisons.csv's ``role``: the declared primary metric vs the baseline (confirmatory), another
metric vs the baseline (exploratory), the baseline vs the reference at each round's end (Holm over
the rounds), and every pair of conditions on the primary metric (Holm over all pairs)."""


def comparisons_frame(study: Study, comparison: Comparison) -> pd.DataFrame:
    """comparisons.csv: one row per condition and compared metric, every number of the paired table
    and its verdict; with a reference condition the per-round plasticity-loss rows (baseline vs
    reference, metric ``train_r_round_K`` / ``test_r_round_K``); and every pair of conditions on the
    primary metric (``baseline`` is then the condition compared against)."""
    rows = []
    for metric, table in comparison.paired.items():
        role = ROLES[0] if metric == comparison.plan.primary else ROLES[1]
        rows += [_comparison_row(c, role, comparison.plan.alpha) for c in table.values()]
    for metric, table in comparison.round_loss.items():
        for k, c in enumerate(table):
            if c.seeds:  # a round where no pair has the metric (a ratio over a return <= 0) is absent
                rows.append({**_comparison_row(c, ROLES[2], comparison.plan.alpha), "metric": round_metric(metric, k)})
    rows += [_comparison_row(c, ROLES[3], comparison.plan.alpha) for c in comparison.pairwise]
    columns = [
        "condition", "baseline", "metric", "role", "verdict", "n_pairs", "seeds", "diff", "ci_low", "ci_high",
        "test", "p", "p_floor", "p_holm", "p_sign_flip", "p_t", "skew_p", "equivalence_margin", "margin_low",
        "margin_high", "p_equivalence", "p_equivalence_holm", "alpha", "better", "rel_diff_pct", "rel_ci_low",
        "rel_ci_high", "iqm_diff", "iqm_ci_low", "iqm_ci_high", "p_beats_baseline", "p_beats_ci_low",
        "p_beats_ci_high", "unpaired_seeds", "ci_level",
    ]
    return pd.DataFrame(rows, columns=columns)


def _comparison_row(c: PairedComparison, role: str, alpha: float) -> dict[str, object]:
    return {
        "condition": c.condition, "baseline": c.against, "metric": c.metric, "role": role, "verdict": c.verdict,
        "n_pairs": len(c.seeds), "seeds": " ".join(map(str, c.seeds)), "diff": c.diff.value, "ci_low": c.diff.lo,
        "ci_high": c.diff.hi, "test": c.test.test, "p": c.p, "p_floor": c.test.p_floor, "p_holm": c.p_holm,
        "p_sign_flip": c.test.p_sign_flip, "p_t": c.test.p_t, "skew_p": c.test.skew_p, "equivalence_margin": c.margin,
        "margin_low": -c.margin_abs, "margin_high": c.margin_abs, "p_equivalence": c.p_equivalence,
        "p_equivalence_holm": c.p_equivalence_holm, "alpha": alpha,
        "better": {1: "higher", -1: "lower", 0: "none"}[direction(c.metric)],
        "rel_diff_pct": c.relative.value, "rel_ci_low": c.relative.lo, "rel_ci_high": c.relative.hi,
        "iqm_diff": c.iqm_diff.value, "iqm_ci_low": c.iqm_diff.lo, "iqm_ci_high": c.iqm_diff.hi,
        "p_beats_baseline": c.win.value, "p_beats_ci_low": c.win.lo, "p_beats_ci_high": c.win.hi,
        "unpaired_seeds": " ".join(map(str, c.unpaired)), "ci_level": CI_LEVEL,
    }


def power_text(results_dir: str | Path, effects: tuple[float, ...], alpha: float, power: float,
               baseline: str | None = None, allow_mixed: bool = False, final_window: int | None = None) -> str:
    """``plab power``: the seeds-needed table of a study as Markdown (final values as the study's
    declared analysis plan, or ``final_window``, say)."""
    study = open_study(results_dir, baseline, None, allow_mixed)
    plan, _ = analysis_plan(study, final_window=final_window)
    comparison = compare(study, plan)
    analysis = power_analysis(study, comparison, effects, alpha, power)
    if analysis is None:
        raise ConfigError(f"{results_dir}: no paired final test returns of {study.baseline} and another condition yet")
    table = _power_table(analysis)
    lines = ["| " + " | ".join(table.header) + " |", "|" + "|".join(["---"] * len(table.header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines + ["", table.caption])


# ------------------------------------------------------------------------------------- rendering
def _report_version() -> str:
    """The code that computed the report's numbers (the runs' own versions are in Provenance)."""
    from plasticity_lab.experiment.provenance import code_version

    return f"code {code_version_text(code_version())}"



def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(title: str, sections: list[tuple[str, list[Block]]], root: Path) -> str:
    """Figures are linked relative to ``root``, the directory summary.md is written to."""
    out = [f"# {title}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `plab report` ({_report_version()}).", ""]
    for heading, blocks in sections:
        out += [f"## {heading}", ""]
        for block in blocks:
            if isinstance(block, str):
                out += [block, ""]
            elif isinstance(block, list):
                out += [f"- {item}" for item in block] + [""]
            elif isinstance(block, Table):
                out += [
                    "| " + " | ".join(map(_md_cell, block.header)) + " |",
                    "|" + "|".join(":---" if i == 0 else ":---:" for i in range(len(block.header))) + "|",
                    *("| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows),
                    "",
                ]
                if block.caption:
                    out += [f"*{block.caption}*", ""]
            elif isinstance(block, Code):
                out += ["```", block.text.rstrip("\n"), "```", ""]
            else:
                out += [f"![{caption}]({Path(os.path.relpath(path, root)).as_posix()})" for caption, path in block.figures.items()] + [""]
    return "\n".join(out)


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1250px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: center; }
td:first-child, th:first-child { text-align: left; }
th { background: #f0f3f7; } tr:nth-child(even) td { background: #fafafa; }
.caption { color: #555; font-size: .85em; max-width: 1100px; }
.notes { background: #fff8e1; border: 1px solid #f0d58a; padding: .5em 1em .5em 2em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .85em; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: .5em 1em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .85em; }
"""


def _html_block(block: Block, notes: bool) -> str:
    if isinstance(block, str):
        return f"<p>{html.escape(block)}</p>"
    if isinstance(block, list):
        items = "".join(f"<li>{html.escape(item)}</li>" for item in block)
        return f'<ul class="notes">{items}</ul>' if notes else f"<ul>{items}</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block.rows)
        caption = f'<p class="caption">{html.escape(block.caption)}</p>' if block.caption else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{caption}"
    if isinstance(block, Code):
        return f"<pre>{html.escape(block.text)}</pre>"
    figures = "".join(
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode("ascii")}"><figcaption>{html.escape(caption)} '
        f"({html.escape(path.name)})</figcaption></figure>"
        for caption, path in block.figures.items()
    )
    return f'<div class="grid">{figures}</div>' if block.grid else figures


def _html(title: str, sections: list[tuple[str, list[Block]]]) -> str:
    body = []
    for heading, blocks in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body += [_html_block(block, heading.startswith("Notes")) for block in blocks]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title><style>{STYLE}</style></head>\n'
        f"<body><h1>{html.escape(title)}</h1>\n<p class=\"caption\">Generated {time.strftime('%Y-%m-%d %H:%M:%S')} "
        f"by plab report ({html.escape(_report_version())}).</p>\n" + "\n".join(body) + "\n</body></html>\n"
    )
