"""Task-return matrices in the analysis layer (issue 26): load_study's ``task_matrix`` and
``continual`` frames, the continual-learning metrics compared with the baseline (comparisons.csv,
summary.md), the heat maps, and a study without matrices reported exactly as before.

Matrices are written by hand (metrics.csv from tests/test_report.py's helpers), so every number is
known. Per seed s the level is a = 10 + s and (rows i = after training task i, columns j):

    reset-all  [[a], [2, a], [2, 2, a]]                          a fresh network per task
    baseline   [[a], [0.6a, 0.8a], [0.4a, 0.5a, 0.5a]]          forgets and learns later tasks less well
    method     [[a], [0.9a, a], [0.8a, 0.9a, 0.9a]]

so, by hand: forgetting 0.45a (baseline), 0.15a (method), a - 2 (reset-all); plasticity ratios
against reset-all [1, 0.8, 0.5] (mean 2.3/3) and [1, 1, 0.9] (mean 2.9/3).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

import plasticity_lab
from plasticity_lab.analysis.aggregate import compare, open_study
from plasticity_lab.analysis.claims import TableSpec, claims_table, rounds_table
from plasticity_lab.analysis.report import comparisons_frame, report
from plasticity_lab.analysis.task_matrices import matrix_cost
from tests.test_report import EPOCHS, SHIFTS, constant, write_run, write_study

REPS = 200
SEEDS = 7
"""Exact sign-flip p of 7 same-sign differences: 2/2^7; Holm over 2 conditions: 1/32 < 0.05."""
P_ALL_SAME_SIGN = 2 / 2**SEEDS
LEVELS = 10.0 + np.arange(SEEDS)
MATRICES = {
    "reset-all": lambda a: [[a], [2.0, a], [2.0, 2.0, a]],
    "baseline": lambda a: [[a], [0.6 * a, 0.8 * a], [0.4 * a, 0.5 * a, 0.5 * a]],
    "method": lambda a: [[a], [0.9 * a, a], [0.8 * a, 0.9 * a, 0.9 * a]],
}
CONTINUAL_NAMES = {"final_average_return", "forgetting", "backward_transfer", "forward_transfer", "plasticity_ratio"}


def matrix_lines(rows: list[list[float]], ends: list[int]) -> list[str]:
    """task_matrix.csv's lines for the lower triangle ``rows``; task i ends at epoch ends[i] - 1."""
    return ["i,j,epoch,return,episodes"] + [
        f"{i},{j},{ends[i] - 1},{value!r},8" for i, row in enumerate(rows) for j, value in enumerate(row)
    ]


def matrix_study(root: Path, matrices=MATRICES, reference: str | None = "reset-all", write_matrices: bool = True,
                 shifts: list[int] = SHIFTS) -> Path:
    """A finished study of ``SEEDS`` seeds per condition, each run with its hand-made matrix."""
    write_study(root, list(matrices))
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["ppo_trainer"]["shift_points"] = shifts
    if reference:
        config["experiment"]["reference"] = reference
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for condition, matrix in matrices.items():
        for seed, level in enumerate(LEVELS):
            run = write_run(root, condition, seed, constant(1.0 + seed), trainer={"shift_points": shifts})
            if write_matrices:
                lines = matrix_lines(matrix(level), [*shifts, EPOCHS])
                (run / "task_matrix.csv").write_text("\n".join(lines) + "\n")
    return root


def quiet_report(root: Path, **kwargs) -> Path:
    with contextlib.redirect_stdout(io.StringIO()):
        return report(root, reps=REPS, **kwargs)


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> Path:
    """The report of the hand-made study (its directory)."""
    return quiet_report(matrix_study(tmp_path_factory.mktemp("matrix") / "s")).parent


