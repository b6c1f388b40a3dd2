r"""AnnealedVAE on dSprites (Burgess et al. 2018) over disentanglement_lib's grid, for the reproduction.

The loss is ``recon + γ·|KL − C(t)|`` with β = 0, γ = 1000 and the capacity C(t) rising
linearly from 0 to C_max over the first third of training (dlib: 100k of 300k steps);
dlib sweeps C_max ∈ {5, 10, 25, 50, 75, 100} nats (``loss.capacity_max``). Everything
else is that of ``reproduce_dsprites.py``::

  python -m experiments.reproduce_dsprites \
      --config=experiments/configs/annealedvae_dsprites.py:cpu_smoke --workdir=DIR

Presets: ``""`` (dlib budget, an accelerator job), ``"cpu_smoke"``, ``"test"``.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import reproduce_dsprites

CAPACITIES = (5.0, 10.0, 25.0, 50.0, 75.0, 100.0)
GAMMA = 1000.0


def _adapt(train: ml_collections.ConfigDict) -> None:
  train.loss.beta = 0.0  # the capacity term replaces the β-weighted KL
  train.loss.capacity_gamma = GAMMA
  # dlib: 100k of 300k steps. A reference, so --config.train.num_steps=N rescales it.
  train.loss.capacity_steps = train.get_ref("num_steps") // 3


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  return reproduce_dsprites.build(
      preset, method="annealed_vae", parameter="loss.capacity_max", parameter_label="C_max",
      values=CAPACITIES, adapt_train=_adapt)
