"""The registered dSprites datasets: procedural (rendered) and the real data.

* ``dsprites_procedural``: factors sampled uniformly and rendered by
  :func:`vaejax.data.dsprites.render`; nothing is stored, and sampling plus
  rendering can run inside a jitted train step (:meth:`jax_sampler`). One split,
  "train"; evaluators draw their held-out batches from it on their own key stream
  (fresh samples of the same distribution, as disentanglement_lib does).
* ``dsprites``: the real images. Rule: with ``path``, DeepMind's npz or HDF5
  file; without it, TFDS ``dsprites`` from ``data_dir`` (TFDS's default
  directory when that is None too). Giving both is an error.

Held-out data of the real images. DeepMind's file is one set, the full factorial
grid, and disentanglement_lib trains and evaluates on all of it. A held-out ELBO
needs images the model never saw, so ``dsprites`` holds out a fixed subset: "test"
is ``round(N * test_fraction)`` images, at least one (default 1%: 7,373 of the
737,280), "train" the rest. The subset is drawn by a fixed seed from the rows in
grid order, so the same factor combinations are held out whatever the file's row
order (npz, HDF5 and TFDS agree) and whatever the run's seed. ``test_fraction=0``
keeps the disentanglement_lib protocol (one split, "train", the whole grid;
evaluators then need ``eval.split="train"``). The disentanglement metrics always
sample the whole grid through ``ground_truth``, whichever split a model trained on.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from vaejax.data import arrays, base, registry, tfds_io
from vaejax.data.dsprites import files, grid, ground_truth, renderer
from vaejax.utils import checks

TEST_FRACTION = 0.01
HELD_OUT_SEED = 0  # the held-out images are a property of the data, not of a run
_IMAGE_SHAPE = (grid.IMAGE_SIZE, grid.IMAGE_SIZE, 1)
_TFDS_LABELS = ("label_shape", "label_scale", "label_orientation", "label_x_position",
                "label_y_position")


def sample_batch(key: jax.Array, batch_size: int) -> dict[str, jax.Array]:
  """A procedural batch: factors uniform over the grid, rendered; pure, jit-able.

  Returns ``{"image": float32 (B, 64, 64, 1) in {0, 1}, "factors": int32 (B, 5)}``.
  ``batch_size`` must be static under jit.
  """
  factors = renderer.sample_classes(key, batch_size)
  return {"image": renderer.render(factors), "factors": factors}


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
    step = checks.check_int(step, "step", minimum=0, maximum=2**32 - 1)
    key = jax.random.key(base.check_seed(seed))
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
  """Procedural dSprites; ``binarize`` is accepted but changes nothing (already {0, 1}).

  >>> from vaejax import data
  >>> ds = data.load({"name": "dsprites_procedural", "batch_size": 2})
  >>> ds.splits, ds.num_examples("train")  # unbounded
  (('train',), None)
  >>> batch = ds.get_batch("train", step=0, batch_size=2, seed=0)
  >>> batch["image"].shape, batch["factors"].shape
  ((2, 64, 64, 1), (2, 5))
  """
  arrays.check_binarize(binarize)
  return ProceduralDSprites()


def load_tfds(data_dir: str | None = None) -> files.DSpritesArrays:
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
  return files.validate_arrays(image[..., 0] if image.ndim == 4 else image, classes,
                               values, f"TFDS dsprites in {builder.data_dir}")


def held_out_rows(classes: np.ndarray, test_fraction: float) -> np.ndarray:
  """The sorted file rows of the fixed held-out subset: ``round(N * test_fraction)`` rows
  (at least one).

  Drawn by a permutation seeded with :data:`HELD_OUT_SEED` over the rows in grid
  order, so the subset is a function of the set of images, not of the file's order.
  """
  order = np.argsort(grid.index_of(classes), kind="stable")
  perm = base.host_rng(HELD_OUT_SEED, "held_out", "dsprites").permutation(len(order))
  return np.sort(order[perm[:max(1, round(len(order) * test_fraction))]])


def _splits(data: files.DSpritesArrays, test_fraction: float) -> dict[str, arrays.SplitArrays]:
  whole = arrays.SplitArrays(data.images, 1.0, factors=data.classes[:, 1:], binary=True)
  if test_fraction == 0:
    return {"train": whole}
  test = held_out_rows(data.classes, test_fraction)
  n = len(whole)
  if len(test) >= n:
    raise ValueError(f"dsprites test_fraction={test_fraction} leaves no training images of the "
                     f"{n} in {data.source}; use a smaller fraction, or 0 for one split.")
  train = np.setdiff1d(np.arange(n), test, assume_unique=True)
  return {"train": whole.select(train), "test": whole.select(test)}


@registry.register("dsprites")
def dsprites_real(*, path: str | os.PathLike | None = None,
                  data_dir: str | os.PathLike | None = None,
                  binarize: str = "none",
                  test_fraction: float = TEST_FRACTION) -> arrays.ArrayDataset:
  """The real dSprites images: DeepMind file at ``path``, else TFDS in ``data_dir``.

  Batches carry "factors" (B, 5) = the file's classes without colour, and
  ``ground_truth`` looks observations up by factors over the whole file.
  ``binarize`` is a no-op.

  Args:
    path: DeepMind's npz or HDF5 file.
    data_dir: the TFDS data directory (when ``path`` is None).
    binarize: accepted for one config across datasets; the images are {0, 1}.
    test_fraction: share of the images held out as "test", in [0, 1); 0 = one
      split "train" holding every image (disentanglement_lib's protocol).
  """
  arrays.check_binarize(binarize)
  test_fraction = arrays.check_fraction(test_fraction, allow_zero=True)
  if path is not None and data_dir is not None:
    raise ValueError("dsprites takes either path (DeepMind npz/hdf5) or data_dir (TFDS), "
                     f"not both; got path={path!r}, data_dir={data_dir!r}.")
  if path is not None:
    data = files.load_deepmind_file(path)
  else:
    data = load_tfds(None if data_dir is None else os.fspath(data_dir))
  return arrays.ArrayDataset(
      "dsprites", _splits(data, test_fraction), image_shape=_IMAGE_SHAPE, binarize=binarize,
      ground_truth=ground_truth.LookupDSprites(data.images, data.classes))
