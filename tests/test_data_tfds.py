"""TFDS adapters, offline and without TensorFlow.

Each test dataset is *prepared for real* by a local builder that carries the
registered TFDS builder's name, version and feature spec and writes ArrayRecord
files (images encoded to PNG with Pillow, so TensorFlow is not needed). vaejax
then reads it through the public TFDS API (`tfds.builder(name, data_dir=...)`,
`as_data_source`) exactly as it would read a real prepared dataset. What is not
covered: the TFRecord fallback (`as_dataset`, needs TensorFlow) beyond its error.
"""

from __future__ import annotations

import io
import json

import chex
import numpy as np
import pytest

from vaejax import data
from vaejax.data import dsprites, tfds_io

tfds = pytest.importorskip("tensorflow_datasets")
PIL_Image = pytest.importorskip("PIL.Image", reason="Pillow encodes the PNGs")

SIZES = {
    "mnist": {"train": 24, "test": 8},
    "binarized_mnist": {"train": 20, "validation": 6, "test": 7},
    "dsprites": {"train": 40},
}


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  PIL_Image.fromarray(image[..., 0]).save(buf, format="png")
  return buf.getvalue()


def _examples(name: str, split: str, n: int) -> list[dict]:
  rng = np.random.default_rng([len(name), len(split)])
  if name == "mnist":
    return [{"image": rng.integers(0, 256, (28, 28, 1), dtype=np.uint8),
             "label": int(rng.integers(10))} for _ in range(n)]
  if name == "binarized_mnist":
    return [{"image": rng.integers(0, 2, (28, 28, 1), dtype=np.uint8)} for _ in range(n)]
  classes = dsprites.classes_of(rng.choice(dsprites.NUM_IMAGES, n, replace=False))
  images = dsprites.render_numpy(classes).astype(np.uint8)
  values = dsprites.factor_values(classes).astype(np.float32)
  names = ("shape", "scale", "orientation", "x_position", "y_position")
  return [{"image": img, **{f"label_{k}": int(c[i + 1]) for i, k in enumerate(names)},
           **{f"value_{k}": v[i + 1] for i, k in enumerate(names)}}
          for img, c, v in zip(images, classes, values)]


def _prepare(name: str, data_dir: str, examples: dict[str, list[dict]]) -> None:
  """Prepares `name` in `data_dir` as ArrayRecord with the registered feature spec."""
  features = tfds.builder(name, data_dir=data_dir).info.features

  class Local(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.builder_cls(name).VERSION

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in examples}

    def _generate_examples(self, split):
      for i, ex in enumerate(examples[split]):
        yield i, {**ex, "image": _png(ex["image"])}

  Local.name = name
  Local(data_dir=data_dir, file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("tfds"))
  sources = {}
  for name, splits in SIZES.items():
    sources[name] = {s: _examples(name, s, n) for s, n in splits.items()}
    _prepare(name, root, sources[name])
  return root, sources


def _by_image(examples):
  return {ex["image"].tobytes(): ex for ex in examples}


def test_mnist_from_tfds(tfds_dir):
  root, sources = tfds_dir
  ds = data.load({"name": "mnist", "data_dir": root})
  assert ds.splits == ("train", "test") and ds.num_classes == 10
  assert ds.image_shape == (28, 28, 1)
  for split, n in SIZES["mnist"].items():
    assert ds.num_examples(split) == n
    index = _by_image(sources["mnist"][split])
    batch = ds.get_batch(split, 0, n, seed=0)  # the whole split
    chex.assert_shape(batch["image"], (n, 28, 28, 1))
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    keys = {np.round(img * 255).astype(np.uint8).tobytes() for img in batch["image"]}
    assert keys == set(index)  # every source image once, scaled by 1/255
    for img, label in zip(batch["image"], batch["label"]):
      assert index[np.round(img * 255).astype(np.uint8).tobytes()]["label"] == label


def test_binarized_mnist_from_tfds(tfds_dir):
  root, sources = tfds_dir
  ds = data.load({"name": "binarized_mnist", "data_dir": root, "binarize": "dynamic"})
  assert ds.splits == ("train", "validation", "test") and ds.num_classes is None
  batch = ds.get_batch("validation", 3, 6, seed=1)
  assert set(batch) == {"image"}
  index = _by_image(sources["binarized_mnist"]["validation"])
  for img in batch["image"]:  # already binary: dynamic binarisation leaves it unchanged
    assert img.astype(np.uint8).tobytes() in index


def test_dsprites_from_tfds(tfds_dir):
  root, _ = tfds_dir
  ds = data.load({"name": "dsprites", "data_dir": root, "test_fraction": 0})
  assert ds.splits == ("train",) and ds.num_examples("train") == 40
  batch = ds.get_batch("train", 1, 16, seed=2)
  np.testing.assert_array_equal(batch["image"], dsprites.render_numpy(batch["factors"]))
  arrays = dsprites.load_tfds(root)
  np.testing.assert_allclose(arrays.values, dsprites.factor_values(arrays.classes), atol=1e-6)
  obs = ds.ground_truth.sample_observations_from_factors(batch["factors"][:3],
                                                        np.random.default_rng(0))
  np.testing.assert_array_equal(obs, batch["image"][:3])


@pytest.mark.parametrize("name", ["mnist", "binarized_mnist", "dsprites"])
def test_not_prepared_is_a_clear_error(name, tmp_path):
  with pytest.raises(FileNotFoundError, match=f"'{name}' is not prepared in {tmp_path}"):
    data.load({"name": name, "data_dir": str(tmp_path)})


def test_missing_split_is_a_clear_error(tfds_dir):
  with pytest.raises(ValueError, match="no split 'validation'.*\\['train', 'test'\\]"):
    data.load({"name": "mnist", "data_dir": tfds_dir[0], "split": "validation"})


def test_tfrecord_without_tensorflow_says_what_to_do():
  class TFRecordBuilder:  # what a TFRecord-prepared builder does without TensorFlow
    name, data_dir = "mnist", "/somewhere"

    def as_data_source(self, split):
      raise NotImplementedError("Random access data source for TFRECORD is not supported")

    def as_dataset(self, split, batch_size):
      raise ModuleNotFoundError("No module named 'tensorflow'")

  with pytest.raises(ImportError, match="TFRecord.*array_record"):
    tfds_io.read_split(TFRecordBuilder(), "train")


def test_split_announcing_more_examples_than_its_files_hold(tmp_path):
  _prepare("mnist", str(tmp_path), {s: _examples("mnist", s, 4) for s in ("train", "test")})
  (info_path,) = tmp_path.glob("mnist/*/dataset_info.json")
  info = json.loads(info_path.read_text())
  (train,) = [split for split in info["splits"] if split["name"] == "train"]
  train["shardLengths"] = [str(10**12)]  # a crafted or corrupt count
  info_path.write_text(json.dumps(info))
  with pytest.raises(ValueError, match="split 'train' announces 1000000000000 examples but its "
                     "1 file\\(s\\) hold \\d+ bytes"):
    data.load({"name": "mnist", "data_dir": str(tmp_path)})
  train["shardLengths"] = ["6"]  # more than the 4 records, fewer than the bytes
  info_path.write_text(json.dumps(info))
  with pytest.raises(ValueError, match="Could not read TFDS dataset 'mnist' split 'train'"):
    data.load({"name": "mnist", "data_dir": str(tmp_path)})
