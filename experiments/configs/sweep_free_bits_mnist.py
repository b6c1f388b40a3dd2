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

PRESETS = vae_mnist.PRESETS


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = vae_mnist.get_config(preset)
  config.evals.figures.at_end = False
  config.grid = ("loss.free_bits=0,0.1,0.25,0.5,1", "seed=0,1,2")
  if preset != "test":
    config.model.latent_dim = 32
  if preset == "cpu":
    config.grid = ("loss.free_bits=0,0.1,0.25,0.5,1", "seed=0,1")
  elif preset == "test":
    config.grid = ("loss.free_bits=0,0.5", "seed=0,1")
    config.eval.num_batches = 1
  return config
