"""Bit-reproducible CUDA training on request (``experiment.deterministic``).

CPU runs are deterministic without it: the same seed gives the same metrics, and a resumed run
ends bit-identical to an uninterrupted one. On CUDA, cuDNN's algorithm choice, cuBLAS's
split reductions and atomic-add kernels (e.g. the backward of ``gather``) change the low-order
bits from run to run, and PPO amplifies them into different trajectories. This setting switches
torch to its deterministic kernels; it is process-wide, so the ``train`` command applies it
once, before any network is built.
"""

from __future__ import annotations

import os

import torch

CUBLAS_WORKSPACE = ":4096:8"
"""cuBLAS workspace setting that makes its reductions reproducible (NVIDIA's cuBLAS docs,
"Results reproducibility"); read when cuBLAS starts, so it must be set before the first CUDA
matmul."""


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels everywhere (``enabled``) or torch's defaults.

    With ``enabled``, an operation that has no deterministic CUDA kernel raises torch's
    RuntimeError naming it instead of silently breaking reproducibility. An existing
    ``CUBLAS_WORKSPACE_CONFIG`` is left as the user set it.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    if torch.are_deterministic_algorithms_enabled() != enabled or torch.is_deterministic_algorithms_warn_only_enabled():
        # only on a change (a warn-only mode set elsewhere is one): the call imports torch's
        # compiler stack (~1.5 s of every training process's start here) to set a flag of its
        # own, which the default leaves as it is
        torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False
