"""Finished runs: the config a run saved, and its evaluators run again on its checkpoints.

:func:`load_config` reads ``config.json``; :func:`evaluate_workdir` (the library side of
``experiments.evaluate`` and ``experiments.train --figures_only``) rebuilds the run's plan
from that config and the grid points its checkpoints record, restores each group's newest
checkpoint (:func:`vaejax.training.resume.restore_or_init`, the loop's restore path, which
reads through :func:`vaejax.training.checkpoint.read_checkpoint` as :func:`vaejax.load_run`
does) and runs the named evaluators on the same held-out data and keys as during training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from vaejax import config as config_lib
from vaejax.training import checkpoint as checkpoint_lib
from vaejax.training import workdir as workdir_lib
from vaejax.training.executor import Executor
from vaejax.training.interrupt import StopRequested, StopSignals
from vaejax.training.plan import Plan, Point, checkpoint_dirs, make_plan, with_resume_steps
from vaejax.training.resume import restore_or_init
from vaejax.evaluation.evaluators import StackView

CONFIG_FILE = "config.json"


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a run saved in ``workdir/config.json``; keys the schema gained since the
  run was written take their defaults (they do not change what the run computed)."""
  path = Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f"No {CONFIG_FILE} in {Path(workdir).resolve()}: not a vaejax workdir "
        "(python -m experiments.train or experiments.sweep writes it).")
  return ml_collections.ConfigDict(config_lib.with_defaults(json.loads(path.read_text())))


def _saved_points(workdir: Path) -> list[Point]:
  """The grid points of a finished run, from its newest checkpoint's metadata (read-only)."""
  for ckpt_dir in checkpoint_dirs(workdir):
    steps = checkpoint_lib.complete_steps(ckpt_dir)
    if steps:
      return checkpoint_lib.read_meta(ckpt_dir, steps[0]).get("points", [{}])
  raise FileNotFoundError(f"No checkpoints under {workdir}: train the run first.")


def _apply_overrides(config: ml_collections.ConfigDict,
                     overrides: Mapping[str, Mapping[str, Any]] | None) -> None:
  for name, values in (overrides or {}).items():
    if name not in config.evals:
      raise config_lib.ConfigError(f"No evaluator {name!r} in the run's config.evals; it has: "
                                   f"{', '.join(config.evals)}.")
    for key, value in values.items():
      if key not in config.evals[name]:
        raise config_lib.UnknownKeyError(
            f"Unknown key {key!r} of evaluator {name!r}; its keys are: "
            f"{', '.join(config.evals[name])}.")
      config.evals[name][key] = value


def evaluate_workdir(workdir: str | os.PathLike, names: Sequence[str], *,
                     overrides: Mapping[str, Mapping[str, Any]] | None = None,
                     dataset: Any = None) -> list[dict[str, Any]]:
  """Runs evaluators of a finished run (one model or a sweep) on its newest checkpoints.

  The same evaluators as during training (``config.evals`` of ``workdir/config.json``),
  on the same held-out data and keys. Each writes its files into the model's directory.

  Args:
    workdir: a run or sweep directory.
    names: evaluator names of ``config.evals`` (e.g. ``("iwae",)``).
    overrides: per evaluator, values replacing its config's (e.g.
      ``{"iwae": {"num_samples": 5000}}``).
    dataset: a dataset object to use instead of ``vaejax.data.load(config.data)``.

  Returns:
    One dict per model: ``model``, ``point``, ``step`` and every evaluator's results
    (unprefixed keys, nested under the evaluator's name).

  Raises:
    StopRequested: a SIGTERM/SIGINT stopped it between two units of work (the result
      files written are complete; running it again redoes the rest).
  """
  workdir = workdir_lib.check_workdir(workdir, create=False)
  config = load_config(workdir)
  _apply_overrides(config, overrides)
  what = f"evaluation ({', '.join(names)})"
  with workdir_lib.WorkdirLock(workdir, what), StopSignals():
    points = _saved_points(workdir)
    run = make_plan(config, workdir, points=points, dataset=dataset, eval_names=names)
    try:
      return _evaluate_groups(with_resume_steps(run, every_layout=False))
    except StopRequested as stop:  # each result file is written whole or not at all
      raise StopRequested(stop.signum, f"the {what}") from None


def _evaluate_groups(run: Plan) -> list[dict[str, Any]]:
  results: list[dict[str, Any]] = [{} for _ in run.points]
  for group in run.groups:
    start = restore_or_init(group, run.saved_config, init=False)
    if start is None:
      raise FileNotFoundError(f"No checkpoint in {group.checkpoint_dir}: train the run first.")
    executor = Executor(None, group.seeds, group.hyper, chunk_size=group.chunk_size,
                        max_consecutive_skips=0, mesh=group.mesh)
    executor.load(start.state)
    view = StackView(executor)
    for model in group.models:
      results[model] = {"model": model, "point": run.points[model], "step": start.step}
    for evaluator in group.evaluators:
      for k, row in enumerate(evaluator.evaluate(view, start.step)):
        results[group.models[k]][evaluator.name] = row
  return results
