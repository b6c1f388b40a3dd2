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
* KL warm-up / cyclical annealing (Bowman et al. 2016; Fu et al. 2019): the weight *w(t)*.
* Capacity annealing (Burgess et al. 2018): ``capacity_gamma`` γ and the target *C(t)*
  rising linearly to ``capacity_max``; use with ``beta=0`` as in the paper.
* β-TCVAE (Chen et al. 2018): ``tc_beta`` weights the total correlation, estimated by
  minibatch-weighted sampling (:func:`total_correlation`).

All settings are numbers or arrays (:class:`LossSettings` is a pytree), so a sweep can
``vmap`` the loss over them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vaejax import distributions
from vaejax.types import VAEOutput

Array = jax.Array
ArrayLike = Any


class LossSettings(NamedTuple):
  """Loss hyper-parameters; every field is a number or array (vmappable).

  Attributes:
    beta: weight β ≥ 0 of the (free-bits) KL. 1 = the ELBO.
    free_bits: λ ≥ 0 nats per group (per latent dimension by default). 0 = off.
    warmup_steps: KL weight rises linearly 0 → 1 over this many steps. 0 = off.
    cycle_steps: restart the warm-up every this many steps (cyclical annealing; needs
      ``warmup_steps`` > 0, usually half the cycle). 0 = no cycling.
    capacity_gamma: γ ≥ 0 of the capacity term γ·|KL − C(t)|. 0 = off.
    capacity_max: the final capacity C_max in nats.
    capacity_steps: C(t) rises linearly from 0 to C_max over this many steps
      (0 = C_max from the start).
    tc_beta: β of β-TCVAE, the weight of the total correlation. 1 = off (plain KL).
    dataset_size: N for the minibatch-weighted-sampling TC estimate. 0 drops the
      constant (d−1)·log(N·M) from the estimate, as disentanglement_lib does; the
      gradient is the same either way.
  """

  beta: ArrayLike = 1.0
  free_bits: ArrayLike = 0.0
  warmup_steps: ArrayLike = 0
  cycle_steps: ArrayLike = 0
  capacity_gamma: ArrayLike = 0.0
  capacity_max: ArrayLike = 0.0
  capacity_steps: ArrayLike = 0
  tc_beta: ArrayLike = 1.0
  dataset_size: ArrayLike = 0


DEFAULT_SETTINGS = LossSettings()  # the plain negative ELBO

# Every setting must be finite and >= 0.
_NON_NEGATIVE = (
    "beta", "free_bits", "warmup_steps", "cycle_steps", "capacity_gamma",
    "capacity_max", "capacity_steps", "tc_beta", "dataset_size",
)


def _is_concrete(value: Any) -> bool:
  return not isinstance(value, jax.core.Tracer)


def validate_settings(settings: LossSettings) -> None:
  """Raises one clear ValueError for a setting that is negative or not finite.

  Works on numbers and concrete arrays (a sweep's grid); call it before compiling.
  Tracers (inside jit) are skipped: values cannot be checked there.
  """
  if not isinstance(settings, LossSettings):
    raise TypeError(f"settings must be a LossSettings, got {type(settings).__name__}.")
  for name in _NON_NEGATIVE:
    value = getattr(settings, name)
    if not _is_concrete(value):
      continue
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
      raise ValueError(f"Loss setting {name}={value!r} must be finite.")
    if np.any(array < 0):
      raise ValueError(f"Loss setting {name}={value!r} is negative; it must be >= 0.")
  warm, cycle = settings.warmup_steps, settings.cycle_steps
  if _is_concrete(warm) and _is_concrete(cycle) and np.any(
      (np.asarray(cycle) > 0) & (np.asarray(warm) <= 0)
  ):
    raise ValueError(
        f"cycle_steps={settings.cycle_steps!r} needs warmup_steps > 0 (the ramp length "
        f"within each cycle); got warmup_steps={settings.warmup_steps!r}."
    )


def stack_settings(grid: Sequence[LossSettings]) -> LossSettings:
  """Stacks M settings into one whose varying fields are (M,) arrays, for ``jax.vmap``.

  Fields equal across the grid stay Python numbers, so terms that are off everywhere
  (e.g. β-TC) stay statically off. Use :func:`settings_in_axes` for vmap's ``in_axes``.
  """
  if not grid:
    raise ValueError("stack_settings needs at least one LossSettings; got an empty grid.")
  for s in grid:
    validate_settings(s)
  fields = {}
  for name in LossSettings._fields:
    values = [getattr(s, name) for s in grid]
    if any(np.ndim(v) != 0 for v in values):
      raise ValueError(f"stack_settings takes scalar settings; {name} has values {values!r}.")
    same = all(v == values[0] for v in values)
    fields[name] = values[0] if same else jnp.asarray(values, jnp.float32)
  return LossSettings(**fields)


