"""The registered dSprites datasets: procedural (rendered) and the real data.

* ``dsprites_procedural``: factors sampled uniformly and rendered by
  :func:`vaejax.data.dsprites.render`; nothing is stored, and sampling plus
  rendering can run inside a jitted train step (:meth:`jax_sampler`).
* ``dsprites``: the real images. Rule: with ``path``, DeepMind's npz or HDF5
  file; without it, TFDS ``dsprites`` from ``data_dir`` (TFDS's default
  directory when that is None too). Giving both is an error.

dSprites has one split, "train" (the full factorial grid); as in
disentanglement_lib, models are trained and evaluated on it.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from vaejax.data import arrays, base, dsprites, ground_truth, registry, tfds_io

_IMAGE_SHAPE = (dsprites.IMAGE_SIZE, dsprites.IMAGE_SIZE, 1)
_TFDS_LABELS = ("label_shape", "label_scale", "label_orientation", "label_x_position",
                "label_y_position")


def sample_batch(key: jax.Array, batch_size: int) -> dict[str, jax.Array]:
  """A procedural batch: factors uniform over the grid, rendered; pure, jit-able.

  Returns ``{"image": float32 (B, 64, 64, 1) in {0, 1}, "factors": int32 (B, 5)}``.
  ``batch_size`` must be static under jit.
  """
  factors = dsprites.sample_classes(key, batch_size)
  return {"image": dsprites.render(factors), "factors": factors}


class ProceduralDSprites(base.Dataset):
  """dSprites rendered on demand: unbounded, exact on the factor grid, no file."""

  name = "dsprites_procedural"
  image_shape = _IMAGE_SHAPE
  num_classes = None
  splits = ("train",)

  def __init__(self):
    self.ground_truth = ground_truth.RenderedDSprites()
    self._sample = jax.jit(sample_batch, static_argnums=1)

  def num_examples(self, split: str) -> None:
    """None: procedural data is unbounded."""
    self.check_split(split)

  def batch_key(self, split: str, step: int, seed: int) -> jax.Array:
    """The key ``get_batch`` uses: fold_in(fold_in(key(seed), split), step)."""
    self.check_split(split)
    step = base.check_int("step", step, 0, 2**32)
    key = jax.random.key(base.check_int("seed", seed, 0, base.MAX_SEED))
    return jax.random.fold_in(jax.random.fold_in(key, base.stream_id(split)), step)

  def jax_sampler(self, split: str) -> base.JaxSampler:
    """``sample_batch``: call it inside jit with a key and a static batch size."""
    self.check_split(split)
    return sample_batch

  def _get_batch(self, split: str, step: int, batch_size: int, seed: int) -> base.Batch:
    batch = self._sample(self.batch_key(split, step, seed), batch_size)
    return {k: np.asarray(v) for k, v in jax.device_get(batch).items()}


@registry.register("dsprites_procedural")
def dsprites_procedural(*, binarize: str = "none") -> ProceduralDSprites:
  """Procedural dSprites; ``binarize`` is accepted but changes nothing (already {0, 1})."""
  arrays.check_binarize(binarize)
  return ProceduralDSprites()


def load_tfds(data_dir: str | None = None) -> dsprites.DSpritesArrays:
  """TFDS ``dsprites`` as the same arrays as the DeepMind file (record order)."""
  builder = tfds_io.prepared_builder(
      "dsprites", data_dir,
      alternative="the DeepMind file via path=..., or the name 'dsprites_procedural'")
  raw = tfds_io.read_split(builder, "train")
  missing = {"image", *_TFDS_LABELS, *(k.replace("label_", "value_") for k in _TFDS_LABELS)}
  missing -= set(raw)
  if missing:
    raise ValueError(f"TFDS dsprites in {builder.data_dir} lacks features {sorted(missing)}.")
  n = len(raw["image"])
  classes = np.stack([np.zeros(n, np.int64)] + [raw[k] for k in _TFDS_LABELS], axis=1)
  values = np.stack([np.ones(n)] + [raw[k.replace("label_", "value_")] for k in _TFDS_LABELS],
                    axis=1)
  image = raw["image"]
  return dsprites.validate_arrays(image[..., 0] if image.ndim == 4 else image, classes,
                                  values, {}, f"TFDS dsprites in {builder.data_dir}")


@registry.register("dsprites")
def dsprites_real(*, path: str | os.PathLike | None = None,
                  data_dir: str | os.PathLike | None = None,
                  binarize: str = "none") -> arrays.ArrayDataset:
  """The real dSprites images: DeepMind file at ``path``, else TFDS in ``data_dir``.

  Batches carry "factors" (B, 5) = the file's classes without colour, and
  ``ground_truth`` looks observations up by factors. ``binarize`` is a no-op.
  """
  arrays.check_binarize(binarize)
  if path is not None and data_dir is not None:
    raise ValueError("dsprites takes either path (DeepMind npz/hdf5) or data_dir (TFDS), "
                     f"not both; got path={path!r}, data_dir={data_dir!r}.")
  if path is not None:
    data = dsprites.load_deepmind_file(path)
  else:
    data = load_tfds(None if data_dir is None else os.fspath(data_dir))
  split = arrays.SplitArrays(data.images, 1.0, factors=data.classes[:, 1:], binary=True)
  return arrays.ArrayDataset(
      "dsprites", {"train": split}, image_shape=_IMAGE_SHAPE, binarize=binarize,
      ground_truth=ground_truth.LookupDSprites(data.images, data.classes))
