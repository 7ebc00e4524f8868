"""Tests for plasticity_lab.metrics.continual: each metric against matrices written out here, with
the expected numbers worked by hand in the comments (never by the module's own code)."""

from __future__ import annotations

import csv
import inspect
import math
import random

import numpy as np
import pytest
import torch

from plasticity_lab.metrics import continual
from plasticity_lab.metrics.continual import (
    TASK_MATRIX_COLUMNS,
    Undefined,
    average_incremental_return,
    average_returns,
    backward_transfer,
    continual_metrics,
    final_average_return,
    forgetting,
    forward_transfer,
    plasticity_ratio,
    read_task_matrix,
)

nan = float("nan")

# A run over four tasks. R[i][j] = return on task j after training task i.
#   task 0: learned (8.0), then forgotten (5, 6, finally 4)
#   task 1: learned (9.0), improved to 10.0 while training task 2, finally 9.5 (positive BWT term,
#           but forgetting measured from its best, 10.0)
#   task 2: never learned (diagonal 0.2, near 0)
#   task 3: learned to 2.0
R = [
    [8.0, nan, nan, nan],
    [5.0, 9.0, nan, nan],
    [6.0, 10.0, 0.2, nan],
    [4.0, 9.5, 0.1, 2.0],
]

# The reference condition (reset-all: a fresh network per task). Only its diagonal enters the
# metrics: 8.5, 9.5, 5.0 and 0.0 (the reference did not learn task 3 at all).
REF = [
    [8.5, nan, nan, nan],
    [1.0, 9.5, nan, nan],
    [0.5, 2.0, 5.0, nan],
    [0.0, 1.0, 0.5, 0.0],
]

# A run whose later tasks help the earlier ones: positive backward transfer.
P = [
    [2.0, nan, nan],
    [3.0, 4.0, nan],
    [5.0, 4.5, 1.0],
]


# ----------------------------------------------------------------- average return


def test_average_returns_after_each_task():
    # A_0 = 8.0
    # A_1 = (5 + 9) / 2 = 7.0
    # A_2 = (6 + 10 + 0.2) / 3 = 16.2 / 3 = 5.4
    # A_3 = (4 + 9.5 + 0.1 + 2) / 4 = 15.6 / 4 = 3.9
    a = average_returns(R)
    assert isinstance(a, np.ndarray) and a.dtype == np.float64
    np.testing.assert_allclose(a, [8.0, 7.0, 5.4, 3.9], rtol=0, atol=1e-12)


def test_final_average_return_is_the_last_row_mean():
    # (4 + 9.5 + 0.1 + 2) / 4 = 3.9 (not the mean of the diagonal, (8 + 9 + 0.2 + 2) / 4 = 4.8)
    value = final_average_return(R)
    assert type(value) is float
    assert value == pytest.approx(3.9, abs=1e-12)
    # P: (5 + 4.5 + 1) / 3 = 3.5
    assert final_average_return(P) == pytest.approx(3.5, abs=1e-12)


def test_average_incremental_return_is_the_mean_of_the_after_task_averages():
    # (8.0 + 7.0 + 5.4 + 3.9) / 4 = 24.3 / 4 = 6.075
    assert average_incremental_return(R) == pytest.approx(6.075, abs=1e-12)
    # P: A = 2, (3 + 4) / 2 = 3.5, (5 + 4.5 + 1) / 3 = 3.5 -> (2 + 3.5 + 3.5) / 3 = 3.0
    assert average_incremental_return(P) == pytest.approx(3.0, abs=1e-12)


# ----------------------------------------------------------------- forgetting


def test_forgetting_from_the_best_earlier_return():
    # j = 0: max(R00, R10, R20) = max(8, 5, 6) = 8,    minus R30 = 4    -> 4.0
    # j = 1: max(R11, R21)      = max(9, 10)   = 10,   minus R31 = 9.5  -> 0.5
    #        (from the diagonal it would be -0.5: the max must look past it)
    # j = 2: max(R22)           = 0.2,                 minus R32 = 0.1  -> 0.1
    #        (the never-learned task has almost nothing to forget)
    # mean = (4.0 + 0.5 + 0.1) / 3 = 4.6 / 3 = 1.5333...
    value = forgetting(R)
    assert type(value) is float
    assert value == pytest.approx(4.6 / 3, abs=1e-12)


