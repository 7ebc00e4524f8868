"""Figures of a study report: curves per condition (mean over seeds with a 95% t band, or the
seeds themselves when there are few; shift points marked), the final-value bar chart, the paired
differences from the baseline, rliable's IQM curves and performance profiles, the
plasticity-vs-return scatter plots, and each condition's mean task-return matrix as a heat map.

Matplotlib's object API (``Figure``, no pyplot) keeps no global state and needs no display, so a
report can be drawn from any process, including tests.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from plasticity_lab.analysis import stats
from plasticity_lab.analysis.aggregate import DIAGNOSTICS_PREFIX, Comparison, MeanMatrix, Study, curve_band, curve_matrix, epoch_range
from plasticity_lab.analysis.stats import WEAK_BELOW, Interval

LABELS = {
    "test_r": "test return",
    "train_r": "train return",
    "train_l": "train episode length",
    "v_estimate": "value estimate",
    "entropy": "policy entropy",
    "p_loss": "policy loss",
    "v_loss": "value loss",
    "v_error": "value error",
    "weight_m": "weight magnitude (RMS of parameters)",
    "weight_diff": "weight change per epoch (RMS)",
    "grad_norm": "gradient norm (before clipping)",
    "dead_units": "dead units (%)",
    "dormant_units": "dormant units (%)",
    "approx_kl": "approx. KL",
    "clipfrac": "clip fraction",
    "explained_variance": "explained variance",
    "steps_per_s": "throughput (env steps/s)",
    "final_average_return": "final average return (task matrix)",
    "forgetting": "forgetting (task matrix)",
    "backward_transfer": "backward transfer (task matrix)",
    "forward_transfer": "forward transfer vs reference (task matrix)",
    "plasticity_ratio": "plasticity ratio vs reference (task matrix)",
}
DPI = 100


def label(name: str) -> str:
    """Axis label of a series; probe diagnostics keep their column name."""
    if name.startswith(DIAGNOSTICS_PREFIX):
        return f"probe: {name[len(DIAGNOSTICS_PREFIX):]}"
    return LABELS.get(name, name)


def metric_filename(name: str, prefix: str = "metric_") -> str:
    """A figure's file name for a series (or, with another ``prefix``, a condition)."""
    return prefix + re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".png"


