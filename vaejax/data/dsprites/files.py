"""Readers of DeepMind's dSprites file, npz or HDF5, with no code run from the file.

DeepMind's npz holds ``imgs`` uint8 (737280, 64, 64), ``latents_classes`` int64
(737280, 6), ``latents_values`` float64 (737280, 6) and ``metadata``, a pickled
dict (names, sizes, possible values, author, date). The three arrays read with
``allow_pickle=False``; ``metadata`` is never read: unpickling runs whatever code
the file names (a crafted ``metadata`` could write files or start processes), and
everything it says the project already has as constants (:mod:`.grid`), checked
against the arrays themselves (classes inside the grid, values equal to the grid's
values of the classes). The HDF5 variant holds ``imgs``, ``latents/classes`` and
``latents/values`` (images stay on disk and are read on demand).

Sizes are checked before anything is read: an npy header or HDF5 dataspace must
describe at most the 737,280 images of the grid, and an npz member's header must
announce exactly the bytes the member holds (:func:`vaejax.data.files.npz_headers`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from vaejax.data import files as data_files
from vaejax.data.dsprites.grid import (
    FACTOR_NAMES,
    FACTOR_SIZES,
    IMAGE_SIZE,
    NUM_IMAGES,
    factor_values,
)

DEEPMIND_FILENAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DEEPMIND_URL = "https://github.com/google-deepmind/dsprites-dataset"
HOW_TO_GET = (
    f"Download {DEEPMIND_FILENAME} (or the .hdf5 variant) from {DEEPMIND_URL} and pass "
    "its path, or use the dataset name 'dsprites_procedural' (rendered on the fly, no file).")
_NPZ_KEYS = ("imgs", "latents_classes", "latents_values")
_HDF5_KEYS = ("imgs", "latents/classes", "latents/values")


@dataclasses.dataclass(frozen=True)
class DSpritesArrays:
  """dSprites arrays in the original layout, whatever the source.

  Attributes:
    images: (N, 64, 64) uint8 in {0, 1}; a numpy array or, for HDF5, a lazy
      h5py dataset (index it with sorted indices).
    classes: (N, 6) int64 factor classes (DeepMind layout).
    values: (N, 6) float64 factor values (``latents_values``).
    source: where the arrays came from, for messages.
  """

  images: Any
  classes: np.ndarray
  values: np.ndarray
  source: str


class _Invalid(ValueError):
  """A file that is not a valid dSprites file (one message shape for every check)."""

  def __init__(self, source: str, what: str):
    super().__init__(f"{source} is not a valid dSprites file: {what}. {HOW_TO_GET}")


def check_shapes(images_shape: tuple[int, ...], classes_shape: tuple[int, ...],
                 values_shape: tuple[int, ...], source: str) -> int:
  """The number of images N, once the shapes are (N, 64, 64), (N, 6), (N, 6) with N within
  the grid; checked on the shapes a file announces, before its arrays are read."""
  images_shape = tuple(images_shape)
  if len(images_shape) != 3 or images_shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
    raise _Invalid(source, f"images have shape {images_shape}, expected (N, 64, 64)")
  n = images_shape[0]
  if n > NUM_IMAGES:
    raise _Invalid(source, f"{n} images announced, more than the {NUM_IMAGES} of the "
                   "dSprites grid")
  if tuple(classes_shape) != (n, 6) or tuple(values_shape) != (n, 6):
    raise _Invalid(source, f"latents classes {tuple(classes_shape)} / values "
                   f"{tuple(values_shape)}, expected ({n}, 6) each")
  return n


def _check_values(classes: np.ndarray, values: np.ndarray, source: str) -> None:
  """Values must be finite and equal the grid's values of the classes."""
  if values.dtype.kind not in "biuf":
    raise _Invalid(source, f"latents values have dtype {values.dtype}, expected floats")
  finite = np.isfinite(values)
  if not finite.all():
    col = int(np.nonzero(~finite.all(0))[0][0])
    kind = "NaN" if np.isnan(values[:, col]).any() else "infinite"
    count = int((~finite[:, col]).sum())
    raise _Invalid(source, f"latents values are {kind} in column '{FACTOR_NAMES[col]}' "
                   f"({count} of {len(values)} rows)")
  expected = factor_values(classes)
  agree = np.isclose(values, expected, atol=1e-4)
  if not agree.all():
    col = int(np.nonzero(~agree.all(0))[0][0])
    raise _Invalid(source,
                   f"latents values disagree with the classes in column '{FACTOR_NAMES[col]}'")


