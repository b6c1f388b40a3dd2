r"""β-VAE sweep on procedural dSprites, disentanglement_lib's grid.

β ∈ {1, 2, 4, 6, 8, 16} × 3 seeds with the conv VAE of ``betavae_dsprites.py`` (Adam 1e-4,
batch 64, 300k steps; Locatello et al. 2019 use 50 seeds). Batches are rendered inside
the compiled step, keyed by (seed, step): each model has its own data order.

Presets:

* ``""``: the full setting (an accelerator job).
* ``"cpu"``: 1,000 steps at learning rate 1e-3, β ∈ {1, 4, 16} × 2 seeds (about half an
  hour on 2 CPU cores).
* ``"test"``: a few steps, for smoke tests.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import betavae_dsprites
from vaejax import sweep

BETAS = (1.0, 2.0, 4.0, 6.0, 8.0, 16.0)


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = betavae_dsprites.get_config(preset)
  config.sweep = sweep.sweep_config({"beta": BETAS}, seeds=(0, 1, 2))
  config.figures.enabled = False
  if preset == "cpu":
    config.num_steps = 1_000
    config.checkpoint_every = 250
    config.eval_every = 500
    config.sweep.grid.beta = (1.0, 4.0, 16.0)
    config.sweep.seeds = (0, 1)
  elif preset == "test":
    config.sweep.grid.beta = (1.0, 4.0)
    config.sweep.seeds = (0,)
  return config
