"""Run loop, checkpoints, logging and run-directory layout."""
