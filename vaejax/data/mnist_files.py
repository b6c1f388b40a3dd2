"""MNIST in its original files: LeCun's IDX and Larochelle & Murray's fixed binarisation.

IDX (``mnist_idx``): a big-endian header, then the data, row-major::

  images  int32 magic 0x00000803, int32 N, rows, cols, then N * rows * cols uint8 in 0..255
  labels  int32 magic 0x00000801, int32 N, then N uint8 in 0..9

The magic is two zero bytes, a type code (0x08: unsigned byte) and the number of
dimensions (3 or 1). MNIST has 60,000 train (``train-*``) and 10,000 test
(``t10k-*``) images of 28 x 28 pixels; other sizes are read as they are.

Binarised MNIST (``binarized_mnist_amat``; Larochelle & Murray 2011, the fixed
binarisation behind the published MNIST log-likelihoods): plain text, one image
per line as 784 = 28 x 28 space-separated 0/1 values, row-major; 50,000 train,
10,000 valid, 10,000 test images; no labels.

Every file may be plain or gzip-compressed (``NAME`` or ``NAME.gz``, told apart
by their bytes). Files are read whole and checked completely: bad magic, a
header announcing more (or fewer) bytes than follow, a line without exactly 784
values, a value other than 0 or 1, labels outside 0..9.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vaejax.data import arrays, files, registry
from vaejax.data.mnist import NUM_CLASSES, shared_data_dir

IDX_FILES = {  # split -> (images, labels)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
AMAT_FILES = {
    "train": "binarized_mnist_train.amat",
    "validation": "binarized_mnist_valid.amat",
    "test": "binarized_mnist_test.amat",
}
AMAT_SIDE = 28
_IDX_UBYTE = 0x08
_IDX_HOW = (
    "Get the four MNIST IDX files (.gz or un-gzipped) from http://yann.lecun.com/exdb/mnist/ "
    "or a mirror (https://storage.googleapis.com/cvdf-datasets/mnist/, "
    "https://ossci-datasets.s3.amazonaws.com/mnist/) into one directory and pass it as path= "
    "(or set VAEJAX_DATA_DIR); or use the TFDS dataset 'mnist'.")
_AMAT_HOW = (
    "Get binarized_mnist_{train,valid,test}.amat (Larochelle & Murray's fixed binarisation, "
    "as used by the IWAE code) from "
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/ into one directory "
    "and pass it as path= (or set VAEJAX_DATA_DIR); or use the TFDS dataset "
    "'binarized_mnist'.")


# ----------------------------------------------------------------------------- readers


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
  """Reads an IDX file of unsigned bytes with ``ndim`` dimensions (plain or gzip).

  Args:
    path: the file.
    ndim: 3 for image files (magic 0x00000803), 1 for label files (0x00000801).

  Returns:
    uint8 array of the shape the header gives, e.g. (N, rows, cols).

  Raises:
    ValueError: bad magic, a short header, or data shorter or longer than the
      header announces (the message names the file and the expected sizes).
  """
  path = Path(path)
  raw = files.read_bytes(path, _IDX_HOW)
  expected_magic = (_IDX_UBYTE << 8) | ndim
  kind = "image" if ndim == 3 else "label"
  header_size = 4 * (1 + ndim)
  if len(raw) < 4:
    raise ValueError(f"{path} is truncated: {len(raw)} bytes, too short for an IDX magic "
                     f"number (expected 0x{expected_magic:08x}). {_IDX_HOW}")
  magic = int.from_bytes(raw[:4], "big")
  if magic != expected_magic:
    swapped = {0x0801: "label", 0x0803: "image"}.get(magic)  # images and labels mixed up
    described = files.describe(raw[:8])
    note = (f" (an IDX {swapped} file's)" if swapped
            else "" if described == "unknown binary data" else f" ({described})")
    raise ValueError(
        f"{path} has bad magic 0x{magic:08x}{note}; expected "
        f"0x{expected_magic:08x}, an IDX file of unsigned bytes with {ndim} dimension(s) "
        f"(MNIST's {kind} file). {_IDX_HOW}")
  if len(raw) < header_size:
    raise ValueError(f"{path} is truncated: {len(raw)} bytes, shorter than the "
                     f"{header_size}-byte header of an IDX {kind} file. {_IDX_HOW}")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  if ndim == 3 and min(shape[1:]) < 1:
    raise ValueError(f"{path}: its header gives images of {shape[1]} x {shape[2]} pixels; "
                     f"expected rows, cols >= 1. {_IDX_HOW}")
  size = int(np.prod(shape, dtype=np.int64))
  found = len(raw) - header_size
  if found != size:
    what = (f"{shape[0]} images of {shape[1]} x {shape[2]} pixels" if ndim == 3
            else f"{shape[0]} labels")
    problem = "is truncated" if found < size else "is too long"
    raise ValueError(f"{path} {problem}: its header says {what} ({size} bytes) but "
                     f"{found} bytes follow the header. {_IDX_HOW}")
  return np.frombuffer(raw, np.uint8, offset=header_size).reshape(shape)


def read_amat(path: str | os.PathLike) -> np.ndarray:
  """Reads a binarised-MNIST .amat file (plain or gzip) as uint8 (N, 28, 28) in {0, 1}.

  Blank lines at the end are ignored; every other line must hold exactly 784
  values, each "0" or "1".

  Raises:
    ValueError: a line with another number of values (the message gives its
      number, and whether the file looks truncated), a value other than 0 or 1,
      or no images at all.
  """
  path = Path(path)
  width = AMAT_SIDE * AMAT_SIDE
  lines = files.read_bytes(path, _AMAT_HOW).split(b"\n")
  while lines and not lines[-1].strip():
    lines.pop()
  rows = []
  for number, line in enumerate(lines, 1):
    values = line.split()
    if len(values) != width:
      truncated = number == len(lines) and len(values) < width
      where = " (the last line: the file looks truncated)" if truncated else ""
      raise ValueError(
          f"{path}, line {number}{where}: {len(values)} values, expected {width} "
          f"space-separated 0/1 values (one {AMAT_SIDE} x {AMAT_SIDE} image per line). "
          f"{_AMAT_HOW}")
    row = b"".join(values)
    if len(row) != width:  # a value longer than one character
      bad = next(v for v in values if len(v) != 1)
      raise ValueError(f"{path}, line {number}: value {bad.decode(errors='replace')!r}, "
                       f"expected 0 or 1. {_AMAT_HOW}")
    rows.append(row)
  if not rows:
    raise ValueError(f"{path} holds no images; expected one line of {width} 0/1 values per "
                     f"image. {_AMAT_HOW}")
  chars = np.frombuffer(b"".join(rows), np.uint8).reshape(-1, AMAT_SIDE, AMAT_SIDE)
  pixels = chars - np.uint8(ord("0"))  # wraps: anything but "0"/"1" lands above 1
  bad = np.flatnonzero(pixels.reshape(-1) > 1)
  if bad.size:
    line = int(bad[0]) // width
    raise ValueError(f"{path}, line {line + 1}: value {chr(chars.reshape(-1)[bad[0]])!r}, "
                     f"expected 0 or 1. {_AMAT_HOW}")
  return pixels


# ----------------------------------------------------------------------------- datasets


def _directory(path: str | os.PathLike | None, names: list[str], what: str,
               how: str) -> dict[str, Path]:
  """The file found for each of ``names`` (plain or .gz) in the directory ``path``."""
  directory = (Path(path).expanduser() if path is not None else shared_data_dir()).absolute()
  if directory.is_file():
    raise ValueError(f"path must be the directory holding {names}; got the file "
                     f"{directory}. {how}")
  if not directory.is_dir():
    raise FileNotFoundError(
        f"No directory {directory} (looked there for the {what} files {names}). {how}")
  found = {name: files.find(directory, name) for name in names}
  missing = [f"{directory / name}[.gz]" for name, p in found.items() if p is None]
  if missing:
    raise FileNotFoundError(
        f"Missing {what} files: looked for {', '.join(missing)} (each plain or .gz). {how}")
  return found


@registry.register("mnist_idx")
def mnist_idx(*, path: str | os.PathLike | None = None, binarize: str = "none",
              binarize_seed: int = 0) -> arrays.ArrayDataset:
  """MNIST from LeCun's four IDX files: train (60,000) and test (10,000), with labels.

  Args:
    path: the directory holding ``train-images-idx3-ubyte``,
      ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
      ``t10k-labels-idx1-ubyte``, each plain or ``.gz``; default
      ``shared_data_dir()``.
    binarize: "none" | "static" | "dynamic" | "threshold" (see ``arrays``).
    binarize_seed: seed of the "static" draw.
  """
  arrays.check_binarize(binarize)
  found = _directory(path, [name for pair in IDX_FILES.values() for name in pair],
                     "MNIST IDX", _IDX_HOW)
  splits = {}
  for split, (image_name, label_name) in IDX_FILES.items():
    image_path, label_path = found[image_name], found[label_name]
    images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
    if len(images) != len(labels):
      raise ValueError(f"{image_path} holds {len(images)} images but {label_path} holds "
                       f"{len(labels)} labels; expected one label per image. {_IDX_HOW}")
    if labels.size and labels.max() >= NUM_CLASSES:
      raise ValueError(f"{label_path}: labels span [{labels.min()}, {labels.max()}], expected "
                       f"0..{NUM_CLASSES - 1}. {_IDX_HOW}")
    splits[split] = arrays.SplitArrays(images, 255.0, labels=labels)
  sizes = {split: s.images.shape[1:] for split, s in splits.items()}
  if sizes["train"] != sizes["test"]:
    raise ValueError(
        f"{found[IDX_FILES['train'][0]]} holds images of {sizes['train']} pixels but "
        f"{found[IDX_FILES['test'][0]]} of {sizes['test']}; expected one size. {_IDX_HOW}")
  return arrays.ArrayDataset("mnist_idx", splits, image_shape=sizes["train"] + (1,),
                             num_classes=NUM_CLASSES, binarize=binarize,
                             binarize_seed=binarize_seed)


@registry.register("binarized_mnist_amat")
def binarized_mnist_amat(*, path: str | os.PathLike | None = None, binarize: str = "none",
                         binarize_seed: int = 0) -> arrays.ArrayDataset:
  """Larochelle & Murray's fixed binarised MNIST from its .amat files; no labels.

  Splits train (50,000), validation (10,000; the ``_valid`` file) and test
  (10,000), as TFDS ``binarized_mnist``. Pixels are already in {0, 1}, so
  ``binarize`` changes nothing (it is taken so one config serves every MNIST).

  Args:
    path: the directory holding ``binarized_mnist_train.amat``,
      ``binarized_mnist_valid.amat`` and ``binarized_mnist_test.amat``, each
      plain or ``.gz``; default ``shared_data_dir()``.
    binarize: "none" | "static" | "dynamic" | "threshold"; no effect.
    binarize_seed: seed of the "static" draw; no effect.
  """
  arrays.check_binarize(binarize)
  found = _directory(path, list(AMAT_FILES.values()), "binarised MNIST .amat", _AMAT_HOW)
  splits = {split: arrays.SplitArrays(read_amat(found[name]), 1.0, binary=True)
            for split, name in AMAT_FILES.items()}
  return arrays.ArrayDataset("binarized_mnist_amat", splits,
                             image_shape=(AMAT_SIDE, AMAT_SIDE, 1), num_classes=None,
                             binarize=binarize, binarize_seed=binarize_seed)
