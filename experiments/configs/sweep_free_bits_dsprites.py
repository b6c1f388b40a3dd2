r"""Free-bits sweep of a β-VAE (β = 4) on procedural dSprites.

λ ∈ {0, 0.25, 0.5, 1, 2} nats per latent dimension × 3 seeds, otherwise as
``betavae_dsprites.py``. With β = 4 most of the 10 dimensions collapse; the report's
KL-per-dimension heatmap shows how many free bits keep alive.

Presets: ``""`` (300k steps), ``"cpu"`` (1,000 steps at learning rate 1e-3,
λ ∈ {0, 0.5, 2} × 2 seeds), ``"test"`` (smoke test).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import betavae_dsprites
from vaejax import sweep

LAMBDAS = (0.0, 0.25, 0.5, 1.0, 2.0)


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = betavae_dsprites.get_config(preset)
  config.loss.beta = 4.0
  config.sweep = sweep.sweep_config({"free_bits": LAMBDAS}, seeds=(0, 1, 2))
  config.figures.enabled = False
  if preset == "cpu":
    config.num_steps = 1_000
    config.checkpoint_every = 250
    config.eval_every = 500
    config.sweep.grid.free_bits = (0.0, 0.5, 2.0)
    config.sweep.seeds = (0, 1)
  elif preset == "test":
    config.sweep.grid.free_bits = (0.0, 1.0)
    config.sweep.seeds = (0,)
  return config