def condition_colors(conditions: list[str]) -> dict[str, tuple]:
    """One fixed colour per condition, the same in every figure."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(conditions) <= 10 else "tab20"]
    return {c: cmap(i % cmap.N) for i, c in enumerate(conditions)}


def smooth(values: np.ndarray, window_epochs: int, boundaries: list[int]) -> np.ndarray:
    """Centred moving average over the logged points of each task, window given in epochs.

    Averaging stops at task boundaries so a shift's drop is not blurred into the task before it;
    for sparse series (test_r every few epochs) the window is converted to logged points.
    """
    logged = np.flatnonzero(np.isfinite(values))
    if window_epochs <= 1 or len(logged) < 2:
        return values.copy()
    half = int(round(window_epochs / float(np.median(np.diff(logged))))) // 2
    if half == 0:
        return values.copy()
    out = np.full_like(values, np.nan)
    for a, b in zip(boundaries, boundaries[1:]):
        idx = logged[(logged >= a) & (logged < b)]
        csum = np.concatenate([[0.0], np.cumsum(values[idx])])
        j = np.arange(len(idx))
        lo, hi = np.maximum(j - half, 0), np.minimum(j + half + 1, len(idx))
        out[idx] = (csum[hi] - csum[lo]) / (hi - lo)
    return out


def _mark_shifts(ax, shift_points: list[int]) -> None:
    for i, s in enumerate(shift_points):
        ax.axvline(s, color="0.35", ls="--", lw=1)
        ax.text(s, 0.99, f" shift {i + 1}", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="0.3")


def _draw_curves(ax, study: Study, name: str, smooth_epochs: int, window: tuple[int, int] | None) -> None:
    """One line per condition: the mean over seeds with a pointwise 95% Student-t band where it
    rests on at least WEAK_BELOW seeds; with fewer, the seeds' own curves are drawn thin instead of
    a band (a 2-seed band says little, and the seeds say it plainly).

    A line is dotted where it averages fewer seeds than the condition has (runs of different
    lengths, e.g. a sweep still running), so the drop-out of a seed is visible, not hidden.
    ``window`` shades the epochs that final values average.
    """
    colors = condition_colors(study.conditions)
    bounds = [0, *study.shift_points, study.num_epochs]
    for condition in study.conditions:
        runs = [r for r in study.runs_of(condition) if np.isfinite(r.series.get(name, [])).any()]
        if not runs:
            continue
        values = np.array([smooth(row, smooth_epochs, bounds) for row in curve_matrix(runs, name)])
        mean, lo, hi, count = curve_band(values)
        x = np.flatnonzero(count > 0)
        full = count[x] == len(runs)
        partial = ~full | np.r_[~full[1:], False]
        marker = "o" if len(x) <= 40 else None
        color = colors[condition]
        ax.plot(x, np.where(full, mean[x], np.nan), color=color, lw=1.6, marker=marker, ms=3, label=f"{condition} (n={len(runs)})")
        if not full.all():
            ax.plot(x, np.where(partial, mean[x], np.nan), color=color, lw=1.2, ls=":", marker=marker, ms=3)
        if len(runs) >= WEAK_BELOW:
            ax.fill_between(x, lo[x], hi[x], color=color, alpha=0.18, lw=0)
        else:
            for row in values:
                seen = np.flatnonzero(np.isfinite(row))
                ax.plot(seen, row[seen], color=color, lw=0.6, alpha=0.45)
    _mark_shifts(ax, study.shift_points)
    if window and window[1] > window[0]:
        ax.axvspan(window[0] - 0.5, window[1] - 0.5, color="0.85", alpha=0.5, lw=0, label="final window")
    ax.set_xlim(0, max(study.num_epochs - 1, 1))
    ax.grid(alpha=0.3)
    if not ax.lines:
        ax.text(0.5, 0.5, "not logged yet", transform=ax.transAxes, ha="center", color="0.4")


def curve_figure(
    study: Study, names: list[str], path: Path, title: str, *, smooth_epochs: int, window: tuple[int, int] | None = None,
) -> Path:
    """Curves of one metric; several ``names`` (one probe statistic per layer) become panels."""
    ncols = min(len(names), 3)
    nrows = math.ceil(len(names) / ncols)
    width, height = (9, 4.8) if len(names) == 1 else (5.2 * ncols + 1.6, 3.4 * nrows + 0.8)
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    for k, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        _draw_curves(ax, study, name, smooth_epochs, window)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label(name) if len(names) == 1 else name.rsplit("/", 1)[-1])
        if len(names) > 1:
            ax.set_title(name[len(DIAGNOSTICS_PREFIX):].split("/")[0], fontsize=10)
    smoothing = f", smoothed over ~{smooth_epochs} epochs within each task" if smooth_epochs > 1 else ""
    fig.suptitle(f"{title}: mean over seeds; 95% t band (n >= {WEAK_BELOW}) or thin seed curves (n < {WEAK_BELOW}){smoothing}",
                 fontsize=10)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    for ax in fig.axes[1:]:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            if text not in labels:
                handles.append(handle)
                labels.append(text)
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    fig.savefig(path)
    return path


def metric_groups(names: list[str]) -> dict[str, tuple[str, list[str]]]:
    """Figure title -> (file stem, series drawn in it): a probe statistic measured per layer is one
    figure with a panel per layer (75 probe columns would otherwise be 75 figures); any other
    series is alone."""
    groups: dict[str, tuple[str, list[str]]] = {}
    for name in names:
        if name.startswith(DIAGNOSTICS_PREFIX) and "/" in name[len(DIAGNOSTICS_PREFIX):]:
            stat = name.rsplit("/", 1)[-1]
            groups.setdefault(f"probe: {stat} per layer", (DIAGNOSTICS_PREFIX + stat, []))[1].append(name)
        else:
            groups[label(name)] = (name, [name])
    return groups


def _errorbar(ax, x: float, estimate: Interval, color, horizontal: bool = False) -> None:
    """A point with its interval; an unbounded interval is drawn as an arrow-less full-span line."""
    if not estimate.has_interval:
        return
    lo, hi = estimate.lo, estimate.hi
    if not estimate.bounded:
        (ax.axhline if horizontal else ax.axvline)(x, color=color, lw=0.8, ls=(0, (1, 2)))
        return
    err = [[max(0.0, estimate.value - lo)], [max(0.0, hi - estimate.value)]]
    if horizontal:
        ax.errorbar(estimate.value, x, xerr=err, fmt="none", ecolor=color, capsize=4, lw=1.6)
    else:
        ax.errorbar(x, estimate.value, yerr=err, fmt="none", ecolor=color, capsize=4, lw=1.6)


def summary_figure(study: Study, comparison: Comparison, path: Path) -> Path:
    """Bars of final test return and dead (and dormant) units per condition: mean over seeds,
    95% Student-t interval, seeds as dots."""
    panels = [("test_r", "test"), ("dead_units", "dead")]
    if any(r.dormant is not None for r in comparison.results.values()):
        panels.append(("dormant_units", "dormant"))
    fig = Figure(figsize=(5.5 * len(panels), 4.6), dpi=DPI, layout="constrained")
    colors = condition_colors(study.conditions)
    start, end = comparison.window
    for k, (name, attr) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for i, condition in enumerate(study.conditions):
            result = comparison.results[condition]
            estimate = getattr(result, attr)
            if estimate is None:
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8, color="0.4")
                continue
            ax.bar(i, estimate.value, color=colors[condition], alpha=0.75)
            _errorbar(ax, i, estimate, "0.15")
            seeds = result.final_values(name)
            ax.plot(i + np.linspace(-0.15, 0.15, len(seeds)), seeds, "o", color="k", ms=3.5, alpha=0.7)
            ax.text(i, 0, f"n={estimate.n}", ha="center", va="bottom", fontsize=7, color="white")
        base = comparison.results.get(study.baseline)
        base_estimate = getattr(base, attr) if base else None
        if base_estimate is not None:
            ax.axhline(base_estimate.value, color="0.3", ls="--", lw=1)
        ax.set_xticks(range(len(study.conditions)), study.conditions, rotation=30, ha="right")
        ax.set_xlim(-0.6, len(study.conditions) - 0.4)
        ax.set_ylabel(f"final {label(name)}")
        ax.set_title(f"final {label(name)} ({epoch_range(start, end)})" if end > start else f"final {label(name)}", fontsize=11)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"Final values per condition: bar = mean over seeds, whisker = 95% t interval (n < {WEAK_BELOW}: weak), "
        f"dots = seeds, dashed line = {study.baseline} mean", fontsize=10,
    )
    fig.savefig(path)
    return path


def paired_figure(study: Study, comparison: Comparison, path: Path) -> Path:
    """Forest plot: each condition's per-seed differences from the baseline (dots) and their mean
    with its 95% t interval, with the exact p and its Holm adjustment."""
    table = comparison.paired.get("test_r", {})
    colors = condition_colors(study.conditions)
    fig = Figure(figsize=(10, 1.2 + 0.55 * max(1, len(table))), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    if not table:
        ax.text(0.5, 0.5, f"no paired comparison with {study.baseline} yet", ha="center", transform=ax.transAxes)
    for i, (condition, paired) in enumerate(reversed(list(table.items()))):
        color = colors[condition]
        jitter = np.linspace(-0.12, 0.12, len(paired.differences)) if len(paired.differences) > 1 else np.zeros(1)
        ax.plot(paired.differences, i + jitter, "o", color=color, ms=4, alpha=0.55)
        ax.plot(paired.diff.value, i, "D", color=color, ms=7)
        _errorbar(ax, i, paired.diff, color, horizontal=True)
        weak = ", weak" if paired.diff.n < WEAK_BELOW else ""
        ax.annotate(f"n={paired.diff.n}{weak}  p={paired.p:.3g}  Holm {paired.p_holm:.3g}", (1.01, i),
                    xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.axvline(0, color="0.3", lw=1, ls="--")
    ax.set_yticks(range(len(table)), list(reversed(list(table))))
    ax.set_ylim(-0.7, max(1, len(table)) - 0.3)
    ax.set_xlabel(f"final test return minus {study.baseline}'s, same seed")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Paired differences vs {study.baseline}: dots = seeds, diamond = mean, bar = 95% t interval "
                 "(dotted line: unbounded)", fontsize=10)
    fig.savefig(path)
    return path


def iqm_curve_figure(study: Study, path: Path, smooth_epochs: int) -> Path:
    """rliable's sample-efficiency view: IQM of test return over seeds at every evaluation, with a
    95% Tukey-McLaughlin band (the table's IQM interval); points with fewer than 2 seeds get none."""
    from rliable import plot_utils

    colors = condition_colors(study.conditions)
    bounds = [0, *study.shift_points, study.num_epochs]
    fig = Figure(figsize=(9, 4.8), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    drawn = False
    for condition in study.conditions:
        runs = [r for r in study.runs_of(condition) if np.isfinite(r.series.get("test_r", [])).any()]
        if not runs:
            continue
        values = np.array([smooth(row, smooth_epochs, bounds) for row in curve_matrix(runs, "test_r")])
        every = np.flatnonzero(np.isfinite(values).all(axis=0))
        if not len(every):
            continue
        iqm, lo, hi = stats.trimmed_interval(values[:, every].T)
        name = f"{condition} (n={len(runs)})"
        plot_utils.plot_sample_efficiency_curve(
            every, {name: iqm}, {name: np.array([lo, hi])}, algorithms=[name], colors={name: colors[condition]}, ax=ax,
            xlabel="epoch", ylabel="IQM of test return", labelsize="medium", ticklabelsize="small",
            marker="o" if len(every) <= 40 else None, linewidth=1.6,
        )
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "not logged yet", transform=ax.transAxes, ha="center", color="0.4")
    _mark_shifts(ax, study.shift_points)
    ax.legend(fontsize=8, frameon=False, loc="best")
    fig.suptitle("IQM learning curves (rliable): interquartile mean over seeds at every test evaluation all seeds reached; "
                 "95% Tukey-McLaughlin band", fontsize=9)
    fig.savefig(path)
    return path


def profile_figure(study: Study, comparison: Comparison, path: Path) -> Path:
    """rliable's performance profiles: the fraction of a condition's runs whose final test return
    (divided by the reference condition's mean when one is declared) exceeds tau, with a 95%
    Clopper-Pearson band (exact for a binomial fraction at any number of runs)."""
    from rliable import library, plot_utils
    from scipy.stats import binomtest

    colors = condition_colors(study.conditions)
    scale = 1.0
    reference = comparison.results.get(study.reference) if study.reference else None
    if reference is not None and reference.test is not None and reference.test.value > 0:
        scale = reference.test.value
    scores = {f"{c} (n={len(r.finals)})": r.final_values("test_r") / scale for c, r in comparison.results.items() if r.finals}
    fig = Figure(figsize=(9, 4.8), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    if not scores:
        ax.text(0.5, 0.5, "no final values yet", transform=ax.transAxes, ha="center", color="0.4")
        fig.savefig(path)
        return path
    everything = np.concatenate(list(scores.values()))
    spread = max(float(np.ptp(everything)), 1e-9)
    taus = np.linspace(everything.min() - 0.05 * spread, everything.max() + 0.05 * spread, 201)
    profiles, bands = {}, {}
    for name, values in scores.items():
        profiles[name] = library.score_distributions(values[:, None], taus)
        above = (values[:, None] > taus[None, :]).sum(axis=0)
        cis = [binomtest(int(k), len(values)).proportion_ci(0.95, method="exact") for k in above]
        bands[name] = np.array([[ci.low for ci in cis], [ci.high for ci in cis]])
    plot_utils.plot_performance_profiles(
        profiles, taus, performance_profile_cis=bands, ax=ax,
        colors={name: colors[name.rsplit(" (n=", 1)[0]] for name in profiles},
        xlabel=f"final test return / {study.reference}'s mean (tau)" if scale != 1.0 else "final test return (tau)",
        ylabel="fraction of runs with score > tau", labelsize="medium", ticklabelsize="small",
    )
    ax.legend(fontsize=8, frameon=False, loc="best")
    fig.suptitle("Performance profiles (rliable score distributions) with 95% Clopper-Pearson bands", fontsize=10)
    fig.savefig(path)
    return path


def correlation_figure(study: Study, comparison: Comparison, path: Path) -> Path:
    """Each plasticity metric's final value against final test return, both centred on their
    condition's mean (the within-condition view the table's repeated-measures r measures), one dot
    per run, coloured by condition; the title gives both views with Holm-adjusted p."""
    rows = comparison.correlations
    ncols = max(1, min(4, len(rows)))
    nrows = max(1, math.ceil(len(rows) / ncols))
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows + 0.7), dpi=DPI, layout="constrained")
    colors = condition_colors(study.conditions)
    if not rows:
        fig.add_subplot().text(0.5, 0.5, "no plasticity metric logged", ha="center")
    for k, row in enumerate(rows):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        name = row.names[0]
        xs, ys = [], []
        for condition, seeds in row.runs.items():
            result = comparison.results[condition]
            x = np.array([result.finals[s][name] for s in seeds])
            y = np.array([result.finals[s]["test_r"] for s in seeds])
            if len(seeds) < 2:
                continue
            xs.append(x - x.mean())
            ys.append(y - y.mean())
            ax.plot(xs[-1], ys[-1], "o", color=colors[condition], ms=5, alpha=0.8)
        if math.isfinite(row.within.r) and xs:
            x, y = np.concatenate(xs), np.concatenate(ys)
            slope = float((x * y).sum() / (x * x).sum())
            grid = np.linspace(x.min(), x.max(), 2)
            ax.plot(grid, slope * grid, color="0.4", lw=1, ls="--")
        within = (f"within r={row.within.r:.2f} (Holm p={row.within_holm:.2g}, {row.within.n} runs)"
                  if math.isfinite(row.within.r) else f"within: n/a ({row.within.why_none})")
        between = (f"between r={row.between.r:.2f} (Holm p={row.between_holm:.2g}, {row.between.n} cond.)"
                   if math.isfinite(row.between.r) else f"between: n/a ({row.between.why_none})")
        ax.set_title(f"{' = '.join(label(n) for n in row.names)}\n{within}\n{between}", fontsize=8)
        ax.set_xlabel(f"final {label(name)} - condition mean", fontsize=8)
        if k % ncols == 0:
            ax.set_ylabel("final test return - condition mean", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    used = [c for c in study.conditions if any(c in row.runs for row in rows)]
    handles = [Line2D([], [], ls="", marker="o", color=colors[c]) for c in used]
    if handles:
        fig.legend(handles, used, loc="outside upper center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
    fig.savefig(path)
    return path


def task_matrix_figure(condition: str, matrix: MeanMatrix, path: Path, limits: tuple[float, float]) -> Path:
    """Heat map of a condition's mean task-return matrix: row i = after training task i, column j
    = evaluated on task j, only the lower triangle (a task is evaluated once seen), every entry
    written in its cell; ``limits`` is one colour scale for every condition, so colours compare."""
    mean = matrix.mean
    tasks = len(mean)
    size = max(3.6, 0.55 * tasks + 2.2)
    fig = Figure(figsize=(size + 1.0, size), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(mean), cmap="viridis", vmin=limits[0], vmax=limits[1])
    fig.colorbar(image, ax=ax, label="mean test return")
    span = (limits[1] - limits[0]) or 1.0
    for i in range(tasks):
        for j in range(i + 1):
            light = (mean[i, j] - limits[0]) / span > 0.6  # viridis is light at the top of its scale
            ax.text(j, i, format(mean[i, j], ".3g"), ha="center", va="center", fontsize=9 if tasks <= 8 else 6,
                    color="black" if light else "white")
    ax.set_xticks(range(tasks), [str(j) for j in range(tasks)])
    ax.set_yticks(range(tasks), [str(i) for i in range(tasks)])
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_title(f"{condition}: R[i][j], n={len(matrix.seeds)}", fontsize=10)
    fig.savefig(path)
    return path


def write_figures(study: Study, comparison: Comparison, out_dir: Path, *, smooth_epochs: int) -> dict[str, Path]:
    """Every figure of the report, by caption, in the order the report shows them.

    Test return and dead units are drawn once, under the study report's file names; every other
    logged series gets ``metric_<name>.png``, and each condition with task matrices
    ``task_matrix_<condition>.png``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "Test return": curve_figure(study, ["test_r"], out_dir / "test_reward_comparison.png", "Test return",
                                    smooth_epochs=smooth_epochs, window=comparison.window),
        "Dead units": curve_figure(study, ["dead_units"], out_dir / "dead_units_comparison.png", "Dead units (%)",
                                   smooth_epochs=smooth_epochs),
        "Final values": summary_figure(study, comparison, out_dir / "summary_comparison.png"),
        "Paired differences vs baseline": paired_figure(study, comparison, out_dir / "paired_differences.png"),
        "IQM learning curves": iqm_curve_figure(study, out_dir / "iqm_test_return.png", smooth_epochs),
        "Performance profiles": profile_figure(study, comparison, out_dir / "performance_profiles.png"),
        "Plasticity metrics vs. final test return": correlation_figure(study, comparison, out_dir / "correlations.png"),
    }
    others = [n for n in study.metric_names() if n not in ("test_r", "dead_units")]
    for title, (stem, names) in metric_groups(others).items():
        figures[title] = curve_figure(study, names, out_dir / metric_filename(stem), title, smooth_epochs=smooth_epochs)
    matrices = comparison.task_matrices
    if matrices:
        entries = np.concatenate([m.mean[np.tril_indices(len(m.mean))] for m in matrices.values()])
        limits = (float(entries.min()), float(entries.max()))
        for condition, matrix in matrices.items():
            seeds = f"{len(matrix.seeds)} seed{'s' if len(matrix.seeds) != 1 else ''}"
            caption = f"Task-return matrix of {condition}: mean over {seeds} of R[i][j], the test return on task j after training task i"
            figures[caption] = task_matrix_figure(condition, matrix, out_dir / metric_filename(condition, "task_matrix_"), limits)
    return figures
