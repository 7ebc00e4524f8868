"""Atomic checkpoints and their compatibility check.

A checkpoint holds everything needed to continue a run bit-exactly on the same device: model and
optimiser, every RNG, the environments' internal state, the shift state and intervention state.
Writes go to a temp file in the same directory followed by ``os.replace`` so a crash can never
leave a half-written ``latest.pt``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: the message is one line naming the file and the reason."""


def config_fingerprint(config: dict[str, Any]) -> str:
    """Hash of the resolved config (minus run metadata) that a checkpoint must match to resume."""
    relevant = {k: v for k, v in config.items() if k != "run"}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, fingerprint: str | None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; raises :class:`CheckpointError`, never modifies the file."""
    try:
        # weights_only=False: the payload holds numpy RNG states and procgen state bytes.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint to resume from") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a plasticity-lab checkpoint of format {FORMAT_VERSION}")
    if fingerprint is not None and state.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{path}: incompatible checkpoint: it was written with a different config "
            "(resume with the same config file and condition, or start a new run name)"
        )
    return state
