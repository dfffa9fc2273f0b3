"""A few hundred Adam steps on a zoo model, for tests, benches and smoke runs.

Not the training stage (that is :mod:`mcel_train.train`): no validation, no schedules. It
writes the same run-folder files the training stage writes (``model.pt``, ``config.yaml``,
``metrics.json`` under ``runs/NAME/train/``), so the fault tools can be exercised before or
without a full training run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from mcel_train.data import Dataset, encode_inputs
from mcel_train.digest import state_digest
from mcel_train.models import CONV_ARCHS, ModelSpec, build_model


def model_inputs(images: np.ndarray, spec: ModelSpec) -> torch.Tensor:
    """Images -> the model's integer input tensor (flat for MLPs, ``(N, 1, H, W)`` for CNNs)."""
    x = encode_inputs(images, spec.input_kind)
    return x if spec.arch in CONV_ARCHS else x.flatten(1)


def quick_train(
    spec: ModelSpec, dataset: Dataset, steps: int = 300, batch_size: int = 128, lr: float = 1e-2,
    seed: int = 0,
) -> nn.Module:
    """Train ``spec`` on ``dataset.train`` with cross-entropy and Adam; returns it in eval mode."""
    spec = spec.resolved()
    torch.manual_seed(seed)
    model = build_model(spec)
    x = model_inputs(dataset.train.images, spec)
    y = torch.from_numpy(dataset.train.labels)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch_size,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_accuracy(model: nn.Module, dataset: Dataset, spec: ModelSpec) -> float:
    with torch.no_grad():
        logits = model.eval()(model_inputs(dataset.test.images, spec))
    return float((logits.argmax(1).numpy() == dataset.test.labels).mean())


test_accuracy.__test__ = False  # not a pytest test


def write_run(
    run_dir: str | Path, model: nn.Module, spec: ModelSpec, dataset: str, metrics: dict,
    seed: int = 0,
) -> Path:
    """Write ``run_dir/train/{model.pt, config.yaml, metrics.json}`` like the training stage."""
    train_dir = Path(run_dir) / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), train_dir / "model.pt")
    cfg = {"name": Path(run_dir).name, "seed": int(seed), "model": spec.resolved().to_dict(),
           "data": {"dataset": dataset}}
    metrics = {**metrics, "quick_train": True, "weights_sha256": state_digest(model.state_dict())}
    (train_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (train_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return train_dir