# ------------------------------------------------------------------------------------- frames
def test_load_study_has_every_runs_matrix_and_its_metrics(tmp_path):
    data = plasticity_lab.load_study(matrix_study(tmp_path / "s"))
    frame = data.task_matrix
    assert list(frame.columns) == ["condition", "seed", "i", "j", "epoch", "return", "episodes", "eval_seconds"]
    assert frame["eval_seconds"].isna().all()  # files written before the timing column: NaN, never 0
    assert len(frame) == 3 * SEEDS * 6  # every (i, j <= i) of 3 tasks
    assert all(frame[c].dtype == np.int64 for c in ("seed", "i", "j", "epoch", "episodes"))
    run = frame[(frame.condition == "baseline") & (frame.seed == 2)].set_index(["i", "j"])  # a = 12
    assert run.loc[(2, 0), "return"] == pytest.approx(0.4 * 12) and run.loc[(2, 0), "epoch"] == EPOCHS - 1
    assert run.loc[(1, 1), "return"] == pytest.approx(0.8 * 12) and run.loc[(1, 1), "epoch"] == SHIFTS[1] - 1
    assert run["episodes"].unique().tolist() == [8]

    metrics = data.continual.set_index(["condition", "seed"])
    assert len(metrics) == 3 * SEEDS
    baseline = metrics.loc[("baseline", 2)]
    assert baseline["tasks"] == 3 and baseline["undefined"] == []
    assert baseline["final_average_return"] == pytest.approx(1.4 * 12 / 3)
    assert baseline["forgetting"] == pytest.approx(0.45 * 12)
    assert baseline["backward_transfer"] == pytest.approx(-0.45 * 12)
    assert baseline["forward_transfer"] == pytest.approx(-0.7 * 12 / 3)  # against reset-all's seed 2
    assert baseline["plasticity_ratio"] == pytest.approx(2.3 / 3)
    assert baseline["plasticity_ratios"] == pytest.approx([1.0, 0.8, 0.5])
    reference = metrics.loc[("reset-all", 5)]
    assert (reference["forward_transfer"], reference["plasticity_ratio"]) == (0.0, 1.0)
    assert reference["forgetting"] == pytest.approx(15.0 - 2.0)


def test_matrix_cost_by_hand():
    """Seconds per run and their share of the rest of the run, per condition; a run with an
    untimed row (a file from before eval_seconds) is left out of the timing, not counted as 0."""
    rows = [("a", 0, 0.0), ("a", 0, 2.0), ("a", 0, 1.0), ("a", 1, 0.0), ("a", 1, 5.0), ("a", 1, 1.0),
            ("b", 0, 4.0), ("b", 0, float("nan")), ("b", 1, 2.0)]
    matrix = pd.DataFrame(rows, columns=["condition", "seed", "eval_seconds"])
    walls = [("a", 0, 10.0), ("a", 0, 33.0), ("a", 1, 66.0), ("b", 0, 40.0), ("b", 1, 12.0)]
    metrics = pd.DataFrame(walls, columns=["condition", "seed", "wall_time"])
    cost = matrix_cost(matrix, metrics).set_index("condition")
    # a: seed 0 3 s of 33 (30 s rest: 10%), seed 1 6 s of 66 (60 s rest: 10%); b: only seed 1 timed, 2 s of 12
    assert cost.loc["a", "runs"] == 2 and cost.loc["a", "seconds"] == pytest.approx(4.5)
    assert cost.loc["a", "share"] == pytest.approx(10.0)
    assert cost.loc["b", "runs"] == 1 and cost.loc["b", "seconds"] == pytest.approx(2.0)
    assert cost.loc["b", "share"] == pytest.approx(20.0)
    assert matrix_cost(matrix.iloc[:0], metrics).empty


def test_the_report_shows_what_the_matrix_cost(tmp_path):
    root = matrix_study(tmp_path / "s")
    for path in root.glob("*/seed_*/task_matrix.csv"):
        lines = path.read_text().splitlines()
        path.write_text("\n".join([lines[0] + ",eval_seconds"] + [line + ",0.25" for line in lines[1:]]) + "\n")
    text = (quiet_report(root).parent / "summary.md").read_text()
    assert "Seconds per run" in text and "| 1.5 |" in text  # 6 cells x 0.25 s


def test_a_study_without_matrices_has_empty_matrix_frames(tmp_path):
    data = plasticity_lab.load_study(matrix_study(tmp_path / "s", write_matrices=False))
    assert data.task_matrix.empty and list(data.task_matrix.columns)[:4] == ["condition", "seed", "i", "j"]
    assert data.continual.empty
    assert (data.runs["task_matrix_error"] == "").all()


