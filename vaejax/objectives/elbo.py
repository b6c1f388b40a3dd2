r"""The ELBO and its variants as pure functions of a model's distribution parameters.

Per example *x* with posterior q(z|x) = N(μ, diag σ²):

.. math::
   \mathrm{ELBO}(x) = \underbrace{\textstyle\sum_i \log p(x_i|z)}_{\texttt{recon}}
     - \underbrace{\textstyle\sum_j \mathrm{KL}_j}_{\texttt{kl}},
   \qquad z = μ + σ ⊙ ε,

summed over data dimensions *i* and latent dimensions *j*, then averaged over the batch.
(Averaging the KL over latent dimensions rescales it by 1/d: a bug, not a convention.)

One loss covers the common variants; each term switches off at its default, so the
defaults give the plain negative ELBO:

.. math::
   \mathcal{L} = -\overline{\texttt{recon}}
     + w(t)\,β\,\mathrm{KL}_{\mathrm{fb}}
     + γ\,\bigl|\,\overline{\texttt{kl}} - C(t)\bigr|
     + (β_{\mathrm{TC}} - 1)\,\overline{\mathrm{TC}},

* β-VAE (Higgins et al. 2017): ``beta``.
* Free bits (Kingma et al. 2016): :math:`\mathrm{KL}_{\mathrm{fb}} = \sum_g \max(λ,
  \mathbb{E}_{\text{batch}}[\mathrm{KL}_g])`, groups *g* of latent dimensions (one each by
  default); with λ = 0 it is the batch-mean KL.
* KL warm-up / cyclical annealing (Bowman et al. 2016; Fu et al. 2019): the weight *w(t)*
  (:func:`~vaejax.objectives.schedules.kl_weight`), from ``warmup_start`` to 1.
* Capacity annealing (Burgess et al. 2018): ``capacity_gamma`` γ and the target *C(t)*
  rising linearly to ``capacity_max``; use with ``beta=0`` as in the paper.
* β-TCVAE (Chen et al. 2018): ``tc_beta`` weights the total correlation, estimated by
  minibatch-weighted sampling (:func:`total_correlation`).

All settings are numbers or arrays (:class:`~vaejax.objectives.settings.LossSettings` is a
pytree), so a sweep can ``vmap`` the loss over them. Importance-weighted bounds (K > 1
posterior samples) are in :mod:`vaejax.objectives.importance`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vaejax import distributions
from vaejax.objectives.schedules import capacity, kl_weight
from vaejax.objectives.settings import DEFAULT_SETTINGS, LossSettings, validate_settings
from vaejax.types import VAEOutput

Array = jax.Array
ArrayLike = Any


# ----------------------------------------------------------------------------- KL terms


def free_bits_kl(
    kl_per_dim: Array, free_bits: ArrayLike, groups: Sequence[int] | None = None
) -> Array:
  r"""Free-bits KL :math:`\sum_g \max(λ, \mathbb{E}_{\text{batch}}[\sum_{j∈g} \mathrm{KL}_j])`.

  The KL of each group is averaged over the minibatch *before* the max (IAF paper), so
  a group whose mean KL is below λ gets no gradient at all.

  Args:
    kl_per_dim: (B, d) per-example, per-dimension KL.
    free_bits: λ in nats per group.
    groups: static group id per latent dimension (length d, ids 0..G−1), e.g. the
      stochastic layer of each dimension; None = one group per dimension.

  Returns:
    A scalar: the regularised, batch-averaged KL.

  >>> kl = jnp.array([[0.1, 2.0], [0.3, 2.0]])  # (B, d) = (2, 2)
  >>> round(float(free_bits_kl(kl, 0.5)), 4)  # max(0.5, 0.2) + max(0.5, 2.0)
  2.5
  >>> round(float(free_bits_kl(kl, 0.5, groups=(0, 0))), 4)  # one group: max(0.5, 2.2)
  2.2
  """
  mean_kl = jnp.mean(kl_per_dim, axis=0)
  if groups is not None:
    ids = np.asarray(groups)
    if ids.shape != mean_kl.shape or ids.dtype.kind not in "iu" or ids.min() < 0:
      raise ValueError(
          f"groups must be {mean_kl.shape[0]} non-negative integer ids, one per latent "
          f"dimension; got {groups!r}."
      )
    mean_kl = jax.ops.segment_sum(mean_kl, jnp.asarray(ids), num_segments=int(ids.max()) + 1)
  return jnp.sum(jnp.maximum(jnp.asarray(free_bits, mean_kl.dtype), mean_kl))


def total_correlation(
    z: Array, mean: Array, log_var: Array, dataset_size: ArrayLike = 0
) -> Array:
  r"""Per-example total correlation estimate by minibatch-weighted sampling (Chen et al. 2018).

  With M the batch size and N the dataset size,

  .. math::
     \log q(z_i) ≈ \operatorname{logsumexp}_k \log q(z_i|x_k) - \log NM, \qquad
     \log \textstyle\prod_j q(z_{ij}) ≈ \sum_j \bigl[\operatorname{logsumexp}_k
        \log q(z_{ij}|x_k) - \log NM\bigr],

  and TC_i is their difference. With ``dataset_size = 0`` the constant (d−1)·log NM is
  dropped (disentanglement_lib's convention); gradients do not depend on it.

  Args:
    z: (M, d) samples, z_i ~ q(z|x_i).
    mean, log_var: (M, d) posterior parameters of the same batch.
    dataset_size: N, or 0.

  Returns:
    (M,) TC estimates in nats.

  Identical posteriors and samples: each log q is the same constant, so TC = −(d−1)·log M
  when the constant is dropped (d = 3, M = 4 here) and 0 with N = 1:

  >>> z = mean = log_var = jnp.zeros((4, 3))
  >>> tc = jax.jit(total_correlation)(z, mean, log_var)
  >>> tc.shape, round(float(tc[0]), 4)
  ((4,), -2.7726)
  >>> round(abs(float(jax.jit(total_correlation)(z, mean, log_var, 1)[0])), 4)
  0.0
  """
  # log q(z_ij | x_k) for all pairs: (M_i, M_k, d).
  log_q_pairs = distributions.diag_gaussian_log_prob(
      z[:, None, :], mean[None, :, :], log_var[None, :, :]
  )
  log_q_joint = jax.nn.logsumexp(jnp.sum(log_q_pairs, axis=-1), axis=1)
  log_q_marginals = jnp.sum(jax.nn.logsumexp(log_q_pairs, axis=1), axis=-1)
  batch, dims = z.shape
  n = jnp.asarray(dataset_size, jnp.float32)
  constant = jnp.where(n > 0, (dims - 1) * jnp.log(jnp.maximum(n, 1.0) * batch), 0.0)
  return log_q_joint - log_q_marginals + constant


# ----------------------------------------------------------------------------- the ELBO


def _check_shapes(x: Array, out: VAEOutput) -> None:
  """Shape checks happen at trace time, so errors come before compilation."""
  if out.mean.ndim != 2 or out.log_var.shape != out.mean.shape or out.z.shape != out.mean.shape:
    raise ValueError(
        "Posterior parameters must be (batch, latent_dim) with matching shapes; got "
        f"mean {out.mean.shape}, log_var {out.log_var.shape}, z {out.z.shape}."
    )
  if (out.prior_mean is None) != (out.prior_log_var is None):
    raise ValueError("prior_mean and prior_log_var must be given together.")
  if out.prior_mean is not None and (
      out.prior_mean.shape != out.mean.shape or out.prior_log_var.shape != out.mean.shape
  ):
    raise ValueError(
        f"Prior parameters {out.prior_mean.shape}/{out.prior_log_var.shape} must match the "
        f"posterior's {out.mean.shape}."
    )
  for key, value in out.likelihood.items():
    if key == "categorical_logits":  # tokens (B, T) → logits (B, T, V)
      if value.shape[:-1] != x.shape or not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(
            f"Likelihood parameter 'categorical_logits' has shape {value.shape}; integer "
            f"tokens of shape {x.shape} ({x.dtype}) need {x.shape + ('V',)}.")
    elif value.shape != x.shape:
      raise ValueError(
          f"Likelihood parameter {key!r} has shape {value.shape} but the data has shape "
          f"{x.shape}; they must match."
      )
  if x.shape[0] != out.mean.shape[0]:
    raise ValueError(
        f"Data batch {x.shape[0]} differs from the posterior batch {out.mean.shape[0]}."
    )


def _log_likelihood(x: Array, outputs: VAEOutput) -> Array:
  """(B,) log p(x|z) summed over data dimensions."""
  log_px = distributions.likelihood_log_prob(x, outputs.likelihood)
  return jnp.sum(log_px.reshape(x.shape[0], -1), axis=-1)


def _kl_per_dim(outputs: VAEOutput) -> Array:
  """(B, d) closed-form KL(q ‖ p) against N(0, I) or the prior carried in ``outputs``."""
  if outputs.prior_mean is None:
    return distributions.kl_standard_normal(outputs.mean, outputs.log_var)
  return distributions.kl_diag_gaussians(
      outputs.mean, outputs.log_var, outputs.prior_mean, outputs.prior_log_var
  )


def elbo_terms(x: Array, outputs: VAEOutput) -> dict[str, Array]:
  """Per-example ELBO terms of one sample z ~ q(z|x).

  Returns:
    ``recon`` (B,): log p(x|z) summed over data dimensions (nats; −distortion);
    ``kl_per_dim`` (B, d): closed-form KL(q ‖ p) per latent dimension, against N(0, I)
    or against ``outputs``' prior when it has one;
    ``kl`` (B,): its sum over latent dimensions (the rate);
    ``elbo`` (B,): recon − kl.

  >>> x = jnp.array([[0.0, 1.0, 1.0]])  # one example of three binary pixels
  >>> out = VAEOutput(mean=jnp.array([[1.0, 0.0]]), log_var=jnp.zeros((1, 2)),
  ...                 z=jnp.array([[0.3, -0.2]]), likelihood={"logits": jnp.zeros((1, 3))})
  >>> terms = elbo_terms(x, out)
  >>> terms["recon"].shape, terms["kl_per_dim"].shape
  ((1,), (1, 2))
  >>> round(float(terms["recon"][0]), 4), round(float(terms["kl"][0]), 4)  # 3·log ½, μ²/2
  (-2.0794, 0.5)
  """
  x = jnp.asarray(x)
  _check_shapes(x, outputs)
  recon = _log_likelihood(x, outputs)
  kl_per_dim = _kl_per_dim(outputs)
  kl = jnp.sum(kl_per_dim, axis=-1)
  return {"recon": recon, "kl_per_dim": kl_per_dim, "kl": kl, "elbo": recon - kl}


def _is_python_default(value: Any, default: float) -> bool:
  return isinstance(value, (int, float)) and value == default


def elbo_loss(
    x: Array,
    outputs: VAEOutput,
    settings: LossSettings = DEFAULT_SETTINGS,
    step: ArrayLike = 0,
    *,
    free_bits_groups: Sequence[int] | None = None,
) -> tuple[Array, dict[str, Array]]:
  """The training loss (the module docstring's :math:`\\mathcal{L}`) and its terms.

  Args:
    x: the batch, (B, ...) in the likelihood's support.
    outputs: the model's distribution parameters for ``x``.
    settings: loss hyper-parameters (see :class:`LossSettings`).
    step: the training step, for warm-up and capacity schedules.
    free_bits_groups: static group id per latent dimension for free bits.

  Returns:
    ``(loss, terms)``: the scalar loss to minimise and a dict with the per-example
    ``recon``, ``kl``, ``kl_per_dim``, ``elbo`` of :func:`elbo_terms` plus the scalars
    ``kl_weight``, ``capacity``, ``kl_regularizer`` (the free-bits KL) and, when
    ``tc_beta`` is not the Python default 1, ``tc`` (B,).

  >>> x = jnp.array([[0.0, 1.0, 1.0]])
  >>> out = VAEOutput(jnp.array([[1.0, 0.0]]), jnp.zeros((1, 2)), jnp.zeros((1, 2)),
  ...                 {"logits": jnp.zeros((1, 3))})
  >>> loss, terms = elbo_loss(x, out, LossSettings(beta=4.0))
  >>> round(float(loss), 4)  # −recon + β·KL = 3·log 2 + 4 · 0.5
  4.0794
  >>> warm = LossSettings(warmup_steps=100, warmup_start=0.1)
  >>> round(float(elbo_loss(x, out, warm, step=0)[0]), 4)  # KL weight 0.1 at step 0
  2.1294
  """
  validate_settings(settings)
  terms = elbo_terms(x, outputs)
  weight = kl_weight(step, settings.warmup_steps, settings.cycle_steps,
                     settings.warmup_start)
  kl_reg = free_bits_kl(terms["kl_per_dim"], settings.free_bits, free_bits_groups)
  target = capacity(step, settings.capacity_max, settings.capacity_steps)
  mean_kl = jnp.mean(terms["kl"])
  loss = (
      -jnp.mean(terms["recon"])
      + weight * settings.beta * kl_reg
      + settings.capacity_gamma * jnp.abs(mean_kl - target)
  )
  extras = {"kl_weight": weight, "capacity": target, "kl_regularizer": kl_reg}
  # β-TC needs O(B² d) work: skip it when it is statically off.
  if not _is_python_default(settings.tc_beta, 1.0):
    tc = total_correlation(outputs.z, outputs.mean, outputs.log_var, settings.dataset_size)
    loss = loss + (settings.tc_beta - 1.0) * jnp.mean(tc)
    extras["tc"] = tc
  return loss, {**terms, **extras}


def summarize(terms: dict[str, Array]) -> dict[str, Array]:
  """Batch means for logging: scalars as they are, (B,) → mean, (B, d) → (d,) mean.

  >>> means = summarize({"loss": jnp.float32(2.0), "kl": jnp.array([1.0, 3.0]),
  ...                    "kl_per_dim": jnp.ones((2, 5))})
  >>> float(means["loss"]), float(means["kl"]), means["kl_per_dim"].shape
  (2.0, 2.0, (5,))
  """
  return {k: (v if jnp.ndim(v) == 0 else jnp.mean(v, axis=0)) for k, v in terms.items()}


def bits_per_dim(nats: ArrayLike, num_dims: int) -> Array:
  """Converts a per-example negative log-likelihood in nats to bits per data dimension.

  >>> round(float(bits_per_dim(784 * math.log(2.0), num_dims=784)), 4)
  1.0
  """
  return jnp.asarray(nats) / (num_dims * math.log(2.0))
