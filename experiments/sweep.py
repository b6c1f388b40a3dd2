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

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from vaejax import logging_utils, sweep, sweep_plots

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Sweep config file (ml_collections), optionally FILE.py:PRESET.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for logs, checkpoints and reports.")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Only rewrite DIR/report from DIR/results.jsonl.")
flags.mark_flags_as_required(["config", "workdir"])


def _report_only() -> list:
  path = f"{_WORKDIR.value}/{sweep.RESULTS_FILE}"
  rows = logging_utils.read_jsonl(path)
  if not rows:
    raise FileNotFoundError(f"No results in {path}; run the sweep first.")
  return sweep_plots.write_report(rows, f"{_WORKDIR.value}/{sweep.REPORT_DIR}")


def main(argv: list[str]) -> None:
  def command():
    if _REPORT_ONLY.value:
      return _report_only()
    return sweep.train_sweep(_CONFIG.value, _WORKDIR.value).report

  print("\n".join(str(p) for p in cli.run_command(command, argv)))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
