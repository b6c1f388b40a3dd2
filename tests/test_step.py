"""The pure train step: its maths, the optimizer and rate schedule, NaN guard, vmap, batches.

Each check compares :func:`vaejax.training.step.make_train_step` (and its parts) with a
reference written here: optax's own Adam and linear schedule, a hand-written loss and
gradient, or the documented key derivations.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vaejax import data, models, objectives
from vaejax.config import base_config
from vaejax.data import base as data_base
from vaejax.training.optimizer import learning_rate_at, make_optimizer, optimizer_from_config
from vaejax.training.state import create_train_state
from vaejax.training.step import (
    Hyperparams, hyperparams_from_config, make_batch_fn, make_train_step, stack_hyperparams)

IMAGE_SHAPE = (6, 6, 1)
LR = 1e-2


def tiny_model():
  return models.create_model({"name": "mlp_vae", "latent_dim": 3, "hidden_sizes": (16,)},
                             IMAGE_SHAPE)


def hyper(lr=LR, warmup=0, **loss):
  """One model's Hyperparams as float32 scalars (as the loop passes them)."""
  settings = jax.tree.map(jnp.float32, objectives.LossSettings(**loss))
  return Hyperparams(settings, jnp.float32(lr), jnp.float32(warmup))


def a_batch(seed=0, size=8):
  rng = np.random.default_rng(seed)
  return {"image": (rng.random((size, *IMAGE_SHAPE)) < 0.3).astype(np.float32)}


@pytest.fixture(scope="module")
def parts():
  """A shared model, Adam direction, initial state and jitted step (one compile)."""
  model = tiny_model()
  optimizer = make_optimizer()
  state = create_train_state(model, optimizer, 0, IMAGE_SHAPE)
  return model, optimizer, state, jax.jit(make_train_step(model, optimizer))


# ----------------------------------------------------------------------------- the step


def _reference_step(model, state, batch, settings, rate):
  """The step written out: loss at the state's step, its gradient, one ``optax.adam(rate)``."""
  step = int(state.step)

  @jax.jit
  def reference(params):
    key = jax.random.fold_in(state.key, step)

    def loss_fn(params):
      out = model.apply({"params": params}, batch["image"], rngs={"sample": key})
      return objectives.elbo_loss(batch["image"], out, settings, step)

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    adam = optax.adam(rate)
    updates, _ = adam.update(grads, adam.init(params), params)
    return loss, terms, grads, optax.apply_updates(params, updates)

  return reference(state.params)


def test_step_matches_independent_computation(parts):
  model, _, state, step = parts
  batch = a_batch()
  new_state, metrics = step(state, batch, hyper(beta=2.0))
  loss, terms, grads, expected_params = _reference_step(
      model, state, batch, objectives.LossSettings(beta=2.0), LR)

  assert int(new_state.step) == 1
  chex.assert_trees_all_close(metrics["loss"], loss, rtol=1e-6)
  chex.assert_trees_all_close(metrics["kl"], jnp.mean(terms["kl"]), rtol=1e-6)
  chex.assert_trees_all_close(metrics["kl_per_dim"], jnp.mean(terms["kl_per_dim"], 0), rtol=1e-6)
  chex.assert_shape(metrics["kl_per_dim"], (3,))
  chex.assert_trees_all_close(metrics["grad_norm"], optax.global_norm(grads), rtol=1e-5)
  chex.assert_trees_all_close(new_state.params, expected_params, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(
      metrics["param_norm"], optax.global_norm(expected_params), rtol=1e-5)
  chex.assert_trees_all_close(metrics["learning_rate"], LR, rtol=1e-6)
  assert int(metrics["skipped"]) == 0 and int(metrics["skips"]) == 0


def test_step_applies_the_warmed_up_rate(parts):
  """At step 2 of a 4-step warm-up the update is ``optax.adam(η/2)``'s."""
  model, _, state, step = parts
  at_two = state.replace(step=jnp.int32(2))
  batch = a_batch(1)
  new_state, metrics = step(at_two, batch, hyper(warmup=4))
  *_, expected_params = _reference_step(model, at_two, batch, objectives.LossSettings(), LR / 2)
  chex.assert_trees_all_close(metrics["learning_rate"], LR / 2, rtol=1e-6)
  chex.assert_trees_all_close(new_state.params, expected_params, rtol=1e-5, atol=1e-7)
  # Step 0 of a warm-up has rate 0: the parameters stay, Adam's moments still move.
  zero_state, zero_metrics = step(state, batch, hyper(warmup=4))
  assert float(zero_metrics["learning_rate"]) == 0.0
  chex.assert_trees_all_equal(zero_state.params, state.params)
  mu = optax.tree_utils.tree_get(zero_state.opt_state, "mu")
  assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(mu))


# ----------------------------------------------------------------------------- optimizer


