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

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vaejax import logging_utils, reproduction

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Reproduction config file, optionally FILE.py:PRESET.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for all runs and the report.")
_STAGES = flags.DEFINE_list("stages", list(reproduction.STAGES),
                            f"Stages to run, a subset of {list(reproduction.STAGES)}.")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the full traceback of errors.")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with config-file and override errors as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:  # a missing flag, a bad config file or preset
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    sys.exit(f"error: {lines[-1] if lines else error}")
  except (AttributeError, KeyError, TypeError, ValueError) as error:  # --config.KEY=VALUE
    sys.exit(f"error: bad --config override: {' '.join(str(error).split())}")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging_utils.hide_info_logs_from("orbax")
  try:
    paths = reproduction.reproduce(_CONFIG.value, _WORKDIR.value, stages=_STAGES.value)
  except (ValueError, KeyError, FileNotFoundError) as error:
    if _TRACEBACK.value:
      raise
    logging.flush()
    sys.exit(f"error: {error}")
  for path in paths:
    print(path)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
