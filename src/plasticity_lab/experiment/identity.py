"""Whether two run directories hold the same run, bit for bit.

A member of a population is its seed's single run on CPU (DESIGN.md section 8), and a resumed
run is its uninterrupted one: both promises are checked by comparing what the runs wrote. The
metrics and diagnostics files hold values as written (6 significant digits), so the final
checkpoint (weights, optimiser moments, method state, random streams, environments) is compared
exactly too; timings are the only values allowed to differ.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plasticity_lab.metrics.continual import TASK_MATRIX_SECONDS

TIMING_COLUMNS = frozenset({"wall_time", "steps_per_s", "probe_seconds", TASK_MATRIX_SECONDS})
"""Columns that measure the machine, not the run."""


def state_differences(x: Any, y: Any, where: str = "") -> list[str]:
    """Where two checkpoint contents differ (tensors, arrays, numbers, nested containers, objects
    compared by their attributes); [] when equal bit for bit."""
    if isinstance(x, torch.Tensor):
        same = isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
        return [] if same else [where]
    if isinstance(x, np.ndarray):
        return [] if isinstance(y, np.ndarray) and np.array_equal(x, y, equal_nan=x.dtype.kind == "f") else [where]
    if isinstance(x, dict):
        if not isinstance(y, dict) or x.keys() != y.keys():
            return [f"{where} (keys)"]
        return [d for key in x for d in state_differences(x[key], y[key], f"{where}/{key}")]
    if isinstance(x, (list, tuple)):
        if not isinstance(y, (list, tuple)) or len(x) != len(y):
            return [f"{where} (length)"]
        return [d for i, (a, b) in enumerate(zip(x, y)) for d in state_differences(a, b, f"{where}[{i}]")]
    if isinstance(x, float) and math.isnan(x):
        return [] if isinstance(y, float) and math.isnan(y) else [where]
    if callable(x):  # a schedule function in an optimiser's settings: the same code
        return [] if getattr(x, "__func__", type(x)) is getattr(y, "__func__", type(y)) else [where]
    if hasattr(x, "__dict__") and type(x).__eq__ is object.__eq__:  # e.g. Kron's probability schedule
        return state_differences(vars(x), vars(y), where) if type(x) is type(y) else [f"{where} (type)"]
    return [] if x == y else [where]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(handle)]


def run_differences(a: Path, b: Path) -> list[str]:
    """Where run directories ``a`` and ``b`` differ: metrics.csv, diagnostics.csv and task_matrix.csv
    as written (timings aside; a task_matrix.csv only one of them wrote is not compared, any other
    file only one wrote is a difference) and the final
    checkpoint (its wall time and config aside); [] when they hold the same run."""
    out = []
    for name in ("metrics.csv", "diagnostics.csv", "task_matrix.csv"):
        if not (a / name).exists() and not (b / name).exists():
            continue
        if (a / name).exists() != (b / name).exists():
            if name != "task_matrix.csv":  # the matrix on in one run only: evaluation, not training
                out.append(f"{name}: only in {a if (a / name).exists() else b}")
            continue
        ra, rb = _rows(a / name), _rows(b / name)
        if len(ra) != len(rb):
            out.append(f"{name}: {len(ra)} vs {len(rb)} rows")
        bad = next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), None)
        if bad is not None:
            column = next(k for k in ra[bad] if ra[bad][k] != rb[bad].get(k))
            out.append(f"{name}: row {bad} ({column}: {ra[bad][column]} vs {rb[bad].get(column)})")
    ca, cb = (torch.load(d / "checkpoints" / "latest.pt", weights_only=False, map_location="cpu") for d in (a, b))
    skip = {"wall_time", "config"}
    out += [f"checkpoint{d}" for d in state_differences(
        {k: v for k, v in ca.items() if k not in skip}, {k: v for k, v in cb.items() if k not in skip})]
    return out
