r"""β-TCVAE on dSprites (Chen et al. 2018) over disentanglement_lib's grid, for the reproduction.

The loss is ``recon + KL + (β − 1)·TC`` with the total correlation TC estimated by
minibatch-weighted sampling over dSprites' N = 737,280 images (``loss.tc_beta`` = β,
``loss.dataset_size`` = N); dlib sweeps β ∈ {1, 2, 4, 6, 8, 10}. Everything else (model,
optimizer, steps, presets, the report) is that of ``reproduce_dsprites.py``::

  python -m experiments.reproduce_dsprites \
      --config=experiments/configs/betatcvae_dsprites.py:cpu_smoke --workdir=DIR

Presets: ``""`` (dlib budget, an accelerator job), ``"cpu_smoke"``, ``"test"``.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import reproduce_dsprites
from vaejax.data import dsprites

TC_BETAS = (1.0, 2.0, 4.0, 6.0, 8.0, 10.0)


def _adapt(train: ml_collections.ConfigDict) -> None:
  train.loss.beta = 1.0  # β weighs the TC term only
  train.loss.dataset_size = dsprites.NUM_IMAGES


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  return reproduce_dsprites.build(
      preset, method="beta_tcvae", parameter="loss.tc_beta", parameter_label="β (TC)",
      values=TC_BETAS, adapt_train=_adapt)
