r"""β-TCVAE on dSprites (Chen et al. 2018) over disentanglement_lib's grid.

The loss is ``recon + KL + (β − 1)·TC`` with the total correlation TC estimated by
minibatch-weighted sampling over dSprites' N = 737,280 images (``loss.tc_beta`` = β,
``loss.dataset_size`` = N). The default grid is dlib's β ∈ {1, 2, 4, 6, 8, 10} × seeds;
β = 1 switches the TC term off, so its models run as a program of their own (the TC
estimate is compiled in or out). Everything else (model, optimizer, steps, presets,
metrics) is that of ``betavae_dsprites.py``::

  python -m experiments.sweep --config=experiments/configs/betatcvae_dsprites.py:cpu_smoke \
      --workdir=DIR

Presets: ``""`` (dlib budget, an accelerator job), ``"cpu"``, ``"cpu_smoke"``, ``"test"``.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import betavae_dsprites

PRESETS = betavae_dsprites.PRESETS
TC_BETAS = "1,2,4,6,8,10"
DSPRITES_IMAGES = 737_280  # 3 shapes × 6 scales × 40 orientations × 32 × 32 positions


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = betavae_dsprites.get_config(preset)
  config.loss.beta = 1.0  # β weighs the TC term only
  config.loss.tc_beta = 6.0  # the single run's value; the grid sweeps it
  config.loss.dataset_size = DSPRITES_IMAGES
  return betavae_dsprites.with_study_grid(config, preset, "loss.tc_beta", TC_BETAS)
