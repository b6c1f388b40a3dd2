"""Ground-truth access for the disentanglement metrics (disentanglement_lib semantics).

A :class:`GroundTruthData` samples factor classes uniformly and independently and
returns observations for any given factors: by rendering (procedural dSprites,
nothing materialised) or by looking rows up in the original file.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from vaejax.data import arrays, base, dsprites


def _check_rng(rng: Any) -> np.random.Generator:
  if not isinstance(rng, np.random.Generator):
    raise TypeError(f"rng must be a numpy Generator (np.random.default_rng); got {type(rng)}.")
  return rng


class GroundTruthData(abc.ABC):
  """Factors of variation and the observations they generate.

  Attributes:
    factor_names: one name per factor.
    factor_sizes: number of classes of each factor.
    observation_shape: (H, W, C) of one observation.
  """

  factor_names: tuple[str, ...]
  factor_sizes: tuple[int, ...]
  observation_shape: tuple[int, int, int]

  @property
  def num_factors(self) -> int:
    return len(self.factor_sizes)

  def sample_factors(self, num: int, rng: np.random.Generator) -> np.ndarray:
    """(num, K) int64 classes, each factor uniform on range(size), independent."""
    num = base.check_int("num", num)
    _check_rng(rng)
    return np.stack([rng.integers(0, s, size=num) for s in self.factor_sizes],
                    axis=1).astype(np.int64)

  def check_factors(self, factors: Any) -> np.ndarray:
    """Returns ``factors`` as (num, K) int64, or raises naming the bad column."""
    arr = np.asarray(factors)
    if arr.ndim != 2 or arr.shape[1] != self.num_factors:
      raise ValueError(
          f"factors must have shape (num, {self.num_factors}) for {self.factor_names}; "
          f"got {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"factors must be integer classes; got dtype {arr.dtype}.")
    bad = (arr < 0) | (arr >= np.asarray(self.factor_sizes))
    if bad.any():
      col = int(np.nonzero(bad.any(0))[0][0])
      raise ValueError(
          f"factor '{self.factor_names[col]}' must be in [0, {self.factor_sizes[col]}); "
          f"got {np.unique(arr[bad[:, col], col])[:5].tolist()}.")
    return arr.astype(np.int64)

  @abc.abstractmethod
  def sample_observations_from_factors(self, factors: Any,
                                       rng: np.random.Generator) -> np.ndarray:
    """(num, H, W, C) float32 observations for (num, K) factor classes."""

  def sample(self, num: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(factors, observations) for ``num`` uniformly sampled factor vectors."""
    factors = self.sample_factors(num, rng)
    return factors, self.sample_observations_from_factors(factors, rng)


class DSpritesGroundTruth(GroundTruthData):
  """dSprites without the constant colour: shape, scale, orientation, pos_x, pos_y."""

  factor_names = dsprites.GT_FACTOR_NAMES
  factor_sizes = dsprites.GT_FACTOR_SIZES
  observation_shape = (dsprites.IMAGE_SIZE, dsprites.IMAGE_SIZE, 1)


class RenderedDSprites(DSpritesGroundTruth):
  """Observations rendered on demand by :func:`vaejax.data.dsprites.render`."""

  def sample_observations_from_factors(self, factors: Any,
                                       rng: np.random.Generator) -> np.ndarray:
    del rng  # dSprites observations are a deterministic function of the factors.
    return dsprites.render_numpy(self.check_factors(factors))


class LookupDSprites(DSpritesGroundTruth):
  """Observations looked up in the rows of a dSprites file (any subset, any order).

  A dense table maps each of the 737,280 factor combinations to its row (-1 when
  the file lacks it), so lookups cost O(num) whatever the file's order.
  """

  def __init__(self, images: Any, classes: np.ndarray):
    self._images = images
    index = dsprites.index_of(classes)
    if len(np.unique(index)) != len(index):
      raise ValueError("The dSprites file has repeated factor combinations.")
    self._row = np.full(dsprites.NUM_IMAGES, -1, np.int64)
    self._row[index] = np.arange(len(index))

  @property
  def complete(self) -> bool:
    """Whether every factor combination is present (true for the original file)."""
    return bool((self._row >= 0).all())

  def rows_of(self, factors: Any) -> np.ndarray:
    """File rows of (num, 5) factor classes; KeyError if a combination is absent."""
    rows = self._row[dsprites.index_of(self.check_factors(factors))]
    if (rows < 0).any():
      missing = np.asarray(factors)[rows < 0][:3].tolist()
      raise KeyError(
          f"Factor combinations {missing} (of {self.factor_names}) are not in this dSprites "
          "file; only a complete file supports arbitrary factors.")
    return rows

  def sample_observations_from_factors(self, factors: Any,
                                       rng: np.random.Generator) -> np.ndarray:
    del rng
    images = arrays.take(self._images, self.rows_of(factors))
    return images.astype(np.float32)[..., None]
