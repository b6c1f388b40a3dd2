"""Defaults every training config shares (the keys ``vaejax.train`` reads).

Top level: ``num_steps``, ``batch_size``, ``seed``, ``learning_rate``, ``log_every``,
``checkpoint_every``, ``eval_every``. Groups: ``model`` (``vaejax.models.create_model``),
``data`` (``vaejax.data.load``), ``loss`` (``vaejax.objectives.LossSettings`` fields and
``free_bits_groups``), ``optimizer``, ``eval``, ``figures``.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  """A complete config with neutral defaults; experiment configs override fields."""
  config = ml_collections.ConfigDict()
  config.num_steps = 10_000
  config.batch_size = 64
  config.seed = 0
  config.learning_rate = 1e-3
  config.log_every = 100
  config.checkpoint_every = 1000
  config.eval_every = 1000  # 0 = never

  config.model = ml_collections.ConfigDict({
      "name": "mlp_vae",
      "latent_dim": 10,
      "hidden_sizes": (512, 256),
      "likelihood": "bernoulli",  # "bernoulli" | "gaussian" | "gaussian_learned"
      "likelihood_variance": 1.0,  # "gaussian" only
      "min_variance": None,  # "gaussian_learned" only: optional variance floor
      "conv_impl": "fast",  # "fast" | "textbook" (conv_vae)
      "dtype": "float32",  # computation dtype; params stay float32
  })

  config.data = ml_collections.ConfigDict({
      "name": "dsprites_procedural",
      # None = unset (the dataset's default). FieldReferences so the command line can
      # set a string where the default is None.
      "path": ml_collections.FieldReference(None, field_type=str),  # file-backed datasets
      "data_dir": ml_collections.FieldReference(None, field_type=str),  # TFDS data_dir
      "binarize": "none",  # "none" | "static" | "dynamic"
  })

  config.loss = ml_collections.ConfigDict({
      "beta": 1.0,
      "free_bits": 0.0,
      "warmup_steps": 0,
      "cycle_steps": 0,
      "capacity_gamma": 0.0,
      "capacity_max": 0.0,
      "capacity_steps": 0,
      "tc_beta": 1.0,
      "dataset_size": 0,
      # Free-bits group id per latent dimension (e.g. per stochastic layer); None = one
      # group per dimension. A FieldReference so the command line can set a list.
      "free_bits_groups": ml_collections.FieldReference(None, field_type=tuple),
  })

  config.optimizer = ml_collections.ConfigDict({
      "b1": 0.9,
      "b2": 0.999,
      "eps": 1e-8,
      "warmup_steps": 0,  # linear learning-rate warm-up from 0
      "grad_clip_norm": 0.0,  # global-norm clipping; 0 = off
      "max_consecutive_skips": 10,  # non-finite updates in a row before the run stops
  })

  config.eval = ml_collections.ConfigDict({
      "num_batches": 10,  # 0 = every full batch of a finite split
      "batch_size": 256,
      "split": "",  # "" = "test", else "validation"; procedural data: a separate seed
  })

  config.figures = ml_collections.ConfigDict({
      "enabled": True,
      "num_images": 8,
      "traversal_steps": 9,
      "traversal_range": 2.5,
      "max_traversal_dims": 10,
  })

  # Disentanglement metrics at the end of training (datasets with ground-truth factors);
  # preset "dlib" = disentanglement_lib's sample counts, "cpu" = reduced counts.
  config.disentanglement = ml_collections.ConfigDict({
      "enabled": False,
      "preset": "dlib",
      "seed": 0,
      "metrics": (),  # () = all six
  })
  return config


def apply_preset(
    config: ml_collections.ConfigDict,
    preset: str,
    presets: dict[str, Callable[[ml_collections.ConfigDict], None]],
) -> ml_collections.ConfigDict:
  """Applies the named preset (the ``--config=FILE.py:PRESET`` string); "" = none."""
  if preset not in presets:
    known = ", ".join(repr(p) for p in presets)
    raise ValueError(f"Unknown config preset {preset!r}; known presets: {known}.")
  presets[preset](config)
  return config
