"""The engine's invariant: model i of a sweep is the single run with its point's values.

Each check trains a sweep through :func:`vaejax.training.loop.train` and compares every
model's logged losses and evaluation numbers with a *reference loop written here*: a plain
``jax.jit`` of the train step (``make_train_step``; its maths is checked against an
independent computation in ``test_step.py``) over the dataset's batches, with its own
initialisation, the documented random streams, each point's hyper-parameters and its own
jitted evaluation. Sequential programs must match bit for bit;
vmapped programs within rtol 1e-5 over 6 steps. Covered: the MLP VAE (seed, learning rate,
KL warm-up and the learning-rate warm-up), the conditional VAE, and the hierarchical VAE
with per-level free bits on in-program (sampled) batches.
"""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vaejax import data, models, objectives
from vaejax.config import base_config
from vaejax.data import base as data_base
from vaejax.training import loop, writers
from vaejax.training.optimizer import make_optimizer
from vaejax.training.state import TrainState
from vaejax.training.step import Hyperparams, make_train_step

from tiny import sampled_dataset

IMAGE_SHAPE = (6, 6, 1)
BATCH, EVAL_BATCH, STEPS = 8, 16, 6
# The documented streams (vaejax.rng): fold_in(PRNGKey(seed), stream).
INIT, SAMPLE, EVAL_SAMPLE = 0, 1, 3


def _images(rng, n):
  return (rng.random((n, *IMAGE_SHAPE)) < 0.3).astype(np.float32)


def host_dataset():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 48).astype(np.int32)
  splits = {s: data.SplitArrays(_images(rng, 48), labels=labels, binary=True)
            for s in ("train", "test")}
  return data.ArrayDataset("tiny", splits, image_shape=IMAGE_SHAPE, num_classes=3)


def tiny_config(model: dict, strategy: str) -> ml_collections.ConfigDict:
  config = base_config()
  config.model.update(model)
  config.data.name = "mnist_npz"  # nominal: the tests pass the dataset in
  config.num_steps, config.batch_size, config.learning_rate = STEPS, BATCH, 1e-2
  config.log_every, config.checkpoint_every = 1, STEPS
  config.loss.beta = 2.0
  config.eval.num_batches, config.eval.batch_size = 2, EVAL_BATCH
  config.evals.elbo.every = 0  # at the end only
  config.evals.figures.at_end = False
  config.execution.strategy = strategy
  return config


# ----------------------------------------------------------------------------- the reference


def _set(config, point):
  for key, value in point.items():
    group, _, leaf = key.rpartition(".")
    (config[group] if group else config)[leaf] = value
  return config


_REFERENCE_PROGRAMS = {}


def _reference_programs(config, dataset):
  """The reference's jitted step and evaluation, built once per model config."""
  key = repr(sorted(config.model.items()))
  if key in _REFERENCE_PROGRAMS:
    return _REFERENCE_PROGRAMS[key]
  model = models.create_model(config.model, IMAGE_SHAPE, dataset.num_classes)
  conditional = bool(getattr(model, "conditional", False))
  groups = getattr(model, "latent_groups", None)
  optimizer = make_optimizer()
  train_step = jax.jit(make_train_step(model, optimizer, free_bits_groups=groups,
                                       conditional=conditional))

  @jax.jit
  def init(seed):
    root = jax.random.PRNGKey(seed)
    params_key, init_sample = jax.random.split(jax.random.fold_in(root, INIT))
    y0 = jnp.zeros((1,), jnp.int32) if conditional else None
    params = model.init({"params": params_key, "sample": init_sample},
                        jnp.zeros((1, *IMAGE_SHAPE)), y0)["params"]
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=optimizer.init(params),
                      key=jax.random.fold_in(root, SAMPLE), skips=zero,
                      consecutive_skips=zero, longest_skip_streak=zero, grad_norm_skips=zero)

  def step(state, batch, settings, lr, lr_warmup):
    return train_step(state, batch, Hyperparams(settings, lr, lr_warmup))

  @jax.jit
  def evaluate(params, seed, batch, i):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), EVAL_SAMPLE), i)
    y = batch["label"] if conditional else None
    out = model.apply({"params": params}, batch["image"], y, rngs={"sample": key})
    return objectives.elbo_terms(batch["image"], out)

  _REFERENCE_PROGRAMS[key] = (init, step, evaluate)
  return init, step, evaluate


def reference_run(config, point, dataset):
  """One model trained by a plain jitted step: per-step metrics and the final evaluation."""
  config = _set(config.copy_and_resolve_references(), point)
  init, step, evaluate = _reference_programs(config, dataset)
  seed = jnp.uint32(config.seed)
  settings = objectives.LossSettings(**{
      f: jnp.float32(config.loss[f]) for f in objectives.LossSettings._fields})
  lr, lr_warmup = jnp.float32(config.learning_rate), jnp.float32(config.optimizer.warmup_steps)
  state = init(seed)
  sampler = dataset.jax_sampler("train")
  train_key = jax.random.fold_in(jax.random.key(config.seed), data_base.stream_id("train"))
  history = []
  for t in range(STEPS):
    if sampler is not None:
      batch = sampler(jax.random.fold_in(train_key, t), BATCH)
    else:
      batch = dataset.get_batch("train", t, BATCH, config.seed)
    state, metrics = step(state, batch, settings, lr, lr_warmup)
    history.append(jax.device_get(metrics))
  # Held-out: the dataset's test batches drawn with seed 0; sample keys from the model's seed.
  terms = [evaluate(state.params, seed, dataset.get_batch("test", i, EVAL_BATCH, 0), jnp.uint32(i))
           for i in range(config.eval.num_batches)]
  return history, {k: float(np.mean(np.concatenate([np.asarray(t[k]) for t in terms])))
                   for k in ("elbo", "kl")}


