"""dSprites' ground truth for the disentanglement metrics (disentanglement_lib semantics).

The factors are shape, scale, orientation, pos_x and pos_y (the constant colour
dropped), sampled uniformly and independently; observations come by rendering
(procedural dSprites, nothing materialised) or by looking rows up in the file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vaejax.data import arrays, base
from vaejax.data.dsprites import grid, renderer


class DSpritesGroundTruth(base.GroundTruthData):
  """dSprites without the constant colour: shape, scale, orientation, pos_x, pos_y."""

  factor_names = grid.GT_FACTOR_NAMES
  factor_sizes = grid.GT_FACTOR_SIZES
  observation_shape = (grid.IMAGE_SIZE, grid.IMAGE_SIZE, 1)


class RenderedDSprites(DSpritesGroundTruth):
  """Observations rendered on demand by :func:`vaejax.data.dsprites.render`.

  >>> gt = RenderedDSprites()
  >>> factors, images = gt.sample(2, np.random.default_rng(0))
  >>> factors.shape, images.shape
  ((2, 5), (2, 64, 64, 1))
  """

  def sample_observations_from_factors(self, factors: Any,
                                       rng: np.random.Generator) -> np.ndarray:
    del rng  # dSprites observations are a deterministic function of the factors.
    return renderer.render_numpy(self.check_factors(factors))


class LookupDSprites(DSpritesGroundTruth):
  """Observations looked up in the rows of a dSprites file (any subset, any order).

  A dense table maps each of the 737,280 factor combinations to its row (-1 when
  the file lacks it), so lookups cost O(num) whatever the file's order.
  """

  def __init__(self, images: Any, classes: np.ndarray):
    self._images = images
    index = grid.index_of(classes)
    if len(np.unique(index)) != len(index):
      raise ValueError("The dSprites file has repeated factor combinations.")
    self._row = np.full(grid.NUM_IMAGES, -1, np.int64)
    self._row[index] = np.arange(len(index))

  @property
  def complete(self) -> bool:
    """Whether every factor combination is present (true for the original file)."""
    return bool((self._row >= 0).all())

  def rows_of(self, factors: Any) -> np.ndarray:
    """File rows of (num, 5) factor classes; KeyError if a combination is absent."""
    rows = self._row[grid.index_of(self.check_factors(factors))]
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
