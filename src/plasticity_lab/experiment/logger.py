"""Per-epoch metrics: CSV (appended and flushed every epoch), TensorBoard, and a progress view.

On resume the CSV is cut back to the rows before the checkpoint's epoch (rows written after the
last checkpoint are recomputed), and TensorBoard events past that step are purged, so no row is
lost or duplicated.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

BASE_COLUMNS = [
    "epoch", "env_steps", "wall_time", "task", "train_r", "train_l", "v_estimate", "entropy",
    "test_r", "p_loss", "v_loss", "v_error", "weight_m", "weight_diff", "grad_norm", "dead_units",
    "dormant_units", "approx_kl", "clipfrac", "explained_variance", "steps_per_s",
]


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class MetricsCSV:
    """Append-only metrics.csv with a fixed header."""

    def __init__(self, path: Path, columns: list[str], start_epoch: int) -> None:
        self.path, self.columns = path, columns
        if path.exists():  # also at start_epoch 0: a run resumed before its first checkpoint
            self._truncate(start_epoch)
        new = not path.exists() or path.stat().st_size == 0
        self.handle = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=columns)
        if new:
            self.writer.writeheader()
            self.handle.flush()

    def _truncate(self, start_epoch: int) -> None:
        with open(self.path, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r.get("epoch", "").isdigit() and int(r["epoch"]) < start_epoch]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow({c: _cell(row.get(c)) for c in self.columns})
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class Progress:
    """A rich progress bar on a terminal; plain log lines otherwise (CI, files, sweeps)."""

    def __init__(self, label: str, total: int, start: int, plain_every: int | None = None) -> None:
        self.label, self.total, self.start = label, total, start
        self.tty = sys.stdout.isatty()
        self.plain_every = plain_every or max(1, total // 20)
        self.t0 = time.monotonic()
        self.bar = None
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self.bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
            )
            self.bar.start()
            self.task = self.bar.add_task(label, total=total, completed=start, info="")

    def update(self, epoch: int, row: dict[str, Any]) -> None:
        info = (
            f"{row.get('steps_per_s', 0):.0f} steps/s  train_r {_cell(row.get('train_r')) or '-'}"
            f"  test_r {_cell(row.get('test_r')) or '-'}"
        )
        if self.bar is not None:
            self.bar.update(self.task, completed=epoch + 1, info=info)
            return
        done = epoch + 1
        if done % self.plain_every == 0 or done == self.total or done == self.start + 1:
            elapsed = time.monotonic() - self.t0
            rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            print(f"[{self.label}] epoch {done}/{self.total}  {info}  eta {eta:.0f}s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
