"""The bridge from a trained VAE to the disentanglement metrics.

:mod:`vaejax.evaluation.representation` (the encoder mean as a representation function,
the metric presets) against computations written here, then the ``disentanglement``
evaluator of the training loop on a tiny sweep over a fake ground truth: its
``disentanglement.json`` per model, its cache, and its refusals before compiling.
"""

import json
import shutil
from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaejax import config as config_lib
from vaejax import data, models
from vaejax.evaluation import disentanglement
from vaejax.evaluation import evaluators
from vaejax.evaluation import representation as rep
from vaejax.training import checkpoint, loop, writers

SIZE = 16
SHAPE = (SIZE, SIZE, 1)
FACTOR_SIZES = (4, 4)


class BlockGroundTruth:
  """16×16 images with two factors: a 4-row band in the left half (factor 0) and one in the
  right half (factor 1), each at rows 4·f … 4·f + 3."""

  factor_sizes = FACTOR_SIZES
  observation_shape = SHAPE

  def sample_factors(self, num, rng):
    return rng.integers(0, FACTOR_SIZES, size=(num, 2))

  def sample_observations_from_factors(self, factors, rng):
    del rng
    factors = np.asarray(factors)
    rows = np.arange(SIZE)[None, :]
    x = np.zeros((len(factors), SIZE, SIZE, 1), np.float32)
    x[:, :, :8, 0] = (rows // 4 == factors[:, :1])[:, :, None]
    x[:, :, 8:, 0] = (rows // 4 == factors[:, 1:])[:, :, None]
    return x

  def sample(self, num, rng):
    factors = self.sample_factors(num, rng)
    return factors, self.sample_observations_from_factors(factors, rng)


class LinearEncoder(nn.Module):
  """A stand-in VAE whose encoder mean is a linear map of the pixels."""

  image_shape: tuple = SHAPE
  latent_dim: int = 3

  @nn.compact
  def encode(self, x, labels=None):
    del labels
    w = self.param("w", nn.initializers.zeros, (SIZE * SIZE, self.latent_dim))
    b = self.param("b", nn.initializers.zeros, (self.latent_dim,))
    mean = x.reshape(x.shape[0], -1) @ w + b
    return mean, jnp.zeros_like(mean)


def factor_reading_params():
  """Weights with codes (f0, f1, 0): the band's mean row index, shifted and scaled.

  A band at rows 4f..4f+3 over 8 columns has Σ row = 8·(16f + 6) = 128f + 48.
  """
  rows = np.repeat(np.arange(SIZE), SIZE).reshape(SIZE, SIZE).astype(np.float32)
  left = np.zeros((SIZE, SIZE), np.float32)
  left[:, :8] = rows[:, :8] / 128
  right = np.zeros((SIZE, SIZE), np.float32)
  right[:, 8:] = rows[:, 8:] / 128
  w = np.stack([left.ravel(), right.ravel(), np.zeros(SIZE * SIZE, np.float32)], axis=1)
  return {"w": jnp.asarray(w), "b": jnp.asarray([-48 / 128, -48 / 128, 0.0])}


@pytest.fixture(scope="module")
def mlp():
  model = models.create_model(
      {"name": "mlp_vae", "hidden_sizes": (8,), "latent_dim": 3}, SHAPE)
  params = model.init({"params": jax.random.key(0), "sample": jax.random.key(1)},
                      jnp.zeros((1, *SHAPE)))["params"]
  return model, params


def _images(n, seed=0):
  return np.random.default_rng(seed).uniform(size=(n, *SHAPE)).astype(np.float32)


@pytest.mark.parametrize("n,batch_size", [(1, 4), (4, 4), (10, 4), (7, 256)])
def test_representation_fn_is_the_encoder_mean_in_padded_chunks(mlp, n, batch_size):
  model, params = mlp
  x = _images(n)
  expected, _ = model.apply({"params": params}, jnp.asarray(x), method="encode")  # one call
  codes = rep.make_representation_fn(model, params, batch_size=batch_size)(x)
  chex.assert_shape(codes, (n, 3))
  chex.assert_trees_all_close(codes, np.asarray(expected), atol=1e-5)


def test_representation_fn_accepts_images_without_a_channel_axis(mlp):
  model, params = mlp
  fn = rep.make_representation_fn(model, params, batch_size=8)
  x = _images(5)
  chex.assert_trees_all_close(fn(x[..., 0]), fn(x))


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 8, 8, 1)), r"observations must have shape \(N >= 1, 16, 16, 1\)"),
    (np.zeros((0, *SHAPE)), r"observations must have shape"),
    (np.full((2, *SHAPE), np.nan), r"finite and in \[0, 1\]; observations\(0, 0, 0, 0\) = nan"),
    (np.full((2, *SHAPE), 2.0), r"finite and in \[0, 1\].*= 2.0"),
])
def test_representation_fn_rejects_bad_observations(mlp, bad, match):
  model, params = mlp
  with pytest.raises(ValueError, match=match):
    rep.make_representation_fn(model, params)(bad)


