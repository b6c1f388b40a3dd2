r"""β sweep of the MLP VAE on MNIST (``mnist_npz``, dynamically binarised): rate vs distortion.

β ∈ {0.5, 1, 2, 4, 8} × 3 seeds = 15 models in one program
(``python -m experiments.sweep --config=experiments/configs/sweep_beta_mnist.py:cpu
--workdir=DIR``). The model, data and optimizer are those of ``vae_mnist.py``.

Presets: ``""`` (20k steps, as ``vae_mnist.py``), ``"cpu"`` (2,000 steps, 2 seeds),
``"test"`` (a few steps of a tiny model).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import vae_mnist

PRESETS = vae_mnist.PRESETS


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = vae_mnist.get_config(preset)
  config.evals.figures.at_end = False  # the sweep writes its own report
  config.grid = ("loss.beta=0.5,1,2,4,8", "seed=0,1,2")
  if preset == "cpu":
    config.grid = ("loss.beta=0.5,1,2,4,8", "seed=0,1")
  elif preset == "test":
    config.grid = ("loss.beta=1,4", "seed=0,1")
    config.eval.num_batches = 1
  return config