def test_a_gzipped_task_matrix_reads_the_same(tmp_path):
    plain = plasticity_lab.load_study(matrix_study(tmp_path / "plain"))
    root = matrix_study(tmp_path / "packed")
    for path in root.glob("*/seed_*/task_matrix.csv"):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    packed = plasticity_lab.load_study(root)
    assert len(packed.task_matrix) == 3 * SEEDS * 6
    pd.testing.assert_frame_equal(packed.task_matrix, plain.task_matrix)
    pd.testing.assert_frame_equal(packed.continual, plain.continual)


def test_malformed_and_incomplete_matrices_are_left_out_with_a_reason(tmp_path):
    root = matrix_study(tmp_path / "s")
    bad = root / "baseline" / "seed_0" / "task_matrix.csv"
    bad.write_text(bad.read_text() + "1,2,19,3.0,8\n")  # j > i
    cut = root / "method" / "seed_3" / "task_matrix.csv"
    lines = cut.read_text().splitlines()
    cut.write_text("\n".join(lines[:-1]) + "\n2,2,29,1")  # R[2][2] half written when the run stopped
    data = plasticity_lab.load_study(root)
    runs = data.runs.set_index(["condition", "seed"])
    assert "line 8: j = 2 > i = 1" in runs.loc[("baseline", 0), "task_matrix_error"]
    assert runs.loc[("method", 3), "task_matrix_error"] == ""  # a half-written line is skipped, not an error
    assert not ((data.task_matrix.condition == "baseline") & (data.task_matrix.seed == 0)).any()
    comparison = compare(open_study(data), reps=REPS)
    notes = "\n".join(comparison.notes)
    assert f"baseline/seed_0: {bad}: line 8: j = 2 > i = 1" in notes
    assert "every continual-learning metric: task_matrix.csv has no R[2][2]: absent for method seed 3 (not counted as 0)." in notes
    forgetting = comparison.paired["forgetting"]["method"]
    assert forgetting.seeds == [1, 2, 4, 5, 6]  # neither baseline seed 0 nor method seed 3
    assert "forgetting" not in comparison.results["method"].finals[3]


# ------------------------------------------------------------------------------------- comparisons
def test_forgetting_and_plasticity_ratio_are_compared_with_the_baseline_seed_by_seed(reported):
    comparison = compare(open_study(reported), reps=REPS)
    method = comparison.paired["forgetting"]["method"]
    assert method.seeds == list(range(SEEDS))
    assert method.differences == pytest.approx(0.15 * LEVELS - 0.45 * LEVELS)
    assert method.diff.value == pytest.approx(-0.3 * LEVELS.mean())
    assert (method.p, method.p_holm) == pytest.approx((P_ALL_SAME_SIGN, 2 * P_ALL_SAME_SIGN))  # Holm over 2 conditions
    assert method.verdict == "better"  # less forgetting
    reset = comparison.paired["forgetting"]["reset-all"]
    assert reset.differences == pytest.approx((LEVELS - 2) - 0.45 * LEVELS)
    assert reset.verdict == "worse"
    ratio = comparison.paired["plasticity_ratio"]["method"]
    assert ratio.differences == pytest.approx(np.full(SEEDS, 2.9 / 3 - 2.3 / 3))
    assert ratio.p_holm == pytest.approx(2 * P_ALL_SAME_SIGN) and ratio.verdict == "better"
    transfer = comparison.paired["forward_transfer"]["method"]
    assert transfer.differences == pytest.approx(-0.1 * LEVELS / 3 - (-0.7 * LEVELS / 3))
    per_task = comparison.round_loss["plasticity_ratio"]  # the baseline vs reset-all, whose ratio is 1
    assert [c.diff.value for c in per_task] == pytest.approx([0.0, -0.2, -0.5])
    assert [c.p_holm for c in per_task[1:]] == pytest.approx([3 * P_ALL_SAME_SIGN] * 2)  # Holm over 3 rounds
    assert [c.verdict for c in per_task[1:]] == ["worse", "worse"]


