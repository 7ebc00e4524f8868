"""Load a trained agent from a run directory, for analysis and checks."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from plasticity_lab.config import RunConfig
from plasticity_lab.envs import env_spec
from plasticity_lab.experiment.checkpoint import CheckpointError, load_checkpoint
from plasticity_lab.interventions import TrainingPlan, build_interventions
from plasticity_lab.nets import ActorCritic, build_model


def load_run_config(run_dir: str | Path) -> RunConfig:
    doc = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    doc.pop("run", None)
    return RunConfig.model_validate(doc)


def load_agent(run_dir: str | Path, checkpoint: str = "latest", device: str = "cpu") -> ActorCritic:
    """The trained network of a run (``checkpoint``: "latest" or "task_<k>"), in eval mode.

    Interventions that change the network's structure (e.g. injection) rebuild it from their
    saved state before the weights are loaded.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    state = load_checkpoint(path, map_location=device)
    spec = env_spec(cfg.environment)
    opts = cfg.environment.options()
    model = build_model(cfg.model, spec.num_actions, spec.obs_shape, spec.continuous, opts.obs_clip if opts else 10.0)
    if "interventions" in state:
        for iv, iv_state in zip(build_interventions(cfg.interventions, model, TrainingPlan.from_config(cfg)), state["interventions"]):
            iv.load_state_dict(iv_state)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the run's config ({str(err).splitlines()[0]})") from None
    return model.to(torch.device(device)).eval()
