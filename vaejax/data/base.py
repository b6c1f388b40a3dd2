"""The dataset protocol all vaejax datasets follow, and its resumable iterator.

Every dataset serves batches by *random access*: ``get_batch(split, step,
batch_size, seed)`` is a pure function of its arguments, so a run's data order is
fixed by its seed and a checkpoint only has to store the next step
(``BatchIterator.position``) to resume bit-identically.

Randomness on the host comes from numpy ``Generator``s seeded by
``SeedSequence((seed, purpose, split, counter))``: every (purpose, split,
counter) gets its own independent stream, none is ever reused.
"""

from __future__ import annotations

import abc
import numbers
import types
import zlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from vaejax.types import DataSpec

if TYPE_CHECKING:
  from vaejax.data.ground_truth import GroundTruthData

Batch = dict[str, np.ndarray]
JaxSampler = Callable[[jax.Array, int], dict[str, jax.Array]]
MAX_SEED = 2**32  # jax.random.key silently wraps larger seeds onto smaller ones.


def check_int(name: str, value: Any, minimum: int = 0, maximum: int | None = None) -> int:
  """Returns ``value`` as an int, or raises ValueError naming it and the allowed range."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    # ValueError like every other bad config value, so callers catch one type.
    raise ValueError(  # noqa: TRY004
        f"{name} must be an integer; got {value!r} ({type(value).__name__}).")
  value = int(value)
  if value < minimum or (maximum is not None and value >= maximum):
    upper = "" if maximum is None else f", < {maximum}"
    raise ValueError(f"{name} must be >= {minimum}{upper}; got {value}.")
  return value


def stream_id(name: str) -> int:
  """A stable 31-bit integer for a string (split names, purposes), for seeding."""
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


def host_rng(seed: int, purpose: str, split: str, counter: int = 0) -> np.random.Generator:
  """An independent numpy Generator for (seed, purpose, split, counter)."""
  return np.random.default_rng(
      np.random.SeedSequence([seed, stream_id(purpose), stream_id(split), counter]))


class Dataset(abc.ABC):
  """A named dataset serving batches ``{"image", ["label"], ["factors"]}``.

  Attributes:
    name: the registry name.
    image_shape: (H, W, C).
    num_classes: number of label classes, or None when there are no labels.
    splits: the split names this dataset has.
    ground_truth: a :class:`~vaejax.data.ground_truth.GroundTruthData` for
      datasets with known generative factors (dSprites), else None.
    config: the validated config :func:`vaejax.data.load` built it from.
  """

  name: str
  image_shape: tuple[int, int, int]
  num_classes: int | None = None
  splits: tuple[str, ...] = ("train", "test")
  ground_truth: GroundTruthData | None = None
  config: Mapping[str, Any] = types.MappingProxyType({})

  @property
  def spec(self) -> DataSpec:
    """What the batches hold (:class:`vaejax.types.DataSpec`), for building a model."""
    return DataSpec.images(self.image_shape, self.num_classes)

  def check_split(self, split: str) -> str:
    if split not in self.splits:
      raise ValueError(
          f"Dataset '{self.name}' has no split {split!r}; its splits are {list(self.splits)}.")
    return split

  @abc.abstractmethod
  def num_examples(self, split: str) -> int | None:
    """Number of examples in ``split``; None when unbounded (procedural data)."""

  @abc.abstractmethod
  def _get_batch(self, split: str, step: int, batch_size: int, seed: int) -> Batch:
    """:meth:`get_batch` after validation."""

  def get_batch(self, split: str, step: int, batch_size: int, seed: int) -> Batch:
    """The batch a run with ``seed`` sees at ``step`` (deterministic random access).

    Finite datasets go through one permutation per epoch, drawn from
    (seed, split, epoch), and drop the remainder, so ``step`` maps to epoch
    ``step // (N // batch_size)``. Returns numpy arrays: "image" float32
    (B, H, W, C) in [0, 1], and "label" int32 (B,) and/or "factors" int32 (B, K)
    when the dataset has them.
    """
    self.check_split(split)
    step = check_int("step", step)
    batch_size = check_int("batch_size", batch_size, 1)
    seed = check_int("seed", seed, 0, MAX_SEED)
    n = self.num_examples(split)
    if n is not None and batch_size > n:
      raise ValueError(
          f"batch_size {batch_size} exceeds the {n} examples of {self.name}/{split}.")
    return self._get_batch(split, step, batch_size, seed)

  def iterator(self, split: str, batch_size: int, seed: int,
               start_step: int = 0) -> BatchIterator:
    """An endless iterator over :meth:`get_batch`, starting at ``start_step``."""
    return BatchIterator(self, split, batch_size, seed, start_step)

  def jax_sampler(self, split: str) -> JaxSampler | None:
    """A pure ``(key, batch_size) -> batch`` usable inside jit, where one exists."""
    self.check_split(split)
    return None

  def __repr__(self) -> str:
    sizes = {s: self.num_examples(s) for s in self.splits}
    return f"<{type(self).__name__} {self.name!r} image_shape={self.image_shape} splits={sizes}>"


class BatchIterator:
  """Iterates ``dataset.get_batch(split, step, ...)`` for step = start, start + 1, ...

  ``position`` (the next step) is the whole iterator state: save it in a
  checkpoint and pass it back as ``start_step`` to resume exactly.
  """

  def __init__(self, dataset: Dataset, split: str, batch_size: int, seed: int,
               start_step: int = 0):
    self.dataset = dataset
    self.split = dataset.check_split(split)
    self.batch_size = check_int("batch_size", batch_size, 1)
    self.seed = check_int("seed", seed, 0, MAX_SEED)
    self._position = check_int("start_step", start_step)
    n = dataset.num_examples(split)
    if n is not None and self.batch_size > n:
      raise ValueError(
          f"batch_size {self.batch_size} exceeds the {n} examples of {dataset.name}/{split}.")

  @property
  def position(self) -> int:
    """The step of the batch the next ``next()`` returns."""
    return self._position

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> Batch:
    batch = self.dataset.get_batch(self.split, self._position, self.batch_size, self.seed)
    self._position += 1
    return batch

  def __repr__(self) -> str:
    return (f"BatchIterator({self.dataset.name!r}, split={self.split!r}, "
            f"batch_size={self.batch_size}, seed={self.seed}, position={self._position})")
