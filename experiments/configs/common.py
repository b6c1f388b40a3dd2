"""Defaults every training config shares, and presets.

The keys and defaults are the schema's (:func:`vaejax.config.base_config`, a module that
imports only ml_collections): top level ``num_steps``, ``batch_size``, ``seed``,
``learning_rate``, ``log_every``, ``checkpoint_every``; groups ``model``, ``data``,
``loss``, ``optimizer``, ``eval`` (the held-out data), ``evals`` (the evaluators),
``grid`` (a default sweep grid) and ``execution``.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from vaejax.config import base_config


def get_base_config() -> ml_collections.ConfigDict:
  """A complete config with neutral defaults; experiment configs override fields."""
  return base_config()


def apply_preset(
    config: ml_collections.ConfigDict,
    preset: str,
    presets: dict[str, Callable[[ml_collections.ConfigDict], None]],
) -> ml_collections.ConfigDict:
  """Applies the named preset (the ``--config=FILE.py:PRESET`` string); "" = none."""
  if preset not in presets:
    known = ", ".join(repr(p) for p in presets)
    raise ValueError(f"Unknown config preset {preset!r}; known presets: {known}.")
  presets[preset](config)
  return config
