"""Datasets as integer tensors at the network boundary.

Images stay ``uint8`` here, so the compiled accelerator later receives exactly the integers the
software saw. :func:`encode_inputs` turns them into the network's input encoding: the pixel
values themselves (``uint8``) or their binarization to ``{-1, +1}`` (``bipolar``) for binarized
networks.

Fashion-MNIST is read from its four IDX ``.gz`` files, looked up in this order: an explicit
directory (``--data-dir`` or ``MCEL_DATA_DIR``), Debian's ``dataset-fashion-mnist`` package, a
torchvision root. scikit-learn's bundled 8x8 digits are the always-available dataset for smoke
runs and tests.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mcel_train.errors import ArtifactError, UserError, UserInputError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
DATASET_NAMES = ("fashion_mnist", "digits")
# each dataset's image shape and class count, which a model config must match (checked before
# training: a mismatch used to fail in the middle of the first step)
DATASET_FACTS = {"fashion_mnist": ((28, 28), 10), "digits": ((8, 8), 10)}
INPUT_KINDS = ("uint8", "bipolar")
# pixel >= 24 -> +1, else -1. Not 128: Fashion-MNIST garments are mostly dim, and the
# silhouette at 24 keeps far more of them (sfc_w1a1, CE, 10 epochs: 87.2 % test accuracy at 24,
# 86.4 % at 48, 85.6 % at 80, 82.7 % at 128).
BIPOLAR_THRESHOLD = 24


class DatasetNotFoundError(UserError, FileNotFoundError):
    """Raised when a dataset's files are in none of the places looked at."""


@dataclass(frozen=True)
class Split:
    """Images as ``uint8`` of shape ``(N, H, W)`` and labels as ``int64`` of shape ``(N,)``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Dataset:
    """A dataset split into train, validation and test, with its shape facts."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    source: str

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


class DatasetFileError(ArtifactError):
    """A dataset file that cannot be read as what it claims to be (truncated, not gzip, not IDX)."""


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array of ``uint8``; a damaged
    file is one :class:`DatasetFileError` naming it."""
    fix = ("replace it (apt-get install --reinstall dataset-fashion-mnist), or point MCEL_DATA_DIR (mcel train: "
           "--data-dir) at a good copy")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetFileError(f"{path} cannot be read ({exc}); {fix}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetFileError(f"{path} is not an unsigned-byte IDX file (bad magic number); {fix}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise DatasetFileError(f"{path}: header says {expected} bytes of data, file has {len(data) - offset}; {fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims).copy()


def fashion_mnist_candidates(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for Fashion-MNIST, in lookup order."""
    candidates: list[Path] = []
    explicit = data_dir if data_dir is not None else os.environ.get("MCEL_DATA_DIR")
    if explicit:
        root = Path(explicit)
        if not root.is_dir():  # never fall back silently to another copy of the dataset
            source = "--data-dir / data.data_dir" if data_dir is not None else "MCEL_DATA_DIR"
            raise DatasetNotFoundError(f"{source} points at {root}, which is not a folder; fix it or leave it unset")
        return [root, root / "FashionMNIST" / "raw"]
    candidates.append(DEBIAN_FASHION_MNIST)
    torchvision_root = os.environ.get("TORCHVISION_ROOT", str(Path.home() / ".torch" / "data"))
    for root in (Path(torchvision_root), Path("data")):
        candidates.append(root / "FashionMNIST" / "raw")
    return candidates


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the first directory holding all four Fashion-MNIST files, or raise one clear error."""
    tried = fashion_mnist_candidates(data_dir)
    for d in tried:
        if all((d / f).is_file() for f in FASHION_FILES.values()):
            return d
    # one line (the CLI prints one): the fix first, then where it looked
    paths = ", ".join(str(p) for p in tried)
    raise DatasetNotFoundError(
        "Fashion-MNIST not found: install it with `apt-get install dataset-fashion-mnist` (Debian), or "
        "point --data-dir / MCEL_DATA_DIR at a folder holding its four IDX .gz files "
        f"({', '.join(FASHION_FILES.values())}), for example a torchvision root's FashionMNIST/raw; "
        f"looked in {paths}"
    )


def _split_train_val(images: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    n_val = int(round(val_fraction * len(labels)))
    if not 0 < n_val < len(labels):  # an empty split ended the first epoch in a traceback
        raise UserInputError(f"data.val_fraction {val_fraction:g} leaves {n_val} of the {len(labels)} training "
                             "images for validation; give a fraction that keeps some on both sides")
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    return Split(images[train_idx], labels[train_idx]), Split(images[val_idx], labels[val_idx])


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None, val_fraction: float = 0.1, seed: int = 0
) -> Dataset:
    """Fashion-MNIST with a seeded train/validation split and the official 10k test set."""
    root = find_fashion_mnist(data_dir)
    train_x = read_idx(root / FASHION_FILES["train_images"])
    train_y = read_idx(root / FASHION_FILES["train_labels"]).astype(np.int64)
    test_x = read_idx(root / FASHION_FILES["test_images"])
    test_y = read_idx(root / FASHION_FILES["test_labels"]).astype(np.int64)
    train, val = _split_train_val(train_x, train_y, val_fraction, seed)
    return Dataset("fashion_mnist", train, val, Split(test_x, test_y), 10, str(root))


def load_digits(val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images), rescaled from 0..16 to 0..255 uint8.

    There is no official test set, so test and validation are seeded splits.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.clip(bunch.images * 16, 0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed + 7919)
    order = rng.permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    test_idx, rest = np.sort(order[:n_test]), np.sort(order[n_test:])
    train, val = _split_train_val(images[rest], labels[rest], val_fraction, seed)
    test = Split(images[test_idx], labels[test_idx])
    return Dataset("digits", train, val, test, 10, "sklearn.datasets.load_digits")


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, val_fraction: float = 0.1, seed: int = 0
) -> Dataset:
    """Load a dataset by name (``fashion_mnist`` or ``digits``)."""
    if name == "fashion_mnist":
        return load_fashion_mnist(data_dir, val_fraction, seed)
    if name == "digits":
        return load_digits(val_fraction=val_fraction, seed=seed)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")


def encode_inputs(images: np.ndarray, kind: str) -> torch.Tensor:
    """Integer network inputs of shape ``(N, 1, H, W)`` as float32 holding exact integers.

    ``uint8``: the pixel values 0..255. ``bipolar``: +1 where pixel >= BIPOLAR_THRESHOLD (24), else -1.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    if kind == "uint8":
        return x.to(torch.float32)
    if kind == "bipolar":
        return torch.where(x >= BIPOLAR_THRESHOLD, 1.0, -1.0).to(torch.float32)
    raise ValueError(f"unknown input kind {kind!r}; choose one of {', '.join(INPUT_KINDS)}")
