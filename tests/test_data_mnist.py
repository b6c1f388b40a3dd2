"""mnist_npz: the shipped 10,000 real digits and synthetic npz files."""

from __future__ import annotations

import time
from pathlib import Path

import chex
import numpy as np
import pytest

from vaejax import data

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
MNIST10K = SHARED_DATA / "mnist10k.npz"


@pytest.fixture(scope="module")
def real():
  if not MNIST10K.is_file():
    pytest.skip(f"{MNIST10K} not found (shared data absent)")
  return data.load({"name": "mnist_npz", "path": str(MNIST10K)})


def test_real_digits_split_and_batches(real):
  assert real.splits == ("train", "test") and real.num_classes == 10
  assert real.image_shape == (28, 28, 1)
  assert (real.num_examples("train"), real.num_examples("test")) == (8000, 2000)
  with np.load(MNIST10K) as raw:  # fixed split: the last 2,000 rows are the test set
    test_images, test_labels = raw["images"][8000:], raw["labels"][8000:]
  batch = real.get_batch("test", 0, 2000, seed=0)
  expected = {(img.tobytes(), int(lab)) for img, lab in zip(test_images, test_labels)}
  got = {(np.round(img[..., 0] * 255).astype(np.uint8).tobytes(), int(lab))
         for img, lab in zip(batch["image"], batch["label"])}
  assert got == expected
  chex.assert_shape(batch["image"], (2000, 28, 28, 1))
  assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
  assert batch["image"].min() == 0.0 and batch["image"].max() == 1.0
  assert 0.1 < batch["image"].mean() < 0.16  # MNIST's mean intensity is about 0.13
  assert set(np.unique(batch["label"]).tolist()) == set(range(10))


def test_default_path_and_env_override(monkeypatch, tmp_path):
  if not MNIST10K.is_file():
    pytest.skip(f"{MNIST10K} not found (shared data absent)")
  assert data.load({"name": "mnist_npz"}).num_examples("test") == 2000
  monkeypatch.setenv("VAEJAX_DATA_DIR", str(tmp_path))
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    data.load({"name": "mnist_npz"})


def test_get_batch_is_cheap(real):
  real.get_batch("train", 0, 128, 0)
  start = time.perf_counter()
  for step in range(1, 201):
    real.get_batch("train", step, 128, 0)
  per_batch = (time.perf_counter() - start) / 200
  assert per_batch < 5e-3, per_batch  # measured ~0.05 ms on 2 CPU cores


def _write(path: Path, **arrays) -> Path:
  np.savez(path, **arrays)
  return path


def test_synthetic_float_images_with_channel(tmp_path):
  images = np.random.default_rng(0).random((30, 28, 28, 1)).astype(np.float32)
  labels = np.arange(30) % 10
  ds = data.load({"name": "mnist_npz", "path": _write(tmp_path / "m.npz", images=images,
                                                        labels=labels), "test_fraction": 0.1})
  assert (ds.num_examples("train"), ds.num_examples("test")) == (27, 3)
  batch = ds.get_batch("test", 0, 3, seed=0)
  got = {img.tobytes() for img in batch["image"]}
  assert got == {img.tobytes() for img in images[27:]}


@pytest.mark.parametrize("arrays, match", [
    ({"images": np.zeros((10, 28, 28), np.uint8)}, "missing keys \\['labels'\\]"),
    ({"images": np.zeros((10, 28, 28), np.uint8), "labels": np.zeros(9, int)}, "labels have"),
    ({"images": np.zeros((10, 784), np.uint8), "labels": np.zeros(10, int)},
     "expected \\(N, H, W\\) or \\(N, H, W, 1\\)"),
    ({"images": np.zeros((10, 28, 28, 3), np.uint8), "labels": np.zeros(10, int)},
     "shape \\(10, 28, 28, 3\\), expected \\(N, H, W\\) or \\(N, H, W, 1\\)"),
    ({"images": np.zeros((10, 0, 28), np.uint8), "labels": np.zeros(10, int)},
     "shape \\(10, 0, 28\\), expected"),
    ({"images": np.full((10, 28, 28), 1.5), "labels": np.zeros(10, int)}, "must be in \\[0, 1\\]"),
    ({"images": np.full((10, 28, 28), np.nan), "labels": np.zeros(10, int)}, "finite; found NaN"),
    ({"images": np.full((10, 28, 28), 300), "labels": np.zeros(10, int)}, "0..255"),
    ({"images": np.zeros((10, 28, 28), np.uint8), "labels": np.full(10, 10)}, "labels span"),
    ({"images": np.zeros((10, 28, 28), np.uint8), "labels": np.zeros(10)}, "integers"),
])
def test_bad_npz_contents(tmp_path, arrays, match):
  with pytest.raises(ValueError, match=match):
    data.load({"name": "mnist_npz", "path": _write(tmp_path / "bad.npz", **arrays)})


@pytest.mark.parametrize("fraction", [0, 1, 1.5, True, "0.2", 0.001])
def test_bad_test_fraction(tmp_path, fraction):
  path = _write(tmp_path / "m.npz", images=np.zeros((10, 28, 28), np.uint8),
                labels=np.zeros(10, int))
  with pytest.raises(ValueError, match="test_fraction"):
    data.load({"name": "mnist_npz", "path": path, "test_fraction": fraction})


@pytest.mark.parametrize("shape", [(12, 32, 32), (12, 20, 24, 1)])
def test_any_grey_image_size(tmp_path, shape):
  images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  path = _write(tmp_path / "m.npz", images=images, labels=np.arange(12) % 10)
  ds = data.load({"name": "mnist_npz", "path": path, "test_fraction": 0.25})
  assert ds.image_shape == shape[1:3] + (1,)
  batch = ds.get_batch("train", 0, 9, seed=0)
  chex.assert_shape(batch["image"], (9,) + shape[1:3] + (1,))
  assert {img.tobytes() for img in np.round(batch["image"] * 255).astype(np.uint8)} == {
      img.reshape(shape[1:3] + (1,)).tobytes() for img in images[:9]}


@pytest.mark.parametrize("content, kind", [
    (b"images,labels\n0,1\n", "plain text"),
    (b"\x93NUMPY\x01\x00v\x00{'descr': '|u1'", "a single .npy array"),
    (b"", "an empty file"),
])
def test_not_an_npz_file(tmp_path, content, kind):
  path = tmp_path / "x.npz"
  path.write_bytes(content)
  with pytest.raises(ValueError) as info:
    data.load({"name": "mnist_npz", "path": str(path)})
  message = str(info.value)
  assert message.startswith(f"{path} is not an npz file: it holds {kind}"), message
  assert "Expected an npz with 'images' (N, H, W) or (N, H, W, 1)" in message
  assert "\n" not in message and "pickle" not in message


def test_missing_and_corrupt_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="No MNIST npz at .*absent.npz.*'mnist'"):
    data.load({"name": "mnist_npz", "path": tmp_path / "absent.npz"})
  with pytest.raises(ValueError, match=f"path must be the MNIST npz itself; got the directory "
                     f"{tmp_path}"):
    data.load({"name": "mnist_npz", "path": tmp_path})
  (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04garbage")
  with pytest.raises(ValueError, match="Could not read"):
    data.load({"name": "mnist_npz", "path": tmp_path / "corrupt.npz"})
