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
    evidence: {seeds: [0], rate: 0.01, maps: 8, images: 2000, map_seed: 0}   # margins and fault effect per network
    retries: 1
    timeout_s: 3600

A model or loss entry given as a mapping may carry ``label``, ``set`` (training-config overrides
applied last, e.g. ``{name: mcel, margin: 32, set: {model.weight_scaling: const}}`` for a recipe
that changes the model too, or ``{name: vgg3_w4a4, set: {epochs: 3}}``) and, on a model,
``test_images`` (its sweeps' test images, instead of ``software.test_images``). ``mcel
experiment`` is such a grid (``flows/experiment.py``).

``grid.order`` sets the nesting of the trainings, outermost first (default ``[loss, model,
seed]``); tasks start in that order, which decides what a campaign cut short has finished.

``grid.imported`` lists run folders made by ``mcel import`` (or ``{path, label}``): each is
copied into the campaign (an ``import`` task, checked against its SHA-256), built, swept from its
build's integer network and simulated; ``models`` and ``losses`` may then be left out.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from flows.folding import load_folding
from mcel_train.config import ConfigError, apply_override, validate
from mcel_train.errors import UserInputError
from mcel_train.faults.generate import FaultModel, rate_problem
from mcel_train.runio import RunError, load_imported
from mcel_train.yaml_file import read_mapping

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
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
    test_images: int | None = None  # the model entry's own sweep size (else software.test_images)

    @property
    def key(self) -> str:
        return content_key({"stage": "train", "config": self.config})

    @property
    def margin(self) -> float:
        """MCEL margin (0 for the other losses): the x-axis of the margin comparison."""
        loss = self.config["loss"]
        return float(loss["margin"]) if loss["name"] == "mcel" else 0.0


@dataclass(frozen=True)
class ImportPoint:
    """A network of the grid brought in by ``mcel import``: no training, its export is copied."""

    label: str
    path: str  # absolute run folder
    source: dict  # the import's source record (file, SHA-256, dataset, encoding)

    @property
    def key(self) -> str:
        return content_key({"stage": "import", "sha256": self.source["sha256"],
                            "dataset": self.source["dataset"], "input_kind": self.source.get("input_kind")})


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
    imports: tuple[ImportPoint, ...] = ()
    evidence: dict | None = None

    def to_json(self) -> str:
        return json.dumps(self.raw, sort_keys=True, indent=1)

    def on_hardware(self, point: TrainPoint) -> bool:
        """Whether ``point`` is built and simulated (``hardware.only`` selects; default all)."""
        if self.hardware is None:
            return False
        only = self.hardware.get("only") or {}
        return all(only.get(key) is None or value in only[key] for key, value in
                   (("models", point.model_label), ("losses", point.loss_label), ("seeds", point.seed)))

    def has_evidence(self, point: TrainPoint) -> bool:
        """Whether ``point``'s network gets an ``evidence`` task (``evidence.seeds`` selects)."""
        return self.evidence is not None and (self.evidence["seeds"] is None or point.seed in self.evidence["seeds"])


def _fail(where: str, message: str) -> None:
    raise CampaignError(f"campaign {where}: {message}")


# --- the campaign file's schema (pydantic: one loader, messages naming the key) -------------

# a bit error rate, or a flip count for kflips: the bound is the fault model's (rate_problem)
Rate = Annotated[StrictFloat | StrictInt, Field(ge=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _unique_rates(rates: list[float]) -> list[float]:
    repeated = _first_repeat(rates)
    if repeated is not None:  # worded as mcel_train.faults.generate.rate_problem words it for the other commands
        raise ValueError(f"the rate {repeated:g} is listed twice; give each rate once")
    return [float(r) for r in rates]


def _fault_model(name: str) -> str:
    FaultModel.parse(name)  # checked now, not after training
    return name


def _first_repeat(values: list) -> Any:
    """The first value of ``values`` that an earlier one equals (``None``: each is there once)."""
    return next((v for k, v in enumerate(values) if v in values[:k]), None)


def _repeats(raw: dict, strict: bool) -> dict:
    """A new campaign naming a seed or a fault model twice is refused (the fault model was swept
    twice); a saved one (its folder read for a report or a resume) written before this check is
    read with the repeats dropped, as the tasks it ran were (one task per key)."""
    for section, key, what in (("grid", "seeds", "seed"), ("software", "fault_models", "fault model")):
        values = (raw.get(section) or {}).get(key) if isinstance(raw.get(section), dict) else None
        if not isinstance(values, list):
            continue
        repeated = _first_repeat(values)
        if repeated is not None:
            if strict:
                _fail(f"{section}.{key}", f"the {what} {repeated} is listed twice; give each {what} once")
            once = [v for k, v in enumerate(values) if v not in values[:k]]
            raw = {**raw, section: {**raw[section], key: once}}
    return raw


class TrainSection(_Section):
    config: str | dict | None = None  # a config file; the saved campaign holds its contents
    # without a config: each model's flows/configs/<model>_fmnist.yaml, saved as contents too
    default_configs: dict[str, dict] | None = None
    set: dict[str, Any] | None = None


class GridSection(_Section):
    models: list[str | dict] = []
    losses: list[str | dict] = []
    seeds: list[Annotated[StrictInt, Field(ge=0)]] | None = Field(None, min_length=1)
    # networks brought in by `mcel import`: run folders (or {path, label}) built and swept as is
    imported: list[str | dict] = []
    # The nesting of the trainings, outermost first; tasks start in this order. The default keeps
    # every seed of the first loss before the next loss; [seed, model, loss] gives a campaign that
    # spans several sessions the whole comparison at its first seed before the other seeds.
    order: list[Literal["loss", "model", "seed"]] = ["loss", "model", "seed"]

    @field_validator("order")
    @classmethod
    def _permutation(cls, order: list[str]) -> list[str]:
        if sorted(order) != ["loss", "model", "seed"]:
            raise ValueError("order names loss, model and seed once each, outermost first")
        return order

    @model_validator(mode="after")
    def _something_to_run(self) -> GridSection:
        if bool(self.models) != bool(self.losses):
            raise ValueError("models and losses go together: give both (or neither, with imported)")
        if not self.models and not self.imported:
            raise ValueError("nothing to run: give models and losses, or imported run folders")
        return self


class SoftwareSection(_Section):
    fault_models: list[Annotated[str, AfterValidator(_fault_model)]] = Field(["flip"], min_length=1)
    ber: Annotated[list[Rate], Field(min_length=1), AfterValidator(_unique_rates)]
    maps: StrictInt = Field(ge=2)
    seed: StrictInt = Field(0, ge=0)
    ci_width: Annotated[StrictFloat | StrictInt, Field(gt=0, lt=100)] | None = None
    test_images: StrictInt | None = Field(None, ge=1)

    @field_validator("ber")
    @classmethod
    def _rates_fit_the_fault_models(cls, ber: list[float], info: ValidationInfo) -> list[float]:
        for fm in info.data.get("fault_models", []):  # (declared before ber: validated first)
            problem = rate_problem(ber, fm)
            if problem:
                raise ValueError(f"for {fm}: {problem}")
        return ber

    def as_params(self) -> dict:
        """The sweep tasks' settings; optional keys only when given (older campaigns keep keys)."""
        out = {"fault_models": list(self.fault_models), "ber": list(self.ber), "maps": self.maps,
               "seed": self.seed}
        if self.ci_width is not None:
            out["ci_width"] = float(self.ci_width)
        if self.test_images is not None:
            out["test_images"] = self.test_images
        return out


class HardwareSelection(_Section):
    """Which trained networks get a build and an RTL simulation (all if a key is left out):
    model and loss labels, training seeds. Builds are long; a check needs only a few."""

    # an empty list would select nothing, silently: leave the key out to select all
    models: list[str] | None = Field(None, min_length=1)
    losses: list[str] | None = Field(None, min_length=1)
    seeds: list[StrictInt] | None = Field(None, min_length=1)


class HardwareSection(_Section):
    only: HardwareSelection | None = None
    ber: Annotated[list[Rate], Field(min_length=1), AfterValidator(_unique_rates)]
    maps: StrictInt = Field(ge=1)
    images: StrictInt = Field(ge=1)
    inject: Literal[INJECT_MODES] = "backdoor"  # type: ignore[valid-type]
    seed: StrictInt = Field(0, ge=0)
    fault_model: Annotated[str, AfterValidator(_fault_model)] = "flip"
    target_cycles: StrictInt | None = Field(None, ge=1)
    folding: str | dict = "auto"

    @field_validator("folding")
    @classmethod
    def _folding_read_now(cls, folding: str | dict) -> str | dict:
        """A folding file is read (and checked) now, not at the first build after hours of
        training; its contents, not its path, go into the build tasks' keys."""
        if folding == "auto":
            return folding
        return load_folding(folding, "")

    @model_validator(mode="after")
    def _rates_fit_the_fault_model(self) -> HardwareSection:
        problem = rate_problem(self.ber, self.fault_model)
        if problem:
            raise ValueError(f"ber: {problem}")
        return self


class EvidenceSection(_Section):
    """Per trained network of the given seeds (all if left out), while the network exists: its
    integer margins, weight codes, and what ``maps`` fault maps at ``rate`` do to the margin
    and per layer (:func:`mcel_train.fault_effect.network_evidence`), on ``images`` test images.
    A campaign folder is not kept across clones, its results are (``flows/campaign/archive.py``),
    so what is measured on the networks is measured as a task."""

    seeds: list[StrictInt] | None = None
    rate: Annotated[StrictFloat | StrictInt, Field(gt=0, lt=1)] = 0.01
    maps: StrictInt = Field(8, ge=1)
    images: StrictInt = Field(2000, ge=1)
    map_seed: StrictInt = Field(0, ge=0)  # the fault maps' seed (``seeds`` selects training seeds)


class CampaignFile(_Section):
    # a folder name under runs/campaigns/: no separator, no NUL, not "." or ".."
    name: str = Field(min_length=1, pattern=r"^[^/\x00]+$")
    seed: StrictInt = Field(0, ge=0)
    train: TrainSection = TrainSection()
    grid: GridSection
    software: SoftwareSection
    hardware: HardwareSection | None = None
    evidence: EvidenceSection | None = None
    retries: StrictInt = Field(1, ge=0)
    timeout_s: Annotated[StrictFloat | StrictInt, Field(gt=0)] = 6 * 3600

    @field_validator("name")
    @classmethod
    def _not_a_relative_folder(cls, name: str) -> str:
        if name in (".", ".."):
            raise ValueError("must name a folder of its own (it becomes runs/campaigns/<name>), not . or ..")
        return name


def _campaign_error(err: ValidationError) -> CampaignError:
    """The first problem as one line: ``campaign <key path>: <what is wrong> (got ...)``."""
    first = err.errors()[0]
    # pydantic's names of the schemas it tried ("float", "union[...]") are not keys of the file
    loc = [str(p) for p in first["loc"] if not str(p).startswith((
        "function-", "list[", "str", "dict", "float", "int", "bool", "union[", "tagged-union[", "literal[",
        "nullable[", "json-or-python["))]
    loc = [p for p in loc if not p.isdigit()] or ["file"]
    where = ".".join(loc)
    if first["type"] == "extra_forbidden":
        return CampaignError(f"campaign {where}: unknown key; see flows/campaign/spec.py for the allowed keys")
    got = first.get("input")
    shown = "" if isinstance(got, dict) or "got " in first["msg"] else f" (got {got!r})"  # said once
    msg = first["msg"].removeprefix("Value error, ")
    return CampaignError(f"campaign {where}: {msg}{shown}")


@dataclass(frozen=True)
class _Entry:
    """A grid entry split into its label, its model or loss value, and its extras."""

    label: str
    value: Any
    set: dict  # training-config overrides (dotted keys), applied last
    test_images: int | None = None  # models only: the sweeps' test images for this model


def _entry(entry: Any, kind: str) -> _Entry:
    """A grid entry: a name, or a mapping with optional ``label``, ``set`` (training-config
    overrides such as ``{epochs: 3}`` or ``{model.weight_scaling: const}``, for recipes that
    are not a plain model or loss) and, on models, ``test_images`` (its sweeps' size)."""
    extras: dict = {}
    if isinstance(entry, dict):
        entry = dict(entry)
        extras["set"] = entry.pop("set", None) or {}
        if not isinstance(extras["set"], dict):
            _fail(f"grid.{kind}s", f"'set' must map config keys to values, got {extras['set']!r}")
        if kind == "model" and "test_images" in entry:
            extras["test_images"] = entry.pop("test_images")
            n = extras["test_images"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                _fail("grid.models", f"test_images must be a whole number >= 1, got {extras['test_images']!r}")
    label, value = _label(entry, kind)
    return _Entry(label, value, extras.get("set", {}), extras.get("test_images"))


def _label(entry: Any, kind: str) -> tuple[str, Any]:
    """Split an optional ``label`` off a grid entry (a name or a mapping)."""
    if isinstance(entry, dict):
        entry = dict(entry)
        label = entry.pop("label", None)
        if label is not None and not isinstance(label, str | int | float):
            _fail(f"grid.{kind}s", f"'label' must be text, got {label!r}")
        name = entry.get("name")
        if kind == "model":
            if name is not None and not isinstance(name, str):
                _fail("grid.models", f"'name' must be a zoo model name such as sfc_w2a2, got {name!r}")
            return str(label or name or "model"), entry
        if not isinstance(name, str):
            _fail("grid.losses", f"each loss mapping needs a 'name' (a loss such as ce or mcel), got {entry!r}")
        margin = entry.get("margin")
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float)):
            _fail("grid.losses", f"'margin' must be a number, got {margin!r}")
        default = f"{name.upper()} m={margin:g}" if name == "mcel" and margin is not None else name.upper()
        return str(label or default), entry
    if isinstance(entry, str):
        return (entry if kind == "model" else entry.upper()), ({"name": entry} if kind == "loss" else entry)
    _fail(f"grid.{kind}s", f"each entry must be a name or a mapping, got {entry!r}")
    raise AssertionError  # unreachable


def _base_config(train: dict, model: Any) -> dict:
    path = train.get("config")
    if isinstance(path, dict):  # the contents, as a saved campaign holds them
        return path
    if path is None:
        name = model if isinstance(model, str) else model.get("name")
        saved = (train.get("default_configs") or {}).get(name)
        if saved is not None:
            return saved
        path = CONFIG_DIR / f"{name}_fmnist.yaml"
        if not path.is_file():
            _fail("train.config", f"no config given and no default {path} for model {name!r}")
    return read_mapping(path, CampaignError, "campaign train.config: config file", "flows/configs/")


def _train_point(train: dict, model_entry: _Entry, loss_entry: _Entry, seed: int) -> TrainPoint:
    model, loss = model_entry.value, loss_entry.value
    model_label, loss_label = model_entry.label, loss_entry.label
    raw = copy.deepcopy(_base_config(train, model))
    raw["model"] = model
    loss = dict(loss)
    fault_training = loss.pop("fault_training", None)  # bit-flip training rides on a loss entry
    if fault_training is not None:
        raw["fault_training"] = fault_training
    raw["loss"] = {**(raw.get("loss") or {}), **loss} if loss.get("name") == raw.get("loss", {}).get("name") else loss
    raw["seed"] = seed
    raw["name"] = f"{model_label}_{loss_label}_s{seed}".replace(" ", "").replace("=", "").replace("/", "_")
    where = f"grid entry (model {model_label}, loss {loss_label}, seed {seed})"
    try:
        # train.set after the grid's model and loss (a model.* or loss.* key there would be
        # replaced by them), then the entries' own
        for key, value in (train.get("set") or {}).items():
            if key in ("model", "loss"):
                _fail("train.set", f"{key!r} is the grid's (grid.{key}s); set single keys such as {key}.<field>")
            apply_override(raw, f"{key}={json.dumps(value)}")
        for key, value in {**model_entry.set, **loss_entry.set}.items():
            apply_override(raw, f"{key}={json.dumps(value)}")
        cfg = validate(raw)
    except ConfigError as exc:
        _fail(where, str(exc))
    return TrainPoint(model_label, loss_label, seed, cfg.raw, model_entry.test_images)


def parse_campaign(raw: Any, strict: bool = True) -> CampaignSpec:
    """Validate a campaign mapping; every problem is a :class:`CampaignError` naming its key.
    ``strict=False`` reads a campaign saved before the repeat checks (see :func:`_repeats`)."""
    if not isinstance(raw, dict):
        _fail("file", f"must be a mapping, got {raw!r}")
    raw = _repeats(raw, strict)
    train = raw.get("train")
    if isinstance(train, dict) and isinstance(train.get("config"), str):
        # the saved campaign file keeps the training config's contents, as it keeps a folding
        # file's: a report or a resume of the folder must not depend on the working folder the
        # path was relative to, nor on later edits of that file (a report then found no results)
        raw = {**raw, "train": {**train, "config": _base_config(train, None)}}
    try:
        spec = CampaignFile.model_validate(raw)
    except ValidationError as err:
        raise _campaign_error(err) from None
    if spec.grid.imported and spec.hardware is None:
        _fail("grid.imported", "imported networks are built and simulated: add a hardware section")
    train = spec.train.model_dump(exclude_none=True)
    if "config" not in train:  # each model's default config, saved as contents (as train.config is)
        names = {e if isinstance(e, str) else e.get("name") for e in spec.grid.models}
        defaults = {**{n: _base_config({}, n) for n in sorted(n for n in names if isinstance(n, str)
                                                             and (CONFIG_DIR / f"{n}_fmnist.yaml").is_file())},
                    **(train.get("default_configs") or {})}
        if defaults:
            train["default_configs"] = defaults
            raw = {**raw, "train": {**(raw.get("train") or {}), "default_configs": defaults}}
    seeds = spec.grid.seeds if spec.grid.seeds is not None else [spec.seed]
    axes = {"loss": [_entry(e, "loss") for e in spec.grid.losses],
            "model": [_entry(e, "model") for e in spec.grid.models], "seed": seeds}
    points = []
    for combo in itertools.product(*(axes[name] for name in spec.grid.order)):
        at = dict(zip(spec.grid.order, combo, strict=True))
        points.append(_train_point(train, at["model"], at["loss"], at["seed"]))
    for what, entries in (("model", spec.grid.models), ("loss", spec.grid.losses)):
        key = f"grid.{what}es" if what == "loss" else "grid.models"
        resolved = [_entry(e, what) for e in entries]
        texts = [json.dumps([r.value, r.set, r.test_images], sort_keys=True) for r in resolved]
        for k, text in enumerate(texts):
            if strict and text in texts[:k]:  # `ce` and `{name: ce}` are one loss
                first = resolved[texts.index(text)].label
                same = f"{what} {first!r} is listed twice" if first == resolved[k].label else \
                    f"{what} entries {first!r} and {resolved[k].label!r} are the same {what}"
                _fail(key, f"the {same}; give each {what} once")
        labels = {text: r.label for text, r in zip(texts, resolved, strict=True)}  # one per distinct entry
        if len(set(labels.values())) < len(labels):
            _fail(key, f"two different {what} entries share a label; give each a 'label'")
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        _fail("grid", "two entries resolve to the same training config (a repeated model or loss)")
    imports = tuple(_import_point(entry) for entry in spec.grid.imported)
    labels = [p.label for p in imports]
    if len(set(labels)) != len(labels):
        _fail("grid.imported", "two imported runs share a label; give each a 'label'")
    hardware = None if spec.hardware is None else spec.hardware.model_dump()
    if hardware is not None and isinstance(raw["hardware"].get("folding"), str) and hardware["folding"] != "auto":
        # the saved campaign file keeps the folding file's contents: a report, a resume in
        # another folder or clone re-reads the campaign without the file
        raw = {**raw, "hardware": {**raw["hardware"], "folding": hardware["folding"]}}
    only = (hardware or {}).get("only") or {}
    known = {"models": {p.model_label for p in points}, "losses": {p.loss_label for p in points},
             "seeds": {p.seed for p in points}}
    for key, values in only.items():
        unknown = [v for v in values or () if v not in known[key]]
        if unknown:
            _fail(f"hardware.only.{key}", f"{unknown[0]!r} is not in the grid (known: "
                  f"{', '.join(str(v) for v in sorted(known[key], key=str))})")
    evidence = None if spec.evidence is None else spec.evidence.model_dump()
    stray = [s for s in (evidence or {}).get("seeds") or () if s not in known["seeds"]]
    if stray:
        _fail("evidence.seeds", f"{stray[0]!r} is not a training seed of the grid (seeds: "
              f"{', '.join(str(v) for v in sorted(known['seeds']))})")
    return CampaignSpec(
        name=spec.name, seed=spec.seed, points=tuple(points), software=spec.software.as_params(),
        hardware=hardware, retries=spec.retries, timeout_s=float(spec.timeout_s), raw=raw, imports=imports,
        evidence=evidence,
    )


def _import_point(entry: str | dict) -> ImportPoint:
    """An imported run folder of the grid, checked now (its export stage must be there)."""
    entry = {"path": entry} if isinstance(entry, str) else dict(entry)
    unknown = set(entry) - {"path", "label"}
    if unknown or "path" not in entry:
        _fail("grid.imported", f"entries are a run folder or {{path, label}}, got {entry!r}")
    path = Path(str(entry["path"])).resolve()
    try:
        run = load_imported(path)
    except RunError as exc:
        _fail("grid.imported", str(exc))
    source = {**run.source, "input_kind": run.input_kind}
    return ImportPoint(str(entry.get("label") or path.name), str(path), source)


def load_campaign(path: str | Path, strict: bool = True) -> CampaignSpec:
    """Read and validate a campaign YAML file (``strict``: as :func:`parse_campaign`)."""
    raw = read_mapping(path, CampaignError, "campaign file", "flows/campaigns/")
    if not raw:  # it said "campaign name: Field required", as if only the name were missing
        raise CampaignError(f"campaign file {path} is empty: a campaign needs name, train, grid and software "
                            "(flows/campaigns/*.yaml are examples)")
    return parse_campaign(raw, strict)


__all__ = ["CampaignError", "CampaignSpec", "ImportPoint", "TrainPoint", "content_key", "load_campaign",
           "parse_campaign"]
