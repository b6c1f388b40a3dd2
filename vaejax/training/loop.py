r"""The training loop: every run, sweep and study is M ≥ 1 models in one program per group.

:func:`train` is the one loop. A single run (``experiments.train``) is a stack of one
model; a sweep (``experiments.sweep``) is the grid's points (:mod:`vaejax.sweeps.grid`),
split into groups that stack, each group one compiled program run one after another in
the same workdir. The loop orchestrates; its parts decide:

1. :mod:`~vaejax.training.plan` validates the config, the grid and every point and builds
   the models, hyper-parameters, evaluators and data and memory checks, all before
   anything compiles; holding the workdir lock it finds where each group resumes;
2. :mod:`~vaejax.training.resume` restores each group's newest checkpoint (exactly: a
   resumed run repeats an uninterrupted one bit for bit) or initialises it; a finished
   group compiles nothing;
3. :mod:`~vaejax.training.programs` builds the group's
   :class:`~vaejax.training.executor.Executor` (unbatched, vmapped or chunked per backend,
   optionally sharded over a ``("model", "data")`` mesh) and fits it in memory;
4. :mod:`~vaejax.training.steps` steps the models; :mod:`~vaejax.training.periodic`
   says when to write rows (:mod:`~vaejax.training.rows`), run the evaluators of
   ``config.evals`` and save checkpoints.

A sweep then writes ``results.jsonl`` (one row per model: its point, final metrics and
evaluations) and the report of :mod:`vaejax.sweeps.report`. Finished runs are evaluated
again by :func:`~vaejax.training.finished.evaluate_workdir`.

Re-running a run that a stop (SIGTERM/SIGINT) or a crash ended does only what is
missing: training resumes from the newest checkpoint, evaluations the stop cut short run
first (:mod:`vaejax.training.unfinished`), a finished run runs only the end-of-run
evaluators that did not run, and a sweep rewrites its results and report.

Model *i* of a sweep is the single run of ``apply_point(config, point_i)``: the same
initialisation, data order, sample keys, free-bits groups, evaluation batches and keys
(``tests/test_engine.py`` checks it against a reference loop written in the test).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from vaejax.evaluation.evaluators import StackView
from vaejax.sweeps import grid as grid_lib
from vaejax.training import programs, unfinished, writers as writers_lib
from vaejax.training import rows as rows_lib
from vaejax.training import workdir as workdir_lib
from vaejax.training.executor import Executor
from vaejax.training.finished import CONFIG_FILE, evaluate_workdir, load_config
from vaejax.training.interrupt import StopRequested, StopSignals
from vaejax.training.plan import MODELS_DIR, GroupPlan, Plan, Point, make_plan, with_resume_steps
from vaejax.training.resume import Start, restore_or_init
from vaejax.training.state import StackState, TrainState
from vaejax.training.steps import GroupResult, GroupSteps, NonFiniteError
from vaejax.utils import stopping
from vaejax.utils.files import atomic_write_json

__all__ = ["CONFIG_FILE", "MODELS_DIR", "NonFiniteError", "REPORT_DIR", "RESULTS_FILE",
           "TrainResult", "evaluate_workdir", "load_config", "make_plan", "plan", "train",
           "train_and_evaluate"]

RESULTS_FILE = "results.jsonl"
REPORT_DIR = "report"
plan = make_plan  # the planning function's former name, kept for callers that use it


class TrainResult(NamedTuple):
  """What :func:`train` returns.

  Attributes:
    states: the final host state of each group (a :class:`StackState`).
    points: the grid points (``[{}]`` for a single run).
    rows: one dict per model: its last logged row plus its latest evaluations.
    report: the report files a sweep wrote (empty otherwise).
  """

  states: list[StackState]
  points: list[Point]
  rows: list[dict[str, Any]]
  report: list[Path]


def train(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    grid: Sequence[str] | None = None,
    overridden: Sequence[str] = (),
    dataset: Any = None,
    progress: bool | None = None,
    write_report: bool = True,
) -> TrainResult:
  """Trains (or resumes) a single run, or every model of a sweep, in ``workdir``.

  Writes ``metrics.jsonl`` (one row per logged step per model; a sweep's rows carry
  ``model`` and ``point``), TensorBoard events, ``config.json``, orbax checkpoints and
  what the evaluators write (figures, result JSONs). A sweep also writes
  ``results.jsonl`` and ``report/``. Re-running the same command resumes exactly from
  the newest checkpoint.

  Two tiny MLP VAEs (β = 1 and 4) in one vmapped program, 4 steps on random 6×6 images:

  >>> import tempfile
  >>> import numpy as np
  >>> from vaejax import config as config_lib, data
  >>> images = (np.random.default_rng(0).random((32, 6, 6, 1)) < 0.3).astype(np.float32)
  >>> tiny = data.ArrayDataset("tiny", {s: data.SplitArrays(images, binary=True)
  ...                                   for s in ("train", "test")}, image_shape=(6, 6, 1))
  >>> config = config_lib.base_config()
  >>> config.model.update(name="mlp_vae", hidden_sizes=(8,), latent_dim=2)
  >>> config.data.name = "mnist_npz"  # nominal: the dataset is passed in
  >>> config.num_steps, config.batch_size, config.log_every = 4, 8, 2
  >>> config.eval.num_batches, config.eval.batch_size = 1, 8
  >>> config.evals.figures.at_end, config.execution.strategy = False, "vmap"
  >>> result = train(config, tempfile.mkdtemp(), grid=["loss.beta=1,4"], dataset=tiny,
  ...                progress=False, write_report=False)
  >>> [(row["point"], row["step"], "eval/elbo" in row) for row in result.rows]
  [({'loss.beta': 1.0}, 4, True), ({'loss.beta': 4.0}, 4, True)]

  Args:
    config: a training config (see ``experiments/configs/``).
    workdir: the run directory.
    grid: ``KEY=V1,V2,...`` axes of a sweep; None = a single run (``config.grid`` is
      ignored: the caller passes it, as ``experiments.sweep`` does).
    overridden: keys set by ``--config.KEY=...`` (a grid over them is an error).
    dataset: a dataset object to use instead of ``vaejax.data.load(config.data)``.
    progress: show a progress bar (None: when stderr is a terminal).
    write_report: a sweep writes ``report/`` (tables and figures) at the end.

  Raises:
    ValueError / KeyError: a bad config, grid, point, mesh or memory budget (before
      anything compiles).
    NonFiniteError: the single run, or every model of a program, diverged.
    Interrupted / StopRequested: a SIGTERM or SIGINT stopped it (after checkpointing).
    DiskFullError: a write failed for lack of space (the newest complete checkpoint and
      every complete row stay).
  """
  if grid is not None:
    config = grid_lib.with_grid(config, grid)
  if workdir is None or not str(workdir).strip():
    workdir_lib.check_workdir(workdir)  # one line, before anything runs
  run = make_plan(config, workdir, grid=grid, overridden=overridden, dataset=dataset)
  workdir_lib.check_workdir(run.workdir)
  with workdir_lib.WorkdirLock(run.workdir, "training"), StopSignals() as signals:
    # A refused resume leaves the workdir as it was: every checkpoint is checked first.
    run = with_resume_steps(run)
    _write_config(run)
    results = [_run_group(run, group, progress, signals) for group in run.groups]
    rows = rows_lib.by_model(run, [result.rows for result in results])
    report = _write_sweep_results(run, rows, write_report) if run.stacked else []
  return TrainResult([result.state for result in results], run.points, rows, report)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       dataset: Any = None, progress: bool | None = None) -> TrainState:
  """A single run (the flax examples' entry point): :func:`train` with no grid.

  Returns the model's final :class:`TrainState` (host arrays).
  """
  result = train(config, workdir, dataset=dataset, progress=progress)
  return jax.tree.map(lambda x: x[0], result.states[0].models)


def _run_group(run: Plan, group: GroupPlan, progress: bool | None,
               signals: StopSignals) -> GroupResult:
  """Restores or initialises one group and trains it to ``group.config.num_steps``.

  ``group.config`` is the group's config (its first point applied) and decides
  everything here; checkpoints record the run's (``run.saved_config``).
  """
  stopping.check(f"the start of {run.group_label(group) or 'training'}")
  start = restore_or_init(group, run.saved_config)
  cut_short = tuple(unfinished.read(group, start.step))
  if start.finished:  # restored, nothing compiled
    return _finished_group(run, group, start, cut_short)
  if start.restored:
    logging.info("Resumed from step %d (%s)%s.", start.step, group.checkpoint_dir,
                 f"; first finishing its evaluation ({', '.join(cut_short)}) that a stop cut "
                 "short" if cut_short else "")
  num_params = sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(start.state.models.params))
  executor = programs.make_executor(group, group.chunk_size)
  executor.load(start.state)
  start_step, position = start.step, start.data_position
  del start  # the executor holds the state now
  executor = programs.fit_in_memory(group, executor, position)
  label = run.group_label(group)
  logging.info("%s%s: %d model(s) of %d parameters, %d per program (%s, %s), steps %d → %d.",
               f"{label}: " if label else "", group.config.model.name, executor.num_models,
               num_params, executor.chunk_size, group.config.execution.strategy,
               jax.default_backend(), position, group.config.num_steps)
  return GroupSteps(run, group, executor, start_step, position, signals, progress,
                    cut_short).train()


def _finished_group(run: Plan, group: GroupPlan, start: Start,
                    cut_short: tuple[str, ...]) -> GroupResult:
  """A group restored at its last step: its logged results, after running the end-of-run
  evaluators that did not finish (a stop cut them short, or they were enabled since)."""
  name = run.group_label(group).capitalize() or "The run"
  rows = rows_lib.logged_results(run, group) or [{"step": start.step} for _ in group.models]
  missing = [e.name for e in group.evaluators if e.at_end and e.logs_results and not any(
      k.startswith(e.prefix) for k in rows[0]) and e.name not in cut_short]
  todo = (*cut_short, *missing)
  if not todo:
    logging.info("%s finished at step %d (%s); nothing to train.", name, start.step,
                 group.checkpoint_dir)
    return GroupResult(jax.device_get(start.state), rows)
  logging.info("%s finished training at step %d (%s); running only its evaluation(s) %s, "
               "which %s.", name, start.step, group.checkpoint_dir, ", ".join(todo),
               "a stop cut short" if cut_short else "had not run")
  executor = Executor(None, group.seeds, group.hyper, chunk_size=group.chunk_size,
                      max_consecutive_skips=0, mesh=group.mesh)
  executor.load(start.state)
  writer, _ = writers_lib.create_writers(
      run.workdir, start.step, group.config.num_steps, stacked=run.stacked,
      owns=rows_lib.owner(run, group), progress=False, label=run.group_label(group))
  try:
    unfinished.finish(run, group, start.step, StackView(executor), writer, todo)
  except BaseException:
    with contextlib.suppress(Exception):  # the error on its way says what went wrong
      writer.close()
    raise
  writer.close()
  rows = rows_lib.logged_results(run, group) or [{"step": start.step} for _ in group.models]
  return GroupResult(jax.device_get(start.state), rows)


def _write_config(run: Plan) -> None:
  """``config.json``: the run's config (process 0; atomically)."""
  if jax.process_index() == 0:
    atomic_write_json(run.workdir / CONFIG_FILE, run.saved_config, indent=2, sort_keys=True)


def _write_sweep_results(run: Plan, rows: list[dict[str, Any]], write_report: bool
                         ) -> list[Path]:
  """``results.jsonl`` and (with ``write_report``) ``report/``; returns the report's files."""
  if jax.process_index() != 0:
    return []
  try:
    final = rows_lib.final_results(run, rows)
    writers_lib.write_jsonl(run.workdir / RESULTS_FILE, final)
    if not write_report:
      return []
    from vaejax.sweeps import report  # pylint: disable=g-import-not-at-top
    paths = report.write_report(final, run.workdir / REPORT_DIR, run.config,
                                writers_lib.read_jsonl(run.workdir / writers_lib.METRICS_FILE))
  except StopRequested as stop:  # every model is trained, evaluated and checkpointed
    raise StopRequested(stop.signum, "the sweep's results.jsonl and report") from None
  logging.info("Sweep report: %s", ", ".join(str(p) for p in paths))
  return paths
