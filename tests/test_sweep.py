"""Sweeps: the grid, the strategies against independent runs, masking, the runner, reports."""

import json
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaejax import data, logging_utils, models, objectives, sharding, sweep, sweep_plots, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for experiments.configs
from experiments.configs import common

IMAGE_SHAPE = (6, 6, 1)
BATCH = 8
LR = 1e-2


class Tiny(data.ArrayDataset):
  """48 binary 6×6 images; batches of ``bad_seed``'s run hold a NaN from ``bad_from``."""

  bad_seed = None
  bad_from = 0
  crash_at = None  # raise when batch `crash_at` is requested (a killed run)

  def _get_batch(self, split, step, batch_size, seed):
    if self.crash_at is not None and split == "train" and step == self.crash_at:
      raise KeyboardInterrupt("simulated kill")
    batch = super()._get_batch(split, step, batch_size, seed)
    if split == "train" and seed == self.bad_seed and step >= self.bad_from:
      batch["image"][0, 0, 0, 0] = np.nan
    return batch


def tiny_dataset(**attrs):
  rng = np.random.default_rng(0)
  splits = {s: data.SplitArrays((rng.random((48, *IMAGE_SHAPE)) < 0.3).astype(np.float32),
                                binary=True) for s in ("train", "test")}
  dataset = Tiny("tiny", splits, image_shape=IMAGE_SHAPE)
  for k, v in attrs.items():
    setattr(dataset, k, v)
  return dataset


class SampledTiny(data.ArrayDataset):
  """Like procedural dSprites: the training batches are sampled inside jit from a key."""

  def jax_sampler(self, split):
    def sample(key, batch_size):
      image = jax.random.bernoulli(key, 0.3, (batch_size, *IMAGE_SHAPE)).astype(jnp.float32)
      return {"image": image}
    return sample if split == "train" else None


def tiny_config(grid=None, seeds=(0, 5), **top_level):
  """4 tiny MLP VAEs (β ∈ {0.5, 4} × 2 seeds), 6 steps; evaluated at the end only."""
  config = common.get_base_config()
  config.model.name = "mlp_vae"
  config.model.hidden_sizes = (16,)
  config.model.latent_dim = 3
  config.data.name = "mnist_npz"  # nominal: the tests pass the dataset in
  config.learning_rate = LR
  config.num_steps, config.batch_size = 6, BATCH
  config.log_every, config.checkpoint_every, config.eval_every = 2, 3, 6
  config.eval.num_batches, config.eval.batch_size = 1, 16
  config.figures.enabled = False
  config.sweep = sweep.sweep_config({"beta": (0.5, 4.0)} if grid is None else grid, seeds=seeds)
  config.sweep.strategy = "sequential"
  for key, value in top_level.items():
    config[key] = value
  return config


BIG_SEED = 2**31 + 7  # seeds are uint32: above int32's range too
SPECS = [sweep.ModelSpec(0, objectives.LossSettings(beta=0.5)),
         sweep.ModelSpec(5, objectives.LossSettings(beta=4.0, free_bits=0.2)),
         sweep.ModelSpec(BIG_SEED, objectives.LossSettings(beta=1.0, warmup_steps=3))]
MAX_SKIPS = 1


@pytest.fixture(scope="module")
def parts():
  model = models.create_model(
      {"name": "mlp_vae", "latent_dim": 3, "hidden_sizes": (16,)}, IMAGE_SHAPE)
  optimizer = train.make_optimizer(LR)
  step_fn = train.make_train_step(model, optimizer)
  init = sweep.init_state(model, optimizer, [s.seed for s in SPECS], IMAGE_SHAPE)
  return model, optimizer, step_fn, init


