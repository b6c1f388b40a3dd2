"""A single run through the loop: logs, checkpoints, figures, resume, divergence, labels.

:func:`vaejax.training.loop.train_and_evaluate` on tiny data (48 binary 6×6 images, an
MLP VAE with 16 hidden units and 3 latents); sweeps through the same loop are checked in
``test_sweeps_loop.py``, the numbers against independent runs in ``test_engine.py``.
"""

import json

import chex
import numpy as np
import pytest

from vaejax import config as config_lib
from vaejax import data
from vaejax.training import checkpoint, loop, writers

pytestmark = pytest.mark.isa_independent  # nothing here depends on XLA's float code

IMAGE_SHAPE = (6, 6, 1)


def tiny_dataset(num_classes=None, nan_from_step=None):
  """A 48-example binary dataset (train and test), optionally labelled or NaN-poisoned."""
  rng = np.random.default_rng(0)

  def split():
    images = (rng.random((48, *IMAGE_SHAPE)) < 0.3).astype(np.float32)
    labels = rng.integers(0, num_classes, 48) if num_classes else None
    return data.SplitArrays(images, labels=labels, binary=True)

  class Tiny(data.ArrayDataset):

    def _get_batch(self, split, step, batch_size, seed):
      batch = super()._get_batch(split, step, batch_size, seed)
      if nan_from_step is not None and split == "train" and step >= nan_from_step:
        batch["image"][0, 0, 0, 0] = np.nan
      return batch

  return Tiny("tiny", {"train": split(), "test": split()}, image_shape=IMAGE_SHAPE,
              num_classes=num_classes)


def tiny_config(**top_level):
  config = config_lib.base_config()
  config.model.update({"name": "mlp_vae", "hidden_sizes": (16,), "latent_dim": 3})
  config.data.name = "mnist_npz"  # nominal: the tests pass the dataset in
  config.num_steps, config.batch_size = 6, 8
  config.log_every, config.checkpoint_every = 2, 3
  config.evals.elbo.every = 3
  config.eval.num_batches, config.eval.batch_size = 1, 16
  config.evals.figures.at_end = False
  for key, value in top_level.items():
    config[key] = value
  return config


def checkpoint_steps(directory):
  return sorted(int(p.name) for p in (directory / checkpoint.CHECKPOINT_DIR).iterdir()
                if p.name.isdigit())


