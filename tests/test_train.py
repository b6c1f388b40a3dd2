"""The train step (pure, vmappable, NaN-guarded) and the training loop on tiny data."""

import json
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vaejax import config_utils, data, logging_utils, models, objectives, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for experiments.configs
from experiments.configs import common

IMAGE_SHAPE = (6, 6, 1)


def tiny_dataset(num_classes=None, nan_from_step=None):
  """A 48-example binary dataset (train and test), optionally labelled or NaN-poisoned."""
  rng = np.random.default_rng(0)

  def split():
    images = (rng.random((48, *IMAGE_SHAPE)) < 0.3).astype(np.float32)
    labels = rng.integers(0, num_classes, 48) if num_classes else None
    return data.SplitArrays(images, labels=labels, binary=True)

  class Tiny(data.ArrayDataset):

    def _get_batch(self, split, step, batch_size, seed):
      batch = super()._get_batch(split, step, batch_size, seed)
      if nan_from_step is not None and split == "train" and step >= nan_from_step:
        batch["image"][0, 0, 0, 0] = np.nan
      return batch

  return Tiny("tiny", {"train": split(), "test": split()}, image_shape=IMAGE_SHAPE,
              num_classes=num_classes)


def tiny_config(**top_level):
  config = common.get_base_config()
  config.model.name = "mlp_vae"
  config.model.hidden_sizes = (16,)
  config.model.latent_dim = 3
  config.data.name = "mnist_npz"  # nominal: the tests pass the dataset in
  config.num_steps, config.batch_size = 6, 8
  config.log_every, config.checkpoint_every, config.eval_every = 2, 3, 3
  config.eval.num_batches, config.eval.batch_size = 1, 16
  config.figures.enabled = False
  for key, value in top_level.items():
    config[key] = value
  return config


def make_parts(seed=0, latent_dim=3, learning_rate=1e-2, **opt_kwargs):
  model = models.create_model(
      {"name": "mlp_vae", "latent_dim": latent_dim, "hidden_sizes": (16,)}, IMAGE_SHAPE)
  optimizer = train.make_optimizer(learning_rate, **opt_kwargs)
  state = train.create_train_state(model, optimizer, seed, IMAGE_SHAPE)
  return model, optimizer, state


def a_batch(seed=0, size=8):
  rng = np.random.default_rng(seed)
  return {"image": (rng.random((size, *IMAGE_SHAPE)) < 0.3).astype(np.float32)}


# ----------------------------------------------------------------------------- the step


@pytest.fixture(scope="module")
def parts():
  """A shared model, optimizer (Adam 1e-2), initial state and jitted step (one compile)."""
  model, optimizer, state = make_parts()
  return model, optimizer, state, jax.jit(train.make_train_step(model, optimizer))


def test_step_matches_independent_computation(parts):
  model, _, state, step = parts
  settings = objectives.LossSettings(beta=2.0)
  batch = a_batch()
  new_state, metrics = step(state, batch, settings)

  @jax.jit  # the reference, written out by hand: loss at step 0, its gradient, one Adam step
  def reference(params):
    key = jax.random.fold_in(state.key, 0)

    def loss_fn(params):
      out = model.apply({"params": params}, batch["image"], rngs={"sample": key})
      return objectives.elbo_loss(batch["image"], out, settings, 0)

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    adam = optax.adam(1e-2)
    updates, _ = adam.update(grads, adam.init(params), params)
    return loss, terms, grads, optax.apply_updates(params, updates)

  loss, terms, grads, expected_params = reference(state.params)

  assert int(new_state.step) == 1
  chex.assert_trees_all_close(metrics["loss"], loss, rtol=1e-6)
  chex.assert_trees_all_close(metrics["kl"], jnp.mean(terms["kl"]), rtol=1e-6)
  chex.assert_trees_all_close(metrics["kl_per_dim"], jnp.mean(terms["kl_per_dim"], 0), rtol=1e-6)
  chex.assert_shape(metrics["kl_per_dim"], (3,))
  chex.assert_trees_all_close(metrics["grad_norm"], optax.global_norm(grads), rtol=1e-5)
  chex.assert_trees_all_close(new_state.params, expected_params, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(
      metrics["param_norm"], optax.global_norm(expected_params), rtol=1e-5)
  chex.assert_trees_all_close(metrics["learning_rate"], 1e-2, rtol=1e-6)
  assert int(metrics["skipped"]) == 0 and int(metrics["skips"]) == 0


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_optimizer_learning_rate_warmup_and_clipping(clip):
  optimizer = train.make_optimizer(1e-2, warmup_steps=4, grad_clip_norm=clip)
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.array([3.0, 4.0, 0.0])}  # norm 5
  opt_state = optimizer.init(params)
  rates = []
  for _ in range(6):
    _, opt_state = optimizer.update(grads, opt_state, params)
    rates.append(float(train.current_learning_rate(opt_state)))
  chex.assert_trees_all_close(np.array(rates), 1e-2 * np.array([0, .25, .5, .75, 1, 1]),
                              atol=1e-9)
  # Adam's first moment sees the clipped gradient: mu = (1 - b1^t) * g_clipped.
  mu = optax.tree_utils.tree_get(opt_state, "mu")["w"]
  scale = 0.5 / 5.0 if clip else 1.0
  chex.assert_trees_all_close(mu, (1 - 0.9**6) * scale * grads["w"], rtol=1e-5)


