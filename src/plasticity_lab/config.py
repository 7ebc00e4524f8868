"""Config schema, loading, condition overrides and validation.

A config file is YAML in the reference code's shape (sections ``experiment``, ``environment``,
``model``, ``ppo_trainer``, plus ``interventions``). ``experiment.conditions`` maps a condition
name to dotted overrides (``model.activation: mish``). Every condition is resolved from a fresh
copy of the base config, so settings never leak from one condition into the next.

Every key is validated by pydantic; errors are turned into one line naming the file, the key and
what is allowed (:class:`ConfigError`).
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from plasticity_lab.envs.registry import ENV_NAMES, MissingDependency, env_spec
from plasticity_lab.envs.shifts import DEFAULT_SCALE_RANGE, SHIFT_TYPES
from plasticity_lab.interventions import validate_interventions

ACTIVATIONS = ("relu", "leaky-relu", "mish", "gelu", "tanh", "crelu", "dff")
NORMS = ("none", "layernorm", "rmsnorm")
SPECTRAL_SCOPES = ("none", "encoder", "all", "penultimate")
STUDY_SECTIONS = ("experiment", "analysis")
"""Sections that hold for the whole study: a condition cannot override them."""


class ConfigError(ValueError):
    """A bad config: the message is one line naming the file, the key and what is allowed."""


class Strict(BaseModel):
    """Base for all config sections: unknown keys and silent type coercion are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, frozen=False)


class GridCondition(Strict):
    """Where a condition made by ``plab sweep --grid`` came from."""

    condition: str
    """The config's condition it crosses."""
    settings: dict[str, Any]
    """Dotted key -> this grid point's value (applied after the condition's own overrides)."""


class ExperimentConfig(Strict):
    algo: Literal["ppo"] = "ppo"
    """Training algorithm (only PPO is implemented)."""
    save_freq: int = Field(100, ge=1)
    """Write the latest checkpoint every this many epochs (and always at shifts and at the end)."""
    num_sessions: int = Field(1, ge=1)
    """Seeds per condition for sweeps when --seeds is not given (reference-code key)."""
    baseline: str = "baseline"
    """Condition that reports compare against."""
    deterministic: bool = False
    """CUDA: deterministic kernels (bit-reproducible runs and resumes, slower); CPU runs are deterministic anyway."""
    reference: str | None = None
    """Condition that reports normalise scores by (e.g. reset-all, a fresh network); none: no normalised scores."""
    conditions: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"baseline": {}})
    """Condition name -> dotted overrides applied to a fresh copy of this config."""
    overrides: list[str] = Field(default_factory=list)
    """`--set KEY=VALUE` overrides already applied to this config's settings (recorded, as given)."""
    grid: dict[str, GridCondition] = Field(default_factory=dict)
    """Condition name -> the condition and `--grid` values it was expanded from (plab sweep --grid)."""
    population: bool = False
    """Train the seeds of each condition as one population in one process (= --population); each seed still writes its own run directory."""
    population_size: int | None = Field(None, ge=1)
    """At most this many seeds per population (more seeds: several populations); null: all seeds of a condition."""
    population_memory_gib: float | None = Field(None, gt=0)
    """Memory a population may take (GiB, its estimate: README); null: 80% of the device's available memory."""

    @field_validator("conditions")
    @classmethod
    def _names(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not value:
            raise ValueError("at least one condition is required")
        for name, overrides in value.items():
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"condition name {name!r} must be a plain directory name")
            if not isinstance(overrides, dict):
                raise ValueError(f"condition {name!r} must map dotted keys to values")
        return value