def test_forgetting_is_negative_when_tasks_end_above_their_best():
    # j = 0: max(2, 3) = 3, minus 5   -> -2.0
    # j = 1: max(4)    = 4, minus 4.5 -> -0.5
    # mean = -2.5 / 2 = -1.25
    assert forgetting(P) == pytest.approx(-1.25, abs=1e-12)


# ----------------------------------------------------------------- backward transfer


def test_backward_transfer_negative_when_a_task_is_forgotten():
    # j = 0: R30 - R00 = 4 - 8     = -4.0  (forgotten)
    # j = 1: R31 - R11 = 9.5 - 9   = +0.5  (helped by the later tasks)
    # j = 2: R32 - R22 = 0.1 - 0.2 = -0.1
    # mean = -3.6 / 3 = -1.2
    value = backward_transfer(R)
    assert type(value) is float
    assert value == pytest.approx(-1.2, abs=1e-12)


def test_backward_transfer_positive():
    # j = 0: 5 - 2 = 3.0;  j = 1: 4.5 - 4 = 0.5;  mean = 3.5 / 2 = 1.75
    assert backward_transfer(P) == pytest.approx(1.75, abs=1e-12)


def test_two_tasks():
    # Smallest case with an earlier task: forgetting = max(R00) - R10 = 3 - 1 = 2; BWT = 1 - 3 = -2
    two = [[3.0, nan], [1.0, 7.0]]
    assert forgetting(two) == pytest.approx(2.0, abs=1e-12)
    assert backward_transfer(two) == pytest.approx(-2.0, abs=1e-12)


# ----------------------------------------------------------------- forward transfer, plasticity ratio


def test_forward_transfer_negative_against_the_reference():
    # diag(R) - diag(REF) = (8 - 8.5, 9 - 9.5, 0.2 - 5, 2 - 0) = (-0.5, -0.5, -4.8, 2.0)
    # mean = -3.8 / 4 = -0.95
    value = forward_transfer(R, REF)
    assert type(value) is float
    assert value == pytest.approx(-0.95, abs=1e-12)


def test_forward_transfer_positive_and_only_the_diagonal_of_the_reference_enters():
    # Reference diagonal (1, 1, 1): diag(P) - 1 = (1, 3, 0), mean = 4 / 3. The reference's
    # off-diagonal entries (here 100 and -100) must not change it.
    ref = [[1.0, nan, nan], [100.0, 1.0, nan], [-100.0, 100.0, 1.0]]
    assert forward_transfer(P, ref) == pytest.approx(4 / 3, abs=1e-12)


def test_plasticity_ratio_per_task_and_a_zero_reference():
    # 8 / 8.5 = 0.941176...;  9 / 9.5 = 0.947368...;  0.2 / 5 = 0.04 (task never learned);
    # task 3: reference return 0 -> undefined, with a reason naming the task
    ratios = plasticity_ratio(R, REF)
    assert isinstance(ratios, tuple) and len(ratios) == 4
    assert ratios[0] == pytest.approx(8 / 8.5, abs=1e-12)
    assert ratios[1] == pytest.approx(9 / 9.5, abs=1e-12)
    assert ratios[2] == pytest.approx(0.04, abs=1e-12)
    assert isinstance(ratios[3], Undefined)
    assert "task 3" in ratios[3].reason and "not positive" in ratios[3].reason
    assert all(type(r) is float for r in ratios[:3])


def test_plasticity_ratio_undefined_over_a_negative_reference():
    # Reference diagonal (-10, 2): -5 / -10 would read as 0.5 although -5 beats -10, so task 0
    # is undefined; task 1: 4 / 2 = 2.0
    ratios = plasticity_ratio([[-5.0, nan], [0.0, 4.0]], [[-10.0, nan], [0.0, 2.0]])
    assert isinstance(ratios[0], Undefined) and "task 0" in ratios[0].reason
    assert ratios[1] == pytest.approx(2.0, abs=1e-12)


def test_no_reference_condition():
    for value in (forward_transfer(R, None), plasticity_ratio(R, None)):
        assert isinstance(value, Undefined)
        assert "no reference condition" in value.reason


# ----------------------------------------------------------------- a single task


def test_single_task():
    one = [[3.0]]
    for value in (forgetting(one), backward_transfer(one)):
        assert isinstance(value, Undefined)
        assert "single task" in value.reason
    assert final_average_return(one) == 3.0
    assert average_incremental_return(one) == 3.0
    # defined against a reference: FWT = 3 - 4 = -1, ratio = 3 / 4 = 0.75
    assert forward_transfer(one, [[4.0]]) == pytest.approx(-1.0, abs=1e-12)
    assert plasticity_ratio(one, [[4.0]]) == pytest.approx((0.75,), abs=1e-12)


