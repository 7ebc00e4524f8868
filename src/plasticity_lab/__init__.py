"""plasticity-lab: PPO on ProcGen with distribution shifts, mitigations and plasticity diagnostics."""

from typing import Any

from plasticity_lab.experiment.loading import load_agent

__all__ = ["load_agent", "load_study"]


def __getattr__(name: str) -> Any:
    """``load_study`` is imported on first use, so training processes do not import pandas."""
    if name == "load_study":
        from plasticity_lab.analysis.frames import load_study

        return load_study
    raise AttributeError(f"module 'plasticity_lab' has no attribute {name!r}")
