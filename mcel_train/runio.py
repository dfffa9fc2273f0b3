"""Read a run folder back into its network source and test set.

Two sources: a run trained here (``runs/NAME/train/``: config + Brevitas weights,
:class:`TrainedRun`) and a network imported by ``mcel import`` (``runs/NAME/export/`` holds the
user's QONNX graph and ``export.json`` a ``source`` record, :class:`ImportedRun`). Both give the
test set encoded the way the network (and the accelerator) takes it; only a trained run has a
Brevitas module. :func:`load_source` picks the one a folder holds.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from mcel_train.data import DATASET_NAMES, DatasetNotFoundError, encode_inputs, load_dataset
from mcel_train.digest import state_digest
from mcel_train.errors import ArtifactError
from mcel_train.models import ModelSpec, build_model
from mcel_train.quicktrain import model_inputs


class RunError(ArtifactError, FileNotFoundError):
    """A run folder lacks the training stage's files or they are malformed."""


EXPORT_RECORD = "export.json"


def first_images(x, labels, n: int, flag: str) -> tuple:
    """The first ``n`` test images and labels (``n = 0``: all). Asking for more than the test
    set holds takes all of them and says so on stderr, naming ``flag``: the run goes on (a
    default larger than a small dataset's test set is not an error), but a record with fewer
    images than asked is never a surprise."""
    if n > len(labels):
        given = f"{flag}{n}" if flag.endswith("=") else f"{flag} {n}"  # IMAGES=20000 in the make flow
        print(f"note: the test set has {len(labels)} images; {given} uses all of them", file=sys.stderr)
    return (x[:n], labels[:n]) if n else (x, labels)


