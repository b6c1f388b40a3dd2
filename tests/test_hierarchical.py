"""Tests of the top-down hierarchical VAE."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vaejax import distributions, models, objectives
from vaejax.models.hierarchical import HierarchicalVAE

SHAPE = (8, 8, 1)


def make(latent_sizes=(6, 4, 2), **kw):
  model = HierarchicalVAE(image_shape=SHAPE, latent_sizes=latent_sizes, hidden_size=32, **kw)
  x = (jax.random.uniform(jax.random.key(0), (5, *SHAPE)) > 0.5).astype(jnp.float32)
  params = model.init({"params": jax.random.key(1), "sample": jax.random.key(2)}, x)["params"]
  return model, params, x


def test_outputs_concatenate_levels_and_the_top_prior_is_standard_normal():
  model, params, x = make()
  out = model.apply({"params": params}, x, rngs={"sample": jax.random.key(3)})
  for leaf in (out.mean, out.log_var, out.z, out.prior_mean, out.prior_log_var):
    chex.assert_shape(leaf, (5, 12))
  chex.assert_shape(out.likelihood["logits"], (5, *SHAPE))
  assert model.latent_groups == (0,) * 6 + (1,) * 4 + (2,) * 2
  np.testing.assert_array_equal(out.prior_mean[:, 10:], 0.0)  # level L: N(0, I)
  np.testing.assert_array_equal(out.prior_log_var[:, 10:], 0.0)


def test_zero_initialised_prior_heads_start_every_prior_at_standard_normal():
  model, params, x = make()
  out = model.apply({"params": params}, x, rngs={"sample": jax.random.key(3)})
  np.testing.assert_array_equal(out.prior_mean, 0.0)
  np.testing.assert_array_equal(out.prior_log_var, 0.0)
  # ... and the ELBO's KL is then the KL to N(0, I).
  terms = objectives.elbo_terms(x, out)
  np.testing.assert_allclose(
      terms["kl_per_dim"], distributions.kl_standard_normal(out.mean, out.log_var), rtol=1e-6
  )


def test_kl_is_against_the_top_down_prior_once_it_is_learned():
  model, params, x = make()
  leaves, tree = jax.tree.flatten(params)  # perturb: non-zero prior heads
  keys = jax.random.split(jax.random.key(9), len(leaves))
  params = tree.unflatten([p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  out = model.apply({"params": params}, x, rngs={"sample": jax.random.key(3)})
  assert np.abs(np.asarray(out.prior_mean[:, :10])).max() > 1e-3
  terms = objectives.elbo_terms(x, out)
  manual = distributions.kl_diag_gaussians(out.mean, out.log_var, out.prior_mean,
                                           out.prior_log_var)
  np.testing.assert_allclose(terms["kl_per_dim"], manual, rtol=1e-6)
  # The posterior of a lower level depends on the sample drawn above it.
  other = model.apply({"params": params}, x, rngs={"sample": jax.random.key(4)})
  np.testing.assert_array_equal(out.mean[:, 10:], other.mean[:, 10:])  # top level: x only
  assert not np.allclose(out.mean[:, :6], other.mean[:, :6])


def test_decode_reproduces_the_forward_pass_likelihood():
  model, params, x = make()
  params = jax.tree.map(lambda p: p + 0.01, params)
  out = model.apply({"params": params}, x, rngs={"sample": jax.random.key(5)})
  decoded = model.apply({"params": params}, out.z, method="decode")
  np.testing.assert_allclose(decoded["logits"], out.likelihood["logits"], rtol=1e-5, atol=1e-5)
  mean, _ = model.apply({"params": params}, x, method="encode")
  chex.assert_shape(mean, (5, 12))
  z, likelihood = model.apply({"params": params}, 7, method="sample_prior",
                              rngs={"sample": jax.random.key(6)})
  chex.assert_shape(z, (7, 12))
  chex.assert_shape(likelihood["logits"], (7, *SHAPE))


def test_free_bits_per_level_and_training_reduces_the_loss():
  model, params, x = make()
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)
  settings = objectives.LossSettings(free_bits=0.05)

  @jax.jit
  def step(params, opt_state, key):
    def loss_fn(p):
      out = model.apply({"params": p}, x, rngs={"sample": key})
      return objectives.elbo_loss(x, out, settings, free_bits_groups=model.latent_groups)[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss, grads

  losses = []
  for i in range(60):
    params, opt_state, loss, grads = step(params, opt_state, jax.random.key(i))
    losses.append(float(loss))
  chex.assert_tree_all_finite(grads)
  assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 5.0, losses[::10]


def test_log_variances_stay_finite_under_extreme_weights():
  model, params, x = make()
  params = jax.tree.map(lambda p: p + 0.5, params)
  out = model.apply({"params": params}, x, rngs={"sample": jax.random.key(3)})
  chex.assert_tree_all_finite(out)
  assert np.abs(np.asarray(out.log_var)).max() <= 10.0


def test_registry_builds_it_and_bad_levels_raise():
  model = models.create_model({"name": "hvae", "latent_sizes": (4, 2), "hidden_size": 16},
                              SHAPE)
  assert isinstance(model, HierarchicalVAE) and model.num_levels == 2
  with pytest.raises(ValueError, match="latent_sizes"):
    HierarchicalVAE(image_shape=SHAPE, latent_sizes=())
  with pytest.raises(ValueError, match="latent_sizes"):
    models.create_model({"name": "hvae", "latent_sizes": (4, 0)}, SHAPE)
  model, params, x = make()
  with pytest.raises(ValueError, match="Images must have shape"):
    model.apply({"params": params}, x[:, :4], rngs={"sample": jax.random.key(0)})


def test_sample_prior_temperature():
  model, params, _ = make()
  params = jax.tree.map(lambda p: p + 0.05, params)  # non-zero prior heads
  sample = jax.jit(lambda k, t: model.apply({"params": params}, 4, t, method="sample_prior",
                                            rngs={"sample": k}))
  z0a, lik0a = sample(jax.random.key(1), 0.0)
  z0b, lik0b = sample(jax.random.key(2), 0.0)
  chex.assert_trees_all_equal((z0a, lik0a), (z0b, lik0b))  # T = 0: the prior means
  np.testing.assert_array_equal(z0a[:, 10:], 0.0)  # the top prior N(0, I) has mean 0
  z1a, _ = sample(jax.random.key(1), 1.0)
  z_half, _ = sample(jax.random.key(1), 0.5)
  assert not np.allclose(z1a, z0a)
  np.testing.assert_allclose(z_half[:, 10:], 0.5 * z1a[:, 10:], rtol=1e-6)  # top: z = T·ε
  with pytest.raises(ValueError, match="temperature"):
    model.apply({"params": params}, 2, float("nan"), method="sample_prior",
                rngs={"sample": jax.random.key(0)})
