"""How a local sweep starts a child: the ordinary ``plab train`` command, either as a fresh
interpreter or forked from the sweep process.

A fresh interpreter spends ~2 s importing torch and the toolkit before it trains; in a study of
two populations on two cores that is paid at the start and again, on an idle core, when one
population hands members over, and the handed-over members then finish that much later than
their peers. The sweep has already imported both, so a child forked from it starts training
at once. Forking is used only where it is safe: on Linux, for CPU runs with one thread each
(a child forked after the parent touched CUDA cannot use it, and an OpenMP pool the parent
started is not there in the child), with the child's standard streams, signal handlers and
``sys.argv`` set as a fresh ``python -m plasticity_lab.cli`` would have them. Everywhere else
the command runs as a subprocess, as before.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

CLI_MODULE = "plasticity_lab.cli"


class Child(Protocol):
    """The part of ``subprocess.Popen`` the sweep uses."""

    def poll(self) -> int | None: ...

    def send_signal(self, signum: int) -> None: ...

    def wait(self) -> int: ...


def can_fork(cmd: list[str]) -> bool:
    """Fork ``cmd`` (a ``python -m plasticity_lab.cli`` command) rather than exec it?"""
    return (
        sys.platform == "linux" and cmd[1:3] == ["-m", CLI_MODULE]
        and _flag(cmd, "--device") == "cpu" and _flag(cmd, "--threads") == "1"
    )  # fmt: skip


def _flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd[:-1] else None


def start_child(cmd: list[str], log_path: Path, cores: list[int]) -> Child:
    """``cmd`` with its output appended to ``log_path``, pinned to ``cores``."""
    if can_fork(cmd):
        process = multiprocessing.get_context("fork").Process(target=_forked_cli, args=(cmd[3:], str(log_path), cores))
        process.start()  # flushes this process's stdout and stderr first
        return ForkedChild(process)
    with open(log_path, "a") as log:  # the child keeps its own copy
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=lambda: os.sched_setaffinity(0, cores),
        )  # fmt: skip


class ForkedChild:
    """A forked child behind the ``Popen`` calls the sweep makes (exit codes alike: negative
    for a signal)."""

    def __init__(self, process: Any) -> None:
        self.process = process

    def poll(self) -> int | None:
        return self.process.exitcode

    def send_signal(self, signum: int) -> None:
        if self.process.exitcode is None:
            os.kill(self.process.pid, signum)

    def wait(self) -> int:
        self.process.join()
        return self.process.exitcode


def _forked_cli(args: list[str], log_path: str, cores: list[int]) -> None:
    """The child: what ``python -m plasticity_lab.cli ARGS > log 2>&1 < /dev/null`` would be."""
    os.sched_setaffinity(0, cores)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the sweep's own handlers are not the run's
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # new stream objects: a lock of the parent's (held by another thread at the fork) is not theirs
    encoding = sys.stdout.encoding if sys.stdout is not None else "utf-8"
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding=encoding)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding=encoding, line_buffering=True)
    from plasticity_lab import cli

    sys.argv = [cli.__file__, *args]
    sys.exit(cli.main(args))
