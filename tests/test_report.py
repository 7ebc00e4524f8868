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
import pytest
import yaml
from PIL import Image

from plasticity_lab.analysis.aggregate import (
    bootstrap_mean_ci,
    change_pct,
    compare,
    iqm_ci,
    load_study,
    read_epoch_csv,
    relative_to_first_round,
)
from plasticity_lab.analysis.report import report
from plasticity_lab.config import ConfigError
from plasticity_lab.experiment.logger import BASE_COLUMNS

EPOCHS, SHIFTS, TEST_INTERVAL = 30, [10, 20], 5
PROBE_COLUMNS = ["dense/effective_rank", "conv1/effective_rank", "overall/dormant_0.025", "trainability_ratio", "probe_seconds"]
REPS = 200


def write_study(root: Path, conditions: list[str], baseline: str = "baseline") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = {
        "experiment": {"baseline": baseline, "conditions": {c: {} for c in conditions}},
        "ppo_trainer": {"num_epochs": EPOCHS, "shift_points": SHIFTS, "test_interval": TEST_INTERVAL},
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
) -> Path:
    """A run directory as the training loop writes it; ``test_r(epoch)`` gives the evaluated return."""
    run = root / condition / f"seed_{seed}"
    run.mkdir(parents=True)
    lines = [",".join(BASE_COLUMNS)]
    for e in range(length):
        row = {c: 0.1 for c in BASE_COLUMNS}
        task = sum(e >= s for s in SHIFTS)
        evaluated = e % test_interval == 0 or e == num_epochs - 1
        value = test_r(e) if evaluated else None
        row.update(epoch=e, env_steps=1024 * (e + 1), task=task, test_r="" if value is None else value,
                   weight_m=weight_m(e), dead_units=dead, entropy=2.0 - 0.01 * e)
        lines.append(",".join(str(row[c]) for c in BASE_COLUMNS))
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    if diagnostics:
        probes = [",".join(["epoch", "task", *PROBE_COLUMNS])]
        probes += [f"{e},{sum(e >= s for s in SHIFTS)},{100 - e},{90 - e},{0.01 * e},{seed},1.5" for e in range(0, length, 10)]
        (run / "diagnostics.csv").write_text("\n".join(probes) + "\n")
    run_cfg = {"ppo_trainer": {"num_epochs": num_epochs, "shift_points": SHIFTS},
               "run": {"name": root.name, "condition": condition, "seed": seed}}
    (run / "config.yaml").write_text(yaml.safe_dump(run_cfg))
    command = f"train.py -n {root.name} -p cfg.yaml -c {condition} -s {seed}"
    (run / "run.json").write_text(json.dumps({"invocations": [{"command": command, "device": "cpu", "started": "2026-01-01T00:00:00"}]}))
    if (length == num_epochs) if done is None else done:
        (run / "DONE").write_text("finished\n")
    return run


def constant(value: float) -> Callable[[int], float]:
    return lambda e: value


# ------------------------------------------------------------------------------------- statistics
def test_iqm_of_eight_seeds_is_the_mean_of_the_middle_four():
    estimate = iqm_ci(np.array([1, 2, 3, 4, 5, 6, 7, 100.0]), reps=REPS)  # the outlier must not count
    assert estimate.value == pytest.approx((3 + 4 + 5 + 6) / 4)
    assert estimate.lo <= 4.5 <= estimate.hi and estimate.lo < estimate.hi


def test_table_iqm_over_seeds_matches_hand_computation(tmp_path):
    root = write_study(tmp_path / "s", ["baseline"])
    for seed, value in enumerate([100, 1, 7, 2, 6, 3, 5, 4]):
        write_run(root, "baseline", seed, constant(float(value)))
    result = compare(load_study(root), reps=REPS).results["baseline"]
    assert result.iqm.value == pytest.approx(4.5)
    assert result.test.value == pytest.approx(128 / 8)
    assert len(result.finals) == 8


def test_iqm_ci_covers_the_true_value_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    hits = [iqm_ci(rng.normal(3.0, 1.0, size=20), reps=150, seed=i) for i in range(200)]
    coverage = np.mean([e.lo <= 3.0 <= e.hi for e in hits])
    assert 0.85 <= coverage <= 0.99, coverage


def test_mean_band_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(2)
    values = rng.exponential(2.0, size=(20, 400))  # 400 experiments of 20 seeds, skewed scores
    mean, lo, hi = bootstrap_mean_ci(values, reps=1000, rng=rng)
    coverage = np.mean((lo <= 2.0) & (2.0 <= hi))
    assert 0.85 <= coverage <= 0.99, coverage
    assert np.allclose(mean, values.mean(axis=0))