def validate_arrays(images: Any, classes: Any, values: Any, source: str) -> DSpritesArrays:
  """Checks shapes, ranges and the classes/values agreement; one clear ValueError."""
  classes, values = np.asarray(classes), np.asarray(values)
  n = check_shapes(images.shape, classes.shape, values.shape, source)
  if not np.issubdtype(classes.dtype, np.integer):
    raise _Invalid(source, f"latents classes have dtype {classes.dtype}, expected integers")
  if n and ((classes < 0) | (classes >= np.asarray(FACTOR_SIZES))).any():
    raise _Invalid(source, f"latents classes outside the factor sizes {FACTOR_SIZES}")
  if n:
    _check_values(classes, values, source)
  # numpy images are checked whole; a lazy HDF5 dataset on a prefix (it stays on disk).
  sample = images if isinstance(images, np.ndarray) else np.asarray(images[:min(n, 4096)])
  if sample.size and (sample.min() < 0 or sample.max() > 1):
    raise _Invalid(source, f"image values span [{sample.min()}, {sample.max()}], expected "
                   "{0, 1}")
  return DSpritesArrays(images, classes.astype(np.int64), values.astype(np.float64), source)


def _read_npz(path: Path) -> DSpritesArrays:
  what = "a dSprites npz"
  headers = data_files.npz_headers(path, _NPZ_KEYS, what, HOW_TO_GET)
  missing = [key for key in _NPZ_KEYS if key not in headers]
  if missing:
    found = data_files.npz_member_names(path, what, HOW_TO_GET)
    raise ValueError(f"{path} is not a DeepMind dSprites npz: missing keys {sorted(missing)} "
                     f"(found {sorted(found)}). {HOW_TO_GET}")
  check_shapes(*(headers[key].shape for key in _NPZ_KEYS), str(path))
  arrays = data_files.load_npz_arrays(path, _NPZ_KEYS, what, HOW_TO_GET)
  return validate_arrays(*(arrays[key] for key in _NPZ_KEYS), str(path))


def _read_hdf5(path: Path) -> DSpritesArrays:
  import h5py  # pylint: disable=g-import-not-at-top  # optional dependency

  try:
    h5 = h5py.File(path, "r")
  except OSError as e:
    raise ValueError(f"Could not read {path} as HDF5 ({e}). {HOW_TO_GET}") from e
  for key in _HDF5_KEYS:
    if key not in h5 or not isinstance(h5[key], h5py.Dataset):
      found = []
      h5.visit(found.append)
      raise ValueError(
          f"{path} is not a DeepMind dSprites HDF5 file: missing '{key}' "
          f"(found {sorted(found)}). {HOW_TO_GET}")
  images, classes, values = (h5[key] for key in _HDF5_KEYS)
  check_shapes(images.shape, classes.shape, values.shape, str(path))
  for key, dataset in zip(_HDF5_KEYS, (images, classes, values)):
    if dataset.dtype.kind not in "biuf":
      raise _Invalid(str(path), f"'{key}' has dtype {dataset.dtype}, expected numbers")
  return validate_arrays(images, classes[()], values[()], str(path))


def load_deepmind_file(path: str | Path) -> DSpritesArrays:
  """Reads DeepMind's dSprites npz or HDF5 file (format detected from its bytes).

  npz: ``imgs``, ``latents_classes``, ``latents_values`` (``metadata`` is never
  unpickled). HDF5: ``imgs``, ``latents/classes``, ``latents/values`` (images
  stay on disk and are read on demand).

  Raises:
    FileNotFoundError: no file at ``path`` (says how to get it).
    ValueError: a directory, an unreadable file, missing keys, object arrays,
      wrong shapes or values.
  """
  path = data_files.require_file(Path(path).expanduser(), "dSprites file", HOW_TO_GET)
  magic = data_files.head(path)
  if magic.startswith(b"PK"):
    return _read_npz(path)
  if magic.startswith(b"\x89HDF"):
    return _read_hdf5(path)
  raise ValueError(
      f"{path} is not an npz file (nor HDF5): it holds {data_files.describe(magic)} (first "
      f"bytes {magic!r}); expected DeepMind's dSprites npz (a zip of .npy arrays) or its HDF5 "
      f"file. {HOW_TO_GET}")
