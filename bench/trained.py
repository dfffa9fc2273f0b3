"""A bench script's network: a trained run's integer network and its test images, on one torch
thread (the steadiest timings on a shared machine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mcel_train.intnet import IntNetwork, from_brevitas
from mcel_train.runio import load_run


def trained_network(run_dir: Path, test_images: int = 0) -> tuple[IntNetwork, torch.Tensor, np.ndarray]:
    """The integer network of ``run_dir``'s model and its first ``test_images`` test images and
    labels (0: all)."""
    torch.set_num_threads(1)
    run = load_run(run_dir)
    x, y = run.test_set()
    if test_images:
        x, y = x[:test_images], y[:test_images]
    return from_brevitas(run.model), x, y