def test_mean_band_uses_only_seeds_present_and_none_for_one_seed():
    values = np.array([[1.0, 2.0, 3.0], [3.0, np.nan, np.nan]])
    mean, lo, hi = bootstrap_mean_ci(values, reps=200, rng=np.random.default_rng(0))
    assert mean.tolist() == [2.0, 2.0, 3.0]
    assert lo[0] == 1.0 and hi[0] == 3.0
    assert np.isnan(lo[1:]).all() and np.isnan(hi[1:]).all()


def test_change_vs_baseline_in_percent(tmp_path):
    assert change_pct(6.0, 5.0) == pytest.approx(20.0)
    assert change_pct(4.0, -5.0) == pytest.approx(180.0)
    root = write_study(tmp_path / "s", ["baseline", "method", "worse"])
    for seed in range(2):
        write_run(root, "baseline", seed, constant(5.0))
        write_run(root, "method", seed, constant(6.0))
        write_run(root, "worse", seed, constant(4.0))
    results = compare(load_study(root), reps=REPS).results
    assert results["method"].vs_baseline_pct == pytest.approx(20.0)
    assert results["worse"].vs_baseline_pct == pytest.approx(-20.0)
    assert math.isnan(results["baseline"].vs_baseline_pct)


def test_final_window_averages_the_last_ten_percent_of_evaluations_or_the_given_count(tmp_path):
    root = write_study(tmp_path / "s", ["baseline"])
    write_run(root, "baseline", 0, lambda e: float(e), test_interval=1)
    study = load_study(root)
    default = compare(study, reps=REPS)
    assert default.window == (27, 30)
    assert default.results["baseline"].test.value == pytest.approx((27 + 28 + 29) / 3)
    assert compare(study, final_window=5, reps=REPS).results["baseline"].test.value == pytest.approx(27.0)


def test_per_round_view_is_relative_to_the_end_of_round_one(tmp_path):
    root = write_study(tmp_path / "s", ["baseline", "method"])
    levels = {"baseline": [10.0, 5.0, 2.5], "method": [8.0, 8.0, 12.0]}
    for condition, (r1, r2, r3) in levels.items():
        for seed in range(2):
            def ramp(e, r=(r1, r2, r3)):  # rises to the round's level at its last epoch
                k = sum(e >= s for s in SHIFTS)
                start = [0, *SHIFTS][k]
                return r[k] * (e - start + 1) / 10
            write_run(root, condition, seed, ramp, test_interval=1)
    comparison = compare(load_study(root), reps=REPS)
    assert comparison.rounds == [(0, 10), (10, 20), (20, 30)]
    assert comparison.round_ends["baseline"] == pytest.approx([10.0, 5.0, 2.5])
    assert relative_to_first_round(comparison.round_ends["baseline"]) == pytest.approx([1.0, 0.5, 0.25])
    assert relative_to_first_round(comparison.round_ends["method"]) == pytest.approx([1.0, 1.0, 1.5])
    assert math.isnan(relative_to_first_round([0.0, 1.0])[1])


def test_probability_of_improvement_is_one_when_a_method_dominates(tmp_path):
    root = write_study(tmp_path / "s", ["baseline", "better", "same"])
    for seed in range(5):
        write_run(root, "baseline", seed, constant(1.0 + 0.1 * seed))
        write_run(root, "better", seed, constant(5.0 + 0.1 * seed))
        write_run(root, "same", seed, constant(1.0 + 0.1 * seed))
    results = compare(load_study(root), reps=REPS).results
    assert results["better"].improvement.value == pytest.approx(1.0)
    assert results["better"].improvement.lo == pytest.approx(1.0)
    assert results["same"].improvement.value == pytest.approx(0.5)
    assert results["same"].improvement.lo < 0.5 < results["same"].improvement.hi


def test_correlation_of_a_metric_that_tracks_final_return(tmp_path):
    root = write_study(tmp_path / "s", ["baseline", "method"])
    for i, (condition, seed) in enumerate([("baseline", 0), ("baseline", 1), ("method", 0), ("method", 1)]):
        write_run(root, condition, seed, constant(2.0 + i), weight_m=constant(0.5 - 0.1 * i))
    correlations = {c.name: c for c in compare(load_study(root), reps=REPS).correlations}
    assert correlations["weight_m"].r == pytest.approx(-1.0)
    assert correlations["weight_m"].n == 4
    assert math.isnan(correlations["dead_units"].r) and correlations["dead_units"].why_none == "constant across runs"


def test_half_written_last_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,test_r,dead_units\n0,1.5,0.2\n1,,0.3\n2,2.")
    columns = read_epoch_csv(path)
    assert np.isnan(columns["test_r"][1]) and columns["test_r"][0] == 1.5
    assert len(columns["dead_units"]) == 2


