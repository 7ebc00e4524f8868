"""Atomic checkpoints and their compatibility check.

A checkpoint holds everything needed to continue a run bit-exactly on the same device: model and
optimiser, every RNG, the environments' internal state, the shift state and intervention state.
Writes go to a temp file in the same directory followed by ``os.replace`` so a crash can never
leave a half-written ``latest.pt``.

A population's checkpoints are one unit (DESIGN.md section 8): every member's new checkpoint is
written first (``next.pt``), then each member's ``latest.pt`` becomes ``previous.pt`` and its
``next.pt`` becomes ``latest.pt``. Whenever the process is killed, every member still has a
checkpoint at one common epoch (the new one once all ``next.pt`` are written, the old one
before), and a resume continues all members from it (:func:`common_epoch`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 2
LATEST, NEXT, PREVIOUS = "latest.pt", "next.pt", "previous.pt"
"""A run's checkpoint files: the newest, one being committed with its population, the one before."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: the message is one line naming the file and the reason."""


# Sections that decide what a run computes; experiment.* (other conditions, save_freq) does not.
RESULT_SECTIONS = ("environment", "model", "ppo_trainer", "interventions")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_mismatch(
    saved: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any], where: str = "the checkpoint"
) -> str | None:
    """First setting that differs between a checkpoint's config and the current one, or None.

    Settings added to the schema after the checkpoint was written count as their default value,
    so upgrading the toolkit does not orphan checkpoints whose runs it would compute the same.
    """
    old = {k: v for s in RESULT_SECTIONS for k, v in _flatten(saved.get(s, {}), f"{s}.").items()}
    new = {k: v for s in RESULT_SECTIONS for k, v in _flatten(current.get(s, {}), f"{s}.").items()}
    base = _flatten({s: defaults.get(s, {}) for s in RESULT_SECTIONS})
    for key in sorted(set(old) | set(new)):
        before = old.get(key, base.get(key))
        after = new.get(key, base.get(key))
        if before != after:
            return f"{key} is {after!r} now but {before!r} in {where}"
    return None


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_population(states: Sequence[tuple[Path, dict[str, Any]]]) -> None:
    """Write the checkpoints of a population's members (``(checkpoint dir, state)`` each) as one
    unit; see the module docstring."""
    for ckpt_dir, state in states:
        save_atomic(state, ckpt_dir / NEXT)
    for ckpt_dir, _ in states:
        if (ckpt_dir / LATEST).exists():
            os.replace(ckpt_dir / LATEST, ckpt_dir / PREVIOUS)
        os.replace(ckpt_dir / NEXT, ckpt_dir / LATEST)


def checkpoint_epochs(ckpt_dir: Path) -> dict[int, Path]:
    """The epoch each of a run's checkpoint files continues from (``next_epoch``) -> the file;
    {} without any. Raises :class:`CheckpointError` for an unreadable file."""
    found: dict[int, Path] = {}
    for name in (LATEST, NEXT, PREVIOUS):  # the first file of an epoch is kept
        path = Path(ckpt_dir) / name
        if path.exists():
            state = load_checkpoint(path)
            if not isinstance(state.get("next_epoch"), int):
                raise CheckpointError(f"{path}: corrupt checkpoint (no next_epoch)")
            found.setdefault(state["next_epoch"], path)
    return found


def common_epoch(epochs: Sequence[dict[int, Path]]) -> int | None:
    """The newest epoch at which every run in ``epochs`` (each from :func:`checkpoint_epochs`)
    has a checkpoint, or None if there is none."""
    shared = set.intersection(*(set(e) for e in epochs)) if epochs else set()
    return max(shared) if shared else None


def load_checkpoint(
    path: Path,
    config: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint and, given the current resolved ``config`` (and the schema ``defaults``),
    check it was written by the same settings; raises :class:`CheckpointError`, never modifies
    the file."""
    try:
        # weights_only=False: the payload holds numpy RNG states and procgen state bytes.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint to resume from") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a plasticity-lab checkpoint of format {FORMAT_VERSION}")
    if config is not None:
        mismatch = config_mismatch(state.get("config", {}), config, defaults or {})
        if mismatch:
            raise CheckpointError(
                f"{path}: incompatible checkpoint: {mismatch} "
                "(resume with the same config file and condition, or start a new run name)"
            )
    return state
