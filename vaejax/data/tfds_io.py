"""Reading prepared TFDS datasets into numpy arrays, with TensorFlow optional.

Datasets prepared in the ArrayRecord format (``tfds build NAME
--file_format=array_record``) are read through ``builder.as_data_source`` with
numpy only; the default TFRecord format needs TensorFlow
(``builder.as_dataset``). Nothing here downloads: a dataset that is not prepared
in ``data_dir`` is an error that says how to prepare it.

The metadata a prepared dataset carries (``dataset_info.json``: the number of
examples per shard) is checked against its files before arrays of that size are
allocated: every record takes at least one byte on disk, so a split announcing
more examples than its files have bytes is corrupt (one error, not a MemoryError).
Records are decoded by TFDS's feature decoders (images from PNG); nothing is
unpickled.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

_READ_CHUNK = 4096


def import_tfds() -> Any:
  """Imports tensorflow_datasets lazily (the core of vaejax runs without it)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "Reading TFDS datasets needs `tensorflow-datasets` (pip install tensorflow-datasets)."
    ) from e
  return tfds


def prepared_builder(name: str, data_dir: str | None, alternative: str) -> Any:
  """The TFDS builder of ``name`` in ``data_dir``; FileNotFoundError if not prepared."""
  tfds = import_tfds()
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"TFDS dataset '{name}' is not prepared in {builder.data_dir} (data_dir={data_dir!r}). "
        f"vaejax never downloads it. On a machine with network and TensorFlow run "
        f"`tfds build {name} --data_dir=DIR --file_format=array_record` (ArrayRecord files "
        f"read without TensorFlow), copy DIR here and pass data_dir=DIR; or use {alternative}.")
  return builder


def split_names(builder: Any) -> tuple[str, ...]:
  return tuple(builder.info.splits.keys())


def _stack_source(source: Any) -> dict[str, np.ndarray]:
  """Reads every record of a random-access source into preallocated arrays."""
  n = len(source)
  out: dict[str, np.ndarray] = {}
  for start in range(0, n, _READ_CHUNK):
    keys = list(range(start, min(n, start + _READ_CHUNK)))
    examples = source.__getitems__(keys) if hasattr(source, "__getitems__") else [
        source[k] for k in keys]
    if not out:  # allocate from the first example; skip text features (e.g. "id")
      for key, value in examples[0].items():
        value = np.asarray(value)
        if value.dtype.kind in "biuf":
          out[key] = np.empty((n,) + value.shape, value.dtype)
    for key, arr in out.items():
      arr[start:start + len(keys)] = np.stack([np.asarray(ex[key]) for ex in examples])
  return out


def _check_count(builder: Any, split: str, count: int) -> None:
  """Raises ValueError when ``count`` examples cannot fit in the split's files."""
  paths = getattr(builder.info.splits[split], "filepaths", None)
  if not paths:  # an older TFDS without the list: TFDS's own reads are the check
    return
  on_disk = sum(os.path.getsize(os.fspath(p)) for p in paths)
  if count > on_disk:
    raise ValueError(
        f"TFDS dataset '{builder.name}' in {builder.data_dir}: split {split!r} announces "
        f"{count} examples but its {len(paths)} file(s) hold {on_disk} bytes; its "
        "dataset_info.json is corrupt. Prepare it again with `tfds build`.")


def read_split(builder: Any, split: str) -> dict[str, np.ndarray]:
  """All examples of ``split`` as a dict of stacked numpy arrays (record order)."""
  try:
    source = builder.as_data_source(split=split)
  except NotImplementedError:  # TFRecord: random access needs another file format
    source = None
  if source is not None:
    _check_count(builder, split, len(source))
    try:
      return _stack_source(source)
    except (RuntimeError, IndexError, OSError) as e:  # fewer records than announced, ...
      raise ValueError(f"Could not read TFDS dataset '{builder.name}' split {split!r} in "
                       f"{builder.data_dir} ({e}); prepare it again with `tfds build`.") from e
  try:
    dataset = builder.as_dataset(split=split, batch_size=-1)
  except ImportError as e:
    raise ImportError(
        f"TFDS dataset '{builder.name}' in {builder.data_dir} is stored as TFRecord, which "
        "needs TensorFlow to read (pip install 'vaejax[tf]'); or re-prepare it with "
        "`--file_format=array_record`, which reads with numpy only.") from e
  arrays = import_tfds().as_numpy(dataset)
  return {k: np.asarray(v) for k, v in arrays.items() if np.asarray(v).dtype.kind in "biuf"}