def model_slice(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


@pytest.fixture(scope="module")
def reference_runs(parts):
  """Each model trained alone with the single-model step: its (state, metrics) per step.

  Starts from slices of ``init_state`` (equal to ``create_train_state``: tested below).
  """
  _, _, step_fn, init = parts
  jit_step = jax.jit(step_fn)
  dataset = tiny_dataset()
  runs = []
  for i, spec in enumerate(SPECS):
    state, settings, history = model_slice(init.models, i), jax.tree.map(
        jnp.asarray, spec.settings), []
    for t in range(5):
      state, metrics = jit_step(state, dataset.get_batch("train", t, BATCH, spec.seed), settings)
      history.append((state, metrics))
    runs.append(history)
  return runs


@pytest.fixture(scope="module")
def executors(parts):
  """One executor per chunk size, shared (compiled once): 1 = sequential, 3 = vmap, 2 =
  chunked (a vmapped pair and a single model)."""
  _, _, step_fn, _ = parts
  seeds, settings = [s.seed for s in SPECS], sweep.settings_arrays(SPECS)
  return {size: sweep.SweepExecutor(step_fn, seeds, settings, chunk_size=size,
                                    max_consecutive_skips=MAX_SKIPS) for size in (1, 2, 3)}


def run_executor(parts, executor, dataset, steps):
  executor.load(parts[3])
  metrics = None
  for t in range(steps):
    batches = executor.host_batches(
        lambda i, t=t: dataset.get_batch("train", t, BATCH, SPECS[i].seed))
    metrics = executor.step(batches)
  return executor.gather(), executor.fetch(metrics)


# ----------------------------------------------------------------------------- the grid


def test_grid_is_product_then_paired_then_seeds():
  specs = sweep.make_grid({"beta": (1, 4), "warmup_steps": (0, 10)},
                          paired={"capacity_max": (5, 25), "capacity_steps": (100, 200)},
                          seeds=(3, 1))
  assert len(specs) == 2 * 2 * 2 * 2
  first = [(s.settings.beta, s.settings.warmup_steps, s.settings.capacity_max,
            s.settings.capacity_steps, s.seed) for s in specs[:5]]
  assert first == [(1, 0, 5, 100, 3), (1, 0, 5, 100, 1), (1, 0, 25, 200, 3),
                   (1, 0, 25, 200, 1), (1, 10, 5, 100, 3)]
  assert sweep.varying_fields(specs) == ("beta", "warmup_steps", "capacity_max",
                                         "capacity_steps")
  base = objectives.LossSettings(free_bits=0.3)
  assert all(s.settings.free_bits == 0.3
             for s in sweep.make_grid({"beta": (2,)}, base=base, seeds=(0, 1)))


@pytest.mark.parametrize("grid, paired, seeds, error, fragment", [
    ({"beta": ()}, None, (0,), ValueError, "empty"),
    ({"beta": 4.0}, None, (0,), ValueError, "list or tuple"),
    ({"beta": ("a",)}, None, (0,), ValueError, "finite numbers"),
    ({"beta": (1.0, float("nan"))}, None, (0,), ValueError, "finite numbers"),
    ({"gamma": (1.0,)}, None, (0,), KeyError, "Unknown sweep setting 'gamma'"),
    ({"beta": (1.0, -2.0)}, None, (0,), ValueError, "negative"),
    (None, {"beta": (1, 2), "free_bits": (0.5,)}, (0,), ValueError, "same number of values"),
    ({"beta": (1,)}, {"beta": (2,)}, (0,), ValueError, "both grid and paired"),
    ({"beta": (1,)}, None, (), ValueError, "empty"),
    ({"beta": (1,)}, None, (0, 0), ValueError, "distinct"),
    ({"beta": (1,)}, None, (-1,), ValueError, "distinct integers in [0, 2**32)"),
])
def test_bad_grids_fail_clearly(grid, paired, seeds, error, fragment):
  with pytest.raises(error) as info:
    sweep.make_grid(grid, paired=paired, seeds=seeds)
  assert fragment in str(info.value)


def test_config_grid_overridable_on_the_command_line():
  from absl import flags
  from ml_collections import config_flags

  path = Path(__file__).resolve().parents[1] / "experiments/configs/sweep_beta_mnist.py"
  argv = ["prog", f"--config={path}:test", "--config.sweep.grid.beta=(0.5, 2, 8)",
          "--config.sweep.seeds=(4,)"]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  specs = sweep.grid_from_config(flag_values.config)
  assert [(s.settings.beta, s.seed) for s in specs] == [(0.5, 4), (2, 4), (8, 4)]


def test_config_errors_come_before_anything_runs(tmp_path):
  config = tiny_config(grid={})
  config.sweep.seeds = (0,)
  with pytest.raises(ValueError, match="sweep is empty"):
    sweep.train_sweep(config, tmp_path, dataset=tiny_dataset())
  config = tiny_config()
  config.sweep.strategy = "magic"
  with pytest.raises(ValueError, match="Unknown sweep.strategy 'magic'"):
    sweep.train_sweep(config, tmp_path, dataset=tiny_dataset())
  assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("strategy, m, chunk, backend, model_devices, expected", [
    ("sequential", 5, 0, "gpu", 1, 1),
    ("vmap", 5, 0, "cpu", 1, 5),
    ("chunked", 6, 4, "cpu", 1, 4),
    ("auto", 16, 0, "cpu", 1, 1),  # measured: a loop beats vmap on CPU
    ("auto", 16, 0, "gpu", 1, 16),
    ("auto", 16, 0, "tpu", 1, 16),
    ("auto", 16, 0, "cpu", 4, 16),  # a model-axis mesh shards one vmapped program
])
def test_strategy_resolution(strategy, m, chunk, backend, model_devices, expected):
  assert sweep.resolve_chunk_size(strategy, m, chunk_size=chunk, backend=backend,
                                  model_devices=model_devices) == expected


def test_chunk_plan_and_strategy_errors():
  assert sweep.plan_chunks(5, 2) == [sweep.Chunk(0, 2, True), sweep.Chunk(2, 4, True),
                                     sweep.Chunk(4, 5, False)]
  with pytest.raises(ValueError, match="chunk_size in \\[1, 3\\]"):
    sweep.resolve_chunk_size("chunked", 3, chunk_size=4)
  with pytest.raises(ValueError, match="Unknown sweep strategy"):
    sweep.resolve_chunk_size("pmap", 3)


# ----------------------------------------------------------------------------- execution


def test_init_state_equals_single_run_initialisation(parts):
  model, optimizer, _, init = parts
  single = train.create_train_state(model, optimizer, BIG_SEED, IMAGE_SHAPE)
  chex.assert_trees_all_equal(model_slice(init.models, 2), single)
  assert not np.array_equal(init.models.params["encoder"]["hidden_0"]["kernel"][0],
                            init.models.params["encoder"]["hidden_0"]["kernel"][1])
  np.testing.assert_array_equal(init.active, [True, True, True])
  np.testing.assert_array_equal(init.masked_at, [-1, -1, -1])


def test_sequential_strategy_is_bit_identical_to_independent_runs(parts, executors,
                                                                  reference_runs):
  state, metrics = run_executor(parts, executors[1], tiny_dataset(), 3)
  for i, history in enumerate(reference_runs):
    single, single_metrics = history[2]
    chex.assert_trees_all_equal(model_slice(state.models, i), single)
    for key in ("loss", "kl_per_dim", "grad_norm", "kl_weight"):
      np.testing.assert_array_equal(metrics[key][i], single_metrics[key])
  # Different settings and seeds really give different models.
  assert metrics["loss"][0] != metrics["loss"][1]
  np.testing.assert_allclose(metrics["kl_weight"], [1.0, 1.0, 2 / 3], rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [3, 2])  # vmap; chunked (2 vmapped + 1 single)
def test_vmapped_strategies_match_independent_runs(parts, executors, reference_runs,
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
    assert int(state.models.step[i]) == 3


def test_in_program_batches_follow_each_models_seed():
  dataset = SampledTiny("sampled", {"train": data.SplitArrays(np.zeros((8, *IMAGE_SHAPE)))},
                        image_shape=IMAGE_SHAPE)

  def batch_fn(seed, step):
    return train.make_batch_fn(dataset, BATCH, seed)(step)

  seeds, steps = jnp.asarray([0, 5, 2**31 + 1], jnp.uint32), jnp.asarray([4, 4, 9], jnp.int32)
  stacked = jax.jit(jax.vmap(batch_fn))(seeds, steps)
  for i, (seed, step) in enumerate([(0, 4), (5, 4), (2**31 + 1, 9)]):
    expected = train.make_batch_fn(dataset, BATCH, seed)(jnp.int32(step))  # Python seed
    np.testing.assert_array_equal(stacked["image"][i], expected["image"])
  assert not np.array_equal(stacked["image"][0], stacked["image"][1])


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_diverged_model_is_masked_and_the_others_continue(parts, executors, reference_runs,
                                                          chunk_size):
  # Model 2 sees NaN batches from its 3rd step on; it may skip 1 update in a row.
  dataset = tiny_dataset(bad_seed=BIG_SEED, bad_from=2)
  executor = executors[chunk_size]
  state, metrics = run_executor(parts, executor, dataset, 5)
  np.testing.assert_array_equal(state.active, [True, True, False])
  # Steps 3 and 4 were skipped; after step 4 the streak (2) exceeded 1: masked at step 4.
  np.testing.assert_array_equal(state.masked_at, [-1, -1, 4])
  assert int(state.models.step[2]) == 4 and int(state.models.step[0]) == 5
  assert int(state.models.consecutive_skips[2]) == 2
  assert np.isnan(metrics["loss"][2]) and np.all(np.isfinite(metrics["loss"][:2]))
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
  config = tiny_config(seeds=(0, 1))  # 4 models
  model = models.create_model(config.model, IMAGE_SHAPE)
  state = jax.eval_shape(lambda: train.create_train_state(
      model, train.optimizer_from_config(config), 0, IMAGE_SHAPE))
  per_model = sharding.tree_bytes(state)
  assert 3 * num_params * 4 <= per_model <= 3 * num_params * 4 + 256  # + counters, keys
  config.sweep.memory_budget_gb = 2.5 * per_model / 2**30
  with pytest.raises(sharding.SweepMemoryError, match="At most 2 models fit"):
    sweep.train_sweep(config, tmp_path, dataset=tiny_dataset())
  assert not (tmp_path / "checkpoints").exists()


def test_check_memory_counts_devices_and_program():
  sharding.check_memory(num_models=8, bytes_per_model=100, parallel_bytes=50, budget=250,
                        model_devices=4)  # 2 models per device + 50 = 250: fits
  with pytest.raises(sharding.SweepMemoryError, match="At most 4 models fit"):
    sharding.check_memory(num_models=8, bytes_per_model=100, parallel_bytes=50, budget=249,
                          model_devices=4)
  assert sharding.memory_budget(budget_bytes=123) == 123
  assert sharding.memory_budget() > 0


# ----------------------------------------------------------------------------- the runner


def read_rows(workdir):
  rows = logging_utils.read_jsonl(Path(workdir) / logging_utils.METRICS_FILE)
  for row in rows:
    row.pop("steps_per_sec")
  return rows


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  result = sweep.train_sweep(tiny_config(), workdir, dataset=tiny_dataset())
  return workdir, result


def test_rows_carry_each_models_settings_and_results(full_run):
  workdir, result = full_run
  rows = read_rows(workdir)
  assert [(r["step"], r["model"]) for r in rows] == [
      (s, m) for s in (2, 4, 6) for m in range(4)]
  expected = [(0.5, 0), (0.5, 5), (4.0, 0), (4.0, 5)]
  assert [(r["beta"], r["seed"]) for r in rows[:4]] == expected
  assert all(r["free_bits"] == 0.0 and r["active"] and r["masked_at"] == -1 for r in rows)
  assert {"loss", "kl_per_dim", "eval/elbo"} <= set(rows[-1])
  assert "eval/elbo" in rows[-1] and "eval/elbo" not in rows[0]  # eval at step 6 only
  # β = 4 buys a lower rate than β = 0.5 for the same seed, even in 6 steps.
  final = {(r["beta"], r["seed"]): r for r in result.rows}
  assert final[(4.0, 0)]["eval/kl"] < final[(0.5, 0)]["eval/kl"]
  saved = [json.loads(line) for line in (workdir / sweep.RESULTS_FILE).read_text().splitlines()]
  assert [r["seed"] for r in saved] == [0, 5, 0, 5]
  assert {p.name for p in result.report} == {
      "results.md", "results.csv", "summary.json", "rate_distortion.png", "kl_per_dim.png"}
  assert "| 0.5 | 2 | 0 |" in (workdir / sweep.REPORT_DIR / "results.md").read_text()
  assert (workdir / "tensorboard" / "m003").is_dir()


def test_killed_sweep_resumes_bit_identically(full_run, tmp_path):
  workdir, result = full_run
  with pytest.raises(KeyboardInterrupt):  # killed while fetching the batch of step 5
    sweep.train_sweep(tiny_config(), tmp_path, dataset=tiny_dataset(crash_at=4),
                      write_report=False)
  assert max(r["step"] for r in read_rows(tmp_path)) == 4  # rows past the checkpoint (3)
  resumed = sweep.train_sweep(tiny_config(), tmp_path, dataset=tiny_dataset(),
                              write_report=False)
  assert read_rows(tmp_path) == read_rows(workdir)
  chex.assert_trees_all_equal(resumed.state, result.state)


def test_a_changed_grid_cannot_resume(full_run, tmp_path):
  workdir, _ = full_run
  config = tiny_config(grid={"beta": (0.5, 8.0)})
  with pytest.raises(ValueError, match="sweep.grid.beta"):
    sweep.train_sweep(config, workdir, dataset=tiny_dataset())


def test_sweep_stops_when_every_model_diverged(tmp_path):
  config = tiny_config(grid={"beta": (1.0,)}, seeds=(3,), eval_every=0, num_steps=4)
  config.optimizer.max_consecutive_skips = 1
  with pytest.raises(train.NonFiniteError, match="All 1 models of the sweep diverged"):
    sweep.train_sweep(config, tmp_path, dataset=tiny_dataset(bad_seed=3), write_report=False)
  rows = read_rows(tmp_path)
  assert [(r["step"], r["active"], r["masked_at"]) for r in rows] == [(2, False, 2)]


# ----------------------------------------------------------------------------- reports


def result_rows():
  rows = []
  for beta, rates in ((1.0, (10.0, 12.0, 14.0)), (4.0, (3.0, 5.0, 99.0))):
    for seed, rate in enumerate(rates):
      rows.append({"seed": seed, "beta": beta, "free_bits": 0.0, "active": rate != 99.0,
                   "eval/kl": rate, "eval/recon": -100.0 / beta - seed, "eval/elbo": 0.0,
                   "eval/kl_per_dim": [rate, 0.0], "loss": 1.0})
  return rows


def test_aggregate_means_and_stds_over_active_seeds():
  groups = sweep_plots.aggregate(result_rows())
  assert [g["beta"] for g in groups] == [1.0, 4.0]
  one, four = groups
  assert one["rate_mean"] == pytest.approx(12.0) and one["rate_std"] == pytest.approx(2.0)
  assert one["distortion_mean"] == pytest.approx(101.0)  # −recon: 100 + mean(0, 1, 2)
  assert four["num_masked"] == 1 and four["seeds"] == [0, 1, 2]
  assert four["rate_mean"] == pytest.approx(4.0)  # the masked 99 is left out
  assert four["rate_std"] == pytest.approx(np.std([3.0, 5.0], ddof=1))
  assert np.isnan(four["active_units_mean"])  # absent metric
  assert four["kl_per_dim"] == pytest.approx([4.0, 0.0])
  assert four["alive_dims"] == 1.0


def test_report_tables_and_figures(tmp_path):
  paths = sweep_plots.write_report(result_rows(), tmp_path)
  assert {p.name for p in paths} == {"results.md", "results.csv", "summary.json",
                                     "rate_distortion.png", "kl_per_dim.png"}
  markdown = (tmp_path / "results.md").read_text().splitlines()
  assert markdown[0].startswith("| beta | seeds | masked | elbo | rate | distortion")
  assert "| 4 | 3 | 1 |" in markdown[3] and "4.00 ± 1.41" in markdown[3]
  csv_rows = (tmp_path / "results.csv").read_text().splitlines()
  assert csv_rows[0].split(",")[:4] == ["beta", "n_seeds", "n_masked", "elbo_mean"]
  assert len(csv_rows) == 3
  assert all(p.stat().st_size > 1000 for p in paths if p.suffix == ".png")


def test_kl_spectrum_sorts_each_model_before_averaging():
  rows = [{"seed": 0, "beta": 1.0, "eval/kl_per_dim": [0.0, 3.0, 1.0]},
          {"seed": 1, "beta": 1.0, "eval/kl_per_dim": [5.0, 0.001, 0.0]}]
  (group,) = sweep_plots.aggregate(rows, ("beta",))
  assert group["kl_per_dim"] == pytest.approx([2.5, 1.5005, 0.5])  # dimension by dimension
  assert group["kl_sorted"] == pytest.approx([4.0, 0.5005, 0.0])  # rank by rank
  assert group["alive_dims"] == 1.5  # 2 and 1 dimensions above 0.01 nats
  groups = sweep_plots.aggregate(result_rows())
  groups[1]["kl_sorted"] = [1.0]
  with pytest.raises(ValueError, match="one length"):
    sweep_plots.plot_kl_heatmap(groups, ("beta",))
  with pytest.raises(ValueError, match="at least one"):
    sweep_plots.aggregate([])