@pytest.mark.parametrize("warmup", [0, 1, 4, 7])
def test_learning_rate_at_is_optax_linear_warmup(warmup):
  steps = np.arange(12)
  if warmup:
    schedule = optax.linear_schedule(0.0, LR, warmup)
  else:
    schedule = optax.constant_schedule(LR)  # optax's linear_schedule(·, ·, 0) stays at 0
  expected = np.asarray([schedule(int(t)) for t in steps], np.float32)
  got = np.asarray([learning_rate_at(int(t), LR, warmup) for t in steps])
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)
  # Traced per-model rates and lengths: vmapped over models, the same numbers.
  vmapped = jax.jit(jax.vmap(learning_rate_at, in_axes=(None, 0, 0)))
  for t in (0, 2, 9):
    rates = vmapped(jnp.int32(t), jnp.asarray([LR, 3e-3]), jnp.asarray([warmup, 0.0]))
    np.testing.assert_allclose(rates, [schedule(t), 3e-3], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_optimizer_is_adams_direction_with_clipping(clip):
  """−η × direction equals ``optax.adam(η)`` (after the same clipping) for a constant η."""
  direction = make_optimizer(grad_clip_norm=clip)
  clip_chain = [optax.clip_by_global_norm(clip)] if clip else []
  adam = optax.chain(*clip_chain, optax.adam(LR))
  params = {"w": jnp.zeros(3)}
  rng = np.random.default_rng(0)
  d_state, a_state = direction.init(params), adam.init(params)
  for t in range(6):
    grads = {"w": jnp.asarray(rng.normal(size=3).astype(np.float32) * 5.0)}
    d, d_state = direction.update(grads, d_state, params)
    a, a_state = adam.update(grads, a_state, params)
    chex.assert_trees_all_close(jax.tree.map(lambda u: -LR * u, d), a, rtol=1e-6, atol=1e-9)
    if t == 0:  # the first Adam direction is sign(g) (|m̂| = √v̂), clipped or not
      np.testing.assert_allclose(d["w"], np.sign(grads["w"]), rtol=1e-5)
  # The learning rate is not part of it: no hyper-parameter state to inject.
  assert optax.tree_utils.tree_get(d_state, "learning_rate") is None
  # Adam's first moment sees the clipped gradient: mu = (1 − b1^t) g_clipped.
  grads = {"w": jnp.array([3.0, 4.0, 0.0])}  # norm 5
  state = direction.init(params)
  for _ in range(6):
    _, state = direction.update(grads, state, params)
  mu = optax.tree_utils.tree_get(state, "mu")["w"]
  scale = 0.5 / 5.0 if clip else 1.0
  chex.assert_trees_all_close(mu, (1 - 0.9**6) * scale * grads["w"], rtol=1e-5)


def test_optimizer_and_hyperparams_from_config():
  config = base_config()
  config.learning_rate, config.optimizer.warmup_steps = 3e-4, 5
  config.optimizer.b1, config.optimizer.grad_clip_norm = 0.5, 1.0
  config.loss.beta, config.loss.free_bits = 4.0, 0.25
  h = hyperparams_from_config(config)
  assert (h.learning_rate, h.lr_warmup_steps) == (3e-4, 5)
  assert h.loss == objectives.LossSettings(beta=4.0, free_bits=0.25)
  stacked = stack_hyperparams([h, h._replace(learning_rate=1e-3)])
  for leaf in jax.tree.leaves(stacked):
    assert leaf.shape == (2,) and leaf.dtype == np.float32
  np.testing.assert_allclose(stacked.learning_rate, [3e-4, 1e-3], rtol=1e-7)
  # b1 = 0.5 and clipping at 1 reach the direction: mu after one clipped gradient.
  opt = optimizer_from_config(config)
  params = {"w": jnp.zeros(2)}
  _, state = opt.update({"w": jnp.array([3.0, 4.0])}, opt.init(params), params)
  np.testing.assert_allclose(optax.tree_utils.tree_get(state, "mu")["w"], [0.3, 0.4], rtol=1e-6)
  config.loss.beta = -1.0
  with pytest.raises(ValueError, match="beta"):
    hyperparams_from_config(config)


# ----------------------------------------------------------------------------- randomness, NaNs


def test_sample_key_depends_on_step_only(parts):
  """Two states at the same step with the same params give the same loss (no carried key)."""
  _, _, state, step = parts
  _, m1 = step(state.replace(step=jnp.int32(7)), a_batch(), hyper())
  _, m2 = step(state.replace(step=jnp.int32(7)), a_batch(), hyper())
  _, m3 = step(state.replace(step=jnp.int32(8)), a_batch(), hyper())
  assert float(m1["loss"]) == float(m2["loss"])
  assert float(m1["loss"]) != float(m3["loss"])


def test_nonfinite_update_is_skipped_and_counted(parts):
  _, _, state, step = parts
  bad = a_batch()
  bad["image"][0, 0, 0, 0] = np.nan
  s1, m1 = step(state, bad, hyper())
  s2, m2 = step(s1, bad, hyper())
  chex.assert_trees_all_equal(s2.params, state.params)
  chex.assert_trees_all_equal(s2.opt_state, state.opt_state)
  assert not np.isfinite(float(m1["loss"]))
  assert [int(m2[k]) for k in ("skipped", "skips", "consecutive_skips")] == [1, 2, 2]
  s3, m3 = step(s2, a_batch(), hyper())
  assert [int(m3[k]) for k in ("skipped", "skips", "consecutive_skips", "longest_skip_streak")
          ] == [0, 2, 0, 2]
  assert int(s3.step) == 3
  assert np.isfinite(float(m3["loss"]))
  changed = [not np.array_equal(a, b)
             for a, b in zip(jax.tree.leaves(s3.params), jax.tree.leaves(state.params))]
  assert any(changed)


def test_updates_with_a_gradient_norm_above_the_threshold_are_skipped_and_counted(parts):
  """VDVAE's skipping: a threshold below the gradient norm keeps the parameters and counts
  the skip apart from non-finite ones; one above it changes nothing (the same numbers as
  no threshold at all)."""
  model, optimizer, state, plain = parts
  _, m0 = plain(state, a_batch(), hyper())
  norm = float(m0["grad_norm"])
  low = jax.jit(make_train_step(model, optimizer, skip_threshold=norm / 2))
  s1, m1 = low(state, a_batch(), hyper())
  chex.assert_trees_all_equal(s1.params, state.params)
  assert [int(m1[k]) for k in ("skipped", "skips", "grad_norm_skips", "consecutive_skips")
          ] == [1, 1, 1, 1]
  assert float(m1["loss"]) == float(m0["loss"])  # the loss is still measured and logged
  high = jax.jit(make_train_step(model, optimizer, skip_threshold=norm * 2))
  s2, m2 = high(state, a_batch(), hyper())
  s0, _ = plain(state, a_batch(), hyper())
  chex.assert_trees_all_equal(s2.params, s0.params)
  assert int(m2["grad_norm_skips"]) == 0 and int(m2["skipped"]) == 0


def test_step_vmaps_over_models_and_hyperparams(parts):
  model, optimizer, s0, single_step = parts
  s1 = create_train_state(model, optimizer, 1, IMAGE_SHAPE)
  s0, s1 = s0.replace(step=jnp.int32(1)), s1.replace(step=jnp.int32(1))
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), s0, s1)
  per_model = [hyper(), hyper(lr=3e-3, warmup=2, beta=4.0, free_bits=0.5)]
  hypers = jax.tree.map(lambda a, b: jnp.stack([a, b]), *per_model)
  step = make_train_step(model, optimizer)
  batch = a_batch()
  out, metrics = jax.jit(jax.vmap(step, in_axes=(0, None, 0)))(stacked, batch, hypers)
  np.testing.assert_allclose(metrics["learning_rate"], [LR, 3e-3 / 2], rtol=1e-6)
  for i, (state, h) in enumerate(zip([s0, s1], per_model)):
    single, m = single_step(state, batch, h)
    chex.assert_trees_all_close(metrics["loss"][i], m["loss"], rtol=1e-5)
    chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], out.params), single.params,
                                rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- batches, β-TC


