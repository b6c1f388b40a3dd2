"""Tiny runs the fault tests share (a helper module, not a test file).

A 6-step MLP VAE on :func:`tiny.tiny_dataset` (48 binary 6×6 images): rows every step,
checkpoints every 2, the held-out ELBO every 3 steps. One run takes about a second, so a
test can stop it at a chosen place and compare the rerun with an uninterrupted one.
"""

from pathlib import Path

from vaejax import config as config_lib
from vaejax.training import loop, writers

from tiny import tiny_dataset


def tiny_config():
  """The 6-step config: rows every step, checkpoints every 2, the ELBO every 3."""
  config = config_lib.base_config()
  config.model.update(name="mlp_vae", hidden_sizes=(8,), latent_dim=2)
  config.data.name = "mnist_npz"  # nominal: the dataset is passed in
  config.num_steps, config.batch_size, config.learning_rate = 6, 8, 1e-2
  config.log_every, config.checkpoint_every = 1, 2
  config.evals.elbo.every = 3
  config.eval.num_batches, config.eval.batch_size = 1, 16
  config.evals.figures.at_end = False
  return config


def run(workdir, config=None):
  """Trains (or resumes) the tiny run in ``workdir``."""
  return loop.train_and_evaluate(config or tiny_config(), workdir, dataset=tiny_dataset(),
                                 progress=False)


def rows(workdir):
  """The rows of ``workdir/metrics.jsonl`` without their timing."""
  return [{k: v for k, v in row.items() if k != "steps_per_sec"}
          for row in writers.read_jsonl(Path(workdir) / writers.METRICS_FILE)]
