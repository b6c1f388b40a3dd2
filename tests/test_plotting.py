"""Figures: pure plotting functions on known arrays, and the model layer on a tiny VAE."""

import chex
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest

from vaejax import distributions, models
from vaejax.figures import grids, model_figures

pytestmark = pytest.mark.isa_independent  # nothing here depends on XLA's float code


def _shown(fig) -> np.ndarray:
  """The array drawn by the figure's image axis."""
  return np.asarray(fig.axes[0].images[0].get_array())


def test_tile_images_known_layout():
  grid = np.zeros((2, 3, 2, 2, 1), np.float32)
  for r in range(2):
    for c in range(3):
      grid[r, c] = 10 * r + c
  tiled = grids.tile_images(grid, pad=1, pad_value=-1.0)
  chex.assert_shape(tiled, (2 * 3 - 1, 3 * 3 - 1, 1))
  assert tiled[0, 0, 0] == 0 and tiled[1, 1, 0] == 0
  assert tiled[0, 3, 0] == 1 and tiled[4, 7, 0] == 12
  assert tiled[2, 0, 0] == -1 and tiled[0, 2, 0] == -1  # separators


def test_reconstructions_alternate_input_and_reconstruction_rows():
  rng = np.random.default_rng(0)
  inputs = rng.random((5, 4, 4, 1)).astype(np.float32)
  recons = rng.random((5, 4, 4, 1)).astype(np.float32)
  fig = grids.plot_reconstructions(inputs, recons, ncols=3)
  shown = _shown(fig)
  pad = grids.PAD_VALUE
  blank = np.full((4, 4, 1), pad, np.float32)
  expected_grid = np.stack([
      np.stack([inputs[0], inputs[1], inputs[2]]),
      np.stack([recons[0], recons[1], recons[2]]),
      np.stack([inputs[3], inputs[4], blank]),
      np.stack([recons[3], recons[4], blank]),
  ])
  chex.assert_trees_all_close(shown, grids.tile_images(expected_grid)[..., 0])
  labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
  assert labels == ["input", "reconstruction", "input", "reconstruction"]
  plt.close(fig)


def test_kl_bar_heights_and_colours():
  kl = np.array([0.0, 2.5, 0.005, 1.0])
  fig = grids.plot_kl_per_dim(kl)
  bars = fig.axes[0].patches
  chex.assert_trees_all_close(np.array([b.get_height() for b in bars]), kl)
  grey = [b.get_facecolor() == plt.matplotlib.colors.to_rgba("lightgrey") for b in bars]
  assert grey == [True, False, True, False]
  assert "2/4" in fig.axes[0].get_title()
  plt.close(fig)


def test_traversal_labels_and_columns():
  images = np.zeros((2, 3, 4, 4, 1), np.float32)
  fig = grids.plot_traversals(images, [-1.0, 0.0, 1.0], dims=[7, 2], kl=[3.0, 0.5])
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_yticklabels()] == ["z7  KL 3.00", "z2  KL 0.50"]
  assert [t.get_text() for t in ax.get_xticklabels()] == ["-1.0", "+0.0", "+1.0"]
  plt.close(fig)


@pytest.mark.parametrize(
    "call",
    [
        lambda: grids.plot_reconstructions(np.zeros((2, 4, 4, 1)), np.zeros((3, 4, 4, 1))),
        lambda: grids.plot_samples(np.zeros((2, 4, 4, 2))),
        lambda: grids.plot_traversals(np.zeros((2, 3, 4, 4, 1)), [0.0, 1.0], dims=[0, 1]),
        lambda: grids.plot_kl_per_dim(np.zeros((2, 2))),
    ],
)
def test_bad_inputs_raise(call):
  with pytest.raises(ValueError):
    call()


