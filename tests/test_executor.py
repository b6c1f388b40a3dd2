"""The executor: strategies, chunk plans, stacked initialisation, stepping, masking, memory.

Every check of an :class:`~vaejax.training.executor.Executor` compares it with models
trained alone by a plain ``jax.jit`` of the single-model step from the single-run
initialisation (the reference written here): a loop of single-model programs must match
bit for bit, vmapped programs within float tolerance.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaejax import data, models, objectives
from vaejax.config import base_config
from vaejax.data import base as data_base
from vaejax.training import loop, memory
from vaejax.training.executor import Chunk, Executor, plan_chunks, resolve_chunk_size
from vaejax.training.optimizer import make_optimizer
from vaejax.training.state import create_train_state, init_stack
from vaejax.training.step import Hyperparams, make_batch_fn, make_train_step, stack_hyperparams

from tiny import IMAGE_SHAPE, Sampled, tiny_dataset

BATCH = 8
BIG_SEED = 2**31 + 7  # seeds are uint32: above int32's range too
SEEDS = [0, 5, BIG_SEED]
# Per model: its own loss settings, learning rate and learning-rate warm-up.
HYPERS = [
    Hyperparams(objectives.LossSettings(beta=0.5), 1e-2, 0),
    Hyperparams(objectives.LossSettings(beta=4.0, free_bits=0.2), 3e-3, 2),
    Hyperparams(objectives.LossSettings(warmup_steps=3), 1e-2, 0),
]
MAX_SKIPS = 1


def model_slice(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def scalars(h):
  """One model's Hyperparams as float32 scalars (the values the executor stacks)."""
  return jax.tree.map(np.float32, h)


@pytest.fixture(scope="module")
def parts():
  """The model, Adam direction, un-jitted step, initial stack and the reference's jitted step."""
  model = models.create_model(
      {"name": "mlp_vae", "latent_dim": 3, "hidden_sizes": (16,)}, IMAGE_SHAPE)
  optimizer = make_optimizer()
  step_fn = make_train_step(model, optimizer)
  init = init_stack(model, optimizer, SEEDS, IMAGE_SHAPE)
  return model, optimizer, step_fn, init, jax.jit(step_fn)


@pytest.fixture(scope="module")
def singles(parts):
  """Each model's initial state: its slice of ``init_stack``, which equals the single-run
  ``create_train_state`` (checked below)."""
  init = parts[3]
  return [model_slice(init.models, i) for i in range(len(SEEDS))]


@pytest.fixture(scope="module")
def reference_runs(parts, singles):
  """Each model trained alone by the jitted single-model step: (state, metrics) per step."""
  jit_step = parts[4]
  dataset = tiny_dataset()
  runs = []
  for seed, h, state in zip(SEEDS, HYPERS, singles):
    history = []
    for t in range(5):
      state, metrics = jit_step(state, dataset.get_batch("train", t, BATCH, seed), scalars(h))
      history.append((state, metrics))
    runs.append(history)
  return runs


@pytest.fixture(scope="module")
def executors(parts):
  """One executor per chunk size, shared (compiled once): 1 = sequential, 3 = vmap, 2 =
  chunked (a vmapped pair and a single model)."""
  step_fn = parts[2]
  hyper = stack_hyperparams(HYPERS)
  return {size: Executor(step_fn, SEEDS, hyper, chunk_size=size, max_consecutive_skips=MAX_SKIPS)
          for size in (1, 2, 3)}


def run_executor(parts, executor, dataset, steps):
  executor.load(parts[3])
  metrics = None
  for t in range(steps):
    batches = executor.host_batches(
        lambda i, t=t: dataset.get_batch("train", t, BATCH, SEEDS[i]))
    metrics = executor.step(batches)
  return executor.gather(), executor.fetch(metrics)


# ----------------------------------------------------------------------------- plans


@pytest.mark.parametrize("strategy, m, chunk, backend, model_devices, expected", [
    ("sequential", 5, 0, "gpu", 1, 1),
    ("vmap", 5, 0, "cpu", 1, 5),
    ("chunked", 6, 4, "cpu", 1, 4),
    ("auto", 16, 0, "cpu", 1, 1),  # measured: a loop beats vmap on CPU
    ("auto", 16, 0, "gpu", 1, 16),
    ("auto", 16, 0, "tpu", 1, 16),
    ("auto", 16, 0, "cpu", 4, 16),  # a model-axis mesh shards one vmapped program
    ("auto", 1, 0, "gpu", 1, 1),  # a single run
])
def test_strategy_resolution(strategy, m, chunk, backend, model_devices, expected):
  assert resolve_chunk_size(strategy, m, chunk_size=chunk, backend=backend,
                            model_devices=model_devices) == expected


