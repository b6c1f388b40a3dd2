r"""Trains a sweep of models in one program.

``python -m experiments.sweep --config=experiments/configs/SWEEP.py[:PRESET] --workdir=DIR``

The grid lives in the config and is overridable on the command line, e.g.
``--config.sweep.grid.beta='(1, 4, 16)' --config.sweep.seeds='(0, 1)'``; so are the
execution strategy (``--config.sweep.strategy=vmap``) and the device mesh
(``--config.sweep.model_devices=8``). Re-running the same command resumes from the newest
checkpoint. ``DIR/report/`` receives the results table (markdown, CSV), the
rate–distortion plot and the KL-per-dimension heatmap; ``--report_only`` rewrites it
from ``DIR/results.jsonl``.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vaejax import logging_utils, sweep, sweep_plots, train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Sweep config file (ml_collections), optionally FILE.py:PRESET.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for logs, checkpoints and reports.")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Only rewrite DIR/report from DIR/results.jsonl.")
_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, "Show the full traceback of configuration and data errors.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging_utils.hide_info_logs_from("orbax")
  try:
    if _REPORT_ONLY.value:
      path = f"{_WORKDIR.value}/{sweep.RESULTS_FILE}"
      rows = logging_utils.read_jsonl(path)
      if not rows:
        raise FileNotFoundError(f"No results in {path}; run the sweep first.")
      paths = sweep_plots.write_report(rows, f"{_WORKDIR.value}/{sweep.REPORT_DIR}")
    else:
      paths = sweep.train_sweep(_CONFIG.value, _WORKDIR.value).report
    print("\n".join(str(p) for p in paths))
  except (ValueError, KeyError, FileNotFoundError, train.NonFiniteError) as error:
    if _TRACEBACK.value:
      raise
    logging.flush()
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  app.run(main)
