"""Keep freed tensor memory in the process (glibc's malloc), so a training process stops paying
page faults for tensors it allocates every epoch.

torch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold (adjusted
at run time, up to 32 MiB) with fresh ``mmap`` pages and returns them to the kernel when freed,
and it trims the heap's top beyond its trim threshold: a tensor of a few MB that is made and
dropped in every epoch (a population's float64 weight copies, evaluation batches, the update's
temporaries) is zero-filled by the kernel, page by page, each time. A K = 30 gridworld population
took ~20 thousand minor page faults per epoch and ~5% of its time in the kernel; its per-epoch
weight statistics alone took 16-28 ms per epoch, 5.5 ms with the heap kept (``BENCHMARKS.md``). ``mallopt`` is glibc's own interface for exactly this (no library offers
it from Python; ``ctypes`` calls it); on another C library nothing changes.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""``mallopt`` parameters (glibc's malloc.h)."""

MMAP_THRESHOLD = 32 * 1024 * 1024
"""Blocks below it come from the heap: glibc's documented maximum on 64-bit systems (a tensor of
more is allocated once per run in this toolkit: rollout storage, a large probe set)."""

TRIM_THRESHOLD = 1024 * 1024 * 1024
"""Freed memory the heap keeps before returning any to the kernel: a training process's peak is
hundreds of MB, so in practice it keeps it all (its resident memory stays at that peak)."""


def keep_freed_memory() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` and its trim threshold at
    :data:`TRIM_THRESHOLD` for this process; whether it applied (False off glibc). Process-wide
    and idempotent: the ``train`` command calls it once, before any tensor is made. It changes
    where memory comes from, never a computed number."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
