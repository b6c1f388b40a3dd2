"""Adding an evaluator type is one module and one schema entry.

A ``pixel_stats`` evaluator, written in this test, logs the mean held-out pixel and each
model's sum of squared parameters. It is checked against independent references written
here: the held-out batch drawn from the dataset directly, the parameters read back from
the checkpoint.
"""

import json
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest
from tiny import IMAGE_SHAPE, tiny_dataset

from vaejax import config as config_lib
from vaejax import models, rng
from vaejax.evaluation import evaluators
from vaejax.evaluation.evaluators import base, registry
from vaejax.training import checkpoint, loop

MODEL = {"name": "mlp_vae", "hidden_sizes": (8,), "latent_dim": 2}
EVAL_BATCH = 16
# The module a contributor would add as vaejax/evaluation/evaluators/pixel_stats.py.
MODULE = textwrap.dedent('''
    """The ``pixel_stats`` evaluator: the mean held-out pixel, each model's squared norm."""

    import jax
    import numpy as np

    from vaejax.evaluation.evaluators.base import Evaluator, config_int
    from vaejax.evaluation.evaluators.registry import register


    @register("pixel_stats")
    class PixelStatsEvaluator(Evaluator):

      def __init__(self, name, group, setup, requested=False):
        super().__init__(name, group, setup, requested)
        self.num_batches = config_int(group, "num_batches", f"evals.{name}")

      def evaluate(self, stack, step):
        images = np.concatenate([np.asarray(b["image"])
                                 for b in self.setup.held_out()[: self.num_batches]])
        squares = stack.map_models(
            lambda params, seed: sum(jax.numpy.sum(p**2) for p in jax.tree.leaves(params)))
        return [{"mean_pixel": float(images.mean()), "param_sq": float(s)} for s in squares]
''')
SCHEMA_ENTRY = {"type": "pixel_stats", "every": 0, "at_end": False, "num_batches": 1}


@pytest.fixture
def clean_registry():
  """Takes the test's evaluator type out of the registry again afterwards."""
  yield
  registry.EVALUATORS.pop("pixel_stats", None)
  sys.modules.pop("vaejax.evaluation.evaluators.pixel_stats", None)


@pytest.fixture
def pixel_stats_module(tmp_path, monkeypatch, clean_registry):
  """``pixel_stats.py`` in a folder searched as part of the evaluators package, and the
  schema entry in :func:`vaejax.config.base_config` (both undone afterwards)."""
  del clean_registry
  folder = tmp_path / "contributed"
  folder.mkdir()
  (folder / "pixel_stats.py").write_text(MODULE)
  monkeypatch.setattr(evaluators, "__path__", [*evaluators.__path__, str(folder)])
  base_config = config_lib.base_config

  def with_entry():
    config = base_config()
    config.evals.pixel_stats = dict(SCHEMA_ENTRY)
    return config

  monkeypatch.setattr(config_lib, "base_config", with_entry)


def _held_out_images(dataset):
  """The evaluators' held-out data, drawn here: the test split's first batch."""
  return dataset.get_batch("test", 0, EVAL_BATCH, rng.EVAL_DATA_SEED)["image"]


def test_a_module_named_after_its_type_and_a_schema_entry_run_in_training(
    pixel_stats_module, tmp_path):
  config = config_lib.base_config()
  config.model.update(MODEL)
  config.data.name = "mnist_npz"  # nominal: the dataset is passed in
  config.num_steps, config.batch_size, config.learning_rate = 4, 8, 1e-2
  config.log_every, config.checkpoint_every = 2, 4
  config.eval.num_batches, config.eval.batch_size = 1, EVAL_BATCH
  config.evals.elbo.every, config.evals.elbo.at_end = 0, False
  config.evals.figures.at_end = False
  config.evals.px = ml_collections.ConfigDict({**SCHEMA_ENTRY, "every": 2, "at_end": True})
  dataset = tiny_dataset()
  loop.train(config, tmp_path / "run", dataset=dataset, progress=False)

  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
  logged = {r["step"]: r for r in rows if "px/mean_pixel" in r}
  assert sorted(logged) == [2, 4]
  # float32 images averaged in float64 on both sides: equal to round-off.
  np.testing.assert_allclose(logged[4]["px/mean_pixel"], _held_out_images(dataset).mean(),
                             rtol=1e-6)
  state, _, _ = checkpoint.restore_state(tmp_path / "run" / checkpoint.CHECKPOINT_DIR)
  leaves = jax.tree.leaves(state["models"]["params"])
  reference = sum(float(np.sum(np.asarray(p, np.float64)[0] ** 2)) for p in leaves)
  # A float32 sum over ~200 parameters against float64: relative round-off ~1e-6.
  np.testing.assert_allclose(logged[4]["px/param_sq"], reference, rtol=1e-5)


