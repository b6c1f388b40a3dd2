"""The loss settings: hyper-parameters of the ELBO loss as a pytree of numbers or arrays.

Every field of :class:`LossSettings` is a number or an array, so a sweep stacks M settings
(:func:`stack_settings`) and ``jax.vmap``\\ s the loss over them with the ``in_axes`` of
:func:`settings_in_axes`. :func:`validate_settings` checks concrete values before anything
is compiled; inside ``jit`` the values are tracers and cannot be checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ArrayLike = Any


class LossSettings(NamedTuple):
  """Loss hyper-parameters; every field is a number or array (vmappable).

  Attributes:
    beta: weight β ≥ 0 of the (free-bits) KL. 1 = the ELBO.
    free_bits: λ ≥ 0 nats per group (per latent dimension by default). 0 = off.
    warmup_steps: KL weight rises linearly from ``warmup_start`` to 1 over this many
      steps. 0 = off.
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
    warmup_start: the KL weight at the start of each warm-up, in [0, 1] (Texar and
      He et al. 2019 start at 0.1). 0 = the weight starts at 0. Acts only when
      ``warmup_steps`` > 0.

  >>> LossSettings(beta=4.0).beta, LossSettings().warmup_start
  (4.0, 0.0)
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
  warmup_start: ArrayLike = 0.0


DEFAULT_SETTINGS = LossSettings()  # the plain negative ELBO

# Every setting must be finite and >= 0; these also <= 1 (weights, not counts).
_AT_MOST_ONE = ("warmup_start",)


def _is_concrete(value: Any) -> bool:
  """Whether ``value`` can be checked now: not a tracer inside ``jit``/``vmap``."""
  return not isinstance(value, jax.core.Tracer)


def _check_value(name: str, value: Any) -> None:
  """One setting (number or concrete array): not boolean, finite, >= 0, <= 1 where due."""
  array = np.asarray(value)
  if isinstance(value, bool) or array.dtype == np.bool_:
    raise ValueError(f"Loss setting {name}={value!r} must be a number, not a boolean.")
  array = array.astype(np.float64)
  if not np.all(np.isfinite(array)):
    raise ValueError(f"Loss setting {name}={value!r} must be finite.")
  if np.any(array < 0):
    raise ValueError(f"Loss setting {name}={value!r} is negative; it must be >= 0.")
  if name in _AT_MOST_ONE and np.any(array > 1):
    raise ValueError(f"Loss setting {name}={value!r} must be in [0, 1].")


def validate_settings(settings: LossSettings) -> None:
  """Raises one clear ValueError for a setting that is negative, not finite or a boolean.

  ``warmup_start`` must also be at most 1. Works on numbers and concrete arrays (a
  sweep's grid); call it before compiling. Tracers (inside jit) are skipped: values
  cannot be checked there.

  >>> validate_settings(LossSettings(beta=4.0, warmup_steps=100, warmup_start=0.1))
  >>> validate_settings(LossSettings(beta=-1.0))
  Traceback (most recent call last):
  ...
  ValueError: Loss setting beta=-1.0 is negative; it must be >= 0.
  >>> validate_settings(LossSettings(warmup_start=1.5))
  Traceback (most recent call last):
  ...
  ValueError: Loss setting warmup_start=1.5 must be in [0, 1].
  """
  if not isinstance(settings, LossSettings):
    raise TypeError(f"settings must be a LossSettings, got {type(settings).__name__}.")
  for name in LossSettings._fields:
    value = getattr(settings, name)
    if _is_concrete(value):
      _check_value(name, value)
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

  >>> stacked = stack_settings([LossSettings(beta=1.0), LossSettings(beta=4.0)])
  >>> stacked.beta.shape, stacked.free_bits
  ((2,), 0.0)
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
  """vmap ``in_axes`` for stacked settings: 0 for array fields, None for Python numbers.

  >>> axes = settings_in_axes(stack_settings([LossSettings(), LossSettings(beta=4.0)]))
  >>> axes.beta, axes.free_bits
  (0, None)
  """
  return LossSettings(*(0 if np.ndim(v) else None for v in settings))
