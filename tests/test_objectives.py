"""Tests of vaejax.objectives: each loss setting against its definition, computed independently."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

from vaejax import objectives as O
from vaejax.types import VAEOutput

B, D_LATENT, H, W = 6, 4, 5, 5


def make_outputs(seed=0, batch=B, latent=D_LATENT, prior=False):
  rng = np.random.default_rng(seed)
  mean = rng.normal(size=(batch, latent)).astype(np.float32)
  log_var = rng.uniform(-2, 1, size=(batch, latent)).astype(np.float32)
  z = (mean + np.exp(0.5 * log_var) * rng.normal(size=mean.shape)).astype(np.float32)
  logits = rng.normal(size=(batch, H, W, 1)).astype(np.float32) * 2
  x = (rng.uniform(size=(batch, H, W, 1)) < 0.5).astype(np.float32)
  extra = {}
  if prior:
    extra = {"prior_mean": rng.normal(size=mean.shape).astype(np.float32),
             "prior_log_var": rng.uniform(-1, 1, size=mean.shape).astype(np.float32)}
  out = VAEOutput(jnp.asarray(mean), jnp.asarray(log_var), jnp.asarray(z),
                  {"logits": jnp.asarray(logits)}, **extra)
  return jnp.asarray(x), out


def reference_terms(x, out):
  """Float64 numpy ELBO terms straight from the definitions."""
  x, logits = np.float64(x), np.float64(out.likelihood["logits"])
  p = special.expit(logits)
  recon = np.sum(x * np.log(p) + (1 - x) * np.log1p(-p), axis=(1, 2, 3))
  m, lv = np.float64(out.mean), np.float64(out.log_var)
  if out.prior_mean is None:
    kl_per_dim = 0.5 * (m**2 + np.exp(lv) - 1 - lv)
  else:
    mp, lp = np.float64(out.prior_mean), np.float64(out.prior_log_var)
    kl_per_dim = 0.5 * (lp - lv + (np.exp(lv) + (m - mp) ** 2) / np.exp(lp) - 1)
  return recon, kl_per_dim


@pytest.mark.parametrize("prior", [False, True])
def test_elbo_terms_sum_over_dimensions_and_loss_averages_over_batch(prior):
  x, out = make_outputs(prior=prior)
  recon, kl_per_dim = reference_terms(x, out)
  loss, terms = O.elbo_loss(x, out)
  np.testing.assert_allclose(terms["recon"], recon, rtol=1e-5)
  np.testing.assert_allclose(terms["kl_per_dim"], kl_per_dim, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(terms["kl"], kl_per_dim.sum(-1), rtol=1e-5)
  np.testing.assert_allclose(terms["elbo"], recon - kl_per_dim.sum(-1), rtol=1e-5)
  np.testing.assert_allclose(loss, np.mean(kl_per_dim.sum(-1) - recon), rtol=1e-5)


def test_kl_term_scales_with_the_number_of_latent_dimensions():
  """Doubling the latent space with copies doubles the KL (no averaging over dimensions)."""
  x, out = make_outputs()
  doubled = out._replace(
      mean=jnp.tile(out.mean, (1, 2)), log_var=jnp.tile(out.log_var, (1, 2)),
      z=jnp.tile(out.z, (1, 2)),
  )
  np.testing.assert_allclose(O.elbo_terms(x, doubled)["kl"], 2 * O.elbo_terms(x, out)["kl"],
                             rtol=1e-6)


def test_beta_weights_the_kl():
  x, out = make_outputs()
  recon, kl_per_dim = reference_terms(x, out)
  for beta in (0.0, 0.5, 4.0):
    loss, _ = O.elbo_loss(x, out, O.LossSettings(beta=beta))
    np.testing.assert_allclose(loss, np.mean(-recon + beta * kl_per_dim.sum(-1)), rtol=1e-5)


def test_free_bits_is_a_max_after_the_batch_mean():
  x, out = make_outputs()
  _, kl_per_dim = reference_terms(x, out)
  lam = float(np.median(kl_per_dim.mean(0)))  # half the dimensions fall below λ
  _, terms = O.elbo_loss(x, out, O.LossSettings(free_bits=lam))
  expected = np.maximum(lam, kl_per_dim.mean(0)).sum()
  np.testing.assert_allclose(terms["kl_regularizer"], expected, rtol=1e-5)
  # Not the same as a per-example max, which is what a wrong implementation computes.
  assert not np.isclose(expected, np.maximum(lam, kl_per_dim).mean(0).sum())
  _, plain = O.elbo_loss(x, out)
  np.testing.assert_allclose(plain["kl_regularizer"], kl_per_dim.sum(-1).mean(), rtol=1e-5)


def test_free_bits_gives_no_gradient_to_dimensions_below_lambda():
  x, out = make_outputs()
  mean_kl = np.asarray(O.elbo_terms(x, out)["kl_per_dim"]).mean(0)
  lam = float(np.median(mean_kl))
  below = mean_kl < lam
  assert below.any() and (~below).any()

  def kl_part(mean):
    return O.free_bits_kl(O.elbo_terms(x, out._replace(mean=mean))["kl_per_dim"], lam)

  grad = np.asarray(jax.grad(kl_part)(out.mean))
  assert np.all(grad[:, below] == 0.0)
  np.testing.assert_allclose(grad[:, ~below], np.asarray(out.mean)[:, ~below] / B, rtol=1e-5)


def test_free_bits_per_group():
  kl_per_dim = jnp.array([[0.1, 0.2, 3.0, 0.05], [0.3, 0.2, 1.0, 0.05]])
  groups = [0, 0, 1, 2]
  group_kl = np.array([0.4, 2.0, 0.05])  # batch-mean KL of each group
  np.testing.assert_allclose(
      O.free_bits_kl(kl_per_dim, 0.5, groups), np.maximum(0.5, group_kl).sum(), rtol=1e-6
  )
  with pytest.raises(ValueError, match="one per latent dimension"):
    O.free_bits_kl(kl_per_dim, 0.5, [0, 1])


@pytest.mark.parametrize("warmup", [1, 10, 250])
def test_warmup_equals_optax_linear_schedule(warmup):
  reference = optax.linear_schedule(0.0, 1.0, warmup)
  steps = np.arange(0, 3 * warmup + 2)
  np.testing.assert_allclose(O.kl_weight(steps, warmup), reference(steps), atol=1e-6)
  np.testing.assert_allclose(O.kl_weight(steps, 0), np.ones_like(steps))


def test_cyclical_schedule_equals_joined_optax_schedules():
  warmup, cycle = 5, 12
  reference = optax.join_schedules(
      [optax.linear_schedule(0.0, 1.0, warmup)] * 4, boundaries=[cycle, 2 * cycle, 3 * cycle]
  )
  steps = np.arange(0, 4 * cycle)
  np.testing.assert_allclose(O.kl_weight(steps, warmup, cycle), reference(steps), atol=1e-6)


def test_warmup_is_applied_to_the_kl_in_the_loss():
  x, out = make_outputs()
  recon, kl_per_dim = reference_terms(x, out)
  loss, terms = O.elbo_loss(x, out, O.LossSettings(beta=2.0, warmup_steps=100), step=25)
  np.testing.assert_allclose(terms["kl_weight"], 0.25)
  np.testing.assert_allclose(loss, np.mean(-recon + 0.5 * kl_per_dim.sum(-1)), rtol=1e-5)


def test_capacity_annealing():
  x, out = make_outputs()
  recon, kl_per_dim = reference_terms(x, out)
  settings = O.LossSettings(beta=0.0, capacity_gamma=1000.0, capacity_max=25.0,
                            capacity_steps=100)
  for step, target in [(0, 0.0), (40, 10.0), (100, 25.0), (500, 25.0)]:
    loss, terms = O.elbo_loss(x, out, settings, step)
    np.testing.assert_allclose(terms["capacity"], target, rtol=1e-6)
    expected = -recon.mean() + 1000.0 * abs(kl_per_dim.sum(-1).mean() - target)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(O.capacity(7, 5.0, 0), 5.0)


def total_correlation_reference(z, mean, log_var, dataset_size):
  """Minibatch-weighted sampling written out with loops in float64."""
  z, mean, log_var = map(np.float64, (z, mean, log_var))
  m, d = z.shape
  log_nm = np.log(dataset_size * m)
  tc = np.zeros(m)
  for i in range(m):
    log_q = -0.5 * (np.log(2 * np.pi) + log_var + (z[i] - mean) ** 2 / np.exp(log_var))  # (M, d)
    log_qz = special.logsumexp(log_q.sum(1)) - log_nm
    log_prod = sum(special.logsumexp(log_q[:, j]) - log_nm for j in range(d))
    tc[i] = log_qz - log_prod
  return tc


def test_total_correlation_matches_its_definition():
  _, out = make_outputs(batch=16)
  reference = total_correlation_reference(out.z, out.mean, out.log_var, 1000)
  np.testing.assert_allclose(O.total_correlation(out.z, out.mean, out.log_var, 1000), reference,
                             rtol=1e-4, atol=1e-4)
  # Without the dataset size, only the constant (d − 1) log(N M) is dropped.
  shift = (D_LATENT - 1) * np.log(1000 * 16)
  np.testing.assert_allclose(O.total_correlation(out.z, out.mean, out.log_var), reference - shift,
                             rtol=1e-4, atol=1e-4)


def test_beta_tc_adds_the_weighted_total_correlation():
  x, out = make_outputs()
  plain, plain_terms = O.elbo_loss(x, out)
  assert "tc" not in plain_terms
  loss, terms = O.elbo_loss(x, out, O.LossSettings(tc_beta=6.0, dataset_size=500))
  reference = total_correlation_reference(out.z, out.mean, out.log_var, 500)
  np.testing.assert_allclose(loss, plain + 5.0 * reference.mean(), rtol=1e-4)
  np.testing.assert_allclose(terms["tc"], reference, rtol=1e-4, atol=1e-4)


def test_jit_vmap_and_eager_agree_over_settings():
  x, out = make_outputs()
  grid = [
      O.LossSettings(beta=0.5),
      O.LossSettings(free_bits=0.3, warmup_steps=10),
      O.LossSettings(beta=4.0, free_bits=0.1, warmup_steps=40, capacity_gamma=10.0,
                     capacity_max=5.0, capacity_steps=20),
  ]
  stacked = O.stack_settings(grid)
  assert stacked.tc_beta == 1.0  # constant fields stay Python numbers
  chex.assert_shape(stacked.beta, (3,))
  batched = jax.jit(jax.vmap(lambda s: O.elbo_loss(x, out, s, 8)[0],
                             in_axes=(O.settings_in_axes(stacked),)))(stacked)
  for i, single in enumerate(grid):
    eager = O.elbo_loss(x, out, single, 8)[0]
    jitted = jax.jit(O.elbo_loss)(x, out, single, 8)[0]
    chex.assert_trees_all_close(batched[i], eager, jitted, rtol=1e-5)
  with pytest.raises(ValueError, match="empty grid"):
    O.stack_settings([])


def test_summarize_averages_over_the_batch():
  x, out = make_outputs()
  _, terms = O.elbo_loss(x, out)
  summary = O.summarize(terms)
  chex.assert_shape(summary["kl_per_dim"], (D_LATENT,))
  chex.assert_shape(summary["recon"], ())
  np.testing.assert_allclose(summary["kl"], np.mean(terms["kl"]), rtol=1e-6)
  np.testing.assert_allclose(O.bits_per_dim(np.log(2.0) * 784, 784), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "field,value,match",
    [("beta", -1.0, "beta=-1.0 is negative"), ("free_bits", -0.5, "free_bits"),
     ("warmup_steps", -3, "warmup_steps"), ("beta", float("nan"), "finite"),
     ("capacity_gamma", np.array([1.0, -2.0]), "capacity_gamma")],
)
def test_bad_settings_raise_before_compilation(field, value, match):
  x, out = make_outputs()
  with pytest.raises(ValueError, match=match):
    O.elbo_loss(x, out, O.LossSettings(**{field: value}))
  with pytest.raises(ValueError, match="needs warmup_steps > 0"):
    O.validate_settings(O.LossSettings(cycle_steps=10))


def test_shape_mismatches_raise_clear_errors():
  x, out = make_outputs()
  with pytest.raises(ValueError, match=r"Likelihood parameter 'logits' has shape"):
    O.elbo_terms(x[:, :4], out)
  with pytest.raises(ValueError, match="Posterior parameters"):
    O.elbo_terms(x, out._replace(log_var=out.log_var[:, :2]))
  with pytest.raises(ValueError, match="must be given together"):
    O.elbo_terms(x, out._replace(prior_mean=out.mean))
