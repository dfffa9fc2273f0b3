"""Training configuration: YAML in, one validated :class:`TrainConfig` out.

Every value is checked before any work starts, so a bad config is one clear error and no run
folder is created. ``--set key=value`` overrides use dotted keys (``loss.margin=32``) and YAML
value syntax.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mcel_train.data import DATASET_NAMES
from mcel_train.errors import UserInputError
from mcel_train.losses import LOSS_NAMES
from mcel_train.models import ModelSpec, parse_model_name

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "none")
LOGIT_DOMAINS = ("float", "integer")

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "model": None,
    "data": {"dataset": "fashion_mnist", "data_dir": None, "val_fraction": 0.1, "limit_train": 0},
    "loss": {"name": "ce", "margin": 32.0, "L": 100.0, "b": 128.0, "warmup_steps": 0, "logits": "float"},
    "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9},
    "schedule": {"name": "cosine", "step_size": 5, "gamma": 0.1},
    "epochs": 10,
    "batch_size": 128,
    "fault_training": None,
}


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


def _merge(base: dict, over: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, val in over.items():
        where = f"{path}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key {where!r}; known keys at this level: {', '.join(base)}")
        if isinstance(base[key], dict) and isinstance(val, dict):
            out[key] = _merge(base[key], val, where + ".")
        else:
            out[key] = val
    return out


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place (value parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key=value (for example loss.margin=32)")
    key, text = assignment.split("=", 1)
    value = yaml.safe_load(text) if text.strip() else None
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
    try:
        if "name" in fields:
            base = parse_model_name(str(fields.pop("name"))).to_dict()
            base.update(fields)
            fields = base
        return ModelSpec.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model: {exc}") from None


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def validate(raw: dict) -> TrainConfig:
    """Check every field of a merged config and return the resolved :class:`TrainConfig`."""
    raw = _merge(DEFAULTS, raw)
    spec = _resolve_model(raw["model"])
    data, loss, opt, sched = raw["data"], raw["loss"], raw["optimizer"], raw["schedule"]
    checks = [
        (_is_int(raw["seed"], 0), f"seed must be an integer >= 0, got {raw['seed']!r}"),
        (data["dataset"] in DATASET_NAMES, _choice("data.dataset", DATASET_NAMES, data["dataset"])),
        (_is_number(data["val_fraction"]) and 0 < data["val_fraction"] < 1,
         f"data.val_fraction must be in (0, 1), got {data['val_fraction']!r}"),
        (_is_int(data["limit_train"], 0), "data.limit_train must be an integer >= 0 (0 = all)"),
        (loss["name"] in LOSS_NAMES, _choice("loss.name", LOSS_NAMES, loss["name"])),
        (_is_number(loss["margin"]) and loss["margin"] >= 0,
         f"loss.margin must be a number >= 0, got {loss['margin']!r}"),
        (_is_number(loss["L"]) and loss["L"] > 0, f"loss.L must be a number > 0, got {loss['L']!r}"),
        (_is_number(loss["b"]) and loss["b"] > 0, f"loss.b must be a number > 0, got {loss['b']!r}"),
        (_is_int(loss["warmup_steps"], 0), "loss.warmup_steps must be an integer >= 0"),
        (loss["logits"] in LOGIT_DOMAINS, _choice("loss.logits", LOGIT_DOMAINS, loss["logits"])),
        (opt["name"] in OPTIMIZERS, _choice("optimizer.name", OPTIMIZERS, opt["name"])),
        (_is_number(opt["lr"]) and opt["lr"] > 0, f"optimizer.lr must be a number > 0, got {opt['lr']!r}"),
        (_is_number(opt["weight_decay"]) and opt["weight_decay"] >= 0, "optimizer.weight_decay must be >= 0"),
        (sched["name"] in SCHEDULES, _choice("schedule.name", SCHEDULES, sched["name"])),
        (_is_int(raw["epochs"], 1), f"epochs must be an integer >= 1, got {raw['epochs']!r}"),
        (_is_int(raw["batch_size"], 1), f"batch_size must be an integer >= 1, got {raw['batch_size']!r}"),
    ]
    for ok, message in checks:
        _check(ok, message)
    ft = raw["fault_training"]
    if ft is not None:
        _check(isinstance(ft, dict) and set(ft) <= {"model", "rate", "seed"},
               "fault_training must be a mapping with keys model, rate[, seed]")
        _check(_is_number(ft.get("rate")) and 0 <= ft["rate"] <= 1,
               f"fault_training.rate must be in [0, 1], got {ft.get('rate')!r}")
    if data["dataset"] == "digits" and tuple(spec.image_shape) != (8, 8):
        spec = ModelSpec.from_dict({**spec.to_dict(), "image_shape": [8, 8]})
    raw["model"] = spec.to_dict()
    return TrainConfig(raw=raw, model=spec)


def _is_int(x: Any, minimum: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= minimum


def _choice(key: str, allowed: tuple[str, ...], got: Any) -> str:
    return f"{key} must be one of {', '.join(allowed)}, got {got!r}"


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply ``key=value`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    raw.setdefault("name", path.stem)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return validate(raw)
