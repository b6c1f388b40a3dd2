r"""The train step of vaejax as pure functions: state, optimizer, update, evaluation.

:func:`make_train_step` builds ::

    step_fn(state, batch, settings) -> (state, metrics)

with the loss settings (:class:`vaejax.objectives.LossSettings`) an argument, so a sweep
can ``vmap`` it over stacked models and settings. Randomness is derived, never carried:
the sample key of step *t* is ``fold_in(state.key, t)`` and, for datasets sampled inside
jit (procedural dSprites), the batch key is the one ``Dataset.get_batch("train", t, ...)``
uses. A resumed run therefore repeats an uninterrupted one bit for bit.

A non-finite loss or gradient skips the update: parameters and optimizer state are kept
by a ``jnp.where`` guard, and the skip is counted in the state (the loop in
:mod:`vaejax.train` stops a run whose skips go on too long).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vaejax import objectives
from vaejax.data import base as data_base
from vaejax.evaluation import likelihood

Array = jax.Array
Batch = dict[str, Any]
StepFn = Callable[[Any, Batch | None, objectives.LossSettings], tuple[Any, dict[str, Array]]]

# Every random stream of a run is fold_in(PRNGKey(seed), STREAM).
INIT_STREAM, SAMPLE_STREAM, EVAL_DATA_STREAM, EVAL_SAMPLE_STREAM, FIGURES_STREAM = range(5)


class TrainState(flax.struct.PyTreeNode):
  """Everything a step reads and writes; a pytree, checkpointed as a whole.

  Attributes:
    step: int32 count of steps taken (skipped updates included).
    params: model parameters.
    opt_state: optax state.
    key: raw uint32 PRNG key of the run; step t samples with ``fold_in(key, t)``.
    skips: int32 total of skipped (non-finite) updates.
    consecutive_skips: int32 length of the current run of skipped updates.
    longest_skip_streak: int32 longest run of consecutive skipped updates so far.
  """

  step: Array
  params: Any
  opt_state: Any
  key: Array
  skips: Array
  consecutive_skips: Array
  longest_skip_streak: Array


def make_optimizer(
    learning_rate: float,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    warmup_steps: int = 0,
    grad_clip_norm: float = 0.0,
) -> optax.GradientTransformation:
  """Adam, optionally after global-norm clipping, with a linear learning-rate warm-up.

  The learning rate rises linearly from 0 to ``learning_rate`` over ``warmup_steps``
  updates (0 = constant). It is injected as a hyper-parameter, so the optimizer state
  holds the rate of the latest update (``opt_state.hyperparams["learning_rate"]``).
  """
  if warmup_steps > 0:
    schedule = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  else:
    schedule = optax.constant_schedule(learning_rate)

  def adam(learning_rate, b1, b2, eps, grad_clip_norm):
    clip = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm > 0 else []
    return optax.chain(*clip, optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))

  return optax.inject_hyperparams(adam, static_args=("b1", "b2", "eps", "grad_clip_norm"))(
      learning_rate=schedule, b1=b1, b2=b2, eps=eps, grad_clip_norm=grad_clip_norm
  )


def _labels(batch: Batch, conditional: bool) -> Array | None:
  return batch["label"] if conditional else None


def _all_finite(tree: Any) -> Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def current_learning_rate(opt_state: Any) -> Array:
  """The learning rate of the latest update, from an ``inject_hyperparams`` state (else NaN)."""
  hyperparams = getattr(opt_state, "hyperparams", None)
  if hyperparams is None or "learning_rate" not in hyperparams:
    return jnp.asarray(jnp.nan, jnp.float32)
  return jnp.asarray(hyperparams["learning_rate"], jnp.float32)


def create_train_state(
    model: flax.linen.Module,
    optimizer: optax.GradientTransformation,
    seed: int,
    image_shape: Sequence[int],
    *,
    conditional: bool = False,
) -> TrainState:
  """Initialises parameters and optimizer from ``fold_in(PRNGKey(seed), ·)`` streams."""
  root = jax.random.PRNGKey(seed)
  x = jnp.zeros((1, *image_shape), jnp.float32)
  labels = jnp.zeros((1,), jnp.int32) if conditional else None

  @jax.jit  # one compile beats op-by-op dispatch of init and optimizer.init
  def init(root):
    params_key, sample_key = jax.random.split(jax.random.fold_in(root, INIT_STREAM))
    params = model.init({"params": params_key, "sample": sample_key}, x, labels)["params"]
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
        step=zero, params=params, opt_state=optimizer.init(params),
        key=jax.random.fold_in(root, SAMPLE_STREAM), skips=zero, consecutive_skips=zero,
        longest_skip_streak=zero,
    )

  return init(root)


def make_train_step(
    model: flax.linen.Module,
    optimizer: optax.GradientTransformation,
    *,
    free_bits_groups: Sequence[int] | None = None,
    total_correlation: bool = False,
    conditional: bool = False,
    batch_fn: Callable[[Array], Batch] | None = None,
) -> StepFn:
  """Builds the pure train step ``(state, batch, settings) -> (state, metrics)``.

  One step: z ~ q(z|x) with key ``fold_in(state.key, state.step)``, the loss of
  :func:`vaejax.objectives.elbo_loss` at ``state.step``, its gradient, and the optimizer
  update, applied only when the loss and every gradient are finite.

  Args:
    model: a VAE module returning :class:`vaejax.types.VAEOutput`.
    optimizer: an optax transformation (:func:`make_optimizer` reports its learning rate).
    free_bits_groups: static free-bits group id per latent dimension.
    total_correlation: compute the β-TC term (O(B²d)); when False the step ignores
      ``settings.tc_beta`` and treats it as 1 (plain KL).
    conditional: pass ``batch["label"]`` to the model (conditional VAE).
    batch_fn: optional pure ``step -> batch`` that makes the batch inside the step
      (e.g. procedural dSprites); the ``batch`` argument is then ignored (pass None).

  Returns:
    The un-jitted step. ``metrics`` holds batch means of ``recon``, ``kl``, ``elbo``,
    ``kl_per_dim`` (d,) and the scalars ``loss``, ``kl_weight``, ``capacity``,
    ``kl_regularizer``, ``grad_norm`` (before clipping), ``param_norm``,
    ``learning_rate``, ``skipped`` (this step), ``skips``, ``consecutive_skips``,
    ``longest_skip_streak`` (and ``tc`` with ``total_correlation``).
  """

  def step_fn(state: TrainState, batch: Batch | None, settings: objectives.LossSettings):
    if batch_fn is not None:
      # The barrier keeps XLA from fusing (and recomputing) the sampler into each
      # consumer of the images: conv_vae, batch 64, 2-core CPU, interleaved A/B on a
      # loaded machine: 224 ms/step with it, 255 without (a fixed batch: 229).
      batch = jax.lax.optimization_barrier(batch_fn(state.step))
    if not total_correlation:
      settings = settings._replace(tc_beta=1.0)  # a Python 1.0 switches β-TC off statically
    x = batch["image"]
    labels = _labels(batch, conditional)
    sample_key = jax.random.fold_in(state.key, state.step)

    def loss_fn(params):
      outputs = model.apply({"params": params}, x, labels, rngs={"sample": sample_key})
      return objectives.elbo_loss(
          x, outputs, settings, state.step, free_bits_groups=free_bits_groups
      )

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & _all_finite(grads)

    def keep(new, old):
      return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

    skipped = (~finite).astype(jnp.int32)
    consecutive = (state.consecutive_skips + 1) * skipped
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        skips=state.skips + skipped,
        consecutive_skips=consecutive,
        longest_skip_streak=jnp.maximum(state.longest_skip_streak, consecutive),
    )
    metrics = {
        **objectives.summarize(terms),
        "loss": loss,
        "grad_norm": optax.global_norm(grads),
        "param_norm": optax.global_norm(new_state.params),
        "learning_rate": current_learning_rate(opt_state),
        "skipped": skipped,
        "skips": new_state.skips,
        "consecutive_skips": new_state.consecutive_skips,
        "longest_skip_streak": new_state.longest_skip_streak,
    }
    return new_state, metrics

  return step_fn


def make_batch_fn(dataset: Any, batch_size: int, seed: int) -> Callable[[Array], Batch] | None:
  """``step -> training batch`` as a pure jnp function, for datasets sampled inside jit.

  Uses ``dataset.jax_sampler("train")`` with the key ``Dataset.get_batch("train", step,
  ...)`` uses, ``fold_in(fold_in(key(seed), stream_id("train")), step)``, so both paths
  serve the same batch for a step. None when the dataset has no jax sampler.
  """
  sampler = dataset.jax_sampler("train")
  if sampler is None:
    return None
  train_key = jax.random.fold_in(jax.random.key(seed), data_base.stream_id("train"))
  return lambda step: sampler(jax.random.fold_in(train_key, step), batch_size)


def make_eval_step(model: flax.linen.Module, *, conditional: bool = False):
  """Builds ``(params, batch, key) -> per-example terms`` for evaluation.

  Returns ``recon``, ``kl``, ``elbo`` (B,), ``kl_per_dim`` (B, d) of one sample
  z ~ q(z|x), and the posterior ``mean`` (B, d) for active units.
  """

  def eval_fn(params, batch: Batch, key: Array) -> dict[str, Array]:
    x = batch["image"]
    outputs = model.apply({"params": params}, x, _labels(batch, conditional), rngs={"sample": key})
    terms = objectives.elbo_terms(x, outputs)
    return {**terms, "mean": outputs.mean}

  return eval_fn


def summarize_eval(chunks: Sequence[Mapping[str, Any]], num_dims: int) -> dict[str, Any]:
  """Eval metrics over all examples of ``chunks`` (outputs of the eval step), prefixed
  ``eval/``: mean ``elbo``, ``recon``, ``kl``, ``kl_per_dim``, ``bits_per_dim``
  (−ELBO in bits per data dimension) and ``active_units`` (Burda et al.)."""
  cat = {k: np.concatenate([np.asarray(c[k]) for c in chunks]) for k in chunks[0]}
  elbo = float(np.mean(cat["elbo"]))
  return {
      "eval/elbo": elbo,
      "eval/recon": float(np.mean(cat["recon"])),
      "eval/kl": float(np.mean(cat["kl"])),
      "eval/kl_per_dim": np.mean(cat["kl_per_dim"], axis=0).tolist(),
      "eval/bits_per_dim": float(objectives.bits_per_dim(-elbo, num_dims)),
      "eval/active_units": int(likelihood.active_units(cat["mean"])),
      "eval/num_examples": int(cat["elbo"].shape[0]),
  }
