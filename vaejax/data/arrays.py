"""Finite datasets held as arrays: per-epoch permutations and binarisation.

Batch ``step`` of a run with ``seed`` reads rows ``perm_e[o B : (o + 1) B]`` where
``e, o = divmod(step, N // B)`` and ``perm_e`` is the permutation drawn from
(seed, split, e); the last ``N mod B`` examples of each epoch are dropped.

Binarisation (images x in [0, 1]):

* ``"none"``: x as stored;
* ``"static"``: one Bernoulli(x) draw per pixel, fixed for the dataset (seeded by
  ``binarize_seed``, independent of the training seed, so all runs share it);
* ``"dynamic"``: a fresh Bernoulli(x) draw every time an image is served, keyed
  by (seed, split, step);
* ``"threshold"``: 1[x >= 1/2].

Bernoulli draws use ``u < x`` with u ~ U[0, 1), so pixels already in {0, 1}
are unchanged by every mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from vaejax.data import base
from vaejax.utils import checks

BINARIZE_MODES = ("none", "static", "dynamic", "threshold")
_CHUNK = 8192


def check_binarize(mode: Any) -> str:
  """``mode`` if it is one of :data:`BINARIZE_MODES`, else a ValueError listing them."""
  if mode not in BINARIZE_MODES:
    raise ValueError(f"binarize must be one of {list(BINARIZE_MODES)}; got {mode!r}.")
  return mode


def check_fraction(value: Any, name: str = "test_fraction", *, allow_zero: bool = False) -> float:
  """``value`` as a float in (0, 1) (or [0, 1) with ``allow_zero``), or a ValueError naming it.

  >>> check_fraction(0.2)
  0.2
  """
  relation = ">=" if allow_zero else ">"
  message = f"{name}={value!r} must be a finite number {relation} 0 and < 1."
  try:
    value = checks.check_number(value, name, minimum=0, exclusive_minimum=not allow_zero)
  except ValueError:
    raise ValueError(message) from None
  if value >= 1:
    raise ValueError(message)
  return value


def take(array: Any, idx: np.ndarray) -> np.ndarray:
  """``array[idx]`` for numpy arrays and lazy ones (h5py) that need sorted unique indices."""
  if isinstance(array, np.ndarray):
    return array[idx]
  unique, inverse = np.unique(idx, return_inverse=True)
  return np.asarray(array[unique])[inverse.reshape(-1)]


class RowView:
  """Some rows of a numpy or lazy (h5py) array, read on access and never copied whole.

  A split that is a subset of one file's rows (dSprites' held-out images) serves
  its batches through it, so the file's images stay in memory (or on disk) once.
  ``view[idx]`` is ``array[rows[idx]]``.
  """

  def __init__(self, array: Any, rows: np.ndarray):
    self.array = array
    self.rows = np.sort(np.asarray(rows, np.int64))  # sorted: h5py reads sorted indices
    self.shape = (len(self.rows),) + tuple(array.shape[1:])
    self.dtype = array.dtype

  def __getitem__(self, idx: Any) -> np.ndarray:
    return take(self.array, self.rows[idx])


@dataclasses.dataclass(frozen=True)
class SplitArrays:
  """One split's arrays.

  Attributes:
    images: (N, H, W) or (N, H, W, C), numpy or a lazy array (h5py dataset);
      ``images / max_value`` lies in [0, 1].
    max_value: 255 for uint8 images in 0..255, 1 for binary or float images.
    labels: (N,) integer class labels, or None.
    factors: (N, K) integer ground-truth factor classes, or None.
    binary: whether the values are already in {0, max_value}.
  """

  images: Any
  max_value: float = 1.0
  labels: np.ndarray | None = None
  factors: np.ndarray | None = None
  binary: bool = False

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def select(self, rows: np.ndarray) -> SplitArrays:
    """The arrays of ``rows`` (sorted), the images as a :class:`RowView` (no copy)."""
    rows = np.sort(np.asarray(rows, np.int64))

    def pick(arr: np.ndarray | None) -> np.ndarray | None:
      return None if arr is None else arr[rows]

    return dataclasses.replace(self, images=RowView(self.images, rows),
                               labels=pick(self.labels), factors=pick(self.factors))


def _binarize_stored(arrays: SplitArrays, mode: str, rng: np.random.Generator) -> SplitArrays:
  """Applies "static" or "threshold" binarisation once, in chunks, to uint8 {0, 1}."""
  out = np.empty(arrays.images.shape, np.uint8)
  for start in range(0, len(arrays), _CHUNK):
    x = np.asarray(arrays.images[start:start + _CHUNK], np.float32) / arrays.max_value
    if mode == "static":
      out[start:start + _CHUNK] = rng.random(x.shape, dtype=np.float32) < x
    else:
      out[start:start + _CHUNK] = x >= 0.5
  return dataclasses.replace(arrays, images=out, max_value=1.0, binary=True)


class ArrayDataset(base.EpochOrder, base.Dataset):
  """A finite dataset of in-memory (or lazily read) arrays, one set per split.

  >>> images = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
  >>> split = SplitArrays(images, max_value=255.0, labels=np.array([0, 1, 0, 1]))
  >>> ds = ArrayDataset("tiny", {"train": split}, image_shape=(2, 2, 1), num_classes=2)
  >>> it = ds.iterator("train", batch_size=2, seed=0)
  >>> batch = next(it)
  >>> batch["image"].shape, batch["label"].dtype
  ((2, 2, 2, 1), dtype('int32'))
  >>> it.position  # the whole iterator state: resume with start_step=it.position
  1
  """

  def __init__(self, name: str, splits: Mapping[str, SplitArrays], *,
               image_shape: tuple[int, int, int], num_classes: int | None = None,
               binarize: str = "none", binarize_seed: int = 0, ground_truth: Any = None):
    self.name = name
    self.image_shape = tuple(int(d) for d in image_shape)
    self.num_classes = num_classes
    self.binarize = check_binarize(binarize)
    binarize_seed = base.check_seed(binarize_seed, "binarize_seed")
    self.ground_truth = ground_truth
    self.splits = tuple(splits)
    self._arrays = {}
    for split, arrays in splits.items():
      self._check(split, arrays)
      if binarize in ("static", "threshold") and not arrays.binary:
        arrays = _binarize_stored(
            arrays, binarize, base.host_rng(binarize_seed, "static_binarize", split))
      self._arrays[split] = arrays

  def _check(self, split: str, arrays: SplitArrays) -> None:
    images, n = arrays.images, len(arrays)
    shape = tuple(images.shape[1:])
    if shape != self.image_shape and shape + (1,) != self.image_shape:
      raise ValueError(
          f"{self.name}/{split}: images have shape {tuple(images.shape)}, expected "
          f"(N, {', '.join(map(str, self.image_shape))}).")
    if n == 0:
      raise ValueError(f"{self.name}/{split} has no examples.")
    for key, arr, ndim in (("labels", arrays.labels, 1), ("factors", arrays.factors, 2)):
      if arr is not None and (arr.ndim != ndim or arr.shape[0] != n):
        raise ValueError(
            f"{self.name}/{split}: {key} have shape {arr.shape}, expected {ndim}-D with {n} rows.")
    labels = arrays.labels
    if labels is not None and self.num_classes is not None and (
        labels.min() < 0 or labels.max() >= self.num_classes):
      raise ValueError(f"{self.name}/{split}: labels span [{labels.min()}, {labels.max()}], "
                       f"expected [0, {self.num_classes}).")
    if isinstance(images, np.ndarray):  # lazy arrays are checked by their reader
      lo, hi = images.min(), images.max()
      if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > arrays.max_value:
        raise ValueError(
            f"{self.name}/{split}: image values span [{lo}, {hi}], expected "
            f"[0, {arrays.max_value}] with no NaN.")

  def arrays(self, split: str) -> SplitArrays:
    """The stored arrays of ``split`` (after static binarisation)."""
    return self._arrays[self.check_split(split)]

  def _get_batch(self, split: str, step: int, batch_size: int, seed: int) -> base.Batch:
    arrays = self._arrays[split]
    idx = self.batch_indices(split, step, batch_size, seed)
    image = take(arrays.images, idx).astype(np.float32)
    if arrays.max_value != 1:
      image /= np.float32(arrays.max_value)
    image = image.reshape((batch_size,) + self.image_shape)
    if self.binarize == "dynamic" and not arrays.binary:
      rng = base.host_rng(seed, "dynamic_binarize", split, step)
      image = (rng.random(image.shape, dtype=np.float32) < image).astype(np.float32)
    batch = {"image": image}
    if arrays.labels is not None:
      batch["label"] = arrays.labels[idx].astype(np.int32)
    if arrays.factors is not None:
      batch["factors"] = arrays.factors[idx].astype(np.int32)
    return batch
