"""Figures of a study report: curves per condition (mean over seeds with a 95% bootstrap band,
shift points marked), the final-value bar chart and the plasticity-vs-return scatter plots.

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

from plasticity_lab.analysis.aggregate import (
    DIAGNOSTICS_PREFIX,
    Comparison,
    Study,
    bootstrap_mean_ci,
    curve_matrix,
    epoch_range,
)

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
    "approx_kl": "approx. KL",
    "clipfrac": "clip fraction",
    "explained_variance": "explained variance",
    "steps_per_s": "throughput (env steps/s)",
}
DPI = 100
BAND_REPS = 500
"""Bootstrap resamples per drawn band: enough for a picture (the tables' CIs use the full count)."""


def label(name: str) -> str:
    """Axis label of a series; probe diagnostics keep their column name."""
    if name.startswith(DIAGNOSTICS_PREFIX):
        return f"probe: {name[len(DIAGNOSTICS_PREFIX):]}"
    return LABELS.get(name, name)


def metric_filename(name: str) -> str:
    return "metric_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".png"


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


def _draw_curves(
    ax, study: Study, name: str, smooth_epochs: int, reps: int, rng: np.random.Generator, window: tuple[int, int] | None,
) -> None:
    """One line per condition: mean over seeds with a 95% bootstrap band over seeds.

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
        mean, lo, hi = bootstrap_mean_ci(values, reps, rng)
        count = np.isfinite(values).sum(axis=0)
        x = np.flatnonzero(count > 0)
        full = count[x] == len(runs)
        partial = ~full | np.r_[~full[1:], False]
        marker = "o" if len(x) <= 40 else None
        color = colors[condition]
        ax.plot(x, np.where(full, mean[x], np.nan), color=color, lw=1.6, marker=marker, ms=3, label=f"{condition} (n={len(runs)})")
        if not full.all():
            ax.plot(x, np.where(partial, mean[x], np.nan), color=color, lw=1.2, ls=":", marker=marker, ms=3)
        ax.fill_between(x, lo[x], hi[x], color=color, alpha=0.18, lw=0)
    _mark_shifts(ax, study.shift_points)
    if window and window[1] > window[0]:
        ax.axvspan(window[0] - 0.5, window[1] - 0.5, color="0.85", alpha=0.5, lw=0, label="final window")
    ax.set_xlim(0, max(study.num_epochs - 1, 1))
    ax.grid(alpha=0.3)
    if not ax.lines:
        ax.text(0.5, 0.5, "not logged yet", transform=ax.transAxes, ha="center", color="0.4")


def curve_figure(
    study: Study, names: list[str], path: Path, title: str, *, smooth_epochs: int, reps: int,
    rng: np.random.Generator, window: tuple[int, int] | None = None,
) -> Path:
    """Curves of one metric; several ``names`` (one probe statistic per layer) become panels."""
    ncols = min(len(names), 3)
    nrows = math.ceil(len(names) / ncols)
    width, height = (9, 4.8) if len(names) == 1 else (5.2 * ncols + 1.6, 3.4 * nrows + 0.8)
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    for k, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        _draw_curves(ax, study, name, smooth_epochs, reps, rng, window)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label(name) if len(names) == 1 else name.rsplit("/", 1)[-1])
        if len(names) > 1:
            ax.set_title(name[len(DIAGNOSTICS_PREFIX):].split("/")[0], fontsize=10)
    smoothing = f", smoothed over ~{smooth_epochs} epochs within each task" if smooth_epochs > 1 else ""
    fig.suptitle(f"{title}: mean over seeds, 95% bootstrap band{smoothing}", fontsize=11)
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


def summary_figure(study: Study, comparison: Comparison, path: Path) -> Path:
    """Bars of final test return and dead units per condition: mean over seeds, 95% CI, seeds as dots."""
    fig = Figure(figsize=(11, 4.6), dpi=DPI, layout="constrained")
    colors = condition_colors(study.conditions)
    start, end = comparison.window
    for k, (name, attr) in enumerate((("test_r", "test"), ("dead_units", "dead"))):
        ax = fig.add_subplot(1, 2, k + 1)
        for i, condition in enumerate(study.conditions):
            result = comparison.results[condition]
            estimate = getattr(result, attr)
            if estimate is None:
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8, color="0.4")
                continue
            err = [[max(0.0, estimate.value - estimate.lo)], [max(0.0, estimate.hi - estimate.value)]] if math.isfinite(estimate.lo) else None
            ax.bar(i, estimate.value, color=colors[condition], alpha=0.75, yerr=err, capsize=4)
            seeds = result.final_values(name)
            ax.plot(i + np.linspace(-0.15, 0.15, len(seeds)), seeds, "o", color="k", ms=3.5, alpha=0.7)
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
        f"Final values per condition: bar = mean over seeds, whisker = 95% bootstrap CI, dots = seeds, "
        f"dashed line = {study.baseline} mean", fontsize=10,
    )
    fig.savefig(path)
    return path


def correlation_figure(study: Study, comparison: Comparison, path: Path) -> Path:
    """Each plasticity metric's final value against final test return, one dot per run, Pearson r."""
    correlations = comparison.correlations
    ncols = max(1, min(4, len(correlations)))
    nrows = max(1, math.ceil(len(correlations) / ncols))
    fig = Figure(figsize=(4.2 * ncols, 3.3 * nrows + 0.6), dpi=DPI, layout="constrained")
    colors = condition_colors(study.conditions)
    if not correlations:
        fig.add_subplot().text(0.5, 0.5, "no plasticity metric logged", ha="center")
    for k, corr in enumerate(correlations):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        xs, ys = [], []
        for condition, result in comparison.results.items():
            if result.finals:
                xs.append(result.final_values(corr.name))
                ys.append(result.final_values("test_r"))
                ax.plot(xs[-1], ys[-1], "o", color=colors[condition], ms=5, alpha=0.8)
        if math.isfinite(corr.r):
            x, y = np.concatenate(xs), np.concatenate(ys)
            keep = np.isfinite(x) & np.isfinite(y)
            slope, intercept = np.polyfit(x[keep], y[keep], 1)
            grid = np.linspace(x[keep].min(), x[keep].max(), 2)
            ax.plot(grid, slope * grid + intercept, color="0.4", lw=1, ls="--")
        stat = f"r = {corr.r:.2f} (p = {corr.p:.2g}, n = {corr.n})" if math.isfinite(corr.r) else f"r: n/a ({corr.why_none})"
        ax.set_title(f"{label(corr.name)}\n{stat}", fontsize=9)
        ax.set_xlabel(f"final {label(corr.name)}", fontsize=8)
        if k % ncols == 0:
            ax.set_ylabel("final test return", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], ls="", marker="o", color=colors[c]) for c, r in comparison.results.items() if r.finals]
    if handles:
        fig.legend(handles, [c for c, r in comparison.results.items() if r.finals], loc="outside upper center",
                   ncol=min(len(handles), 7), fontsize=8, frameon=False)
    fig.savefig(path)
    return path


def write_figures(
    study: Study, comparison: Comparison, out_dir: Path, *, smooth_epochs: int, reps: int, seed: int = 0,
) -> dict[str, Path]:
    """Every figure of the report, by caption, in the order the report shows them.

    Test return and dead units are drawn once, under the study report's file names; every other
    logged series gets ``metric_<name>.png``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    curves = dict(smooth_epochs=smooth_epochs, reps=min(reps, BAND_REPS), rng=rng)
    figures = {
        "Test return": curve_figure(study, ["test_r"], out_dir / "test_reward_comparison.png", "Test return",
                                    window=comparison.window, **curves),
        "Dead units": curve_figure(study, ["dead_units"], out_dir / "dead_units_comparison.png", "Dead units (%)", **curves),
        "Final values": summary_figure(study, comparison, out_dir / "summary_comparison.png"),
        "Plasticity metrics vs. final test return": correlation_figure(study, comparison, out_dir / "correlations.png"),
    }
    others = [n for n in study.metric_names() if n not in ("test_r", "dead_units")]
    for title, (stem, names) in metric_groups(others).items():
        figures[title] = curve_figure(study, names, out_dir / metric_filename(stem), title, **curves)
    return figures
