"""Tests of vaejax.distributions against independent references (scipy, float64, Monte Carlo)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

from vaejax import distributions as D
from vaejax import testing

jax.config.update("jax_numpy_rank_promotion", "allow")

finite_mean = st.floats(-50.0, 50.0, width=32)
finite_log_var = st.floats(-10.0, 10.0, width=32)


def kl_standard_normal_f64(mean, log_var):
  mean, log_var = np.float64(mean), np.float64(log_var)
  return 0.5 * (mean**2 + np.expm1(log_var) - log_var)


def kl_diag_f64(mq, lq, mp, lp):
  mq, lq, mp, lp = map(np.float64, (mq, lq, mp, lp))
  d = lq - lp
  return 0.5 * ((mq - mp) ** 2 * np.exp(-lp) + np.expm1(d) - d)


# ----------------------------------------------------------------------------- Monte Carlo


@pytest.mark.parametrize("seed", range(3))
def test_kl_standard_normal_matches_monte_carlo_multivariate(seed):
  key_params, key_mc = jax.random.split(jax.random.key(seed))
  k1, k2 = jax.random.split(key_params)
  mean = 2.0 * jax.random.normal(k1, (40, 6))
  log_var = 1.5 * jax.random.normal(k2, (40, 6))
  closed = jnp.sum(D.kl_standard_normal(mean, log_var), axis=-1)
  testing.assert_gaussian_kl_matches_monte_carlo(key_mc, closed, mean, log_var)


@pytest.mark.parametrize("seed", range(3))
def test_kl_diag_gaussians_matches_monte_carlo_multivariate(seed):
  keys = jax.random.split(jax.random.key(100 + seed), 5)
  mq, mp = (2.0 * jax.random.normal(k, (40, 6)) for k in keys[:2])
  lq, lp = (jax.random.normal(k, (40, 6)) for k in keys[2:4])
  closed = jnp.sum(D.kl_diag_gaussians(mq, lq, mp, lp), axis=-1)
  testing.assert_gaussian_kl_matches_monte_carlo(keys[4], closed, mq, lq, mp, lp)


def test_monte_carlo_check_rejects_a_kl_averaged_over_dimensions():
  """The reusable check can fail: the tutorial bug (mean over latents) is caught."""
  k1, k2 = jax.random.split(jax.random.key(7))
  mean = jax.random.normal(k1, (20, 8))
  log_var = 0.5 * jax.random.normal(k2, (20, 8))
  wrong = jnp.mean(D.kl_standard_normal(mean, log_var), axis=-1)
  with pytest.raises(AssertionError, match="standard errors"):
    testing.assert_gaussian_kl_matches_monte_carlo(jax.random.key(8), wrong, mean, log_var)


# ----------------------------------------------------------------------------- quadrature


@pytest.mark.parametrize(
    "mq,lq,mp,lp", [(0.3, -0.4, 0.0, 0.0), (-1.5, 1.0, 0.5, -0.7), (2.0, -2.0, -1.0, 1.2)]
)
def test_kl_1d_matches_numerical_quadrature(mq, lq, mp, lp):
  sq, sp = np.exp(0.5 * lq), np.exp(0.5 * lp)

  def integrand(z):
    log_q = stats.norm.logpdf(z, mq, sq)
    return np.exp(log_q) * (log_q - stats.norm.logpdf(z, mp, sp))

  reference, _ = integrate.quad(integrand, mq - 20 * sq, mq + 20 * sq, epsabs=1e-12)
  np.testing.assert_allclose(D.kl_diag_gaussians(mq, lq, mp, lp), reference, rtol=1e-5)
  if mp == 0.0 and lp == 0.0:
    np.testing.assert_allclose(D.kl_standard_normal(mq, lq), reference, rtol=1e-5)


# ----------------------------------------------------------------------------- precision


def test_kl_relative_error_near_zero_against_float64():
  """Relative error ≤ 1e-3 wherever KL ≥ 1e-7: the expm1 form, not 1 + x − e^x."""
  log_var = np.concatenate([-np.logspace(-6, 1, 3000), np.logspace(-6, 1, 3000)])
  log_var = log_var.astype(np.float32)
  mean = np.zeros_like(log_var)
  reference = kl_standard_normal_f64(mean, log_var)
  mask = reference >= 1e-7
  assert mask.sum() > 3000  # the test really probes the small-KL region
  got = np.asarray(D.kl_standard_normal(mean, log_var), np.float64)
  assert np.max(np.abs(got[mask] - reference[mask]) / reference[mask]) <= 1e-3

  rng = np.random.default_rng(0)
  lp = rng.normal(size=5000).astype(np.float32)
  lq = (lp + rng.normal(size=5000) * 1e-3).astype(np.float32)
  mp = rng.normal(size=5000).astype(np.float32)
  mq = (mp + rng.normal(size=5000) * 1e-3).astype(np.float32)
  reference = kl_diag_f64(mq, lq, mp, lp)
  mask = reference >= 1e-7
  got = np.asarray(D.kl_diag_gaussians(mq, lq, mp, lp), np.float64)
  assert np.max(np.abs(got[mask] - reference[mask]) / reference[mask]) <= 1e-3


def test_naive_formula_would_fail_the_precision_test():
  """Guards the precision test itself: the textbook 1 + log σ² − σ² form loses the digits."""
  log_var = np.float32(3e-4)
  naive = -0.5 * (np.float32(1) + log_var - np.exp(log_var))
  reference = kl_standard_normal_f64(0.0, log_var)
  assert abs(naive - reference) / reference > 1e-3
  assert abs(float(D.kl_standard_normal(0.0, log_var)) - reference) / reference < 1e-3


EXTREMES = [(m, lv) for m in (-1e3, 0.0, 1e3) for lv in (-30.0, 0.0, 30.0)]


@pytest.mark.parametrize("mean,log_var", EXTREMES)
def test_kl_values_and_gradients_finite_at_extremes(mean, log_var):
  kl, grads = jax.value_and_grad(lambda m, l: D.kl_standard_normal(m, l), (0, 1))(
      jnp.float32(mean), jnp.float32(log_var)
  )
  np.testing.assert_allclose(kl, kl_standard_normal_f64(mean, log_var), rtol=1e-5)
  chex.assert_tree_all_finite((kl, grads))
  for mp, lp in [(-mean, -log_var), (0.0, 0.0), (mean, log_var)]:
    value, grads = jax.value_and_grad(D.kl_diag_gaussians, (0, 1, 2, 3))(
        *map(jnp.float32, (mean, log_var, mp, lp))
    )
    chex.assert_tree_all_finite((value, grads))
    np.testing.assert_allclose(value, kl_diag_f64(mean, log_var, mp, lp), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- gradients


def test_kl_standard_normal_gradients_match_derivation():
  rng = np.random.default_rng(1)
  mean = jnp.asarray(rng.normal(size=100) * 3, jnp.float32)
  log_var = jnp.asarray(rng.uniform(-8, 8, size=100), jnp.float32)
  d_mean, d_log_var = jax.grad(lambda m, l: D.kl_standard_normal(m, l).sum(), (0, 1))(
      mean, log_var
  )
  np.testing.assert_allclose(d_mean, mean, rtol=1e-6)
  np.testing.assert_allclose(d_log_var, 0.5 * np.expm1(np.float64(log_var)), rtol=1e-5,
                             atol=1e-7)


def test_kl_diag_gaussians_gradients_match_derivation():
  rng = np.random.default_rng(2)
  mq, mp = (jnp.asarray(rng.normal(size=50), jnp.float32) for _ in range(2))
  lq, lp = (jnp.asarray(rng.uniform(-3, 3, size=50), jnp.float32) for _ in range(2))
  g_mq, g_lq, g_mp, g_lp = jax.grad(
      lambda *a: D.kl_diag_gaussians(*a).sum(), (0, 1, 2, 3)
  )(mq, lq, mp, lp)
  f64 = [np.float64(a) for a in (mq, lq, mp, lp)]
  diff, inv_var_p = f64[0] - f64[2], np.exp(-f64[3])
  ratio = np.exp(f64[1] - f64[3])
  np.testing.assert_allclose(g_mq, diff * inv_var_p, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_mp, -diff * inv_var_p, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_lq, 0.5 * (ratio - 1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_lp, 0.5 * (1 - ratio - diff**2 * inv_var_p), rtol=1e-5,
                             atol=1e-6)


# ----------------------------------------------------------------------------- laws


@settings(max_examples=200, deadline=None)
@given(finite_mean, finite_log_var, finite_mean, finite_log_var)
def test_kl_is_non_negative(mq, lq, mp, lp):
  assert float(D.kl_standard_normal(mq, lq)) >= 0.0
  assert float(D.kl_diag_gaussians(mq, lq, mp, lp)) >= 0.0


@settings(max_examples=200, deadline=None)
@given(finite_mean, finite_log_var)
def test_kl_of_a_distribution_with_itself_is_zero(mean, log_var):
  assert float(D.kl_diag_gaussians(mean, log_var, mean, log_var)) == 0.0
  assert float(D.kl_standard_normal(0.0, 0.0)) == 0.0


@settings(max_examples=100, deadline=None)
@given(finite_mean, finite_log_var, st.sampled_from([1, 2, 3, 10, 64]))
def test_kl_of_identical_dimensions_adds_up(mean, log_var, dims):
  """d identical dimensions carry d times the KL of one (catches averaging over dims)."""
  one = D.kl_standard_normal(mean, log_var)
  many = jnp.sum(D.kl_standard_normal(jnp.full(dims, mean), jnp.full(dims, log_var)))
  np.testing.assert_allclose(many, dims * one, rtol=1e-5)


@settings(max_examples=100, deadline=None)
@given(finite_mean, finite_log_var)
def test_kl_standard_normal_is_the_special_case_of_kl_diag(mean, log_var):
  np.testing.assert_allclose(
      D.kl_standard_normal(mean, log_var), D.kl_diag_gaussians(mean, log_var, 0.0, 0.0),
      rtol=1e-6, atol=1e-12,
  )


# ----------------------------------------------------------------------------- transforms


def test_kl_broadcasts_and_jit_vmap_eager_agree():
  rng = np.random.default_rng(3)
  mq, lq = rng.normal(size=(2, 7, 5)).astype(np.float32)
  mp, lp = rng.normal(size=(2, 5)).astype(np.float32)
  eager = D.kl_diag_gaussians(mq, lq, mp, lp)
  chex.assert_shape(eager, (7, 5))
  jitted = jax.jit(D.kl_diag_gaussians)(mq, lq, mp, lp)
  vmapped = jax.vmap(D.kl_diag_gaussians, in_axes=(0, 0, None, None))(mq, lq, mp, lp)
  chex.assert_trees_all_close(eager, jitted, vmapped, rtol=1e-6)


def test_mismatched_shapes_raise_a_clear_error():
  with pytest.raises(ValueError, match=r"broadcastable.*mean\(3,\).*log_var\(4,\)"):
    D.kl_standard_normal(jnp.zeros(3), jnp.zeros(4))
  with pytest.raises(ValueError, match="broadcastable"):
    D.kl_diag_gaussians(jnp.zeros(3), jnp.zeros(3), jnp.zeros(2), jnp.zeros(3))


def test_validate_diag_gaussian_names_the_bad_values():
  D.validate_diag_gaussian(np.zeros((2, 3)), np.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"log_var has 1 non-finite.*\(1, 2\)"):
    D.validate_diag_gaussian(np.zeros((2, 3)), np.array([[0, 0, 0], [0, 0, np.nan]]))
  with pytest.raises(ValueError, match="must match"):
    D.validate_diag_gaussian(np.zeros((2, 3)), np.zeros((3, 2)))


# ----------------------------------------------------------------------------- sampling


def test_reparameterised_samples_have_the_right_moments_and_gradients():
  mean, log_var = jnp.array([1.0, -2.0, 0.0]), jnp.array([0.0, 1.0, -2.0])
  z = D.sample_diag_gaussian(jax.random.key(0), mean, jnp.broadcast_to(log_var, (200_000, 3)))
  np.testing.assert_allclose(z.mean(0), mean, atol=0.02)
  np.testing.assert_allclose(z.var(0), np.exp(log_var), rtol=0.02)
  key = jax.random.key(1)
  eps = D.sample_diag_gaussian(key, jnp.zeros(3), jnp.zeros(3))
  d_mean, d_log_var = jax.jacfwd(lambda m, l: D.sample_diag_gaussian(key, m, l), (0, 1))(
      mean, log_var
  )
  np.testing.assert_allclose(d_mean, np.eye(3))
  np.testing.assert_allclose(np.diag(d_log_var), 0.5 * np.exp(0.5 * log_var) * eps, rtol=1e-6)


# ----------------------------------------------------------------------------- likelihoods


def test_gaussian_log_probs_match_scipy():
  rng = np.random.default_rng(4)
  x, mean = rng.normal(size=(2, 100))
  log_var = rng.uniform(-5, 5, size=100)
  np.testing.assert_allclose(
      D.diag_gaussian_log_prob(x, mean, log_var),
      stats.norm.logpdf(x, mean, np.exp(0.5 * log_var)), rtol=1e-5, atol=1e-5,
  )
  np.testing.assert_allclose(D.standard_normal_log_prob(x), stats.norm.logpdf(x), rtol=1e-6)


def test_bernoulli_log_prob_matches_reference_and_is_stable():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=200) * 5
  x = (rng.uniform(size=200) < 0.5).astype(np.float64)
  reference = stats.bernoulli.logpmf(x, special.expit(logits))
  np.testing.assert_allclose(D.bernoulli_log_prob(x, logits), reference, rtol=1e-5, atol=1e-6)
  extreme = jnp.array([-200.0, 200.0, -200.0, 200.0])
  targets = jnp.array([0.0, 1.0, 1.0, 0.0])
  value, grad = jax.value_and_grad(lambda l: D.bernoulli_log_prob(targets, l).sum())(extreme)
  np.testing.assert_allclose(D.bernoulli_log_prob(targets, extreme), [0, 0, -200, -200],
                             atol=1e-5)
  chex.assert_tree_all_finite((value, grad))


def test_likelihood_dispatch_and_min_variance_floor():
  x = jnp.array([[0.0, 1.0]])
  logits = jnp.array([[0.5, -0.5]])
  np.testing.assert_allclose(
      D.likelihood_log_prob(x, {"logits": logits}), D.bernoulli_log_prob(x, logits)
  )
  params = D.gaussian_likelihood_params(jnp.zeros((1, 2)), jnp.array([[-20.0, 0.0]]),
                                        min_variance=1e-3)
  np.testing.assert_allclose(params["log_var"], [[np.log(1e-3), 0.0]], rtol=1e-6)
  fixed = D.gaussian_likelihood_params(jnp.zeros((1, 2)), -1.0)
  chex.assert_shape(fixed["log_var"], (1, 2))
  np.testing.assert_allclose(
      D.likelihood_log_prob(x, fixed), stats.norm.logpdf(x, 0.0, np.exp(-0.5)), rtol=1e-5
  )
  # The floor stops the gradient that would shrink the variance further.
  grad = jax.grad(lambda lv: D.clip_log_var(lv, 1e-3).sum())(jnp.array([-20.0, 0.0]))
  np.testing.assert_allclose(grad, [0.0, 1.0])
  with pytest.raises(ValueError, match="Unknown likelihood parameters"):
    D.likelihood_log_prob(x, {"probs": x})
  with pytest.raises(ValueError, match="min_variance"):
    D.clip_log_var(jnp.zeros(2), 0.0)