def test_chunk_plan_and_strategy_errors():
  assert plan_chunks(5, 2) == [Chunk(0, 2, True), Chunk(2, 4, True), Chunk(4, 5, False)]
  assert plan_chunks(3, 3) == [Chunk(0, 3, True)]
  assert plan_chunks(2, 1) == [Chunk(0, 1, False), Chunk(1, 2, False)]
  with pytest.raises(ValueError, match="chunk_size in \\[1, 3\\]"):
    resolve_chunk_size("chunked", 3, chunk_size=4)
  with pytest.raises(ValueError, match="Unknown execution strategy 'pmap'"):
    resolve_chunk_size("pmap", 3)


def test_executor_input_errors(parts):
  step_fn, init = parts[2], parts[3]
  hyper = stack_hyperparams(HYPERS)
  with pytest.raises(ValueError, match="one value of every hyper-parameter per model"):
    Executor(step_fn, SEEDS[:2], hyper, chunk_size=1, max_consecutive_skips=1)
  executor = Executor(step_fn, SEEDS[:2], stack_hyperparams(HYPERS[:2]), chunk_size=1,
                      max_consecutive_skips=1)
  with pytest.raises(ValueError, match="holds 3 models; this stack has 2"):
    executor.load(init)
  with pytest.raises(ValueError, match="exactly when the stack has no in-program batch_fn"):
    executor.step(None)


# ----------------------------------------------------------------------------- execution


def test_init_stack_equals_create_train_state_per_seed(parts):
  model, optimizer, _, init, _ = parts
  for i in (0, 2):  # seed 0 and one above int32's range
    chex.assert_trees_all_equal(model_slice(init.models, i),
                                create_train_state(model, optimizer, SEEDS[i], IMAGE_SHAPE))
  kernels = init.models.params["encoder"]["hidden_0"]["kernel"]
  assert not np.array_equal(kernels[0], kernels[1])
  np.testing.assert_array_equal(init.active, [True, True, True])
  np.testing.assert_array_equal(init.masked_at, [-1, -1, -1])
  assert init.num_models == 3


def test_sequential_executor_is_bit_identical_to_independent_runs(parts, executors,
                                                                  reference_runs):
  executor = executors[1]
  assert [c.vmapped for c in executor.chunks] == [False, False, False]
  state, metrics = run_executor(parts, executor, tiny_dataset(), 3)
  for i, history in enumerate(reference_runs):
    single, single_metrics = history[2]
    chex.assert_trees_all_equal(model_slice(state.models, i), single)
    for key in ("loss", "kl_per_dim", "grad_norm", "kl_weight", "learning_rate"):
      np.testing.assert_array_equal(metrics[key][i], single_metrics[key])
  # Each model's own settings: β, KL warm-up (model 2) and learning-rate warm-up (model 1).
  assert metrics["loss"][0] != metrics["loss"][1]
  np.testing.assert_allclose(metrics["kl_weight"], [1.0, 1.0, 2 / 3], rtol=1e-6)
  np.testing.assert_allclose(metrics["learning_rate"], [1e-2, 3e-3, 1e-2], rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [3, 2])  # vmap; chunked (2 vmapped + 1 single)
def test_vmapped_executors_match_independent_runs(parts, executors, reference_runs,
                                                  chunk_size):
  executor = executors[chunk_size]
  state, metrics = run_executor(parts, executor, tiny_dataset(), 3)
  assert [c.vmapped for c in executor.chunks] == ([True] if chunk_size == 3 else [True, False])
  for i, history in enumerate(reference_runs):
    single, single_metrics = history[2]
    # Batched matmuls may round differently from unbatched ones: close, not identical.
    chex.assert_trees_all_close(model_slice(state.models.params, i), single.params,
                                rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"][i], single_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["learning_rate"][i], single_metrics["learning_rate"],
                               rtol=1e-6)
    assert int(state.models.step[i]) == 3


