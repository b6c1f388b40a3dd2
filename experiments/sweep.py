r"""Trains a sweep: every combination of the grid is one model, stacked into one program.

    python -m experiments.sweep --config=<any training config>[:PRESET] --workdir=DIR \
        --grid=KEY=V1,V2,... [--grid=...] [--config.KEY=VALUE ...]

KEY is a dotted config key (``loss.beta``, ``learning_rate``, ``model.latent_dim``, ...)
or ``seed``; values parse as ``--config.KEY=V`` would and split on commas outside
brackets (``--grid='model.hidden_sizes=(64,32),(128,)'``). Models follow the order of
the ``--grid`` flags, the last fastest. Without ``--grid`` the config's default grid runs
(e.g. the dSprites β study of ``betavae_dsprites.py``). Model *i* equals
``experiments.train`` with its point's values. Re-running the same command resumes.
``DIR/report/`` receives the tables and plots; ``--report_only`` rewrites it from
``DIR/results.jsonl``.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from vaejax.sweeps import report
from vaejax.training import loop, writers
from vaejax.training import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (ml_collections), optionally FILE.py:PRESET.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for logs, checkpoints and reports.")
_GRID = flags.DEFINE_multi_string(
    "grid", [], "KEY=V1,V2,...: a config key and its values (repeat for more axes).")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Only rewrite DIR/report from DIR/results.jsonl.")
flags.mark_flags_as_required(["config", "workdir"])


def _report_only() -> list:
  workdir = workdir_lib.check_workdir(_WORKDIR.value, create=False)
  with workdir_lib.WorkdirLock(workdir, "report"):
    rows = writers.read_jsonl(workdir / loop.RESULTS_FILE)
    if not rows:
      raise FileNotFoundError(f"No results in {workdir / loop.RESULTS_FILE}; run the sweep "
                              "first.")
    return report.write_report(rows, workdir / loop.REPORT_DIR, loop.load_config(workdir),
                               writers.read_jsonl(workdir / writers.METRICS_FILE))


def main(argv: list[str]) -> None:
  def command():
    if _REPORT_ONLY.value:
      return _report_only()
    grid = _GRID.value or list(_CONFIG.value.grid)
    overridden = list(config_flags.get_override_values(flags.FLAGS["config"]))
    return loop.train(_CONFIG.value, _WORKDIR.value, grid=grid, overridden=overridden).report

  print("\n".join(str(p) for p in cli.run_command(command, argv)))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
