r"""Schedules of the loss settings over training steps: the KL weight and the capacity.

Both are ``optax.Schedule``-compatible functions of the step whose lengths and values may
be traced arrays, so a sweep can ``vmap`` over them (optax's schedules take Python numbers).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
ArrayLike = Any


def kl_weight(
    step: ArrayLike,
    warmup_steps: ArrayLike,
    cycle_steps: ArrayLike = 0,
    warmup_start: ArrayLike = 0.0,
) -> Array:
  r"""KL warm-up weight, linear from ``warmup_start`` to 1, optionally cyclical.

  .. math::
     w(t) = s + (1 - s)\,\min\bigl(1,\ τ / T_{\mathrm{warm}}\bigr),
     \qquad τ = t \text{ or } t \bmod T_{\mathrm{cycle}},

  with s = ``warmup_start`` ∈ [0, 1] (Bowman et al. 2016 start at 0; Texar and He et al.
  2019 at 0.1) and the restart every T_cycle steps for cyclical annealing (Fu et al.
  2019). Unlike ``optax.linear_schedule(s, 1, T)`` (which it equals for Python numbers),
  every argument may be a traced array. ``warmup_steps = 0`` gives w ≡ 1; s = 0 gives
  the plain ramp τ / T bit for bit.

  >>> [round(float(kl_weight(t, 10)), 4) for t in (0, 5, 10, 20)]
  [0.0, 0.5, 1.0, 1.0]
  >>> [round(float(kl_weight(t, 10, warmup_start=0.1)), 4) for t in (0, 5, 10)]
  [0.1, 0.55, 1.0]
  >>> [round(float(kl_weight(t, 10, cycle_steps=20)), 4) for t in (5, 15, 25)]
  [0.5, 1.0, 0.5]
  """
  step = jnp.asarray(step, jnp.float32)
  warm = jnp.asarray(warmup_steps, jnp.float32)
  cycle = jnp.asarray(cycle_steps, jnp.float32)
  start = jnp.asarray(warmup_start, jnp.float32)
  tau = jnp.where(cycle > 0, jnp.mod(step, jnp.maximum(cycle, 1.0)), step)
  ramp = jnp.clip(tau / jnp.maximum(warm, 1.0), 0.0, 1.0)
  return jnp.where(warm > 0, start + (1.0 - start) * ramp, 1.0)


def capacity(step: ArrayLike, capacity_max: ArrayLike, capacity_steps: ArrayLike) -> Array:
  r"""Capacity target :math:`C(t) = C_{\max}\min(1, t / T)` in nats (C_max at once if T = 0).

  >>> [round(float(capacity(t, 25.0, 100)), 4) for t in (0, 50, 200)]
  [0.0, 12.5, 25.0]
  """
  step = jnp.asarray(step, jnp.float32)
  steps = jnp.asarray(capacity_steps, jnp.float32)
  frac = jnp.where(steps > 0, jnp.clip(step / jnp.maximum(steps, 1.0), 0.0, 1.0), 1.0)
  return jnp.asarray(capacity_max, jnp.float32) * frac
