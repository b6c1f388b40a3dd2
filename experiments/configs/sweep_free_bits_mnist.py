r"""Free-bits sweep of the MLP VAE on MNIST: which latent dimensions stay alive.

λ ∈ {0, 0.1, 0.25, 0.5, 1} nats per dimension (Kingma et al. 2016) × 3 seeds, with 32
latent dimensions so that the plain ELBO (λ = 0) leaves some of them collapsed; the
KL-per-dimension heatmap of the report shows free bits holding them at about λ.
Otherwise as ``vae_mnist.py``.

Presets: ``""`` (20k steps), ``"cpu"`` (2,000 steps, 2 seeds), ``"test"`` (smoke test).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import vae_mnist
from vaejax import sweep

LAMBDAS = (0.0, 0.1, 0.25, 0.5, 1.0)


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = vae_mnist.get_config(preset)
  config.sweep = sweep.sweep_config({"free_bits": LAMBDAS}, seeds=(0, 1, 2))
  config.figures.enabled = False
  if preset != "test":
    config.model.latent_dim = 32
  if preset == "cpu":
    config.sweep.seeds = (0, 1)
  elif preset == "test":
    config.sweep.grid.free_bits = (0.0, 0.5)
    config.sweep.seeds = (0, 1)
    config.eval.num_batches = 1
  return config