def test_sample_key_depends_on_step_only(parts):
  """Two states at the same step with the same params give the same loss (no carried key)."""
  _, _, state, step = parts
  settings = objectives.LossSettings()
  _, m1 = step(state.replace(step=jnp.int32(7)), a_batch(), settings)
  _, m2 = step(state.replace(step=jnp.int32(7)), a_batch(), settings)
  _, m3 = step(state.replace(step=jnp.int32(8)), a_batch(), settings)
  assert float(m1["loss"]) == float(m2["loss"])
  assert float(m1["loss"]) != float(m3["loss"])


def test_nonfinite_update_is_skipped_and_counted(parts):
  _, _, state, step = parts
  settings = objectives.LossSettings()
  bad = a_batch()
  bad["image"][0, 0, 0, 0] = np.nan
  s1, m1 = step(state, bad, settings)
  s2, m2 = step(s1, bad, settings)
  chex.assert_trees_all_equal(s2.params, state.params)
  chex.assert_trees_all_equal(s2.opt_state, state.opt_state)
  assert not np.isfinite(float(m1["loss"]))
  assert [int(m2[k]) for k in ("skipped", "skips", "consecutive_skips")] == [1, 2, 2]
  s3, m3 = step(s2, a_batch(), settings)
  assert [int(m3[k]) for k in ("skipped", "skips", "consecutive_skips", "longest_skip_streak")
          ] == [0, 2, 0, 2]
  assert int(s3.step) == 3
  assert np.isfinite(float(m3["loss"]))
  changed = [not np.array_equal(a, b)
             for a, b in zip(jax.tree.leaves(s3.params), jax.tree.leaves(state.params))]
  assert any(changed)


def test_step_vmaps_over_models_and_settings(parts):
  model, optimizer, s0, single_step = parts
  s1 = train.create_train_state(model, optimizer, 1, IMAGE_SHAPE)
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), s0, s1)
  settings = jax.tree.map(lambda a, b: jnp.array([a, b]), objectives.LossSettings(),
                          objectives.LossSettings(beta=4.0, free_bits=0.5))
  step = train.make_train_step(model, optimizer)
  batch = a_batch()
  out, metrics = jax.jit(jax.vmap(step, in_axes=(0, None, 0)))(stacked, batch, settings)
  for i, (state, beta, fb) in enumerate([(s0, 1.0, 0.0), (s1, 4.0, 0.5)]):
    single, m = single_step(state, batch, objectives.LossSettings(beta=beta, free_bits=fb))
    chex.assert_trees_all_close(metrics["loss"][i], m["loss"], rtol=1e-5)
    chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], out.params), single.params,
                                rtol=1e-4, atol=1e-6)


