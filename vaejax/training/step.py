r"""The train step as pure functions: per-model hyper-parameters, the update, masking.

:func:`make_train_step` builds ::

    step_fn(state, batch, hyper) -> (state, metrics)

for one model; :class:`Hyperparams` (loss settings, learning rate, warm-up length) is an
argument of traced numbers, so a stack of models can ``vmap`` the same step over its
models' states and hyper-parameters. Randomness is derived, never carried: the sample key
of step *t* is ``fold_in(state.key, t)``; datasets sampled inside the program (procedural
dSprites) draw the batch of step *t* with the key ``Dataset.get_batch("train", t, ...)``
uses (:func:`make_batch_fn`). A resumed run therefore repeats an uninterrupted one bit for
bit.

Token-sequence models (:mod:`vaejax.models.sequence`) train on ``batch["tokens"]`` and
get a ``"dropout"`` RNG next to ``"sample"``, ``fold_in(sample key, WORD_DROPOUT)``, so
word dropout (``model.word_keep`` < 1) runs in training only; image models are called
exactly as before (their batch's ``"image"``, the ``"sample"`` RNG alone).

A non-finite loss or gradient skips the update: parameters and optimizer state are kept
by a ``jnp.where`` guard, and the skip is counted in the state. :func:`make_masked_step`
freezes a model whose skips run on for too long (it *diverged*).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vaejax import distributions, objectives
from vaejax.data import base as data_base
from vaejax.models import codec
from vaejax.training.optimizer import learning_rate_at
from vaejax.training.state import StackState

Array = jax.Array
ArrayLike = Any
Batch = dict[str, Any]


class Hyperparams(NamedTuple):
  """The numbers a model of a stack may have of its own (traced by the step).

  Attributes:
    loss: the loss settings (:class:`vaejax.objectives.LossSettings`).
    learning_rate: Adam's rate η.
    lr_warmup_steps: the rate rises linearly from 0 to η over this many steps (0 = off).
  """

  loss: objectives.LossSettings
  learning_rate: ArrayLike
  lr_warmup_steps: ArrayLike


StepFn = Callable[[Any, Batch | None, Hyperparams], tuple[Any, dict[str, Array]]]
WORD_DROPOUT = 1  # folded into a sample key: the key of a token model's word dropout


def training_rngs(model: flax.linen.Module, sample_key: Array) -> dict[str, Array]:
  """The RNGs of a training forward pass drawing with ``sample_key``: ``"sample"``, and for
  token-sequence models ``"dropout"`` (word dropout) folded from it."""
  if codec.data_key(model) == "tokens":
    return {"sample": sample_key, "dropout": jax.random.fold_in(sample_key, WORD_DROPOUT)}
  return {"sample": sample_key}


class Importance(NamedTuple):
  """Static importance-weighted training settings (they set array shapes).

  Attributes:
    num_samples: K importance samples per example; 1 = the ELBO (closed-form KL).
    estimator: ``"plain"`` or ``"dreg"`` (:func:`vaejax.objectives.iwae_loss`).
    num_groups: M (MIWAE: the mean of M IWAE-K bounds).
  """

  num_samples: int = 1
  estimator: str = "plain"
  num_groups: int = 1


def importance_from_config(config: Any) -> Importance:
  """The ``loss`` group's :class:`Importance` settings."""
  return Importance(int(config.loss.num_importance_samples), str(config.loss.estimator),
                    int(config.loss.num_groups))


def loss_settings_from_config(config: Any) -> objectives.LossSettings:
  """The ``loss`` group's :class:`~vaejax.objectives.LossSettings` (validated)."""
  settings = objectives.LossSettings(
      **{f: config.loss[f] for f in objectives.LossSettings._fields})
  objectives.validate_settings(settings)
  return settings


def hyperparams_from_config(config: Any) -> Hyperparams:
  """A model's :class:`Hyperparams` from its training config (Python numbers)."""
  return Hyperparams(loss_settings_from_config(config), float(config.learning_rate),
                     int(config.optimizer.warmup_steps))


