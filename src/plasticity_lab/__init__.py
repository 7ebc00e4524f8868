"""plasticity-lab: PPO on ProcGen with distribution shifts, mitigations and plasticity diagnostics."""

from plasticity_lab.analysis.frames import load_study
from plasticity_lab.experiment.loading import load_agent

__all__ = ["load_agent", "load_study"]