def test_comparisons_csv_has_the_new_metrics_in_the_existing_format(reported):
    table = pd.read_csv(reported / "comparisons.csv")
    row = table[(table.metric == "forgetting") & (table.condition == "method")].iloc[0]
    assert (row["baseline"], row["role"], row["better"], row["verdict"], row["n_pairs"]) == (
        "baseline", "secondary", "lower", "better", SEEDS)
    assert (row["diff"], row["p"], row["p_holm"]) == pytest.approx((-0.3 * 13, P_ALL_SAME_SIGN, 2 * P_ALL_SAME_SIGN), rel=1e-5)
    ratio = table[(table.metric == "plasticity_ratio") & (table.condition == "method")].iloc[0]
    assert ratio["diff"] == pytest.approx(0.2, rel=1e-5) and ratio["verdict"] == "better"
    rounds = table[table.metric.str.startswith("plasticity_ratio_round_")]
    assert rounds.metric.tolist() == ["plasticity_ratio_round_1", "plasticity_ratio_round_2", "plasticity_ratio_round_3"]
    assert set(rounds.role) == {"per round"} and set(rounds.condition) == {"baseline"} and set(rounds.baseline) == {"reset-all"}
    assert rounds["diff"].tolist() == pytest.approx([0.0, -0.2, -0.5], abs=1e-6)
    # plab claims reads the rows as it reads every other
    claim = TableSpec(kind="claims", claims=[{"claim": "less forgetting", "condition": "method", "metric": "forgetting",
                                              "expect": "better"}])
    assert "| better | **holds** |" in claims_table(table, claim, "test")
    per_round = rounds_table(table, TableSpec(kind="rounds", metrics=["plasticity_ratio"]), "test")
    assert per_round.splitlines()[-1].startswith("| 3 | -0.5") and per_round.endswith("; worse |")


def test_a_study_without_matrices_reports_exactly_as_before(tmp_path, reported):
    """The same runs without task_matrix.csv: no new row, column, section, figure or note; and the
    matrices change no row that a study without them has."""
    plain = quiet_report(matrix_study(tmp_path / "s", write_matrices=False)).parent
    without, with_matrices = (pd.read_csv(d / "comparisons.csv", dtype=str, keep_default_na=False) for d in (plain, reported))
    new = with_matrices.metric.isin(CONTINUAL_NAMES) | with_matrices.metric.str.startswith("plasticity_ratio_round_")
    assert new.sum() == 2 * 5 + 3  # 2 conditions x 5 metrics, 3 per-task rows
    assert not (without.metric.isin(CONTINUAL_NAMES) | without.metric.str.startswith("plasticity_ratio")).any()
    pd.testing.assert_frame_equal(without, with_matrices[~new].reset_index(drop=True))
    summary = (plain / "summary.md").read_text()
    for text in ("Forgetting and transfer", "task_matrix", "task matrix", "continual", "plasticity ratio"):
        assert text not in summary, text
    assert "Forgetting and transfer" in (reported / "summary.md").read_text()  # the checks above can fail
    assert not list((plain / "comparison_figures").glob("task_matrix_*"))
    assert compare(open_study(plain), reps=REPS).task_matrices == {}


# ------------------------------------------------------------------------------------- undefined
def test_one_task_has_no_forgetting_or_backward_transfer(tmp_path):
    matrices = {"baseline": lambda a: [[a]], "method": lambda a: [[a + 1.0]]}
    comparison = compare(open_study(matrix_study(tmp_path / "s", matrices, reference=None, shifts=[])), reps=REPS)
    assert set(comparison.paired) & CONTINUAL_NAMES == {"final_average_return"}
    assert comparison.paired["final_average_return"]["method"].diff.value == pytest.approx(1.0)
    assert "forgetting" not in comparison.results["baseline"].finals[0]
    notes = "\n".join(comparison.notes)
    for reason in ("forgetting: a single task, so no earlier task to forget",
                   "backward_transfer: a single task, so no earlier task to transfer back to",
                   "forward_transfer: no reference condition", "plasticity_ratio: no reference condition"):
        assert f"{reason}: absent for baseline seeds 0-6; method seeds 0-6 (not counted as 0)." in notes


