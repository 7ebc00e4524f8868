"""How a local sweep starts a child: the ordinary ``plab train`` command, either as a fresh
interpreter or forked from the sweep process.

A fresh interpreter spends ~2 s importing torch and the toolkit before it trains; in a study of
two populations on two cores that is paid at the start and again, on an idle core, when one
population hands members over, and the handed-over members then finish that much later than
their peers. The sweep has already imported both, so a child forked from it starts training at
once. Forking is used only where it is safe: on Linux, with a torch built without CUDA and ROCm (after a
backward pass, a build that sees a GPU refuses autograd in forked children, and a CUDA context
does not survive a fork), for CPU runs with one thread each (an OpenMP pool the parent started
is not there in the child). The child is set up as a fresh ``python -m plasticity_lab.cli``
would be: its own standard streams on the log and /dev/null, default signal handlers, its
``sys.argv``, no exit handlers of the sweep's and its own run at exit, and the code version the
sweep recorded when it imported the code the child runs (``sweep`` asks for it first).
Everywhere else the command runs as a subprocess, as before.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Protocol

import torch


CLI_MODULE = "plasticity_lab.cli"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Child(Protocol):
    """The part of ``subprocess.Popen`` the sweep uses."""

    def poll(self) -> int | None: ...

    def send_signal(self, signum: int) -> None: ...

    def wait(self) -> int: ...


def cpu_only_torch() -> bool:
    """Whether this torch was built without CUDA and ROCm (asked without initialising either)."""
    return torch.version.cuda is None and torch.version.hip is None


def can_fork(cmd: list[str]) -> bool:
    """Fork ``cmd`` (a ``python -m plasticity_lab.cli`` command) rather than exec it?"""
    return (
        sys.platform == "linux" and cpu_only_torch() and cmd[1:3] == ["-m", CLI_MODULE]
        and _flag(cmd, "--device") == "cpu" and _flag(cmd, "--threads") == "1"
    )  # fmt: skip


def _flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd[:-1] else None


def start_child(cmd: list[str], log_path: Path, cores: list[int]) -> Child:
    """``cmd`` with its output appended to ``log_path``, pinned to ``cores``."""
    if not can_fork(cmd):
        with open(log_path, "a") as log:  # the child keeps its own copy
            return subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=lambda: os.sched_setaffinity(0, cores),
            )  # fmt: skip
    _flush_output()  # or the child would write the sweep's buffered output again
    # a stop signal between the fork and the child's own handlers would run the sweep's handler there
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    pid = os.fork()
    if pid == 0:
        try:
            _child(cmd[3:], str(log_path), cores, blocked)
        finally:
            os._exit(1)  # never back into the sweep's code
    child = ForkedChild(pid)
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # runs a stop signal's handler that came meanwhile
    except BaseException:
        child.send_signal(signal.SIGINT)  # the caller never sees this child: it checkpoints and stops
        child.wait()
        raise
    return child


def _flush_output() -> None:
    """This process's Python and C-level output buffers, written out."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    ctypes.CDLL(None).fflush(None)


class ForkedChild:
    """A forked child behind the ``Popen`` calls the sweep makes (exit codes alike: negative
    for a signal)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


def _child(args: list[str], log_path: str, cores: list[int], mask: set) -> None:
    """The forked child: what ``python -m plasticity_lab.cli ARGS > log 2>&1 < /dev/null`` does."""
    code, killed_by = 1, None
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        for source, target in ((fd, 1), (fd, 2), (null, 0)):
            os.dup2(source, target)
        os.close(fd)
        os.close(null)
        # new stream objects: a lock of the parent's (held by another thread at the fork) is not theirs
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        sys.stderr = open(2, "w", buffering=1, encoding=encoding, errors="backslashreplace", closefd=False)
        sys.stdout = open(1, "w", encoding=encoding, closefd=False)
        sys.stdin = open(0, closefd=False)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        atexit._clear()  # the sweep's exit handlers are the sweep's
        os.sched_setaffinity(0, cores)
        from plasticity_lab import cli

        sys.argv = [cli.__file__, *args]
        raise SystemExit(cli.main(args))
    except SystemExit as stop:  # as the interpreter turns sys.exit's argument into an exit status
        code = 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        killed_by = signal.SIGINT  # an interpreter ends on an uncaught Ctrl-C as killed by SIGINT
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()
            _flush_output()
        finally:
            if killed_by is not None:
                signal.signal(killed_by, signal.SIG_DFL)
                os.kill(os.getpid(), killed_by)
            os._exit(code & 0xFF)