def test_undefined_is_never_zero_and_needs_a_reason():
    value = forgetting([[0.0]])
    assert value != 0 and not isinstance(value, float)
    with pytest.raises(ValueError, match="reason"):
        Undefined("")
    with pytest.raises(AttributeError):
        value.reason = "changed"  # frozen


def test_continual_metrics_collects_every_metric():
    out = continual_metrics(R, REF)
    assert set(out) == {
        "average_returns", "final_average_return", "average_incremental_return", "forgetting",
        "backward_transfer", "forward_transfer", "plasticity_ratio",
    }
    np.testing.assert_allclose(out["average_returns"], [8.0, 7.0, 5.4, 3.9], atol=1e-12)
    assert out["final_average_return"] == pytest.approx(3.9, abs=1e-12)
    assert out["average_incremental_return"] == pytest.approx(6.075, abs=1e-12)
    assert out["forgetting"] == pytest.approx(4.6 / 3, abs=1e-12)
    assert out["backward_transfer"] == pytest.approx(-1.2, abs=1e-12)
    assert out["forward_transfer"] == pytest.approx(-0.95, abs=1e-12)
    assert out["plasticity_ratio"][:3] == pytest.approx((8 / 8.5, 9 / 9.5, 0.04), abs=1e-12)
    assert isinstance(out["plasticity_ratio"][3], Undefined)
    no_ref = continual_metrics(R)
    assert isinstance(no_ref["forward_transfer"], Undefined)
    assert isinstance(no_ref["plasticity_ratio"], Undefined)


# ----------------------------------------------------------------- input types and validation


def test_torch_and_numpy_inputs_agree_and_are_not_modified():
    r32 = torch.tensor(P, dtype=torch.float32)
    ref = np.array([[1.0, nan, nan], [0.0, 2.0, nan], [0.0, 0.0, 4.0]])
    before_t, before_n = r32.clone(), ref.copy()
    # diag(P) = (2, 4, 1) over (1, 2, 4): ratios 2, 2, 0.25; FWT = (1 + 2 - 3) / 3 = 0
    assert plasticity_ratio(r32, ref) == pytest.approx((2.0, 2.0, 0.25), abs=1e-12)
    assert forward_transfer(r32, torch.from_numpy(ref)) == pytest.approx(0.0, abs=1e-12)
    assert backward_transfer(r32) == pytest.approx(1.75, abs=1e-6)
    torch.testing.assert_close(r32, before_t, equal_nan=True, rtol=0, atol=0)
    np.testing.assert_array_equal(ref, before_n)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([1.0, 2.0], r"returns: expected a square \(T, T\) matrix"),
        ([[1.0, nan, nan], [1.0, 2.0, nan]], r"returns: expected a square \(T, T\) matrix"),
        (np.zeros((0, 0)), r"returns: expected a square \(T, T\) matrix with T >= 1"),
        ([[1.0, 5.0], [1.0, 2.0]], r"returns: R\[0\]\[1\] above the diagonal is 5.0, expected NaN"),
        ([[1.0, nan], [nan, 2.0]], r"returns: R\[1\]\[0\] on or below the diagonal is nan"),
        ([[1.0, nan], [1.0, math.inf]], r"returns: R\[1\]\[1\] on or below the diagonal is inf"),
        ([["a", nan], [1.0, 2.0]], r"returns: expected a \(T, T\) matrix of real returns"),
    ],
)
def test_invalid_returns(matrix, message):
    with pytest.raises(ValueError, match=message):
        forgetting(matrix)
    with pytest.raises(ValueError, match=message):
        average_returns(matrix)


def test_invalid_reference():
    with pytest.raises(ValueError, match=r"reference: shape \(3, 3\) differs from the returns' \(4, 4\)"):
        forward_transfer(R, P)
    with pytest.raises(ValueError, match=r"reference: R\[0\]\[2\] above the diagonal"):
        plasticity_ratio(P, [[1.0, nan, 3.0], [1.0, 1.0, nan], [1.0, 1.0, 1.0]])


def test_every_metric_validates_its_returns():
    bad = [[1.0, 1.0], [1.0, 1.0]]  # a value above the diagonal
    for fn in (average_returns, final_average_return, average_incremental_return, forgetting, backward_transfer):
        with pytest.raises(ValueError, match="returns: R\\[0\\]\\[1\\] above the diagonal"):
            fn(bad)
    for fn in (forward_transfer, plasticity_ratio, continual_metrics):
        with pytest.raises(ValueError, match="returns: R\\[0\\]\\[1\\] above the diagonal"):
            fn(bad, [[1.0, nan], [1.0, 1.0]])


