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
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from plasticity_lab.envs.shifts import SHIFT_TYPES

ACTIVATIONS = ("relu", "leaky-relu", "mish", "gelu", "tanh", "crelu", "dff")
NORMS = ("none", "layernorm", "rmsnorm")
SPECTRAL_SCOPES = ("none", "encoder", "all", "penultimate")


class ConfigError(ValueError):
    """A bad config: the message is one line naming the file, the key and what is allowed."""


class Strict(BaseModel):
    """Base for all config sections: unknown keys and silent type coercion are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, frozen=False)


class ExperimentConfig(Strict):
    algo: Literal["ppo"] = "ppo"
    """Training algorithm (only PPO is implemented)."""
    save_freq: int = Field(100, ge=1)
    """Write the latest checkpoint every this many epochs (and always at shifts and at the end)."""
    num_sessions: int = Field(1, ge=1)
    """Seeds per condition for sweeps when --seeds is not given (reference-code key)."""
    baseline: str = "baseline"
    """Condition that reports compare against."""
    reference: str | None = None
    """Condition that reports normalise scores by (e.g. reset-all, a fresh network); none: no normalised scores."""
    conditions: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"baseline": {}})
    """Condition name -> dotted overrides applied to a fresh copy of this config."""

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


class EnvironmentConfig(Strict):
    name: Literal["procgen", "gridworld"] = "procgen"
    """Environment family: ProcGen (64x64 frames) or the vectorised gridworld gather task."""
    task: str = "coinrun_100"
    """procgen: GAME_K (train levels [0,K), test [10000,10000+K)); gridworld: gather_K layouts."""
    shift_type: Literal[SHIFT_TYPES] = "permute"  # type: ignore[valid-type]
    """Distribution shift applied to train and test environments at every shift point."""
    shift_k: int | None = Field(None, ge=1)
    """Level step for window/expand shifts (default: K)."""
    env_copies: int = Field(16, ge=1)
    """Parallel training environments (rollouts are buffer_size / env_copies steps long)."""
    grid_size: int = Field(9, ge=5, le=32)
    """gridworld only: side of the square grid (the observation is grid_size x grid_size x 3)."""
    episode_steps: int = Field(50, ge=1)
    """gridworld only: time limit of an episode (ProcGen's is fixed at 200 agent steps)."""

    @model_validator(mode="after")
    def _task(self) -> EnvironmentConfig:
        from plasticity_lab.envs import num_levels

        try:
            num_levels(self)
        except ValueError as err:
            raise ValueError(f"task: {err}") from None
        return self


class ModelConfig(Strict):
    enc_type: Literal["conv64", "conv11", "mlp"] = "conv64"
    """Encoder: conv64 (ProcGen, DESIGN.md section 4), conv11 (small grids), mlp (flattened image)."""
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
    """Transitions gathered per epoch."""
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
    """bf16 autocasts network compute (CPU with AVX-512-BF16 or CUDA); parameters stay fp32."""

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
        if self.buffer_size % self.batch_size:
            raise ValueError(
                f"buffer_size {self.buffer_size} must be a multiple of batch_size {self.batch_size} "
                "(every transition is used in every pass)"
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


class RunConfig(Strict):
    """The fully resolved config of one condition (what a run directory's config.yaml holds)."""

    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    environment: EnvironmentConfig = Field(default_factory=EnvironmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    ppo_trainer: PPOConfig = Field(default_factory=PPOConfig)
    interventions: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Method name -> its parameters ({} for defaults); see plasticity_lab.interventions."""
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)

    @model_validator(mode="after")
    def _encoder_fits_env(self) -> RunConfig:
        if (self.model.enc_type == "conv64") != (self.environment.name == "procgen"):
            raise ValueError(
                f"model.enc_type {self.model.enc_type!r} does not fit environment.name {self.environment.name!r} "
                "(procgen: conv64; gridworld: conv11 or mlp)"
            )
        if self.model.activation in ("crelu", "dff") and self.model.h_size % 2:
            raise ValueError(f"model.h_size {self.model.h_size} must be even with {self.model.activation} (widths are halved)")
        return self

    @model_validator(mode="after")
    def _buffer_fits_envs(self) -> RunConfig:
        if self.ppo_trainer.buffer_size % self.environment.env_copies:
            raise ValueError(
                f"ppo_trainer.buffer_size {self.ppo_trainer.buffer_size} must be a multiple of "
                f"environment.env_copies {self.environment.env_copies}"
            )
        return self

    def to_yaml_dict(self) -> dict[str, Any]:
        """Plain dict with the YAML key names (``lambda``), for config.yaml."""
        return self.model_dump(mode="json", by_alias=True)


def _format_error(source: str, prefix: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(part) for part in first["loc"] if part != "function-after")
    msg = first["msg"].replace("Value error, ", "")
    field = re.match(r"([a-z_]+): ", msg)
    if first["type"] == "value_error" and field:  # a model validator naming its field
        loc = ".".join(p for p in (loc, field.group(1)) if p)
        msg = msg[field.end():]
    key = " ".join(part for part in (prefix, loc) if part) if prefix.endswith("->") else ".".join(
        part for part in (prefix, loc) if part)
    key = key or "(top level)"
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "literal_error":
        msg = msg.replace("Input should be", "allowed:")
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
    """Read a YAML mapping, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


class StudyConfig:
    """A whole config file: the base settings plus its named conditions, each resolvable."""

    def __init__(self, raw: dict[str, Any], source: str = "<config>") -> None:
        self.raw = raw
        self.source = source
        try:
            self.base = RunConfig.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(_format_error(source, "", err)) from None
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
            if section not in RunConfig.model_fields or section == "experiment":
                allowed = ", ".join(k for k in RunConfig.model_fields if k != "experiment")
                raise ConfigError(f"{self.source}: {prefix}.{dotted}: unknown section (allowed: {allowed})")
            try:
                set_dotted(tree, dotted, value)
            except KeyError:
                raise ConfigError(f"{self.source}: {prefix}.{dotted}: parent is not a mapping") from None
        try:
            cfg = RunConfig.model_validate(tree)
        except ValidationError as err:
            raise ConfigError(_format_error(self.source, f"{prefix} ->", err)) from None
        from plasticity_lab.interventions import validate_interventions

        try:
            cfg.interventions = validate_interventions(cfg)
        except ValueError as err:
            raise ConfigError(f"{self.source}: {prefix} -> {err}") from None
        return cfg

    def condition(self, name: str) -> RunConfig:
        if name in self.errors:
            raise self.errors[name]
        if name not in self.resolved:
            raise ConfigError(f"{self.source}: unknown condition {name!r} (allowed: {', '.join(self.conditions)})")
        return self.resolved[name]


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


def load_study(path: str | Path) -> StudyConfig:
    path = resolve_config_path(path)
    return StudyConfig(load_yaml(path), source=str(path))
