r"""An MLP VAE on MNIST (Kingma & Welling 2014 style), Bernoulli likelihood.

Runs offline on ``mnist_npz`` (``../shared/data/mnist10k.npz``: 10,000 real digits,
dynamically binarised; the data module resolves the path from the package location) or,
with the presets below, on TFDS ``mnist`` / ``binarized_mnist``
(these need the TFDS data prepared in ``data.data_dir``).

Presets (``--config=experiments/configs/vae_mnist.py:PRESET``):

* ``""``: mnist_npz, MLP 512-256, 16 latents, Adam 1e-3, batch 128, 20k steps.
* ``"tfds"``: the same model on TFDS ``mnist`` (dynamic binarisation).
* ``"binarized"``: TFDS ``binarized_mnist`` (the fixed Larochelle binarisation).
* ``"cpu"``: a 2,000-step demo on mnist_npz.
* ``"test"``: a few steps, for smoke tests.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common


def _full(config: ml_collections.ConfigDict) -> None:
  del config


def _tfds(config: ml_collections.ConfigDict) -> None:
  config.data.name = "mnist"


def _binarized(config: ml_collections.ConfigDict) -> None:
  config.data.name = "binarized_mnist"
  config.data.binarize = "none"  # already binary


def _cpu(config: ml_collections.ConfigDict) -> None:
  config.num_steps = 2_000
  config.log_every = 50
  config.checkpoint_every = 500
  config.evals.elbo.every = 500


def _test(config: ml_collections.ConfigDict) -> None:
  config.num_steps = 4
  config.batch_size = 8
  config.log_every = 1
  config.checkpoint_every = 2
  config.evals.elbo.every = 4
  config.eval.num_batches = 1
  config.eval.batch_size = 16
  config.model.hidden_sizes = (32,)
  config.model.latent_dim = 4


PRESETS = {"": _full, "tfds": _tfds, "binarized": _binarized, "cpu": _cpu, "test": _test}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = common.get_base_config()
  config.num_steps = 20_000
  config.batch_size = 128
  config.learning_rate = 1e-3
  config.log_every = 100
  config.checkpoint_every = 2_000
  config.evals.elbo.every = 2_000
  config.model.name = "mlp_vae"
  config.model.latent_dim = 16
  config.model.hidden_sizes = (512, 256)
  config.model.likelihood = "bernoulli"
  config.data.name = "mnist_npz"
  config.data.path = None  # mnist_npz's default: <repo root>/../shared/data/mnist10k.npz
  config.data.binarize = "dynamic"
  config.eval.num_batches = 0  # the whole test split...
  config.eval.batch_size = 200  # ...which 200 divides (2,000 of mnist_npz, 10,000 of TFDS)
  return common.apply_preset(config, preset, PRESETS)
