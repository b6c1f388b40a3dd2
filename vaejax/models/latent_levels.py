"""Latent levels of the hierarchical models: the flat z and the level of each of its dimensions.

Both hierarchical VAEs concatenate the levels' latents into one vector z, level 0 (next to
the data) first; free bits per level and monitoring per level need each dimension's level.
"""

from __future__ import annotations

from collections.abc import Sequence


def total_latent_dim(level_sizes: Sequence[int]) -> int:
  """The dimension of z: the levels' sizes added up.

  >>> total_latent_dim((3, 2))
  5
  """
  return sum(level_sizes)


def latent_groups(level_sizes: Sequence[int]) -> tuple[int, ...]:
  """The level (0-based, 0 = next to the data) of every dimension of z.

  >>> latent_groups((3, 2))
  (0, 0, 0, 1, 1)
  """
  return tuple(level for level, size in enumerate(level_sizes) for _ in range(size))
