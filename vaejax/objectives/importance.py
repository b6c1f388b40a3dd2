r"""Importance-weighted bounds (Burda et al. 2015) for training with K > 1 posterior samples.

With log weights :math:`\log w_k = \log p(x|z_k) + \log p(z_k) - \log q(z_k|x)`,
:math:`z_k \sim q(z|x)`, and normalised weights
:math:`\tilde w_k = \operatorname{softmax}_k(\log w_k)`,

.. math::
   \mathcal L_K(x) = \log \frac1K \sum_{k=1}^K w_k \;\le\; \log p(x),
   \qquad \mathcal L_1 = \text{the ELBO}.

:func:`importance_weighted_terms` gives the bound and the objective trained with K
samples, with plain or DReG gradients, built on :func:`log_importance_weight`, the one log
weight of the library, which the evaluation side (:mod:`vaejax.evaluation.likelihood`) uses
too. The training loss (IWAE, MIWAE) and the check of its settings are in
:mod:`vaejax.objectives.importance_loss`.

**β and the KL warm-up.** With the KL scale c = w(t)·β (``kl_scale``) the objective
maximised is

.. math::
   \mathcal J^c_K(x) = \log \frac1K \sum_k p(x|z_k)
       \Bigl(\frac{p(z_k)}{q(z_k|x)}\Bigr)^{\min(c, 1)}
     \;-\; \bigl(\max(c, 1) - 1\bigr)\,\overline{\mathrm{KL}},

with :math:`\overline{\mathrm{KL}}` the closed-form KL(q ‖ p) averaged over the K
samples (for hierarchical models: the per-level KLs of each sample path, whose
expectation is KL(q(z|x) ‖ p(z))). For every K:

* c = 1: :math:`\mathcal J = \mathcal L_K`, the IWAE bound.
* c ≥ 1 (β-VAE): :math:`\mathcal J = \mathcal L_K - (c-1)\overline{\mathrm{KL}} \le
  \mathcal L_K \le \log p(x)`, still a lower bound on log p(x), looser by
  (c − 1)·KL; at K = 1 its expectation is the β-ELBO E[log p(x|z)] − c·KL.
* c < 1 (warm-up, β < 1): the prior ratio is tempered inside the weights, so
  :math:`\mathcal J \le \log\int p(x|z)\,p(z)^c\,q(z|x)^{1-c}\,dz \le \log\sup_z
  p(x|z)` (Jensen, then Hölder): not a bound on log p(x), as the ELBO under warm-up is
  not, but bounded as that is, and at K = 1 equal in expectation to the warm-up ELBO
  E[log p(x|z)] − c·KL.

Neither form is used on both sides of c = 1 because each fails on the other: tempering
with c > 1 tends, as K → ∞, to :math:`\log\int p(x|z)\,p(z)^c q(z|x)^{1-c}dz`, which
can exceed log p(x) and is infinite as soon as a latent the decoder ignores has
:math:`σ_q^2 < (c-1)/c` (the weights' tails reward a narrow q, the opposite of what β
is for); subtracting (c − 1)·KL with c < 1 adds (1 − c)·KL to an objective that tends
to log p(x) whatever q is, rewarding q for leaving the prior without limit.

**Gradient estimators** (the value is :math:`\mathcal J^c_K` for both):

* ``"plain"``: reparameterisation through :math:`\mathcal J` (z = μ + σε). Its
  encoder gradient's signal-to-noise ratio falls as K grows (Rainforth et al. 2018).
* ``"dreg"`` (doubly reparameterised, Tucker, Lawson, Gu, Maddison 2019): the decoder
  (θ) gets :math:`\sum_k \tilde w_k\,∂_θ \log w_k`, the encoder (φ) the path term only,
  :math:`\sum_k a_k\,∂_{z}\log w_k\,∂z_k/∂φ` with log q's parameters held fixed, and
  :math:`a_k = \tilde w_k^2` at c = 1 (in general :math:`a_k = (1-c')\tilde w_k +
  c'\tilde w_k^2` with c' = min(c, 1) and :math:`\tilde w` the softmax of the tempered
  log weights; it follows from :math:`E_q[f(z)\,∂_φ\log q_φ(z)] = E_ε[∂_z f\,∂z/∂φ]`
  applied to :math:`f = c'\tilde w_k`). The (c − 1)·KL term keeps its exact gradient. Same
  expectation as ``"plain"``, lower variance for the encoder.

  It is a surrogate: its value is :math:`\mathcal J` (logging stays honest) and its
  gradient is DReG's. The forward pass's likelihood mixes θ with φ's path through z,
  so the weights are applied by decoding z again, ``decode(z̃)``, with
  :math:`\tilde z_k = z_k` in value and its gradient to φ scaled by
  :math:`a_k/\tilde w_k` (one extra decoder forward pass; the first pass is used for
  values only). Only for a standard-normal prior: a top-down posterior depends on
  the sampled upper levels, so fixing its parameters would also cut
  :math:`∂\log q/∂z_{>l}` (refused with a ValueError).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from vaejax import distributions
from vaejax.objectives.elbo import _check_shapes, _is_python_default, _kl_per_dim, _log_likelihood
from vaejax.types import VAEOutput

Array = jax.Array
ArrayLike = Any

ESTIMATORS = ("plain", "dreg")

_DREG_PRIOR_PROBLEM = (
    "estimator='dreg' needs the standard-normal prior p(z) = N(0, I), but the model has a "
    "learned (top-down) prior: its posterior q(z_l | x, z_>l) depends on the sampled upper "
    "levels, so holding log q's parameters fixed would also cut ∂log q/∂z_>l and bias the "
    "gradient; use estimator='plain'."
)


def log_weight_parts(x: ArrayLike, outputs: VAEOutput) -> tuple[Array, Array]:
  r"""Per-example :math:`\log p(x|z)` and :math:`\log p(z) - \log q(z|x)` for the z in ``outputs``.

  ``log p(z)`` is N(0, I) or, when ``outputs`` carries a prior (hierarchical models), the
  joint of the per-level top-down priors of the same sample path; every sum runs over all
  data and latent dimensions (all levels). Their sum is :func:`log_importance_weight`.

  Returns:
    ``(log_px, log_prior_ratio)``, each (B,).

  >>> x = jnp.array([[0.0, 1.0, 1.0]])
  >>> outputs = VAEOutput(mean=jnp.array([[1.0, 0.0]]), log_var=jnp.zeros((1, 2)),
  ...                     z=jnp.array([[1.0, 0.0]]), likelihood={"logits": jnp.zeros((1, 3))})
  >>> log_px, log_ratio = log_weight_parts(x, outputs)
  >>> round(float(log_px[0]), 4), round(float(log_ratio[0]), 4)  # 3·log ½; −z₁²/2 at z = μ
  (-2.0794, -0.5)
  """
  x = jnp.asarray(x)
  _check_shapes(x, outputs)
  if outputs.prior_mean is None:
    log_pz = distributions.standard_normal_log_prob(outputs.z)
  else:
    log_pz = distributions.diag_gaussian_log_prob(
        outputs.z, outputs.prior_mean, outputs.prior_log_var)
  log_qz = distributions.diag_gaussian_log_prob(outputs.z, outputs.mean, outputs.log_var)
  return _log_likelihood(x, outputs), jnp.sum(log_pz - log_qz, axis=-1)


def log_importance_weight(
    x: ArrayLike, outputs: VAEOutput, prior_weight: ArrayLike = 1.0
) -> Array:
  r"""Per-example log importance weight of the z in ``outputs``, shape (B,).

  .. math:: \log w = \log p(x|z) + c\,\bigl(\log p(z) - \log q(z|x)\bigr),

  with c = ``prior_weight``; c = 1 (the default) is the weight of the IWAE bound, whose
  expectation under q is the ELBO. The one log-weight function of the library: the
  training objectives and :func:`vaejax.evaluation.likelihood.iwae_log_likelihood`
  both use it.

  >>> x = jnp.array([[0.0, 1.0, 1.0]])
  >>> outputs = VAEOutput(mean=jnp.array([[1.0, 0.0]]), log_var=jnp.zeros((1, 2)),
  ...                     z=jnp.array([[1.0, 0.0]]), likelihood={"logits": jnp.zeros((1, 3))})
  >>> round(float(log_importance_weight(x, outputs)[0]), 4)  # 3·log ½ − ½
  -2.5794
  >>> round(float(log_importance_weight(x, outputs, prior_weight=0.5)[0]), 4)
  -2.3294
  """
  log_px, log_ratio = log_weight_parts(x, outputs)
  if _is_python_default(prior_weight, 1.0):
    return log_px + log_ratio
  return log_px + prior_weight * log_ratio


def log_mean_exp(values: Array, axis: int = 0) -> Array:
  r""":math:`\log \frac1K \sum_k e^{v_k}` along ``axis`` (K its length), computed stably.

  >>> round(float(jax.jit(log_mean_exp)(jnp.log(jnp.array([1.0, 3.0])))), 4)  # log 2
  0.6931
  """
  return jax.nn.logsumexp(values, axis=axis) - math.log(values.shape[axis])

def importance_weighted_terms(
    x: ArrayLike,
    outputs: VAEOutput,
    kl_scale: ArrayLike = 1.0,
    *,
    estimator: str = "plain",
    decode: Callable[[Array], dict[str, Array]] | None = None,
) -> dict[str, Array]:
  r"""The importance-weighted objective of K stacked posterior samples, per example.

  ``outputs`` holds K forward passes stacked on a leading axis (z: (K, B, d),
  likelihood: (K, B, ...)). With log weights :math:`\log w_k` of
  :func:`log_importance_weight` (c = 1) and normalised weights
  :math:`\tilde w_k = \operatorname{softmax}_k(\log w_k)`:

  .. math::
     \mathcal L_K(x) = \log \frac1K \sum_{k=1}^K w_k \;\le\; \log p(x)
     \qquad\text{(IWAE, Burda et al. 2015; } \mathcal L_1 = \text{the ELBO)}.

  With the KL scale c = w(t)·β (``kl_scale``) the objective maximised is

  .. math::
     \mathcal J^c_K(x) = \log \frac1K \sum_k p(x|z_k)
         \Bigl(\frac{p(z_k)}{q(z_k|x)}\Bigr)^{\min(c, 1)}
       \;-\; \bigl(\max(c, 1) - 1\bigr)\,\overline{\mathrm{KL}}

  (c = 1: the IWAE bound), its gradient by plain reparameterisation or by DReG; the
  module docstring says why this form and how the DReG surrogate is built.

  Args:
    x: (B, ...) the batch.
    outputs: K forward passes for ``x``, stacked on a leading axis (K ≥ 1).
    kl_scale: c = w(t)·β ≥ 0, a number or traced scalar.
    estimator: ``"plain"`` or ``"dreg"``.
    decode: for ``"dreg"``: ``z -> likelihood parameters``, (B, d) → like
      ``outputs.likelihood`` for one sample: the model's own decoder with the same
      parameters (and labels, for a CVAE), e.g.
      ``lambda z: model.apply(variables, z, labels, method=model.decode)``.

  Returns:
    A dict of (B,) arrays: ``objective`` (:math:`\mathcal J^c_K`, the quantity to
    maximise, a DReG surrogate for ``"dreg"``), ``iwae`` (:math:`\mathcal L_K`),
    ``ess`` (the effective sample size :math:`1/\sum_k \tilde w_k^2 \in [1, K]` of the
    c = 1 weights) and ``mean_kl`` (:math:`\overline{\mathrm{KL}}`).

  Two samples (K = 2) of one example; q = p and a decoder that ignores z make every
  weight p(x|z) = 2⁻³, so the bound is 3·log ½ and both samples count fully:

  >>> x = jnp.array([[0.0, 1.0, 1.0]])
  >>> outputs = VAEOutput(mean=jnp.zeros((2, 1, 2)), log_var=jnp.zeros((2, 1, 2)),
  ...                     z=jnp.array([[[0.5, -1.0]], [[2.0, 0.0]]]),
  ...                     likelihood={"logits": jnp.zeros((2, 1, 3))})
  >>> terms = jax.jit(importance_weighted_terms)(x, outputs)
  >>> round(float(terms["iwae"][0]), 4), round(float(terms["ess"][0]), 4)
  (-2.0794, 2.0)
  """
  _check_stacked(outputs, estimator, decode)
  x = jnp.asarray(x)
  parts = jax.vmap(log_weight_parts, in_axes=(None, 0))
  log_px, log_ratio = parts(x, outputs)  # (K, B) each
  mean_kl = jnp.mean(jnp.sum(jax.vmap(_kl_per_dim)(outputs), axis=-1), axis=0)
  scale = jnp.asarray(kl_scale, jnp.float32)
  inside, outside = jnp.minimum(scale, 1.0), jnp.maximum(scale, 1.0) - 1.0
  log_w = log_px + log_ratio
  log_w_tempered = log_px + inside * log_ratio
  if estimator == "plain":
    tempered = log_mean_exp(log_w_tempered)
  else:
    tempered = _dreg_surrogate(x, outputs, log_w_tempered, inside, decode)
  ess = jnp.exp(2.0 * jax.nn.logsumexp(log_w, axis=0) - jax.nn.logsumexp(2.0 * log_w, axis=0))
  return {
      "objective": tempered - outside * mean_kl,
      "iwae": log_mean_exp(log_w),
      "ess": ess,
      "mean_kl": mean_kl,
  }


def _check_stacked(outputs: VAEOutput, estimator: str, decode: Callable | None) -> None:
  """The errors of :func:`importance_weighted_terms`'s arguments, at trace time."""
  if not isinstance(estimator, str) or estimator not in ESTIMATORS:
    raise ValueError(f"Unknown estimator {estimator!r}; expected one of {ESTIMATORS}.")
  if outputs.z.ndim != 3:
    raise ValueError(
        "importance_weighted_terms needs K forward passes stacked on a leading axis, z of "
        f"shape (K, batch, latent_dim); got z of shape {outputs.z.shape}.")
  if estimator == "dreg" and outputs.prior_mean is not None:
    raise ValueError(_DREG_PRIOR_PROBLEM)
  if estimator == "dreg" and decode is None:
    raise ValueError(
        "estimator='dreg' needs decode (z -> likelihood parameters, the model's decoder, "
        "e.g. lambda z: model.apply(variables, z, labels, method=model.decode)) to weight "
        "the decoder's and the encoder's gradients apart; pass it or use estimator='plain'.")


def _dreg_surrogate(x: Array, outputs: VAEOutput, log_w_tempered: Array, inside: Array,
                    decode: Callable[[Array], dict[str, Array]]) -> Array:
  """(B,): the value of log-mean-exp(tempered log w) with DReG's gradient (module docstring)."""
  sg = jax.lax.stop_gradient
  parts = jax.vmap(log_weight_parts, in_axes=(None, 0))
  weights = jax.nn.softmax(sg(log_w_tempered), axis=0)  # w̃_k, (K, B)
  path_scale = (1.0 - inside) + inside * weights  # a_k / w̃_k
  z = outputs.z
  z_path = sg(z) + path_scale[..., None] * (z - sg(z))
  frozen = VAEOutput(sg(outputs.mean), sg(outputs.log_var), z_path, jax.vmap(decode)(z_path))
  path_px, path_ratio = parts(x, frozen)
  surrogate = jnp.sum(weights * (path_px + inside * path_ratio), axis=0)
  return sg(log_mean_exp(log_w_tempered)) + (surrogate - sg(surrogate))

