"""A study directory as tidy pandas frames (``plasticity_lab.load_study``), the one loader that
``plab report``, ``plab power`` and notebooks share.

Layout read (DESIGN.md section 3): ``RESULTS_DIR/config.yaml`` and
``RESULTS_DIR/<condition>/seed_<s>/{metrics.csv, diagnostics.csv, task_matrix.csv, config.yaml, run.json, DONE}``.
Nothing is filtered or averaged here: every run found is in ``runs`` with what is known about it
(status, code version, how its config differs from the study's), so the analysis decides, and
says, what it leaves out.
"""

from __future__ import annotations

import copy
import csv
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from plasticity_lab.analysis.task_matrices import continual_frame, run_matrices
from plasticity_lab.config import ConfigError, StudyConfig, set_dotted
from plasticity_lab.experiment.study import FAILED_NAME, is_reference_study, lock_is_held
from plasticity_lab.metrics.continual import TASK_MATRIX_COLUMNS, TASK_MATRIX_SECONDS, task_matrix_rows

ROW_KEYS = ("epoch", "env_steps", "wall_time", "task")
"""metrics.csv columns that describe the row rather than the agent."""
NOT_COMPARED = (
    "run", "experiment.conditions", "experiment.baseline", "experiment.reference",
    "experiment.num_sessions", "experiment.save_freq", "analysis",
)
"""Config keys (and key prefixes) that may differ between runs of one study without changing what
a run computes: the run's own name, seed and hooks; the condition table (its effect is in the
resolved keys); report settings and the analysis plan (the study's config.yaml is the one read);
the sweep's seed count; checkpoint cadence (resume is exact)."""
STATUS_DONE, STATUS_RUNNING, STATUS_STOPPED, STATUS_NO_MARKER = "done", "running", "stopped", "all epochs, no DONE file"
TASK_MATRIX_FILE = "task_matrix.csv"
TASK_MATRIX_TYPES = {"seed": int, **{c: float if c == "return" else int for c in TASK_MATRIX_COLUMNS},
                     TASK_MATRIX_SECONDS: float}
"""The task_matrix frame's columns after ``condition``: the seed, then task_matrix.csv's."""


@dataclass
class StudyData:
    """Everything a study directory holds, as frames.

    * ``metrics``: one row per run and epoch: ``condition, seed, epoch, task, env_steps,
      wall_time`` and every metrics.csv column, in its logged units (``dead_units`` a fraction).
    * ``diagnostics``: one row per run and probe: ``condition, seed, epoch, task`` and every
      diagnostics.csv column.
    * ``runs``: one row per run directory: ``condition, seed, path, status, done, epochs_logged,
      num_epochs, shift_points, test_interval, code_version`` (``git_commit[+dirty] package_version``,
      "unknown" for runs made before versions were recorded; several, comma-separated, when
      resumed under different code), ``git_commit, git_dirty, package_version,
      config_differences`` (list of ``key: study value -> run value`` beyond the condition's
      overrides), a resolved-config summary (``activation, norm, spectral_norm, h_size,
      interventions, precision``), ``config`` (the run's whole resolved config), ``commands``,
      ``invocations`` (run.json's entries: command, device, start time, code version), ``devices``,
      ``started``, ``log_tail`` (last lines of train.log, for runs not done), ``failure``
      (the FAILED file's first line: why the run will not finish) and ``task_matrix_error`` (why
      its task_matrix.csv could not be read; "" when it was, or there is none).
    * ``task_matrix``: one row per run and evaluated ``(i, j)`` of the runs that wrote
      task_matrix.csv (``evaluation.task_matrix: true``): ``condition, seed, i, j, epoch, return,
      episodes, eval_seconds``, the test return on task j after training task i (0-based;
      ``epoch``: the last of task i; ``episodes`` it averages; ``eval_seconds`` what that
      evaluation took, NaN in files written before it was logged). Empty when no run has the file.
    * ``continual``: one row per run with a task matrix, its continual-learning metrics
      (metrics.continual; NaN where undefined): ``condition, seed, tasks`` (T of its matrix, fewer
      than the study's while it runs), ``final_average_return, forgetting, backward_transfer``,
      against the run of the same seed of config.yaml's ``experiment.reference`` condition
      ``forward_transfer`` and ``plasticity_ratio`` (the mean over tasks; NaN unless every task has
      one), ``plasticity_ratios`` (a list: task j's ratio), and ``undefined`` (a list: why each
      missing metric has no value).
    """

    root: Path
    config: dict[str, Any]
    """results/NAME/config.yaml as written (base config and every condition's overrides)."""
    config_text: str
    reference_study: bool
    """A committed reference study (REFERENCE.md): read-only for every command."""
    metrics: pd.DataFrame
    diagnostics: pd.DataFrame
    runs: pd.DataFrame
    task_matrix: pd.DataFrame
    continual: pd.DataFrame

    @property
    def conditions(self) -> list[str]:
        """Configured conditions in config order, then conditions found on disk only."""
        configured = list((self.config.get("experiment") or {}).get("conditions") or {})
        found = sorted(set(self.runs["condition"]))
        return configured + [c for c in found if c not in configured]