def _as_arrays(x: torch.Tensor, labels, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A test set's first ``n`` images (0: all) as float32 and its labels, as numpy arrays."""
    n = n or len(labels)
    return x[:n].numpy().astype(np.float32), np.asarray(labels[:n])


@dataclass
class TrainedRun:
    run_dir: Path
    spec: ModelSpec
    model: nn.Module
    dataset: str
    config: dict

    def test_set(self) -> tuple[torch.Tensor, np.ndarray]:
        """The test split as ``(model inputs, labels)``, loaded as the run's config says."""
        data = self.config.get("data", {}) or {}
        kwargs = {k: data[k] for k in ("val_fraction",) if data.get(k) is not None}
        folder = self.data_folder()
        if folder is not None:
            kwargs["data_dir"] = folder
        # The training stage splits with the run's top-level seed (digits' test split too).
        ds = load_dataset(self.dataset, seed=int(self.config.get("seed", 0)), **kwargs)
        return model_inputs(ds.test.images, self.spec), ds.test.labels

    def data_folder(self) -> Path | None:
        """Where the run's dataset files are now (``None``: the usual search, ``MCEL_DATA_DIR``
        first). ``data.data_dir`` is stored relative to the run folder when it was given relative
        (mcel_train/train.py), else as given; a run trained before that stored it relative to
        the training's cwd, which is tried next. ``MCEL_DATA_DIR`` overrides it: the user's word
        on where the files are now."""
        stored = (self.config.get("data", {}) or {}).get("data_dir")
        if not stored or self.dataset != "fashion_mnist" or os.environ.get("MCEL_DATA_DIR"):
            return None
        for folder in (self.run_dir / stored, Path(stored)):  # (an absolute path is both)
            if folder.is_dir():
                return folder
        raise DatasetNotFoundError(
            f"{self.run_dir} was trained on the files in {stored} (data.data_dir in its train/config.yaml), "
            "which is not a folder from here; set MCEL_DATA_DIR to the folder that holds them now")

    def test_inputs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` test images (0: all), encoded as the model (and the accelerator) takes them."""
        return _as_arrays(*self.test_set(), n)

    @property
    def input_kind(self) -> str:
        return self.spec.input_kind

    @property
    def imported(self) -> bool:
        return False


@dataclass
class ImportedRun:
    """A network brought in by ``mcel import``: its QONNX graph, dataset and input encoding."""

    run_dir: Path
    dataset: str
    input_kind: str
    input_shape: tuple[int, ...]
    source: dict
    seed: int = 0
    spec: None = None
    model: None = None

    @property
    def imported(self) -> bool:
        return True

    def test_set(self) -> tuple[torch.Tensor, np.ndarray]:
        """The dataset's test split encoded as ``input_kind`` in the graph's input shape."""
        ds = load_dataset(self.dataset, seed=self.seed)
        x = encode_inputs(ds.test.images, self.input_kind)
        return x.reshape(len(x), *self.input_shape), ds.test.labels

    def test_inputs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return _as_arrays(*self.test_set(), n)


def load_imported(run_dir: str | Path) -> ImportedRun:
    """The imported network of ``run_dir`` (``export/export.json`` with a ``source`` record)."""
    run_dir = Path(run_dir)
    path = run_dir / "export" / EXPORT_RECORD
    try:
        rec = json.loads(path.read_text())
        src = rec["source"]
        return ImportedRun(run_dir, str(src["dataset"]), str(rec["input_kind"]),
                           tuple(int(d) for d in rec["input_shape"]), src, int(src.get("seed", 0)))
    except FileNotFoundError:
        raise RunError(f"{path} not found: import the network with mcel import first") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise RunError(f"{path} is not a readable import record; run mcel import again with --force") from None


def load_source(run_dir: str | Path) -> TrainedRun | ImportedRun:
    """The run's network source: trained here (``train/``) or imported (``export/export.json``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "train").exists() and (run_dir / "export" / EXPORT_RECORD).is_file():
        try:
            if "source" in json.loads((run_dir / "export" / EXPORT_RECORD).read_text()):
                return load_imported(run_dir)
        except (ValueError, UnicodeDecodeError):
            raise RunError(f"{run_dir / 'export' / EXPORT_RECORD} is not readable; export or import again") from None
    return load_run(run_dir)


def weights_digest(run_dir: str | Path) -> str:
    """:func:`state_digest` of a run's trained tensors (a missing or damaged file: the one line
    :func:`load_run` gives for it)."""
    return state_digest(_load_state(Path(run_dir)))


def _load_state(run_dir: Path) -> dict:
    weights = run_dir / "train" / "model.pt"
    if not weights.is_file():
        raise RunError(f"{weights} not found: run the training stage for {run_dir} first")
    try:
        return torch.load(weights, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{weights} cannot be loaded as this run's model ({first[:200]}); delete {run_dir / 'train'} "
                       f"and train it again (mcel train CONFIG --out {run_dir})") from None


def _recorded_digest(train: Path) -> str | None:
    """The weights digest the training recorded (``None``: a run trained before it did)."""
    try:
        value = json.loads((train / "metrics.json").read_text()).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def load_run(run_dir: str | Path) -> TrainedRun:
    """Rebuild the trained model of ``run_dir`` (eval mode) from ``train/config.yaml`` + weights."""
    run_dir = Path(run_dir)
    train = run_dir / "train"
    cfg_path, weights = train / "config.yaml", train / "model.pt"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise RunError(f"{p} not found: run the training stage for {run_dir} first")
    try:
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raise RunError(f"{cfg_path} is not a readable YAML config; train the run again") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise RunError(f"{cfg_path}: no 'model:' mapping; train the run again")
    data = cfg.get("data") or {}
    dataset = data.get("dataset") if isinstance(data, dict) else None
    if dataset not in DATASET_NAMES:
        raise RunError(f"{cfg_path}: data.dataset {dataset!r} is not one of {', '.join(DATASET_NAMES)}; "
                       "train the run again")
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise RunError(f"{cfg_path}: seed {seed!r} is not a whole number >= 0; train the run again")
    try:
        spec = ModelSpec.from_dict(cfg["model"])
        model = build_model(spec)
    except (TypeError, ValueError) as exc:  # an edited or foreign config: not this code's model
        raise RunError(f"{cfg_path}: its model is not one this version builds ({exc}); train the run again") from None
    state = _load_state(run_dir)
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{weights} cannot be loaded as this run's model ({first[:200]}); "
                       f"delete {train} and train it again (mcel train CONFIG --out {run_dir})") from None
    recorded = _recorded_digest(train)
    if recorded is not None and recorded != state_digest(state):
        raise RunError(f"{weights} does not hold the weights this run trained (their digest in metrics.json "
                       f"differs: the file is damaged); delete {train} and train it again (mcel train CONFIG "
                       f"--out {run_dir})")
    return TrainedRun(run_dir, spec, model.eval(), str(dataset), cfg)
