r"""The dSprites disentanglement reproduction, one command.

  python -m experiments.reproduce_dsprites \
      --config=experiments/configs/reproduce_dsprites.py[:cpu_smoke] --workdir=DIR \
      [--config.train.data.name=dsprites --config.train.data.path=dsprites.npz] \
      [--stages=train,evaluate,report]

Trains a model per (value, seed) of the config's grid (β-VAE by default;
``betatcvae_dsprites.py`` and ``annealedvae_dsprites.py`` for the other dlib families),
scores all six disentanglement metrics on the encoder mean and writes ``DIR/report/``.
Re-running the same command resumes: finished runs and up-to-date scores are reused.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from vaejax import reproduction

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Reproduction config file, optionally FILE.py:PRESET.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for all runs and the report.")
_STAGES = flags.DEFINE_list("stages", list(reproduction.STAGES),
                            f"Stages to run, a subset of {list(reproduction.STAGES)}.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  paths = cli.run_command(
      lambda: reproduction.reproduce(_CONFIG.value, _WORKDIR.value, stages=_STAGES.value), argv)
  for path in paths:
    print(path)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
