"""Datasets: IDX parsing, lookup order, clear errors, integer encodings."""

from __future__ import annotations

import gzip
import struct
from collections import Counter

import numpy as np
import pytest

from mcel_train import data
from tests.conftest import fashion_mnist_available


def _write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "fm"
    root.mkdir()
    for key, name in data.FASHION_FILES.items():
        n = 50 if key.startswith("train") else 20
        arr = rng.integers(0, 256, (n, 28, 28)) if "images" in key else rng.integers(0, 10, n)
        _write_idx(root / name, arr)
    return root


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", arr)
    assert np.array_equal(data.read_idx(tmp_path / "x.gz"), arr)


def test_read_idx_rejects_garbage(tmp_path):
    p = tmp_path / "bad.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(p)


def test_explicit_dir_wins_and_split_is_seeded(fake_fashion):
    a = data.load_fashion_mnist(fake_fashion, val_fraction=0.2, seed=3)
    b = data.load_fashion_mnist(fake_fashion, val_fraction=0.2, seed=3)
    c = data.load_fashion_mnist(fake_fashion, val_fraction=0.2, seed=4)
    assert a.source == str(fake_fashion)
    assert len(a.train) == 40 and len(a.val) == 10 and len(a.test) == 20
    assert np.array_equal(a.val.images, b.val.images)
    assert not np.array_equal(a.val.labels, c.val.labels) or not np.array_equal(a.val.images, c.val.images)


def test_env_var_and_torchvision_layout(fake_fashion, tmp_path, monkeypatch):
    root = tmp_path / "tv"
    (root / "FashionMNIST").mkdir(parents=True)
    fake_fashion.rename(root / "FashionMNIST" / "raw")
    monkeypatch.setenv("MCEL_DATA_DIR", str(root))
    assert data.find_fashion_mnist() == root / "FashionMNIST" / "raw"


def test_missing_dataset_names_every_path(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "nope-debian")
    monkeypatch.setenv("TORCHVISION_ROOT", str(tmp_path / "nope-tv"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.DatasetNotFoundError) as exc:
        data.load_fashion_mnist()
    msg = str(exc.value)
    for part in ("nope-debian", "nope-tv", "apt-get install dataset-fashion-mnist"):
        assert part in msg
    # an explicit folder that does not exist is named, never silently replaced by another copy
    with pytest.raises(data.DatasetNotFoundError, match="nope-explicit.*not a folder"):
        data.load_fashion_mnist(tmp_path / "nope-explicit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DatasetNotFoundError, match="empty"):
        data.load_fashion_mnist(tmp_path / "empty")


def _rows(split) -> Counter:
    """Each (image bytes, label) of a split, counted: the splits hold copies of the source rows
    and expose no indices, so a sample is recognised by its content."""
    return Counter(zip((im.tobytes() for im in split.images), split.labels.tolist(), strict=True))


def test_digits_are_uint8_and_disjoint():
    """The three splits partition the 1797 source samples: together they hold every source
    (image, label) exactly as often as the source does, and a row that is unique in the source is
    in one split only. (Rows the source repeats could hide an overlap that drops a twin; the
    bundled digits have none today: 1797 distinct rows.)"""
    from sklearn.datasets import load_digits

    d = data.load_digits(seed=0)
    for split in (d.train, d.val, d.test):
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int64
    assert d.image_shape == (8, 8)
    assert (len(d.train), len(d.val), len(d.test)) == (1294, 144, 359)  # 20 % test, 10 % of the rest
    bunch = load_digits()
    source = _rows(data.Split(np.clip(bunch.images * 16, 0, 255).astype(np.uint8),
                              bunch.target.astype(np.int64)))
    unique = {row for row, n in source.items() if n == 1}
    train, val, test = _rows(d.train), _rows(d.val), _rows(d.test)
    for a, b, names in ((train, val, "train/val"), (train, test, "train/test"), (val, test, "val/test")):
        shared = len(a.keys() & b.keys() & unique)
        assert shared == 0, f"{shared} samples in both {names}"
    together = train + val + test
    assert together == source, (f"{len(source - together)} source samples missing, "
                                f"{len(together - source)} extra")
    assert d.train.images.max() > 16  # rescaled from 0..16 to 0..255, not left at 0..16


def test_encodings_are_integers():
    imgs = np.array([[[0, 23], [24, 255]]], dtype=np.uint8)
    assert data.encode_inputs(imgs, "uint8").flatten().tolist() == [0, 23, 24, 255]
    # binarized at data.BIPOLAR_THRESHOLD = 24: the boundary pixel is +1
    assert data.encode_inputs(imgs, "bipolar").flatten().tolist() == [-1, -1, 1, 1]
    with pytest.raises(ValueError, match="input kind"):
        data.encode_inputs(imgs, "float")


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist_shapes():
    d = data.load_fashion_mnist()
    assert len(d.train) == 54000 and len(d.val) == 6000 and len(d.test) == 10000
    assert d.test.images.shape == (10000, 28, 28)
    assert set(np.unique(d.test.labels)) == set(range(10))
