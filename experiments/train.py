r"""Trains a VAE: ``python -m experiments.train --config=CONFIG.py[:PRESET] --workdir=DIR``.

Override any config value with ``--config.KEY=VALUE`` (e.g. ``--config.loss.beta=8``).
Re-running the same command resumes from the newest checkpoint in ``DIR``. A config's
default sweep grid is ignored here (``experiments.sweep`` runs it).
``--figures_only`` writes ``DIR/figures`` from the newest checkpoint and exits.

This file is intentionally kept short: the loop is :func:`vaejax.training.loop.train`.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from vaejax.training import loop

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (ml_collections), optionally FILE.py:PRESET.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for logs, checkpoints and figures.")
_FIGURES_ONLY = flags.DEFINE_bool(
    "figures_only", False, "Only write figures from the newest checkpoint.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  def command():
    if _FIGURES_ONLY.value:
      results = loop.evaluate_workdir(_WORKDIR.value, ["figures"])
      root = Path(_WORKDIR.value).resolve()
      where = (root / "figures" if len(results) == 1 and not results[0]["point"] else
               root / loop.MODELS_DIR / "m*/figures")
      print(f"Figures of step {results[0]['step']} written to {where}.")
    else:
      loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)

  cli.run_command(command, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
