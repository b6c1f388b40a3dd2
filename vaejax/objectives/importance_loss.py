r"""Training with K importance samples: :func:`iwae_loss` and the check of its settings.

:func:`iwae_loss` is the loss of IWAE (Burda et al. 2015) and MIWAE (Rainforth et al.
2018), with plain or DReG gradients, built on
:func:`~vaejax.objectives.importance.importance_weighted_terms`; K = 1 is the ELBO loss.
:func:`validate_importance_settings` refuses, before anything is compiled, the settings
that act on the ELBO's separate KL term, which the importance-weighted bound does not have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vaejax.objectives.elbo import elbo_loss, elbo_terms
from vaejax.objectives.importance import (
    _DREG_PRIOR_PROBLEM, ESTIMATORS, importance_weighted_terms, log_importance_weight)
from vaejax.objectives.schedules import capacity, kl_weight
from vaejax.objectives.settings import (
    DEFAULT_SETTINGS, LossSettings, _is_concrete, validate_settings)
from vaejax.types import VAEOutput
from vaejax.utils.checks import check_int

Array = jax.Array
ArrayLike = Any


def _shape_int_problem(name: str, value: Any) -> str | None:
  """The problem with a count that sets array shapes (K, M), or None if it is an int >= 1."""
  try:
    check_int(value, name, minimum=1)
  except ValueError:
    return f"{name} must be a Python int >= 1 (it sets array shapes), got {value!r}."
  return None


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

  >>> validate_importance_settings(LossSettings(beta=2.0, warmup_steps=100), num_samples=8)
  >>> validate_importance_settings(LossSettings(free_bits=0.5), num_samples=8)
  Traceback (most recent call last):
  ...
  ValueError: free_bits=0.5 cannot be used with K=8 importance samples: ...
  """
  validate_settings(settings)
  count_problems = [_shape_int_problem("num_importance_samples (K)", num_samples),
                    _shape_int_problem("num_groups (M)", num_groups)]
  problems = [p for p in count_problems if p is not None]
  if not isinstance(estimator, str) or estimator not in ESTIMATORS:
    problems.append(f"Unknown estimator {estimator!r}; expected one of {ESTIMATORS}.")
  if count_problems[0] is None and num_samples > 1:
    problems += _multi_sample_problems(settings, int(num_samples), estimator, has_learned_prior)
  if problems:
    raise ValueError("\n".join(problems))


def _multi_sample_problems(settings: LossSettings, k: int, estimator: str,
                           has_learned_prior: bool) -> list[str]:
  """The settings that act on the ELBO's separate KL term, refused at K > 1."""
  problems = []
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
  return problems


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
    settings: loss settings; with K > 1 only ``beta``, ``warmup_steps``,
      ``warmup_start`` and ``cycle_steps`` act (free bits, capacity and β-TC are refused:
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

  q = p and a decoder that ignores z: every log weight is 3·log ½, whatever the samples:

  >>> x = jnp.array([[0.0, 1.0, 1.0]])
  >>> def sample_outputs(key):
  ...   z = jax.random.normal(key, (1, 2))
  ...   return VAEOutput(jnp.zeros((1, 2)), jnp.zeros((1, 2)), z, {"logits": jnp.zeros((1, 3))})
  >>> loss_fn = jax.jit(lambda key: iwae_loss(x, sample_outputs, key, num_samples=4))
  >>> loss, terms = loss_fn(jax.random.key(0))
  >>> round(float(loss), 4), terms["iwae"].shape, round(float(terms["ess"][0]), 4)
  (2.0794, (1,), 4.0)
  """
  validate_importance_settings(settings, num_samples, estimator, num_groups)
  num_samples, num_groups = int(num_samples), int(num_groups)
  x = jnp.asarray(x)
  if num_samples == 1:
    return _elbo_groups(x, sample_outputs, key, num_groups, settings, step, free_bits_groups)

  stacked = jax.vmap(sample_outputs)(jax.random.split(key, num_groups * num_samples))
  stacked = jax.tree.map(
      lambda a: a.reshape((num_groups, num_samples) + a.shape[1:]), stacked)
  first = jax.tree.map(lambda a: a[0, 0], stacked)
  weight = kl_weight(step, settings.warmup_steps, settings.cycle_steps,
                     settings.warmup_start)
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


def _elbo_groups(
    x: Array, sample_outputs: Callable[[Array], VAEOutput], key: Array, num_groups: int,
    settings: LossSettings, step: ArrayLike, free_bits_groups: Sequence[int] | None,
) -> tuple[Array, dict[str, Array]]:
  """K = 1: the ELBO loss of one sample (the mean over M groups), with ``iwae`` and ``ess``."""
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


