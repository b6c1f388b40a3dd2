"""MNIST in LeCun's IDX files: ``mnist_idx``.

IDX: a big-endian header, then the data, row-major::

  images  int32 magic 0x00000803, int32 N, rows, cols, then N * rows * cols uint8 in 0..255
  labels  int32 magic 0x00000801, int32 N, then N uint8 in 0..9

The magic is two zero bytes, a type code (0x08: unsigned byte) and the number of
dimensions (3 or 1). MNIST has 60,000 train (``train-*``) and 10,000 test
(``t10k-*``) images of 28 x 28 pixels; other sizes are read as they are.

Every file may be plain or gzip-compressed (``NAME`` or ``NAME.gz``, told apart
by their bytes) and is checked completely: bad magic, a header announcing more
(or fewer) bytes than follow. The size a header announces is checked against what
the file can hold before it is read, so a header claiming 10^12 images is one
error, not an allocation.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vaejax.data import arrays, files, registry
from vaejax.data.mnist.npz import NUM_CLASSES

IDX_FILES = {  # split -> (images, labels)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08
_IDX_HOW = (
    "Get the four MNIST IDX files (.gz or un-gzipped) from http://yann.lecun.com/exdb/mnist/ "
    "or a mirror (https://storage.googleapis.com/cvdf-datasets/mnist/, "
    "https://ossci-datasets.s3.amazonaws.com/mnist/) into one directory and pass it as path= "
    "(or set VAEJAX_DATA_DIR); or use the TFDS dataset 'mnist'.")
_CHUNK = 1 << 20


def _read_shape(path: Path, header: bytes, ndim: int) -> tuple[int, ...]:
  """The dimensions in an IDX header, after checking its magic and length."""
  expected_magic = (_IDX_UBYTE << 8) | ndim
  kind = "image" if ndim == 3 else "label"
  if len(header) < 4:
    raise ValueError(f"{path} is truncated: {len(header)} bytes, too short for an IDX magic "
                     f"number (expected 0x{expected_magic:08x}). {_IDX_HOW}")
  magic = int.from_bytes(header[:4], "big")
  if magic != expected_magic:
    swapped = {0x0801: "label", 0x0803: "image"}.get(magic)  # images and labels mixed up
    described = files.describe(header[:8])
    note = (f" (an IDX {swapped} file's)" if swapped
            else "" if described == "unknown binary data" else f" ({described})")
    raise ValueError(
        f"{path} has bad magic 0x{magic:08x}{note}; expected "
        f"0x{expected_magic:08x}, an IDX file of unsigned bytes with {ndim} dimension(s) "
        f"(MNIST's {kind} file). {_IDX_HOW}")
  if len(header) < 4 * (1 + ndim):
    raise ValueError(f"{path} is truncated: {len(header)} bytes, shorter than the "
                     f"{4 * (1 + ndim)}-byte header of an IDX {kind} file. {_IDX_HOW}")
  shape = tuple(int.from_bytes(header[4 * i:4 * i + 4], "big") for i in range(1, ndim + 1))
  if ndim == 3 and min(shape[1:]) < 1:
    raise ValueError(f"{path}: its header gives images of {shape[1]} x {shape[2]} pixels; "
                     f"expected rows, cols >= 1. {_IDX_HOW}")
  return shape


def _what(shape: tuple[int, ...]) -> str:
  return (f"{shape[0]} images of {shape[1]} x {shape[2]} pixels" if len(shape) == 3
          else f"{shape[0]} labels")


def _size_error(path: Path, shape: tuple[int, ...], size: int, found: int) -> ValueError:
  problem = "is too long" if found > size else "is truncated"
  return ValueError(f"{path} {problem}: its header says {_what(shape)} ({size} bytes) but "
                    f"{found} bytes follow the header. {_IDX_HOW}")


def _read_data(path: Path, f: BinaryIO, shape: tuple[int, ...], header_size: int) -> bytes:
  """Exactly the ``prod(shape)`` data bytes, checked against the file before reading."""
  size = math.prod(shape)  # Python ints: no overflow whatever the header says
  can_hold = files.max_content_bytes(path) - header_size
  if not files.is_gzip(path) and can_hold != size:
    raise _size_error(path, shape, size, can_hold)
  if size > can_hold:
    raise ValueError(
        f"{path} is truncated: its header says {_what(shape)} ({size} bytes) but a gzip file "
        f"of {path.stat().st_size} bytes holds at most {can_hold} bytes of data. {_IDX_HOW}")
  data = f.read(size)
  extra = 0
  while chunk := f.read(_CHUNK):  # counted, not kept
    extra += len(chunk)
  if len(data) != size or extra:
    raise _size_error(path, shape, size, len(data) + extra)
  return data


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
  header_size = 4 * (1 + ndim)
  with files.open_binary(path, _IDX_HOW) as f:
    shape = _read_shape(path, f.read(header_size), ndim)
    data = _read_data(path, f, shape, header_size)
  return np.frombuffer(data, np.uint8).reshape(shape)


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
  found = files.find_all(path, [name for pair in IDX_FILES.values() for name in pair],
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