def test_map_models_keeps_model_order(parts, executors):
  """Per-model functions see each model's own parameters and seed, chunk by chunk."""
  executor = executors[2]
  executor.load(parts[3])

  def fn(params, seed, shift):
    return seed, jnp.sum(params["encoder"]["hidden_0"]["kernel"]) + shift

  host = executor.gather()
  for batched in (True, False):
    out = executor.map_models(fn, np.float32(1.0), batched=batched)
    assert [int(s) for s, _ in out] == SEEDS
    for i, (_, value) in enumerate(out):
      expected = np.sum(host.models.params["encoder"]["hidden_0"]["kernel"][i]) + 1.0
      np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_in_program_batches_follow_each_models_seed(parts, singles):
  """A batch_fn sampled in the program draws model i's batch of step t from its seed."""
  step_fn, init = parts[2], parts[3]
  dataset = Sampled("sampled", {"train": data.SplitArrays(np.zeros((8, *IMAGE_SHAPE)))},
                    image_shape=IMAGE_SHAPE)
  sampler = dataset.jax_sampler("train")

  @jax.jit
  def expected_batch(seed, step):  # the documented key, written out
    key = jax.random.fold_in(jax.random.key(seed), data_base.stream_id("train"))
    return sampler(jax.random.fold_in(key, step), BATCH)

  batch_fn = make_batch_fn(dataset, BATCH)
  seeds, steps = jnp.asarray(SEEDS, jnp.uint32), jnp.asarray([4, 4, 9], jnp.int32)
  stacked = jax.jit(jax.vmap(batch_fn))(seeds, steps)
  for i, (seed, step) in enumerate(zip(SEEDS, (4, 4, 9))):
    np.testing.assert_array_equal(stacked["image"][i],
                                  expected_batch(np.uint32(seed), step)["image"])
  assert not np.array_equal(stacked["image"][0], stacked["image"][1])

  # An executor (a vmapped pair + a single model) against the reference with those batches.
  executor = Executor(step_fn, SEEDS, stack_hyperparams(HYPERS), chunk_size=2,
                      max_consecutive_skips=MAX_SKIPS, batch_fn=batch_fn)
  executor.load(init)
  for _ in range(3):
    metrics = executor.step()
  state, metrics = executor.gather(), executor.fetch(metrics)
  jit_step = parts[4]
  for i, (seed, h, single) in enumerate(zip(SEEDS, HYPERS, singles)):
    for t in range(3):
      single, single_metrics = jit_step(single, expected_batch(np.uint32(seed), t), scalars(h))
    if i == 2:  # the single-model chunk: bit for bit
      chex.assert_trees_all_equal(model_slice(state.models, i), single)
    chex.assert_trees_all_close(model_slice(state.models.params, i), single.params,
                                rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"][i], single_metrics["loss"], rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_diverged_model_is_masked_and_the_others_continue(parts, executors, reference_runs,
                                                          chunk_size):
  # Model 2 sees NaN batches from its 3rd step on; it may skip 1 update in a row.
  dataset = tiny_dataset(bad_seeds=(BIG_SEED,), bad_from=2)
  executor = executors[chunk_size]
  state, metrics = run_executor(parts, executor, dataset, 5)
  np.testing.assert_array_equal(state.active, [True, True, False])
  # Steps 3 and 4 were skipped; after step 4 the streak (2) exceeded 1: masked at step 4.
  np.testing.assert_array_equal(state.masked_at, [-1, -1, 4])
  assert int(state.models.step[2]) == 4 and int(state.models.step[0]) == 5
  assert int(state.models.consecutive_skips[2]) == 2
  assert np.isnan(metrics["loss"][2]) and np.all(np.isfinite(metrics["loss"][:2]))
  assert metrics["skips"][2] == 0  # a masked model's integer metrics read 0
  # Frozen at its last good update: its state after 2 steps of an independent run.
  chex.assert_trees_all_close(model_slice(state.models.params, 2),
                              reference_runs[2][1][0].params, rtol=1e-5, atol=1e-6)
  # The others are untouched by it: equal to 5 independent steps.
  for i in range(2):
    chex.assert_trees_all_close(model_slice(state.models.params, i),
                                reference_runs[i][4][0].params, rtol=1e-5, atol=1e-6)
  active, masked_at = executor.flags()
  np.testing.assert_array_equal(active, [True, True, False])
  np.testing.assert_array_equal(masked_at, [-1, -1, 4])


# ----------------------------------------------------------------------------- memory


def test_too_many_models_fail_early_saying_how_many_fit(tmp_path):
  # Independent count: MLP 36-16-(3+3) / 3-16-36 parameters; Adam keeps two more copies.
  num_params = (36 * 16 + 16) + 2 * (16 * 3 + 3) + (3 * 16 + 16) + (16 * 36 + 36)
  per_model = 3 * num_params * 4  # float32; the counters and key add a few bytes
  config = base_config()
  config.model.update({"name": "mlp_vae", "hidden_sizes": (16,), "latent_dim": 3})
  config.data.name = "mnist_npz"  # nominal: the dataset is passed in
  config.batch_size = BATCH
  config.execution.memory_budget_gb = 2.5 * per_model / 2**30
  with pytest.raises(memory.MemoryBudgetError, match="4 models do not fit.*At most 2 models fit"):
    loop.train(config, tmp_path, grid=["seed=0,1,2,3"], dataset=tiny_dataset())
  assert not list(tmp_path.iterdir())  # refused before writing anything


def test_check_memory_counts_devices_and_program():
  memory.check_memory(num_models=8, bytes_per_model=100, parallel_bytes=50, budget=250,
                      model_devices=4)  # 2 models per device + 50 = 250: fits
  with pytest.raises(memory.MemoryBudgetError, match="At most 4 models fit"):
    memory.check_memory(num_models=8, bytes_per_model=100, parallel_bytes=50, budget=249,
                        model_devices=4)
  with pytest.raises(memory.MemoryBudgetError, match="At most 0 models fit"):
    memory.check_memory(num_models=1, bytes_per_model=100, parallel_bytes=300, budget=250)
  assert issubclass(memory.MemoryBudgetError, ValueError)
  assert memory.memory_budget(budget_bytes=123) == 123
  assert memory.memory_budget() > 0
  assert memory.tree_bytes({"a": np.zeros((2, 3), np.float32),
                            "b": jax.ShapeDtypeStruct((5,), jnp.int8)}) == 29
