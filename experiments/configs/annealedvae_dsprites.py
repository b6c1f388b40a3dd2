r"""AnnealedVAE on dSprites (Burgess et al. 2018) over disentanglement_lib's grid.

The loss is ``recon + γ·|KL − C(t)|`` with β = 0, γ = 1000 and the capacity C(t) rising
linearly from 0 to C_max over the first third of training (dlib: 100k of 300k steps).
The default grid is dlib's C_max ∈ {5, 10, 25, 50, 75, 100} nats (``loss.capacity_max``)
× seeds. Everything else is that of ``betavae_dsprites.py``::

  python -m experiments.sweep --config=experiments/configs/annealedvae_dsprites.py:cpu_smoke \
      --workdir=DIR

Presets: ``""`` (dlib budget, an accelerator job), ``"cpu"``, ``"cpu_smoke"``, ``"test"``.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import betavae_dsprites

PRESETS = betavae_dsprites.PRESETS
CAPACITIES = "5,10,25,50,75,100"
GAMMA = 1000.0


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = betavae_dsprites.get_config(preset)
  config.loss.beta = 0.0  # the capacity term replaces the β-weighted KL
  config.loss.capacity_gamma = GAMMA
  config.loss.capacity_max = 25.0  # the single run's value; the grid sweeps it
  # dlib: 100k of 300k steps. A reference, so --config.num_steps=N rescales it.
  config.loss.capacity_steps = config.get_ref("num_steps") // 3
  return betavae_dsprites.with_study_grid(config, preset, "loss.capacity_max", CAPACITIES)
