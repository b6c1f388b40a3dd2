"""Readers of DeepMind's dSprites npz and HDF5 files, on small files in those layouts."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import chex
import numpy as np
import pytest

from vaejax import data
from vaejax.data import dsprites

N = 96


def _npy_bytes(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  np.save(buf, array)
  return buf.getvalue()


def _latin1_pickled_metadata(latents_sizes) -> bytes:
  """An .npy holding a 0-d object array whose dict has a Python-2 byte string.

  The original file was pickled by Python 2: its strings are byte strings that
  only decode with ``encoding="latin1"``. Pickle opcode BINUNICODE ('X') of a
  placeholder is swapped for SHORT_BINSTRING ('U') with a non-ASCII byte.
  """
  meta = np.empty((), dtype=object)
  meta[()] = {"title": "PLACEHOLDER", "latents_sizes": np.asarray(latents_sizes),
              "latents_names": dsprites.FACTOR_NAMES}
  payload = pickle.dumps(meta, protocol=2)
  old = b"X" + len(b"PLACEHOLDER").to_bytes(4, "little") + b"PLACEHOLDER"
  new_text = "dSprites \xa9 DeepMind".encode("latin1")
  assert payload.count(old) == 1
  payload = payload.replace(old, b"U" + bytes([len(new_text)]) + new_text)
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      buf, {"descr": "|O", "fortran_order": False, "shape": ()})
  return buf.getvalue() + payload


def _grid_rows(seed: int = 0):
  """N distinct factor rows in shuffled order, their renders, classes and values."""
  rng = np.random.default_rng(seed)
  index = rng.choice(dsprites.NUM_IMAGES, N, replace=False)
  classes = dsprites.classes_of(index)
  images = dsprites.render_numpy(classes)[..., 0].astype(np.uint8)
  return images, classes, dsprites.factor_values(classes)


def write_npz(path: Path, images, classes, values, *, latents_sizes=dsprites.FACTOR_SIZES,
              skip=()) -> Path:
  members = {"imgs": images, "latents_classes": classes, "latents_values": values}
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
    for key, array in members.items():
      if key not in skip:
        zf.writestr(f"{key}.npy", _npy_bytes(array))
    zf.writestr("metadata.npy", _latin1_pickled_metadata(latents_sizes))
  return path


def write_hdf5(path: Path, images, classes, values, *, skip=()) -> Path:
  h5py = pytest.importorskip("h5py")
  with h5py.File(path, "w") as f:
    for key, array in (("imgs", images), ("latents/classes", classes),
                       ("latents/values", values)):
      if key not in skip:
        f.create_dataset(key, data=array)
  return path


@pytest.fixture(scope="module")
def rows():
  return _grid_rows()


@pytest.fixture(scope="module")
def files(rows, tmp_path_factory):
  root = tmp_path_factory.mktemp("dsprites")
  return {"npz": write_npz(root / "d.npz", *rows), "hdf5": write_hdf5(root / "d.hdf5", *rows)}


@pytest.mark.parametrize("kind", ["npz", "hdf5"])
def test_reader_returns_the_original_arrays(files, rows, kind):
  arrays = dsprites.load_deepmind_file(files[kind])
  images, classes, values = rows
  np.testing.assert_array_equal(np.asarray(arrays.images[:]), images)
  np.testing.assert_array_equal(arrays.classes, classes)
  np.testing.assert_allclose(arrays.values, values)


def test_metadata_needs_latin1(files):
  with pytest.raises(UnicodeError):  # proves the fixture is a real Python-2 pickle
    np.load(files["npz"], allow_pickle=True)["metadata"]


@pytest.mark.parametrize("kind", ["npz", "hdf5"])
def test_dataset_from_file_serves_renders_of_its_factors(files, kind):
  # test_fraction=0: one split holding every image (disentanglement_lib's protocol)
  ds = data.load({"name": "dsprites", "path": str(files[kind]), "test_fraction": 0})
  assert ds.splits == ("train",) and ds.num_examples("train") == N
  assert ds.image_shape == (64, 64, 1) and ds.num_classes is None
  seen = []
  for step in range(3):  # one epoch of 3 batches of 32
    batch = ds.get_batch("train", step, 32, seed=5)
    chex.assert_shape(batch["image"], (32, 64, 64, 1))
    chex.assert_shape(batch["factors"], (32, 5))
    assert batch["image"].dtype == np.float32 and batch["factors"].dtype == np.int32
    np.testing.assert_array_equal(batch["image"], dsprites.render_numpy(batch["factors"]))
    seen.append(dsprites.index_of(batch["factors"]))
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.sort(
      dsprites.index_of(_grid_rows()[1])))


def test_npz_and_hdf5_give_identical_batches(files):
  a = data.load({"name": "dsprites", "path": files["npz"]})
  b = data.load({"name": "dsprites", "path": files["hdf5"]})
  for step in (0, 7):
    chex.assert_trees_all_equal(a.get_batch("train", step, 16, 3),
                                b.get_batch("train", step, 16, 3))


def test_ground_truth_lookup(files, rows):
  ds = data.load({"name": "dsprites", "path": files["hdf5"]})
  gt = ds.ground_truth
  assert gt.factor_sizes == (3, 6, 40, 32, 32) and not gt.complete
  factors = rows[1][[5, 0, 5, 17], 1:]  # repeated and unsorted rows
  obs = gt.sample_observations_from_factors(factors, np.random.default_rng(0))
  chex.assert_shape(obs, (4, 64, 64, 1))
  np.testing.assert_array_equal(obs, dsprites.render_numpy(factors))
  absent = np.setdiff1d(np.arange(N + 1), dsprites.index_of(rows[1]))[:1]
  with pytest.raises(KeyError, match="not in this dSprites file"):
    gt.sample_observations_from_factors(dsprites.classes_of(absent)[:, 1:],
                                        np.random.default_rng(0))


# ----------------------------------------------------------------------------- errors


def test_missing_file_says_where_and_how(tmp_path):
  path = tmp_path / "nope.npz"
  with pytest.raises(FileNotFoundError, match="nope.npz.*dsprites_procedural"):
    data.load({"name": "dsprites", "path": str(path)})


@pytest.mark.parametrize("writer", [write_npz, write_hdf5])
def test_missing_key(tmp_path, rows, writer):
  path = writer(tmp_path / f"f.{writer.__name__[6:]}", *rows, skip=("latents_values",) if
                writer is write_npz else ("latents/values",))
  with pytest.raises(ValueError, match="missing"):
    dsprites.load_deepmind_file(path)


@pytest.mark.parametrize("mutate, match", [
    (lambda i, c, v: (i[:, :32, :32], c, v), "shape"),
    (lambda i, c, v: (i * 255, c, v), "image values span"),
    (lambda i, c, v: (i, c[:, :5], v), "latents classes"),
    (lambda i, c, v: (i, c, v[:, [0, 1, 2, 3, 5, 4]]), "disagree .* 'pos_x'"),
    (lambda i, c, v: (i, c.astype(np.float64), v), "integers"),
])
def test_bad_contents(tmp_path, rows, mutate, match):
  path = write_npz(tmp_path / "bad.npz", *mutate(*rows))
  with pytest.raises(ValueError, match=match):
    data.load({"name": "dsprites", "path": path})


def test_metadata_is_never_read(tmp_path, rows):
  # The pickled metadata is not unpickled (the grid is the project's constants), so even
  # metadata that contradicts the grid leaves the arrays, checked on their own, loading.
  path = write_npz(tmp_path / "odd.npz", *rows, latents_sizes=(1, 3, 6, 40, 32, 16))
  np.testing.assert_array_equal(dsprites.load_deepmind_file(path).classes, rows[1])


@pytest.mark.parametrize("content, match", [
    (b"PK\x03\x04 truncated zip", "Could not read"),
    (b"\x89HDF\r\n\x1a\n broken", "Could not read"),
    (b"hello, not a dataset", "corrupt.npz is not an npz file \\(nor HDF5\\): it holds plain text"),
])
def test_corrupt_files(tmp_path, content, match):
  path = tmp_path / "corrupt.npz"
  path.write_bytes(content)
  with pytest.raises(ValueError, match=match):
    dsprites.load_deepmind_file(path)


def test_nan_values_are_called_nan(tmp_path, rows):
  images, classes, values = rows
  values = values.copy()
  values[[3, 7], 2] = np.nan  # column 2: scale
  path = write_npz(tmp_path / "nan.npz", images, classes, values)
  with pytest.raises(ValueError,
                     match="latents values are NaN in column 'scale' \\(2 of 96 rows\\)"):
    data.load({"name": "dsprites", "path": path})
  values[[3, 7], 2] = np.inf
  path = write_npz(tmp_path / "inf.npz", images, classes, values)
  with pytest.raises(ValueError, match="latents values are infinite in column 'scale'"):
    data.load({"name": "dsprites", "path": path})


def test_directory_as_path_says_so(tmp_path):
  with pytest.raises(ValueError) as info:
    data.load({"name": "dsprites", "path": str(tmp_path)})
  message = str(info.value)
  assert message.startswith(f"path must be the dSprites file itself; got the directory {tmp_path}")
  assert dsprites.DEEPMIND_FILENAME in message and "\n" not in message


def test_text_file_named_npz(tmp_path):
  path = tmp_path / "x.npz"
  path.write_text("imgs latents_classes latents_values\n")
  with pytest.raises(ValueError) as info:
    data.load({"name": "dsprites", "path": str(path)})
  message = str(info.value)
  assert message.startswith(f"{path} is not an npz file"), message
  assert "expected DeepMind's dSprites npz" in message and dsprites.DEEPMIND_FILENAME in message
  assert "\n" not in message and "pickle" not in message


def test_path_and_data_dir_together_is_an_error(files, tmp_path):
  with pytest.raises(ValueError, match="either path"):
    data.load({"name": "dsprites", "path": files["npz"], "data_dir": str(tmp_path)})
