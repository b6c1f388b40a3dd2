r"""A deep convolutional hierarchical VAE on MNIST (the VDVAE/NVAE pattern), ``deep_hvae``.

Six stochastic levels at 14×14, 7×7 and 1×1 (1 + 3 + 2), residual bottleneck blocks, one
shared top-down state; per-level priors and posteriors, free bits per level (the model's
levels are the free-bits groups), KL warm-up, a learning-rate warm-up, gradient clipping
and VDVAE's skipping of updates whose gradient norm is far above the usual (counted in
``grad_norm_skips``). The thresholds come from a measured run: gradient norms had a median
of 169, p90 343 and a maximum of 789 after the first steps (the loss sums over pixels, so
they are ~784× VDVAE's per-dimension ones). Data, evaluation and presets are those of
``vae_mnist.py``, so the two compare like for like::

  python -m experiments.train --config=experiments/configs/deep_hvae_mnist.py:cpu --workdir=DIR
  python -m experiments.evaluate --workdir=DIR --num_samples=1000

Presets: ``""`` (mnist_npz, 20k steps), ``"tfds"``, ``"binarized"``, ``"cpu"``, ``"test"``.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common, vae_mnist

PRESETS = vae_mnist.PRESETS


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = vae_mnist.get_config()
  config.model.name = "deep_hvae"
  config.model.resolutions = (14, 7, 1)
  config.model.levels_per_stage = (1, 3, 2)
  config.model.latent_channels = (4, 8, 16)
  config.model.state_channels = 64
  config.model.bottleneck_channels = 16
  config.model.encoder_blocks = 2
  config.batch_size = 64
  config.loss.free_bits = 0.25  # nats per level
  config.loss.warmup_steps = 2_000
  config.optimizer.warmup_steps = 200
  config.optimizer.grad_clip_norm = 400.0
  config.optimizer.skip_threshold = 2_000.0
  config = common.apply_preset(config, preset, PRESETS)
  if preset == "test":
    config.model.update({"levels_per_stage": (1, 2, 1), "latent_channels": (2, 2, 4),
                         "state_channels": 8, "bottleneck_channels": 4, "encoder_blocks": 1})
    config.loss.warmup_steps = 2
    config.optimizer.warmup_steps = 2
  if preset == "cpu":
    config.loss.warmup_steps = 500
  return config
