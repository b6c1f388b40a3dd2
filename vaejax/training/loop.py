r"""The training loop: every run, sweep and study is M ≥ 1 models in one program per group.

:func:`train` is the one loop. A single run (``experiments.train``) is a stack of one
model; a sweep (``experiments.sweep``) is the grid's points (:mod:`vaejax.sweeps.grid`),
split into groups that stack, each group one compiled program run one after another in
the same workdir. For every group the loop:

1. validates the config, the grid and every point, builds the model and evaluators and
   checks the data and memory, all before anything compiles;
2. initialises the stack (vmapped over seeds) or restores the newest checkpoint (exactly:
   a resumed run repeats an uninterrupted one bit for bit);
3. steps the models with an :class:`~vaejax.training.executor.Executor` (unbatched,
   vmapped or chunked per backend, optionally sharded over a ``("model", "data")`` mesh),
   batches made on the host or sampled inside the program;
4. every ``log_every`` steps fetches the step's metrics (the only host transfers besides
   evaluation and checkpoints) and writes one row per model; masks models whose updates
   stay non-finite (a single run stops with :class:`NonFiniteError`);
5. runs the evaluators of ``config.evals`` when due; checkpoints every
   ``checkpoint_every`` steps and at the end.

A sweep then writes ``results.jsonl`` (one row per model: its point, final metrics and
evaluations) and the report of :mod:`vaejax.sweeps.report`.

Model *i* of a sweep is the single run of ``apply_point(config, point_i)``: the same
initialisation, data order, sample keys, free-bits groups, evaluation batches and keys
(``tests/test_engine.py`` checks it against a reference loop written in the test).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

import vaejax
from vaejax import config as config_lib
from vaejax.models import codec
from vaejax.sweeps import grid as grid_lib
from vaejax.training import checkpoint as checkpoint_lib
from vaejax.training import faults, memory, mesh as mesh_lib, writers as writers_lib
from vaejax.training import workdir as workdir_lib
from vaejax.training.executor import Executor
from vaejax.training.interrupt import Interrupted, StopSignals
from vaejax.training.monitor import CollapseMonitor
from vaejax.training.optimizer import optimizer_from_config
from vaejax.training.plan import MODELS_DIR, GroupPlan, Plan, Point, plan
from vaejax.training.state import StackState, TrainState, abstract_stack, init_stack
from vaejax.training.step import importance_from_config, make_batch_fn, make_train_step

__all__ = ["CONFIG_FILE", "MODELS_DIR", "NonFiniteError", "REPORT_DIR", "RESULTS_FILE",
           "TrainResult", "evaluate_workdir", "load_config", "plan", "train",
           "train_and_evaluate"]

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.jsonl"
REPORT_DIR = "report"


class NonFiniteError(FloatingPointError):
  """Updates stayed non-finite: the single run, or every model of a stack, diverged."""


# ----------------------------------------------------------------------------- running


class _StackView:
  """What evaluators see of an executor: per-model functions and host parameters."""

  def __init__(self, executor: Executor):
    self._executor = executor
    self._host: StackState | None = None

  def map_models(self, fn, *shared, batched: bool = True):
    return self._executor.map_models(fn, *shared, batched=batched)

  def params(self, index: int):
    if self._host is None:
      self._host = self._executor.gather()
    return jax.tree.map(lambda x: x[index], self._host.models.params)


class GroupResult(NamedTuple):
  """A finished group: its final host state and each model's results (its logged rows
  merged, the latest value of every key)."""

  state: StackState
  rows: list[dict[str, Any]]


def _logged_results(plan: Plan, gp: GroupPlan) -> list[dict[str, Any]] | None:
  """Per model of ``gp``, its rows of ``metrics.jsonl`` merged in order (the latest value of
  every key: the final training metrics and every evaluation); None where the log is not
  readable here (processes other than 0 may not see it)."""
  path = plan.workdir / writers_lib.METRICS_FILE
  if jax.process_index() != 0 or not path.exists():
    return None
  index = {m: k for k, m in enumerate(gp.models)}
  merged: list[dict[str, Any]] = [{} for _ in gp.models]
  for row in writers_lib.read_jsonl(path):
    if len(plan.groups) > 1 and row.get("group") != gp.index:
      continue
    k = index.get(row.get("model", gp.models[0]))
    if k is not None:
      merged[k].update(row)
  return merged


def _make_executor(plan: Plan, gp: GroupPlan, chunk_size: int) -> Executor:
  config = gp.config
  step_fn = make_train_step(gp.model, optimizer_from_config(config),
                            free_bits_groups=gp.free_bits_groups,
                            total_correlation=gp.total_correlation,
                            conditional=codec.is_conditional(gp.model),
                            importance=importance_from_config(config),
                            skip_threshold=float(config.optimizer.skip_threshold))
  return Executor(step_fn, gp.seeds, gp.hyper, chunk_size=chunk_size,
                  max_consecutive_skips=config.optimizer.max_consecutive_skips,
                  batch_fn=make_batch_fn(gp.dataset, config.batch_size), mesh=gp.mesh)


def _fit_executor(gp: GroupPlan, executor: Executor, make, host_batches) -> Executor:
  """Checks the compiled programs' memory; "auto" halves the chunk until it fits."""
  state = executor.gather()
  state_bytes = memory.tree_bytes(state) // executor.num_models
  model_devices = mesh_lib.axis_size(gp.mesh, mesh_lib.MODEL_AXIS)
  while True:
    temp = executor.program_temp_bytes(host_batches(executor))
    try:
      memory.check_memory(num_models=executor.num_models, bytes_per_model=state_bytes,
                          parallel_bytes=temp, budget=gp.budget, model_devices=model_devices,
                          what=f" with {executor.chunk_size} models per program")
      return executor
    except memory.MemoryBudgetError:
      size = executor.chunk_size
      if gp.config.execution.strategy != "auto" or size == 1 or gp.mesh is not None:
        raise
      logging.info("%d models per program do not fit; trying %d.", size, size // 2)
      executor = make(max(size // 2, 1))
      executor.load(state)


def _rows(plan: Plan, gp: GroupPlan, step: int, metrics: Mapping[str, np.ndarray],
          active: np.ndarray, masked_at: np.ndarray, evals: Sequence[dict] | None,
          rate: float, collapsed: Sequence[bool] | None) -> list[dict[str, Any]]:
  rows = []
  for k, model in enumerate(gp.models):
    row: dict[str, Any] = {"step": int(step)}
    if plan.stacked:
      row.update(model=model, point=plan.points[model])
      if len(plan.groups) > 1:
        row["group"] = gp.index
      row.update(active=bool(active[k]), masked_at=int(masked_at[k]))
    row.update({name: value[k] for name, value in metrics.items()})
    if collapsed is not None:
      row["posterior_collapse"] = bool(collapsed[k])
    if evals is not None:
      row.update(evals[k])
    row["steps_per_sec"] = rate
    rows.append(writers_lib.to_python(row))
  return rows


def _nonfinite_message(plan: Plan, gp: GroupPlan, step: int, last_ckpt: int | None) -> str:
  bound = gp.config.optimizer.max_consecutive_skips
  advice = ("Lower the learning rate, set optimizer.grad_clip_norm, or check the data for "
            "NaNs.")
  intact = ("no checkpoint had been written yet" if last_ckpt is None else
            f"the last checkpoint (step {last_ckpt}) is intact")
  if not plan.stacked:
    return (f"More than {bound} consecutive updates were skipped for a non-finite loss or "
            f"gradient (by step {step}; optimizer.max_consecutive_skips={bound}). The run "
            f"stopped; {intact}. {advice}")
  return (f"All {len(gp.models)} models of the sweep's program diverged (more than {bound} "
          f"consecutive non-finite steps each) by step {step}; {intact}. {advice}")


def _run_group(plan: Plan, gp: GroupPlan, progress: bool | None,
               signals: StopSignals) -> GroupResult:
  config = gp.config
  config_dict = config_lib.to_dict(plan.config)
  ckpt_dir = gp.directory / checkpoint_lib.CHECKPOINT_DIR
  latest = checkpoint_lib.latest_resumable_step(ckpt_dir, config_dict, plan.points)
  optimizer = optimizer_from_config(config)
  conditional = codec.is_conditional(gp.model)
  if latest is not None and latest >= config.num_steps:  # finished: restore, compile nothing
    target = abstract_stack(gp.model, optimizer, len(gp.models), tuple(gp.dataset.image_shape),
                            conditional=conditional)
    restored = checkpoint_lib.restore_latest(ckpt_dir, target)
    if restored is not None and restored[2] >= config.num_steps:
      logging.info("%s finished at step %d (%s); nothing to train.",
                   f"Group {gp.index + 1}/{len(plan.groups)}" if len(plan.groups) > 1
                   else "The run", restored[2], ckpt_dir)
      rows = _logged_results(plan, gp) or [{"step": restored[2]} for _ in gp.models]
      missing = [e.name for e in gp.evaluators if e.at_end and e.logs_results and not any(
          k.startswith(e.prefix) for k in rows[0])]
      if missing:
        logging.warning(
            "Evaluator(s) %s did not run at the end of this finished run; run them with: "
            "python -m experiments.evaluate --workdir=%s --evals=%s", ", ".join(missing),
            plan.workdir, ",".join(missing))
      return GroupResult(jax.device_get(restored[0]), rows)
    latest = checkpoint_lib.latest_resumable_step(ckpt_dir, config_dict, plan.points)
  state = init_stack(gp.model, optimizer, gp.seeds, tuple(gp.dataset.image_shape),
                     conditional=conditional)
  position = 0
  if latest is not None:
    restored = checkpoint_lib.restore_latest(ckpt_dir, state)
    latest = None
    if restored is not None:
      state, meta, latest = restored
      config_lib.check_resumable(meta["config"], config_dict, str(ckpt_dir / str(latest)))
      position = int(meta["data_position"])
      logging.info("Resumed from step %d (%s).", latest, ckpt_dir)
  ckpt = checkpoint_lib.Checkpointer(ckpt_dir)

  def get_batch(k: int):
    return gp.dataset.get_batch("train", position, config.batch_size, gp.seeds[k])

  def make(chunk_size):
    return _make_executor(plan, gp, chunk_size)

  def host_batches(executor):
    return None if executor.batch_fn is not None else executor.host_batches(get_batch)

  num_params = sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(state.models.params))
  executor = make(gp.chunk_size)
  executor.load(state)
  del state
  executor = _fit_executor(gp, executor, make, host_batches)
  label = f"group {gp.index + 1}/{len(plan.groups)}" if len(plan.groups) > 1 else ""
  logging.info("%s%s: %d model(s) of %d parameters, %d per program (%s, %s), steps %d → %d.",
               f"{label}: " if label else "", config.model.name, executor.num_models,
               num_params, executor.chunk_size, config.execution.strategy,
               jax.default_backend(), position, config.num_steps)

  if len(plan.groups) > 1:
    def owns(row, g=gp.index):
      return row.get("group") == g
  else:
    def owns(row):
      return True
  writer, bar = writers_lib.create_writers(
      plan.workdir, position, config.num_steps, stacked=plan.stacked, owns=owns,
      progress=progress, label=label)
  monitor = None
  if config.monitor.collapse_patience:
    previous = [r for r in writers_lib.read_jsonl(plan.workdir / writers_lib.METRICS_FILE)
                if owns(r) and r.get("step", 0) <= position]
    labels = [grid_lib.point_label(plan.points[m]) if plan.stacked else ""
              for m in gp.models]
    monitor = CollapseMonitor(config.monitor.collapse_kl, config.monitor.collapse_patience,
                              gp.models, labels, previous)
  last_rows: list[dict[str, Any]] = [{} for _ in gp.models]
  last_evals: list[dict[str, Any]] = [{} for _ in gp.models]
  reported: set[int] = set()
  last_ckpt = latest
  clock = (time.perf_counter(), position)
  multiprocess = jax.process_count() > 1
  try:
    for step in range(position + 1, config.num_steps + 1):
      metrics = executor.step(host_batches(executor))
      position += 1
      bar.advance()
      faults.point("step", step)
      last = step == config.num_steps
      is_log = step % config.log_every == 0 or last
      due = [e for e in gp.evaluators if e.due(step, config.num_steps)]
      is_ckpt = step % config.checkpoint_every == 0 or last
      # Stop on SIGTERM/SIGINT after this step: at once alone, at a synchronising step
      # (agreed by all processes) in a multi-process run.
      stop = (signals.agreed() if (is_log or is_ckpt) else None) if multiprocess else (
          signals.signum)
      is_ckpt = is_ckpt or stop is not None
      if not (is_log or due or is_ckpt):
        continue
      host = executor.fetch(metrics)
      active, masked_at = executor.flags()
      for k in np.flatnonzero(~active):
        if plan.stacked and int(k) not in reported:
          reported.add(int(k))
          logging.warning(
              "Model %d (%s) diverged: masked at its step %d after more than %d consecutive "
              "non-finite steps; the others continue.", gp.models[k],
              grid_lib.point_label(plan.points[gp.models[k]]), masked_at[k],
              config.optimizer.max_consecutive_skips)
      if not active.any():
        raise NonFiniteError(_nonfinite_message(plan, gp, step, last_ckpt))
      evals = None
      if due:
        view = _StackView(executor)
        evals = [{} for _ in gp.models]
        for evaluator in due:
          for k, result in enumerate(evaluator(view, step)):
            evals[k].update(result)
            last_evals[k].update(result)
          faults.point("evaluation", step)
      if is_log or due:
        now = time.perf_counter()
        rate = (step - clock[1]) / max(now - clock[0], 1e-9)
        clock = (now, step)
        collapsed = None if monitor is None else [
            monitor.update(k, float(host["kl_max"][k])) for k in range(len(gp.models))]
        rows = _rows(plan, gp, step, host, active, masked_at, evals, rate, collapsed)
        writer.write_rows(step, rows)
        last_rows = rows
      if is_ckpt:
        writer.flush()  # the logs up to here survive a crash with the checkpoint
        meta = {"step": step, "data_position": position, "config": config_dict,
                "points": [config_lib.to_dict(p) for p in plan.points], "group": gp.index,
                "models": list(gp.models), "vaejax_version": vaejax.__version__}
        ckpt.save(step, executor.gather(), meta)
        last_ckpt = step
        faults.point("checkpoint", step)
      if stop is not None:
        writer.flush()
        ckpt.wait_until_finished()
        raise Interrupted(stop, step, str(ckpt_dir / str(step)))
    writer.flush()
  finally:
    writer.close()
    ckpt.close()  # waits for pending writes, which hold good states only
  final = executor.gather()
  rows = _logged_results(plan, gp) or [{"step": position, **r, **e}
                                       for r, e in zip(last_rows, last_evals)]
  return GroupResult(final, rows)


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


def checkpoint_dirs(workdir: Path) -> list[Path]:
  """Every checkpoint directory a run or sweep may have in ``workdir`` (one group's, or
  each group's)."""
  return [d / checkpoint_lib.CHECKPOINT_DIR for d in (workdir, *sorted(workdir.glob("group_*")))
          if (d / checkpoint_lib.CHECKPOINT_DIR).is_dir()]


def _write_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
  if jax.process_index() != 0:
    return
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = workdir / (CONFIG_FILE + ".tmp")
  tmp.write_text(json.dumps(config_lib.to_dict(config), indent=2, sort_keys=True) + "\n")
  tmp.replace(workdir / CONFIG_FILE)


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
  """
  if grid is not None:
    config = grid_lib.with_grid(config, grid)
  if workdir is None or not str(workdir).strip():
    workdir_lib.check_workdir(workdir)  # one line, before anything runs
  run = plan(config, workdir, grid=grid, overridden=overridden, dataset=dataset)
  workdir_lib.check_workdir(run.workdir)
  with workdir_lib.WorkdirLock(run.workdir, "training"), StopSignals() as signals:
    config_dict = config_lib.to_dict(config)
    # A refused resume must leave the workdir as it was: check every place a checkpoint of
    # this or another layout of groups may be (a grid that now splits differently included).
    for directory in checkpoint_dirs(run.workdir):
      checkpoint_lib.latest_resumable_step(directory, config_dict, run.points)
    _write_config(run.workdir, config)
    results = [_run_group(run, gp, progress, signals) for gp in run.groups]
  rows: list[dict[str, Any]] = [{} for _ in run.points]
  for gp, result in zip(run.groups, results):
    for k, model in enumerate(gp.models):
      rows[model] = result.rows[k]
  paths: list[Path] = []
  if run.stacked and jax.process_index() == 0:
    final = [{"model": i, "point": run.points[i], **{
        k: v for k, v in row.items()
        if k not in ("model", "point") and not k.startswith(writers_lib.HISTOGRAM_PREFIX)}}
             for i, row in enumerate(rows)]
    writers_lib.write_jsonl(run.workdir / RESULTS_FILE, final)
    if write_report:
      from vaejax.sweeps import report  # pylint: disable=g-import-not-at-top
      paths = report.write_report(final, run.workdir / REPORT_DIR, config)
      logging.info("Sweep report: %s", ", ".join(str(p) for p in paths))
  return TrainResult([r.state for r in results], run.points, rows, paths)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       dataset: Any = None, progress: bool | None = None) -> TrainState:
  """A single run (the flax examples' entry point): :func:`train` with no grid.

  Returns the model's final :class:`TrainState` (host arrays).
  """
  result = train(config, workdir, dataset=dataset, progress=progress)
  return jax.tree.map(lambda x: x[0], result.states[0].models)


# ----------------------------------------------------------------------------- finished runs


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
  """The grid points of a finished run, from its checkpoints' metadata (call it holding the
  workdir lock: orbax's manager tidies a running save's temporary files when it opens)."""
  for ckpt_dir in checkpoint_dirs(workdir):
    with checkpoint_lib.Checkpointer(ckpt_dir) as ckpt:
      latest = ckpt.latest_step()
      if latest is not None:
        return ckpt.read_meta(latest).get("points", [{}])
  raise FileNotFoundError(f"No checkpoints under {workdir}: train the run first.")


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
  """
  workdir = workdir_lib.check_workdir(workdir, create=False)
  config = load_config(workdir)
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
  with workdir_lib.WorkdirLock(workdir, f"evaluation ({', '.join(names)})"):
    points = _saved_points(workdir)
    run = plan(config, workdir, points=points, dataset=dataset, eval_names=names)
    return _evaluate_groups(run)


def _evaluate_groups(run: Plan) -> list[dict[str, Any]]:
  config = run.config
  results: list[dict[str, Any]] = [{} for _ in run.points]
  for gp in run.groups:
    conditional = codec.is_conditional(gp.model)
    target = abstract_stack(gp.model, optimizer_from_config(gp.config), len(gp.models),
                            tuple(gp.dataset.image_shape), conditional=conditional)
    ckpt_dir = gp.directory / checkpoint_lib.CHECKPOINT_DIR
    latest = checkpoint_lib.latest_resumable_step(ckpt_dir, config_lib.to_dict(config),
                                                  run.points)
    restored = None if latest is None else checkpoint_lib.restore_latest(ckpt_dir, target)
    if restored is None:
      raise FileNotFoundError(f"No checkpoint in {ckpt_dir}: train the run first.")
    state, _, step = restored
    executor = Executor(None, gp.seeds, gp.hyper, chunk_size=gp.chunk_size,
                        max_consecutive_skips=0, mesh=gp.mesh)
    executor.load(state)
    view = _StackView(executor)
    for k, model in enumerate(gp.models):
      results[model] = {"model": model, "point": run.points[model], "step": step}
    for evaluator in gp.evaluators:
      for k, row in enumerate(evaluator.evaluate(view, step)):
        results[gp.models[k]][evaluator.name] = row
  return results
