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

Importance-weighted bounds (Burda et al. 2015) for training with K > 1 posterior
samples: :func:`iwae_loss` (IWAE, MIWAE; plain or DReG gradients; K = 1 is
:func:`elbo_loss`), built on :func:`log_importance_weight`, the log weight that the
evaluation side (:mod:`vaejax.evaluation.likelihood`) uses too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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


# ----------------------------------------------------------------------------- importance weighting

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
  training objectives below and :func:`vaejax.evaluation.likelihood.iwae_log_likelihood`
  both use it.
  """
  log_px, log_ratio = log_weight_parts(x, outputs)
  if _is_python_default(prior_weight, 1.0):
    return log_px + log_ratio
  return log_px + prior_weight * log_ratio


def log_mean_exp(values: Array, axis: int = 0) -> Array:
  r""":math:`\log \frac1K \sum_k e^{v_k}` along ``axis`` (K its length), computed stably."""
  return jax.nn.logsumexp(values, axis=axis) - math.log(values.shape[axis])


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _any(value: Any, predicate) -> bool:
  """Whether a concrete setting (number or array) satisfies ``predicate`` anywhere."""
  return _is_concrete(value) and bool(np.any(predicate(np.asarray(value, np.float64))))


def validate_importance_settings(
    settings: LossSettings,
    num_samples: int,
    estimator: str = "plain",
    num_groups: int = 1,
    has_learned_prior: bool = False,
) -> None:
  """Raises one ValueError, one line per mistake, for a bad importance-weighted configuration.

  Call it before compiling (e.g. from the training config, once per sweep point, with
  ``has_learned_prior`` true for models whose outputs carry a prior: the hierarchical
  VAEs). :func:`iwae_loss` calls it too, but inside ``jit``/``vmap`` the settings may be
  tracers whose values cannot be checked; those are skipped here, as in
  :func:`validate_settings` (which runs first and raises its own error).

  With K > 1 importance samples it refuses the settings that act on the ELBO's separate
  KL term, because the importance-weighted bound has none (log p(z) − log q(z|x) enters
  every weight inside the log-sum-exp): free bits, capacity annealing and β-TC.
  β and the KL warm-up combine (see :func:`importance_weighted_terms`).

  Args:
    settings: the loss settings (numbers or a sweep's arrays).
    num_samples: K ≥ 1, a Python int (it sets array shapes).
    estimator: one of :data:`ESTIMATORS`.
    num_groups: M ≥ 1 (MIWAE: the mean of M independent IWAE-K bounds).
    has_learned_prior: whether the model's prior is not N(0, I).
  """
  validate_settings(settings)
  problems = []
  for name, value in (("num_importance_samples (K)", num_samples),
                      ("num_groups (M)", num_groups)):
    if not _is_int(value) or value < 1:
      problems.append(
          f"{name} must be a Python int >= 1 (it sets array shapes), got {value!r}.")
  if not isinstance(estimator, str) or estimator not in ESTIMATORS:
    problems.append(f"Unknown estimator {estimator!r}; expected one of {ESTIMATORS}.")
  if _is_int(num_samples) and num_samples > 1:
    k = int(num_samples)
    if _any(settings.free_bits, lambda v: v > 0):
      problems.append(
          f"free_bits={settings.free_bits!r} cannot be used with K={k} importance samples: "
          "free bits clamps the batch-mean KL of each group, and the importance-weighted "
          "bound has no separate KL term to clamp (set free_bits=0 or K=1).")
    if _any(settings.capacity_gamma, lambda v: v > 0):
      problems.append(
          f"capacity annealing (capacity_gamma={settings.capacity_gamma!r}) cannot be used "
          f"with K={k} importance samples: its penalty γ·|KL − C| targets the ELBO's KL "
          "term, which the importance-weighted bound does not have (set capacity_gamma=0 "
          "or K=1).")
    if _any(settings.tc_beta, lambda v: v != 1):
      problems.append(
          f"β-TC (tc_beta={settings.tc_beta!r}) cannot be used with K={k} importance "
          "samples: it reweights the total-correlation part of the ELBO's KL term, which "
          "the importance-weighted bound does not have (set tc_beta=1 or K=1).")
    if estimator == "dreg" and has_learned_prior:
      problems.append(_DREG_PRIOR_PROBLEM)
  if problems:
    raise ValueError("\n".join(problems))


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
  """
  if not isinstance(estimator, str) or estimator not in ESTIMATORS:
    raise ValueError(f"Unknown estimator {estimator!r}; expected one of {ESTIMATORS}.")
  x = jnp.asarray(x)
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
    sg = jax.lax.stop_gradient
    weights = jax.nn.softmax(sg(log_w_tempered), axis=0)  # w̃_k, (K, B)
    path_scale = (1.0 - inside) + inside * weights  # a_k / w̃_k
    z = outputs.z
    z_path = sg(z) + path_scale[..., None] * (z - sg(z))
    frozen = VAEOutput(sg(outputs.mean), sg(outputs.log_var), z_path, jax.vmap(decode)(z_path))
    path_px, path_ratio = parts(x, frozen)
    surrogate = jnp.sum(weights * (path_px + inside * path_ratio), axis=0)
    tempered = sg(log_mean_exp(log_w_tempered)) + (surrogate - sg(surrogate))
  ess = jnp.exp(2.0 * jax.nn.logsumexp(log_w, axis=0) - jax.nn.logsumexp(2.0 * log_w, axis=0))
  return {
      "objective": tempered - outside * mean_kl,
      "iwae": log_mean_exp(log_w),
      "ess": ess,
      "mean_kl": mean_kl,
  }


def iwae_loss(
    x: ArrayLike,
    sample_outputs: Callable[[Array], VAEOutput],
    key: Array,
    num_samples: int,
    *,
    estimator: str = "plain",
    num_groups: int = 1,
    settings: LossSettings = DEFAULT_SETTINGS,
    step: ArrayLike = 0,
    decode: Callable[[Array], dict[str, Array]] | None = None,
    free_bits_groups: Sequence[int] | None = None,
) -> tuple[Array, dict[str, Array]]:
  r"""The importance-weighted training loss (IWAE / MIWAE) with K samples, and its terms.

  .. math::
     \mathcal L = -\frac1B\sum_b \frac1M \sum_{m=1}^M \mathcal J^{\,w(t)β}_K(x_b;\ z_{m,1..K}),

  the mean over M groups (MIWAE, Rainforth et al. 2018; M = 1 is IWAE) of the
  objective of :func:`importance_weighted_terms` with the KL scale w(t)·β, each group
  from K fresh posterior samples; with β = 1 and no warm-up it is −(the IWAE bound).
  Forward passes are vmapped over the M·K keys ``jax.random.split(key, M * K)``;
  sample k of group m uses key ``m * K + k``. Memory grows with M·K·B.

  **K = 1 is the ELBO loss**: it calls :func:`elbo_loss` on ``sample_outputs(key)``
  (closed-form KL, every :class:`LossSettings` term, ``free_bits_groups``), for either
  estimator, so a config with ``num_importance_samples = 1`` trains exactly as before.
  (DReG at K = 1 would be the sticking-the-landing estimator; the analytic KL is
  used instead.) With K = 1 and M > 1 the loss and every term are averages over M such
  ELBO losses.

  Args:
    x: (B, ...) the batch.
    sample_outputs: one forward pass, ``key -> VAEOutput`` for ``x`` (the caller closes
      over model, parameters, ``x`` and labels), e.g.
      ``lambda k: model.apply({"params": p}, x, labels, rngs={"sample": k})``.
    key: PRNG key of the posterior samples.
    num_samples: K ≥ 1, a Python int.
    estimator: ``"plain"`` or ``"dreg"`` (:func:`importance_weighted_terms`).
    num_groups: M ≥ 1, a Python int.
    settings: loss settings; with K > 1 only ``beta``, ``warmup_steps`` and
      ``cycle_steps`` act (free bits, capacity and β-TC are refused:
      :func:`validate_importance_settings`).
    step: the training step, for the warm-up weight w(t).
    decode: the model's decoder ``z -> likelihood parameters``, needed by ``"dreg"``
      at K > 1.
    free_bits_groups: passed to :func:`elbo_loss` at K = 1.

  Returns:
    ``(loss, terms)``: the scalar loss and a dict with the per-example ``iwae`` (B,),
    the bound :math:`\mathcal L_K` (the MIWAE bound, the mean over the M groups; at
    K = 1 the single-sample log w, an unbiased estimate of the ELBO), ``ess`` (B,),
    the effective sample size in [1, K] (mean over groups), the ELBO terms ``recon``,
    ``kl``, ``kl_per_dim``, ``elbo`` (closed-form KL) of the first sample, and the
    scalars ``kl_weight``, ``capacity`` and ``kl_regularizer`` (at K > 1 the batch-mean
    :math:`\overline{\mathrm{KL}}` that β weights), the keys :func:`elbo_loss` logs.

  Raises:
    ValueError: the settings (:func:`validate_importance_settings`); ``"dreg"`` with
      K > 1 for outputs that carry a prior, or without ``decode``.
  """
  validate_importance_settings(settings, num_samples, estimator, num_groups)
  num_samples, num_groups = int(num_samples), int(num_groups)
  x = jnp.asarray(x)

  if num_samples == 1:
    def single(k: Array) -> tuple[Array, dict[str, Array]]:
      outputs = sample_outputs(k)
      loss, terms = elbo_loss(x, outputs, settings, step, free_bits_groups=free_bits_groups)
      extras = {"iwae": log_importance_weight(x, outputs),
                "ess": jnp.ones(x.shape[:1], jnp.float32)}
      return loss, {**terms, **extras}

    if num_groups == 1:
      return single(key)
    losses, terms = jax.vmap(single)(jax.random.split(key, num_groups))
    return jnp.mean(losses), jax.tree.map(lambda a: jnp.mean(a, axis=0), terms)

  stacked = jax.vmap(sample_outputs)(jax.random.split(key, num_groups * num_samples))
  stacked = jax.tree.map(
      lambda a: a.reshape((num_groups, num_samples) + a.shape[1:]), stacked)
  first = jax.tree.map(lambda a: a[0, 0], stacked)
  weight = kl_weight(step, settings.warmup_steps, settings.cycle_steps)
  groups = jax.vmap(
      lambda outputs: importance_weighted_terms(
          x, outputs, weight * settings.beta, estimator=estimator, decode=decode)
  )(stacked)
  groups = {k: jnp.mean(v, axis=0) for k, v in groups.items()}  # MIWAE: mean over M
  extras = {
      "iwae": groups["iwae"],
      "ess": groups["ess"],
      "kl_weight": weight,
      "capacity": capacity(step, settings.capacity_max, settings.capacity_steps),
      "kl_regularizer": jnp.mean(groups["mean_kl"]),
  }
  return -jnp.mean(groups["objective"]), {**elbo_terms(x, first), **extras}


def summarize(terms: dict[str, Array]) -> dict[str, Array]:
  """Batch means for logging: scalars as they are, (B,) → mean, (B, d) → (d,) mean."""
  return {k: (v if jnp.ndim(v) == 0 else jnp.mean(v, axis=0)) for k, v in terms.items()}


def bits_per_dim(nats: ArrayLike, num_dims: int) -> Array:
  """Converts a per-example negative log-likelihood in nats to bits per data dimension."""
  return jnp.asarray(nats) / (num_dims * math.log(2.0))
