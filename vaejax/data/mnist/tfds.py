"""MNIST from prepared TFDS datasets: ``mnist`` (grey, labelled) and ``binarized_mnist``."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vaejax.data import arrays, registry, tfds_io
from vaejax.data.mnist.npz import NPZ_FILENAME, NUM_CLASSES


def _from_tfds(name: str, data_dir: Any, binarize: str, binarize_seed: int, *,
               labelled: bool, max_value: float) -> arrays.ArrayDataset:
  arrays.check_binarize(binarize)
  builder = tfds_io.prepared_builder(
      name, None if data_dir is None else os.fspath(data_dir),
      alternative=f"'mnist_npz' (an npz such as ../shared/data/{NPZ_FILENAME})")
  splits = {}
  for split in tfds_io.split_names(builder):
    raw = tfds_io.read_split(builder, split)
    need = {"image", "label"} if labelled else {"image"}
    if need - set(raw):
      raise ValueError(f"TFDS {name}/{split} lacks features {sorted(need - set(raw))}; "
                       f"found {sorted(raw)}.")
    labels = raw["label"].astype(np.int32) if labelled else None
    splits[split] = arrays.SplitArrays(raw["image"], max_value, labels=labels,
                                       binary=max_value == 1.0)
  return arrays.ArrayDataset(name, splits, image_shape=(28, 28, 1),
                             num_classes=NUM_CLASSES if labelled else None,
                             binarize=binarize, binarize_seed=binarize_seed)


@registry.register("mnist")
def mnist(*, data_dir: str | os.PathLike | None = None, binarize: str = "none",
          binarize_seed: int = 0) -> arrays.ArrayDataset:
  """TFDS ``mnist`` (train 60,000 / test 10,000, uint8 0..255) from ``data_dir``."""
  return _from_tfds("mnist", data_dir, binarize, binarize_seed, labelled=True, max_value=255.0)


@registry.register("binarized_mnist")
def binarized_mnist(*, data_dir: str | os.PathLike | None = None, binarize: str = "none",
                    binarize_seed: int = 0) -> arrays.ArrayDataset:
  """TFDS ``binarized_mnist`` (Larochelle's fixed binarisation; train/validation/test).

  Pixels are already in {0, 1}, so ``binarize`` changes nothing; there are no labels.
  """
  return _from_tfds("binarized_mnist", data_dir, binarize, binarize_seed, labelled=False,
                    max_value=1.0)
