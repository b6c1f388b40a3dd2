"""The real dSprites file's held-out split, and the README's real-data command on a small
file in DeepMind's exact format (keys, dtypes, a pickled ``metadata`` dict)."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vaejax import data
from vaejax.data import dsprites

REPO = Path(__file__).resolve().parents[1]
N = 1600  # 1% held out = 16 images: the one eval batch of the :test preset
COMMAND = [sys.executable, "-m", "experiments.train",
           "--config=experiments/configs/betavae_dsprites.py:test", "--config.data.name=dsprites"]
TINY_MODEL = ["--config.model.name=mlp_vae", "--config.model.hidden_sizes=(16,)",
              "--config.model.latent_dim=3", "--config.evals.figures.at_end=False"]


def write_deepmind_npz(path: Path, n: int = N, order=None) -> Path:
  """``n`` rows of DeepMind's npz layout: imgs uint8 (n, 64, 64), latents_classes int64
  (n, 6), latents_values float64 (n, 6) in grid order (``order`` permutes the rows), and
  ``metadata``, a pickled dict in a 0-d object array, as in the original file."""
  rng = np.random.default_rng(0)
  classes = dsprites.classes_of(np.sort(rng.choice(dsprites.NUM_IMAGES, n, replace=False)))
  images = (rng.random((n, 64, 64)) < 0.1).astype(np.uint8)  # the format; not renders (fast)
  values = dsprites.factor_values(classes)
  if order is not None:
    images, classes, values = images[order], classes[order], values[order]
  metadata = {"title": "dSprites dataset", "version": 1, "date": "April 2017",
              "latents_names": ("color", "shape", "scale", "orientation", "posX", "posY"),
              "latents_sizes": np.array(dsprites.FACTOR_SIZES),
              "latents_possible_values": {"scale": np.linspace(0.5, 1, 6)}}
  np.savez(path, imgs=images, latents_classes=classes.astype(np.int64),
           latents_values=values.astype(np.float64),
           metadata=np.array(metadata, dtype=object))
  return path


@pytest.fixture(scope="module")
def deepmind_file(tmp_path_factory) -> Path:
  return write_deepmind_npz(tmp_path_factory.mktemp("dsprites") / "dsprites_small.npz")


def _grid_indices(ds, split: str) -> np.ndarray:
  return np.sort(dsprites.index_of(ds.arrays(split).factors))


def test_the_file_is_read_without_unpickling(deepmind_file, monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("something was unpickled")

  for name in ("load", "loads", "Unpickler"):
    monkeypatch.setattr(pickle, name, refuse)
  ds = data.load({"name": "dsprites", "path": str(deepmind_file)})
  assert ds.splits == ("train", "test")


def test_held_out_split_is_a_fixed_disjoint_subset(deepmind_file):
  ds = data.load({"name": "dsprites", "path": str(deepmind_file)})
  assert (ds.num_examples("train"), ds.num_examples("test")) == (N - 16, 16)
  train, test = _grid_indices(ds, "train"), _grid_indices(ds, "test")
  assert not set(train) & set(test)
  with np.load(deepmind_file) as raw:  # every row of the file in exactly one split
    everything = np.sort(raw["latents_classes"] @ np.array([737280, 245760, 40960, 1024, 32, 1]))
  np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), everything)
  batch = ds.get_batch("test", 0, 16, seed=3)  # batches of "test" come from those rows
  np.testing.assert_array_equal(np.sort(dsprites.index_of(batch["factors"])), test)
  assert ds.ground_truth.complete is False  # the metrics look up every row, test included
  obs = ds.ground_truth.sample_observations_from_factors(batch["factors"][:2],
                                                         np.random.default_rng(0))
  np.testing.assert_array_equal(obs, batch["image"][:2])


def test_held_out_images_do_not_depend_on_the_file_order(deepmind_file, tmp_path):
  shuffled = write_deepmind_npz(tmp_path / "shuffled.npz",
                                order=np.random.default_rng(1).permutation(N))
  a = data.load({"name": "dsprites", "path": str(deepmind_file)})
  b = data.load({"name": "dsprites", "path": str(shuffled)})
  np.testing.assert_array_equal(_grid_indices(a, "test"), _grid_indices(b, "test"))


def test_larger_fractions_extend_the_held_out_set(deepmind_file):
  small = data.load({"name": "dsprites", "path": str(deepmind_file)})
  large = data.load({"name": "dsprites", "path": str(deepmind_file), "test_fraction": 0.05})
  assert large.num_examples("test") == 80
  assert set(_grid_indices(small, "test")) <= set(_grid_indices(large, "test"))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1, "0.1", True, math.nan])
def test_bad_test_fraction(deepmind_file, fraction):
  with pytest.raises(ValueError, match=r"test_fraction=.* must be a finite number >= 0 and < 1"):
    data.load({"name": "dsprites", "path": str(deepmind_file), "test_fraction": fraction})


def test_a_fraction_that_leaves_no_training_image(tmp_path):
  path = write_deepmind_npz(tmp_path / "one.npz", n=1)
  with pytest.raises(ValueError, match="leaves no training images of the 1"):
    data.load({"name": "dsprites", "path": str(path)})
  assert data.load({"name": "dsprites", "path": str(path), "test_fraction": 0}).splits == (
      "train",)


def _train(workdir: Path, path: Path, extra: list[str]) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([*COMMAND, f"--workdir={workdir}", f"--config.data.path={path}", *extra],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                        check=False)


def _check_run(proc: subprocess.CompletedProcess, workdir: Path) -> None:
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  last = rows[-1]
  assert last["step"] == 4 and math.isfinite(last["eval/elbo"])
  assert last["eval/num_examples"] == 16  # the one batch of the 16 held-out images


def test_readme_real_data_command_small_model(deepmind_file, tmp_path):
  """The README's command (betavae_dsprites.py:test, data.name=dsprites, data.path=FILE)
  with a small MLP instead of the conv VAE, so it runs in seconds; the slow test below runs
  it unchanged."""
  _check_run(_train(tmp_path / "run", deepmind_file, TINY_MODEL), tmp_path / "run")


@pytest.mark.slow  # the conv VAE and its figures compile for minutes on a CPU
def test_readme_real_data_command(deepmind_file, tmp_path):
  _check_run(_train(tmp_path / "run", deepmind_file, []), tmp_path / "run")
