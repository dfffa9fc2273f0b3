"""Shared pytest fixtures: small trained runs built through the real training path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "flows" / "configs"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """Tests never read a user's MCEL_DATA_DIR by accident."""
    monkeypatch.delenv("MCEL_DATA_DIR", raising=False)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled 8x8 digits, split as the project splits them."""
    from mcel_train.data import load_dataset

    return load_dataset("digits")


def brevitas_predictions(model, x, ints=None):
    """Reference: the Brevitas forward (optionally on given integer weights), integer argmax."""
    import copy

    import torch

    from mcel_train.evaluate import predict
    from mcel_train.fault_training import override_quant_weights

    m = copy.deepcopy(model)
    if ints is not None:
        override_quant_weights(m, ints)
    with torch.no_grad():
        logits, scale = m.logits_and_scale(torch.as_tensor(x))
    return logits, predict(torch.round(logits / scale))


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """A tfc_w2a2 run trained for a few epochs on the bundled digits (seconds)."""
    from mcel_train.config import load_config
    from mcel_train.train import run_train

    run = tmp_path_factory.mktemp("runs") / "smoke"
    run_train(load_config(CONFIGS / "smoke_digits.yaml"), run, show_progress=False)
    return run


def fashion_mnist_available() -> bool:
    from mcel_train.data import DatasetNotFoundError, find_fashion_mnist

    try:
        find_fashion_mnist(os.environ.get("MCEL_DATA_DIR"))
        return True
    except DatasetNotFoundError:
        return False


@pytest.fixture(scope="session")
def smoke_build(smoke_run) -> Path:
    """The smoke run compiled by the FINN flow into a Verilated accelerator (folded to ~64 cycles)."""
    from flows.build import build_run

    build_run(smoke_run, folding="auto", target_cycles=64, n_verify=50, runtime_writeable=True)
    return smoke_run


@pytest.fixture(scope="session")
def smoke_bin_build(tmp_path_factory) -> Path:
    """A binarized tfc_w1a1 on digits, built with the project's own XNOR-popcount RTL."""
    from flows.build import build_run
    from mcel_train.config import load_config
    from mcel_train.train import run_train

    run = tmp_path_factory.mktemp("runs") / "smoke_w1a1"
    run_train(load_config(CONFIGS / "smoke_digits_w1a1.yaml"), run, show_progress=False)
    build_run(run, folding="auto", target_cycles=64, n_verify=50, runtime_writeable=True)
    return run


@pytest.fixture
def figures(monkeypatch):
    """Every matplotlib figure closed during the test, in order. The plotting code saves its
    figure and then closes it, so this is how a test reads back the curves that went into a PNG."""
    import matplotlib.pyplot as plt

    seen, close = [], plt.close

    def record(fig=None):
        seen.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", record)
    return seen
