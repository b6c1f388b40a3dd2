"""MNIST (or any grey images with labels 0..9) from one npz file: ``mnist_npz``.

The offline default is the project's ``../shared/data/mnist10k.npz`` (10,000 real
digits). The file is read with ``allow_pickle=False`` after its members' headers
are checked (:func:`vaejax.data.files.npz_headers`): object arrays and headers
announcing more bytes than the file holds are errors, never unpickled or allocated.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vaejax.data import arrays, files, registry

NUM_CLASSES = 10
NPZ_FILENAME = "mnist10k.npz"
_KEYS = ("images", "labels")
_HOW = ("Expected an npz with 'images' (N, H, W) or (N, H, W, 1) grey images of any size "
        "(MNIST's are 28 x 28), uint8 in 0..255 or float in [0, 1], and 'labels' (N,) "
        f"integers in 0..9, such as the project's ../shared/data/{NPZ_FILENAME} "
        "(pass path= or set VAEJAX_DATA_DIR); or use the TFDS dataset 'mnist'.")


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
  """The ``images`` and ``labels`` arrays of the npz, safely read."""
  files.require_file(path, "MNIST npz", _HOW)
  files.check_npz(path, _HOW)
  headers = files.npz_headers(path, _KEYS, "an npz", _HOW)
  missing = {"images", "labels"} - set(headers)
  if missing:
    found = files.npz_member_names(path, "an npz", _HOW)
    raise ValueError(f"{path}: missing keys {sorted(missing)} (found {sorted(found)}). {_HOW}")
  loaded = files.load_npz_arrays(path, _KEYS, "an npz", _HOW)
  return loaded["images"], loaded["labels"]


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
  """Validated (images (N, H, W, 1), labels (N,), max_value) from an MNIST npz."""
  images, labels = _load(path)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim != 3 or min(images.shape[1:]) < 1:
    raise ValueError(
        f"{path}: images have shape {images.shape}, expected (N, H, W) or (N, H, W, 1). {_HOW}")
  if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"{path}: labels have shape {labels.shape} and dtype {labels.dtype}, expected "
        f"({images.shape[0]},) integers. {_HOW}")
  if np.issubdtype(images.dtype, np.integer):
    if images.min() < 0 or images.max() > 255:
      raise ValueError(f"{path}: integer images span [{images.min()}, {images.max()}], "
                       f"expected 0..255. {_HOW}")
    return images.astype(np.uint8)[..., None], labels.astype(np.int32), 255.0
  if images.dtype.kind == "f":
    if not np.isfinite(images).all():
      raise ValueError(f"{path}: float images must be finite; found NaN or inf. {_HOW}")
    if images.min() < 0 or images.max() > 1:
      raise ValueError(f"{path}: float images must be in [0, 1]; got "
                       f"[{images.min()}, {images.max()}]. {_HOW}")
    return images.astype(np.float32)[..., None], labels.astype(np.int32), 1.0
  raise ValueError(f"{path}: images have dtype {images.dtype}. {_HOW}")


@registry.register("mnist_npz")
def mnist_npz(*, path: str | os.PathLike | None = None, test_fraction: float = 0.2,
              binarize: str = "none", binarize_seed: int = 0) -> arrays.ArrayDataset:
  """MNIST digits (or any grey images with labels 0..9) from an npz with ``images``, ``labels``.

  ``images`` is (N, H, W) or (N, H, W, 1), uint8 in 0..255 or float in [0, 1],
  of any size: the dataset's ``image_shape`` is (H, W, 1), and models are built
  from it. ``labels`` is (N,) integers in 0..9.

  The split is fixed, not seeded: the last ``round(N * test_fraction)`` rows are
  "test", the rest "train" (the shipped mnist10k.npz is already shuffled).

  Args:
    path: the npz; default ``shared_data_dir() / "mnist10k.npz"``.
    test_fraction: share of rows held out, in (0, 1).
    binarize: "none" | "static" | "dynamic" | "threshold" (see ``arrays``).
    binarize_seed: seed of the "static" draw.
  """
  path = Path(path).expanduser() if path is not None else files.shared_data_dir() / NPZ_FILENAME
  arrays.check_binarize(binarize)
  test_fraction = arrays.check_fraction(test_fraction)
  images, labels, max_value = _read_npz(path)
  n = len(images)
  n_test = round(n * test_fraction)
  if not 0 < n_test < n:
    raise ValueError(f"test_fraction {test_fraction} leaves an empty split of the {n} rows.")
  cut = n - n_test
  splits = {
      "train": arrays.SplitArrays(images[:cut], max_value, labels=labels[:cut]),
      "test": arrays.SplitArrays(images[cut:], max_value, labels=labels[cut:]),
  }
  return arrays.ArrayDataset("mnist_npz", splits, image_shape=images.shape[1:],
                             num_classes=NUM_CLASSES, binarize=binarize,
                             binarize_seed=binarize_seed)
