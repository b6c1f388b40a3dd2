"""MNIST: from an npz file (offline) or from TFDS (``mnist``, ``binarized_mnist``).

LeCun's IDX files and the binarised .amat files are read by ``mnist_files``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from vaejax.data import arrays, files, registry, tfds_io

NUM_CLASSES = 10
NPZ_FILENAME = "mnist10k.npz"


def shared_data_dir() -> Path:
  """``$VAEJAX_DATA_DIR``, else the project's ``<repo root>/../shared/data``."""
  env = os.environ.get("VAEJAX_DATA_DIR")
  return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
  """Validated (images (N, H, W, 1), labels (N,), max_value) from an MNIST npz."""
  how = ("Expected an npz with 'images' (N, H, W) or (N, H, W, 1) grey images of any size "
         "(MNIST's are 28 x 28), uint8 in 0..255 or float in [0, 1], and 'labels' (N,) "
         f"integers in 0..9, such as the project's ../shared/data/{NPZ_FILENAME} "
         "(pass path= or set VAEJAX_DATA_DIR); or use the TFDS dataset 'mnist'.")
  if not path.is_file():
    raise FileNotFoundError(f"No MNIST npz at {path.resolve()}. {how}")
  files.check_npz(path, how)
  try:
    with np.load(path, allow_pickle=False) as data:
      missing = {"images", "labels"} - set(data.files)
      if missing:
        raise ValueError(
            f"{path}: missing keys {sorted(missing)} (found {sorted(data.files)}). {how}")
      images, labels = data["images"], data["labels"]
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise ValueError(f"Could not read {path} as an npz ({e}). {how}") from e
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim != 3 or min(images.shape[1:]) < 1:
    raise ValueError(
        f"{path}: images have shape {images.shape}, expected (N, H, W) or (N, H, W, 1). {how}")
  if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"{path}: labels have shape {labels.shape} and dtype {labels.dtype}, expected "
        f"({images.shape[0]},) integers. {how}")
  if np.issubdtype(images.dtype, np.integer):
    if images.min() < 0 or images.max() > 255:
      raise ValueError(f"{path}: integer images span [{images.min()}, {images.max()}], "
                       f"expected 0..255. {how}")
    return images.astype(np.uint8)[..., None], labels.astype(np.int32), 255.0
  if images.dtype.kind == "f":
    if not np.isfinite(images).all():
      raise ValueError(f"{path}: float images must be finite; found NaN or inf. {how}")
    if images.min() < 0 or images.max() > 1:
      raise ValueError(f"{path}: float images must be in [0, 1]; got "
                       f"[{images.min()}, {images.max()}]. {how}")
    return images.astype(np.float32)[..., None], labels.astype(np.int32), 1.0
  raise ValueError(f"{path}: images have dtype {images.dtype}. {how}")


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
  path = Path(path).expanduser() if path is not None else shared_data_dir() / NPZ_FILENAME
  arrays.check_binarize(binarize)
  if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not (
      0 < test_fraction < 1):
    raise ValueError(f"test_fraction must be a number in (0, 1); got {test_fraction!r}.")
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


def _from_tfds(name: str, data_dir: Any, binarize: str, binarize_seed: int, *,
               labelled: bool, max_value: float) -> arrays.ArrayDataset:
  arrays.check_binarize(binarize)
  builder = tfds_io.prepared_builder(
      name, None if data_dir is None else os.fspath(data_dir),
      alternative=f"'mnist_npz' (an npz such as ../shared/data/{NPZ_FILENAME})")
  splits = {}
  for split in tfds_io.split_names(builder):
    raw = tfds_io.read_split(builder, split)
    need = {"image", "label"} if labelled else {"image"}
    if need - set(raw):
      raise ValueError(f"TFDS {name}/{split} lacks features {sorted(need - set(raw))}; "
                       f"found {sorted(raw)}.")
    labels = raw["label"].astype(np.int32) if labelled else None
    splits[split] = arrays.SplitArrays(raw["image"], max_value, labels=labels,
                                       binary=max_value == 1.0)
  return arrays.ArrayDataset(name, splits, image_shape=(28, 28, 1),
                             num_classes=NUM_CLASSES if labelled else None,
                             binarize=binarize, binarize_seed=binarize_seed)


@registry.register("mnist")
def mnist(*, data_dir: str | os.PathLike | None = None, binarize: str = "none",
          binarize_seed: int = 0) -> arrays.ArrayDataset:
  """TFDS ``mnist`` (train 60,000 / test 10,000, uint8 0..255) from ``data_dir``."""
  return _from_tfds("mnist", data_dir, binarize, binarize_seed, labelled=True, max_value=255.0)


@registry.register("binarized_mnist")
def binarized_mnist(*, data_dir: str | os.PathLike | None = None, binarize: str = "none",
                    binarize_seed: int = 0) -> arrays.ArrayDataset:
  """TFDS ``binarized_mnist`` (Larochelle's fixed binarisation; train/validation/test).

  Pixels are already in {0, 1}, so ``binarize`` changes nothing; there are no labels.
  """
  return _from_tfds("binarized_mnist", data_dir, binarize, binarize_seed, labelled=False,
                    max_value=1.0)
