"""Campaign files: a YAML grid in, a validated :class:`CampaignSpec` out, before any work starts.

A campaign lists models x losses x training seeds, and what to do with every trained network:
a software bit-error sweep per fault model, and optionally a FINN build plus an RTL simulation.
Every training config is resolved and validated here (through :mod:`mcel_train.config`), so a
typo anywhere in the grid is one clear error naming the entry, and no task runs.

Example (``flows/campaigns/ce_vs_mcel_tfc.yaml`` is the shipped one)::

    name: ce_vs_mcel
    seed: 0
    train: {config: flows/configs/tfc_w2a2_fmnist.yaml, set: {epochs: 10}}
    grid:
      models: [tfc_w1a1, tfc_w2a2]
      losses: [{name: ce}, {name: mcel, margin: 8}, {name: mcel, margin: 32},
               {name: ce, fault_training: {rate: 0.01}, label: CE+flips}]
      seeds: [0]
    software: {fault_models: [flip], ber: [0, 0.001, 0.01], maps: 50, seed: 0}
    hardware: {ber: [0, 0.01], maps: 3, images: 500, inject: backdoor, target_cycles: 784}
    retries: 1
    timeout_s: 3600
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mcel_train.config import ConfigError, apply_override, validate
from mcel_train.errors import UserInputError
from mcel_train.faults.generate import FaultModel

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
TOP_KEYS = {"name", "seed", "train", "grid", "software", "hardware", "retries", "timeout_s"}
TRAIN_KEYS = {"config", "set"}
GRID_KEYS = {"models", "losses", "seeds"}
SOFTWARE_KEYS = {"fault_models", "ber", "maps", "seed", "ci_width", "test_images"}
HARDWARE_KEYS = {"ber", "maps", "images", "inject", "seed", "fault_model", "target_cycles", "folding"}
INJECT_MODES = ("backdoor", "axilite")


class CampaignError(UserInputError):
    """The campaign file is malformed: raised before any task starts."""


def content_key(payload: Any) -> str:
    """Stable 16-hex-digit key of a JSON-able payload: equal inputs, equal key (the stage cache)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainPoint:
    """One trained network of the grid: its labels and its fully resolved training config."""

    model_label: str
    loss_label: str
    seed: int
    config: dict  # resolved TrainConfig.raw

    @property
    def key(self) -> str:
        return content_key({"stage": "train", "config": self.config})

    @property
    def margin(self) -> float:
        """MCEL margin (0 for the other losses): the x-axis of the margin comparison."""
        loss = self.config["loss"]
        return float(loss["margin"]) if loss["name"] == "mcel" else 0.0


@dataclass(frozen=True)
class CampaignSpec:
    """A validated campaign: the training grid plus the software and hardware stage settings."""

    name: str
    seed: int
    points: tuple[TrainPoint, ...]
    software: dict
    hardware: dict | None
    retries: int
    timeout_s: float
    raw: dict

    def to_json(self) -> str:
        return json.dumps(self.raw, sort_keys=True, indent=1)


def _fail(where: str, message: str) -> None:
    raise CampaignError(f"campaign {where}: {message}")


