"""Larochelle & Murray's fixed binarisation of MNIST in .amat files: ``binarized_mnist_amat``.

The binarisation behind the published MNIST log-likelihoods (Larochelle & Murray
2011): plain text, one image per line as 784 = 28 x 28 space-separated 0/1 values,
row-major; 50,000 train, 10,000 valid, 10,000 test images; no labels.

Every file may be plain or gzip-compressed (``NAME`` or ``NAME.gz``, told apart by
their bytes). Files are read line by line and checked completely: a line without
exactly 784 values, a value other than 0 or 1. A line longer than
:data:`MAX_LINE_BYTES` (a valid one has about 1,570) is an error as soon as it is
met, so a file of one huge line is never held in memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vaejax.data import arrays, files, registry

AMAT_FILES = {
    "train": "binarized_mnist_train.amat",
    "validation": "binarized_mnist_valid.amat",
    "test": "binarized_mnist_test.amat",
}
AMAT_SIDE = 28
MAX_LINE_BYTES = 1 << 16  # 40x a valid line (784 values, single spaces, CR LF)
_WIDTH = AMAT_SIDE * AMAT_SIDE
_AMAT_HOW = (
    "Get binarized_mnist_{train,valid,test}.amat (Larochelle & Murray's fixed binarisation, "
    "as used by the IWAE code) from "
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/ into one directory "
    "and pass it as path= (or set VAEJAX_DATA_DIR); or use the TFDS dataset "
    "'binarized_mnist'.")
_EXPECTED = (f"expected {_WIDTH} space-separated 0/1 values (one {AMAT_SIDE} x {AMAT_SIDE} "
             "image per line)")


def _rest_is_blank(f: BinaryIO) -> bool:
  """Whether everything left in ``f`` is whitespace (read in chunks, not kept)."""
  while chunk := f.read(1 << 20):
    if chunk.strip():
      return False
  return True


def _lines(path: Path, f: BinaryIO):
  """(number, values) of each non-blank line; blank lines only at the end."""
  blank = None  # the first blank line since the last image
  number = 0
  while line := f.readline(MAX_LINE_BYTES + 1):
    number += 1
    if len(line) > MAX_LINE_BYTES:
      raise ValueError(f"{path}, line {number}: longer than {MAX_LINE_BYTES} bytes; "
                       f"{_EXPECTED}. {_AMAT_HOW}")
    values = line.split()
    if not values:
      blank = blank or number
      continue
    if blank is not None:  # a blank line between images
      raise ValueError(f"{path}, line {blank}: 0 values, {_EXPECTED}. {_AMAT_HOW}")
    yield number, values


def read_amat(path: str | os.PathLike) -> np.ndarray:
  """Reads a binarised-MNIST .amat file (plain or gzip) as uint8 (N, 28, 28) in {0, 1}.

  Blank lines at the end are ignored; every other line must hold exactly 784
  values, each "0" or "1".

  Raises:
    ValueError: a line with another number of values (the message gives its
      number, and whether the file looks truncated), a line over
      :data:`MAX_LINE_BYTES`, a value other than 0 or 1, or no images at all.
  """
  path = Path(path)
  rows = []
  with files.open_binary(path, _AMAT_HOW) as f:
    for number, values in _lines(path, f):
      if len(values) != _WIDTH:
        truncated = len(values) < _WIDTH and _rest_is_blank(f)
        where = " (the last line: the file looks truncated)" if truncated else ""
        raise ValueError(f"{path}, line {number}{where}: {len(values)} values, {_EXPECTED}. "
                         f"{_AMAT_HOW}")
      row = b"".join(values)
      if len(row) != _WIDTH:  # a value longer than one character
        bad = next(v for v in values if len(v) != 1)
        raise ValueError(f"{path}, line {number}: value {bad.decode(errors='replace')!r}, "
                         f"expected 0 or 1. {_AMAT_HOW}")
      rows.append(row)
  if not rows:
    raise ValueError(f"{path} holds no images; expected one line of {_WIDTH} 0/1 values per "
                     f"image. {_AMAT_HOW}")
  chars = np.frombuffer(b"".join(rows), np.uint8).reshape(-1, AMAT_SIDE, AMAT_SIDE)
  pixels = chars - np.uint8(ord("0"))  # wraps: anything but "0"/"1" lands above 1
  bad = np.flatnonzero(pixels.reshape(-1) > 1)
  if bad.size:
    line = int(bad[0]) // _WIDTH  # images sit on consecutive lines from line 1
    raise ValueError(f"{path}, line {line + 1}: value {chr(chars.reshape(-1)[bad[0]])!r}, "
                     f"expected 0 or 1. {_AMAT_HOW}")
  return pixels


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
  found = files.find_all(path, list(AMAT_FILES.values()), "binarised MNIST .amat", _AMAT_HOW)
  splits = {split: arrays.SplitArrays(read_amat(found[name]), 1.0, binary=True)
            for split, name in AMAT_FILES.items()}
  return arrays.ArrayDataset("binarized_mnist_amat", splits,
                             image_shape=(AMAT_SIDE, AMAT_SIDE, 1), num_classes=None,
                             binarize=binarize, binarize_seed=binarize_seed)
