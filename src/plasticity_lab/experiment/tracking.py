"""Optional Weights & Biases tracking of a run (config ``logging.wandb``, off by default).

The run directory stays the record (metrics.csv, diagnostics.csv, TensorBoard); W&B gets the same
scalars at the same steps (the epoch) and the resolved config. Names follow the study layout
``results/NAME/<condition>/seed_<s>``: project NAME (unless ``project`` is set), group
``<condition>``, run name ``<condition>/seed_<s>``. The W&B run id is drawn once and kept in
``<run>/wandb_id``, so a resumed run continues the same W&B run (``resume="allow"``; W&B keeps
the values it already has for the epochs a resume recomputes, which on CPU are the same).

W&B's files go under the run directory (``<run>/wandb/``) unless ``WANDB_DIR`` is set; in
``offline`` mode nothing touches the network and ``wandb sync <run>/wandb/offline-run-*``
uploads the run later.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from plasticity_lab.config import RunConfig

ID_FILE = "wandb_id"


class WandbTracker:
    """One W&B run for one training run."""

    def __init__(self, cfg: RunConfig, run_dir: Path, seed: int) -> None:
        import wandb  # the extra `wandb`; its presence is checked when the config is validated

        settings = cfg.logging.wandb
        run_dir = Path(run_dir)
        study, condition = run_dir.parent.parent.name, run_dir.parent.name
        id_path = run_dir / ID_FILE
        if not id_path.exists():
            id_path.write_text(uuid.uuid4().hex[:12] + "\n")
        self.run = wandb.init(
            project=settings.project or study, entity=settings.entity, group=condition,
            name=f"{condition}/seed_{seed}", id=id_path.read_text().strip(), resume="allow",
            mode=settings.mode, tags=settings.tags, job_type="train",
            dir=None if os.environ.get("WANDB_DIR") else str(run_dir),
            config={**cfg.to_yaml_dict(), "run": {"study": study, "condition": condition, "seed": seed}},
            settings=wandb.Settings(console="off"),  # the run's own log already has the output
        )

    def log(self, values: dict[str, float], epoch: int) -> None:
        """Scalars of one epoch (called for the metrics row, then for a probe of the same epoch)."""
        self.run.log(values, step=epoch)

    def close(self, ok: bool) -> None:
        """Finish the W&B run; an interrupted or crashed training run finishes with exit code 1."""
        self.run.finish(exit_code=0 if ok else 1)
