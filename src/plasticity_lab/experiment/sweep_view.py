"""Live view of a sweep: per run condition, seed, status, epoch, steps/s, last test return, ETA.

Reads each run's metrics.csv tail (the runs are other processes), so it works the same for the
local and the Ray backend. A rich table on a terminal; plain status lines otherwise.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plasticity_lab.experiment.sweep import RunState

PLAIN_EVERY_S = 30.0


def last_rows(path, n: int = 20, tail_bytes: int = 8192) -> list[dict[str, str]]:
    """The last complete rows of a CSV that another process appends to (reads only the file's
    tail; a last line still being written, without its newline, is left out)."""
    try:
        with open(path, "rb") as handle:
            header = handle.readline().decode()
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(len(header), size - tail_bytes))
            chunk = handle.read().decode(errors="replace")
    except OSError:
        return []
    lines = chunk.splitlines()
    if size > tail_bytes + len(header):
        lines = lines[1:]  # first line may be cut
    if lines and not chunk.endswith("\n"):
        lines = lines[:-1]
    return list(csv.DictReader(io.StringIO(header + "\n".join(lines[-n:]))))


def run_progress(state: RunState) -> dict[str, Any]:
    rows = last_rows(state.spec.run_dir / "metrics.csv")
    epoch = int(rows[-1]["epoch"]) + 1 if rows else 0
    tests = [r["test_r"] for r in rows if r.get("test_r")]
    sps = rows[-1].get("steps_per_s", "") if rows else ""
    return {"epoch": epoch, "steps_per_s": float(sps) if sps else None, "test_r": float(tests[-1]) if tests else None}


def running_summary(rows: list[tuple]) -> list[str]:
    """One entry per running run, or per condition where more than three of its runs are running
    together (a population: the epoch range and mean test return of its members)."""
    by_condition: dict[str, list[tuple]] = {}
    for row in rows:
        if row[2] == "running":
            by_condition.setdefault(row[0], []).append(row)
    out = []
    for condition, running in by_condition.items():
        if len(running) <= 3:
            out += [f"{c}/seed_{s} {e} {sps} steps/s test_r {t}" for c, s, st, e, sps, t in running]
            continue
        epochs = sorted((r[3] for r in running), key=lambda e: int(e.split("/")[0]))
        tests = [float(r[5]) for r in running if r[5] != "-"]
        mean = f"{sum(tests) / len(tests):.2f}" if tests else "-"
        span = epochs[0] if epochs[0] == epochs[-1] else f"{epochs[0]}..{epochs[-1]}"
        out.append(f"{condition} x{len(running)} seeds {span} mean test_r {mean}")
    return out


class SweepView:
    """The live table (or plain lines), plus the sweep's events (start, retries, failures,
    summary) printed and appended to ``log_path`` for other terminals."""

    def __init__(self, states: list[RunState], total_epochs: dict[str, int], log_path: Path | None = None) -> None:
        self.total = total_epochs
        self.log_path = log_path
        self.t0 = time.monotonic()
        self.start_epochs = {s.spec.label: run_progress(s)["epoch"] for s in states}
        self.last_plain = 0.0
        self.last_status: dict[str, str] = {}
        self.live = None
        if sys.stdout.isatty():
            from rich.live import Live

            self.live = Live(self._table(states), refresh_per_second=2)
            self.live.start()

    def _rows(self, states: list[RunState]) -> tuple[list[tuple], str]:
        rows, done_epochs, left = [], 0, 0
        for s in states:
            p = run_progress(s)
            total = self.total[s.spec.label]
            done_epochs += p["epoch"] - self.start_epochs[s.spec.label]
            left += total - p["epoch"]
            rows.append((s.spec.condition, s.spec.seed, s.status, f"{p['epoch']}/{total}",
                         f"{p['steps_per_s']:.0f}" if p["steps_per_s"] else "-",
                         f"{p['test_r']:.2f}" if p["test_r"] is not None else "-"))
        elapsed = time.monotonic() - self.t0
        rate = done_epochs / elapsed if elapsed > 0 else 0
        eta = f"{left / rate / 60:.1f} min" if rate > 0 else "-"
        return rows, eta

    def _table(self, states: list[RunState]):
        from rich.table import Table

        rows, eta = self._rows(states)
        table = Table(title=f"sweep: {sum(s.status in ('done', 'skipped') for s in states)}/{len(states)} finished, ETA {eta}")
        for col in ("condition", "seed", "status", "epoch", "steps/s", "last test_r"):
            table.add_column(col)
        for row in rows:
            table.add_row(*(str(c) for c in row))
        return table

    def refresh(self, states: list[RunState]) -> None:
        if self.live is not None:
            self.live.update(self._table(states))
            return
        changed = any(self.last_status.get(s.spec.label) != s.status for s in states)
        now = time.monotonic()
        if changed or now - self.last_plain > PLAIN_EVERY_S:
            self.last_plain = now
            self.last_status = {s.spec.label: s.status for s in states}
            rows, eta = self._rows(states)
            finished = sum(r[2] in ("done", "skipped") for r in rows)
            print(f"[sweep] {finished}/{len(rows)} finished, ETA {eta}; running: {'; '.join(running_summary(rows)) or '-'}", flush=True)

    def event(self, message: str) -> None:
        """A line for the sweep's log: printed (above the live table) and appended to log_path."""
        if self.live is not None:
            self.live.console.print(message, markup=False, highlight=False)
        else:
            print(message, flush=True)
        if self.log_path is not None:
            with open(self.log_path, "a") as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def retrying(self, state: RunState, retries: int) -> None:
        self.event(f"[sweep] {state.spec.label} died: {state.deaths[-1]}; retrying from its checkpoint, "
                   f"attempt {state.attempts + 1} of {retries + 1}")

    def close(self, states: list[RunState]) -> None:
        if self.live is not None:
            self.live.update(self._table(states))
            self.live.stop()
            self.live = None
        for s in states:
            if s.status == "failed":
                self.event(f"FAILED {s.spec.label} after {s.attempts} attempt(s): {s.error}")
        summary = {k: sum(s.status == k for s in states) for k in ("done", "skipped", "failed", "pending")}
        retried = [s for s in states if s.deaths]
        detail = f" ({', '.join(f'{s.spec.label} x{len(s.deaths)}' for s in retried)})" if retried else ""
        self.event(f"[sweep] done {summary['done']}, already finished {summary['skipped']}, failed {summary['failed']}, "
                   f"retried {sum(len(s.deaths) for s in retried)}{detail}")