def stack_hyperparams(hypers: Sequence[Hyperparams]) -> Hyperparams:
  """M models' hyper-parameters as float32 arrays with a leading model axis (M,)."""
  return jax.tree.map(lambda *xs: np.asarray(xs, np.float32), *hypers)


def _all_finite(tree: Any) -> Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_train_step(
    model: flax.linen.Module,
    optimizer: optax.GradientTransformation,
    *,
    free_bits_groups: Sequence[int] | None = None,
    total_correlation: bool = False,
    conditional: bool = False,
    importance: Importance = Importance(),  # noqa: B008  (an immutable NamedTuple)
    skip_threshold: float = 0.0,
) -> StepFn:
  """Builds one model's pure train step ``(state, batch, hyper) -> (state, metrics)``.

  One step: z ~ q(z|x) with key ``fold_in(state.key, state.step)``, the loss of
  :func:`vaejax.objectives.elbo_loss` at ``state.step``, its gradient, the optimizer's
  direction scaled by ``-learning_rate_at(step, η, warm-up)``, applied only when the
  loss and every gradient are finite. Equal arguments return the same step function
  (models compare by value), so the programs of a repeated run are compiled once per
  process.

  Args:
    model: a VAE module returning :class:`vaejax.types.VAEOutput`.
    optimizer: an update direction (:func:`vaejax.training.optimizer.make_optimizer`).
    free_bits_groups: static free-bits group id per latent dimension.
    total_correlation: compute the β-TC term (O(B²d)); when False the step ignores
      ``hyper.loss.tc_beta`` and treats it as 1 (plain KL).
    conditional: pass ``batch["label"]`` to the model (conditional VAE).
      The model's data (``batch["image"]`` or, for token-sequence models,
      ``batch["tokens"]``) is :func:`vaejax.models.codec.data_key`'s.
    importance: K > 1 (or M > 1) trains on the importance-weighted bound of
      :func:`vaejax.objectives.iwae_loss` instead of the ELBO (its per-example ``iwae``
      bound and ``ess`` are logged too).
    skip_threshold: > 0 also skips an update whose (finite) gradient norm, before
      clipping, exceeds it (VDVAE's ``skip_threshold``), counted in ``grad_norm_skips``
      and like a non-finite skip (a model that skips on and on is masked as diverged).

  Returns:
    The un-jitted step. ``metrics`` holds batch means of ``recon``, ``kl``, ``elbo``,
    ``kl_per_dim`` (d,) and the scalars ``loss``, ``kl_weight``, ``capacity``,
    ``kl_regularizer``, ``grad_norm`` (before clipping), ``param_norm``,
    ``learning_rate``, ``skipped`` (this step), ``skips``, ``consecutive_skips``,
    ``longest_skip_streak`` (and ``tc`` with ``total_correlation``); the batch's
    per-example KL: ``kl_min``, ``kl_median``, ``kl_max``, ``kl_collapsed_fraction``
    (examples below :data:`COLLAPSED_KL` nats) and ``hist/kl_per_sample`` (B,) (a
    histogram, not logged to JSONL); with a posterior variance floor
    (``model.posterior_min_variance`` > 0) ``posterior_at_floor``, the fraction of
    posterior dimensions at it; for hierarchical models (``model.latent_groups``)
    ``kl_per_level``.
  """
  groups = None if free_bits_groups is None else tuple(int(g) for g in free_bits_groups)
  return _make_train_step(model, optimizer, groups, bool(total_correlation), bool(conditional),
                          Importance(*importance), float(skip_threshold))


