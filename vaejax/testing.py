"""Reusable numerical checks for divergences, for vaejax's tests and for yours.

The central one: a closed-form divergence must agree with its Monte Carlo estimate

.. math:: \\mathrm{KL}(q \\,\\|\\, p) ≈ \\frac1S \\sum_{s=1}^S
          \\bigl[\\log q(z_s) - \\log p(z_s)\\bigr], \\quad z_s \\sim q,

within ``k`` standard errors (std / √S). A closed form that averages over dimensions, drops
a term or swaps arguments fails this for most parameter draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vaejax import distributions

Array = jax.Array


class MonteCarloEstimate(NamedTuple):
  """A Monte Carlo estimate per batch element and its standard error (float64)."""

  mean: np.ndarray
  stderr: np.ndarray


def monte_carlo_divergence(
    key: Array,
    sample_q: Callable[[Array, int], Array],
    log_prob_q: Callable[[Array], Array],
    log_prob_p: Callable[[Array], Array],
    num_samples: int = 20_000,
) -> MonteCarloEstimate:
  """Monte Carlo estimate of KL(q ‖ p) and its standard error, per batch element.

  Args:
    key: PRNG key.
    sample_q: ``(key, n) -> (n, *batch, *event)`` samples from q.
    log_prob_q, log_prob_p: ``samples -> (n, *batch)`` log densities, already summed
      over event dimensions.
    num_samples: S.

  Returns:
    ``MonteCarloEstimate(mean, stderr)``, each of shape ``batch``, in float64.

  KL(N(1, 1) ‖ N(0, 1)) = ½:

  >>> sample_q = lambda key, n: distributions.sample_diag_gaussian(key, 1.0, jnp.zeros(n))
  >>> log_q = lambda z: distributions.diag_gaussian_log_prob(z, 1.0, 0.0)
  >>> log_p = distributions.standard_normal_log_prob
  >>> estimate = monte_carlo_divergence(jax.random.key(0), sample_q, log_q, log_p, 4000)
  >>> bool(abs(estimate.mean - 0.5) < 5 * estimate.stderr), estimate.mean.shape
  (True, ())
  """
  if num_samples < 2:
    raise ValueError(f"num_samples must be >= 2 for a standard error, got {num_samples}.")
  z = sample_q(key, num_samples)
  log_ratio = np.asarray(log_prob_q(z), np.float64) - np.asarray(log_prob_p(z), np.float64)
  mean = log_ratio.mean(axis=0)
  stderr = log_ratio.std(axis=0, ddof=1) / np.sqrt(num_samples)
  return MonteCarloEstimate(mean, stderr)


def assert_divergence_matches_monte_carlo(
    closed_form: Array,
    key: Array,
    sample_q: Callable[[Array, int], Array],
    log_prob_q: Callable[[Array], Array],
    log_prob_p: Callable[[Array], Array],
    num_samples: int = 20_000,
    num_std_errors: float = 5.0,
    atol: float = 1e-5,
) -> MonteCarloEstimate:
  """Asserts ``|closed_form − MC| ≤ num_std_errors · stderr + atol`` for every element.

  ``atol`` covers float32 rounding where the estimate's spread vanishes (q = p gives a
  zero log-ratio for every sample). Raises AssertionError listing the worst elements.

  A closed form that halves the KL of N(1, 1) ‖ N(0, 1) fails:

  >>> sample_q = lambda key, n: distributions.sample_diag_gaussian(key, 1.0, jnp.zeros(n))
  >>> log_q = lambda z: distributions.diag_gaussian_log_prob(z, 1.0, 0.0)
  >>> log_p = distributions.standard_normal_log_prob
  >>> _ = assert_divergence_matches_monte_carlo(
  ...     0.5, jax.random.key(0), sample_q, log_q, log_p, num_samples=4000)
  >>> assert_divergence_matches_monte_carlo(
  ...     0.25, jax.random.key(0), sample_q, log_q, log_p, num_samples=4000)
  Traceback (most recent call last):
  ...
  AssertionError: 1 of 1 divergences differ from Monte Carlo by more than 5.0 standard errors ...
  """
  estimate = monte_carlo_divergence(key, sample_q, log_prob_q, log_prob_p, num_samples)
  closed = np.asarray(closed_form, np.float64)
  if closed.shape != estimate.mean.shape:
    raise ValueError(
        f"closed_form has shape {closed.shape} but the estimate has {estimate.mean.shape}."
    )
  error = np.abs(closed - estimate.mean)
  bound = num_std_errors * estimate.stderr + atol
  bad = error > bound
  if bad.any():
    worst = np.argsort(-(error - bound), axis=None)[:5]
    rows = [
        f"  at {np.unravel_index(i, closed.shape)}: closed form {closed.flat[i]:.6g}, "
        f"MC {estimate.mean.flat[i]:.6g} ± {estimate.stderr.flat[i]:.3g}"
        for i in worst
    ]
    raise AssertionError(
        f"{int(bad.sum())} of {bad.size} divergences differ from Monte Carlo by more than "
        f"{num_std_errors} standard errors (+{atol}):\n" + "\n".join(rows)
    )
  return estimate


def assert_gaussian_kl_matches_monte_carlo(
    key: Array,
    closed_form: Array,
    mean_q: Array,
    log_var_q: Array,
    mean_p: Array | None = None,
    log_var_p: Array | None = None,
    **kwargs,
) -> MonteCarloEstimate:
  """Checks a multivariate diagonal-Gaussian KL (summed over the last axis) against MC.

  ``closed_form`` has the batch shape ``mean_q.shape[:-1]``; p defaults to N(0, I).

  The KL summed over dimensions passes; the KL averaged over them (a common bug) fails:

  >>> mean, log_var = jnp.array([0.5, -1.0]), jnp.array([0.2, -0.3])
  >>> kl = distributions.kl_standard_normal(mean, log_var)
  >>> key = jax.random.key(0)
  >>> _ = assert_gaussian_kl_matches_monte_carlo(key, kl.sum(), mean, log_var, num_samples=4000)
  >>> assert_gaussian_kl_matches_monte_carlo(key, kl.mean(), mean, log_var, num_samples=4000)
  Traceback (most recent call last):
  ...
  AssertionError: 1 of 1 divergences differ from Monte Carlo by more than 5.0 standard errors ...
  """
  mean_q, log_var_q = jnp.asarray(mean_q), jnp.asarray(log_var_q)
  if mean_p is None:
    mean_p, log_var_p = jnp.zeros_like(mean_q), jnp.zeros_like(log_var_q)

  def sample_q(k, n):
    return distributions.sample_diag_gaussian(
        k, mean_q, jnp.broadcast_to(log_var_q, (n,) + log_var_q.shape)
    )

  def log_prob(mean, log_var):
    return lambda z: jnp.sum(distributions.diag_gaussian_log_prob(z, mean, log_var), axis=-1)

  return assert_divergence_matches_monte_carlo(
      closed_form, key, sample_q, log_prob(mean_q, log_var_q), log_prob(mean_p, log_var_p),
      **kwargs,
  )
