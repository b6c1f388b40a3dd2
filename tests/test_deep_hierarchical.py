"""Tests of the deep convolutional top-down hierarchical VAE ("deep_hvae").

One tiny model (8×8 images; levels at 4×4, 2×2, 2×2 and 1×1) is initialised once per
module and its compiled functions are shared. Compilation dominates the run time on a
CPU, so the tests compile with XLA's backend optimisations off (the same semantics,
slower code, about half the compile time) and use RBG keys (XLA compiles threefry draws
slowly on CPU).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vaejax import models, objectives
from vaejax.models.deep_hierarchical import DeepHierarchicalVAE

SHAPE = (8, 8, 1)
TINY = {"name": "deep_hvae", "resolutions": (4, 2, 1), "levels_per_stage": (1, 2, 1),
        "latent_channels": (2, 2, 3), "state_channels": 8,
        "bottleneck_channels": 4, "encoder_blocks": 1}
# Level 0 (next to the data) first: 4×4×2, 2×2×2, 2×2×2, 1×1×3.
LEVEL_SIZES = (32, 8, 8, 3)
BATCH = 6


jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def key(seed):
  return jax.random.key(seed, impl="rbg")


def init_keys(seed=0):
  return {"params": key(seed), "sample": key(seed + 1)}


def images(batch=BATCH, seed=0):
  return jnp.asarray(np.random.default_rng(seed).random((batch,) + SHAPE) < 0.4, jnp.float32)


def perturbed(params, scale=0.3, seed=9):
  """Parameters moved off the zero-initialised heads, so priors and posteriors differ.

  In NumPy: eager JAX would compile an addition for every distinct parameter shape.
  """
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return tree.unflatten([np.asarray(p) + scale * rng.normal(size=p.shape).astype(p.dtype)
                         for p in leaves])


@pytest.fixture(scope="module")
def setup():
  model = models.create_model(TINY, SHAPE)
  x = images()
  params = jit(model.init)(init_keys(), x)["params"]
  forward = jit(lambda p, x, k: model.apply({"params": p}, x, rngs={"sample": k}))
  return model, params, x, forward


FLOOR = 0.05

# Rows of a batch that hold the same computation agree only to float32 rounding: XLA tiles a
# batched matmul/conv differently per instruction set, and a row in a remainder tile is
# summed in another order. Through this model's ~12 layers of O(1) activations that is a
# few ulp per layer (measured: 3.3e-7 on AVX2), so 1e-5 absolute/relative leaves a margin
# of 30x while still catching any real difference between rows (O(0.1) and up).
ROW_RTOL = ROW_ATOL = 1e-5


@pytest.fixture(scope="module")
def floored(setup):
  """The tiny model with a posterior variance floor, parameters far from initialisation."""
  _, params, x, _ = setup
  model = models.create_model({**TINY, "posterior_min_variance": FLOOR}, SHAPE)
  forward = jit(lambda p, x, k: model.apply({"params": p}, x, rngs={"sample": k}))
  return model, perturbed(params, scale=0.6), forward


def kl_reference(mean_q, log_var_q, mean_p, log_var_p):
  """KL(N(μq, σq²) ‖ N(μp, σp²)) per dimension in float64, the textbook form."""
  mean_q, log_var_q, mean_p, log_var_p = (
      np.asarray(a, np.float64) for a in (mean_q, log_var_q, mean_p, log_var_p))
  return 0.5 * (log_var_p - log_var_q
                + (np.exp(log_var_q) + (mean_q - mean_p) ** 2) / np.exp(log_var_p) - 1.0)


def test_levels_resolutions_shapes_and_groups(setup):
  model, params, x, forward = setup
  assert isinstance(model, DeepHierarchicalVAE) and model.num_levels == 4
  assert model.level_shapes == ((4, 4, 2), (2, 2, 2), (2, 2, 2), (1, 1, 3))
  assert model.level_sizes == LEVEL_SIZES and model.latent_dim == sum(LEVEL_SIZES)
  assert model.latent_groups == sum(((l,) * n for l, n in enumerate(LEVEL_SIZES)), ())
  out = forward(params, x, key(1))
  for leaf in (out.mean, out.log_var, out.z, out.prior_mean, out.prior_log_var):
    chex.assert_shape(leaf, (BATCH, 51))
    assert leaf.dtype == jnp.float32
  assert set(out.likelihood) == {"logits"}
  chex.assert_shape(out.likelihood["logits"], (BATCH, *SHAPE))
  chex.assert_tree_all_finite(out)


def test_kl_is_exactly_zero_at_initialisation(setup):
  model, params, x, forward = setup
  out = forward(params, x, key(1))
  # Zero-initialised heads: every prior is N(0, I) and every posterior equals its prior.
  for leaf in (out.prior_mean, out.prior_log_var, out.mean, out.log_var):
    np.testing.assert_array_equal(leaf, 0.0)
  terms = objectives.elbo_terms(x, out)
  np.testing.assert_array_equal(terms["kl"], 0.0)
  assert np.all(np.isfinite(terms["recon"])) and np.all(terms["recon"] < 0)


def test_per_level_kl_matches_an_independent_computation(setup):
  model, params, x, forward = setup
  params = perturbed(params)
  out = forward(params, x, key(1))
  reference = kl_reference(out.mean, out.log_var, out.prior_mean, out.prior_log_var)
  bounds = np.cumsum((0,) + LEVEL_SIZES)
  per_level_reference = np.stack(
      [reference[:, lo:hi].sum(-1) for lo, hi in zip(bounds[:-1], bounds[1:])], axis=-1)
  terms = objectives.elbo_terms(x, out)
  per_level = jax.vmap(lambda k: jax.ops.segment_sum(
      k, jnp.asarray(model.latent_groups), num_segments=4))(terms["kl_per_dim"])
  np.testing.assert_allclose(per_level, per_level_reference, rtol=1e-4, atol=1e-5)
  assert np.all(per_level_reference > 1e-3)  # every level's prior and posterior differ
  # Free bits per level see the same per-level KLs (batch-averaged before the max).
  np.testing.assert_allclose(
      objectives.free_bits_kl(terms["kl_per_dim"], 1e3, model.latent_groups), 4 * 1e3)
  np.testing.assert_allclose(
      objectives.free_bits_kl(terms["kl_per_dim"], 0.0, model.latent_groups),
      per_level_reference.mean(0).sum(), rtol=1e-4)


def test_levels_are_ordered_top_down_and_decode_reproduces_the_forward_pass(setup):
  model, params, x, forward = setup
  params = perturbed(params)
  a, b = forward(params, x, key(1)), forward(params, x, key(2))
  top = slice(48, 51)
  # The top level depends on x only; its prior on nothing but the parameters.
  np.testing.assert_array_equal(a.mean[:, top], b.mean[:, top])
  # Every row holds the same prior, computed once per row of a batched program: rows may
  # be tiled differently (AVX2 vs AVX-512), so they agree to float32 rounding, not bit for bit.
  np.testing.assert_allclose(a.prior_mean[:, top], np.broadcast_to(a.prior_mean[:1, top],
                                                                    (BATCH, 3)),
                             rtol=ROW_RTOL, atol=ROW_ATOL)
  # Lower levels are conditioned on the z sampled above them.
  assert not np.allclose(a.prior_mean[:, :32], b.prior_mean[:, :32])
  assert not np.allclose(a.mean[:, :32], b.mean[:, :32])
  decoded, (mean, log_var) = jit(lambda p, z: (
      model.apply({"params": p}, z, method="decode"),
      model.apply({"params": p}, x, method="encode")))(params, a.z)
  np.testing.assert_allclose(decoded["logits"], a.likelihood["logits"], rtol=1e-5, atol=1e-5)
  chex.assert_shape((mean, log_var), (BATCH, 51))
  np.testing.assert_allclose(mean[:, top], a.mean[:, top], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r"\(batch, 51\)"):
    model.apply({"params": params}, a.z[:, :50], method="decode")
  with pytest.raises(ValueError, match="Images must have shape"):
    model.apply({"params": params}, x[:, :4], rngs={"sample": key(0)})


def test_ancestral_sampling_temperature(setup):
  model, params, _, _ = setup
  params = perturbed(params)
  sample = jit(lambda p, k, t: model.apply(
      {"params": p}, 5, t, method="sample_prior", rngs={"sample": k}))
  z0a, lik0a = sample(params, key(1), 0.0)
  z0b, lik0b = sample(params, key(2), 0.0)
  chex.assert_shape(z0a, (5, 51))
  chex.assert_shape(lik0a["logits"], (5, *SHAPE))
  # T = 0: the prior means; the same program on the same inputs (the key is multiplied
  # by 0), so bit-equal.
  chex.assert_trees_all_equal((z0a, lik0a), (z0b, lik0b))
  # Rows of one batch: equal up to float32 rounding (see ROW_RTOL).
  np.testing.assert_allclose(z0a, np.broadcast_to(z0a[:1], z0a.shape),
                             rtol=ROW_RTOL, atol=ROW_ATOL)
  z1a, lik1a = sample(params, key(1), 1.0)
  z1b, _ = sample(params, key(2), 1.0)
  assert not np.allclose(z1a, z1b)
  assert not np.allclose(z1a[0], z1a[1])
  assert not np.allclose(lik1a["logits"], lik0a["logits"])
  # The top level is z = μ + T σ ε with the same ε for the same key: linear in T.
  z_half, _ = sample(params, key(1), 0.5)
  top = slice(48, 51)
  np.testing.assert_allclose(z_half[:, top] - z0a[:, top], 0.5 * (z1a[:, top] - z0a[:, top]),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="temperature"):
    model.apply({"params": params}, 2, -1.0, method="sample_prior",
                rngs={"sample": key(0)})


def test_jit_equals_eager(setup):
  # Parameters at the scale of `setup`'s perturbation keep activations O(1-10) (the
  # `floored` fixture's larger scale drives them to ~4e3, where one float32 ulp is 2.4e-4
  # and any two programs differ by that much); a floor of 0.3 still binds there.
  _, params, x, _ = setup
  params = perturbed(params)
  model = models.create_model({**TINY, "posterior_min_variance": 0.3}, SHAPE)
  raw = setup[3](params, x, key(4))
  assert np.min(raw.log_var) < np.log(0.3)  # the floor is exercised
  forward = jit(lambda p, x, k: model.apply({"params": p}, x, rngs={"sample": k}))
  eager = model.apply({"params": params}, x, rngs={"sample": key(4)})
  # jit fuses and reorders float32 sums differently from op-by-op execution: a few ulp per
  # layer over ~12 layers of O(1-10) values (measured ≤ 2.5e-6 on AVX2 and SSE4.2).
  chex.assert_trees_all_close(forward(params, x, key(4)), eager, rtol=2e-5, atol=2e-5)


def test_the_posterior_variance_floor_applies(setup, floored):
  _, _, x, forward = setup
  _, params, floored_forward = floored
  raw, out = forward(params, x, key(1)), floored_forward(params, x, key(1))
  assert np.min(raw.log_var) < np.log(FLOOR)  # the floor is exercised
  assert np.min(out.log_var) >= np.float32(np.log(FLOOR))
  # The top level's raw variance does not depend on the samples below: the floor is
  # log(σ² + floor) of the same σ².
  top = slice(48, 51)
  np.testing.assert_allclose(out.log_var[:, top], np.logaddexp(raw.log_var[:, top],
                                                               np.log(FLOOR)), rtol=1e-5)
  np.testing.assert_array_equal(out.prior_log_var[:, top], raw.prior_log_var[:, top])


def test_gradients_are_finite_and_training_lowers_the_loss(setup):
  model, params, _, _ = setup
  # 64 noisy copies of 4 binary prototypes.
  rng = np.random.default_rng(3)
  prototypes = rng.random((4,) + SHAPE) < 0.5
  flips = rng.random((64,) + SHAPE) < 0.05
  x = jnp.asarray(prototypes[np.arange(64) % 4] ^ flips, jnp.float32)
  optimizer = optax.adam(3e-2)
  settings = objectives.LossSettings(free_bits=0.1)

  @jit
  def step(params, opt_state, k):
    def loss_fn(p):
      out = model.apply({"params": p}, x, rngs={"sample": k})
      loss, terms = objectives.elbo_loss(x, out, settings, free_bits_groups=model.latent_groups)
      return loss, jnp.mean(terms["kl"])
    (loss, kl), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss, kl, grads

  opt_state = optimizer.init(params)
  losses = []
  for i in range(30):
    params, opt_state, loss, kl, grads = step(params, opt_state, key(i))
    chex.assert_tree_all_finite(grads)
    if i == 0:  # zero-initialised heads still learn: their gradients are not zero
      for level in range(4):
        for head in (f"prior_{level}", f"posterior_{level}"):
          assert max(float(jnp.abs(g).max())
                     for g in jax.tree.leaves(grads[head]["conv_out"])) > 0, head
    losses.append(float(loss))
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 4.0, losses[::5]
  assert float(kl) > 0.01  # the posteriors have moved off their priors


@pytest.mark.parametrize("override,shape,match", [
    ({"resolutions": (3, 1, 1)}, SHAPE, r"resolutions \(3, 1, 1\) do not fit 8×8"),
    ({"resolutions": (4, 4, 1)}, SHAPE, "must decrease"),
    ({"levels_per_stage": (1, 2)}, SHAPE, "same length"),
    ({"latent_channels": (2, 0, 3)}, SHAPE, "latent_channels"),
    ({"levels_per_stage": (1, 0, 1)}, SHAPE, "levels_per_stage"),
    ({"state_channels": 0}, SHAPE, "state_channels"),
    ({"bottleneck_channels": 2.5}, SHAPE, "bottleneck_channels"),
    ({"encoder_blocks": 0}, SHAPE, "encoder_blocks"),
    ({"posterior_min_variance": -0.1}, SHAPE, "posterior_min_variance"),
    ({}, (8, 4, 1), "square"),
])
def test_bad_configs_raise_one_clear_error(override, shape, match):
  with pytest.raises(ValueError, match=match):
    models.create_model({**TINY, **override}, shape)


def test_registry_defaults_fit_mnist():
  model = models.create_model({"name": "deep_hvae"}, (28, 28, 1))
  assert model.resolutions == (14, 7, 1) and model.num_levels == 6
  assert model.level_shapes[0] == (14, 14, 4) and model.level_shapes[-1] == (1, 1, 16)
  assert model.latent_dim == 14 * 14 * 4 + 3 * 7 * 7 * 8 + 2 * 16
