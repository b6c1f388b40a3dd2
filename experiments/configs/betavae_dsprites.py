r"""β-VAE on dSprites in the disentanglement_lib setting (Higgins et al. 2017; Locatello et al.
2019).

The dSprites conv encoder/decoder, Bernoulli likelihood, 10 latents, Adam 1e-4
(β1 0.9, β2 0.999, ε 1e-8), batch 64, 300k steps, factors sampled uniformly with
replacement (procedural dSprites renders them inside the jitted step: no download), the
six disentanglement metrics on the final encoder mean. β comes from ``loss.beta``.

The default grid is the dSprites β study: disentanglement_lib's β ∈ {1, 2, 4, 6, 8, 16}
× 5 seeds (dlib used 50). ``experiments.train`` trains one model (β = 4, seed 0);
``experiments.sweep`` trains the grid in one program per group and writes the report.

Presets (``--config=experiments/configs/betavae_dsprites.py:PRESET``):

* ``""``: the full setting above (an accelerator job).
* ``"cpu"``: a short demo that finishes with figures in minutes on 2 CPU cores. It
  departs from the paper on purpose: 2,500 steps at learning rate 1e-3 (not 1e-4), so
  that something is learned in minutes; the metrics use reduced sample counts (``cpu``).
* ``"cpu_smoke"``: the β study at SMOKE SCALE for a CPU: the 6 β values × 2 seeds, 2,000
  steps at learning rate 1e-3, ``cpu`` metric counts, traversal figures per model.
* ``"cpu_mid"``: the β study at mid scale for a CPU (about 1.5 h on 2 idle cores):
  β ∈ {1, 4, 16} × 2 seeds, 10,000 steps at learning rate 1e-3, ``cpu`` metric counts, plus
  the unsupervised scores, UDR and latent arithmetic.
* ``"test"``: a few steps, for smoke tests.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common

BETAS = "1,2,4,6,8,16"


def _full(config: ml_collections.ConfigDict) -> None:
  del config  # the defaults below are the full setting


def _cpu(config: ml_collections.ConfigDict) -> None:
  config.num_steps = 2_500
  config.learning_rate = 1e-3  # 10x the paper's: a short demo must learn quickly
  config.log_every = 50
  config.checkpoint_every = 500
  config.evals.elbo.every = 500
  config.eval.num_batches = 4
  config.eval.batch_size = 256
  config.evals.disentanglement.preset = "cpu"  # reduced sample counts: ~a minute on 2 cores


def _cpu_smoke(config: ml_collections.ConfigDict) -> None:
  _cpu(config)
  config.num_steps = 2_000
  config.evals.elbo.every = 2_000  # once, at the end: the rate and distortion of the table


def _cpu_mid(config: ml_collections.ConfigDict) -> None:
  _cpu(config)
  config.num_steps = 10_000
  config.checkpoint_every = 1_000
  config.evals.elbo.every = 2_500
  config.evals.unsupervised.at_end = True
  config.evals.udr.at_end = True
  config.evals.arithmetic.at_end = True


def _test(config: ml_collections.ConfigDict) -> None:
  config.num_steps = 4
  config.log_every = 1
  config.checkpoint_every = 2
  config.evals.elbo.every = 4
  config.eval.num_batches = 1
  config.eval.batch_size = 16
  config.batch_size = 8
  config.evals.disentanglement.at_end = False


PRESETS = {"": _full, "cpu": _cpu, "cpu_smoke": _cpu_smoke, "cpu_mid": _cpu_mid,
           "test": _test}
SEEDS = {"": "0,1,2,3,4", "cpu": "0,1,2,3,4", "cpu_smoke": "0,1", "cpu_mid": "0,1",
         "test": "0"}


def with_study_grid(config: ml_collections.ConfigDict, preset: str, key: str,
                    values: str) -> ml_collections.ConfigDict:
  """Sets the default grid of a dSprites study (``key`` over ``values`` × the preset's
  seeds; ``cpu_mid`` keeps the first, third and last values, ``test`` the first two)."""
  if preset == "test":
    values = ",".join(values.split(",")[:2])
  elif preset == "cpu_mid":
    parts = values.split(",")
    values = ",".join([parts[0], parts[2], parts[-1]])
  config.grid = (f"{key}={values}", f"seed={SEEDS[preset]}")
  return config


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = common.get_base_config()
  config.num_steps = 300_000
  config.batch_size = 64
  config.learning_rate = 1e-4
  config.log_every = 500
  config.checkpoint_every = 10_000
  config.evals.elbo.every = 10_000
  config.model.name = "conv_vae"
  config.model.latent_dim = 10
  config.model.likelihood = "bernoulli"
  config.data.name = "dsprites_procedural"
  config.loss.beta = 4.0
  config.evals.disentanglement.at_end = True  # all six metrics on the final encoder mean
  config = common.apply_preset(config, preset, PRESETS)
  return with_study_grid(config, preset, "loss.beta", BETAS)