def _read_text(path: Path) -> str:
    """The file's text; a committed study may store it gzip-compressed as ``<name>.gz`` (its
    per-epoch CSVs, so hundreds of runs stay a few MB); "" when neither exists."""
    if path.exists():
        return path.read_text()
    packed = path.with_name(path.name + ".gz")
    return gzip.decompress(packed.read_bytes()).decode() if packed.exists() else ""


def _complete_lines(text: str) -> list[str]:
    """The lines of a file the training loop appends to, less a last line without its newline
    (half written: a file read mid-run)."""
    lines = text.splitlines()
    return lines[:-1] if lines and not text.endswith("\n") else lines


def _read_task_matrix(path: Path) -> tuple[list[dict[str, Any]], str]:
    """A run's checked task_matrix.csv rows (metrics.continual), and why none when it is malformed."""
    text = _read_text(path / TASK_MATRIX_FILE)
    try:
        return (task_matrix_rows(_complete_lines(text), path / TASK_MATRIX_FILE) if text else []), ""
    except ValueError as err:
        return [], str(err)


def read_epoch_csv(path: Path) -> pd.DataFrame:
    """A per-epoch CSV as a frame sorted by epoch, numbers as floats (NaN for empty cells).

    The training loop appends and flushes one row per epoch, so a file read mid-run may end in a
    half-written line: a last line without its newline, or any row with a wrong field count or no
    integer epoch, is skipped rather than parsed into a wrong number. A repeated epoch keeps its
    last row. A committed study's ``<name>.gz`` is read where ``path`` itself is absent.
    """
    rows = list(csv.reader(_complete_lines(_read_text(path))))
    if not rows or "epoch" not in [h.strip() for h in rows[0]]:
        return pd.DataFrame({"epoch": pd.Series(dtype=int)})
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if len(r) == len(header)]
    frame = pd.DataFrame(body, columns=header).apply(pd.to_numeric, errors="coerce")
    frame = frame[frame["epoch"].notna() & (frame["epoch"] >= 0) & (frame["epoch"] % 1 == 0)]
    frame = frame.astype({"epoch": int}).drop_duplicates("epoch", keep="last").sort_values("epoch")
    return frame.reset_index(drop=True)


def _yaml(path: Path) -> dict[str, Any]:
    try:
        return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    except yaml.YAMLError:
        return {}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": leaf}; an empty mapping is a leaf."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _compared(key: str) -> bool:
    return not any(key == k or key.startswith(k + ".") for k in NOT_COMPARED)


def expected_config(study_config: dict[str, Any], condition: str) -> tuple[dict[str, Any], bool]:
    """The study's config with ``condition``'s overrides applied, and whether it was resolved by
    this code's schema (defaults of methods filled in) rather than as written (when the study's
    config.yaml no longer validates, e.g. written by an older version)."""
    raw = {k: v for k, v in study_config.items() if k != "source"}
    try:
        return StudyConfig(copy.deepcopy(raw), source="config.yaml").condition(condition).to_yaml_dict(), True
    except ConfigError:
        tree = copy.deepcopy(raw)
        overrides = ((raw.get("experiment") or {}).get("conditions") or {}).get(condition) or {}
        for dotted, value in overrides.items():
            try:
                set_dotted(tree, str(dotted), value)
            except KeyError:
                pass
        return tree, False


def config_differences(study_config: dict[str, Any], condition: str, run_config: dict[str, Any]) -> list[str]:
    """How a run's resolved config differs from the study config plus its condition's overrides.

    A key the run's config lacks but the study's config.yaml has means the run was made by code
    without that setting (a different version); a key neither file has is newer than both and is
    not compared. Keys in NOT_COMPARED may differ freely.
    """
    expected, resolved = expected_config(study_config, condition)
    want, have, written = flatten(expected), flatten(run_config), flatten(study_config)
    out = []
    for key in sorted(set(want) | set(have)):
        if not _compared(key):
            continue
        if key not in have:
            if key in written:
                out.append(f"{key}: {want[key]!r} in the study's config, absent from the run's")
        elif key not in want:
            if resolved:
                out.append(f"{key}: {have[key]!r} in the run's config only")
        elif want[key] != have[key]:
            out.append(f"{key}: {want[key]!r} -> {have[key]!r}")
    return out


def code_version_text(code: dict[str, Any] | None) -> str:
    """One line for a run.json ``code`` entry: ``<commit 12>[+dirty] v<package>``."""
    if not code:
        return "unknown"
    commit = str(code.get("git_commit") or "unknown")
    commit = commit[:12] + ("+dirty" if code.get("git_dirty") else "")
    return f"{commit} v{code.get('package_version', '?')}"


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _first_line(path: Path) -> str:
    try:
        return next(iter(path.read_text(errors="replace").splitlines()), "")
    except OSError:
        return ""


