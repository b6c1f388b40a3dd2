"""One registry of datasets, loaded by name from a config.

A config is a Mapping or ml_collections ConfigDict with ``name`` and any of:

* ``split``, ``batch_size``, ``seed``: checked here (the split must exist, the
  batch must fit) for the caller, which passes them to ``get_batch``/``iterator``;
* the keyword arguments of the dataset's constructor (``path``, ``data_dir``,
  ``binarize``, ``binarize_seed``, ``test_fraction``, ...).

Families of datasets (``vaejax.data.dsprites``, ``vaejax.data.mnist``, a text
package) register their constructors with :func:`register` when imported; the
keys a config may carry are the union of every constructor's keyword options.

Keys set to None count as absent, so one config file can carry every key.
Unknown keys, keys a dataset does not take, unknown names, missing files and
missing splits all fail here, before any training starts.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping
from typing import Any

from vaejax.data import base

DATASETS: dict[str, Callable[..., base.Dataset]] = {}
LOAD_KEYS = ("name", "split", "batch_size", "seed")


class UnknownDatasetError(KeyError, ValueError):
  """An unknown dataset name (a KeyError and a ValueError, with a readable message)."""

  def __str__(self) -> str:
    return str(self.args[0])


def register(name: str) -> Callable[[Callable[..., base.Dataset]], Callable[..., base.Dataset]]:
  """Decorator adding a constructor (keyword-only options -> Dataset) to DATASETS."""

  def decorator(constructor: Callable[..., base.Dataset]) -> Callable[..., base.Dataset]:
    if name in DATASETS:
      raise ValueError(f"Dataset name {name!r} is already registered.")
    DATASETS[name] = constructor
    return constructor

  return decorator


def _options(constructor: Callable[..., Any]) -> tuple[str, ...]:
  return tuple(p.name for p in inspect.signature(constructor).parameters.values()
               if p.kind == p.KEYWORD_ONLY)


def _as_dict(config: Any) -> dict[str, Any]:
  if hasattr(config, "to_dict"):  # ml_collections ConfigDict / FrozenConfigDict
    config = config.to_dict()
  if not isinstance(config, Mapping):
    raise TypeError(f"A data config must be a Mapping or ConfigDict; got {type(config)}.")
  return dict(config)


def load(config: Any) -> base.Dataset:
  """Builds the dataset ``config["name"]``, validating the config and its files.

  Args:
    config: a Mapping or ConfigDict: ``name``, optionally ``split``, ``batch_size``,
      ``seed`` (checked here), and the dataset's own keyword options.

  Returns:
    The :class:`~vaejax.data.base.Dataset`, its ``config`` set to the keys given.

  Raises:
    UnknownDatasetError: an unknown name (the message lists the known ones).
    ValueError: a bad key or value, or a malformed file; FileNotFoundError: a
      missing file (the message says where it was looked for and how to get it).

  >>> from vaejax import data
  >>> ds = data.load({"name": "dsprites_procedural", "split": "train", "batch_size": 8})
  >>> ds.name, ds.image_shape, ds.splits
  ('dsprites_procedural', (64, 64, 1), ('train',))
  >>> data.load({"name": "dsprites_procedural", "batch_size": 0})
  Traceback (most recent call last):
  ...
  ValueError: batch_size=0 must be an int >= 1.
  """
  cfg = _as_dict(config)
  name = cfg.get("name")
  if name is None:
    raise ValueError(f"The data config needs a 'name', one of {sorted(DATASETS)}.")
  if name not in DATASETS:
    raise UnknownDatasetError(f"Unknown dataset {name!r}; known datasets: {sorted(DATASETS)}.")
  takes = _options(DATASETS[name])
  known = set(LOAD_KEYS).union(*(_options(c) for c in DATASETS.values()))
  for key, value in cfg.items():
    if key not in known:
      raise ValueError(
          f"Unknown data config key {key!r}; dataset {name!r} takes "
          f"{sorted(set(LOAD_KEYS) | set(takes))}.")
    if key not in takes and key not in LOAD_KEYS and value is not None:
      raise ValueError(
          f"Data config key {key!r} does not apply to dataset {name!r}, which takes "
          f"{sorted(set(LOAD_KEYS) | set(takes))}.")
  dataset = DATASETS[name](**{k: v for k, v in cfg.items() if k in takes and v is not None})
  if cfg.get("split") is not None:
    dataset.check_split(cfg["split"])
  if cfg.get("seed") is not None:
    base.check_seed(cfg["seed"])
  if cfg.get("batch_size") is not None:
    for split in [cfg["split"]] if cfg.get("split") is not None else dataset.splits:
      dataset.check_batch_size(split, cfg["batch_size"])
  dataset.config = types.MappingProxyType({k: v for k, v in cfg.items() if v is not None})
  return dataset
