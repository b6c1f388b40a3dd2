r"""A conditional VAE on MNIST: q(z|x, y) and p(x|z, y) with one-hot digit labels.

Same data and objective as ``vae_mnist.py``; the figures add class-conditional samples
(rows = digits, one z per column, so a column shares its style) and style transfer
(encode a digit with its label, decode it as every other digit).

Presets (``--config=experiments/configs/cvae_mnist.py:PRESET``): ``""`` (mnist_npz,
20k steps), ``"tfds"`` (TFDS ``mnist``), ``"cpu"`` (a 2,000-step demo), ``"test"``.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common, vae_mnist

PRESETS = vae_mnist.PRESETS


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = vae_mnist.get_config()
  config.model.name = "mlp_cvae"
  config.model.latent_dim = 8  # the label carries the class; z only needs the style
  return common.apply_preset(config, preset, PRESETS)
