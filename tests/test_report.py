"""plab report: every number against a hand computation, partial and mismatched sweeps, output files.

Studies are written directly as CSV files (no training), so each test knows the exact answer.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from plasticity_lab.analysis import stats
from plasticity_lab.analysis.aggregate import compare, curve_band, open_study
from plasticity_lab.analysis.frames import read_epoch_csv
from plasticity_lab.analysis.report import analysis_plan, report
from plasticity_lab.cli import main
from plasticity_lab.config import AnalysisConfig, ConfigError
from plasticity_lab.experiment.logger import BASE_COLUMNS

EPOCHS, SHIFTS, TEST_INTERVAL = 30, [10, 20], 5
PROBE_COLUMNS = ["dense/effective_rank", "conv1/effective_rank", "overall/dormant_0.025", "trainability_ratio", "probe_seconds"]
REPS = 200
CODE = {"git_commit": "0123456789abcdef0123456789abcdef01234567", "git_dirty": False, "package_version": "0.1.0"}


def write_study(root: Path, conditions: list[str], baseline: str = "baseline", test_interval: int = TEST_INTERVAL) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = {
        "experiment": {"baseline": baseline, "conditions": {c: {} for c in conditions}},
        "ppo_trainer": {"num_epochs": EPOCHS, "shift_points": SHIFTS, "test_interval": test_interval},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def write_run(
    root: Path,
    condition: str,
    seed: int,
    test_r: Callable[[int], float | None],
    *,
    length: int = EPOCHS,
    done: bool | None = None,
    num_epochs: int = EPOCHS,
    test_interval: int = TEST_INTERVAL,
    weight_m: Callable[[int], float] = lambda e: 0.01 + 1e-4 * e,
    dead: float = 0.5,
    diagnostics: bool = False,
    trainer: dict | None = None,
    code: dict | None = None,
) -> Path:
    """A run directory as the training loop writes it; ``test_r(epoch)`` gives the evaluated return.
    ``trainer``: ppo_trainer keys of the run's config that differ from the study's; ``code``: its
    run.json code version."""
    trainer = trainer or {}
    run = root / condition / f"seed_{seed}"
    run.mkdir(parents=True)
    lines = [",".join(BASE_COLUMNS)]
    for e in range(length):
        row = {c: 0.1 for c in BASE_COLUMNS}
        task = sum(e >= s for s in SHIFTS)
        evaluated = e % test_interval == 0 or e == num_epochs - 1 or e + 1 in SHIFTS  # the runner's schedule
        value = test_r(e) if evaluated else None
        row.update(epoch=e, env_steps=1024 * (e + 1), task=task, test_r="" if value is None else value,
                   weight_m=weight_m(e), dead_units=dead, entropy=2.0 - 0.01 * e)
        lines.append(",".join(str(row[c]) for c in BASE_COLUMNS))
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    if diagnostics:
        probes = [",".join(["epoch", "task", *PROBE_COLUMNS])]
        probes += [f"{e},{sum(e >= s for s in SHIFTS)},{100 - e},{90 - e},{0.01 * e},{seed},1.5" for e in range(0, length, 10)]
        (run / "diagnostics.csv").write_text("\n".join(probes) + "\n")
    run_cfg = {"ppo_trainer": {"num_epochs": num_epochs, "shift_points": SHIFTS, "test_interval": test_interval, **trainer},
               "run": {"name": root.name, "condition": condition, "seed": seed}}
    (run / "config.yaml").write_text(yaml.safe_dump(run_cfg))
    command = f"train.py -n {root.name} -p cfg.yaml -c {condition} -s {seed}"
    invocation = {"command": command, "device": "cpu", "started": "2026-01-01T00:00:00", "code": code or CODE}
    (run / "run.json").write_text(json.dumps({"invocations": [invocation]}))
    if (length == num_epochs) if done is None else done:
        (run / "DONE").write_text("finished\n")
    return run


def constant(value: float) -> Callable[[int], float]:
    return lambda e: value


# ------------------------------------------------------------------------------------- statistics
def study_of(root: Path, **kwargs):
    return compare(open_study(root, **{k: v for k, v in kwargs.items() if k in ("baseline", "reference", "allow_mixed")}),
                   AnalysisConfig(**{k: v for k, v in kwargs.items() if k in ("final_window",)}), reps=REPS)


def test_table_mean_and_iqm_over_seeds_match_hand_computation(tmp_path):
    root = write_study(tmp_path / "s", ["baseline"])
    values = [100, 1, 7, 2, 6, 3, 5, 4]
    for seed, value in enumerate(values):
        write_run(root, "baseline", seed, constant(float(value)))
    result = study_of(root).results["baseline"]
    assert result.iqm.value == pytest.approx(4.5)  # the middle four: the outlier 100 does not count
    assert result.test.value == pytest.approx(128 / 8) and result.test.n == 8
    half = 2.3646242510102993 * np.std(values, ddof=1) / math.sqrt(8)  # t(0.975, 7)
    assert (result.test.lo, result.test.hi) == pytest.approx((16 - half, 16 + half))
    assert len(result.finals) == 8


def test_curve_band_uses_only_seeds_present_and_none_for_one_seed():
    values = np.array([[1.0, 2.0, 3.0], [3.0, np.nan, np.nan]])
    mean, lo, hi, count = curve_band(values)
    assert mean.tolist() == [2.0, 2.0, 3.0] and count.tolist() == [2, 1, 1]
    half = 12.706204736174698 * math.sqrt(2) / math.sqrt(2)  # t(0.975, 1) * sd / sqrt(n)
    assert (lo[0], hi[0]) == pytest.approx((2 - half, 2 + half))
    assert np.isnan(lo[1:]).all() and np.isnan(hi[1:]).all()


def test_paired_comparison_uses_per_seed_differences(tmp_path):
    """Large seed effects shared by both conditions cancel in the paired differences."""
    root = write_study(tmp_path / "s", ["baseline", "method", "worse"])
    for seed, level in enumerate([1.0, 30.0, 8.0, 60.0, 15.0, 45.0]):
        write_run(root, "baseline", seed, constant(level))
        write_run(root, "method", seed, constant(level + 2.0 + 0.1 * seed))
        write_run(root, "worse", seed, constant(level - 1.0))
    comparison = study_of(root)
    method = comparison.paired["test_r"]["method"]
    d = 2.0 + 0.1 * np.arange(6)
    half = 2.5705818366147395 * d.std(ddof=1) / math.sqrt(6)  # t(0.975, 5)
    assert method.seeds == list(range(6)) and method.diff.n == 6
    assert (method.diff.value, method.diff.lo, method.diff.hi) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half))
    assert method.p == pytest.approx(2 / 2**6)  # every seed improved: the most extreme of 64 sign patterns
    assert method.p_holm == pytest.approx(min(1.0, 2 * 2 / 2**6))  # Holm over 2 comparisons, both at 1/32
    base_mean = np.mean([1.0, 30.0, 8.0, 60.0, 15.0, 45.0])
    assert method.relative.value == pytest.approx(100 * d.mean() / base_mean)
    assert method.relative.lo < method.relative.value < method.relative.hi
    worse = comparison.paired["test_r"]["worse"]
    assert worse.diff.value == pytest.approx(-1.0) and worse.diff.lo == pytest.approx(-1.0)  # no spread: a point
    assert worse.win.value == 0.0 and worse.win.hi == pytest.approx(1 - 0.025 ** (1 / 6))  # Clopper-Pearson, 0 of 6
    assert "baseline" not in comparison.paired["test_r"]


def test_relative_change_against_a_negative_baseline_keeps_its_sign():
    change = stats.relative_change(np.array([4.0, 4.0, 4.0]), np.array([-5.0, -5.0, -5.0]))
    assert change.value == pytest.approx(180.0)


def test_final_window_averages_the_last_ten_percent_of_evaluations_or_the_given_count(tmp_path):
    root = write_study(tmp_path / "s", ["baseline"], test_interval=1)
    write_run(root, "baseline", 0, lambda e: float(e), test_interval=1)
    study = open_study(root)
    default = compare(study, reps=REPS)
    assert default.window == (27, 30) and default.evaluations == 3
    assert default.results["baseline"].test.value == pytest.approx((27 + 28 + 29) / 3)
    assert compare(study, AnalysisConfig(final_window=5), reps=REPS).results["baseline"].test.value == pytest.approx(27.0)


def test_a_wide_final_window_is_clipped_to_the_last_task_and_says_so(tmp_path):
    root = write_study(tmp_path / "s", ["baseline"], test_interval=1)
    write_run(root, "baseline", 0, lambda e: float(e), test_interval=1)
    comparison = compare(open_study(root), AnalysisConfig(final_window=15), reps=REPS)
    assert comparison.window == (20, 30)  # not 15: the shift at epoch 20 starts the last task
    assert comparison.results["baseline"].test.value == pytest.approx(24.5)
    assert any("final window clipped to the last task (epochs 20-29)" in n for n in comparison.notes)


def ramp(levels):
    """Test return rising to the round's level at the round's last epoch."""
    def value(e):
        k = sum(e >= s for s in SHIFTS)
        start, end = [0, *SHIFTS][k], [*SHIFTS, EPOCHS][k]
        return levels[k] * (e - start + 1) / (end - start)
    return value


def test_per_round_view_measures_each_round_at_its_last_epoch(tmp_path):
    root = write_study(tmp_path / "s", ["baseline", "method"])
    levels = {"baseline": [10.0, 5.0, 2.5], "method": [8.0, 8.0, 12.0]}
    for condition, lv in levels.items():
        for seed in range(2):
            write_run(root, condition, seed, ramp(lv))  # evaluated every 5 epochs and at each round's last epoch
    comparison = compare(open_study(root), AnalysisConfig(final_window=1), reps=REPS)
    assert comparison.rounds == [(0, 10), (10, 20), (20, 30)]
    assert comparison.round_windows == [(9, 10), (19, 20), (29, 30)]
    ends = comparison.round_ends["baseline"]
    assert [v.value for v in ends.values] == pytest.approx([10.0, 5.0, 2.5])
    assert [v.value for v in ends.relative] == pytest.approx([1.0, 0.5, 0.25])
    assert [v.value for v in comparison.round_ends["method"].relative] == pytest.approx([1.0, 1.0, 1.5])
    assert not any("measured early" in n for n in comparison.notes)


def test_last_round_equals_the_final_value_and_rounds_get_intervals(tmp_path):
    root = write_study(tmp_path / "s", ["baseline"], test_interval=2)
    for seed in range(3):
        write_run(root, "baseline", seed, lambda e, s=seed: 1.0 + 0.01 * e + 0.1 * s, test_interval=2)
    comparison = compare(open_study(root), reps=REPS)
    assert comparison.evaluations == 2  # 18 evaluations (every 2nd epoch and each round's last): 10%
    assert comparison.round_windows == [(8, 10), (18, 20), (28, 30)]
    last, final = comparison.round_ends["baseline"].values[-1], comparison.results["baseline"].test
    assert (last.value, last.lo, last.hi, last.n) == pytest.approx((final.value, final.lo, final.hi, 3))
    first = comparison.round_ends["baseline"].values[0]
    assert first.value == pytest.approx(1.0 + 0.01 * 8.5 + 0.1) and first.lo < first.value < first.hi


def test_rounds_of_old_runs_without_a_round_end_evaluation_are_noted(tmp_path):
    root = write_study(tmp_path / "s", ["baseline"])
    run = write_run(root, "baseline", 0, constant(1.0))
    lines = (run / "metrics.csv").read_text().splitlines()
    column = lines[0].split(",").index("test_r")
    for i in (10, 20):  # epochs 9 and 19: drop the round-end evaluations, as runs made before them
        cells = lines[i].split(",")
        cells[column] = ""
        lines[i] = ",".join(cells)
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    notes = "\n".join(compare(open_study(root), reps=REPS).notes)
    assert "round 1 at epoch 5 (4 before its end), round 2 at epoch 15 (4 before its end)" in notes


def test_probability_of_beating_the_baseline_is_not_degenerate_under_separation(tmp_path):
    root = write_study(tmp_path / "s", ["baseline", "better", "same"])
    for seed in range(5):
        write_run(root, "baseline", seed, constant(1.0 + 0.1 * seed))
        write_run(root, "better", seed, constant(5.0 + 0.1 * seed))
        write_run(root, "same", seed, constant(1.0 + 0.1 * seed))
    paired = study_of(root).paired["test_r"]
    better = paired["better"].win
    assert better.value == pytest.approx(1.0) and better.hi == pytest.approx(1.0)
    assert better.lo == pytest.approx(0.025 ** (1 / 5))  # Clopper-Pearson lower bound of 5 wins in 5: 0.478
    assert paired["better"].p == pytest.approx(2 / 32)  # exact sign-flip: 5 seeds cannot reach p < 0.05
    same = paired["same"].win  # all ties: half a win each, interval spanning either reading
    assert same.value == pytest.approx(0.5) and same.lo == pytest.approx(0.0) and same.hi == pytest.approx(1.0)
    assert paired["same"].p == pytest.approx(1.0)


def test_correlations_are_computed_within_and_between_conditions(tmp_path):
    """Within each condition a run with more of the metric ends higher, while the conditions' means
    go the other way: a pooled correlation would report a strong negative one."""
    root = write_study(tmp_path / "s", ["baseline", "b", "c"])
    for c, condition in enumerate(["baseline", "b", "c"]):
        for seed in range(2):
            write_run(root, condition, seed, constant(10.0 * c + seed), weight_m=constant(-10.0 * c + seed))
    rows = {row.names[0]: row for row in study_of(root).correlations}
    weight = rows["weight_m"]
    assert weight.within.r == pytest.approx(1.0) and weight.within.n == 6 and weight.within.groups == 3
    assert weight.between.r == pytest.approx(-1.0) and weight.between.n == 3
    assert weight.runs == {"baseline": [0, 1], "b": [0, 1], "c": [0, 1]}
    dead = rows["dead_units"]
    assert math.isnan(dead.within.r) and dead.within.why_none == "no variation within conditions"
    assert math.isnan(dead.between.r) and dead.between.why_none == "constant across conditions"


def test_identical_series_share_one_correlation_row_and_p_is_holm_adjusted(tmp_path):
    root = write_study(tmp_path / "s", ["baseline", "b", "c"])
    rng = np.random.default_rng(0)
    for condition in ["baseline", "b", "c"]:
        for seed in range(4):
            run = write_run(root, condition, seed, constant(float(rng.normal())), weight_m=constant(float(rng.normal())))
            same = float(rng.normal())
            (run / "diagnostics.csv").write_text(
                "epoch,task,overall/dead_frac,overall/dormant_0,overall/activation_rate\n"
                f"0,0,{same},{same},{rng.normal()}\n25,2,{same},{same},{rng.normal()}\n"
            )
    rows = study_of(root).correlations
    names = [row.names for row in rows]
    assert ["diagnostics/overall/dead_frac", "diagnostics/overall/dormant_0"] in names
    assert sum(len(n) for n in names) == len({x for n in names for x in n})  # no series twice
    within = [row.within.p for row in rows]
    assert [row.within_holm for row in rows] == pytest.approx(list(stats.holm(within)), nan_ok=True)


def test_half_written_last_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,test_r,dead_units\n0,1.5,0.2\n1,,0.3\n2,2.")
    frame = read_epoch_csv(path)
    assert frame["epoch"].tolist() == [0, 1]
    assert frame["test_r"].tolist()[0] == 1.5 and np.isnan(frame["test_r"].tolist()[1])


# ------------------------------------------------------------------------------- partial sweeps
def test_stopped_runs_are_counted_as_failed_with_a_sensitivity_line(tmp_path):
    root = write_study(tmp_path / "s", ["baseline", "method", "pending"])
    for seed in range(2):
        write_run(root, "baseline", seed, constant(5.0))
    write_run(root, "method", 0, constant(6.0))
    write_run(root, "method", 1, constant(100.0), length=27)  # crashed at epoch 27 (no DONE, no live process)
    comparison = compare(open_study(root), AnalysisConfig(final_window=2), reps=REPS)
    assert comparison.window == (25, EPOCHS)
    method = comparison.results["method"]
    assert method.test.value == pytest.approx(6.0)  # the stopped seed's 100.0 never enters
    assert method.incomplete == [f"seed_1 (27/{EPOCHS})"]
    assert "crashed, killed or stopped" in method.failed["method/seed_1"]
    sensitivity = comparison.sensitivity
    assert sensitivity.worst == pytest.approx(5.0) and sensitivity.failed == {"method": 1}
    assert sensitivity.means["method"].value == pytest.approx((6.0 + 5.0) / 2)  # the failure scored as the worst
    assert sensitivity.paired["method"].diff.value == pytest.approx(0.5)
    assert any("pending: configured but no runs yet" in n for n in comparison.notes)


def test_a_running_run_is_incomplete_not_failed(tmp_path):
    import fcntl

    root = write_study(tmp_path / "s", ["baseline", "method"])
    for seed in range(2):
        write_run(root, "baseline", seed, constant(5.0))
    write_run(root, "method", 0, constant(6.0))
    running = write_run(root, "method", 1, constant(6.0), length=12)
    with open(running / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # what run_lock holds while training
        comparison = compare(open_study(root), reps=REPS)
    method = comparison.results["method"]
    assert method.failed == {} and "still running" in method.left_out["method/seed_1"]
    assert comparison.sensitivity is None


def test_sweep_where_no_run_finished_compares_on_the_common_range_and_says_so(tmp_path):
    root = write_study(tmp_path / "s", ["baseline", "method"])
    write_run(root, "baseline", 0, constant(5.0), length=22)
    write_run(root, "method", 0, constant(6.0), length=17)
    comparison = compare(open_study(root), reps=REPS)
    assert comparison.horizon == 17 and comparison.window == (15, 17)
    assert comparison.rounds == [(0, 10)]
    assert any("common range" in n and "17 epochs" in n for n in comparison.notes)
    assert comparison.paired["test_r"]["method"].relative.value == pytest.approx(20.0)


def test_mismatched_runs_are_excluded_with_a_reason(tmp_path):
    root = write_study(tmp_path / "s", ["baseline", "method"])
    write_run(root, "baseline", 0, constant(5.0))
    write_run(root, "baseline", 1, constant(50.0), length=40, num_epochs=40)
    write_run(root, "method", 0, constant(6.0))
    write_run(root, "method", 1, lambda e: None)
    comparison = compare(open_study(root), reps=REPS)
    assert comparison.results["baseline"].test.value == pytest.approx(5.0)
    assert "trained for 40 epochs" in comparison.results["baseline"].left_out["baseline/seed_1"]
    assert comparison.results["method"].failed["method/seed_1"] == "test_r never logged"
    notes = "\n".join(comparison.notes)
    assert "baseline/seed_1 is left out of all curves and final values: trained for 40 epochs" in notes
    assert "method/seed_1: test_r is empty in every row" in notes


def test_unknown_baseline_and_empty_directory_are_errors(tmp_path):
    root = write_study(tmp_path / "s", ["baseline"])
    with pytest.raises(ConfigError, match="no run directories"):
        open_study(root)
    write_run(root, "baseline", 0, constant(1.0))
    with pytest.raises(ConfigError, match="--baseline nope"):
        open_study(root, baseline="nope")
    with pytest.raises(ConfigError, match="--reference nope"):
        open_study(root, reference="nope")
    with pytest.raises(ConfigError, match="config.yaml: not found"):
        open_study(tmp_path)
    with pytest.raises(ConfigError, match="--final-window 0: must be"):
        report(root, final_window=0)


def plan_study(tmp_path, analysis: dict | None) -> Path:
    root = write_study(tmp_path / "s", ["baseline", "method"], test_interval=1)
    if analysis is not None:
        config = yaml.safe_load((root / "config.yaml").read_text())
        (root / "config.yaml").write_text(yaml.safe_dump({**config, "analysis": analysis}, sort_keys=False))
    for seed in range(3):
        write_run(root, "baseline", seed, lambda e: float(e), test_interval=1)
        write_run(root, "method", seed, lambda e, s=seed: float(e) + 1 + 0.1 * s, test_interval=1)
    return root


def test_the_declared_analysis_plan_is_used_and_a_flag_overrides_it_visibly(tmp_path):
    study = open_study(plan_study(tmp_path, {"final_window": 5, "equivalence_margin": 0.2}))
    plan, text = analysis_plan(study)
    assert (plan.final_window, plan.equivalence_margin, plan.primary) == (5, 0.2, "test_r")
    assert "Declared in the study's config.yaml (analysis)" in text and "Overridden" not in text
    assert compare(study, plan, reps=REPS).results["baseline"].test.value == pytest.approx(27.0)  # epochs 25-29
    plan, text = analysis_plan(study, final_window=2, primary=None, equivalence_margin=0.2)
    assert plan.final_window == 2 and "Overridden on the command line: --final-window 2 (declared: 5)." in text
    assert "--equivalence-margin" not in text  # given, but the same as declared
    _, text = analysis_plan(open_study(plan_study(tmp_path / "none", None)))
    assert "declares no analysis section, so these are the defaults, not a plan fixed before the runs" in text


def test_a_bad_analysis_plan_or_flag_is_a_one_line_error(tmp_path, capsys):
    root = plan_study(tmp_path, {"primary": "score"})
    assert main(["report", str(root), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{root / 'config.yaml'}: analysis.primary: allowed:" in err, err
    assert not (tmp_path / "rep").exists()
    study = open_study(plan_study(tmp_path / "ok", {}))
    with pytest.raises(ConfigError, match="--primary score: Input should be 'test_r'"):
        analysis_plan(study, primary="score")
    with pytest.raises(ConfigError, match="--equivalence-margin 2.0: Input should be less than 1"):
        analysis_plan(study, equivalence_margin=2.0)


def test_normalised_score_is_relative_to_the_reference_condition(tmp_path):
    root = write_study(tmp_path / "s", ["baseline", "reset-all"])
    for seed in range(3):
        write_run(root, "baseline", seed, constant(2.0 + seed))
        write_run(root, "reset-all", seed, constant(4.0 + 2 * seed))
    results = study_of(root, reference="reset-all").results
    assert results["baseline"].normalised.value == pytest.approx(9 / 18)
    assert results["reset-all"].normalised.value == pytest.approx(1.0)
    assert results["baseline"].normalised.lo == pytest.approx(0.5)  # x = y / 2 exactly: a point


# ------------------------------------------------------------------------------- whole report
def write_mixed_study(root: Path) -> Path:
    """Complete, stopped, mismatched and test-less runs, with probe diagnostics."""
    write_study(root, ["baseline", "method", "pending"])
    for seed in range(2):
        write_run(root, "baseline", seed, lambda e, s=seed: 5.0 + 0.1 * s, diagnostics=True, dead=0.8)
        write_run(root, "method", seed, lambda e, s=seed: 6.0 + 0.1 * s, diagnostics=True, dead=0.4)
    write_run(root, "method", 2, constant(9.0), length=14, diagnostics=True)
    write_run(root, "baseline", 2, constant(9.0), num_epochs=40, length=40)
    features = root / "feature_analysis"  # as plab analyze leaves it
    features.mkdir()
    (features / "summary.csv").write_text("condition,seed,task,dead_pct\nbaseline,0,0,19.140625\n")
    Image.new("RGB", (60, 40), "steelblue").save(features / "activation_distribution.png")
    return root


FIGURES = [
    "test_reward_comparison.png", "dead_units_comparison.png", "summary_comparison.png", "paired_differences.png",
    "iqm_test_return.png", "performance_profiles.png", "correlations.png",
]


@pytest.fixture(scope="module")
def mixed_report(tmp_path_factory):
    """(study root, report.html, what report() printed): one report shared by the tests below."""
    root = write_mixed_study(tmp_path_factory.mktemp("report") / "mixed")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        html_path = report(root, reps=REPS)
    return root, html_path, printed.getvalue()


def test_report_writes_every_file(mixed_report):
    root, html_path, _ = mixed_report
    figures = root / "comparison_figures"
    expected = list(FIGURES)
    expected += [f"metric_{c}.png" for c in BASE_COLUMNS if c not in ("epoch", "env_steps", "wall_time", "task", "test_r", "dead_units")]
    expected += [f"metric_diagnostics_{stat}.png" for stat in ("effective_rank", "dormant_0.025", "trainability_ratio", "probe_seconds")]
    for name in expected:
        assert (figures / name).stat().st_size > 5000, name
    assert html_path == root / "report.html"
    page = html_path.read_text()
    assert page.count('<img alt="') == page.count('src="data:image/png;base64,') == len(expected) + 1
    assert "activation distribution" in page and "<td>19.14</td>" in page  # plab analyze's output
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "train.py -n mixed -p cfg.yaml -c method -s 2" in page  # the exact commands
    assert "shift_points:" in page  # the resolved config


def test_summary_has_the_study_tables_and_names_incomplete_failed_and_mismatched_runs(mixed_report):
    root, _, _ = mixed_report
    summary = (root / "summary.md").read_text()
    assert "| Condition | Test return: mean [95% CI] | IQM [95% CI] | Dead units |" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| method | 6.05"))
    half = 12.706204736174698 * 0.1 / math.sqrt(2) / math.sqrt(2)  # t(0.975, 1) * sd / sqrt(2): sd of 6.0, 6.1
    assert f"6.05 [{6.05 - half:.2f}, {6.05 + half:.2f}] (n=2, weak)" in row
    assert "| 40.0% [40.0, 40.0] (n=2, weak) |" in row and "s0: 6.00, s1: 6.10" in row and f"seed_2 (14/{EPOCHS})" in row
    paired = next(line for line in summary.splitlines() if line.startswith("| method | 1.00"))
    assert "+19.8%" in paired and "| 0.5 (sign-flip, exact) | 0.5 |" in paired  # (6.05 - 5.05) / 5.05; exact p of 2 seeds, Holm k=1
    assert paired.endswith("| inconclusive | s0: +1.00, s1: +1.00 |")  # p 0.5: not shown, whatever the interval
    assert "s0: +1.00, s1: +1.00" in paired
    assert "method/seed_2 is incomplete (stopped: no DONE file and no live process): 14 of 30 epochs logged." in summary
    assert "baseline/seed_2 is left out of all curves and final values: trained for 40 epochs" in summary
    assert "Sensitivity: every failed run scored as the worst final test return of the study (5.00)" in summary
    correlated = summary.split("## Plasticity metrics vs. final test return")[1].split("##")[0]
    assert "| probe: dense/effective_rank |" in correlated and "| probe: trainability_ratio |" in correlated
    assert "conv1/" not in correlated and "probe_seconds" not in correlated
    assert "## Return at the end of each round" in summary and "## Seeds needed" in summary
    assert "| 0123456789ab v0.1.0 |" in summary  # the runs' code version, in the provenance table
    assert "by `plab report` (code " in summary.splitlines()[2]  # and the report's own


def test_comparisons_csv_holds_every_paired_number(mixed_report):
    import pandas as pd

    root, _, _ = mixed_report
    table = pd.read_csv(root / "comparisons.csv")
    test = table[table["metric"] == "test_r"].iloc[0]
    assert (test["condition"], test["baseline"], test["n_pairs"]) == ("method", "baseline", 2)
    assert (test["diff"], test["ci_low"], test["ci_high"]) == pytest.approx((1.0, 1.0, 1.0))
    assert (test["p"], test["p_holm"]) == pytest.approx((0.5, 0.5))
    assert test["rel_diff_pct"] == pytest.approx(100 / 5.05, rel=1e-5)
    assert (test["role"], test["better"], test["verdict"]) == ("primary", "higher", "inconclusive")
    assert test["test"].startswith("sign-flip, exact") and test["p_floor"] == pytest.approx(0.5)
    dead = table[table["metric"] == "dead_units"].iloc[0]
    assert dead["diff"] == pytest.approx(40.0 - 80.0)  # in percent, as the report shows dead units
    assert (dead["role"], dead["better"]) == ("secondary", "lower")
    assert dead["p_beats_baseline"] == pytest.approx(1.0)  # fewer dead units in both seeds: the method wins both
    for column in ("p", "p_holm", "rel_diff_pct", "rel_ci_low", "rel_ci_high", "iqm_diff", "p_beats_baseline", "ci_level"):
        assert column in table.columns


def test_report_prints_its_notes(mixed_report):
    printed = mixed_report[2]
    assert "note: method/seed_2 is incomplete (stopped: no DONE file and no live process): 14 of 30 epochs logged." in printed
    assert "note: baseline/seed_2 is left out of all curves and final values: trained for 40 epochs" in printed


def test_dead_units_undefined_for_an_activation_shows_na_and_dormant_units_are_compared(tmp_path):
    """Newer runs log dormant_units (defined for every activation) and leave dead_units empty where
    exact zeros mean nothing (leaky-relu); older studies have no dormant_units column at all."""
    root = write_study(tmp_path / "s", ["baseline", "leaky"])
    for condition, dormant in (("baseline", 0.3), ("leaky", 0.1)):
        for seed in range(2):
            run = write_run(root, condition, seed, constant(5.0 + seed))
            lines = (run / "metrics.csv").read_text().splitlines()
            header = lines[0].split(",")
            dead, dormant_col = header.index("dead_units"), header.index("dormant_units")
            rows = []
            for line in lines[1:]:
                cells = line.split(",")
                if condition == "leaky":
                    cells[dead] = ""
                cells[dormant_col] = str(dormant + 0.01 * seed)
                rows.append(",".join(cells))
            (run / "metrics.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    with contextlib.redirect_stdout(io.StringIO()):
        html = report(root, reps=REPS)
    comparison = compare(open_study(root), reps=REPS)
    assert comparison.results["leaky"].dead is None
    assert comparison.results["leaky"].dormant.value == pytest.approx(10.5)  # percent
    assert comparison.paired["dormant_units"]["leaky"].diff.value == pytest.approx(-20.0)
    assert "dead_units" not in comparison.paired or "leaky" not in comparison.paired["dead_units"]
    summary = (html.parent / "summary.md").read_text()
    assert "| Condition | Test return: mean [95% CI] | IQM [95% CI] | Dead units | Dormant units |" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| leaky |"))
    assert "| n/a | 10.5% [" in row


def test_plasticity_loss_per_round_is_the_paired_baseline_minus_reference_on_train_and_test(tmp_path):
    """The baseline loses 1 test-return point per round against reset-all (and nothing on training
    return); every seed shifts both conditions equally, so the paired differences are exact."""
    root = write_study(tmp_path / "s", ["baseline", "reset-all"])
    for seed in range(4):
        task = lambda e: sum(e >= s for s in SHIFTS)  # noqa: E731
        write_run(root, "baseline", seed, lambda e, seed=seed: 5.0 + 0.3 * seed - task(e))
        write_run(root, "reset-all", seed, lambda e, seed=seed: 5.0 + 0.3 * seed)
    comparison = study_of(root, reference="reset-all")
    loss = comparison.round_loss
    assert [c.diff.value for c in loss["test_r"]] == pytest.approx([0.0, -1.0, -2.0])
    assert all(len(c.seeds) == 4 for c in loss["test_r"])
    assert loss["test_r"][2].p == pytest.approx(2 / 16)  # all 4 differences negative: 2 of 16 sign patterns as extreme
    assert loss["test_r"][2].p_holm == pytest.approx(3 * 2 / 16)  # Holm over 3 rounds: two tied smallest p, x3
    assert [c.diff.value for c in loss["train_r"]] == pytest.approx([0.0, 0.0, 0.0])  # train_r is 0.1 in every run
    with contextlib.redirect_stdout(io.StringIO()):
        html = report(root, reps=REPS, reference="reset-all")
    summary = (html.parent / "summary.md").read_text()
    assert "Plasticity loss per round: baseline minus reset-all" in summary
    frame = pd.read_csv(html.parent / "comparisons.csv")
    row = frame[frame.metric == "test_r_round_3"].iloc[0]
    assert row.condition == "baseline" and row.baseline == "reset-all" and row.n_pairs == 4
    assert row["diff"] == pytest.approx(-2.0)
    # without a reference condition there is no such view
    assert study_of(root).round_loss == {}


def test_a_probe_from_an_earlier_task_is_not_a_final_value(tmp_path):
    """Probes at epochs 0, 10, 20 (the last task starts at 20): the final window's probe value is
    the one of epoch 20; with the epoch-20 probe removed, there is none (NaN), not epoch 10's."""
    root = write_study(tmp_path / "s", ["baseline"])
    run = write_run(root, "baseline", 0, constant(5.0), diagnostics=True)
    name = "diagnostics/dense/effective_rank"
    assert study_of(root).results["baseline"].finals[0][name] == pytest.approx(100 - 20)
    lines = (run / "diagnostics.csv").read_text().splitlines()
    (run / "diagnostics.csv").write_text("\n".join(line for line in lines if not line.startswith("20,")) + "\n")
    assert math.isnan(study_of(root).results["baseline"].finals[0][name])