@functools.lru_cache(maxsize=64)
def _make_train_step(
    model: flax.linen.Module,
    optimizer: optax.GradientTransformation,
    free_bits_groups: tuple[int, ...] | None,
    total_correlation: bool,
    conditional: bool,
    importance: Importance,
    skip_threshold: float = 0.0,
) -> StepFn:
  """:func:`make_train_step` with hashable arguments (cached)."""
  floor = float(getattr(model, "posterior_min_variance", 0.0) or 0.0)
  levels = getattr(model, "latent_groups", None)
  data_key = codec.data_key(model)

  def step_fn(state, batch: Batch, hyper: Hyperparams):
    settings = hyper.loss
    if not total_correlation:
      settings = settings._replace(tc_beta=1.0)  # a Python 1.0 switches β-TC off statically
    x = batch[data_key]
    labels = batch["label"] if conditional else None
    loss_fn = _loss_fn(model, x, labels, settings, state.step,
                       jax.random.fold_in(state.key, state.step), importance,
                       free_bits_groups, floor)
    (loss, (terms, log_var)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, rate, grad_norm, skipped = _guarded_update(state, grads, loss, hyper, optimizer,
                                                          skip_threshold)
    metrics = {
        **objectives.summarize(terms),
        "loss": loss,
        "grad_norm": grad_norm,
        "param_norm": optax.global_norm(new_state.params),
        "learning_rate": rate,
        "skipped": skipped,
        "skips": new_state.skips,
        "consecutive_skips": new_state.consecutive_skips,
        "longest_skip_streak": new_state.longest_skip_streak,
        "grad_norm_skips": new_state.grad_norm_skips,
        **kl_monitor(terms["kl"]),
    }
    if floor > 0:
      metrics["posterior_at_floor"] = distributions.fraction_at_floor(log_var, floor)
    if levels is not None:  # hierarchical models: the batch-mean KL of every level
      metrics["kl_per_level"] = jax.ops.segment_sum(
          jnp.mean(terms["kl_per_dim"], axis=0), jnp.asarray(levels),
          num_segments=int(max(levels)) + 1)
    return new_state, metrics

  return step_fn


def _loss_fn(model: flax.linen.Module, x: Array, labels: Array | None,
             settings: objectives.LossSettings, step: Array, sample_key: Array,
             importance: Importance, free_bits_groups: tuple[int, ...] | None,
             floor: float) -> Callable[[Any], tuple[Array, tuple[dict[str, Array], Any]]]:
  """``params -> (loss, (terms, log_var))`` of one step: the ELBO of one sample z ~ q(z|x),
  or the importance-weighted bound of K; ``log_var`` is the posterior's (for the variance
  floor's monitor; None when not needed)."""

  def loss_fn(params):
    def sample_outputs(key):
      return model.apply({"params": params}, x, labels, rngs=training_rngs(model, key))

    if importance.num_samples == 1 and importance.num_groups == 1:
      outputs = sample_outputs(sample_key)
      loss, terms = objectives.elbo_loss(x, outputs, settings, step,
                                         free_bits_groups=free_bits_groups)
      return loss, (terms, outputs.log_var)
    def decode(z):
      return model.apply({"params": params}, z, labels, method="decode")

    loss, terms = objectives.iwae_loss(
        x, sample_outputs, sample_key, importance.num_samples,
        estimator=importance.estimator, num_groups=importance.num_groups,
        settings=settings, step=step,
        decode=decode if importance.estimator == "dreg" else None,
        free_bits_groups=free_bits_groups)
    log_var = None
    if floor > 0:
      _, log_var = model.apply({"params": params}, x, labels, method="encode")
    return loss, (terms, log_var)

  return loss_fn


def _guarded_update(state: Any, grads: Any, loss: Array, hyper: Hyperparams,
                    optimizer: optax.GradientTransformation, skip_threshold: float
                    ) -> tuple[Any, Array, Array, Array]:
  """The state after one update, applied only where the loss and every gradient are finite
  (and, with ``skip_threshold`` > 0, the gradient norm at most it); skips are counted.

  Returns ``(new state, learning rate, gradient norm before clipping, skipped)``.
  """
  direction, opt_state = optimizer.update(grads, state.opt_state, state.params)
  rate = learning_rate_at(state.step, hyper.learning_rate, hyper.lr_warmup_steps)
  updates = jax.tree.map(lambda u: (-rate).astype(u.dtype) * u, direction)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & _all_finite(grads)
  grad_norm = optax.global_norm(grads)
  too_large = (finite & (grad_norm > skip_threshold) if skip_threshold > 0
               else jnp.zeros((), bool))
  accept = finite & ~too_large

  def keep(new, old):
    return jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)

  skipped = (~accept).astype(jnp.int32)
  consecutive = (state.consecutive_skips + 1) * skipped
  new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      skips=state.skips + skipped,
      consecutive_skips=consecutive,
      longest_skip_streak=jnp.maximum(state.longest_skip_streak, consecutive),
      grad_norm_skips=state.grad_norm_skips + jnp.asarray(too_large, jnp.int32),
  )
  return new_state, rate, grad_norm, skipped


