"""Train states: one model's, and a stack of M models with which of them still train.

Every random stream of a run is ``fold_in(PRNGKey(seed), STREAM)`` (:mod:`vaejax.rng`), so a
model's initialisation, sample keys, evaluation keys and figures depend
only on its seed; a stack initialises all its models in one vmapped call that equals
the single-model :func:`create_train_state` for every seed. Models are initialised on
what the dataset describes (its :class:`~vaejax.types.DataSpec`: images, or token
sequences), through :func:`vaejax.types.example_batch`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vaejax import rng
from vaejax.types import IMAGES, DataSpec, example_batch

Array = jax.Array


class TrainState(flax.struct.PyTreeNode):
  """Everything one model's step reads and writes; a pytree, checkpointed as a whole.

  Attributes:
    step: int32 count of steps taken (skipped updates included).
    params: model parameters.
    opt_state: optax state.
    key: raw uint32 PRNG key of the run; step t samples with ``fold_in(key, t)``.
    skips: int32 total of skipped updates (non-finite, or a gradient norm above the
      optimizer's ``skip_threshold``).
    consecutive_skips: int32 length of the current run of skipped updates.
    longest_skip_streak: int32 longest run of consecutive skipped updates so far.
    grad_norm_skips: int32 how many of the skipped updates had a finite gradient whose norm
      exceeded ``skip_threshold`` (VDVAE's skipping), counted apart from non-finite ones.
  """

  step: Array
  params: Any
  opt_state: Any
  key: Array
  skips: Array
  consecutive_skips: Array
  longest_skip_streak: Array
  grad_norm_skips: Array


class StackState(flax.struct.PyTreeNode):
  """M train states stacked on a leading model axis, plus which models still train.

  Attributes:
    models: a :class:`TrainState` whose leaves have a leading model axis.
    active: bool (M,); False once a model diverged (its state is then frozen).
    masked_at: int32 (M,); the model's step when it was masked, −1 while active.
  """

  models: Any
  active: Array
  masked_at: Array

  @property
  def num_models(self) -> int:
    return int(np.shape(self.active)[0])


def as_spec(spec: DataSpec | Sequence[int]) -> DataSpec:
  """A :class:`~vaejax.types.DataSpec`; an (H, W, C) image shape (the older form) wrapped."""
  return spec if isinstance(spec, DataSpec) else DataSpec.images(spec)


def _init(model: flax.linen.Module, optimizer: optax.GradientTransformation, seed: Array,
          spec: DataSpec, conditional: bool) -> TrainState:
  root = jax.random.PRNGKey(seed)
  if spec.kind == IMAGES:
    x = jnp.zeros((1, *spec.image_shape), jnp.float32)
  else:
    x = example_batch(spec)["tokens"]
  labels = jnp.zeros((1,), jnp.int32) if conditional else None
  params_key, sample_key = jax.random.split(jax.random.fold_in(root, rng.INIT))
  params = model.init({"params": params_key, "sample": sample_key}, x, labels)["params"]
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, opt_state=optimizer.init(params),
                    key=jax.random.fold_in(root, rng.SAMPLE), skips=zero,
                    consecutive_skips=zero, longest_skip_streak=zero, grad_norm_skips=zero)


def create_train_state(
    model: flax.linen.Module,
    optimizer: optax.GradientTransformation,
    seed: int,
    spec: DataSpec | Sequence[int],
    *,
    conditional: bool = False,
) -> TrainState:
  """Initialises parameters and optimizer from ``fold_in(PRNGKey(seed), ·)`` streams.

  ``spec``: the dataset's :class:`~vaejax.types.DataSpec` (``dataset.spec``), or the
  (H, W, C) shape of image data.
  """
  # One compile beats op-by-op dispatch of init and optimizer.init.
  return _init_program(model, optimizer, as_spec(spec), conditional, False)(
      jnp.asarray(seed, jnp.uint32))


@functools.lru_cache(maxsize=64)
def _init_program(model, optimizer, spec, conditional, stacked):
  """Jitted init of one model (or vmapped over seeds), compiled once per process."""
  def init(seed):
    return _init(model, optimizer, seed, spec, conditional)
  return jax.jit(jax.vmap(init) if stacked else init)


def init_stack(
    model: flax.linen.Module,
    optimizer: optax.GradientTransformation,
    seeds: Sequence[int],
    spec: DataSpec | Sequence[int],
    *,
    conditional: bool = False,
    vmapped: bool | None = None,
) -> StackState:
  """The initial :class:`StackState`; model *i* equals ``create_train_state(..., seeds[i])``.

  Args:
    spec: the dataset's :class:`~vaejax.types.DataSpec`, or an (H, W, C) image shape.
    vmapped: initialise all models in one program vmapped over the seeds (accelerators:
      one call fills the chip), or one model at a time with the single-model program
      (CPU, where the vmapped program takes about 3× as long to compile and is no faster
      to run); None = by backend, as the executor's ``auto`` strategy.
  """
  seeds = np.asarray(seeds, np.uint32)
  m = seeds.shape[0]
  if vmapped is None:
    vmapped = jax.default_backend() != "cpu" and m > 1
  if vmapped:
    models = _init_program(model, optimizer, as_spec(spec), conditional, True)(
        jnp.asarray(seeds))
  else:
    init = _init_program(model, optimizer, as_spec(spec), conditional, False)
    models = jax.tree.map(lambda *xs: jnp.stack(xs), *[init(jnp.uint32(s)) for s in seeds])
  return StackState(models=models, active=jnp.ones((m,), bool),
                    masked_at=jnp.full((m,), -1, jnp.int32))


def abstract_stack(model: flax.linen.Module, optimizer: optax.GradientTransformation,
                   num_models: int, spec: DataSpec | Sequence[int], *,
                   conditional: bool = False) -> StackState:
  """Shapes and dtypes of :func:`init_stack`'s result, traced but not compiled."""
  spec = as_spec(spec)

  def build():
    seeds = jnp.zeros((num_models,), jnp.uint32)
    models = jax.vmap(lambda s: _init(model, optimizer, s, spec, conditional))(seeds)
    return StackState(models=models, active=jnp.ones((num_models,), bool),
                      masked_at=jnp.full((num_models,), -1, jnp.int32))
  return jax.eval_shape(build)


def restore_target(model: flax.linen.Module, optimizer: optax.GradientTransformation,
                   num_models: int, spec: DataSpec | Sequence[int], *,
                   conditional: bool = False) -> StackState:
  """What a checkpoint restores into: :func:`abstract_stack` placed where
  :func:`init_stack` puts its arrays (the process's default device), so a restore needs no
  initialisation compiled and gives the arrays a fresh stack would have."""
  sharding = jax.device_put(np.zeros((), np.int32)).sharding  # the default placement
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                      abstract_stack(model, optimizer, num_models, spec,
                                     conditional=conditional))