def test_run_learns_and_writes_logs_checkpoints_config_and_figures(tmp_path):
  config = tiny_config(num_steps=30, log_every=10, checkpoint_every=15, learning_rate=1e-2)
  config.evals.elbo.every = 5
  config.evals.figures.at_end = True
  final = loop.train_and_evaluate(config, tmp_path, dataset=tiny_dataset(), progress=False)
  rows = writers.read_jsonl(tmp_path / writers.METRICS_FILE)
  assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]  # a row per log or eval step
  assert all("model" not in r and "point" not in r for r in rows)  # a single run's rows
  assert all(np.isfinite(r["loss"]) and r["steps_per_sec"] > 0 for r in rows)
  assert all(0 <= r["eval/active_units"] <= 3 for r in rows)
  assert len(rows[0]["kl_per_dim"]) == 3 and len(rows[0]["eval/kl_per_dim"]) == 3
  assert rows[0]["eval/num_examples"] == 16
  # It learns: the held-out ELBO of these Bernoulli(0.3) pixels rises from about
  # -36 log 2 = -25 nats (an untrained decoder) towards -36 H(0.3) = -22 nats.
  assert rows[0]["eval/elbo"] < -24.5 and rows[-1]["eval/elbo"] > -23.0
  assert checkpoint_steps(tmp_path) == [15, 30]
  assert list((tmp_path / writers.TENSORBOARD_DIR).glob("events.out.tfevents.*"))
  figures = sorted((tmp_path / "figures").glob("*.png"))
  assert [p.name for p in figures] == ["interpolation.png", "kl_per_dim.png",
                                       "reconstructions.png", "samples.png", "traversals.png"]
  assert int(final.step) == 30
  with checkpoint.Checkpointer(tmp_path / checkpoint.CHECKPOINT_DIR) as ckpt:
    meta = ckpt.read_meta(30)
  assert meta["data_position"] == 30 and meta["points"] == [{}]

  # Re-running a finished run restores it, trains no further and rewrites no rows.
  config.evals.figures.at_end = False  # a key one may change when continuing
  again = loop.train_and_evaluate(config, tmp_path, dataset=tiny_dataset(), progress=False)
  chex.assert_trees_all_equal(again.params, final.params)
  chex.assert_trees_all_equal(again.opt_state, final.opt_state)
  assert writers.read_jsonl(tmp_path / writers.METRICS_FILE) == rows
  saved = json.loads((tmp_path / loop.CONFIG_FILE).read_text())  # the latest run's config
  assert saved == config_lib.to_dict(config) and saved["model"]["hidden_sizes"] == [16]

  # Figures and evaluations on demand, from the newest checkpoint (experiments.train
  # --figures_only, experiments.evaluate): the same held-out data and keys as in training.
  for path in figures:
    path.unlink()
  (result,) = loop.evaluate_workdir(tmp_path, ["figures", "elbo"], dataset=tiny_dataset())
  assert sorted((tmp_path / "figures").glob("*.png")) == figures
  assert (result["model"], result["point"], result["step"]) == (0, {}, 30)
  assert result["elbo"]["elbo"] == rows[-1]["eval/elbo"]
  assert result["elbo"]["kl_per_dim"] == rows[-1]["eval/kl_per_dim"]

  # A config that changes what the model computes cannot continue the run.
  config.loss.beta = 4.0
  with pytest.raises(config_lib.ConfigError, match="loss.beta: 1.0 in the checkpoint, 4.0 now"):
    loop.train_and_evaluate(config, tmp_path, dataset=tiny_dataset(), progress=False)
  assert checkpoint_steps(tmp_path) == [15, 30]


def test_nonfinite_run_stops_with_last_checkpoint_intact(tmp_path):
  config = tiny_config(num_steps=40, log_every=5, checkpoint_every=5)
  config.evals.elbo.every = 0
  config.evals.elbo.at_end = False
  config.optimizer.max_consecutive_skips = 3
  with pytest.raises(loop.NonFiniteError,
                     match=r"max_consecutive_skips=3.*last checkpoint \(step 10\) is intact"):
    loop.train_and_evaluate(config, tmp_path, dataset=tiny_dataset(nan_from_step=7),
                            progress=False)
  # Steps 8.. are skipped (batch index 7 on); streak 3 is tolerated at step 10, so the
  # checkpoint of step 10 exists; at step 15 the streak is 8 and no checkpoint is written.
  assert checkpoint_steps(tmp_path) == [5, 10]
  rows = writers.read_jsonl(tmp_path / writers.METRICS_FILE)
  assert [(r["step"], r["skips"], r["consecutive_skips"]) for r in rows] == [(5, 0, 0),
                                                                              (10, 3, 3)]
  assert issubclass(loop.NonFiniteError, FloatingPointError)


def test_conditional_model_trains_on_labels(tmp_path):
  config = tiny_config(num_steps=2)
  config.evals.elbo.every = 2
  config.model.name = "mlp_cvae"
  state = loop.train_and_evaluate(config, tmp_path / "ok", dataset=tiny_dataset(num_classes=4),
                                  progress=False)
  assert int(state.step) == 2
  (row,) = writers.read_jsonl(tmp_path / "ok" / writers.METRICS_FILE)
  assert np.isfinite(row["eval/elbo"])
  with pytest.raises(ValueError, match="'mlp_cvae' is a conditional model"):
    loop.train_and_evaluate(config, tmp_path / "bad", dataset=tiny_dataset(), progress=False)
  assert not (tmp_path / "bad").exists()  # refused before writing anything
