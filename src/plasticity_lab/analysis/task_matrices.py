"""A study's task-return matrices (``task_matrix.csv``, issue 26) as each run's continual-learning
metrics: the one place where ``metrics.continual`` meets a study, so ``load_study``'s frame and
``plab report``'s comparisons compute them the same way.

Forward transfer and the plasticity ratio are taken against the reference condition's run of the
same seed (same evaluation levels and shift permutations), never a mean over its seeds, so the
pairing that removes seed effects elsewhere holds here too. A metric without a value is absent
(NaN in a frame) with the reason ``metrics.continual`` gives, never 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from plasticity_lab.metrics.continual import (
    TASK_MATRIX_SECONDS,
    Metric,
    Undefined,
    backward_transfer,
    final_average_return,
    forgetting,
    forward_transfer,
    matrix_from_rows,
    plasticity_ratio,
)

CONTINUAL = ("final_average_return", "forgetting", "backward_transfer", "forward_transfer", "plasticity_ratio")
"""Per-run metrics, by their comparisons.csv name; ``plasticity_ratio`` is the mean over tasks."""
PER_TASK = "plasticity_ratios"
"""Column of the per-run frame: the plasticity ratio of each task j (NaN where undefined)."""
COLUMNS = ("condition", "seed", "tasks", *CONTINUAL, PER_TASK, "undefined")
COST_COLUMNS = ("condition", "runs", "seconds", "share")


def run_matrices(frame: pd.DataFrame) -> dict[tuple[str, int], np.ndarray]:
    """Each run's ``(T, T)`` matrix from a long frame of (condition, seed, i, j, return) rows."""
    if frame.empty:
        return {}
    return {(c, int(s)): matrix_from_rows(g.to_dict("records")) for (c, s), g in frame.groupby(["condition", "seed"])}


def matrix_cost(task_matrix: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """What the matrix cost each condition's runs, from ``load_study``'s frames: per condition the
    runs whose every row has its ``eval_seconds``, their mean total seconds, and the mean share of
    the rest of the run's wall time (its last ``wall_time`` less the matrix's), in percent.
    Measured, so it says how long the evaluations took on that machine and its load."""
    rows = []
    if not task_matrix.empty:
        timed = task_matrix.groupby(["condition", "seed"])[TASK_MATRIX_SECONDS].agg(lambda s: s.sum(min_count=len(s)))
        wall = metrics.groupby(["condition", "seed"])["wall_time"].max()
        for condition, seconds in timed.dropna().groupby(level="condition"):
            rest = wall.reindex(seconds.index).to_numpy() - seconds.to_numpy()
            share = 100 * seconds.to_numpy() / np.where(rest > 0, rest, np.nan)
            rows.append({"condition": condition, "runs": len(seconds), "seconds": float(seconds.mean()),
                         "share": float(np.nanmean(share)) if np.isfinite(share).any() else np.nan})
    return pd.DataFrame(rows, columns=COST_COLUMNS)


def continual_frame(matrices: dict[tuple[str, int], np.ndarray], reference: str | None) -> pd.DataFrame:
    """One row per run of ``matrices``: ``condition, seed, tasks`` (T of its matrix), the
    :data:`CONTINUAL` metrics (NaN where undefined), :data:`PER_TASK` and ``undefined`` (the reasons
    of the metrics without a value, e.g. "forgetting: a single task, so no earlier task to forget").
    ``reference``: the condition forward transfer and plasticity ratios are taken against."""
    rows = []
    for (condition, seed), matrix in matrices.items():
        values, ratios = _metrics(matrix, _reference(matrices, reference, seed, len(matrix)))
        undefined = [v.reason for v in (*values.values(), *ratios) if isinstance(v, Undefined)]
        rows.append({
            "condition": condition, "seed": seed, "tasks": len(matrix),
            **{name: _number(v) for name, v in values.items()},
            PER_TASK: [_number(v) for v in ratios], "undefined": list(dict.fromkeys(undefined)),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def _number(value: Metric) -> float:
    return np.nan if isinstance(value, Undefined) else value


def _gap(matrix: np.ndarray) -> str:
    """Why a matrix cannot be measured ("" when every entry on and below its diagonal is there)."""
    missing = [(i, j) for i in range(len(matrix)) for j in range(i + 1) if np.isnan(matrix[i, j])]
    return f"task_matrix.csv has no R[{missing[0][0]}][{missing[0][1]}]" if missing else ""


def _reference(
    matrices: dict[tuple[str, int], np.ndarray], reference: str | None, seed: int, tasks: int,
) -> np.ndarray | Undefined | None:
    """The reference condition's matrix of ``seed``, or why there is none to compare with."""
    if reference is None:
        return None
    found = matrices.get((reference, seed))
    if found is None or len(found) != tasks or _gap(found):
        return Undefined(f"the reference condition {reference} has no complete {tasks}-task matrix of seed {seed}")
    return found


def _metrics(matrix: np.ndarray, reference: np.ndarray | Undefined | None) -> tuple[dict[str, Metric], tuple[Metric, ...]]:
    """The :data:`CONTINUAL` metrics of one run and its per-task plasticity ratios."""
    gap = _gap(matrix)
    if gap:
        missing = Undefined(f"every continual-learning metric: {gap}")
        return dict.fromkeys(CONTINUAL, missing), ()
    values: dict[str, Metric] = {
        "final_average_return": final_average_return(matrix),
        "forgetting": forgetting(matrix),
        "backward_transfer": backward_transfer(matrix),
    }
    if isinstance(reference, Undefined):
        values["forward_transfer"] = Undefined(f"forward_transfer: {reference.reason}")
        ratios: tuple[Metric, ...] | Undefined = Undefined(f"plasticity_ratio: {reference.reason}")
    else:
        values["forward_transfer"] = forward_transfer(matrix, reference)
        ratios = plasticity_ratio(matrix, reference)
    if isinstance(ratios, Undefined):
        values["plasticity_ratio"] = ratios
        return values, ()
    # the mean needs every task's ratio: a mean over some tasks would compare other tasks in other seeds
    undefined = [r for r in ratios if isinstance(r, Undefined)]
    values["plasticity_ratio"] = undefined[0] if undefined else float(np.mean(ratios))
    return values, ratios