def test_procedural_batch_fn_matches_get_batch():
  dataset = data.load({"name": "dsprites_procedural"})
  batch_fn = jax.jit(make_batch_fn(dataset, batch_size=4))
  in_jit = batch_fn(jnp.uint32(3), jnp.int32(5))
  host = dataset.get_batch("train", 5, 4, seed=3)
  np.testing.assert_array_equal(np.asarray(in_jit["image"]), host["image"])
  np.testing.assert_array_equal(np.asarray(in_jit["factors"]), host["factors"])
  other_step = batch_fn(jnp.uint32(3), jnp.int32(6))
  other_seed = batch_fn(jnp.uint32(4), jnp.int32(5))
  assert not np.array_equal(np.asarray(other_step["image"]), host["image"])
  assert not np.array_equal(np.asarray(other_seed["image"]), host["image"])
  # The documented key: fold_in(fold_in(key(seed), stream_id("train")), step).
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), data_base.stream_id("train")), 5)
  by_key = dataset.jax_sampler("train")(key, 4)
  np.testing.assert_array_equal(np.asarray(by_key["image"]), host["image"])
  arrays = data.ArrayDataset("tiny", {"train": data.SplitArrays(np.zeros((8, *IMAGE_SHAPE)))},
                             image_shape=IMAGE_SHAPE)
  assert make_batch_fn(arrays, 4) is None


def test_total_correlation_switch(parts):
  model, optimizer, state, step = parts
  h = hyper(tc_beta=6.0)
  _, with_tc = jax.jit(make_train_step(model, optimizer, total_correlation=True))(
      state, a_batch(), h)
  _, without = step(state, a_batch(), h)  # total_correlation=False ignores tc_beta
  _, plain = step(state, a_batch(), hyper())
  assert "tc" in with_tc and "tc" not in without
  assert float(without["loss"]) == float(plain["loss"])
  chex.assert_trees_all_close(
      with_tc["loss"], without["loss"] + 5.0 * jnp.mean(with_tc["tc"]), rtol=1e-5, atol=1e-4)