COLLAPSED_KL = 0.01  # nats: an example whose KL is below this carries (almost) no information


def kl_monitor(kl: Array) -> dict[str, Array]:
  """Per-example KL (B,) → its min, median, max, the fraction below :data:`COLLAPSED_KL`
  and the vector itself as ``hist/kl_per_sample`` (for histograms)."""
  return {"kl_min": jnp.min(kl), "kl_median": jnp.median(kl), "kl_max": jnp.max(kl),
          "kl_collapsed_fraction": jnp.mean((kl < COLLAPSED_KL).astype(jnp.float32)),
          "hist/kl_per_sample": kl}


def make_masked_step(step_fn: StepFn, max_consecutive_skips: int, *, use_cond: bool = False):
  """Wraps a train step so that a diverged model is masked and frozen.

  Returns ``(state, batch, hyper) -> (state, metrics)`` over one model's
  :class:`~vaejax.training.state.StackState` (unstacked leaves). While active, the model
  takes ``step_fn``'s step; once its run of consecutive skipped updates exceeds
  ``max_consecutive_skips`` it becomes inactive: its state is kept from then on and its
  metrics are NaN (0 for integer counters).

  Args:
    step_fn: the train step.
    max_consecutive_skips: the N of "more than N consecutive non-finite steps".
    use_cond: skip the step of an inactive model with ``lax.cond`` (for an unbatched
      model: saves its compute and a select over the whole state); else compute it and
      select with ``jnp.where`` (what ``vmap`` turns a cond into anyway).
  """

  def masked_step(state: StackState, batch: Batch, hyper: Hyperparams):
    def run():
      return step_fn(state.models, batch, hyper)

    def frozen():
      _, shapes = jax.eval_shape(run)
      return state.models, jax.tree.map(_blank, shapes)

    if use_cond:
      models, metrics = jax.lax.cond(state.active, run, frozen)
    else:
      new, metrics = run()
      models = jax.tree.map(lambda a, b: jnp.where(state.active, a, b), new, state.models)
      metrics = jax.tree.map(lambda m, b: jnp.where(state.active, m, b), metrics, frozen()[1])
    diverged = state.active & (models.consecutive_skips > max_consecutive_skips)
    masked_at = jnp.where(diverged, models.step, state.masked_at)
    return StackState(models, state.active & ~diverged, masked_at), metrics

  return masked_step


def _blank(shape: jax.ShapeDtypeStruct) -> Array:
  fill = jnp.nan if jnp.issubdtype(shape.dtype, jnp.inexact) else 0
  return jnp.full(shape.shape, fill, shape.dtype)


@functools.lru_cache(maxsize=64)
def make_batch_fn(dataset: Any, batch_size: int) -> Callable[[Array, Array], Batch] | None:
  """``(seed, step) -> training batch`` as a pure jnp function, for datasets sampled in jit.

  The same dataset object and batch size give the same function (so programs that sample
  in-program are compiled once per process).

  Uses ``dataset.jax_sampler("train")`` with the key ``Dataset.get_batch("train", step,
  ...)`` uses, ``fold_in(fold_in(key(seed), stream_id("train")), step)``, so both paths
  serve the same batch for a step. None when the dataset has no jax sampler.
  """
  sampler = dataset.jax_sampler("train")
  if sampler is None:
    return None
  train_stream = data_base.stream_id("train")

  def batch_fn(seed, step):
    key = jax.random.fold_in(jax.random.key(seed), train_stream)
    return sampler(jax.random.fold_in(key, step), batch_size)

  return batch_fn
