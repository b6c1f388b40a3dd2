"""vaejax.models.codec: encode / decode / decode_mean / prior_samples against the model's own
``apply`` (the independent reference, called directly here), for a VAE, a conditional VAE,
a Gaussian-likelihood VAE and the hierarchical VAE."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaejax import models
from vaejax.models import codec

IMAGE_SHAPE = (4, 4, 1)
NUM_CLASSES = 3
# The codec runs the model jitted, the reference op by op: float32 round-off only.
TOL = 1e-5

CONFIGS = {
    "mlp_vae": {"name": "mlp_vae", "latent_dim": 3, "hidden_sizes": (8,)},
    "mlp_cvae": {"name": "mlp_cvae", "latent_dim": 3, "hidden_sizes": (8,)},
    "gaussian": {"name": "mlp_vae", "latent_dim": 3, "hidden_sizes": (8,),
                 "likelihood": "gaussian_learned"},
    "hvae": {"name": "hvae", "latent_sizes": (3, 2), "hidden_size": 8},
}


def _setup(kind):
  model = models.create_model(CONFIGS[kind], IMAGE_SHAPE,
                              NUM_CLASSES if kind == "mlp_cvae" else None)
  x = jax.random.uniform(jax.random.key(0), (5, *IMAGE_SHAPE))
  labels = jnp.array([0, 1, 2, 1, 0], jnp.int32) if kind == "mlp_cvae" else None
  params = model.init({"params": jax.random.key(1), "sample": jax.random.key(2)},
                      x, labels)["params"]
  return model, params, x, labels


def _reference_mean(likelihood):
  """E[x | z] written out: sigmoid of Bernoulli logits, else the Gaussian mean."""
  if "logits" in likelihood:
    return 1.0 / (1.0 + np.exp(-np.asarray(likelihood["logits"], np.float64)))
  return np.asarray(likelihood["mean"])


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_encode_and_decode_equal_the_models_apply(kind):
  model, params, x, labels = _setup(kind)
  variables = {"params": params}
  mean, log_var = codec.encode(model, params, x, labels)
  ref_mean, ref_log_var = model.apply(variables, x, labels, method="encode")
  chex.assert_trees_all_close((mean, log_var), (ref_mean, ref_log_var), atol=TOL, rtol=TOL)

  z = jax.random.normal(jax.random.key(3), (5, model.latent_dim))
  likelihood = codec.decode(model, params, z, labels)
  reference = model.apply(variables, z, labels, method="decode")
  assert set(likelihood) == set(reference)
  chex.assert_trees_all_close(likelihood, reference, atol=TOL, rtol=TOL)
  chex.assert_trees_all_close(np.asarray(codec.decode_mean(model, params, z, labels),
                                         np.float64),
                              _reference_mean(reference), atol=TOL, rtol=TOL)


def test_a_conditional_models_decode_depends_on_the_labels():
  model, params, _, _ = _setup("mlp_cvae")
  z = jnp.zeros((NUM_CLASSES, model.latent_dim))
  images = np.asarray(codec.decode_mean(model, params, z, jnp.arange(NUM_CLASSES)))
  assert not np.allclose(images[0], images[1])
  assert codec.is_conditional(model)
  assert not codec.is_conditional(_setup("mlp_vae")[0])
  assert not codec.is_conditional(object())  # anything without the attribute


def test_prior_samples_of_a_flat_model_decode_standard_normal_draws():
  model, params, _, _ = _setup("mlp_vae")
  key = jax.random.key(4)
  z = jax.random.normal(key, (6, model.latent_dim))
  reference = _reference_mean(model.apply({"params": params}, z, method="decode"))
  chex.assert_trees_all_close(np.asarray(codec.prior_samples(model, params, key, 6),
                                         np.float64), reference, atol=TOL, rtol=TOL)
  # Temperature T scales the draws: z = T ε.
  scaled = _reference_mean(model.apply({"params": params}, 0.5 * z, method="decode"))
  chex.assert_trees_all_close(
      np.asarray(codec.prior_samples(model, params, key, 6, temperature=0.5), np.float64),
      scaled, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_prior_samples_of_a_hierarchical_model_are_its_ancestral_samples(temperature):
  model, params, _, _ = _setup("hvae")
  key = jax.random.key(5)
  _, likelihood = model.apply({"params": params}, 4, temperature, method="sample_prior",
                              rngs={"sample": key})
  chex.assert_trees_all_close(
      np.asarray(codec.prior_samples(model, params, key, 4, temperature=temperature),
                 np.float64),
      _reference_mean(likelihood), atol=TOL, rtol=TOL)


def test_codec_functions_vmap_over_a_stack_of_parameters():
  model, params, x, _ = _setup("mlp_vae")
  other = model.init({"params": jax.random.key(7), "sample": jax.random.key(8)}, x)["params"]
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, other)
  means = jax.vmap(lambda p: codec.encode(model, p, x)[0])(stacked)
  for m, p in enumerate((params, other)):
    chex.assert_trees_all_close(means[m], model.apply({"params": p}, x, method="encode")[0],
                                atol=TOL, rtol=TOL)


@pytest.mark.parametrize("kind", ["mlp_cvae", "hvae"])
def test_traverse_decodes_each_mean_with_one_coordinate_swept(kind):
  model, params, x, labels = _setup(kind)
  variables = {"params": params}
  values = jnp.array([-2.0, 0.0, 1.5])
  dim = model.latent_dim - 1
  paths = np.asarray(codec.traverse(model, params, x, dim, values, labels), np.float64)
  assert paths.shape == (5, 3, *IMAGE_SHAPE)
  mean, _ = model.apply(variables, x, labels, method="encode")
  for v, value in enumerate(values):  # the reference: one decode per value, written out
    z = np.asarray(mean).copy()
    z[:, dim] = value
    reference = _reference_mean(model.apply(variables, jnp.asarray(z), labels, method="decode"))
    chex.assert_trees_all_close(paths[:, v], reference, atol=TOL, rtol=TOL)


def test_forward_is_one_sample_of_the_models_pass():
  model, params, x, labels = _setup("mlp_cvae")
  key = jax.random.key(6)
  outputs = codec.forward(model, params, x, key, labels)
  reference = model.apply({"params": params}, x, labels, rngs={"sample": key})
  chex.assert_trees_all_close(outputs, reference, atol=TOL, rtol=TOL)
  assert not np.allclose(codec.forward(model, params, x, jax.random.key(7), labels).z,
                         outputs.z)