class AleConfig(Strict):
    games: list[str] = Field(default_factory=list)
    """Game sequence the `game` shift steps through (continual Atari); must start with the task. Empty: the task alone."""
    flavours: list[tuple[int, int]] = Field(default_factory=list)
    """(mode, difficulty) pairs the `flavour` shift steps through. Empty: every pair the game has (with shift flavour)."""
    full_action_space: bool = True
    """All 18 joystick actions (Machado et al.; needed for a game sequence) instead of the game's minimal set."""
    sticky_actions: float = Field(0.25, ge=0, le=1)
    """Probability that the emulator repeats the previous action (Machado et al. 2018)."""
    frame_skip: int = Field(4, ge=1)
    """Emulator frames per agent step (max-pooled over the last two)."""
    frame_stack: int = Field(4, ge=1)
    """84x84 grayscale frames stacked into one observation."""
    noop_max: int = Field(0, ge=0)
    """Random no-op actions at episode start (0: none, as Machado et al. rely on sticky actions)."""
    max_episode_frames: int = Field(108_000, ge=1)
    """Episode cap in emulator frames (a truncation; 108000 = 30 minutes of play)."""
    clip_rewards: bool = True
    """Clip training rewards to [-1, 1]; episode returns and evaluation use raw scores."""
    threads: int = Field(0, ge=0)
    """Worker threads of ale-py's vector environment (0: its default)."""

    @field_validator("flavours", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> Any:
        return [tuple(v) if isinstance(v, list) else v for v in value] if isinstance(value, list) else value


class MinatarConfig(Strict):
    games: list[str] = Field(default_factory=list)
    """Game sequence the `game` shift steps through (continual MinAtar); must start with the task. Empty: the task alone."""
    sticky_actions: float = Field(0.1, ge=0, le=1)
    """Probability that the previous action is repeated (the package's default, 0.1)."""
    difficulty_ramping: bool = True
    """Games speed up as an episode goes on (the package's default; Breakout and Freeway do not ramp)."""
    max_episode_steps: int = Field(10_000, ge=1)
    """Episode cap in agent steps (a truncation; the package has none, see docs/fidelity.md)."""


class GymnasiumConfig(Strict):
    normalize_obs: bool = False
    """Standardise vector observations by running statistics (kept in the network's checkpoint)."""
    obs_clip: float = Field(10.0, gt=0)
    """Clip standardised observations to [-obs_clip, obs_clip]."""
    normalize_reward: bool = False
    """Divide training rewards by the running std of the discounted return (checkpointed)."""
    reward_clip: float = Field(10.0, gt=0)
    """Clip scaled training rewards to [-reward_clip, reward_clip]."""
    action_bounding: Literal["clip", "squash"] = "clip"
    """Continuous actions: clip the Gaussian sample to the action box, or squash it with tanh into the box."""
    max_episode_steps: int | None = Field(None, ge=1)
    """Episode cap in steps (None: the task's registered limit)."""


class MujocoConfig(GymnasiumConfig):
    normalize_obs: bool = True
    """Standardise observations by running statistics (CleanRL's MuJoCo default; kept in the checkpoint)."""
    normalize_reward: bool = True
    """Scale training rewards by the running std of the discounted return (CleanRL's MuJoCo default)."""
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE
    """friction / mass / gravity shifts draw a multiplier log-uniformly from this range (loss-of-plasticity: [0.02, 2])."""

    @field_validator("scale_range", mode="before")
    @classmethod
    def _range(cls, value: Any) -> Any:
        value = tuple(value) if isinstance(value, list) else value
        if isinstance(value, tuple) and len(value) == 2 and not 0 < value[0] < value[1]:
            raise ValueError(f"scale_range {list(value)} must satisfy 0 < low < high")
        return value


class EnvironmentConfig(Strict):
    name: Literal[ENV_NAMES] = "procgen"  # type: ignore[valid-type]
    """Environment family: procgen (64x64 frames), gridworld (gather testbed), ale (Atari), mujoco, gymnasium (any task id), minatar (10x10 Atari-like games)."""
    task: str = "coinrun_100"
    """procgen: GAME_K (train levels [0,K), test [10000,10000+K)); gridworld: gather_K; ale: a game (pong); mujoco/gymnasium: an id (Ant-v5, CartPole-v1); minatar: a game (breakout)."""
    shift_type: Literal[SHIFT_TYPES] = "permute"  # type: ignore[valid-type]
    """Distribution shift applied to train and test environments at every shift point."""
    shift_k: int | None = Field(None, ge=1)
    """Level step for window/expand shifts (default: K)."""
    env_copies: int = Field(16, ge=1)
    """Parallel training environments (fixed rollouts are buffer_size / env_copies steps long)."""
    grid_size: int = Field(9, ge=5, le=32)
    """gridworld only: side of the square grid (the observation is grid_size x grid_size x 3)."""
    episode_steps: int = Field(50, ge=1)
    """gridworld only: time limit of an episode (ProcGen's is fixed at 200 agent steps)."""
    time_limit: Literal["truncate", "terminal"] = "truncate"
    """procgen/gridworld episode cap: truncate (cut, the cut-off state's value bootstrapped) or terminal (the reference: value 0; ProcGen then ends at 201 steps)."""
    ale: AleConfig = Field(default_factory=AleConfig)
    """ale only: Atari preprocessing and the game / flavour sequences."""
    mujoco: MujocoConfig = Field(default_factory=MujocoConfig)
    """mujoco only: normalisation, action bounding and physics-shift range."""
    gymnasium: GymnasiumConfig = Field(default_factory=GymnasiumConfig)
    """gymnasium only: normalisation and action bounding."""
    minatar: MinatarConfig = Field(default_factory=MinatarConfig)
    """minatar only: the game sequence, sticky actions, difficulty ramping and episode cap."""

    @model_validator(mode="after")
    def _task(self) -> EnvironmentConfig:
        try:
            spec = env_spec(self)
        except MissingDependency as err:
            raise ValueError(f"name: {err}") from None
        except ValueError as err:
            raise ValueError(f"task: {err}") from None
        if self.shift_type not in spec.shift_types:
            raise ValueError(
                f"shift_type: {self.shift_type!r} does not apply to {self.name} {self.task} "
                f"(allowed: {', '.join(spec.shift_types)})"
            )
        if self.shift_type in ("window", "expand") and not spec.num_levels:
            raise ValueError(f"shift_type: {self.shift_type!r} needs a level-based task")
        if self.shift_type == "game" and spec.num_games < 2:
            raise ValueError(f"shift_type: 'game' needs a sequence of at least 2 games in {self.name}.games")
        if self.time_limit == "terminal" and self.name not in ("procgen", "gridworld"):
            raise ValueError(f"time_limit: 'terminal' applies to procgen and gridworld only, not {self.name}")
        return self

    def options(self) -> GymnasiumConfig | None:
        """The vector-observation options of a mujoco / gymnasium run (None for other families)."""
        return {"mujoco": self.mujoco, "gymnasium": self.gymnasium}.get(self.name)


class ModelConfig(Strict):
    enc_type: Literal["conv64", "nature", "conv11", "minatar", "mlp"] = "conv64"
    """Encoder: conv64 (ProcGen, DESIGN.md section 4), nature (Atari, Mnih et al. 2015), conv11 (small grids), minatar (MinAtar, Young & Tian 2019: conv 16 3x3, then dense h = 128 in the paper), mlp (vectors or flattened image)."""
    h_size: int = Field(256, ge=1)
    """Width of the dense trunk layer."""
    activation: Literal[ACTIVATIONS] = "relu"  # type: ignore[valid-type]
    """Hidden activation; leaky-relu uses slope `leaky_slope`."""
    leaky_slope: float = Field(0.01, gt=0, lt=1)
    """Negative slope of leaky-relu."""
    norm: Literal[NORMS] = "none"  # type: ignore[valid-type]
    """Normalisation before each activation: GroupNorm(1,C)/LayerNorm, or RMSNorm."""
    spectral_norm: Literal[SPECTRAL_SCOPES] = "none"  # type: ignore[valid-type]
    """Spectral normalisation scope: encoder (heads free), all layers, or the penultimate layer."""


class PPOConfig(Strict):
    num_epochs: int = Field(3000, ge=1)
    """Epochs; each gathers buffer_size transitions and runs num_passes passes over them."""
    shift_points: list[int] = Field(default_factory=lambda: [1000, 2000])
    """Epochs at whose start the environment distribution shifts."""
    buffer_size: int = Field(1024, ge=1)
    """Transitions gathered per epoch (rollout: episodes gathers at least this many)."""
    rollout: Literal["fixed", "episodes"] = "fixed"
    """fixed: buffer_size/env_copies steps of every env; episodes: whole episodes from resets (the reference)."""
    batch_size: int = Field(64, ge=2)
    """Minibatch size (>= 2: advantages are normalised within each minibatch)."""
    num_passes: int = Field(3, ge=1)
    """Passes over the buffer per epoch."""
    lr: float = Field(5e-4, gt=0)
    """AdamW learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay (the `l2` method sets it)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    gamma: float = Field(0.99, gt=0, le=1)
    """Discount."""
    gae_lambda: float = Field(0.95, ge=0, le=1, alias="lambda")
    """GAE lambda (YAML key `lambda`, as the reference)."""
    clip_param: float = Field(0.2, gt=0)
    """PPO ratio clip."""
    ent_coef: float = Field(0.02, ge=0)
    """Entropy bonus coefficient."""
    value_coef: float = Field(0.5, ge=0)
    """Value loss coefficient."""
    max_grad_norm: float = Field(0.5, gt=0)
    """Gradient clipping threshold (global norm)."""
    test_interval: int = Field(10, ge=1)
    """Evaluate on test levels every this many epochs (and at the last epoch of every round)."""
    test_episodes: int = Field(50, ge=1)
    """Complete test episodes averaged per evaluation (run in parallel environments)."""
    reset_optimizer_at_shift: bool = True
    """Re-create AdamW at every shift (the reference paper does, in every condition)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16: the encoder's linear and conv layers compute in bf16 (CPU with AVX-512-BF16 or CUDA), as autocast would; parameters, heads and spectral norm's sigma stay fp32."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, populate_by_name=True)

    @field_validator("adam_betas", mode="before")
    @classmethod
    def _betas(cls, value: Any) -> Any:
        if isinstance(value, list):
            value = tuple(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PPOConfig:
        if self.batch_size > self.buffer_size:
            raise ValueError(f"batch_size {self.batch_size} is larger than buffer_size {self.buffer_size}")
        if self.rollout == "fixed" and self.buffer_size % self.batch_size:
            raise ValueError(
                f"buffer_size {self.buffer_size} must be a multiple of batch_size {self.batch_size} "
                "with rollout: fixed (every transition is used in every pass)"
            )
        if not all(0 <= beta < 1 for beta in self.adam_betas):
            raise ValueError(f"adam_betas {list(self.adam_betas)}: each must lie in [0, 1)")
        for point in self.shift_points:
            if not 0 < point < self.num_epochs:
                raise ValueError(f"shift point {point} must lie in (0, num_epochs={self.num_epochs})")
        if sorted(set(self.shift_points)) != self.shift_points:
            raise ValueError("shift_points must be strictly increasing")
        return self


class DiagnosticsConfig(Strict):
    enabled: bool = True
    """Probe-set plasticity diagnostics during training (diagnostics.csv, spectra.npz)."""
    probe_interval: int | None = Field(None, ge=1)
    """Epochs between probes (default: num_epochs // 30, so a run has at least 30 probes)."""
    probe_size: int = Field(2560, ge=1)
    """Real frames of the current task's training levels in the probe set (N >= 10 x width)."""
    trainability_every: int = Field(5, ge=0)
    """Run the trainability probe every this many probes (and at task ends); 0 turns it off."""
    trainability_steps: int = Field(200, ge=1)
    """Adam steps the trainability probe trains a copy (and a fresh network) for."""
    budget: float | None = Field(0.1, gt=0)
    """Cap on diagnostics compute as a fraction of training's (fixed cost model; skips are logged); null: none."""


class EvaluationConfig(Strict):
    task_matrix: bool = False
    """At the end of every task, evaluate on every task seen so far, each under its own shift
    state (task_matrix.csv: R[i][j] = test return on task j after training task i), for
    forgetting and transfer beside plasticity. Evaluation only: training is unchanged."""
    task_matrix_episodes: int | None = Field(None, ge=1)
    """Episodes per earlier task (default: ppo_trainer.test_episodes)."""


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ValueError:  # sys.modules[package] is None: imports of it are blocked
        return False


class WandbConfig(Strict):
    enabled: bool = False
    """Also log metrics, diagnostics and the resolved config to Weights & Biases (extra `wandb`)."""
    project: str | None = None
    """W&B project (default: the study name); runs are grouped by condition, named condition/seed_<s>."""
    entity: str | None = None
    """W&B team or user (default: your W&B default entity)."""
    mode: Literal["online", "offline"] = "online"
    """offline: no network; the run is written locally (under the run directory) for `wandb sync`."""
    tags: list[str] = Field(default_factory=list)
    """Tags on every run."""

    @model_validator(mode="after")
    def _package(self) -> WandbConfig:
        if self.enabled and not _installed("wandb"):
            raise ValueError("enabled: the wandb package is not installed (pip install -e '.[wandb]')")
        return self


class LoggingConfig(Strict):
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    """Weights & Biases tracking, off by default (metrics.csv and TensorBoard are always written)."""


class AnalysisConfig(Strict):
    """How ``plab report`` decides (issue 19), declared with the study before its runs so that the
    window, the primary metric and the margin are not chosen after seeing the data. ``plab report``
    flags override it, and the report says which did."""

    final_window: int | None = Field(None, ge=1)
    """Final values average the last N test evaluations of the last task (None: the last 10%)."""
    primary: Literal["test_r", "train_r", "dead_units", "dormant_units"] = "test_r"
    """Metric whose verdicts are confirmatory and on which methods are ranked against each other;
    verdicts on the other compared metrics are secondary (exploratory)."""
    equivalence_margin: float = Field(0.1, gt=0, lt=1)
    """'equivalent' needs the paired difference shown (TOST) within +- this fraction of the
    baseline's mean."""
    alpha: float = Field(0.05, gt=0, lt=0.5)
    """Level of every verdict's test, after Holm's adjustment."""


def load_analysis(raw: dict[str, Any], source: str) -> AnalysisConfig | None:
    """A study config's ``analysis`` section (None when it declares none), validated on its own so
    that a study written by an older version of the schema still reports."""
    if "analysis" not in raw:
        return None
    try:
        return AnalysisConfig.model_validate(raw["analysis"])
    except ValidationError as err:
        raise ConfigError(_format_error(source, "analysis", err)) from None


class RunConfig(Strict):
    """The fully resolved config of one condition (what a run directory's config.yaml holds)."""

    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    environment: EnvironmentConfig = Field(default_factory=EnvironmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    ppo_trainer: PPOConfig = Field(default_factory=PPOConfig)
    interventions: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Method name -> its parameters ({} for defaults); see plasticity_lab.interventions."""
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    """Evaluations beyond the periodic test return (the task-return matrix)."""
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    """Experiment trackers beyond metrics.csv and TensorBoard."""
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    """The study's analysis plan (read by plab report; one for the whole study, never per condition)."""

    @model_validator(mode="after")
    def _encoder_fits_env(self) -> RunConfig:
        encoders = env_spec(self.environment).encoders
        if self.model.enc_type not in encoders:
            raise ValueError(
                f"model.enc_type {self.model.enc_type!r} does not fit environment {self.environment.name} "
                f"{self.environment.task} (allowed: {', '.join(encoders)})"
            )
        if self.model.activation in ("crelu", "dff") and self.model.h_size % 2:
            raise ValueError(f"model.h_size {self.model.h_size} must be even with {self.model.activation} (widths are halved)")
        return self

    @model_validator(mode="after")
    def _buffer_fits_envs(self) -> RunConfig:
        if self.ppo_trainer.rollout == "fixed" and self.ppo_trainer.buffer_size % self.environment.env_copies:
            raise ValueError(
                f"ppo_trainer.buffer_size {self.ppo_trainer.buffer_size} must be a multiple of "
                f"environment.env_copies {self.environment.env_copies} with rollout: fixed"
            )
        if self.ppo_trainer.rollout == "episodes" and self.environment.name == "ale":
            # a batch is as long as the longest of env_copies games (up to 27000 agent steps), all stored
            raise ValueError("ppo_trainer.rollout: 'episodes' does not apply to ale (episodes of up to 27000 steps); use fixed")
        return self

    def to_yaml_dict(self) -> dict[str, Any]:
        """Plain dict with the YAML key names (``lambda``), for config.yaml."""
        return self.model_dump(mode="json", by_alias=True)


def _error_location(err: ValidationError) -> tuple[str, str]:
    """(dotted key, message) of a validation error's first problem."""
    first = err.errors()[0]
    loc = ".".join(str(part) for part in first["loc"] if part != "function-after")
    msg = first["msg"].replace("Value error, ", "")
    field = re.match(r"([a-z_]+): ", msg)
    if first["type"] == "value_error" and field:  # a model validator naming its field
        loc = ".".join(p for p in (loc, field.group(1)) if p)
        msg = msg[field.end():]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "literal_error":
        msg = msg.replace("Input should be", "allowed:")
    return loc, msg


def _format_error(source: str, prefix: str, err: ValidationError) -> str:
    loc, msg = _error_location(err)
    key = " ".join(part for part in (prefix, loc) if part) if prefix.endswith("->") else ".".join(
        part for part in (prefix, loc) if part)
    key = key or "(top level)"
    return f"{source}: {key}: {msg}"


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``dotted='a.b'``, creating dicts as needed."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise KeyError(dotted)
        node = child
    node[keys[-1]] = copy.deepcopy(value)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-4`` (no dot) as a float, as people write learning rates;
    YAML 1.1 would make it a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing, unreadable, non-UTF-8, empty or
    malformed file. An empty file is an error, not "all defaults": the defaults are a full
    3000-epoch ProcGen study, which nobody should start by pointing at the wrong file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (undecodable byte at offset {exc.start}); is it a YAML config?") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        raise ConfigError(f"{path}: empty config (no sections; write at least the settings that differ from the defaults)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


_KEY = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*")
RECORDED = ("experiment.overrides", "experiment.grid")
"""Experiment keys that plab writes itself: no flag may set them."""


def parse_assignment(text: str, flag: str) -> tuple[str, str]:
    """Split a command-line ``KEY=VALUE`` and check that KEY names a settable config key."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.fullmatch(key):
        raise ConfigError(f"{flag} {text!r}: expected KEY=VALUE with a dotted KEY (e.g. ppo_trainer.lr=1e-3)")
    section = key.split(".")[0]
    if section not in RunConfig.model_fields:
        raise ConfigError(f"{flag} {key}: unknown section (allowed: {', '.join(RunConfig.model_fields)})")
    if key.startswith("experiment.conditions.") or any(key == k or key.startswith(k + ".") for k in RECORDED):
        raise ConfigError(f"{flag} {key}: cannot be set from the command line (conditions come from the config or --grid)")
    return key, value


def parse_value(text: str, flag: str, key: str) -> Any:
    """A command-line value read as a YAML value by the config files' loader (``1e-3``,
    ``false``, ``[1000, 2000]`` and ``{tau: 0.1}`` mean what they mean in a config file)."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{flag} {key}: malformed value {text!r}: {getattr(exc, 'problem', exc)}") from None


def split_values(text: str) -> list[str]:
    """Split a --grid value list at the commas that are not inside brackets, braces or quotes."""
    parts, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    return [*parts, current]


def _overlaps(key: str, loc: str) -> bool:
    """Does setting ``key`` touch the config location ``loc`` (one contains the other)?"""
    return not loc or key == loc or key.startswith(loc + ".") or loc.startswith(key + ".")


class StudyConfig:
    """A whole config file: the base settings plus its named conditions, each resolvable.

    ``overrides`` (``--set KEY=VALUE`` texts) are applied to the base settings before any
    condition is resolved, so they hold in every condition except where a condition sets the
    same key itself; they are recorded in ``experiment.overrides``. Errors caused by a
    command-line flag name the flag and the key instead of the file.
    """

    def __init__(
        self,
        raw: dict[str, Any],
        source: str = "<config>",
        overrides: Sequence[str] = (),
        flags: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.source = source
        self.flags = list(flags)
        """(flag, dotted key) of every command-line setting in ``raw``, for error messages."""
        if overrides:
            raw = copy.deepcopy(raw)
            for text in overrides:
                key, value = parse_assignment(text, "--set")
                try:
                    set_dotted(raw, key, parse_value(value, "--set", key))
                except KeyError:
                    raise ConfigError(f"--set {key}: {source} has a value, not a mapping, above this key") from None
                self.flags.append(("--set", key))
            experiment = raw.get("experiment")
            if isinstance(experiment, dict) and isinstance(experiment.get("overrides", []), list):
                experiment["overrides"] = [*experiment.get("overrides", []), *overrides]
        self.raw = raw
        try:
            self.base = RunConfig.model_validate(raw)
        except ValidationError as err:
            raise self._error("", *_error_location(err)) or ConfigError(_format_error(source, "", err)) from None
        experiment = self.base.experiment
        if experiment.baseline not in experiment.conditions:
            given = "" if "baseline" in (raw.get("experiment") or {}) else " (the default)"
            raise ConfigError(
                f"{source}: experiment.baseline: {experiment.baseline!r}{given} is not a condition "
                f"(allowed: {', '.join(experiment.conditions)})"
            )
        # Resolve every condition up front so a bad override fails before anything is written;
        # the error is raised when that condition is selected, so one condition naming a method
        # that is not available does not block the others.
        self.resolved: dict[str, RunConfig] = {}
        self.errors: dict[str, ConfigError] = {}
        for name in self.base.experiment.conditions:
            try:
                self.resolved[name] = self._resolve(name)
            except ConfigError as err:
                self.errors[name] = err

    def _error(self, condition: str, loc: str, msg: str) -> ConfigError | None:
        """The error naming the command-line flags behind a failing location, if any."""
        related = [(flag, key) for flag, key in self.flags if _overlaps(key, loc)]
        if condition:
            grid = self.base.experiment.grid.get(condition)
            related = [(f, k) for f, k in related if f == "--set" or (grid and k in grid.settings)]
        if not related:
            return None
        flag = related[0][0]
        exact = [key for f, key in related if f == flag and (loc == key or loc.startswith(key + "."))]
        where = loc if exact else ", ".join(key for f, key in related if f == flag)
        return ConfigError(f"{flag} {where}{f' (condition {condition})' if condition else ''}: {msg}")

    @property
    def conditions(self) -> list[str]:
        return list(self.base.experiment.conditions)

    def _resolve(self, name: str) -> RunConfig:
        tree = copy.deepcopy(self.raw)
        prefix = f"experiment.conditions.{name}"
        for dotted, value in self.base.experiment.conditions[name].items():
            if not isinstance(dotted, str) or not dotted:
                raise ConfigError(f"{self.source}: {prefix}: override keys must be dotted strings")
            section = dotted.split(".")[0]
            if section not in RunConfig.model_fields or section in STUDY_SECTIONS:
                allowed = ", ".join(k for k in RunConfig.model_fields if k not in STUDY_SECTIONS)
                what = "holds for the whole study" if section in STUDY_SECTIONS else "unknown section"
                raise ConfigError(f"{self.source}: {prefix}.{dotted}: {what} (allowed: {allowed})")
            try:
                set_dotted(tree, dotted, value)
            except KeyError:
                raise ConfigError(f"{self.source}: {prefix}.{dotted}: parent is not a mapping") from None
        try:
            cfg = RunConfig.model_validate(tree)
        except ValidationError as err:
            loc, msg = _error_location(err)
            raise self._error(name, loc, msg) or ConfigError(_format_error(self.source, f"{prefix} ->", err)) from None
        try:
            cfg.interventions = validate_interventions(cfg)
        except ValueError as err:
            located = re.match(r"([\w.-]+): (.*)", str(err))
            flagged = self._error(name, *located.groups()) if located else None
            raise flagged or ConfigError(f"{self.source}: {prefix} -> {err}") from None
        return cfg

    def condition(self, name: str) -> RunConfig:
        if name in self.errors:
            raise self.errors[name]
        if name not in self.resolved:
            raise ConfigError(f"{self.source}: unknown condition {name!r} (allowed: {', '.join(self.conditions)})")
        return self.resolved[name]

    def shadowed(self, conditions: Sequence[str] | None = None) -> list[str]:
        """Notes on --set keys that a condition sets itself (the condition's value wins there)."""
        notes = []
        for name in conditions or self.conditions:
            own = self.base.experiment.conditions.get(name, {})
            for flag, key in self.flags:
                hit = [k for k in own if isinstance(k, str) and _overlaps(key, k)]
                if flag == "--set" and hit:
                    notes.append(f"note: condition {name} sets {', '.join(hit)} itself, so --set {key} does not apply to it")
        return notes

    def with_grid(self, grid: Sequence[str], conditions: Sequence[str] | None = None) -> tuple[StudyConfig, list[str]]:
        """Cross ``conditions`` (default: all) with every combination of the ``--grid KEY=V1,V2``
        values; returns the expanded study and the new conditions' names, in order.

        Each crossed condition is replaced by one condition per grid point, named
        ``<condition>+<key>=<value>...`` (``key`` is the shortest unique tail of the dotted key,
        the value as typed with anything but letters, digits and ``._-`` turned into ``_``) and
        recorded in ``experiment.grid``. The grid values are applied after the condition's own
        overrides. If the report's baseline condition is crossed, its first grid point becomes
        the baseline.
        """
        axes: list[tuple[str, list[tuple[str, Any]]]] = []
        for text in grid:
            key, values = parse_assignment(text, "--grid")
            if key.startswith("experiment"):
                raise ConfigError(f"--grid {key}: experiment settings cannot vary between conditions")
            if any(key == k for k, _ in axes):
                raise ConfigError(f"--grid {key}: given twice; list all its values in one flag")
            items = [(t.strip(), parse_value(t, "--grid", key)) for t in split_values(values)]
            if any(not t for t, _ in items):
                raise ConfigError(f"--grid {key}: empty value in {values!r} (expected V1,V2,...)")
            seen: list[Any] = []
            for t, v in items:
                if v in seen:
                    raise ConfigError(f"--grid {key}: value {t} is listed twice")
                seen.append(v)
            axes.append((key, items))
        labels = []
        for key, _ in axes:
            parts = key.split(".")
            depth = 1
            while any(k != key and k.split(".")[-depth:] == parts[-depth:] for k, _ in axes):
                depth += 1
            labels.append(".".join(parts[-depth:]))
        chosen = list(conditions or self.conditions)
        for name in chosen:
            self.condition(name)  # unknown or broken: its one-line error
        raw = copy.deepcopy(self.raw)
        experiment = raw.setdefault("experiment", {})
        old = self.base.experiment.conditions
        table: dict[str, dict[str, Any]] = {}
        record: dict[str, dict[str, Any]] = {}
        made: list[str] = []
        for name, own in old.items():
            if name not in chosen:
                table[name] = own
                continue
            for point in itertools.product(*(items for _, items in axes)):
                label = "".join(f"+{lab}={re.sub(r'[^A-Za-z0-9._-]+', '_', t).strip('_') or '_'}"
                                for lab, (t, _) in zip(labels, point))
                grid_name = name + label
                if grid_name in table:
                    raise ConfigError(f"--grid: two grid points are both named {grid_name!r}; write the values differently")
                settings = {key: value for (key, _), (_, value) in zip(axes, point)}
                table[grid_name] = copy.deepcopy({**own, **settings})
                record[grid_name] = {"condition": name, "settings": settings}
                made.append(grid_name)
        experiment["conditions"] = table
        experiment["grid"] = {**{k: v for k, v in experiment.get("grid", {}).items() if k in table}, **record}
        if self.base.experiment.baseline in chosen and made:
            experiment["baseline"] = next(n for n in made if record[n]["condition"] == self.base.experiment.baseline)
        flags = self.flags + [("--grid", key) for key, _ in axes]
        return StudyConfig(raw, self.source, flags=flags), made


def resolve_config_path(path: str | Path) -> Path:
    """Accept the study report's root names (hyperparams*.yaml) as well as configs/ paths."""
    path = Path(path)
    if path.is_file():
        return path
    for base in (Path.cwd() / "configs", Path(__file__).resolve().parents[2] / "configs"):
        candidate = base / path.name
        if candidate.is_file():
            return candidate
    return path


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """The config file at ``path`` with ``--set`` ``overrides`` applied to its base settings."""
    path = resolve_config_path(path)
    return StudyConfig(load_yaml(path), source=str(path), overrides=overrides)
