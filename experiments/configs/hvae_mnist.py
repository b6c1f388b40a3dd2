r"""A top-down hierarchical VAE on MNIST (2 stochastic levels, 32 + 16 latents).

The ladder/VDVAE pattern of ``vaejax.models.HierarchicalVAE``: each level's posterior
combines the top-down state with the encoder's features at that level, each prior is
conditioned on the levels above. Free bits apply per level (``loss.free_bits`` nats per
level; the groups come from the model), the KL weight warms up over
``loss.warmup_steps``, gradients are clipped and non-finite updates skipped and counted.

Compare with ``vae_mnist.py`` at the same budget (steps, batch, learning rate) and
evaluate both with ``python -m experiments.evaluate --workdir=DIR``.

Presets: ``""`` (mnist_npz, 20k steps), ``"tfds"``, ``"cpu"``, ``"test"`` (as vae_mnist).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common, vae_mnist

PRESETS = vae_mnist.PRESETS


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = vae_mnist.get_config()
  config.model.name = "hvae"
  config.model.latent_sizes = (32, 16)  # level 1 (next to the data) first
  config.model.hidden_size = 512
  config.loss.free_bits = 0.5  # nats per level
  config.loss.warmup_steps = 2_000
  config.optimizer.grad_clip_norm = 100.0
  config = common.apply_preset(config, preset, PRESETS)
  if preset == "test":
    config.model.latent_sizes, config.model.hidden_size = (4, 2), 32
    config.loss.warmup_steps = 2
  if preset == "cpu":
    config.loss.warmup_steps = 500
  return config
