"""Continual-learning metrics of a task-return matrix: average return, forgetting, backward and
forward transfer, and a plasticity ratio against a reference condition.

A run trains on a sequence of ``T`` tasks (rounds separated by distribution shifts). At the end of
task ``i`` it is evaluated on every task ``j <= i`` seen so far, which gives the lower-triangular
*task-return matrix*::

    R[i][j] = test return on task j after training task i        (0 <= j <= i < T)
    R[i][j] = NaN                                                  (j > i: not seen yet)

Rows are "after training task i", columns are "evaluated on task j"; the diagonal ``R[j][j]`` is
how well task ``j`` is done right after it was trained. :func:`read_task_matrix` reads a run's
``task_matrix.csv`` into this layout (:func:`task_matrix_rows` and :func:`matrix_from_rows` are its
two steps, for text that is not a plain file, e.g. a committed study's gzipped copy).

Every function is pure: the inputs (a ``(T, T)`` numpy array, torch tensor or nested list) are
never modified, and values are computed in float64 on the CPU (a matrix has a handful of
entries). Inputs are validated the same way everywhere: square, at least one task, finite on and
below the diagonal, NaN above it; anything else raises a one-line ``ValueError`` naming the
argument.

Undefined metrics
-----------------
A metric that has no value for its input (forgetting of a single task, forward transfer without a
reference condition, a ratio over a reference return that is not positive) is returned as an
:class:`Undefined` carrying the reason, never as ``0`` or ``NaN``: a 0 would read as "no
forgetting" / "no transfer", and a NaN would lose why. Every metric that can be undefined returns
``float | Undefined`` (per task: a tuple of them), so callers test ``isinstance(v, Undefined)``.

Returns are in the environment's own units (unnormalised), so every difference below is in return
units and can be negative; the metrics compare conditions on the same tasks, never across
environments.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Mapping
from typing import Any, Union

import numpy as np
import torch

__all__ = [
    "Undefined",
    "Metric",
    "TASK_MATRIX_COLUMNS",
    "TASK_MATRIX_SECONDS",
    "average_returns",
    "final_average_return",
    "average_incremental_return",
    "forgetting",
    "backward_transfer",
    "forward_transfer",
    "plasticity_ratio",
    "continual_metrics",
    "read_task_matrix",
    "task_matrix_rows",
    "matrix_from_rows",
]


@dataclass(frozen=True)
class Undefined:
    """A metric that has no value for this input, and why (e.g. "a single task: nothing to
    forget"). Stands where a float would, so an absent value can never be mistaken for 0."""

    reason: str

    def __post_init__(self) -> None:
        if not self.reason:
            raise ValueError("Undefined: reason must be a non-empty string")


Metric = Union[float, Undefined]
"""What every metric that can be undefined returns."""

TASK_MATRIX_COLUMNS = ("i", "j", "epoch", "return", "episodes")
"""The columns of a run's ``task_matrix.csv``, one row per evaluated ``(i, j)``: after training
task ``i`` (ending at ``epoch``), the mean test return on task ``j`` over ``episodes`` episodes."""
TASK_MATRIX_SECONDS = "eval_seconds"
"""The optional timing column the training loop adds: wall seconds of that evaluation, for the
whole population (every member's row says the same; 0 where R[i][i] is the epoch's ordinary
evaluation). The machine's, not the run's: left out of every metric and of bit-identity checks."""


# --------------------------------------------------------------------------- validation


def _checked(x: Any, name: str) -> np.ndarray:
    """``x`` as a float64 ``(T, T)`` numpy copy: finite on and below the diagonal, NaN above it."""
    try:
        if isinstance(x, torch.Tensor):
            if x.is_complex():
                raise TypeError
            m = x.detach().to("cpu", torch.float64).numpy().copy()
        else:
            m = np.array(x, dtype=np.float64)  # a copy: the caller's array is never touched
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a (T, T) matrix of real returns, got {type(x).__name__}") from None
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"{name}: expected a square (T, T) matrix with T >= 1, got shape {m.shape}")
    lower = np.tril(np.ones(m.shape, dtype=bool))
    missing = np.argwhere(lower & ~np.isfinite(m))
    if missing.size:
        i, j = missing[0]
        raise ValueError(
            f"{name}: R[{i}][{j}] on or below the diagonal is {m[i, j]} (every task j <= i must be evaluated)"
        )
    present = np.argwhere(~lower & ~np.isnan(m))
    if present.size:
        i, j = present[0]
        raise ValueError(
            f"{name}: R[{i}][{j}] above the diagonal is {m[i, j]}, expected NaN (task {j} is not seen after task {i})"
        )
    return m