def _read_run(
    condition: str, seed: int, path: Path, study_config: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    metrics = read_epoch_csv(path / "metrics.csv")
    matrix, matrix_error = _read_task_matrix(path)
    diagnostics = read_epoch_csv(path / "diagnostics.csv")
    for frame in (metrics, diagnostics):
        frame.insert(0, "seed", seed)
        frame.insert(0, "condition", condition)
    config = _yaml(path / "config.yaml")
    config.pop("run", None)
    trainer, model = config.get("ppo_trainer") or {}, config.get("model") or {}
    try:
        invocations = json.loads((path / "run.json").read_text()).get("invocations", [])
    except (OSError, ValueError):  # not written yet, or cut short: the run lists no command
        invocations = []
    versions = list(dict.fromkeys(code_version_text(inv.get("code")) for inv in invocations)) or ["unknown"]
    last_code = next((inv["code"] for inv in reversed(invocations) if inv.get("code")), {})
    done = (path / "DONE").exists()
    logged = int(metrics["epoch"].max()) + 1 if len(metrics) else 0
    num_epochs = trainer.get("num_epochs")
    if done:
        status = STATUS_DONE
    elif lock_is_held(path):
        status = STATUS_RUNNING
    elif num_epochs is not None and logged >= num_epochs:
        status = STATUS_NO_MARKER
    else:
        status = STATUS_STOPPED
    run = {
        "condition": condition, "seed": seed, "path": str(path), "status": status, "done": done,
        "epochs_logged": logged, "num_epochs": num_epochs, "shift_points": list(trainer.get("shift_points") or []),
        "test_interval": trainer.get("test_interval"),
        "code_version": ", ".join(versions), "git_commit": last_code.get("git_commit"),
        "git_dirty": last_code.get("git_dirty"), "package_version": last_code.get("package_version"),
        "config_differences": config_differences(study_config, condition, config) if config else ["the run has no config.yaml"],
        "activation": model.get("activation"), "norm": model.get("norm"), "spectral_norm": model.get("spectral_norm"),
        "h_size": model.get("h_size"), "interventions": ", ".join(config.get("interventions") or {}) or "none",
        "precision": trainer.get("precision"), "config": config,
        "commands": [str(inv.get("command", "")) for inv in invocations], "invocations": invocations,
        "devices": ", ".join(dict.fromkeys(str(inv.get("device", "")) for inv in invocations)),
        "started": str(invocations[0].get("started", "")) if invocations else "",
        "log_tail": "" if done else _tail(path / "train.log"),
        "failure": "" if done else _first_line(path / FAILED_NAME),
        "task_matrix_error": matrix_error,
    }
    return run, metrics, diagnostics, [{"condition": condition, "seed": seed, **row} for row in matrix]


def load_study(results_dir: str | Path) -> StudyData:
    """Read every ``<condition>/seed_<s>`` run of a study directory into frames.

    Raises ConfigError when ``results_dir`` is not a study (no config.yaml, no num_epochs) or has
    no run directory yet.
    """
    root = Path(results_dir)
    config_path = root / "config.yaml"
    if not config_path.exists():
        raise ConfigError(f"{config_path}: not found; is {root} a study directory (results/NAME)?")
    config_text = config_path.read_text()
    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{config_path}: malformed YAML ({str(err).splitlines()[0]})") from None
    if "num_epochs" not in (config.get("ppo_trainer") or {}):
        raise ConfigError(f"{config_path}: ppo_trainer.num_epochs is missing")
    read = [
        _read_run(cond_dir.name, int(seed_dir.name[len("seed_"):]), seed_dir, config)
        for cond_dir in sorted(p for p in root.iterdir() if p.is_dir())
        for seed_dir in sorted(cond_dir.glob("seed_*"), key=lambda p: p.name)
        if seed_dir.is_dir() and seed_dir.name[len("seed_"):].isdigit()
    ]
    if not read:
        raise ConfigError(f"{root}: no run directories (<condition>/seed_<s>/) found")
    runs = pd.DataFrame([r for r, _, _, _ in read]).sort_values(["condition", "seed"], ignore_index=True)
    metrics = pd.concat([m for _, m, _, _ in read], ignore_index=True).sort_values(["condition", "seed", "epoch"], ignore_index=True)
    diagnostics = pd.concat([d for _, _, d, _ in read], ignore_index=True).sort_values(["condition", "seed", "epoch"], ignore_index=True)
    matrices = pd.DataFrame([row for *_, rows in read for row in rows], columns=["condition", *TASK_MATRIX_TYPES])
    matrices = matrices.astype(TASK_MATRIX_TYPES).sort_values(["condition", "seed", "i", "j"], ignore_index=True)
    continual = continual_frame(run_matrices(matrices), (config.get("experiment") or {}).get("reference"))
    return StudyData(root, config, config_text, is_reference_study(root), metrics, diagnostics, runs, matrices, continual)