def test_procedural_batch_fn_matches_get_batch():
  dataset = data.load({"name": "dsprites_procedural"})
  batch_fn = train.make_batch_fn(dataset, batch_size=4, seed=3)
  in_jit = jax.jit(batch_fn)(jnp.int32(5))
  host = dataset.get_batch("train", 5, 4, seed=3)
  np.testing.assert_array_equal(np.asarray(in_jit["image"]), host["image"])
  other = jax.jit(batch_fn)(jnp.int32(6))
  assert not np.array_equal(np.asarray(other["image"]), host["image"])
  assert train.make_batch_fn(tiny_dataset(), 4, 0) is None


def test_total_correlation_switch(parts):
  model, optimizer, state, step = parts
  settings = objectives.LossSettings(tc_beta=6.0)
  _, with_tc = jax.jit(train.make_train_step(model, optimizer, total_correlation=True))(
      state, a_batch(), settings)
  _, without = step(state, a_batch(), settings)
  assert "tc" in with_tc and "tc" not in without
  chex.assert_trees_all_close(
      with_tc["loss"], without["loss"] + 5.0 * with_tc["tc"], rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- the loop


def test_run_learns_and_writes_logs_checkpoints_config_and_figures(tmp_path):
  config = tiny_config(num_steps=30, log_every=10, checkpoint_every=15, eval_every=5,
                       learning_rate=1e-2)
  config.figures.enabled = True
  final = train.train_and_evaluate(config, tmp_path, dataset=tiny_dataset(), progress=False)
  rows = logging_utils.read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]  # a row per log or eval step
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert all(0 <= r["eval/active_units"] <= 3 for r in rows)
  assert len(rows[0]["kl_per_dim"]) == 3 and len(rows[0]["eval/kl_per_dim"]) == 3
  # It learns: the held-out ELBO of these Bernoulli(0.3) pixels rises from about
  # -36 log 2 = -25 nats (an untrained decoder) towards -36 H(0.3) = -22 nats.
  assert rows[0]["eval/elbo"] < -24.5 and rows[-1]["eval/elbo"] > -23.0
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["15", "30"]
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  figures = sorted((tmp_path / "figures").glob("*.png"))
  assert len(figures) == 5
  assert int(final.step) == 30

  # Re-running a finished run restores it, trains no further and rewrites no rows.
  config.figures.enabled = False  # a key one may change when continuing
  again = train.train_and_evaluate(config, tmp_path, dataset=tiny_dataset(), progress=False)
  chex.assert_trees_all_equal(again.params, final.params)
  assert logging_utils.read_jsonl(tmp_path / "metrics.jsonl") == rows
  saved = json.loads((tmp_path / "config.json").read_text())  # the latest run's config
  assert saved == config_utils.to_dict(config) and saved["model"]["hidden_sizes"] == [16]

  # Figures on demand, from the newest checkpoint.
  for path in figures:
    path.unlink()
  written = train.write_figures_from_checkpoint(config, tmp_path, dataset=tiny_dataset())
  assert sorted(written) == figures


def test_nonfinite_run_stops_with_last_checkpoint_intact(tmp_path):
  config = tiny_config(num_steps=40, log_every=5, checkpoint_every=5, eval_every=0)
  config.optimizer.max_consecutive_skips = 3
  with pytest.raises(train.NonFiniteError, match="max_consecutive_skips=3"):
    train.train_and_evaluate(config, tmp_path, dataset=tiny_dataset(nan_from_step=7),
                             progress=False)
  # Steps 8.. are skipped (batch index 7 on); streak 3 is tolerated at step 10, so the
  # checkpoint of step 10 exists; at step 15 the streak is 8 and no checkpoint is written.
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [5, 10]
  rows = logging_utils.read_jsonl(tmp_path / "metrics.jsonl")
  assert [(r["step"], r["skips"]) for r in rows] == [(5, 0), (10, 3)]


def test_conditional_model_trains_on_labels(tmp_path):
  config = tiny_config(num_steps=2, eval_every=2)
  config.model.name = "mlp_cvae"
  state = train.train_and_evaluate(config, tmp_path / "ok", dataset=tiny_dataset(num_classes=4),
                                   progress=False)
  assert int(state.step) == 2
  with pytest.raises(ValueError, match="conditional"):
    train.train_and_evaluate(config, tmp_path / "bad", dataset=tiny_dataset(), progress=False)
