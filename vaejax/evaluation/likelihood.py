r"""Likelihood-side evaluation of a trained VAE, as pure functions of encoder outputs.

* Active units (Burda et al. 2015): unit *u* is active when the posterior mean moves
  with the data,

  .. math:: A_u = \operatorname{Cov}_x\bigl(\mathbb{E}_{q(u|x)}[u]\bigr) > 0.01.

* Mean KL per latent dimension, :math:`\mathbb{E}_x[\mathrm{KL}(q(z_j|x) \,\|\, p(z_j))]`:
  the rate each dimension carries; ≈ 0 for a collapsed dimension.

All functions take whole evaluation sets of posterior parameters, ``(N, d)`` arrays.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vaejax import distributions

Array = jax.Array
ArrayLike = Any

ACTIVE_UNIT_THRESHOLD = 0.01


def _check_means(means: ArrayLike, min_examples: int = 2) -> Array:
  means = jnp.asarray(means)
  if means.ndim != 2 or means.shape[0] < min_examples:
    raise ValueError(
        f"Posterior means must be (N, d) with N >= {min_examples} examples; got shape "
        f"{means.shape}."
    )
  return means


def posterior_mean_variance(means: ArrayLike) -> Array:
  r"""Activity :math:`A_u = \operatorname{Var}_x(\mathbb{E}_q[u|x])` per unit, shape (d,).

  The population variance (ddof = 0) over the N evaluation examples.
  """
  return jnp.var(_check_means(means), axis=0)


def active_units(means: ArrayLike, threshold: float = ACTIVE_UNIT_THRESHOLD) -> Array:
  """The number of active units: how many :func:`posterior_mean_variance` exceed ``threshold``.

  Args:
    means: (N, d) posterior means E_q[z|x] over an evaluation set.
    threshold: the activity threshold (Burda et al. use 0.01).

  Returns:
    An int32 scalar in [0, d].
  """
  if not threshold >= 0:
    raise ValueError(f"threshold must be >= 0, got {threshold!r}.")
  return jnp.sum(posterior_mean_variance(means) > threshold).astype(jnp.int32)


def mean_kl_per_dim(
    mean: ArrayLike,
    log_var: ArrayLike,
    prior_mean: ArrayLike | None = None,
    prior_log_var: ArrayLike | None = None,
) -> Array:
  """Average over examples of the closed-form KL per latent dimension, shape (d,).

  Against N(0, I), or against a diagonal Gaussian prior when ``prior_mean`` and
  ``prior_log_var`` (same shape as ``mean``) are given. Its sum is the mean rate in nats.
  """
  mean = _check_means(mean, min_examples=1)
  if (prior_mean is None) != (prior_log_var is None):
    raise ValueError("prior_mean and prior_log_var must be given together.")
  if prior_mean is None:
    kl = distributions.kl_standard_normal(mean, log_var)
  else:
    kl = distributions.kl_diag_gaussians(mean, log_var, prior_mean, prior_log_var)
  return jnp.mean(kl, axis=0)