def engine_rows(workdir):
  """Per model, its logged rows in step order."""
  rows = writers.read_jsonl(workdir / writers.METRICS_FILE)
  per_model = {}
  for row in rows:
    per_model.setdefault(row.get("model", 0), []).append(row)
  return [per_model[m] for m in sorted(per_model)]


def check(rows, reference, exact):
  history, evaluation = reference
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  got = np.asarray([[r["loss"], r["kl_weight"], r["learning_rate"]] for r in rows])
  want = np.asarray([[h["loss"], h["kl_weight"], h["learning_rate"]] for h in history],
                    np.float64)
  got_eval = np.asarray([rows[-1]["eval/elbo"], rows[-1]["eval/kl"]])
  want_eval = np.asarray([evaluation["elbo"], evaluation["kl"]])
  if exact:
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_eval, want_eval)
  else:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_eval, want_eval, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the checks


VAE = {"name": "mlp_vae", "hidden_sizes": (16,), "latent_dim": 3}
VAE_GRID = ["seed=0,5", "learning_rate=0.01,0.003", "loss.warmup_steps=0,3"]


@pytest.fixture(scope="module")
def vae_references():
  config = tiny_config(VAE, "sequential")
  config.optimizer.warmup_steps = 2  # every model's rate warms up; the grid sets the rate
  dataset = host_dataset()
  points = [{"seed": s, "learning_rate": lr, "loss.warmup_steps": w}
            for s in (0, 5) for lr in (0.01, 0.003) for w in (0, 3)]
  return config, dataset, points, [reference_run(config, p, dataset) for p in points]


@pytest.fixture(scope="module", params=["sequential", "vmap"])
def vae_sweep(request, vae_references, tmp_path_factory):
  config, dataset, points, _ = vae_references
  config = config.copy_and_resolve_references()
  config.execution.strategy = request.param
  workdir = tmp_path_factory.mktemp(request.param)
  result = loop.train(config, workdir, grid=VAE_GRID, dataset=dataset, progress=False,
                      write_report=False)
  return request.param, result, engine_rows(workdir)


def test_vae_sweep_equals_independent_runs(vae_sweep, vae_references):
  strategy, result, engine = vae_sweep
  _, _, points, references = vae_references
  assert result.points == points  # the order of the flags, the last fastest
  for rows, reference in zip(engine, references):
    check(rows, reference, exact=strategy == "sequential")


def test_each_model_logs_its_own_learning_rate_and_kl_weight(vae_sweep, vae_references):
  """Read from the engine's rows against each point's schedules, written out here."""
  _, _, engine = vae_sweep
  _, _, points, _ = vae_references
  for rows, point in zip(engine, points):
    assert rows[0]["point"] == point
    for row in rows:
      t = row["step"] - 1  # the row of step s reports update s − 1's schedules
      np.testing.assert_allclose(row["learning_rate"],
                                 point["learning_rate"] * min(t / 2, 1.0), rtol=1e-6)
      warm = point["loss.warmup_steps"]
      np.testing.assert_allclose(row["kl_weight"], min(t / warm, 1.0) if warm else 1.0,
                                 rtol=1e-6)


def test_single_run_is_the_sweep_model_with_its_values(vae_references, tmp_path):
  config, dataset, points, references = vae_references
  run = _set(config.copy_and_resolve_references(), points[5])
  loop.train_and_evaluate(run, tmp_path, dataset=dataset, progress=False)
  (rows,) = engine_rows(tmp_path)
  assert "point" not in rows[0] and "model" not in rows[0]
  check(rows, references[5], exact=True)


def test_conditional_sweep_equals_independent_runs(tmp_path):
  config = tiny_config({"name": "mlp_cvae", "hidden_sizes": (16,), "latent_dim": 2},
                       "sequential")
  dataset = host_dataset()
  grid = ["loss.beta=1,3", "seed=2,9"]
  loop.train(config, tmp_path, grid=grid, dataset=dataset, progress=False, write_report=False)
  points = [{"loss.beta": b, "seed": s} for b in (1.0, 3.0) for s in (2, 9)]
  for rows, point in zip(engine_rows(tmp_path), points):
    check(rows, reference_run(config, point, dataset), exact=True)


@pytest.mark.slow  # ~35 s: the hierarchical model's compiles; the VAE sweeps above run by default
def test_hierarchical_free_bits_sweep_equals_independent_runs(tmp_path):
  """Per-level free bits (the model's latent groups) on batches sampled in the program.

  Three models in chunks of two: models 0 and 1 run vmapped, model 2 alone, as the
  sequential strategy runs every model (the same single-model program), so one sweep
  checks both.
  """
  config = tiny_config({"name": "hvae", "latent_sizes": (3, 2), "hidden_size": 16},
                       "chunked")
  config.execution.chunk_size = 2
  config.seed = 1
  dataset = sampled_dataset()
  grid = ["loss.free_bits=0.25,0.5,1.5"]
  loop.train(config, tmp_path, grid=grid, dataset=dataset, progress=False, write_report=False)
  for k, (rows, fb) in enumerate(zip(engine_rows(tmp_path), (0.25, 0.5, 1.5))):
    check(rows, reference_run(config, {"loss.free_bits": fb}, dataset), exact=k == 2)
