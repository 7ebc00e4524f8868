"""On-policy agents (PPO)."""