def test_conditional_models_and_bad_batch_sizes_are_rejected(mlp):
  cvae = models.create_model({"name": "mlp_cvae", "hidden_sizes": (8,)}, SHAPE, num_classes=3)
  with pytest.raises(ValueError, match="conditional"):
    rep.make_representation_fn(cvae, {})
  with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
    rep.make_representation_fn(mlp[0], mlp[1], batch_size=0)


def test_evaluate_disentanglement_equals_evaluate_all_on_the_same_codes():
  model, params = LinearEncoder(), factor_reading_params()
  gt = BlockGroundTruth()
  got = rep.evaluate_disentanglement(model, params, gt, seed=3, preset="test")

  def reference(observations):  # the same codes, computed in numpy
    flat = np.asarray(observations).reshape(len(observations), -1)
    return flat @ np.asarray(params["w"]) + np.asarray(params["b"])

  overrides = {name: {**kw, "chunk_size": rep.DEFAULT_BATCH_SIZE}
               for name, kw in rep.METRIC_PRESETS["test"].items()}
  expected = disentanglement.evaluate_all(gt, reference, seed=3, **overrides)
  assert got.keys() == expected.keys()
  chex.assert_trees_all_close(got, expected, atol=1e-6)


def test_an_encoder_that_reads_the_factors_scores_at_the_ceiling():
  model, params = LinearEncoder(), factor_reading_params()
  codes = rep.make_representation_fn(model, params)(
      BlockGroundTruth().sample_observations_from_factors(np.array([[0, 3], [2, 1]]), None))
  chex.assert_trees_all_close(codes, np.array([[0, 3, 0], [2, 1, 0]], np.float32), atol=1e-5)
  scores = rep.evaluate_disentanglement(model, params, BlockGroundTruth(), preset="test",
                                        metrics=("beta_vae", "factor_vae", "mig"))
  assert scores["beta_vae/eval_accuracy"] == 1.0
  assert scores["factor_vae/eval_accuracy"] == 1.0
  assert scores["factor_vae/num_active_dims"] == 2.0  # the constant code is pruned
  assert scores["mig/discrete_mig"] > 0.9


@pytest.mark.parametrize("kwargs,match", [
    ({"preset": "fast"}, r"Unknown disentanglement preset 'fast'; known presets: \['cpu', "),
    ({"metrics": ("mig", "irs")}, r"Unknown disentanglement metric\(s\) \['irs'\]"),
    ({"dci_typo": {}}, r"Unknown metric 'dci_typo' in overrides"),
])
def test_evaluate_disentanglement_rejects_unknown_names(kwargs, match):
  with pytest.raises(ValueError, match=match):
    rep.evaluate_disentanglement(LinearEncoder(), factor_reading_params(), BlockGroundTruth(),
                                 **kwargs)


def test_evaluate_disentanglement_rejects_a_ground_truth_of_another_shape():
  gt = disentanglement.FactorGridGroundTruth((3, 3))
  with pytest.raises(ValueError, match=r"observations of shape \(2,\); the model takes "
                                       r"\(16, 16, 1\)"):
    rep.evaluate_disentanglement(LinearEncoder(), factor_reading_params(), gt)


