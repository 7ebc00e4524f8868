"""Work sharing in a local sweep: a worker with nothing left to start asks a running population
for some of its members, and trains them itself.

Without it, a study's last populations decide its wall time: two conditions on two cores, one
1.25x dearer per member than the other, leave a core idle for the last fifth of the study. A
population asked for members checkpoints every member at its next epoch boundary (one unit, as
always), stops the members asked for and answers; the sweep resumes them as a population of
their own. Nothing about them changes: a member resumed from a population's checkpoint, alone
or with others, continues bit for bit as uninterrupted (docs/populations.md) on CPU, where the
environments hold their episodes in progress; elsewhere the population declines.

The two sides talk through two small files beside the population's log, written atomically:
the sweep and its children already share the run directories, and a file needs no signal
handler in the child and survives a kill of either side without leaving the other waiting
(the sweep clears both when the population's process ends).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from plasticity_lab.experiment.study import write_atomic

MIN_REMAINING = 0.1
"""A population hands members over only while at least this fraction of its epochs remains: a
new process costs seconds to start, and near the end splitting saves less than that."""


@dataclass(frozen=True)
class Handover:
    """The request (``<stem>.handover.json``: how many members are asked for; the population
    picks its last ones still training) and the answer (``<stem>.handed-over.json``: the seeds
    handed over, possibly none, and the epoch their checkpoint is at) of one population."""

    stem: Path

    @property
    def request(self) -> Path:
        return self.stem.with_name(self.stem.name + ".handover.json")

    @property
    def answer(self) -> Path:
        return self.stem.with_name(self.stem.name + ".handed-over.json")

    # the sweep's side
    def ask(self, count: int) -> None:
        self.answer.unlink(missing_ok=True)
        write_atomic(self.request, json.dumps({"members": count}))

    def answered(self) -> tuple[list[int], int] | None:
        """(seeds handed over, their checkpoint epoch) once the population answered, else None."""
        try:
            data = json.loads(self.answer.read_text())
        except FileNotFoundError:
            return None
        return [int(s) for s in data["seeds"]], int(data["epoch"])

    def clear(self) -> None:
        self.request.unlink(missing_ok=True)
        self.answer.unlink(missing_ok=True)

    # the population's side
    def asked(self) -> int | None:
        """How many members are asked for, or None while nobody asks."""
        try:
            return int(json.loads(self.request.read_text())["members"])
        except FileNotFoundError:
            return None

    def reply(self, seeds: list[int], epoch: int) -> None:
        """Answer the request: ``seeds`` (empty: declined) were checkpointed at ``epoch`` and
        stopped. The request goes first, so a new one asked after this answer is never lost."""
        self.request.unlink(missing_ok=True)
        write_atomic(self.answer, json.dumps({"seeds": seeds, "epoch": epoch}))
