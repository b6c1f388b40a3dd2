"""The bridge from a trained VAE to the disentanglement metrics (vaejax.evaluation.representation)."""

import json

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vaejax import checkpointing, models, train
from vaejax.evaluation import disentanglement
from vaejax.evaluation import representation as rep

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


# ----------------------------------------------------------------------------- evaluate_run


class FakeDataset:
  name = "blocks"
  image_shape = SHAPE
  num_classes = None
  ground_truth = BlockGroundTruth()


def _run_config(**disentanglement):
  config = ml_collections.ConfigDict({
      "seed": 0, "learning_rate": 1e-3,
      "model": {"name": "mlp_vae", "hidden_sizes": (8,), "latent_dim": 3},
      "optimizer": {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "warmup_steps": 0,
                    "grad_clip_norm": 0.0, "max_consecutive_skips": 10},
  })
  if disentanglement:
    config.disentanglement = rep.disentanglement_config(**disentanglement)
  return config


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """A run directory whose checkpoint (step 7) holds parameters unlike a fresh init."""
  workdir = tmp_path_factory.mktemp("run")
  config = _run_config()
  model = models.create_model(config.model, SHAPE)
  state = train.create_train_state(model, train.optimizer_from_config(config), 0, SHAPE)
  state = state.replace(params=jax.tree.map(lambda p: p + 0.5, state.params),
                        step=jnp.asarray(7, jnp.int32))
  with checkpointing.Checkpointer(workdir / checkpointing.CHECKPOINT_DIR) as ckpt:
    ckpt.save(7, state, {"step": 7})
  return workdir, model, state.params


def test_evaluate_run_scores_the_newest_checkpoint_and_caches(saved_run, monkeypatch):
  workdir, model, params = saved_run
  config = _run_config(preset="test", seed=2)
  result = rep.evaluate_run(config, workdir, dataset=FakeDataset(), metrics=("mig",),
                            force=True)
  expected = rep.evaluate_disentanglement(model, params, BlockGroundTruth(), seed=2,
                                          preset="test", metrics=("mig",))
  assert (result["step"], result["preset"], result["seed"]) == (7, "test", 2)
  chex.assert_trees_all_close(result["scores"], expected)
  on_disk = json.loads((workdir / rep.RESULTS_FILE).read_text())
  assert on_disk["scores"] == result["scores"] and on_disk["data"] == "blocks"

  def fail(*args, **kwargs):
    raise AssertionError("recomputed")

  monkeypatch.setattr(rep, "evaluate_disentanglement", fail)
  again = rep.evaluate_run(config, workdir, dataset=FakeDataset(), metrics=("mig",))
  assert again == result  # up to date: read back, not recomputed
  with pytest.raises(AssertionError, match="recomputed"):  # another seed: recomputed
    rep.evaluate_run(config, workdir, dataset=FakeDataset(), metrics=("mig",), seed=5)


def test_evaluate_run_takes_explicit_params(saved_run, tmp_path):
  params = saved_run[2]
  result = rep.evaluate_run(_run_config(), tmp_path, dataset=FakeDataset(), params=params,
                            step=3, preset="test", metrics=("mig",))
  assert result["step"] == 3 and (tmp_path / rep.RESULTS_FILE).exists()


def test_evaluate_run_errors(tmp_path, saved_run):
  config = _run_config(preset="test")
  with pytest.raises(FileNotFoundError, match="No checkpoints in .*: train the run first"):
    rep.evaluate_run(config, tmp_path / "empty", dataset=FakeDataset())

  class NoFactors(FakeDataset):
    ground_truth = None

  with pytest.raises(ValueError, match="'blocks' has no ground-truth factors"):
    rep.evaluate_run(config, saved_run[0], dataset=NoFactors())
  with pytest.raises(ValueError, match="Pass params and step together"):
    rep.evaluate_run(config, tmp_path, dataset=FakeDataset(), params=saved_run[2])
  with pytest.raises(ValueError, match="disentanglement seed must be an int >= 0, got -1"):
    rep.evaluate_run(config, saved_run[0], dataset=FakeDataset(), seed=-1)
  config.model.latent_dim = 4
  with pytest.raises(ValueError, match="parameters of another architecture than config.model"):
    rep.evaluate_run(config, saved_run[0], dataset=FakeDataset(), force=True)
