r"""Trains a VAE: ``python -m experiments.train --config=CONFIG.py[:PRESET] --workdir=DIR``.

Override any config value with ``--config.KEY=VALUE`` (e.g. ``--config.loss.beta=8``).
Re-running the same command resumes from the newest checkpoint in ``DIR``.
``--figures_only`` writes ``DIR/figures`` from the newest checkpoint and exits.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vaejax import logging_utils, train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (ml_collections), optionally FILE.py:PRESET.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for logs, checkpoints and figures.")
_FIGURES_ONLY = flags.DEFINE_bool(
    "figures_only", False, "Only write figures from the newest checkpoint.")
_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, "Show the full traceback of configuration and data errors.")
flags.mark_flags_as_required(["config", "workdir"])


def _innermost_message(error: BaseException) -> str:
  """The message of the innermost wrapped exception, on one line."""
  message = error
  while isinstance(message, BaseException) and message.args:
    message = message.args[0]
  return " ".join(str(message).split())


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns config-file and override errors into one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:  # e.g. a missing flag, a bad config file or preset
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    sys.exit(f"error: {lines[-1] if lines else error}")
  except (AttributeError, KeyError) as error:  # --config.KEY=VALUE with an unknown KEY
    key, _, hint = _innermost_message(error).partition(" ")
    overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
    sys.exit(f"error: the config has no key {key} (overrides: {overrides}). {hint}".rstrip())
  except (TypeError, ValueError) as error:
    sys.exit(f"error: bad --config override: {_innermost_message(error)}")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging_utils.hide_info_logs_from("orbax")
  try:
    if _FIGURES_ONLY.value:
      train.write_figures_from_checkpoint(_CONFIG.value, _WORKDIR.value)
    else:
      train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, KeyError, FileNotFoundError, train.NonFiniteError) as error:
    if _TRACEBACK.value:
      raise
    logging.flush()
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