def test_describe_preset_names_the_counts():
  assert rep.describe_preset("dlib") == "disentanglement_lib metric sample counts"
  text = rep.describe_preset("cpu")
  assert "BetaVAE 500/250" in text and "MIG 5000" in text and "DCI 3000/1500" in text


# ----------------------------------------------------------------------------- the evaluator


def block_dataset(ground_truth=True, num_classes=None):
  """Every factor combination three times (48 images) in train and test, like a tiny
  dSprites file; with ``ground_truth`` the metrics can draw from :class:`BlockGroundTruth`."""
  gt = BlockGroundTruth()
  factors = np.stack(np.meshgrid(range(4), range(4), indexing="ij"), -1).reshape(16, 2)
  factors = np.concatenate([factors] * 3)
  images = gt.sample_observations_from_factors(factors, None)
  labels = factors[:, 0].astype(np.int32) if num_classes else None
  split = data.SplitArrays(images, 1.0, labels=labels, factors=factors, binary=True)
  return data.ArrayDataset("blocks", {"train": split, "test": split}, image_shape=SHAPE,
                           num_classes=num_classes, ground_truth=gt if ground_truth else None)


METRICS = ("mig",)
DIS_SEED = 2


def tiny_config():
  config = config_lib.base_config()
  config.model.update({"name": "mlp_vae", "hidden_sizes": (8,), "latent_dim": 3})
  config.data.name = "dsprites"  # nominal: the tests pass the dataset in
  config.num_steps, config.batch_size, config.learning_rate = 4, 8, 1e-2
  config.log_every, config.checkpoint_every = 2, 2
  config.eval.num_batches, config.eval.batch_size = 1, 16
  config.evals.elbo.every, config.evals.elbo.at_end = 0, False
  config.evals.figures.at_end = False
  config.evals.disentanglement.update(
      {"at_end": True, "preset": "test", "seed": DIS_SEED, "metrics": METRICS})
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Two models (seeds 0 and 1), scored at their last step (4; checkpoints at 2 and 4)."""
  workdir = tmp_path_factory.mktemp("sweep")
  loop.train(tiny_config(), workdir, grid=["seed=0,1"], dataset=block_dataset(),
             progress=False, write_report=False)
  return workdir


def model_params(workdir, index):
  """Model ``index``'s parameters from the newest checkpoint on disk."""
  state, _, step = checkpoint.restore_state(Path(workdir) / checkpoint.CHECKPOINT_DIR)
  assert step == 4
  return jax.tree.map(lambda x: np.asarray(x)[index], state["models"]["params"])


def scores_file(workdir, index):
  return Path(workdir) / "models" / f"m{index:03d}" / "disentanglement.json"


def test_each_model_is_scored_from_the_newest_checkpoint(trained):
  model = models.create_model(tiny_config().model, SHAPE)
  with checkpoint.Checkpointer(trained / checkpoint.CHECKPOINT_DIR) as ckpt:
    assert ckpt.all_steps() == [2, 4]
  results = writers.read_jsonl(trained / loop.RESULTS_FILE)
  for m in range(2):
    saved = json.loads(scores_file(trained, m).read_text())
    assert (saved["step"], saved["preset"], saved["seed"], saved["metrics"]) == (
        4, "test", DIS_SEED, list(METRICS))
    assert saved["data"] == "blocks"
    assert saved["preset_description"] == rep.describe_preset("test")
    assert saved["sample_counts"] == {"mig": {"num_train": 200}}
    expected = rep.evaluate_disentanglement(model, model_params(trained, m), BlockGroundTruth(),
                                            seed=DIS_SEED, preset="test", metrics=METRICS)
    assert saved["scores"].keys() == expected.keys()
    chex.assert_trees_all_close(saved["scores"], expected, atol=1e-6)
    # The loop logs the scores under the evaluator's name.
    assert results[m]["disentanglement/mig/discrete_mig"] == saved["scores"]["mig/discrete_mig"]
  assert not (trained / "disentanglement.json").exists()  # a sweep: per model only