def _reference(reference: Any, returns: np.ndarray, name: str) -> np.ndarray:
    """The reference condition's matrix, validated like ``returns`` and of the same size."""
    ref = _checked(reference, name)
    if ref.shape != returns.shape:
        raise ValueError(f"{name}: shape {ref.shape} differs from the returns' {returns.shape} (same tasks needed)")
    return ref


# --------------------------------------------------------------------------- average return


def average_returns(returns: Any) -> np.ndarray:
    r"""Average return over the tasks seen so far, after each task: a float64 ``(T,)`` array::

        A_i = (1 / (i + 1)) * sum_{j <= i} R[i][j]

    Chaudhry, Dokania, Ajanthan & Torr (2018), "Riemannian Walk for Incremental Learning:
    Understanding Forgetting and Intransigence", ECCV: the average accuracy ``A_k`` (there over
    test accuracies, here over test returns). Always defined.
    """
    m = _checked(returns, "returns")
    return np.array([m[i, : i + 1].mean() for i in range(m.shape[0])])


def final_average_return(returns: Any) -> float:
    r"""Mean return over all ``T`` tasks at the end of the run::

        final_average_return = (1 / T) * sum_{j < T} R[T-1][j]  ( = A_{T-1} of :func:`average_returns`)

    Lopez-Paz & Ranzato (2017), "Gradient Episodic Memory for Continual Learning", NeurIPS:
    their ACC (the "average accuracy" most continual-learning libraries report). Always defined.
    """
    m = _checked(returns, "returns")
    return float(m[-1].mean())


def average_incremental_return(returns: Any) -> float:
    r"""Average performance over the whole run, the mean of the after-task averages::

        average_incremental_return = (1 / T) * sum_{i < T} A_i,   A_i = (1/(i+1)) sum_{j<=i} R[i][j]

    Rebuffi, Kolesnikov, Sperl & Lampert (2017), "iCaRL: Incremental Classifier and Representation
    Learning", CVPR: the "average incremental accuracy". Unlike :func:`final_average_return` it
    also credits a run for how well it did along the way, not only at the end. Always defined.
    """
    return float(average_returns(returns).mean())


# --------------------------------------------------------------------------- forgetting and transfer


def forgetting(returns: Any) -> Metric:
    r"""Average forgetting at the end of the run (Chaudhry et al. 2018, "Riemannian Walk")::

        f_j = max_{l in [j, T-2]} R[l][j] - R[T-1][j]      for each task j < T-1
        forgetting = (1 / (T-1)) * sum_{j < T-1} f_j

    i.e. how far each earlier task's final return is below the best it ever had before the last
    task (the max starts at ``l = j``: the task is not evaluated before it is trained). Positive:
    forgotten; it can be negative when a task's final return exceeds every earlier one. A task that
    was never learned has nothing to forget (``f_j`` near 0), so low forgetting is only good news
    beside a high diagonal (:func:`plasticity_ratio`).

    Undefined for a single task (no earlier task to forget).
    """
    m = _checked(returns, "returns")
    t = m.shape[0]
    if t == 1:
        return Undefined("forgetting: a single task, so no earlier task to forget")
    per_task = [m[j : t - 1, j].max() - m[t - 1, j] for j in range(t - 1)]
    return float(np.mean(per_task))


def backward_transfer(returns: Any) -> Metric:
    r"""Backward transfer at the end of the run (Lopez-Paz & Ranzato 2017, GEM)::

        BWT = (1 / (T-1)) * sum_{j < T-1} ( R[T-1][j] - R[j][j] )

    how training the later tasks changed the return on each earlier task against its return right
    after it was trained: negative means forgotten, positive means later tasks helped. Unlike
    :func:`forgetting` the comparison is with the diagonal, not the best earlier return.

    Undefined for a single task (no earlier task).
    """
    m = _checked(returns, "returns")
    t = m.shape[0]
    if t == 1:
        return Undefined("backward_transfer: a single task, so no earlier task to transfer back to")
    return float(np.mean([m[t - 1, j] - m[j, j] for j in range(t - 1)]))


