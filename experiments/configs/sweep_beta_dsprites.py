r"""β sweep of the conv β-VAE on procedural dSprites (no disentanglement metrics): rate vs
distortion.

β ∈ {1, 2, 4, 6, 8, 16} × 3 seeds with the conv VAE of ``betavae_dsprites.py``; batches
are rendered inside the compiled step, keyed by (seed, step). For the study with the
disentanglement metrics use ``betavae_dsprites.py`` with ``experiments.sweep``.

Presets: ``""`` (the full setting, an accelerator job), ``"cpu"`` (1,000 steps at learning
rate 1e-3, β ∈ {1, 4, 16} × 2 seeds), ``"test"`` (a few steps).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import betavae_dsprites

PRESETS = {"": None, "cpu": None, "test": None}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"Unknown config preset {preset!r}; known presets: "
                     f"{', '.join(repr(p) for p in PRESETS)}.")
  config = betavae_dsprites.get_config(preset)
  config.evals.disentanglement.at_end = False
  config.evals.figures.at_end = False
  config.grid = ("loss.beta=1,2,4,6,8,16", "seed=0,1,2")
  if preset == "cpu":
    config.num_steps = 1_000
    config.checkpoint_every = 250
    config.evals.elbo.every = 500
    config.grid = ("loss.beta=1,4,16", "seed=0,1")
  elif preset == "test":
    config.grid = ("loss.beta=1,4", "seed=0")
  return config