def _mapping(value: Any, where: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(value, dict):
        _fail(where, f"must be a mapping, got {value!r}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        _fail(where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(value))
    if missing:
        _fail(where, f"missing key(s) {', '.join(missing)}")
    return value


def _int(value: Any, where: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _fail(where, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _rates(value: Any, where: str) -> list[float]:
    if not isinstance(value, list) or not value:
        _fail(where, f"must be a non-empty list of bit error rates, got {value!r}")
    for r in value:
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not 0 <= r <= 1:
            _fail(where, f"every rate must be a number in [0, 1], got {r!r}")
    if len(set(value)) != len(value):
        _fail(where, "rates repeat")
    return [float(r) for r in value]


def _label(entry: Any, kind: str) -> tuple[str, Any]:
    """Split an optional ``label`` off a grid entry (a name or a mapping)."""
    if isinstance(entry, dict):
        entry = dict(entry)
        label = entry.pop("label", None)
        if kind == "model":
            return str(label or entry.get("name", "model")), entry
        name = entry.get("name", "?")
        default = f"{name.upper()} m={entry['margin']:g}" if name == "mcel" and "margin" in entry else name.upper()
        return str(label or default), entry
    if isinstance(entry, str):
        return (entry if kind == "model" else entry.upper()), ({"name": entry} if kind == "loss" else entry)
    _fail(f"grid.{kind}s", f"each entry must be a name or a mapping, got {entry!r}")
    raise AssertionError  # unreachable


def _base_config(train: dict, model: Any) -> dict:
    path = train.get("config")
    if path is None:
        name = model if isinstance(model, str) else model.get("name")
        path = CONFIG_DIR / f"{name}_fmnist.yaml"
        if not path.is_file():
            _fail("train.config", f"no config given and no default {path} for model {name!r}")
    path = Path(path)
    if not path.is_file():
        _fail("train.config", f"{path} does not exist")
    return yaml.safe_load(path.read_text()) or {}


def _train_point(train: dict, model: Any, loss: Any, seed: int, model_label: str, loss_label: str) -> TrainPoint:
    raw = copy.deepcopy(_base_config(train, model))
    for key, value in (train.get("set") or {}).items():
        apply_override(raw, f"{key}={json.dumps(value)}")
    raw["model"] = model
    loss = dict(loss)
    fault_training = loss.pop("fault_training", None)  # bit-flip training rides on a loss entry
    if fault_training is not None:
        raw["fault_training"] = fault_training
    raw["loss"] = {**(raw.get("loss") or {}), **loss} if loss.get("name") == raw.get("loss", {}).get("name") else loss
    raw["seed"] = seed
    raw["name"] = f"{model_label}_{loss_label}_s{seed}".replace(" ", "").replace("=", "")
    try:
        cfg = validate(raw)
    except ConfigError as exc:
        _fail(f"grid entry (model {model_label}, loss {loss_label}, seed {seed})", str(exc))
    return TrainPoint(model_label, loss_label, seed, cfg.raw)


def _software(value: Any) -> dict:
    sw = _mapping(value, "software", SOFTWARE_KEYS, {"ber", "maps"})
    fms = sw.get("fault_models", ["flip"])
    if not isinstance(fms, list) or not fms:
        _fail("software.fault_models", f"must be a non-empty list, got {fms!r}")
    for fm in fms:
        try:
            FaultModel.parse(fm)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a campaign error
            _fail("software.fault_models", str(exc))
    out = {"fault_models": [str(f) for f in fms], "ber": _rates(sw["ber"], "software.ber"),
           "maps": _int(sw["maps"], "software.maps", 2), "seed": _int(sw.get("seed", 0), "software.seed", 0)}
    # optional keys enter the task key only when given: older campaigns keep their keys
    if "ci_width" in sw:
        w = sw["ci_width"]
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 < w < 100:
            _fail("software.ci_width", f"must be a number of accuracy points in (0, 100), got {w!r}")
        out["ci_width"] = float(w)
    if "test_images" in sw:
        out["test_images"] = _int(sw["test_images"], "software.test_images", 1)
    return out


def _hardware(value: Any) -> dict | None:
    if value is None:
        return None
    hw = _mapping(value, "hardware", HARDWARE_KEYS, {"ber", "maps", "images"})
    inject = hw.get("inject", "backdoor")
    if inject not in INJECT_MODES:
        _fail("hardware.inject", f"must be one of {', '.join(INJECT_MODES)}, got {inject!r}")
    target = hw.get("target_cycles")
    if target is not None:
        _int(target, "hardware.target_cycles", 1)
    folding = hw.get("folding", "auto")
    if not isinstance(folding, (str, dict)):
        _fail("hardware.folding", f"must be 'auto', a JSON path or a mapping, got {folding!r}")
    try:  # checked now, not after training and building
        FaultModel.parse(str(hw.get("fault_model", "flip")))
    except ValueError as exc:
        _fail("hardware.fault_model", str(exc))
    return {"ber": _rates(hw["ber"], "hardware.ber"), "maps": _int(hw["maps"], "hardware.maps", 1),
            "images": _int(hw["images"], "hardware.images", 1), "inject": inject,
            "seed": _int(hw.get("seed", 0), "hardware.seed", 0),
            "fault_model": str(hw.get("fault_model", "flip")), "target_cycles": target, "folding": folding}


def parse_campaign(raw: Any) -> CampaignSpec:
    """Validate a campaign mapping; every problem is a :class:`CampaignError` naming its key."""
    raw = _mapping(raw, "file", TOP_KEYS, {"name", "grid", "software"})
    name = raw["name"]
    if not isinstance(name, str) or not name or "/" in name:
        _fail("name", f"must be a non-empty string without '/', got {name!r}")
    train = _mapping(raw.get("train") or {}, "train", TRAIN_KEYS)
    if train.get("set") is not None and not isinstance(train["set"], dict):
        _fail("train.set", "must be a mapping of dotted config keys to values")
    grid = _mapping(raw["grid"], "grid", GRID_KEYS, {"models", "losses"})
    for key in ("models", "losses"):
        if not isinstance(grid[key], list) or not grid[key]:
            _fail(f"grid.{key}", f"must be a non-empty list, got {grid[key]!r}")
    seeds = grid.get("seeds", [raw.get("seed", 0)])
    if not isinstance(seeds, list) or not seeds:
        _fail("grid.seeds", f"must be a non-empty list of integers, got {seeds!r}")
    seeds = [_int(s, "grid.seeds", 0) for s in seeds]
    points = []
    # Losses outermost: tasks start in this order, so a campaign cut short has the first losses
    # for every model and seed (variants are cut before seeds and models).
    for loss in grid["losses"]:
        loss_label, loss_value = _label(loss, "loss")
        for model in grid["models"]:
            model_label, model_value = _label(model, "model")
            for seed in seeds:
                points.append(_train_point(train, model_value, loss_value, seed, model_label, loss_label))
    for what, key in (("model", "models"), ("loss", "losses")):
        distinct = {json.dumps(e, sort_keys=True): _label(e, what)[0] for e in grid[key]}
        if len(set(distinct.values())) < len(distinct):
            _fail(f"grid.{key}", f"two different {what} entries share a label; give each a 'label'")
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        _fail("grid", "two entries resolve to the same training config (a repeated model or loss)")
    timeout = raw.get("timeout_s", 6 * 3600)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        _fail("timeout_s", f"must be a number of seconds > 0, got {timeout!r}")
    return CampaignSpec(
        name=name, seed=_int(raw.get("seed", 0), "seed", 0), points=tuple(points),
        software=_software(raw["software"]), hardware=_hardware(raw.get("hardware")),
        retries=_int(raw.get("retries", 1), "retries", 0),
        timeout_s=float(timeout), raw=raw,
    )


def load_campaign(path: str | Path) -> CampaignSpec:
    """Read and validate a campaign YAML file."""
    path = Path(path)
    if not path.is_file():
        raise CampaignError(f"campaign file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CampaignError(f"campaign file {path} is not valid YAML: {exc}") from None
    return parse_campaign(raw)


__all__ = ["CampaignError", "CampaignSpec", "TrainPoint", "content_key", "load_campaign", "parse_campaign"]
