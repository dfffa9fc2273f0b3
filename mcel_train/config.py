"""Training configuration: YAML in, one validated :class:`TrainConfig` out.

Every value is checked before any work starts, so a bad config is one clear error and no run
folder is created. ``--set key=value`` overrides use dotted keys (``loss.margin=32``) and YAML
value syntax.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mcel_train.data import DATASET_FACTS, DATASET_NAMES
from mcel_train.errors import UserInputError
from mcel_train.faults.generate import FaultModel, rate_problem
from mcel_train.losses import LOSS_NAMES
from mcel_train.models import ModelSpec, parse_model_name
from mcel_train.yaml_file import load_text, read_mapping

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "none")
LOGIT_DOMAINS = ("float", "integer")



class ConfigError(UserInputError):
    """A configuration value is missing, unknown or out of range."""


@dataclass(frozen=True)
class TrainConfig:
    """A validated training configuration (``raw`` is the resolved mapping saved with the run)."""

    raw: dict
    model: ModelSpec

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    @property
    def name(self) -> str:
        return str(self.raw["name"])


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place (value parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key=value (for example loss.margin=32)")
    key, text = assignment.split("=", 1)
    if not key.strip() or any(not part.strip() for part in key.split(".")):
        raise ConfigError(f"override {assignment!r} has no key before '=' (for example loss.margin=32)")
    try:
        value = load_text(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {assignment}: the value is not valid YAML") from None
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        if part == "model" and isinstance(node.get("model"), str):
            node["model"] = {"name": node["model"]}
        if not isinstance(node.get(part), dict):
            node[part] = {} if node.get(part) is None else node[part]
            if not isinstance(node[part], dict):
                raise ConfigError(f"cannot set {key!r}: {part!r} is not a mapping")
        node = node[part]
    node[parts[-1]] = value


def _resolve_model(value: Any) -> ModelSpec:
    if value is None:
        raise ConfigError("config needs a 'model' (a zoo name such as sfc_w2a2, or a mapping)")
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"'model' must be a name or a mapping, got {value!r}")
    fields = dict(value)
    for key in ("hidden", "channels"):
        if key in fields and not fields[key]:  # an empty list would silently mean the default
            raise ConfigError(f"model.{key} is empty; give the layer sizes, or drop it for the default")
    if "name" not in fields and not {"arch", "weight_bits", "act_bits"} <= set(fields):
        raise ConfigError("model: a mapping needs 'name' (a zoo model such as sfc_w2a2) or all of arch, "
                          "weight_bits and act_bits")
    try:
        if "name" in fields:
            base = parse_model_name(str(fields.pop("name"))).to_dict()
            base.update(fields)
            fields = base
        return ModelSpec.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model: {exc}") from None


class _Section(BaseModel):
    # strict: "3" is not 3; no inf/NaN: a NaN margin or learning rate trains to NaN without a word
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class DataConfig(_Section):
    dataset: Literal[DATASET_NAMES] = "fashion_mnist"  # type: ignore[valid-type]
    data_dir: str | None = None
    val_fraction: float = Field(0.1, gt=0, lt=1)
    limit_train: int = Field(0, ge=0, description="0 = all")


class LossConfig(_Section):
    name: Literal[LOSS_NAMES] = "ce"  # type: ignore[valid-type]
    margin: float = Field(32.0, ge=0)
    L: float = Field(100.0, gt=0)
    b: float = Field(128.0, gt=0)
    warmup_steps: int = Field(0, ge=0)
    logits: Literal[LOGIT_DOMAINS] = "float"  # type: ignore[valid-type]


class OptimizerConfig(_Section):
    name: Literal[OPTIMIZERS] = "adam"  # type: ignore[valid-type]
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)


class ScheduleConfig(_Section):
    name: Literal[SCHEDULES] = "cosine"  # type: ignore[valid-type]
    step_size: int = Field(5, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)


class FaultTrainingConfig(_Section):
    model: str = "flip"
    rate: float = Field(ge=0, le=1)
    # the fault maps' seed; left out, the training's own seed (resolved in :func:`validate`): a
    # default of 0 gave every training seed of a campaign the same fault sequence
    seed: int | None = Field(None, ge=0)

    @field_validator("model")
    @classmethod
    def _known_fault_model(cls, model: str) -> str:
        FaultModel.parse(model)  # now, not after the data has loaded
        return model

    @model_validator(mode="after")
    def _rate_fits_the_model(self) -> FaultTrainingConfig:
        problem = rate_problem([self.rate], self.model)
        if problem:
            raise ValueError(problem)
        return self


class ConfigModel(_Section):
    """The training config file; ``model`` is resolved separately (a zoo name or a mapping)."""

    name: str = "run"
    seed: int = Field(0, ge=0, le=2**63 - 1)  # torch.manual_seed's range
    model: Any = None
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    fault_training: FaultTrainingConfig | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        """The run's name is a folder name (runs/<name> without --out): one path component."""
        if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise ValueError("must be a plain folder name (no /, not . or ..); choose the folder with --out")
        return name


def config_error(err: ValidationError, source: str = "") -> ConfigError:
    """The first problem of a validation error as one line naming the field."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return ConfigError(f"{source}unknown config key {where!r} (see the keys in README.md, 'Train')")
    got = first.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return ConfigError(f"{source}{where}: {first['msg'].removeprefix('Value error, ')}{shown}")


def validate(raw: dict) -> TrainConfig:
    """Check every field of a config mapping and return the resolved :class:`TrainConfig`."""
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a mapping of keys to values")
    try:
        cfg = ConfigModel.model_validate(raw)
    except ValidationError as err:
        raise config_error(err) from None
    spec = _resolve_model(cfg.model)
    shape, classes = DATASET_FACTS[cfg.data.dataset]
    if cfg.data.dataset == "digits" and tuple(spec.image_shape) != shape:  # the zoo's names mean 28 x 28
        try:
            spec = ModelSpec.from_dict({**spec.to_dict(), "image_shape": list(shape)})
        except ValueError as exc:  # a conv stack too deep for 8 x 8 images
            raise ConfigError(f"model: {exc}; choose a model for {cfg.data.dataset} "
                              f"(images {list(shape)})") from None
    if tuple(spec.image_shape) != shape:
        raise ConfigError(f"model.image_shape {list(spec.image_shape)} does not match {cfg.data.dataset} "
                          f"(images {list(shape)}); drop it or set it to {list(shape)}")
    if spec.num_classes != classes:
        raise ConfigError(f"model.num_classes {spec.num_classes} does not match {cfg.data.dataset} "
                          f"({classes} classes); drop it or set it to {classes}")
    resolved = cfg.model_dump()
    resolved["model"] = spec.to_dict()
    if resolved.get("fault_training") and resolved["fault_training"]["seed"] is None:
        resolved["fault_training"]["seed"] = resolved["seed"]  # seed 0 resolves as before
    return TrainConfig(raw=resolved, model=spec)


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply ``key=value`` overrides, validate."""
    path = Path(path)
    raw = read_mapping(path, ConfigError, "config file", "flows/configs/")
    raw.setdefault("name", path.stem)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    if raw.get("model") is None:  # an empty file, or one without the key: name the file
        raise ConfigError(f"{path} names no model: add 'model: sfc_w2a2' (a zoo name, or a mapping), or "
                          "--set model=NAME")
    return validate(raw)
