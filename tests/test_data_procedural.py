"""Procedural dSprites: in-jit sampling, host batches, resume and the ground-truth API."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaejax import data
from vaejax.data import dsprites


@pytest.fixture(scope="module")
def ds():
  return data.load({"name": "dsprites_procedural"})


def test_metadata(ds):
  assert ds.name == "dsprites_procedural" and ds.splits == ("train",)
  assert ds.image_shape == (64, 64, 1) and ds.num_classes is None
  assert ds.num_examples("train") is None


def test_get_batch_equals_the_in_jit_sampler(ds):
  sampler = ds.jax_sampler("train")

  @jax.jit
  def train_step_like(key):  # sampling and rendering traced into one XLA program
    batch = sampler(key, 16)
    return batch, batch["image"].mean()

  batch, _ = train_step_like(ds.batch_key("train", 7, seed=3))
  host = ds.get_batch("train", 7, 16, seed=3)
  assert set(host) == {"image", "factors"}
  chex.assert_shape(host["image"], (16, 64, 64, 1))
  chex.assert_shape(host["factors"], (16, 5))
  assert host["image"].dtype == np.float32 and host["factors"].dtype == np.int32
  chex.assert_trees_all_equal(host, jax.device_get(batch))
  # and the images are the renders of the factors
  np.testing.assert_array_equal(host["image"], dsprites.render_numpy(host["factors"]))


def test_sampler_has_no_host_callbacks(ds):
  jaxpr = jax.make_jaxpr(lambda k: ds.jax_sampler("train")(k, 4))(jax.random.key(0))
  names = {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}
  assert not any("callback" in n for n in names), names


def test_batches_depend_on_seed_and_step_only(ds):
  a = ds.get_batch("train", 0, 32, seed=0)
  chex.assert_trees_all_equal(a, ds.get_batch("train", 0, 32, seed=0))
  assert not np.array_equal(a["factors"], ds.get_batch("train", 1, 32, seed=0)["factors"])
  assert not np.array_equal(a["factors"], ds.get_batch("train", 0, 32, seed=1)["factors"])
  it = ds.iterator("train", batch_size=32, seed=0, start_step=1)
  chex.assert_trees_all_equal(next(it), ds.get_batch("train", 1, 32, 0))
  assert it.position == 2


def test_batch_key_is_documented_fold_in(ds):
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(5), data.base.stream_id("train")), 9)
  np.testing.assert_array_equal(jax.random.key_data(ds.batch_key("train", 9, 5)),
                                jax.random.key_data(key))


def test_bad_split_and_step(ds):
  with pytest.raises(ValueError, match="no split 'test'"):
    ds.jax_sampler("test")
  with pytest.raises(ValueError, match="step=4294967296 must be an integer >= 0 and <= 4294967295"):
    ds.get_batch("train", 2**32, 4, 0)


# ----------------------------------------------------------------------------- ground truth


def test_ground_truth_interface(ds):
  gt = ds.ground_truth
  assert gt.factor_names == ("shape", "scale", "orientation", "pos_x", "pos_y")
  assert gt.factor_sizes == (3, 6, 40, 32, 32)
  assert gt.observation_shape == (64, 64, 1)
  factors, obs = gt.sample(50, np.random.default_rng(0))
  assert factors.dtype == np.int64 and factors.shape == (50, 5)
  assert obs.dtype == np.float32 and obs.shape == (50, 64, 64, 1)
  np.testing.assert_array_equal(obs, np.asarray(dsprites.render(jnp.asarray(factors))))
  again, _ = gt.sample(50, np.random.default_rng(0))
  np.testing.assert_array_equal(factors, again)


def test_sample_factors_uniform(ds):
  factors = ds.ground_truth.sample_factors(30000, np.random.default_rng(1))
  for i, size in enumerate(ds.ground_truth.factor_sizes):
    counts = np.bincount(factors[:, i], minlength=size)
    assert len(counts) == size
    expected = 30000 / size
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < size - 1 + 5 * np.sqrt(2 * (size - 1))


@pytest.mark.parametrize("factors, match", [
    (np.zeros((3, 6), int), "shape \\(num, 5\\)"),
    (np.array([[3, 0, 0, 0, 0]]), "'shape' must be in \\[0, 3\\)"),
    (np.array([[0, 0, 0, 0, 32]]), "'pos_y' must be in \\[0, 32\\)"),
    (np.zeros((2, 5)), "integer"),
])
def test_ground_truth_bad_factors(ds, factors, match):
  with pytest.raises(ValueError, match=match):
    ds.ground_truth.sample_observations_from_factors(factors, np.random.default_rng(0))


def test_ground_truth_needs_a_generator(ds):
  with pytest.raises(TypeError, match="numpy Generator"):
    ds.ground_truth.sample_factors(3, np.random.RandomState(0))