def forward_transfer(returns: Any, reference: Any | None) -> Metric:
    r"""Forward transfer against a reference condition, over all ``T`` tasks::

        FWT = (1 / T) * sum_{j < T} ( R[j][j] - Rref[j][j] )

    how much better each task is done right after training it than the reference condition does it
    after training it with the same budget. With ``reference`` = reset-all (every task learned by
    a fresh network) it asks whether having trained the earlier tasks helps (> 0) or hurts (< 0,
    loss of plasticity) learning the next one. Task 0 is included as the issue defines it; under a
    reset-all reference both conditions train it from a fresh network, so its term only adds seed
    noise. Pass the reference's ``(T, T)`` matrix (e.g. a mean over its seeds); only its diagonal
    enters.

    This is the reference-condition forward transfer of Wołczyk, Zając, Pascanu, Kuciński & Miłoś
    (2021), "Continual World: A Robotic Benchmark For Continual Reinforcement Learning", NeurIPS
    (reference: each task trained from scratch), taken on the end-of-task return and left
    unnormalised (they normalise areas under success curves in [0, 1]; returns have no such
    range). It is also minus the intransigence ``I_j = a*_j - a_{j,j}`` of Chaudhry et al. (2018),
    "Riemannian Walk", averaged over tasks, with the reference condition as ``a*``.

    It differs from GEM's FWT (Lopez-Paz & Ranzato 2017)::

        FWT_GEM = (1 / (T-1)) * sum_{j >= 1} ( R[j-1][j] - b_j )

    which measures zero-shot return on task ``j`` *before* training it (``R[j-1][j]``, absent from
    this matrix by construction) against an untrained random-init network ``b_j``; the version here
    measures how well task ``j`` is *learned*, which is what plasticity loss is about.

    Undefined when ``reference`` is ``None`` (no reference condition).
    """
    m = _checked(returns, "returns")
    if reference is None:
        return Undefined("forward_transfer: no reference condition")
    ref = _reference(reference, m, "reference")
    return float(np.mean(np.diag(m) - np.diag(ref)))


def plasticity_ratio(returns: Any, reference: Any | None) -> tuple[Metric, ...] | Undefined:
    r"""Per task, the return right after training it over the reference condition's::

        ratio_i = R[i][i] / Rref[i][i]        for each task i < T

    below 1: the run learned task ``i`` less well than the reference did (with reset-all as the
    reference, than a fresh network does); near 0: the task was not learned. A project-defined
    return-scale analogue of comparing a trained network with a freshly initialised one, as the
    plasticity literature does (e.g. Lyle, Rowland & Dabney (2022), "Understanding and Preventing
    Capacity Loss in Reinforcement Learning", ICLR; Dohare et al. (2024), "Loss of plasticity in
    deep continual learning", Nature).

    Returns a tuple of ``T`` entries. An entry is :class:`Undefined` where the reference return is
    not positive: 0 has no ratio, and over a negative return the ratio's order is reversed (-5
    over -10 gives 0.5 although -5 is the better return). The whole result is :class:`Undefined`
    when ``reference`` is ``None`` (no reference condition).
    """
    m = _checked(returns, "returns")
    if reference is None:
        return Undefined("plasticity_ratio: no reference condition")
    ref = _reference(reference, m, "reference")
    out: list[Metric] = []
    for i in range(m.shape[0]):
        denominator = ref[i, i]
        if denominator > 0:
            out.append(float(m[i, i] / denominator))
        else:
            out.append(Undefined(f"plasticity_ratio: the reference return on task {i} is {denominator}, not positive"))
    return tuple(out)


def continual_metrics(returns: Any, reference: Any | None = None) -> dict[str, Any]:
    """Every metric of this module for one run's matrix (and a reference condition's, if any), by
    function name: ``average_returns`` (an array), ``final_average_return``,
    ``average_incremental_return``, ``forgetting``, ``backward_transfer``, ``forward_transfer``
    and ``plasticity_ratio``, each exactly as its function computes it."""
    return {
        "average_returns": average_returns(returns),
        "final_average_return": final_average_return(returns),
        "average_incremental_return": average_incremental_return(returns),
        "forgetting": forgetting(returns),
        "backward_transfer": backward_transfer(returns),
        "forward_transfer": forward_transfer(returns, reference),
        "plasticity_ratio": plasticity_ratio(returns, reference),
    }


# --------------------------------------------------------------------------- reading a run's file


