"""plasticity-lab: PPO on ProcGen with distribution shifts, mitigations and plasticity diagnostics."""
