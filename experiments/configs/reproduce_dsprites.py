r"""The dSprites disentanglement reproduction: β-VAE over disentanglement_lib's β grid.

``python -m experiments.reproduce_dsprites --config=experiments/configs/reproduce_dsprites.py[:PRESET]
--workdir=DIR`` trains one model per (β, seed) with ``vaejax.train.train_and_evaluate``
(one resumable workdir each), scores every metric on the encoder mean and writes the
report (see :mod:`vaejax.reproduction`).

A reproduction config has:

* ``method``: a label for file names and tables;
* ``parameter`` / ``parameter_label``: the dotted key of ``train`` the grid varies, and
  its name in tables;
* ``parameter_values``, ``seeds``: the grid (one run per value and seed);
* ``train``: the per-run training config (``experiments/configs/betavae_dsprites.py``);
  ``train.seed`` and the ``parameter`` are set per run;
* ``evaluation``: ``preset`` (``vaejax.evaluation.representation.METRIC_PRESETS``),
  ``seed``, ``metrics`` (empty = all six);
* ``scale``: ``"dlib"`` or ``"smoke"``; every output of a run that is not at the dlib
  budget says so (``vaejax.reproduction.budget_label``).

Presets:

* ``""``: the disentanglement_lib setting, an accelerator job: β ∈ {1, 2, 4, 6, 8, 16},
  5 seeds (dlib used 50), 300k steps, batch 64, Adam 1e-4, dlib metric sample counts.
* ``"cpu_smoke"``: SMOKE SCALE, about an hour on 2 idle CPU cores: the same 6 β values,
  2 seeds, 2,000 steps at learning rate 1e-3 (10× dlib's, so that something is learned
  in minutes), reduced metric sample counts (``"cpu"``).
* ``"test"``: 2 β × 1 seed × 4 steps of a tiny MLP VAE, for the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ml_collections

from experiments.configs import betavae_dsprites

BETAS = (1.0, 2.0, 4.0, 6.0, 8.0, 16.0)
DLIB_SEEDS = (0, 1, 2, 3, 4)
SMOKE_SEEDS = (0, 1)
SMOKE_STEPS = 2_000
PRESETS = ("", "cpu_smoke", "test")


def _smoke_train() -> ml_collections.ConfigDict:
  train = betavae_dsprites.get_config("cpu")  # lr 1e-3: learns in minutes
  train.num_steps = SMOKE_STEPS
  train.log_every = 50
  train.checkpoint_every = 500
  train.eval_every = SMOKE_STEPS  # once, at the end: the rate and distortion of the table
  return train


def _test_train() -> ml_collections.ConfigDict:
  train = betavae_dsprites.get_config("test")
  train.model.name = "mlp_vae"
  train.model.hidden_sizes = (16,)
  train.model.latent_dim = 3
  train.figures.traversal_steps = 3
  train.figures.max_traversal_dims = 3
  return train


def build(
    preset: str,
    *,
    method: str,
    parameter: str,
    parameter_label: str,
    values: Sequence[float],
    adapt_train: Callable[[ml_collections.ConfigDict], None] | None = None,
) -> ml_collections.ConfigDict:
  """A reproduction config for one model family; ``adapt_train`` sets its fixed loss terms.

  Raises:
    ValueError: an unknown preset, naming the known ones.
  """
  if preset not in PRESETS:
    known = ", ".join(repr(p) for p in PRESETS)
    raise ValueError(f"Unknown config preset {preset!r}; known presets: {known}.")
  config = ml_collections.ConfigDict()
  config.method = method
  config.parameter = parameter
  config.parameter_label = parameter_label
  config.parameter_values = tuple(float(v) for v in values)
  config.seeds = DLIB_SEEDS
  config.scale = "dlib"
  config.train = betavae_dsprites.get_config("")
  config.evaluation = ml_collections.ConfigDict({"preset": "dlib", "seed": 0, "metrics": ()})
  if preset == "cpu_smoke":
    config.seeds = SMOKE_SEEDS
    config.scale = "smoke"
    config.train = _smoke_train()
    config.evaluation.preset = "cpu"
  elif preset == "test":
    config.parameter_values = config.parameter_values[:1] + config.parameter_values[2:3]
    config.seeds = (0,)
    config.scale = "smoke"
    config.train = _test_train()
    config.evaluation.preset = "test"
  if adapt_train is not None:
    adapt_train(config.train)
  return config


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  return build(preset, method="beta_vae", parameter="loss.beta", parameter_label="β",
               values=BETAS)
