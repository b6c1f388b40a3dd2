"""Latent-arithmetic figures (class offsets in a VAE, style offsets in a CVAE) on tiny models."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest

from vaejax import distributions, models
from vaejax.figures import grids, model_figures

SHAPE = (6, 6, 1)
LABELS = np.array([0, 1, 2, 1, 0, 2, 2, 1], np.int64)
IMAGES = np.random.default_rng(0).random((8, *SHAPE)).astype(np.float32)


def _init(model, *args):
  keys = {"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)}
  return jax.jit(model.init)(keys, jnp.zeros((1, *SHAPE)), *args)["params"]


@pytest.fixture(scope="module")
def vae():
  model = models.create_model({"name": "mlp_vae", "latent_dim": 3, "hidden_sizes": (8,)}, SHAPE)
  return model, _init(model)


@pytest.fixture(scope="module")
def cvae():
  model = models.create_model({"name": "mlp_cvae", "latent_dim": 3, "hidden_sizes": (8,)}, SHAPE,
                              num_classes=3)
  return model, _init(model, jnp.zeros((1,), jnp.int32))


def test_class_arithmetic_adds_the_class_offset(vae, tmp_path):
  model, params = vae
  arrays = model_figures.class_arithmetic_arrays(model, params, IMAGES, LABELS, source_class=1,
                                            target_class=2, alphas=(0.0, 1.0, 2.0))
  np.testing.assert_array_equal(arrays["query_classes"], [0, 1])  # every class but the target
  chex.assert_shape(arrays["decoded"], (2, 3, *SHAPE))
  np.testing.assert_array_equal(arrays["inputs"], IMAGES[[0, 1]])  # first image of each class
  # Independent reference: the offset from per-class means, added twice to the class-1 query.
  variables = {"params": params}
  mean, _ = model.apply(variables, jnp.asarray(IMAGES), method="encode")
  mean = np.asarray(mean)
  v = mean[[2, 5, 6]].mean(0) - mean[[1, 3, 7]].mean(0)
  chex.assert_trees_all_close(arrays["vector"], v, atol=1e-6)
  want = distributions.likelihood_mean(
      model.apply(variables, jnp.asarray(mean[1:2] + 2.0 * v), method="decode"))
  chex.assert_trees_all_close(arrays["decoded"][1, 2], np.asarray(want)[0], atol=1e-6)
  path = model_figures.write_class_arithmetic_figure(model, params, IMAGES, LABELS,
                                                tmp_path / "class.png", 1, 2)
  assert plt.imread(path).shape[0] > 100


def test_style_arithmetic_keeps_each_label(cvae, tmp_path):
  model, params = cvae
  arrays = model_figures.style_arithmetic_arrays(model, params, IMAGES, LABELS, reference_index=2,
                                            num_queries=3, alphas=(0.0, 1.0))
  np.testing.assert_array_equal(arrays["query_labels"], LABELS[[0, 1, 3]])
  chex.assert_shape(arrays["decoded"], (3, 2, *SHAPE))
  variables = {"params": params}
  mean, _ = model.apply(variables, jnp.asarray(IMAGES), jnp.asarray(LABELS, jnp.int32),
                        method="encode")
  mean = np.asarray(mean)
  s = mean[2] - mean.mean(0)
  want = distributions.likelihood_mean(model.apply(
      variables, jnp.asarray(mean[3:4] + s), jnp.array([LABELS[3]], jnp.int32), method="decode"))
  chex.assert_trees_all_close(arrays["decoded"][2, 1], np.asarray(want)[0], atol=1e-6)
  # α = 0 is the plain reconstruction, decoded with the query's own label.
  recon = distributions.likelihood_mean(model.apply(
      variables, jnp.asarray(mean[:1]), jnp.array([LABELS[0]], jnp.int32), method="decode"))
  chex.assert_trees_all_close(arrays["decoded"][0, 0], np.asarray(recon)[0], atol=1e-6)
  path = model_figures.write_style_arithmetic_figure(model, params, IMAGES, LABELS,
                                                tmp_path / "style.png", reference_index=2)
  assert plt.imread(path).shape[0] > 100


def test_plot_latent_arithmetic_layout():
  inputs = np.zeros((2, 4, 4, 1), np.float32)
  decoded = np.ones((2, 3, 4, 4, 1), np.float32)
  reference = np.full((4, 4, 1), 0.25, np.float32)
  fig = grids.plot_latent_arithmetic(inputs, decoded, [0, 0.5, 1], "t", ["a", "b"],
                                        reference=reference)
  shown = np.asarray(fig.axes[0].images[0].get_array())
  chex.assert_shape(shown, (3 * 5 - 1, 4 * 5 - 1))
  assert np.all(shown[:4, :4] == 0.25) and np.all(shown[:4, 5:] == grids.PAD_VALUE)
  assert np.all(shown[5:9, :4] == 0.0) and np.all(shown[5:9, 5:9] == 1.0)
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_xticklabels()] == ["input", "α=0", "α=0.5", "α=1"]
  assert [t.get_text() for t in ax.get_yticklabels()] == ["reference", "a", "b"]
  plt.close(fig)


@pytest.mark.parametrize("make_call, match", [
    (lambda vae, cvae: model_figures.class_arithmetic_arrays(*vae, IMAGES, LABELS, 1, 5),
     "has no images"),
    (lambda vae, cvae: model_figures.class_arithmetic_arrays(*cvae, IMAGES, LABELS, 1, 2),
     "unconditional"),
    (lambda vae, cvae: model_figures.class_arithmetic_arrays(*vae, IMAGES, LABELS[:3], 1, 2),
     "labels"),
    (lambda vae, cvae: model_figures.style_arithmetic_arrays(*vae, IMAGES, LABELS),
     "conditional VAE"),
    (lambda vae, cvae: model_figures.style_arithmetic_arrays(*cvae, IMAGES, LABELS, 8),
     "reference_index"),
    (lambda vae, cvae: model_figures.style_arithmetic_arrays(*cvae, IMAGES, LABELS, num_queries=8),
     "num_queries"),
    (lambda vae, cvae: grids.plot_latent_arithmetic(
        np.zeros((2, 4, 4, 1)), np.zeros((2, 2, 4, 4, 1)), [0.0], "t"), "len"),
])
def test_bad_arguments_get_one_clear_error(vae, cvae, make_call, match):
  with pytest.raises(ValueError, match=match):
    make_call(vae, cvae)