@pytest.fixture
def counted(monkeypatch):
  """Replaces evaluate_disentanglement by a fake that records its calls."""
  calls = []

  def fake(model, params, ground_truth, seed=0, preset="dlib", *, metrics=None, **kwargs):
    del model, ground_truth, kwargs
    calls.append({"params": params, "seed": seed, "preset": preset, "metrics": tuple(metrics)})
    return {"mig/discrete_mig": 0.5}

  monkeypatch.setattr(rep, "evaluate_disentanglement", fake)
  return calls


@pytest.fixture
def workdir(trained, tmp_path):
  """A copy of the trained sweep that a test may change."""
  shutil.copytree(trained, tmp_path / "w")
  return tmp_path / "w"


def test_an_up_to_date_file_is_reused(workdir, counted):
  before = [scores_file(workdir, m).read_text() for m in range(2)]
  results = loop.evaluate_workdir(workdir, ["disentanglement"], dataset=block_dataset())
  assert counted == []
  assert [r["disentanglement"] for r in results] == [json.loads(b)["scores"] for b in before]
  assert [r["step"] for r in results] == [4, 4]
  assert [scores_file(workdir, m).read_text() for m in range(2)] == before


@pytest.mark.parametrize("change,overrides,stale", [
    ("step", None, [1]),  # model 1's file is from an older checkpoint
    ("seed", {"seed": 5}, [0, 1]),
    ("preset", {"preset": "cpu"}, [0, 1]),
    ("metrics", {"metrics": ("mig", "sap")}, [0, 1]),
])
def test_a_file_from_another_step_or_settings_is_recomputed(workdir, counted, change, overrides,
                                                            stale):
  if change == "step":
    path = scores_file(workdir, 1)
    path.write_text(json.dumps({**json.loads(path.read_text()), "step": 2}))
  results = loop.evaluate_workdir(workdir, ["disentanglement"], dataset=block_dataset(),
                                  overrides=None if overrides is None
                                  else {"disentanglement": overrides})
  assert len(counted) == len(stale)
  settings = {"seed": DIS_SEED, "preset": "test", "metrics": METRICS}
  settings.update({k: tuple(v) if k == "metrics" else v for k, v in (overrides or {}).items()})
  for call, m in zip(counted, stale):
    assert {k: call[k] for k in settings} == settings
    chex.assert_trees_all_equal(call["params"], model_params(workdir, m))  # its own model
    saved = json.loads(scores_file(workdir, m).read_text())
    assert saved["scores"] == {"mig/discrete_mig": 0.5} and saved["step"] == 4
    assert (saved["seed"], saved["preset"], saved["metrics"]) == (
        settings["seed"], settings["preset"], list(settings["metrics"]))
    assert results[m]["disentanglement"] == {"mig/discrete_mig": 0.5}


@pytest.mark.parametrize("model,dataset,match", [
    ("mlp_vae", lambda: block_dataset(ground_truth=False),
     r"evals.disentanglement \(disentanglement\) needs a dataset with ground-truth factors "
     r"\(dsprites, dsprites_procedural\); 'blocks' has none"),
    ("mlp_cvae", lambda: block_dataset(num_classes=4),
     r"encodes observations without labels; model 'mlp_cvae' is conditional"),
], ids=["no ground truth", "conditional"])
def test_the_evaluator_refuses_before_compiling(model, dataset, match, tmp_path, no_compiling):
  config = tiny_config()
  config.model.name = model
  with pytest.raises(evaluators.EvaluationError, match=match) as info:
    loop.train(config, tmp_path / "w", grid=["seed=0,1"], dataset=dataset(), progress=False)
  assert "\n" not in str(info.value)
  assert not (tmp_path / "w").exists()


def test_evaluating_a_run_on_data_without_ground_truth_is_refused(workdir, no_compiling):
  saved = json.loads((workdir / loop.CONFIG_FILE).read_text())
  saved["evals"]["disentanglement"]["at_end"] = False  # not scored during training
  (workdir / loop.CONFIG_FILE).write_text(json.dumps(saved))
  for m in range(2):
    scores_file(workdir, m).unlink()
  with pytest.raises(evaluators.EvaluationError, match="ground-truth factors"):
    loop.evaluate_workdir(workdir, ["disentanglement"],
                          dataset=block_dataset(ground_truth=False))
