r"""Likelihood-side evaluation of a trained VAE, as pure functions of encoder outputs.

* Active units (Burda et al. 2015): unit *u* is active when the posterior mean moves
  with the data,

  .. math:: A_u = \operatorname{Cov}_x\bigl(\mathbb{E}_{q(u|x)}[u]\bigr) > 0.01.

* Mean KL per latent dimension, :math:`\mathbb{E}_x[\mathrm{KL}(q(z_j|x) \,\|\, p(z_j))]`:
  the rate each dimension carries; ≈ 0 for a collapsed dimension.

* IWAE (Burda et al. 2015): :math:`\log \hat p_K(x) = \operatorname{logsumexp}_k \log w_k - \log K`
  with :math:`w_k = p(x, z_k) / q(z_k|x)`, a lower bound on log p(x) that tightens with K.

The first two take whole evaluation sets of posterior parameters, ``(N, d)`` arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vaejax import distributions
# The one log-weight function, shared with the training objectives; public here as before.
from vaejax.objectives import log_importance_weight  # noqa: F401
from vaejax.types import VAEOutput
from vaejax.utils.checks import check_int

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


# ----------------------------------------------------------------------------- IWAE


def iwae_log_likelihood(
    sample_outputs: Callable[[Array], VAEOutput],
    x: ArrayLike,
    key: Array,
    num_samples: int,
    chunk_size: int = 128,
) -> Array:
  r"""IWAE estimate per example:
  :math:`\log \hat p_K(x) = \operatorname{logsumexp}_k \log w_k - \log K`.

  A lower bound on log p(x) that tightens as K grows (Burda et al. 2015); K = 1 is an
  unbiased estimate of the ELBO. The K samples are drawn in chunks of ``chunk_size``
  (vmapped within a chunk, a running logsumexp across chunks under ``lax.scan``), so
  memory does not grow with K and K = 5000 fits. The log weights come from
  :func:`vaejax.objectives.log_importance_weight` (re-exported here), the function the
  importance-weighted training loss :func:`vaejax.objectives.iwae_loss` uses too.

  Args:
    sample_outputs: ``key -> VAEOutput`` for the batch ``x`` (one posterior sample per
      example), e.g. ``lambda k: model.apply(v, x, labels, rngs={"sample": k})``.
    x: (B, ...) the batch those outputs belong to.
    key: PRNG key; sample k of chunk c uses ``split(split(key, C)[c], chunk)[k]``.
    num_samples: K ≥ 1.
    chunk_size: samples evaluated at once.

  Returns:
    (B,) log p̂_K(x) in nats (negate for the NLL).
  """
  check_int(num_samples, "num_samples (K)", minimum=1)
  check_int(chunk_size, "chunk_size", minimum=1)
  chunk = min(chunk_size, num_samples)
  num_chunks = -(-num_samples // chunk)
  batch = jnp.shape(x)[0]

  def weights(k: Array) -> Array:
    return log_importance_weight(x, sample_outputs(k))

  def body(running: Array, inputs: tuple[Array, Array]) -> tuple[Array, None]:
    chunk_key, first = inputs
    log_w = jax.vmap(weights)(jax.random.split(chunk_key, chunk))  # (chunk, B)
    valid = (first + jnp.arange(chunk)) < num_samples  # the last chunk may overshoot K
    log_w = jnp.where(valid[:, None], log_w, -jnp.inf)
    return jnp.logaddexp(running, jax.nn.logsumexp(log_w, axis=0)), None

  starts = jnp.arange(num_chunks) * chunk
  init = jnp.full((batch,), -jnp.inf, jnp.float32)
  total, _ = jax.lax.scan(body, init, (jax.random.split(key, num_chunks), starts))
  return total - math.log(num_samples)


# ----------------------------------------------------------------------------- collapse


COLLAPSE_THRESHOLD = 0.01  # nats


def collapse_report(
    kl_per_dim: ArrayLike,
    groups: Sequence[int] | None = None,
    threshold: float = COLLAPSE_THRESHOLD,
) -> dict[str, Any]:
  """Which latent dimensions (and groups, e.g. hierarchical levels) carry < ``threshold`` nats.

  Args:
    kl_per_dim: (d,) mean KL per dimension over an evaluation set (:func:`mean_kl_per_dim`).
    groups: optional group id per dimension (e.g. ``HierarchicalVAE.latent_groups``).
    threshold: the collapse threshold in nats.

  Returns:
    ``collapsed_dims`` (indices), ``num_collapsed``, and with ``groups`` also
    ``kl_per_group`` (total KL of each group) and ``collapsed_groups``.
  """
  kl = np.asarray(kl_per_dim, np.float64)
  if kl.ndim != 1:
    raise ValueError(f"kl_per_dim must be a (d,) vector, got shape {kl.shape}.")
  report: dict[str, Any] = {
      "threshold_nats": threshold,
      "collapsed_dims": np.flatnonzero(kl < threshold).tolist(),
      "num_collapsed": int(np.sum(kl < threshold)),
  }
  if groups is not None:
    ids = np.asarray(groups)
    if ids.shape != kl.shape:
      raise ValueError(f"groups must give one id per dimension ({kl.shape[0]}), got {ids.shape}.")
    per_group = np.bincount(ids, weights=kl)
    report["kl_per_group"] = per_group.tolist()
    report["collapsed_groups"] = np.flatnonzero(per_group < threshold).tolist()
  return report


# ----------------------------------------------------------------------------- comparisons


def paired_difference(log_px_a: ArrayLike, log_px_b: ArrayLike) -> dict[str, float]:
  r"""Compares two models' per-example log-likelihood estimates on the *same* examples.

  With :math:`d_i = \log\hat p_A(x_i) - \log\hat p_B(x_i)`, returns the mean difference
  (nats; > 0: A is better), its paired standard error :math:`\mathrm{sd}(d)/\sqrt{N}`
  (smaller than either model's own error, since the examples' difficulty cancels), the
  z-score and N. The comparison the literature's "A beats B by k nats" needs.

  Raises:
    ValueError: shapes that differ or are not (N ≥ 2,).
  """
  a = np.asarray(log_px_a, np.float64)
  b = np.asarray(log_px_b, np.float64)
  if a.ndim != 1 or a.shape != b.shape or a.shape[0] < 2:
    raise ValueError(f"Per-example estimates must be two (N >= 2,) vectors of one length; got "
                     f"shapes {a.shape} and {b.shape}.")
  d = a - b
  stderr = float(np.std(d, ddof=1) / math.sqrt(d.shape[0]))
  mean = float(np.mean(d))
  return {"mean_difference": mean, "paired_stderr": stderr,
          "z": mean / stderr if stderr > 0 else math.inf, "num_examples": int(d.shape[0])}