def read_task_matrix(path: str | Path) -> np.ndarray:
    """A run's ``task_matrix.csv`` as its float64 ``(T, T)`` task-return matrix, NaN where absent.

    The file has a header with at least :data:`TASK_MATRIX_COLUMNS` (``i, j, epoch, return,
    episodes``; more columns are ignored) and one row per evaluated ``(i, j)``, in any order.
    ``T`` is the largest ``i`` plus one; pairs with no row (above the diagonal, or not evaluated
    because the run stopped) are NaN, and the metrics above reject a NaN on or below the diagonal.

    A malformed file raises ``ValueError`` naming the file and line (:func:`task_matrix_rows`), and
    so does a file with a header but no rows.
    """
    path = Path(path)
    with path.open(newline="") as handle:
        rows = task_matrix_rows(handle, path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return matrix_from_rows(rows)


def task_matrix_rows(lines: Iterable[str], source: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``task_matrix.csv`` read from ``lines`` (an open file, or the text of a
    committed study's ``task_matrix.csv.gz``), checked, in file order: dicts of ``i, j, epoch,
    episodes`` (int), ``return`` (float) and :data:`TASK_MATRIX_SECONDS` (float; NaN where the file
    has no such column or an empty cell). A header without rows gives ``[]`` (a run still in its
    first task).

    Raises ``ValueError`` naming ``source`` and the line: no header, a missing column,
    ``i``/``j``/``epoch``/``episodes`` not non-negative integers, ``j > i``, a repeated ``(i, j)``,
    a ``return`` that is not a finite number, or ``episodes`` of 0.
    """
    reader = csv.DictReader(lines)
    if reader.fieldnames is None:
        raise ValueError(f"{source}: empty file, expected a header {','.join(TASK_MATRIX_COLUMNS)}")
    missing = [c for c in TASK_MATRIX_COLUMNS if c not in reader.fieldnames]
    if missing:
        raise ValueError(f"{source}: missing column(s) {', '.join(missing)} (header: {','.join(reader.fieldnames)})")
    rows: list[dict[str, Any]] = []
    seen: set[tuple[int, int]] = set()
    for row in reader:
        line = reader.line_num
        if None in row or any(row[c] is None for c in TASK_MATRIX_COLUMNS):
            raise ValueError(f"{source}: line {line}: expected {len(reader.fieldnames)} fields")
        i, j, epoch, episodes = (_index(row[c], c, source, line) for c in ("i", "j", "epoch", "episodes"))
        if j > i:
            raise ValueError(f"{source}: line {line}: j = {j} > i = {i} (a task is evaluated only once seen)")
        if (i, j) in seen:
            raise ValueError(f"{source}: line {line}: a second row for (i, j) = ({i}, {j})")
        if episodes == 0:
            raise ValueError(f"{source}: line {line}: a return over 0 episodes")
        seen.add((i, j))
        rows.append({"i": i, "j": j, "epoch": epoch, "return": _return(row["return"], source, line), "episodes": episodes,
                     TASK_MATRIX_SECONDS: _seconds(row.get(TASK_MATRIX_SECONDS), source, line)})
    return rows


def matrix_from_rows(rows: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """The float64 ``(T, T)`` matrix of rows with ``i``, ``j`` and ``return`` (e.g. those of
    :func:`task_matrix_rows`, or one run's rows of a study's frame): ``T`` is the largest ``i``
    plus one, and every ``(i, j)`` without a row is NaN. Raises ``ValueError`` for no rows."""
    entries = {(int(r["i"]), int(r["j"])): float(r["return"]) for r in rows}
    if not entries:
        raise ValueError("rows: no rows, so no task")
    t = max(i for i, _ in entries) + 1
    matrix = np.full((t, t), np.nan)
    for (i, j), value in entries.items():
        matrix[i, j] = value
    return matrix


def _index(text: str, column: str, source: str | Path, line: int) -> int:
    value = text.strip()
    if not (value.isascii() and value.isdecimal()):  # ASCII digits only: no sign, point or exponent
        raise ValueError(f"{source}: line {line}: {column} = {text!r} is not a non-negative integer")
    return int(value)


def _return(text: str, source: str | Path, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{source}: line {line}: return = {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{source}: line {line}: return = {text!r} is not finite")
    return value


def _seconds(text: str | None, source: str | Path, line: int) -> float:
    if text is None or text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{source}: line {line}: {TASK_MATRIX_SECONDS} = {text!r} is not a number") from None
    if not value >= 0:
        raise ValueError(f"{source}: line {line}: {TASK_MATRIX_SECONDS} = {text!r} is not a duration >= 0")
    return value