@pytest.fixture(scope="module")
def tiny_vae():
  model = models.create_model(
      {"name": "mlp_vae", "latent_dim": 3, "hidden_sizes": (8,)}, (6, 6, 1))
  x = jnp.zeros((1, 6, 6, 1))
  params = jax.jit(model.init)(
      {"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)}, x)
  return model, params["params"]


def test_figure_arrays_traverse_by_kl_order(tiny_vae):
  model, params = tiny_vae
  images = np.random.default_rng(0).random((4, 6, 6, 1)).astype(np.float32)
  kl = np.array([0.1, 2.0, 1.0])
  arrays = model_figures.figure_arrays(
      model, params, images, jax.random.PRNGKey(0), kl_per_dim=kl, traversal_steps=5,
      traversal_range=2.0, max_traversal_dims=2, num_samples=6)
  np.testing.assert_array_equal(arrays["traversal_dims"], [1, 2])
  chex.assert_shape(arrays["traversals"], (2, 5, 6, 6, 1))
  chex.assert_shape(arrays["interpolation"], (2, 5, 6, 6, 1))
  chex.assert_shape(arrays["samples"], (6, 6, 6, 1))
  # Independent reference: decode the first input's mean with dim 2 set to +2.
  variables = {"params": params}
  mean, _ = model.apply(variables, jnp.asarray(images), method="encode")
  code = mean[:1].at[0, 2].set(2.0)
  expected = distributions.likelihood_mean(model.apply(variables, code, method="decode"))
  chex.assert_trees_all_close(arrays["traversals"][1, -1], expected[0], atol=1e-6)
  # The interpolation starts and ends at the decoded means of each pair.
  ends = distributions.likelihood_mean(model.apply(variables, mean, method="decode"))
  chex.assert_trees_all_close(arrays["interpolation"][1, 0], ends[2], atol=1e-6)
  chex.assert_trees_all_close(arrays["interpolation"][1, -1], ends[3], atol=1e-6)
  chex.assert_trees_all_close(arrays["reconstructions"], ends, atol=1e-6)


def test_write_figures_writes_readable_pngs(tiny_vae, tmp_path):
  model, params = tiny_vae
  images = np.random.default_rng(1).random((4, 6, 6, 1)).astype(np.float32)
  paths = model_figures.write_figures(model, params, images, tmp_path / "figs",
                                      jax.random.PRNGKey(3))
  names = sorted(p.name for p in paths)
  assert names == sorted(
      ["reconstructions.png", "samples.png", "traversals.png", "interpolation.png",
       "kl_per_dim.png"])
  for path in paths:
    image = plt.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_conditional_figures_share_z_across_a_column_and_transfer_style(tmp_path):
  model = models.create_model(
      {"name": "mlp_cvae", "latent_dim": 3, "hidden_sizes": (8,)}, (6, 6, 1), num_classes=4)
  x, labels = jnp.zeros((1, 6, 6, 1)), jnp.zeros((1,), jnp.int32)
  params = jax.jit(model.init)(
      {"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)}, x, labels)["params"]
  images = np.random.default_rng(2).random((5, 6, 6, 1)).astype(np.float32)
  image_labels = np.array([0, 1, 2, 3, 0], np.int32)
  arrays = model_figures.figure_arrays(model, params, images, jax.random.PRNGKey(4),
                                  labels=image_labels, num_classes=4, traversal_steps=3)
  chex.assert_shape(arrays["class_samples"], (4, 3, 6, 6, 1))
  chex.assert_shape(arrays["style_transfer"], (5, 4, 6, 6, 1))
  variables = {"params": params}
  # Style transfer: input 1's posterior mean (encoded with its label 1) decoded as class 3.
  mean, _ = model.apply(variables, jnp.asarray(images), jnp.asarray(image_labels),
                        method="encode")
  expected = distributions.likelihood_mean(
      model.apply(variables, mean[1:2], jnp.array([3]), method="decode"))
  chex.assert_trees_all_close(arrays["style_transfer"][1, 3], expected[0], atol=1e-6)
  # Class samples: rows differ by class only, so the same row label gives the same image
  # for the same z, and different classes give different images.
  assert not np.allclose(arrays["class_samples"][0, 0], arrays["class_samples"][1, 0])
  paths = model_figures.write_figures(model, params, images, tmp_path, jax.random.PRNGKey(5),
                                 labels=image_labels, num_classes=4)
  assert {"class_samples.png", "style_transfer.png"} <= {p.name for p in paths}


def test_hierarchical_samples_are_ancestral(tmp_path):
  model = models.create_model(
      {"name": "hvae", "latent_sizes": (3, 2), "hidden_size": 8}, (6, 6, 1))
  params = jax.jit(model.init)(
      {"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)},
      jnp.zeros((1, 6, 6, 1)))["params"]
  images = np.random.default_rng(3).random((4, 6, 6, 1)).astype(np.float32)
  key = jax.random.PRNGKey(7)
  arrays = model_figures.figure_arrays(model, params, images, key, num_samples=5)
  _, expected = model.apply({"params": params}, 5, method="sample_prior", rngs={"sample": key})
  chex.assert_trees_all_close(arrays["samples"], distributions.likelihood_mean(expected),
                              atol=1e-6)
