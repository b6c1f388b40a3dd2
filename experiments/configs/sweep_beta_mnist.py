r"""β sweep of the MLP VAE on MNIST (``mnist_npz``, dynamically binarised): rate vs distortion.

β ∈ {0.5, 1, 2, 4, 8} × 3 seeds = 15 models trained as one program
(``python -m experiments.sweep --config=experiments/configs/sweep_beta_mnist.py:cpu``).
The model, data and optimizer are those of ``vae_mnist.py``.

Presets:

* ``""``: 20k steps, as ``vae_mnist.py``.
* ``"cpu"``: 2,000 steps, β ∈ {0.5, 1, 2, 4, 8} × 2 seeds (minutes on 2 CPU cores).
* ``"test"``: a few steps of a tiny model, for smoke tests.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import vae_mnist
from vaejax import sweep

BETAS = (0.5, 1.0, 2.0, 4.0, 8.0)


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = vae_mnist.get_config(preset)
  config.sweep = sweep.sweep_config({"beta": BETAS}, seeds=(0, 1, 2))
  config.figures.enabled = False  # the sweep writes its own report
  if preset == "cpu":
    config.sweep.seeds = (0, 1)
  elif preset == "test":
    config.sweep.grid.beta = (1.0, 4.0)
    config.sweep.seeds = (0, 1)
    config.eval.num_batches = 1
  return config
