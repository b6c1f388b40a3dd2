"""The dSprites factor grid (Matthey et al. 2017) and DeepMind's index arithmetic.

The dataset is every combination of six factors, stored with the last factor varying
fastest::

  color (1) x shape (3: square, ellipse, heart) x scale (6) x orientation (40)
  x pos_x (32) x pos_y (32) = 737,280 images of 64 x 64 binary pixels.

Index arithmetic (DeepMind's): ``index = sum_i class_i * base_i`` with
``base = (737280, 245760, 40960, 1024, 32, 1)``.

Functions taking factor classes accept the DeepMind layout ``(..., 6)`` or the
layout without the constant colour, ``(..., 5)`` (the ground-truth factors that
disentanglement_lib uses); the last dimension tells them apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FACTOR_NAMES = ("color", "shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (1, 3, 6, 40, 32, 32)
NUM_IMAGES = int(np.prod(FACTOR_SIZES))  # 737,280
IMAGE_SIZE = 64
SHAPE_NAMES = ("square", "ellipse", "heart")
# Ground-truth factors for the metrics: the constant colour dropped.
GT_FACTOR_NAMES = FACTOR_NAMES[1:]
GT_FACTOR_SIZES = FACTOR_SIZES[1:]
# DeepMind's bases: (737280, 245760, 40960, 1024, 32, 1).
BASES = tuple(int(np.prod(FACTOR_SIZES[i + 1:])) for i in range(len(FACTOR_SIZES)))


def as_classes(classes: Any) -> np.ndarray:
  """Validates host classes of shape (..., 6) or (..., 5) and returns int64."""
  arr = np.asarray(classes)
  if arr.ndim == 0 or arr.shape[-1] not in (5, 6):
    raise ValueError(
        f"dSprites factor classes must have shape (..., 6) (DeepMind layout "
        f"{FACTOR_NAMES}) or (..., 5) (without color); got shape {arr.shape}.")
  if arr.dtype.kind not in "biuf" or (arr.dtype.kind == "f" and not (
      np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))):
    raise ValueError(f"dSprites factor classes must be integers; got dtype {arr.dtype}.")
  arr = arr.astype(np.int64)
  sizes = np.asarray(FACTOR_SIZES[-arr.shape[-1]:])
  bad = (arr < 0) | (arr >= sizes)
  if bad.any():
    col = int(np.nonzero(bad.reshape(-1, arr.shape[-1]).any(0))[0][0])
    names = FACTOR_NAMES[-arr.shape[-1]:]
    vals = np.unique(arr[..., col][bad[..., col]])[:5]
    raise ValueError(
        f"dSprites factor '{names[col]}' must be in [0, {sizes[col]}); got {vals.tolist()}.")
  return arr


def to_full_classes(classes: Any) -> np.ndarray:
  """Returns classes in the DeepMind layout (..., 6), adding color 0 if absent.

  >>> to_full_classes([2, 5, 39, 31, 31]).tolist()
  [0, 2, 5, 39, 31, 31]
  """
  arr = as_classes(classes)
  if arr.shape[-1] == 5:
    arr = np.concatenate([np.zeros(arr.shape[:-1] + (1,), np.int64), arr], axis=-1)
  return arr


def index_of(classes: Any) -> np.ndarray:
  """Row of each factor-class tuple in the original file: sum_i class_i * base_i.

  >>> int(index_of([0, 2, 5, 39, 31, 31]))  # the last image of the file
  737279
  >>> index_of([[0, 0, 0, 0, 1], [1, 0, 0, 0, 0]]).tolist()  # (..., 5): without color
  [1, 245760]
  """
  full = to_full_classes(classes)
  return full @ np.asarray(BASES, np.int64)


def classes_of(index: Any) -> np.ndarray:
  """Inverse of :func:`index_of`: (...,) indices -> (..., 6) classes (pos_y fastest).

  >>> classes_of(1024 + 33).tolist()
  [0, 0, 0, 1, 1, 1]
  """
  idx = np.asarray(index)
  if not np.issubdtype(idx.dtype, np.integer):
    raise ValueError(f"dSprites indices must be integers; got dtype {idx.dtype}.")
  if idx.size and (idx.min() < 0 or idx.max() >= NUM_IMAGES):
    raise ValueError(
        f"dSprites indices must be in [0, {NUM_IMAGES}); got range "
        f"[{idx.min()}, {idx.max()}].")
  idx = idx.astype(np.int64)
  return np.stack([(idx // b) % s for b, s in zip(BASES, FACTOR_SIZES)], axis=-1)


def factor_values(classes: Any) -> np.ndarray:
  """Float factor values as in the original ``latents_values`` (same width as input).

  color = 1; shape in {1, 2, 3}; scale = linspace(0.5, 1, 6);
  orientation = linspace(0, 2 pi, 40) (both ends, so classes 0 and 39 coincide);
  pos_x, pos_y = linspace(0, 1, 32).

  >>> factor_values([0, 2, 5, 0, 0, 31]).tolist()
  [1.0, 3.0, 1.0, 0.0, 0.0, 1.0]
  """
  arr = as_classes(classes)
  grids = (np.ones(1), np.arange(1.0, 4.0), np.linspace(0.5, 1.0, 6),
           np.linspace(0.0, 2 * np.pi, 40), np.linspace(0.0, 1.0, 32),
           np.linspace(0.0, 1.0, 32))[-arr.shape[-1]:]
  return np.stack([g[arr[..., i]] for i, g in enumerate(grids)], axis=-1)