def settings_in_axes(settings: LossSettings) -> LossSettings:
  """vmap ``in_axes`` for stacked settings: 0 for array fields, None for Python numbers."""
  return LossSettings(*(0 if np.ndim(v) else None for v in settings))


# ----------------------------------------------------------------------------- schedules


def kl_weight(step: ArrayLike, warmup_steps: ArrayLike, cycle_steps: ArrayLike = 0) -> Array:
  r"""KL warm-up weight :math:`w(t) = \min(1, τ / T_{\mathrm{warm}})`, τ = t or t mod T_cycle.

  An ``optax.Schedule``-compatible function of the step. Unlike
  ``optax.linear_schedule(0, 1, T)`` (which it equals for a Python ``T``), the lengths may
  be traced arrays, so a sweep can vmap over them. ``warmup_steps = 0`` gives w ≡ 1.
  """
  step = jnp.asarray(step, jnp.float32)
  warm = jnp.asarray(warmup_steps, jnp.float32)
  cycle = jnp.asarray(cycle_steps, jnp.float32)
  tau = jnp.where(cycle > 0, jnp.mod(step, jnp.maximum(cycle, 1.0)), step)
  ramp = jnp.clip(tau / jnp.maximum(warm, 1.0), 0.0, 1.0)
  return jnp.where(warm > 0, ramp, 1.0)


def capacity(step: ArrayLike, capacity_max: ArrayLike, capacity_steps: ArrayLike) -> Array:
  r"""Capacity target :math:`C(t) = C_{\max}\min(1, t / T)` in nats (C_max at once if T = 0)."""
  step = jnp.asarray(step, jnp.float32)
  steps = jnp.asarray(capacity_steps, jnp.float32)
  frac = jnp.where(steps > 0, jnp.clip(step / jnp.maximum(steps, 1.0), 0.0, 1.0), 1.0)
  return jnp.asarray(capacity_max, jnp.float32) * frac


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
    if value.shape != x.shape:
      raise ValueError(
          f"Likelihood parameter {key!r} has shape {value.shape} but the data has shape "
          f"{x.shape}; they must match."
      )
  if x.shape[0] != out.mean.shape[0]:
    raise ValueError(
        f"Data batch {x.shape[0]} differs from the posterior batch {out.mean.shape[0]}."
    )


def elbo_terms(x: Array, outputs: VAEOutput) -> dict[str, Array]:
  """Per-example ELBO terms of one sample z ~ q(z|x).

  Returns:
    ``recon`` (B,): log p(x|z) summed over data dimensions (nats; −distortion);
    ``kl_per_dim`` (B, d): closed-form KL(q ‖ p) per latent dimension, against N(0, I)
    or against ``outputs``' prior when it has one;
    ``kl`` (B,): its sum over latent dimensions (the rate);
    ``elbo`` (B,): recon − kl.
  """
  x = jnp.asarray(x)
  _check_shapes(x, outputs)
  log_px = distributions.likelihood_log_prob(x, outputs.likelihood)
  recon = jnp.sum(log_px.reshape(x.shape[0], -1), axis=-1)
  if outputs.prior_mean is None:
    kl_per_dim = distributions.kl_standard_normal(outputs.mean, outputs.log_var)
  else:
    kl_per_dim = distributions.kl_diag_gaussians(
        outputs.mean, outputs.log_var, outputs.prior_mean, outputs.prior_log_var
    )
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
  """
  validate_settings(settings)
  terms = elbo_terms(x, outputs)
  weight = kl_weight(step, settings.warmup_steps, settings.cycle_steps)
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
  """Batch means for logging: scalars as they are, (B,) → mean, (B, d) → (d,) mean."""
  return {k: (v if jnp.ndim(v) == 0 else jnp.mean(v, axis=0)) for k, v in terms.items()}


def bits_per_dim(nats: ArrayLike, num_dims: int) -> Array:
  """Converts a per-example negative log-likelihood in nats to bits per data dimension."""
  return jnp.asarray(nats) / (num_dims * math.log(2.0))
