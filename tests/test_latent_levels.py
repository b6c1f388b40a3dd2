"""vaejax.models.latent_levels: the flat z of the hierarchical models and each dimension's level."""

import numpy as np
import pytest

from vaejax import models
from vaejax.models import latent_levels


@pytest.mark.parametrize("sizes", [(1,), (3, 2), (4, 1, 2), (2, 2, 2, 2, 2)])
def test_levels_against_numpy_repeat(sizes):
  expected = tuple(int(level) for level in np.repeat(np.arange(len(sizes)), sizes))
  assert latent_levels.latent_groups(sizes) == expected
  assert latent_levels.total_latent_dim(sizes) == len(expected)


def test_both_hierarchical_models_use_them():
  hvae = models.HierarchicalVAE(image_shape=(4, 4, 1), latent_sizes=(3, 2), hidden_size=8)
  assert (hvae.latent_dim, hvae.latent_groups) == (5, (0, 0, 0, 1, 1))
  deep = models.create_model({"name": "deep_hvae"}, (28, 28, 1))
  sizes = deep.level_sizes
  assert deep.latent_groups == tuple(int(v) for v in np.repeat(np.arange(len(sizes)), sizes))
  assert deep.latent_dim == sum(sizes)
