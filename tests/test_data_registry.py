"""The registry, config validation, deterministic random access and exact resume."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import ml_collections
import numpy as np
import pytest

from vaejax import data
from vaejax.data import arrays, base

N = 50


def _indexed_dataset(n: int = N, **kwargs) -> data.ArrayDataset:
  """A dataset whose "factors" column is the row index, to see which rows a batch holds."""
  images = (np.arange(n)[:, None, None, None] * np.ones((1, 2, 2, 1))).astype(np.uint8)
  split = arrays.SplitArrays(images, max_value=255.0, labels=np.arange(n) % 10,
                             factors=np.arange(n)[:, None])
  return data.ArrayDataset("indexed", {"train": split, "test": split}, image_shape=(2, 2, 1),
                           num_classes=10, **kwargs)


def _rows(batch) -> list[int]:
  return batch["factors"][:, 0].tolist()


# ----------------------------------------------------------------------------- registry


def test_known_names():
  assert {"dsprites_procedural", "dsprites", "mnist", "binarized_mnist", "mnist_npz",
          "mnist_idx", "binarized_mnist_amat"} <= set(data.DATASETS)


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(KeyError) as info:
    data.load({"name": "cifar"})
  assert isinstance(info.value, ValueError)
  assert "Unknown dataset 'cifar'" in str(info.value)
  for name in data.DATASETS:
    assert name in str(info.value)


@pytest.mark.parametrize("config, match", [
    ({}, "needs a 'name'"),
    ({"name": "dsprites_procedural", "colour": 1}, "Unknown data config key 'colour'"),
    ({"name": "dsprites_procedural", "path": "x.npz"}, "'path' does not apply"),
    ({"name": "mnist", "test_fraction": 0.1}, "'test_fraction' does not apply"),
    ({"name": "dsprites_procedural", "binarize": "sometimes"}, "binarize must be one of"),
    ({"name": "dsprites_procedural", "split": "test"}, "no split 'test'.*\\['train'\\]"),
    ({"name": "dsprites_procedural", "seed": -1}, "seed=-1 must be an int >= 0"),
    ({"name": "dsprites_procedural", "seed": 2**32},
     "seed=4294967296 must be an int >= 0 and <= 4294967295"),
    ({"name": "dsprites_procedural", "batch_size": 0}, "batch_size=0 must be an int >= 1"),
    ({"name": "dsprites_procedural", "batch_size": 2.0}, "batch_size=2.0 must be an int"),
])
def test_bad_configs(config, match):
  with pytest.raises(ValueError, match=match):
    data.load(config)


def test_config_must_be_a_mapping():
  with pytest.raises(TypeError, match="Mapping or ConfigDict"):
    data.load(["dsprites_procedural"])


def test_none_values_count_as_absent_and_configdict_works():
  config = ml_collections.ConfigDict({
      "name": "dsprites_procedural", "path": None, "data_dir": None, "test_fraction": None,
      "binarize": "none", "split": "train", "batch_size": 8, "seed": 3})
  ds = data.load(config)
  assert isinstance(ds, data.ProceduralDSprites)
  assert dict(ds.config) == {"name": "dsprites_procedural", "binarize": "none",
                             "split": "train", "batch_size": 8, "seed": 3}


def test_register_a_new_dataset():
  @data.register("indexed_for_test")
  def indexed(*, size: int = N):
    return _indexed_dataset(size)

  try:
    ds = data.load({"name": "indexed_for_test", "size": 20, "batch_size": 20})
    assert ds.num_examples("train") == 20
    with pytest.raises(ValueError, match="batch_size 21 exceeds the 20 examples"):
      data.load({"name": "indexed_for_test", "size": 20, "batch_size": 21})
    with pytest.raises(ValueError, match="already registered"):
      data.register("indexed_for_test")(indexed)
  finally:
    del data.DATASETS["indexed_for_test"]


# ----------------------------------------------------------------------------- random access


def test_each_epoch_is_a_fresh_permutation_with_the_remainder_dropped():
  ds, batch_size = _indexed_dataset(), 8  # 6 steps per epoch, 2 rows dropped
  epochs = [[r for step in range(6 * e, 6 * e + 6)
             for r in _rows(ds.get_batch("train", step, batch_size, seed=1))] for e in range(3)]
  for rows in epochs:
    assert len(rows) == len(set(rows)) == 48 and set(rows) <= set(range(N))
  assert epochs[0] != epochs[1] != epochs[2]
  np.testing.assert_array_equal(
      np.concatenate([ds.get_batch("train", s, batch_size, 1)["image"] for s in range(6)])[
          :, 0, 0, 0], np.array(epochs[0], np.float32) / np.float32(255))


def test_seeds_and_splits_give_different_orders():
  ds = _indexed_dataset()
  a = _rows(ds.get_batch("train", 0, 20, seed=0))
  assert a == _rows(ds.get_batch("train", 0, 20, seed=0))
  assert a != _rows(ds.get_batch("train", 0, 20, seed=1))
  assert a != _rows(ds.get_batch("test", 0, 20, seed=0))


def test_permutation_matches_an_independent_reference():
  # perm_e = default_rng(SeedSequence([seed, crc32(purpose), crc32(split), e])).permutation(N)
  ds = _indexed_dataset()
  ss = np.random.SeedSequence([7, base.stream_id("permutation"), base.stream_id("train"), 2])
  expected = np.random.default_rng(ss).permutation(N)[10:20]
  assert _rows(ds.get_batch("train", 2 * 5 + 1, 10, seed=7)) == expected.tolist()


@hypothesis.settings(deadline=None, max_examples=30)
@hypothesis.given(steps=st.lists(st.integers(0, 40), min_size=1, max_size=12),
                  seed=st.integers(0, 2**32 - 1), batch_size=st.integers(1, N))
def test_random_access_has_no_hidden_state(steps, seed, batch_size):
  fresh, used = _indexed_dataset(), _indexed_dataset()
  for step in sorted(steps, reverse=True):  # warm caches in another order
    used.get_batch("train", step, batch_size, seed)
  for step in steps:
    assert _rows(used.get_batch("train", step, batch_size, seed)) == _rows(
        fresh.get_batch("train", step, batch_size, seed))


def test_iterator_resumes_exactly():
  ds = _indexed_dataset()
  it = ds.iterator("train", batch_size=16, seed=4)
  first = [next(it) for _ in range(5)]
  assert it.position == 5
  rest = [next(it) for _ in range(4)]
  resumed = ds.iterator("train", batch_size=16, seed=4, start_step=it.position - 4)
  for a, b in zip(rest, [next(resumed) for _ in range(4)]):
    assert _rows(a) == _rows(b)
  assert [_rows(b) for b in first] == [
      _rows(ds.get_batch("train", s, 16, 4)) for s in range(5)]


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "val"}, "no split 'val'"),
    ({"batch_size": N + 1}, "exceeds the 50 examples"),
    ({"start_step": -1}, "start_step=-1 must be an int >= 0"),
    ({"seed": 1.5}, "seed=1.5 must be an int"),
])
def test_iterator_bad_arguments(kwargs, match):
  args = {"split": "train", "batch_size": 8, "seed": 0, **kwargs}
  with pytest.raises(ValueError, match=match):
    _indexed_dataset().iterator(**args)


def test_get_batch_bad_arguments():
  ds = _indexed_dataset()
  with pytest.raises(ValueError, match="step=-1 must be an int >= 0"):
    ds.get_batch("train", -1, 4, 0)
  with pytest.raises(ValueError, match="no split"):
    ds.get_batch("valid", 0, 4, 0)
  assert data.DATASETS["mnist_npz"] is not None  # registry unaffected by bad calls


# ----------------------------------------------------------------------------- binarisation


def _grey_dataset(binarize: str, binarize_seed: int = 0, value: int = 77) -> data.ArrayDataset:
  images = np.full((40, 16, 16, 1), value, np.uint8)
  images[:, 0, 0, 0], images[:, 0, 1, 0] = 0, 255  # exact 0 and 1 stay as they are
  split = arrays.SplitArrays(images, max_value=255.0, labels=np.zeros(40, np.int64))
  return data.ArrayDataset("grey", {"train": split}, image_shape=(16, 16, 1), num_classes=10,
                           binarize=binarize, binarize_seed=binarize_seed)


def _bernoulli_mean_ok(images: np.ndarray, p: float) -> bool:
  x = images[:, 1:, :, 0]  # skip the row holding the fixed 0/1 pixels
  return abs(x.mean() - p) < 5 * np.sqrt(p * (1 - p) / x.size)


def test_binarize_none_and_threshold():
  none = _grey_dataset("none").get_batch("train", 0, 4, 0)["image"]
  np.testing.assert_allclose(none[:, 5, 5, 0], 77 / 255)
  thr = _grey_dataset("threshold", value=128).get_batch("train", 0, 4, 0)["image"]
  assert (thr[:, 5:, :, 0] == 1).all() and thr[0, 0, 0, 0] == 0
  assert (_grey_dataset("threshold", value=127).get_batch("train", 0, 4, 0)["image"][
      :, 5:] == 0).all()


def test_binarize_static_is_fixed_for_every_run():
  ds = _grey_dataset("static")
  a = ds.get_batch("train", 0, 40, seed=0)
  b = ds.get_batch("train", 3, 40, seed=9)  # another run: other order, same pixels per row
  image_sets = [{img.tobytes() for img in x["image"]} for x in (a, b)]
  assert image_sets[0] == image_sets[1]
  assert set(np.unique(a["image"]).tolist()) == {0.0, 1.0}
  assert (a["image"][:, 0, 0] == 0).all() and (a["image"][:, 0, 1] == 1).all()
  assert _bernoulli_mean_ok(a["image"], 77 / 255)
  other = _grey_dataset("static", binarize_seed=1).get_batch("train", 0, 40, seed=0)
  assert {img.tobytes() for img in other["image"]} != image_sets[0]


def test_binarize_dynamic_is_keyed_by_seed_and_step():
  ds = _grey_dataset("dynamic")
  a = ds.get_batch("train", 0, 40, seed=0)["image"]
  np.testing.assert_array_equal(a, _grey_dataset("dynamic").get_batch("train", 0, 40, 0)["image"])
  b = ds.get_batch("train", 1, 40, seed=0)["image"]  # next epoch: fresh draws
  assert {x.tobytes() for x in a} != {x.tobytes() for x in b}
  assert set(np.unique(a).tolist()) == {0.0, 1.0}
  assert (a[:, 0, 0] == 0).all() and (a[:, 0, 1] == 1).all()
  assert _bernoulli_mean_ok(a, 77 / 255) and _bernoulli_mean_ok(b, 77 / 255)
