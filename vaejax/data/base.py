"""The dataset protocol, its resumable iterator and the ground-truth interface.

Every dataset serves batches by *random access*: ``get_batch(split, step,
batch_size, seed)`` is a pure function of its arguments, so a run's data order is
fixed by its seed and a checkpoint only has to store the next step
(``BatchIterator.position``) to resume bit-identically.

Datasets with known generative factors (dSprites) also carry a
:class:`GroundTruthData` (``Dataset.ground_truth``): the disentanglement metrics'
view of the data (disentanglement_lib semantics), factor classes sampled uniformly
and independently, observations for any given factors.

Randomness on the host comes from numpy ``Generator``s seeded by
``SeedSequence((seed, purpose, split, counter))``: every (purpose, split,
counter) gets its own independent stream, none is ever reused.
"""

from __future__ import annotations

import abc
import collections
import types
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from vaejax.types import DataSpec
from vaejax.utils import checks

Batch = dict[str, np.ndarray]
JaxSampler = Callable[[jax.Array, int], dict[str, jax.Array]]
MAX_SEED = 2**32  # jax.random.key silently wraps larger seeds onto smaller ones.


def check_seed(seed: Any, name: str = "seed") -> int:
  """``seed`` as an int in [0, MAX_SEED), or a ValueError naming it."""
  return checks.check_int(seed, name, minimum=0, maximum=MAX_SEED - 1)


def stream_id(name: str) -> int:
  """A stable 31-bit integer for a string (split names, purposes), for seeding.

  >>> stream_id("train")
  1550247075
  """
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


def host_rng(seed: int, purpose: str, split: str, counter: int = 0) -> np.random.Generator:
  """An independent numpy Generator for (seed, purpose, split, counter)."""
  return np.random.default_rng(
      np.random.SeedSequence([seed, stream_id(purpose), stream_id(split), counter]))


class GroundTruthData(abc.ABC):
  """Factors of variation and the observations they generate.

  Subclasses set the three attributes and implement
  :meth:`sample_observations_from_factors` (by rendering, or by looking rows up in
  a file).

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
    num = checks.check_int(num, "num", minimum=0)
    if not isinstance(rng, np.random.Generator):
      raise TypeError(f"rng must be a numpy Generator (np.random.default_rng); got {type(rng)}.")
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


class Dataset(abc.ABC):
  """A named dataset serving batches ``{"image", ["label"], ["factors"]}``.

  Attributes:
    name: the registry name.
    image_shape: (H, W, C).
    num_classes: number of label classes, or None when there are no labels.
    splits: the split names this dataset has.
    ground_truth: a :class:`GroundTruthData` for datasets with known generative
      factors (dSprites), else None.
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

  def check_batch_size(self, split: str, batch_size: Any) -> int:
    """``batch_size`` as an int >= 1 that fits ``split``, or one ValueError."""
    batch_size = checks.check_int(batch_size, "batch_size", minimum=1)
    n = self.num_examples(split)
    if n is not None and batch_size > n:
      raise ValueError(
          f"batch_size {batch_size} exceeds the {n} examples of {self.name}/{split}.")
    return batch_size

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
    step = checks.check_int(step, "step", minimum=0)
    batch_size = self.check_batch_size(split, batch_size)
    seed = check_seed(seed)
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



class EpochOrder:
  """Finite splits read in one permutation per epoch, drawn from (seed, split, epoch), the
  remainder dropped: the order every finite dataset shares (a mixin of :class:`Dataset`
  for subclasses that hold their splits in ``_arrays``, split → arrays with a length)."""

  PERMUTATIONS_KEPT = 4  # the permutations cached: the current epoch's and a few before

  _arrays: Mapping[str, Any]

  def num_examples(self, split: str) -> int:
    return len(self._arrays[self.check_split(split)])  # type: ignore[attr-defined]

  def permutation(self, split: str, seed: int, epoch: int) -> np.ndarray:
    """The example order of ``epoch`` for a run with ``seed`` (cached)."""
    cache = self.__dict__.setdefault("_permutations", collections.OrderedDict())
    key = (split, seed, epoch)
    if key not in cache:
      cache[key] = host_rng(seed, "permutation", split, epoch).permutation(
          self.num_examples(split))
      while len(cache) > self.PERMUTATIONS_KEPT:
        cache.popitem(last=False)
    return cache[key]

  def batch_indices(self, split: str, step: int, batch_size: int, seed: int) -> np.ndarray:
    """The rows of ``split`` in the batch of ``step``: epoch ``step // (N // batch_size)``."""
    epoch, offset = divmod(step, len(self._arrays[split]) // batch_size)
    return self.permutation(split, seed, epoch)[offset * batch_size:(offset + 1) * batch_size]

class BatchIterator:
  """Iterates ``dataset.get_batch(split, step, ...)`` for step = start, start + 1, ...

  ``position`` (the next step) is the whole iterator state: save it in a
  checkpoint and pass it back as ``start_step`` to resume exactly.
  """

  def __init__(self, dataset: Dataset, split: str, batch_size: int, seed: int,
               start_step: int = 0):
    self.dataset = dataset
    self.split = dataset.check_split(split)
    self.batch_size = dataset.check_batch_size(split, batch_size)
    self.seed = check_seed(seed)
    self._position = checks.check_int(start_step, "start_step", minimum=0)

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
