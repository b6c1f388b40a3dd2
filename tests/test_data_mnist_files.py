"""mnist_idx and binarized_mnist_amat: tiny files in LeCun's IDX and Larochelle's .amat formats.

The writers below follow the format descriptions (REFERENCES.md), using struct
and string joins, not the readers' code.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import chex
import numpy as np
import pytest

from vaejax import data
from vaejax.data.mnist import amat, idx

pytestmark = pytest.mark.isa_independent  # nothing here depends on XLA's float code

IDX_SIZES = {"train": 12, "test": 5}
AMAT_SIZES = {"train": 6, "validation": 3, "test": 4}
AMAT_NAMES = {"train": "binarized_mnist_train.amat", "validation": "binarized_mnist_valid.amat",
              "test": "binarized_mnist_test.amat"}


# ----------------------------------------------------------------------------- writers


def idx_bytes(array: np.ndarray, magic: int | None = None, count: int | None = None) -> bytes:
  """IDX: big-endian magic 0x000008<ndim>, the dimensions (N first), then the bytes."""
  array = np.asarray(array, np.uint8)
  magic = 0x0800 | array.ndim if magic is None else magic
  dims = (len(array) if count is None else count,) + array.shape[1:]
  return struct.pack(f">I{len(dims)}I", magic, *dims) + array.tobytes()


def write(path: Path, content: bytes) -> Path:
  """Writes ``content``, gzip-compressed when the name ends in .gz."""
  path.write_bytes(gzip.compress(content, mtime=0) if path.suffix == ".gz" else content)
  return path


def amat_text(images: np.ndarray, newline: str = "\n") -> str:
  return "".join(" ".join(str(int(v)) for v in image.reshape(-1)) + newline for image in images)


def _idx_arrays(shape=(28, 28)):
  rng = np.random.default_rng(0)
  return {split: (rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
                  rng.integers(0, 10, n, dtype=np.uint8)) for split, n in IDX_SIZES.items()}


def write_idx_dir(directory: Path, arrays, gz=("train",)) -> Path:
  directory.mkdir(exist_ok=True)
  for split, (images, labels) in arrays.items():
    suffix = ".gz" if split in gz else ""
    image_name, label_name = idx.IDX_FILES[split]
    write(directory / (image_name + suffix), idx_bytes(images))
    write(directory / (label_name + suffix), idx_bytes(labels))
  return directory


def _amat_arrays():
  rng = np.random.default_rng(1)
  return {split: (rng.random((n, 28, 28)) < 0.3).astype(np.uint8)
          for split, n in AMAT_SIZES.items()}


def write_amat_dir(directory: Path, arrays) -> Path:
  directory.mkdir(exist_ok=True)
  write(directory / AMAT_NAMES["train"], amat_text(arrays["train"]).encode())
  write(directory / AMAT_NAMES["validation"], amat_text(arrays["validation"], "\r\n").encode())
  write(directory / (AMAT_NAMES["test"] + ".gz"), amat_text(arrays["test"]).encode())
  return directory


def _all_rows(ds, split: str) -> dict:
  return ds.get_batch(split, 0, ds.num_examples(split), seed=0)


def _raises(exc, path: Path, config: dict, *parts: str) -> str:
  """Asserts ``data.load(config)`` raises one single-line error naming ``path`` and ``parts``."""
  with pytest.raises(exc) as info:
    data.load(config)
  message = str(info.value)
  assert str(path) in message and "\n" not in message, message
  for part in parts:
    assert part in message, (part, message)
  return message


# ----------------------------------------------------------------------------- IDX


@pytest.fixture(scope="module")
def idx_arrays():
  return _idx_arrays()


@pytest.fixture(scope="module")
def idx_dir(idx_arrays, tmp_path_factory):
  return write_idx_dir(tmp_path_factory.mktemp("idx"), idx_arrays)


def test_idx_round_trip(idx_dir, idx_arrays):
  ds = data.load({"name": "mnist_idx", "path": str(idx_dir), "split": "test", "batch_size": 5})
  assert ds.splits == ("train", "test") and ds.num_classes == 10
  assert ds.image_shape == (28, 28, 1)
  for split, (images, labels) in idx_arrays.items():
    assert ds.num_examples(split) == IDX_SIZES[split]
    batch = _all_rows(ds, split)
    chex.assert_shape(batch["image"], (IDX_SIZES[split], 28, 28, 1))
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    got = {(np.round(img[..., 0] * 255).astype(np.uint8).tobytes(), int(lab))
           for img, lab in zip(batch["image"], batch["label"])}
    assert got == {(img.tobytes(), int(lab)) for img, lab in zip(images, labels)}
    np.testing.assert_array_equal(  # exactly x / 255
        np.sort(batch["image"].reshape(-1)),
        np.sort((images.astype(np.float32) / np.float32(255)).reshape(-1)))


def test_idx_reader_returns_the_header_shape(idx_dir, idx_arrays):
  images = idx.read_idx(idx_dir / "train-images-idx3-ubyte.gz", 3)
  labels = idx.read_idx(idx_dir / "t10k-labels-idx1-ubyte", 1)
  np.testing.assert_array_equal(images, idx_arrays["train"][0])
  np.testing.assert_array_equal(labels, idx_arrays["test"][1])
  assert images.dtype == np.uint8 and images.shape == (12, 28, 28)


def test_idx_binarize_threshold(idx_dir, idx_arrays):
  ds = data.load({"name": "mnist_idx", "path": idx_dir, "binarize": "threshold"})
  batch = _all_rows(ds, "train")
  images, labels = idx_arrays["train"]
  expected = {((img >= 128).astype(np.float32).tobytes(), int(lab))
              for img, lab in zip(images, labels)}
  assert {(img[..., 0].tobytes(), int(lab)) for img, lab in zip(batch["image"],
                                                                 batch["label"])} == expected


def test_idx_other_image_sizes_and_an_ungzipped_dot_gz(tmp_path):
  arrays = _idx_arrays(shape=(7, 5))
  directory = write_idx_dir(tmp_path / "d", arrays, gz=())
  # A browser that un-gzips a download may keep the name: told apart by content.
  (directory / "t10k-images-idx3-ubyte").rename(directory / "t10k-images-idx3-ubyte.gz")
  ds = data.load({"name": "mnist_idx", "path": directory})
  assert ds.image_shape == (7, 5, 1)
  chex.assert_shape(_all_rows(ds, "test")["image"], (5, 7, 5, 1))


def test_idx_default_path_is_the_data_dir(monkeypatch, idx_dir):
  monkeypatch.setenv("VAEJAX_DATA_DIR", str(idx_dir))
  assert data.load({"name": "mnist_idx"}).num_examples("train") == 12


def _corrupt_idx(tmp_path: Path, idx_arrays, name: str, content: bytes | None) -> Path:
  """A copy of the IDX directory with file ``name`` replaced (or removed when None)."""
  directory = write_idx_dir(tmp_path / "idx", idx_arrays, gz=())
  if content is None:
    (directory / name).unlink()
  else:
    (directory / name).write_bytes(content)
  return directory / name


def test_idx_missing_file(tmp_path, idx_arrays):
  path = _corrupt_idx(tmp_path, idx_arrays, "t10k-labels-idx1-ubyte", None)
  message = _raises(FileNotFoundError, path, {"name": "mnist_idx", "path": path.parent},
                    f"Missing MNIST IDX files: looked for {path}[.gz] (each plain or .gz)",
                    "yann.lecun.com/exdb/mnist", "TFDS dataset 'mnist'")
  assert "train-labels" not in message


def test_idx_path_not_a_directory(tmp_path, idx_dir):
  absent = tmp_path / "absent"
  _raises(FileNotFoundError, absent, {"name": "mnist_idx", "path": absent}, "No directory",
          "yann.lecun.com")
  image_file = idx_dir / "t10k-images-idx3-ubyte"
  _raises(ValueError, image_file, {"name": "mnist_idx", "path": image_file},
          "path must be the directory holding")


_IMAGES = np.zeros((4, 28, 28), np.uint8)


@pytest.mark.parametrize("name, content, pattern", [
    ("t10k-images-idx3-ubyte", idx_bytes(_IMAGES, count=5)[:-16],
     "is truncated: its header says 5 images of 28 x 28 pixels (3920 bytes) but 3120 bytes "
     "follow the header"),
    ("t10k-images-idx3-ubyte", idx_bytes(_IMAGES, count=3),
     "is too long: its header says 3 images of 28 x 28 pixels (2352 bytes) but 3136"),
    ("t10k-labels-idx1-ubyte", idx_bytes(np.zeros(5, np.uint8))[:-1],
     "is truncated: its header says 5 labels (5 bytes) but 4"),
    ("t10k-images-idx3-ubyte", idx_bytes(_IMAGES)[:10], "shorter than the 16-byte header"),
    ("t10k-images-idx3-ubyte", b"", "too short for an IDX magic number"),
    ("t10k-images-idx3-ubyte", idx_bytes(_IMAGES, magic=0x0804),
     "bad magic 0x00000804; expected 0x00000803, an IDX file of unsigned bytes with 3"),
    ("t10k-images-idx3-ubyte", idx_bytes(np.zeros(5, np.uint8)),
     "bad magic 0x00000801 (an IDX label file's); expected 0x00000803"),
    ("t10k-labels-idx1-ubyte", idx_bytes(_IMAGES),
     "bad magic 0x00000803 (an IDX image file's); expected 0x00000801"),
    ("t10k-labels-idx1-ubyte", b"<html>Not Found</html>",
     "bad magic 0x3c68746d (plain text); expected 0x00000801"),
    ("t10k-labels-idx1-ubyte", gzip.compress(idx_bytes(np.zeros(5, np.uint8)), mtime=0)[:-6],
     "truncated or corrupt gzip data"),
    ("t10k-images-idx3-ubyte", idx_bytes(np.zeros((5, 0, 28), np.uint8)),
     "images of 0 x 28 pixels; expected rows, cols >= 1"),
    ("t10k-labels-idx1-ubyte", idx_bytes(np.full(5, 10, np.uint8)),
     "labels span [10, 10], expected 0..9"),
])
def test_idx_corrupt_files(tmp_path, idx_arrays, name, content, pattern):
  path = _corrupt_idx(tmp_path, idx_arrays, name, content)
  _raises(ValueError, path, {"name": "mnist_idx", "path": path.parent}, pattern,
          "yann.lecun.com")


def test_idx_inconsistent_files(tmp_path, idx_arrays):
  path = _corrupt_idx(tmp_path, idx_arrays, "t10k-labels-idx1-ubyte",
                      idx_bytes(np.zeros(4, np.uint8)))
  images = path.parent / "t10k-images-idx3-ubyte"
  _raises(ValueError, path, {"name": "mnist_idx", "path": path.parent},
          f"{images} holds 5 images but {path} holds 4 labels; expected one label per image")
  path = _corrupt_idx(tmp_path, idx_arrays, "t10k-images-idx3-ubyte",
                      idx_bytes(np.zeros((5, 32, 32), np.uint8)))
  _raises(ValueError, path, {"name": "mnist_idx", "path": path.parent},
          "train-images-idx3-ubyte holds images of (28, 28) pixels but",
          f"{path} of (32, 32); expected one size")


# ----------------------------------------------------------------------------- binarised .amat


@pytest.fixture(scope="module")
def amat_arrays():
  return _amat_arrays()


@pytest.fixture(scope="module")
def amat_dir(amat_arrays, tmp_path_factory):
  return write_amat_dir(tmp_path_factory.mktemp("amat"), amat_arrays)


@pytest.mark.parametrize("binarize", ["none", "static", "dynamic", "threshold"])
def test_amat_round_trip(amat_dir, amat_arrays, binarize):
  ds = data.load({"name": "binarized_mnist_amat", "path": amat_dir, "binarize": binarize,
                  "split": "validation"})
  assert ds.splits == ("train", "validation", "test") and ds.num_classes is None
  assert ds.image_shape == (28, 28, 1)
  for split, images in amat_arrays.items():
    assert ds.num_examples(split) == AMAT_SIZES[split]
    batch = ds.get_batch(split, 3, AMAT_SIZES[split], seed=2)
    assert set(batch) == {"image"} and batch["image"].dtype == np.float32
    chex.assert_shape(batch["image"], (AMAT_SIZES[split], 28, 28, 1))
    # Row-major: line value k is pixel (k // 28, k % 28); binarising {0, 1} changes nothing.
    assert {img[..., 0].tobytes() for img in batch["image"]} == {
        img.astype(np.float32).tobytes() for img in images}


def test_amat_reader(amat_dir, amat_arrays):
  images = amat.read_amat(amat_dir / "binarized_mnist_test.amat.gz")
  assert images.dtype == np.uint8
  np.testing.assert_array_equal(images, amat_arrays["test"])
  assert data.load({"name": "binarized_mnist_amat", "path": amat_dir}).num_examples(
      "validation") == 3  # \r\n line ends read too


def test_amat_no_valid_split_name(amat_dir):
  with pytest.raises(ValueError, match="no split 'valid'.*'validation'"):
    data.load({"name": "binarized_mnist_amat", "path": amat_dir, "split": "valid"})


def _corrupt_amat(tmp_path: Path, amat_arrays, text: str | None) -> Path:
  directory = write_amat_dir(tmp_path / "amat", amat_arrays)
  path = directory / AMAT_NAMES["train"]
  if text is None:
    path.unlink()
  else:
    path.write_text(text)
  return path


def test_amat_missing_file(tmp_path, amat_arrays):
  path = _corrupt_amat(tmp_path, amat_arrays, None)
  config = {"name": "binarized_mnist_amat", "path": path.parent}
  message = _raises(FileNotFoundError, path, config,
                    f"Missing binarised MNIST .amat files: looked for {path}[.gz]",
                    "www.cs.toronto.edu/~larocheh", "TFDS dataset 'binarized_mnist'")
  assert "valid.amat" not in message


def _lines(*rows: list[str]) -> str:
  return "".join(" ".join(row) + "\n" for row in rows)


_ROW = ["0", "1"] * 392


@pytest.mark.parametrize("text, pattern", [
    (_lines(_ROW, _ROW, _ROW[:500]),
     "line 3 (the last line: the file looks truncated): 500 values, expected 784"),
    (_lines(_ROW, _ROW + ["1"], _ROW), "line 2: 785 values, expected 784"),
    (_lines(_ROW, [], _ROW), "line 2: 0 values, expected 784"),
    (_lines(_ROW, _ROW[:-1] + ["2"]), "line 2: value '2', expected 0 or 1"),
    (_lines(["0.0"] + _ROW[1:]), "line 1: value '0.0', expected 0 or 1"),
    (_lines(_ROW, ["x"] + _ROW[1:]), "line 2: value 'x', expected 0 or 1"),
    ("\n\n", "holds no images"),
])
def test_amat_corrupt_files(tmp_path, amat_arrays, text, pattern):
  path = _corrupt_amat(tmp_path, amat_arrays, text)
  _raises(ValueError, path, {"name": "binarized_mnist_amat", "path": path.parent}, pattern,
          "larocheh")


def test_amat_trailing_blank_lines_are_fine(tmp_path, amat_arrays):
  path = _corrupt_amat(tmp_path, amat_arrays, _lines(_ROW, _ROW) + "\n  \n")
  ds = data.load({"name": "binarized_mnist_amat", "path": path.parent})
  assert ds.num_examples("train") == 2


def test_amat_corrupt_gzip(tmp_path, amat_arrays):
  directory = write_amat_dir(tmp_path / "amat", amat_arrays)
  path = directory / "binarized_mnist_test.amat.gz"
  path.write_bytes(path.read_bytes()[:40])
  _raises(ValueError, path, {"name": "binarized_mnist_amat", "path": directory},
          "is truncated or corrupt gzip data", "larocheh")
