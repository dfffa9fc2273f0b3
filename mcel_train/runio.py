"""Read a training run folder (``runs/NAME/train/``) back into a model and its test set."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from mcel_train.data import load_dataset
from mcel_train.errors import ArtifactError
from mcel_train.models import ModelSpec, build_model
from mcel_train.quicktrain import model_inputs


class RunError(ArtifactError, FileNotFoundError):
    """A run folder lacks the training stage's files or they are malformed."""


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
        kwargs = {k: data[k] for k in ("data_dir", "val_fraction") if data.get(k) is not None}
        # The training stage splits with the run's top-level seed (digits' test split too).
        ds = load_dataset(self.dataset, seed=int(self.config.get("seed", 0)), **kwargs)
        return model_inputs(ds.test.images, self.spec), ds.test.labels

    def test_inputs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` test images, encoded as the model (and the accelerator) takes them."""
        x, labels = self.test_set()
        return x[:n].numpy().astype(np.float32), np.asarray(labels[:n])


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
    if not isinstance(cfg.get("model"), dict):
        raise RunError(f"{cfg_path}: no 'model:' mapping")
    dataset = (cfg.get("data") or {}).get("dataset")
    if not dataset:
        raise RunError(f"{cfg_path}: no data.dataset")
    spec = ModelSpec.from_dict(cfg["model"])
    model = build_model(spec)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{weights} cannot be loaded as this run's model ({first[:200]}); "
                       f"train it again (mcel train ... --out {run_dir})") from None
    return TrainedRun(run_dir, spec, model.eval(), str(dataset), cfg)