# ----------------------------------------------------------------- task_matrix.csv


def write_rows(path, rows, header=TASK_MATRIX_COLUMNS):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_read_task_matrix_round_trip(tmp_path):
    # Every (i, j <= i) of R as a row, shuffled (any order is valid), with returns whose decimal
    # form is long, so a lossy write or parse would show.
    matrix = np.array(R) + np.tril(np.full((4, 4), 1 / 3))
    rows = [(i, j, 10 * (i + 1), repr(matrix[i, j]), 8) for i in range(4) for j in range(i + 1)]
    random.Random(0).shuffle(rows)
    write_rows(tmp_path / "task_matrix.csv", rows)
    read = read_task_matrix(tmp_path / "task_matrix.csv")
    assert read.shape == (4, 4) and read.dtype == np.float64
    np.testing.assert_array_equal(read, matrix)  # NaN above the diagonal on both sides
    assert np.isnan(read[np.triu_indices(4, 1)]).all()
    assert forgetting(read) == pytest.approx(4.6 / 3, abs=1e-12)  # the 1/3 shift cancels


def test_read_task_matrix_extra_columns_and_absent_entries(tmp_path):
    # An extra column is ignored; (1, 0) has no row, so it reads as NaN and the metrics reject it.
    path = tmp_path / "task_matrix.csv"
    write_rows(
        path, [(0, 0, 5, "1.5", 8, "x"), (1, 1, 10, "2.5", 8, "y")], header=(*TASK_MATRIX_COLUMNS, "note")
    )
    read = read_task_matrix(path)
    np.testing.assert_array_equal(read, [[1.5, nan], [nan, 2.5]])
    with pytest.raises(ValueError, match=r"returns: R\[1\]\[0\] on or below the diagonal is nan"):
        backward_transfer(read)


GOOD = ["0,0,5,1.0,8", "1,0,10,2.0,8", "1,1,10,3.0,8"]


def body(*rows: str) -> str:
    """A task_matrix.csv text: the header, then ``rows``."""
    return "\n".join(["i,j,epoch,return,episodes", *rows]) + "\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("i,j,epoch,return,episodes\n", "no rows"),
        ("i,j,epoch,episodes\n0,0,5,8\n", "missing column.*return"),
        (body(*GOOD[:2], "1,2,10,3.0,8"), r"line 4: j = 2 > i = 1"),
        (body(*GOOD, "1,0,10,2.5,8"), r"line 5: a second row for \(i, j\) = \(1, 0\)"),
        (body(*GOOD[:2], "1.0,1,10,3.0,8"), "line 4: i = '1.0' is not a non-negative integer"),
        (body(*GOOD[:2], "1,-1,10,3.0,8"), "line 4: j = '-1' is not a non-negative integer"),
        (body(*GOOD[:2], "1,1,,3.0,8"), "line 4: epoch = '' is not a non-negative integer"),
        (body(*GOOD[:2], "1,1,10,abc,8"), "line 4: return = 'abc' is not a number"),
        (body(*GOOD[:2], "1,1,10,nan,8"), "line 4: return = 'nan' is not finite"),
        (body(*GOOD[:2], "1,1,10,3.0,0"), "line 4: a return over 0 episodes"),
        (body(*GOOD[:2], "1,1,10,3.0"), "line 4: expected 5 fields"),
        (body(*GOOD[:2], "1,1,10,3.0,8,9"), "line 4: expected 5 fields"),
    ],
)
def test_read_task_matrix_malformed(tmp_path, text, message):
    path = tmp_path / "task_matrix.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        read_task_matrix(path)
    assert str(path) in str(err.value)


def test_read_task_matrix_good_rows_of_the_malformed_cases_read(tmp_path):
    # The rows the malformed cases start from are themselves valid, so each case fails on its
    # own defect: R = [[1, nan], [2, 3]].
    path = tmp_path / "task_matrix.csv"
    path.write_text(body(*GOOD))
    np.testing.assert_array_equal(read_task_matrix(path), [[1.0, nan], [2.0, 3.0]])


def test_public_api_documented():
    for name in continual.__all__:
        obj = getattr(continual, name)
        if inspect.isfunction(obj):
            assert obj.__doc__ and len(obj.__doc__) > 80, name