def test_no_reference_condition_leaves_forward_transfer_and_ratios_absent(tmp_path):
    root = matrix_study(tmp_path / "s", reference=None)
    data = plasticity_lab.load_study(root)
    assert data.continual["forward_transfer"].isna().all() and data.continual["plasticity_ratio"].isna().all()
    assert data.continual["undefined"].iloc[0] == ["forward_transfer: no reference condition", "plasticity_ratio: no reference condition"]
    comparison = compare(open_study(data), reps=REPS)
    assert not {"forward_transfer", "plasticity_ratio"} & set(comparison.paired)
    assert "forgetting" in comparison.paired and "plasticity_ratio" not in comparison.round_loss
    with_reference = compare(open_study(root, reference="reset-all"), reps=REPS)  # --reference gives them
    assert with_reference.paired["plasticity_ratio"]["method"].diff.value == pytest.approx(0.2)


def test_a_reference_return_that_is_not_positive_has_no_ratio(tmp_path):
    matrices = {**MATRICES, "reset-all": lambda a: [[a], [2.0, 0.0], [2.0, 2.0, a]]}
    study = open_study(matrix_study(tmp_path / "s", matrices))
    comparison = compare(study, reps=REPS)
    assert "plasticity_ratio" not in comparison.paired  # the mean needs every task's ratio
    finals = comparison.results["baseline"].finals[0]
    assert "plasticity_ratio" not in finals and "plasticity_ratio_round_2" not in finals
    assert finals["plasticity_ratio_round_3"] == pytest.approx(0.5)
    assert finals["forward_transfer"] == pytest.approx(((10 - 10) + (0.8 * 10 - 0.0) + (0.5 * 10 - 10)) / 3)  # defined
    assert [len(c.seeds) for c in comparison.round_loss["plasticity_ratio"]] == [SEEDS, 0, SEEDS]
    rows = comparisons_frame(study, comparison)
    assert rows.metric[rows.metric.str.startswith("plasticity_ratio")].tolist() == ["plasticity_ratio_round_1", "plasticity_ratio_round_3"]
    notes = "\n".join(comparison.notes)
    assert ("plasticity_ratio: the reference return on task 1 is 0.0, not positive: absent for baseline seeds 0-6; "
            "method seeds 0-6; reset-all seeds 0-6 (not counted as 0).") in notes


# ------------------------------------------------------------------------------------- report
def test_the_report_shows_the_metrics_and_a_heat_map_per_condition(reported):
    comparison = compare(open_study(reported), reps=REPS)
    mean = comparison.task_matrices["baseline"]
    assert mean.seeds == list(range(SEEDS))
    np.testing.assert_allclose(mean.mean, [[13, np.nan, np.nan], [7.8, 10.4, np.nan], [5.2, 6.5, 6.5]])  # a = 13 on average
    summary = (reported / "summary.md").read_text()
    for condition in MATRICES:
        path = reported / "comparison_figures" / f"task_matrix_{condition}.png"
        assert path.stat().st_size > 5000 and Image.open(path).size[0] > 300
        assert (f"![Task-return matrix of {condition}: mean over 7 seeds of R[i][j], the test return on task j after "
                f"training task i](comparison_figures/task_matrix_{condition}.png)") in summary
    section = summary.split("## Forgetting and transfer (task-return matrix)")[1].split("\n## ")[0]
    baseline = next(line for line in section.splitlines() if line.startswith("| baseline | 7 |"))
    assert "| 6.07 [" in baseline and "| 5.85 [" in baseline and "| 0.77 [0.77, 0.77] (n=7) |" in baseline
    paired = next(line for line in section.splitlines() if line.startswith("| method | Forgetting (lower is better) |"))
    assert paired.startswith("| method | Forgetting (lower is better) | -3.9 [") and paired.endswith("| 0.0312 | better |")
    ratio_row = next(line for line in summary.splitlines() if line.startswith("| plasticity ratio - 1 (task matrix) |"))
    assert ratio_row.endswith("| -0.5 [-0.5, -0.5] (n=7); p 0.0469; worse |")
    verdicts = next(line for line in summary.splitlines() if line.startswith("| Condition | test return (primary"))
    assert "| forgetting (task matrix) (secondary; lower is better) |" in verdicts
    page = (reported / "report.html").read_text()
    assert page.count("task_matrix_") == 3 and "Task-return matrix of method" in page
