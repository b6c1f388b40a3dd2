"""Tiny datasets the engine's tests share (a helper module, not a test file).

48 binary 6×6 images per split, for MLP VAEs with a few hidden units: every compiled program
stays small, so tests spend their time on behaviour rather than on XLA.
"""

import jax
import jax.numpy as jnp
import numpy as np

from vaejax import data

IMAGE_SHAPE = (6, 6, 1)


def _images(seed: int, n: int = 48) -> np.ndarray:
  return (np.random.default_rng(seed).random((n, *IMAGE_SHAPE)) < 0.3).astype(np.float32)


class Tiny(data.ArrayDataset):
  """Host batches, with faults on demand.

  Training batches of a seed in ``bad_seeds`` hold a NaN from batch ``bad_from`` on; the
  ``crash_after``-th request of training batch ``crash_at`` raises KeyboardInterrupt (a run
  killed while it fetches that batch).
  """

  bad_seeds = ()
  bad_from = 0
  crash_at = None
  crash_after = 1

  def _get_batch(self, split, step, batch_size, seed):
    if split == "train" and step == self.crash_at:
      self.crash_after -= 1
      if self.crash_after == 0:
        raise KeyboardInterrupt("simulated kill")
    batch = super()._get_batch(split, step, batch_size, seed)
    if split == "train" and seed in self.bad_seeds and step >= self.bad_from:
      batch["image"][0, 0, 0, 0] = np.nan
    return batch


def tiny_dataset(**attrs) -> Tiny:
  """A :class:`Tiny` dataset (train and test splits); ``attrs`` set its fault attributes."""
  images = _images(0)
  splits = {s: data.SplitArrays(images, binary=True) for s in ("train", "test")}
  dataset = Tiny("tiny", splits, image_shape=IMAGE_SHAPE)
  for k, v in attrs.items():
    setattr(dataset, k, v)
  return dataset


class Sampled(data.ArrayDataset):
  """Like procedural dSprites: training batches sampled inside the program from a key."""

  def jax_sampler(self, split):
    if split != "train":
      return None

    def sample(key, batch_size):
      image = jax.random.bernoulli(key, 0.3, (batch_size, *IMAGE_SHAPE)).astype(jnp.float32)
      return {"image": image}

    return sample


def sampled_dataset(seed: int = 1) -> Sampled:
  """A :class:`Sampled` dataset whose test split holds 48 fixed images."""
  splits = {s: data.SplitArrays(_images(seed), binary=True) for s in ("train", "test")}
  return Sampled("sampled", splits, image_shape=IMAGE_SHAPE)
