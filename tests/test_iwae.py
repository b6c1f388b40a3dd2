"""IWAE estimates on a linear-Gaussian VAE, where log p(x) is known in closed form.

p(z) = N(0, I_d), p(x|z) = N(Wz + b, σ² I_D)  ⇒  p(x) = N(b, W Wᵀ + σ² I).
With orthogonal columns of W the exact posterior is diagonal, so q can be made exact
(every importance weight equals p(x)) or deliberately wrong.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vaejax.evaluation import likelihood
from vaejax.types import VAEOutput

DATA_DIM, LATENT_DIM, NOISE_VAR, BATCH = 6, 3, 0.3, 5


def make_problem(seed=0):
  rng = np.random.default_rng(seed)
  columns, _ = np.linalg.qr(rng.normal(size=(DATA_DIM, LATENT_DIM)))
  w = columns * np.array([2.0, 1.2, 0.7])  # orthogonal columns, different lengths
  b = rng.normal(size=DATA_DIM)
  x = rng.multivariate_normal(b, w @ w.T + NOISE_VAR * np.eye(DATA_DIM), size=BATCH)
  log_px = stats.multivariate_normal(b, w @ w.T + NOISE_VAR * np.eye(DATA_DIM)).logpdf(x)
  # Exact posterior: Σ = (I + WᵀW/σ²)⁻¹ (diagonal here), μ = Σ Wᵀ (x − b) / σ².
  post_var = 1.0 / (1.0 + np.sum(w**2, axis=0) / NOISE_VAR)
  post_mean = (x - b) @ w / NOISE_VAR * post_var
  return w, b, x, log_px, post_mean, post_var


def sampler(w, b, x, mean, var):
  """key -> VAEOutput of the linear-Gaussian model for q = N(mean, var)."""
  w, b, x, mean, log_var = (jnp.asarray(a, jnp.float32) for a in (w, b, x, mean, np.log(var)))
  log_var = jnp.broadcast_to(log_var, mean.shape)

  def sample_outputs(key):
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape)
    decoded = {"mean": z @ w.T + b, "log_var": jnp.full(x.shape, np.log(NOISE_VAR), jnp.float32)}
    return VAEOutput(mean, log_var, z, decoded)

  return sample_outputs


@pytest.mark.parametrize("num_samples,chunk_size", [(1, 4), (10, 3), (64, 64), (100, 7)])
def test_exact_posterior_gives_log_px_for_every_k_and_chunking(num_samples, chunk_size):
  """With q = p(z|x) every weight equals p(x): the estimate is exact, masking included."""
  w, b, x, log_px, post_mean, post_var = make_problem()
  estimate = likelihood.iwae_log_likelihood(
      sampler(w, b, x, post_mean, post_var), x, jax.random.key(0), num_samples, chunk_size
  )
  np.testing.assert_allclose(estimate, log_px, atol=2e-4)


def test_iwae_converges_to_log_px_and_is_monotone_in_k():
  w, b, x, log_px, post_mean, post_var = make_problem(1)
  # A poor but overlapping posterior: shifted means, inflated variances.
  sample = sampler(w, b, x, post_mean + 0.5, post_var * 2.5)
  gaps = []
  for k in (1, 10, 100, 5000):
    runs = jax.vmap(
        lambda key, k=k: likelihood.iwae_log_likelihood(sample, x, key, k, chunk_size=500)
    )(jax.random.split(jax.random.key(k), 8))
    gaps.append(float(np.mean(log_px - np.mean(runs, axis=0))))
  assert all(g >= -0.01 for g in gaps), gaps  # a lower bound on average
  assert gaps[0] > gaps[1] > gaps[2] > gaps[3], gaps  # tightens as K grows
  assert gaps[0] > 0.5  # the ELBO is visibly loose here...
  assert gaps[3] < 0.03  # ...and K = 5000 all but closes the gap


def test_k1_estimate_equals_the_elbo_in_expectation():
  w, b, x, _, post_mean, post_var = make_problem(2)
  mean_q, var_q = post_mean - 0.3, post_var * 0.5
  # Closed-form ELBO: E_q[log p(x|z)] − KL(q ‖ N(0, I)).
  residual = x - (mean_q @ w.T + b)
  expected_sq = np.sum(residual**2, axis=1) + np.sum(var_q * np.sum(w**2, axis=0))
  recon = -0.5 * (DATA_DIM * np.log(2 * np.pi * NOISE_VAR) + expected_sq / NOISE_VAR)
  kl = 0.5 * np.sum(mean_q**2 + var_q - 1 - np.log(var_q), axis=1)
  elbo = recon - kl
  sample = sampler(w, b, x, mean_q, var_q)
  draws = np.asarray(jax.vmap(lambda key: likelihood.iwae_log_likelihood(sample, x, key, 1))(
      jax.random.split(jax.random.key(3), 4000)))
  stderr = draws.std(0) / np.sqrt(len(draws))
  assert np.all(np.abs(draws.mean(0) - elbo) < 5 * stderr + 1e-4), (draws.mean(0), elbo)


def test_bad_num_samples_raise():
  w, b, x, _, post_mean, post_var = make_problem()
  sample = sampler(w, b, x, post_mean, post_var)
  with pytest.raises(ValueError, match="num_samples"):
    likelihood.iwae_log_likelihood(sample, x, jax.random.key(0), 0)
  with pytest.raises(ValueError, match="chunk_size"):
    likelihood.iwae_log_likelihood(sample, x, jax.random.key(0), 4, chunk_size=0)