# ------------------------------------------------------------------------------- partial sweeps
def test_incomplete_runs_are_named_and_kept_out_of_final_values(tmp_path, capsys):
    root = write_study(tmp_path / "s", ["baseline", "method", "pending"])
    for seed in range(2):
        write_run(root, "baseline", seed, constant(5.0))
    write_run(root, "method", 0, constant(6.0))
    write_run(root, "method", 1, constant(100.0), length=27)  # evaluated at epoch 25, in the final window
    comparison = compare(load_study(root), final_window=2, reps=REPS)
    assert comparison.window == (25, EPOCHS)
    method = comparison.results["method"]
    assert method.test.value == pytest.approx(6.0)  # the running seed's 100.0 never enters
    assert method.incomplete == [f"seed_1 (27/{EPOCHS})"]
    assert "method/seed_1" in method.left_out
    assert any("pending: configured but no runs yet" in n for n in comparison.notes)


def test_sweep_where_no_run_finished_compares_on_the_common_range_and_says_so(tmp_path):
    root = write_study(tmp_path / "s", ["baseline", "method"])
    write_run(root, "baseline", 0, constant(5.0), length=22)
    write_run(root, "method", 0, constant(6.0), length=17)
    comparison = compare(load_study(root), reps=REPS)
    assert comparison.horizon == 17 and comparison.window == (15, 17)
    assert comparison.rounds == [(0, 10)]
    assert any("common range" in n and "17 epochs" in n for n in comparison.notes)
    assert comparison.results["method"].vs_baseline_pct == pytest.approx(20.0)


def test_mismatched_runs_are_excluded_with_a_reason(tmp_path):
    root = write_study(tmp_path / "s", ["baseline", "method"])
    write_run(root, "baseline", 0, constant(5.0))
    write_run(root, "baseline", 1, constant(50.0), length=40, num_epochs=40)
    write_run(root, "method", 0, constant(6.0))
    write_run(root, "method", 1, lambda e: None)
    comparison = compare(load_study(root), reps=REPS)
    assert comparison.results["baseline"].test.value == pytest.approx(5.0)
    assert "trained for 40 epochs" in comparison.results["baseline"].left_out["baseline/seed_1"]
    assert comparison.results["method"].left_out["method/seed_1"] == "test_r never logged"
    notes = "\n".join(comparison.notes)
    assert "baseline/seed_1 is left out of all curves and final values: trained for 40 epochs" in notes
    assert "method/seed_1: test_r is empty in every row" in notes


def test_unknown_baseline_and_empty_directory_are_errors(tmp_path):
    root = write_study(tmp_path / "s", ["baseline"])
    with pytest.raises(ConfigError, match="no run directories"):
        load_study(root)
    write_run(root, "baseline", 0, constant(1.0))
    with pytest.raises(ConfigError, match="--baseline nope"):
        load_study(root, baseline="nope")
    with pytest.raises(ConfigError, match="config.yaml: not found"):
        load_study(tmp_path)
    with pytest.raises(ConfigError, match="--final-window 0: must be"):
        report(root, final_window=0)


# ------------------------------------------------------------------------------- whole report
def write_mixed_study(root: Path) -> Path:
    """Complete, running, mismatched and test-less runs, with probe diagnostics."""
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
    expected = ["test_reward_comparison.png", "dead_units_comparison.png", "summary_comparison.png", "correlations.png"]
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


def test_summary_has_the_study_table_and_names_incomplete_and_mismatched_runs(mixed_report):
    root, _, _ = mixed_report
    summary = (root / "summary.md").read_text()
    assert "| Condition | Test Reward | Dead Units | vs Baseline | IQM [95% CI] | P(> baseline) [95% CI] |" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| method |"))
    assert "| 6.05 | 40.0% | +19.8% |" in row  # (6.05 - 5.05) / 5.05
    assert f"seed_2 (14/{EPOCHS})" in row
    assert "method/seed_2 is incomplete (no DONE file): 14 of 30 epochs logged." in summary
    assert "baseline/seed_2 is left out of all curves and final values: trained for 40 epochs" in summary
    correlated = summary.split("## Plasticity metrics vs. final test return")[1].split("##")[0]
    assert "| probe: dense/effective_rank |" in correlated and "| probe: trainability_ratio |" in correlated
    assert "conv1/" not in correlated and "probe_seconds" not in correlated
    assert "## Return at the end of each round" in summary


def test_report_prints_its_notes(mixed_report):
    printed = mixed_report[2]
    assert "note: method/seed_2 is incomplete (no DONE file): 14 of 30 epochs logged." in printed
    assert "note: baseline/seed_2 is left out of all curves and final values: trained for 40 epochs" in printed
