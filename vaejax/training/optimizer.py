r"""Adam as an update direction, and a learning rate that is a per-model number.

The optimizer (:func:`make_optimizer`) produces Adam's direction
:math:`\hat m_t / (\sqrt{\hat v_t} + ε)` (after optional global-norm clipping); the step
multiplies it by :math:`-η_t` from :func:`learning_rate_at`. Keeping the rate out of the
optax chain makes η and its warm-up length traced numbers of the step, so models of one
compiled program can train with different rates (``optax.inject_hyperparams`` with
``optax.linear_schedule`` cannot take a traced warm-up length, and its schedule overwrites
a per-model rate). For a constant rate the update equals ``optax.adam(η)``'s bit for bit.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

ArrayLike = Any


@functools.lru_cache(maxsize=64)
def make_optimizer(*, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   grad_clip_norm: float = 0.0) -> optax.GradientTransformation:
  """Adam's direction, optionally after global-norm clipping (``grad_clip_norm`` > 0).

  The learning rate is not part of it: apply ``-learning_rate_at(...) * direction``.
  Equal settings return the same (pure) transformation, so programs built from it are
  compiled once per process.
  """
  clip = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm > 0 else []
  return optax.chain(*clip, optax.scale_by_adam(b1=b1, b2=b2, eps=eps))


def optimizer_from_config(config: Any) -> optax.GradientTransformation:
  """:func:`make_optimizer` from a training config's ``optimizer`` group."""
  opt = config.optimizer
  return make_optimizer(b1=float(opt.b1), b2=float(opt.b2), eps=float(opt.eps),
                        grad_clip_norm=float(opt.grad_clip_norm))


def learning_rate_at(step: ArrayLike, learning_rate: ArrayLike,
                     warmup_steps: ArrayLike = 0) -> jax.Array:
  r"""The rate of update *t* (0-based): :math:`η_t = η \min(1, t / T)`, or η when T = 0.

  Equals ``optax.linear_schedule(0, η, T)(t)`` but takes traced η and T, so it vmaps
  over models.

  >>> round(float(learning_rate_at(5, 1e-3, warmup_steps=10)), 8)
  0.0005
  """
  step = jnp.asarray(step, jnp.float32)
  rate = jnp.asarray(learning_rate, jnp.float32)
  warm = jnp.asarray(warmup_steps, jnp.float32)
  ramp = jnp.clip(step / jnp.maximum(warm, 1.0), 0.0, 1.0)
  return jnp.where(warm > 0, rate * ramp, rate)
