"""Diagonal Gaussians and the observation likelihoods of a VAE, as pure functions.

Every function is elementwise and broadcasting: it returns one value per dimension and
never sums. Summing over latent or data dimensions is explicit in
:mod:`vaejax.objectives`, so nobody averages where a sum is due.

Parameterisation: a diagonal Gaussian is ``(mean, log_var)`` with ``log_var = log σ²``.
All functions are jit-, vmap- and grad-safe and give finite values and gradients for
``log_var`` in [-30, 30] and ``|mean|`` up to 1e3 in float32.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = Any

LOG_2PI = math.log(2.0 * math.pi)

# Below this |x| the series of expm1(x) - x is used: the direct difference loses
# log10(2/|x|) digits to cancellation, the 5-term series is exact to float32 here.
_SERIES_THRESHOLD = 0.1


def expm1_minus_identity(x: ArrayLike) -> Array:
  r"""Computes :math:`g(x) = e^x - 1 - x \geq 0` without cancellation near 0.

  Both Gaussian KLs reduce to this function of a log-variance (ratio):
  :math:`g(x) = x^2/2 + x^3/6 + x^4/24 + x^5/120 + O(x^6)` for small ``|x|``
  (relative error below 1e-7 for ``|x| < 0.1``) and ``expm1(x) - x`` elsewhere.
  The result is clamped at 0, its exact lower bound, so rounding never makes a KL
  negative.

  >>> x = 1e-4
  >>> round(float(expm1_minus_identity(x)) / (x * x / 2), 4)  # 1 + x/3 + …: no cancellation
  1.0
  >>> round(float(expm1_minus_identity(2.0)), 4)  # e² − 3
  4.3891
  """
  x = jnp.asarray(x)
  small = jnp.abs(x) < _SERIES_THRESHOLD
  # Evaluate each branch only on inputs valid for it, so gradients stay finite.
  xs = jnp.where(small, x, 0.0)
  series = xs * xs * (0.5 + xs * (1.0 / 6 + xs * (1.0 / 24 + xs * (1.0 / 120))))
  direct = jnp.expm1(x) - x
  return jnp.maximum(jnp.where(small, series, direct), 0.0)


def _check_broadcastable(*arrays: ArrayLike, names: tuple[str, ...]) -> None:
  shapes = [jnp.shape(a) for a in arrays]
  try:
    np.broadcast_shapes(*shapes)
  except ValueError:
    described = ", ".join(f"{n}{tuple(s)}" for n, s in zip(names, shapes))
    raise ValueError(
        f"Gaussian parameters must have broadcastable shapes; got {described}."
    ) from None


def kl_standard_normal(mean: ArrayLike, log_var: ArrayLike) -> Array:
  r"""KL(N(μ, σ²) ‖ N(0, 1)) per dimension, elementwise.

  .. math:: \mathrm{KL} = \tfrac12\left(\mu^2 + \sigma^2 - 1 - \log\sigma^2\right)
            = \tfrac12\left(\mu^2 + g(\log\sigma^2)\right),\quad g(x) = e^x - 1 - x.

  Gradients: ∂KL/∂μ = μ and ∂KL/∂log σ² = ½(σ² − 1).

  Args:
    mean: μ, any shape.
    log_var: log σ², broadcastable with ``mean``.

  Returns:
    The KL in nats, with the broadcast shape; never summed over dimensions.

  >>> kl = kl_standard_normal(jnp.array([0.0, 1.0]), jnp.array([0.0, 0.0]))
  >>> kl.shape, [round(float(v), 4) for v in kl]  # one KL per dimension: μ²/2
  ((2,), [0.0, 0.5])
  """
  _check_broadcastable(mean, log_var, names=("mean", "log_var"))
  mean = jnp.asarray(mean)
  return 0.5 * (jnp.square(mean) + expm1_minus_identity(log_var))


def kl_diag_gaussians(
    mean_q: ArrayLike, log_var_q: ArrayLike, mean_p: ArrayLike, log_var_p: ArrayLike
) -> Array:
  r"""KL(N(μ₁, σ₁²) ‖ N(μ₂, σ₂²)) per dimension, elementwise.

  With :math:`\Delta = \log\sigma_1^2 - \log\sigma_2^2`,

  .. math:: \mathrm{KL} = \tfrac12\left(\frac{(\mu_1-\mu_2)^2}{\sigma_2^2}
            + e^{\Delta} - 1 - \Delta\right),

  evaluated through :func:`expm1_minus_identity` so it stays accurate as KL → 0.

  >>> kl = kl_diag_gaussians(1.0, 0.0, 0.0, math.log(4.0))  # N(1, 1) ‖ N(0, 4)
  >>> round(float(kl), 4)  # ½(1/4 + 1/4 − 1 + log 4)
  0.4431
  """
  _check_broadcastable(
      mean_q, log_var_q, mean_p, log_var_p,
      names=("mean_q", "log_var_q", "mean_p", "log_var_p"),
  )
  mean_q, log_var_q, mean_p, log_var_p = map(
      jnp.asarray, (mean_q, log_var_q, mean_p, log_var_p)
  )
  mahalanobis = jnp.square(mean_q - mean_p) * jnp.exp(-log_var_p)
  return 0.5 * (mahalanobis + expm1_minus_identity(log_var_q - log_var_p))


def sample_diag_gaussian(key: Array, mean: ArrayLike, log_var: ArrayLike) -> Array:
  """Reparameterised sample z = μ + σ·ε, ε ~ N(0, I), differentiable in μ and log σ².

  >>> z = sample_diag_gaussian(jax.random.key(0), 1.0, jnp.zeros(4000))  # N(1, 1)
  >>> z.shape, bool(abs(float(z.mean()) - 1.0) < 0.1)
  ((4000,), True)
  """
  _check_broadcastable(mean, log_var, names=("mean", "log_var"))
  mean, log_var = jnp.asarray(mean), jnp.asarray(log_var)
  shape = jnp.broadcast_shapes(mean.shape, log_var.shape)
  eps = jax.random.normal(key, shape, dtype=jnp.result_type(mean, log_var))
  return mean + jnp.exp(0.5 * log_var) * eps


def diag_gaussian_log_prob(x: ArrayLike, mean: ArrayLike, log_var: ArrayLike) -> Array:
  r"""log N(x; μ, σ²) per dimension.

  .. math:: \log \mathcal N(x; μ, σ^2) = -\tfrac12\bigl(\log 2\pi + \log\sigma^2
            + (x-\mu)^2/\sigma^2\bigr)

  >>> round(float(diag_gaussian_log_prob(1.0, 1.0, 0.0)), 4)  # −½ log 2π
  -0.9189
  """
  _check_broadcastable(x, mean, log_var, names=("x", "mean", "log_var"))
  x, mean, log_var = map(jnp.asarray, (x, mean, log_var))
  return -0.5 * (LOG_2PI + log_var + jnp.square(x - mean) * jnp.exp(-log_var))


def standard_normal_log_prob(x: ArrayLike) -> Array:
  """log N(x; 0, 1) per dimension.

  >>> [round(float(v), 4) for v in standard_normal_log_prob(jnp.array([0.0, 1.0]))]
  [-0.9189, -1.4189]
  """
  x = jnp.asarray(x)
  return -0.5 * (LOG_2PI + jnp.square(x))


def bernoulli_log_prob(x: ArrayLike, logits: ArrayLike) -> Array:
  r"""log Bernoulli(x; sigmoid(ℓ)) per dimension, from logits, numerically stable.

  .. math:: x\ell - \mathrm{softplus}(\ell)
            = -\left(\max(\ell, 0) - x\ell + \log(1 + e^{-|\ell|})\right),

  the negative sigmoid cross-entropy. For ``x`` in (0, 1) (grey-level images) it is the
  cross-entropy that is customary for MNIST, not a normalised density; binarise the data
  when a likelihood in nats is reported.

  >>> log_p = bernoulli_log_prob(jnp.array([1.0, 0.0]), jnp.array([0.0, 200.0]))
  >>> [round(float(v), 4) for v in log_p]  # log ½; stable at ℓ = 200
  [-0.6931, -200.0]
  """
  _check_broadcastable(x, logits, names=("x", "logits"))
  x, logits = jnp.asarray(x), jnp.asarray(logits)
  return x * logits - jax.nn.softplus(logits)


def categorical_log_prob(tokens: ArrayLike, logits: ArrayLike, pad_id: int = 0) -> Array:
  r"""log Categorical(x; softmax(ℓ)) per position, 0 at padding positions.

  .. math:: \log p(x_t) = \ell_{t, x_t} - \operatorname{logsumexp}_v \ell_{t, v}
            \quad (x_t \ne \text{pad}),\qquad 0 \quad (x_t = \text{pad}).

  Padding contributes nothing, to the value or to the gradient (its logits are
  masked with ``jnp.where``). Summing over positions gives a sentence's log-likelihood
  (:mod:`vaejax.objectives` does).

  Args:
    tokens: integer ids, any shape (e.g. (B, T)); ``pad_id`` marks positions to skip.
    logits: unnormalised log-probabilities, ``tokens.shape + (V,)``.
    pad_id: the id of padding (``vaejax.types.PAD_ID`` = 0).

  Returns:
    float32 log-probabilities with the shape of ``tokens``.
  """
  tokens, logits = jnp.asarray(tokens), jnp.asarray(logits)
  if logits.shape[:-1] != tokens.shape or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"categorical_log_prob needs integer tokens of shape S and logits of "
                     f"shape S + (V,); got tokens {tokens.dtype} {tokens.shape}, logits "
                     f"{logits.shape}.")
  logits = logits.astype(jnp.float32)
  chosen = jnp.take_along_axis(logits, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
  log_prob = chosen - jax.nn.logsumexp(logits, axis=-1)
  return jnp.where(tokens == pad_id, 0.0, log_prob)


def clip_log_var(log_var: ArrayLike, min_variance: float) -> Array:
  """Floors a log-variance at log(min_variance): the usual remedy for variances collapsing to 0.

  The gradient is zero below the floor, so a decoder cannot buy likelihood by shrinking its
  variance without bound.

  >>> [round(float(v), 4) for v in clip_log_var(jnp.array([-30.0, 0.0]), 1e-3)]
  [-6.9078, 0.0]
  """
  if not min_variance > 0:
    raise ValueError(f"min_variance must be > 0, got {min_variance!r}.")
  return jnp.maximum(jnp.asarray(log_var), math.log(min_variance))


def soft_floor_log_var(log_var: ArrayLike, min_variance: float) -> Array:
  r"""Floors a variance smoothly: :math:`\sigma^2 = \sigma^2_{\text{raw}} + v_{\min}`, in logs.

  .. math:: \log\sigma^2 = \operatorname{logaddexp}(\ell, \log v_{\min}),\qquad
            \partial \log\sigma^2 / \partial \ell = \operatorname{sigmoid}(\ell - \log v_{\min}),

  with :math:`\ell` the raw log-variance. The result is never below :math:`\log v_{\min}`
  (``logaddexp`` is at least its larger argument) and exceeds :math:`\ell` by
  :math:`\log(1 + v_{\min}/\sigma^2_{\text{raw}}) \le v_{\min}/\sigma^2_{\text{raw}}`,
  negligible well above the floor. Why smooth: the gradient decays gradually through the
  floor (½ at :math:`\ell = \log v_{\min}`) instead of dropping to 0 as
  :func:`clip_log_var`'s does, so a posterior variance pushed down to the floor still gets
  a signal to come back. Used for the posterior variance floor (``posterior_min_variance``)
  of the models.

  Args:
    log_var: raw log-variances, any shape.
    min_variance: the floor :math:`v_{\min} \ge 0` (a Python number); 0 = off, the input
      is returned unchanged.

  Raises:
    ValueError: ``min_variance`` is not a finite number ≥ 0.

  >>> log_var = soft_floor_log_var(jnp.array([-30.0, 0.0, 5.0]), 1e-3)
  >>> [round(float(v), 4) for v in log_var]  # log(σ² + 10⁻³)
  [-6.9078, 0.001, 5.0]
  """
  check_min_variance_floor(min_variance, "min_variance")
  log_var = jnp.asarray(log_var)
  if min_variance == 0:
    return log_var
  return jnp.logaddexp(log_var, jnp.asarray(math.log(min_variance), log_var.dtype))


def check_min_variance_floor(value: Any, name: str) -> None:
  """Raises a ValueError naming ``name`` unless ``value`` is a finite number ≥ 0 (0 = off).

  >>> check_min_variance_floor(1e-3, "posterior_min_variance")
  >>> check_min_variance_floor(-1.0, "posterior_min_variance")
  Traceback (most recent call last):
  ...
  ValueError: posterior_min_variance must be a finite number >= 0 (0 = no floor), got -1.0.
  """
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or (
      not (math.isfinite(value) and value >= 0)
  ):
    raise ValueError(f"{name} must be a finite number >= 0 (0 = no floor), got {value!r}.")


# log σ² − log v_min ≤ log 2 ⟺ σ²_raw ≤ v_min under soft_floor_log_var: the floor is at least
# half of the variance.
FLOOR_TOLERANCE = math.log(2.0)


def fraction_at_floor(
    log_var: ArrayLike, min_variance: float, tol: float = FLOOR_TOLERANCE, axis: Any = None
) -> Array:
  r"""The fraction of posterior dimensions whose variance sits at the floor.

  .. math:: \frac{1}{n}\sum_i \mathbf{1}\left[\log\sigma^2_i \le \log v_{\min} + \mathrm{tol}
            \right].

  With the smooth floor of :func:`soft_floor_log_var` the default ``tol = log 2`` counts
  the dimensions whose raw variance is at most the floor (the floor makes up at least
  half the variance); with a hard floor (:func:`clip_log_var`) pass a small ``tol``
  (e.g. 1e-6). Meant for monitoring: pass ``VAEOutput.log_var`` (B, d) and the model's
  ``posterior_min_variance``; for the fraction per hierarchical level, select the
  columns of one level with ``model.latent_groups``, or pass ``axis=0`` and average
  the per-dimension fractions within each group.

  Args:
    log_var: posterior log-variances (already floored), any shape.
    min_variance: the floor; 0 (off) gives 0 (nothing is at a floor that does not exist).
    tol: tolerance in log-variance (nats of variance ratio), ≥ 0.
    axis: axes to average over; None = all.

  Returns:
    float32 fraction(s) in [0, 1]. Jit-safe (``min_variance`` and ``tol`` are static).

  >>> log_var = soft_floor_log_var(jnp.array([[-30.0, 0.0], [-30.0, -30.0]]), 1e-3)
  >>> round(float(fraction_at_floor(log_var, 1e-3)), 4)
  0.75
  >>> [round(float(v), 4) for v in fraction_at_floor(log_var, 1e-3, axis=0)]
  [1.0, 0.5]
  """
  check_min_variance_floor(min_variance, "min_variance")
  if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (
      math.isfinite(tol) and tol >= 0
  ):
    raise ValueError(f"tol must be a finite number >= 0, got {tol!r}.")
  log_var = jnp.asarray(log_var)
  if min_variance == 0:
    return jnp.mean(jnp.zeros(log_var.shape, jnp.float32), axis=axis)
  at_floor = log_var <= math.log(min_variance) + tol
  return jnp.mean(at_floor.astype(jnp.float32), axis=axis)


def gaussian_likelihood_params(
    mean: ArrayLike, log_var: ArrayLike | float, min_variance: float | None = None
) -> dict[str, Array]:
  """Parameters of a Gaussian p(x|z) with fixed (scalar) or learned (array) variance.

  Args:
    mean: decoder means, shape of the data.
    log_var: a fixed log-variance (python float) or the decoder's learned log-variances.
    min_variance: optional floor on the variance (see :func:`clip_log_var`).

  Returns:
    ``{"mean", "log_var"}`` with ``log_var`` broadcast to the data's shape, as
    :func:`likelihood_log_prob` expects.

  >>> params = gaussian_likelihood_params(jnp.zeros((2, 3)), 0.0)
  >>> sorted(params), params["log_var"].shape
  (['log_var', 'mean'], (2, 3))
  """
  mean = jnp.asarray(mean)
  log_var = jnp.broadcast_to(jnp.asarray(log_var, mean.dtype), mean.shape)
  if min_variance is not None:
    log_var = clip_log_var(log_var, min_variance)
  return {"mean": mean, "log_var": log_var}


def likelihood_log_prob(x: ArrayLike, params: dict[str, Array]) -> Array:
  """log p(x|z) per data dimension, for the likelihood a decoder's outputs describe.

  >>> x = jnp.array([0.0, 1.0])
  >>> [round(float(v), 4) for v in likelihood_log_prob(x, {"logits": jnp.zeros(2)})]
  [-0.6931, -0.6931]
  >>> gaussian = gaussian_likelihood_params(jnp.zeros(2), 0.0)
  >>> [round(float(v), 4) for v in likelihood_log_prob(x, gaussian)]
  [-0.9189, -1.4189]

  The keys of ``params`` name the family (they are static, so this dispatch costs nothing
  under jit):

  * ``{"logits"}``: Bernoulli, :func:`bernoulli_log_prob`;
  * ``{"mean", "log_var"}``: diagonal Gaussian, :func:`diag_gaussian_log_prob` (fixed
    variance = a constant ``log_var``; see :func:`gaussian_likelihood_params`);
  * ``{"categorical_logits"}``: categorical over a vocabulary for integer tokens
    ``x`` (B, T), logits (B, T, V), :func:`categorical_log_prob` (padding id 0 scores 0).
  """
  keys = set(params)
  if keys == {"logits"}:
    return bernoulli_log_prob(x, params["logits"])
  if keys == {"categorical_logits"}:
    return categorical_log_prob(x, params["categorical_logits"])
  if keys == {"mean", "log_var"}:
    return diag_gaussian_log_prob(x, params["mean"], params["log_var"])
  raise ValueError(
      f"Unknown likelihood parameters {sorted(keys)}; expected {{'logits'}} (Bernoulli), "
      "{'mean', 'log_var'} (Gaussian) or {'categorical_logits'} (tokens)."
  )


def likelihood_mean(params: dict[str, Array]) -> Array:
  """The mean of p(x|z): sigmoid(logits), the Gaussian mean, or for tokens the probabilities
  softmax(categorical_logits) per position, (B, T, V) (for figures and reconstructions).

  >>> [round(float(v), 4) for v in likelihood_mean({"logits": jnp.array([0.0, 2.0])})]
  [0.5, 0.8808]
  """
  if "categorical_logits" in params:
    return jax.nn.softmax(params["categorical_logits"].astype(jnp.float32), axis=-1)
  if "logits" in params:
    return jax.nn.sigmoid(params["logits"])
  return params["mean"]


def validate_diag_gaussian(mean: ArrayLike, log_var: ArrayLike, name: str = "q") -> None:
  """Eager check of concrete Gaussian parameters: same shape, all finite.

  For entry points (configs, data, checkpoints) that want one clear error before any
  compilation; inside jit use the functions above, which cannot raise on values.

  >>> validate_diag_gaussian(np.zeros(3), np.zeros(3))
  >>> validate_diag_gaussian(np.zeros(3), np.array([0.0, np.nan, 0.0]))
  Traceback (most recent call last):
  ...
  ValueError: q: log_var has 1 non-finite value(s) (first at index (1,)); all must be finite.
  """
  mean, log_var = np.asarray(mean), np.asarray(log_var)
  if mean.shape != log_var.shape:
    raise ValueError(
        f"{name}: mean has shape {mean.shape} but log_var has shape {log_var.shape}; "
        "they must match."
    )
  for label, value in (("mean", mean), ("log_var", log_var)):
    bad = ~np.isfinite(value)
    if bad.any():
      raise ValueError(
          f"{name}: {label} has {int(bad.sum())} non-finite value(s) "
          f"(first at index {tuple(int(i) for i in np.argwhere(bad)[0])}); all must be finite."
      )