class _Stack:
  """Two models' parameters as an evaluator sees them (host arrays, no executor)."""

  def __init__(self, params):
    self._params = params

  def map_models(self, fn, *shared, batched=True):
    del batched
    return [fn(p, seed, *shared) for seed, p in enumerate(self._params)]

  def params(self, index):
    return self._params[index]


def _setup(dataset, tmp_path):
  model = models.create_model(MODEL, IMAGE_SHAPE)
  x = np.zeros((1, *IMAGE_SHAPE), np.float32)
  params = [model.init({"params": jax.random.key(s), "sample": jax.random.key(s + 10)},
                       x)["params"] for s in range(2)]
  batches = [dataset.get_batch("test", 0, EVAL_BATCH, rng.EVAL_DATA_SEED)]
  config = config_lib.base_config()
  setup = evaluators.Setup(model, dataset, config, [0, 1], [{}, {}],
                           [tmp_path / "m0", tmp_path / "m1"], lambda: batches)
  return setup, params


def test_a_type_registered_in_code_is_built_by_name_and_checks_its_keys(
    clean_registry, tmp_path):
  del clean_registry

  @evaluators.register("pixel_stats")
  class PixelStats(evaluators.Evaluator):
    """The mean held-out pixel and each model's squared parameter norm (via ``params``)."""

    def __init__(self, name, group, setup, requested=False):
      super().__init__(name, group, setup, requested)
      self.num_batches = base.config_int(group, "num_batches", f"evals.{name}")

    def evaluate(self, stack, step):
      images = np.concatenate([b["image"] for b in self.setup.held_out()[: self.num_batches]])
      return [{"mean_pixel": float(images.mean()),
               "param_sq": float(sum(np.sum(np.square(leaf))
                                     for leaf in jax.tree.leaves(stack.params(m))))}
              for m in range(len(self.setup.seeds))]

  dataset = tiny_dataset()
  setup, params = _setup(dataset, tmp_path)
  built = evaluators.build({"stats": {**SCHEMA_ENTRY, "at_end": True}}, setup)
  assert [type(e) for e in built] == [PixelStats] and built[0].due(7, 7)
  rows = built[0](_Stack(params), step=7)
  for row, p in zip(rows, params):
    assert set(row) == {"stats/mean_pixel", "stats/param_sq"}
    np.testing.assert_allclose(row["stats/mean_pixel"], _held_out_images(dataset).mean(),
                               rtol=1e-6)
    reference = sum(float(np.sum(np.asarray(leaf, np.float64) ** 2))
                    for leaf in jax.tree.leaves(p))
    np.testing.assert_allclose(row["stats/param_sq"], reference, rtol=1e-5)  # float32 sum

  with pytest.raises(evaluators.EvaluationError,
                     match=r"Config evals.stats.num_batches=0 must be an int >= 1"):
    evaluators.build({"stats": {**SCHEMA_ENTRY, "num_batches": 0}}, setup)
  with pytest.raises(ValueError, match="already registered"):
    evaluators.register("pixel_stats")(PixelStats)


def test_an_unknown_type_names_the_known_ones(tmp_path):
  setup, _ = _setup(tiny_dataset(), tmp_path)
  with pytest.raises(evaluators.EvaluationError,
                     match=r"evals.x.type='nope' is not an evaluator type; known: .*elbo"):
    evaluators.build({"x": {"type": "nope", "every": 0, "at_end": False}}, setup)
