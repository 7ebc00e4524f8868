"""keep_freed_memory: a training process keeps the tensors it frees in its heap (no page faults
for the next epoch's tensors of the same sizes), and no computed number changes."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from plasticity_lab.experiment.heap import keep_freed_memory

GLIBC = platform.libc_ver()[0] == "glibc"

# A population's per-epoch weight statistics (K = 30, the findings study's layers), 20 epochs'
# worth, in a fresh process: minor page faults of those 20 calls and the values they return.
SCRIPT = """
import resource, sys, torch
from plasticity_lab.experiment.heap import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
from plasticity_lab.metrics.plasticity import weight_change_rms_stacked
gen = torch.Generator().manual_seed(0)
w = [torch.randn(30, 128, 147, generator=gen), torch.randn(30, 128, 128, generator=gen), torch.randn(30, 4, 128, generator=gen)]
moved = [t + torch.randn(t.shape, generator=gen) for t in w]
weight_change_rms_stacked(w, moved)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    out = weight_change_rms_stacked(w, moved)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, *(v.hex() for v in out))
"""


def faults_and_values(mode: str) -> tuple[str, int, list[str]]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1]), out[2:]


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt; other C libraries are left as they are")
def test_freed_tensors_stay_in_the_heap_and_the_numbers_do_not_change():
    applied, kept, values = faults_and_values("keep")
    default, faulted, default_values = faults_and_values("default")
    assert applied == "True" and default == "None"
    # glibc's defaults give every call's float64 copies fresh zero-filled pages (~7 thousand
    # faults a call here); kept, the second call on reuses the first one's memory
    assert faulted > 20 * 1000 and kept < 100, (faulted, kept)
    assert values == default_values and len(values) == 30


def test_another_c_library_is_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))  # e.g. musl, or macOS
    assert keep_freed_memory() is False
