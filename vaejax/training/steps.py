"""Stepping one group: from its start to its last step, with rows, evaluations and saves.

:class:`GroupSteps` advances a group's :class:`~vaejax.training.executor.Executor` one step
at a time. After each step it asks :meth:`GroupSteps.due` what to do (the periodic
schedule of :mod:`vaejax.training.periodic`, plus a stop signal) and only then fetches the
step's metrics to the host: it masks models whose updates stay non-finite (a single run,
or a stack whose every model diverged, stops with :class:`NonFiniteError`), runs the due
evaluators, writes one row per model and saves a checkpoint
(:func:`vaejax.training.resume.save_checkpoint`). On SIGTERM/SIGINT it checkpoints the
step and raises :class:`~vaejax.training.interrupt.Interrupted`; a signal during an
evaluation ends the evaluation at its next unit of work, and the step is checkpointed
with the evaluators that did not finish recorded (:mod:`vaejax.training.unfinished`),
which a resumed run finishes first. A checkpoint save that failed in the background (a
full disk) stops the run at the next step with one error.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging

from vaejax.sweeps import grid as grid_lib
from vaejax.training import checkpoint as checkpoint_lib
from vaejax.training import programs, resume, unfinished, writers as writers_lib
from vaejax.training import rows as rows_lib
from vaejax.training.executor import Executor
from vaejax.training.interrupt import Interrupted, StopRequested, StopSignals
from vaejax.training.monitor import CollapseMonitor
from vaejax.training.periodic import Due, TrainingSchedule
from vaejax.training.plan import GroupPlan, Plan
from vaejax.evaluation.evaluators import StackView
from vaejax.training.state import StackState
from vaejax.utils import faults


class NonFiniteError(FloatingPointError):
  """Updates stayed non-finite: the single run, or every model of a stack, diverged."""


class GroupResult(NamedTuple):
  """A finished group: its final host state and each model's results (its logged rows
  merged, the latest value of every key)."""

  state: StackState
  rows: list[dict[str, Any]]


class GroupSteps:
  """Trains one group from ``start_step`` to ``group.config.num_steps``.

  Args:
    run: the plan.
    group: the group (its ``config`` is the one every decision here reads).
    executor: the group's executor, holding the starting state.
    start_step: the restored checkpoint's step (0 for a fresh stack).
    data_position: batches consumed so far.
    signals: the active stop signals.
    progress: show a progress bar (None: when stderr is a terminal).
    unfinished_evals: evaluators a stop cut short at ``start_step``: they run first.
  """

  def __init__(self, run: Plan, group: GroupPlan, executor: Executor, start_step: int,
               data_position: int, signals: StopSignals, progress: bool | None,
               unfinished_evals: tuple[str, ...] = ()):
    self.run, self.group, self.executor = run, group, executor
    self.start_step, self.unfinished_evals = start_step, tuple(unfinished_evals)
    self.config = group.config
    self.position = data_position
    self.signals = signals
    self.progress = progress
    self.schedule = TrainingSchedule.from_config(self.config, group.evaluators)
    self.owns = rows_lib.owner(run, group)
    self.last_checkpoint = start_step or None
    self.last_rows: list[dict[str, Any]] = [{} for _ in group.models]
    self.last_evals: list[dict[str, Any]] = [{} for _ in group.models]
    self.reported: set[int] = set()
    self.multiprocess = jax.process_count() > 1

  def train(self) -> GroupResult:
    """Steps to the end; returns the final host state and each model's results."""
    self.checkpointer = checkpoint_lib.Checkpointer(self.group.checkpoint_dir)
    self.writer, self.bar = writers_lib.create_writers(
        self.run.workdir, self.position, self.config.num_steps, stacked=self.run.stacked,
        owns=self.owns, progress=self.progress, label=self.run.group_label(self.group))
    self.monitor = self._collapse_monitor()
    self.clock = (time.perf_counter(), self.position)
    try:
      if self.unfinished_evals:
        unfinished.finish(self.run, self.group, self.start_step, StackView(self.executor),
                          self.writer, self.unfinished_evals)
      for step in range(self.position + 1, self.config.num_steps + 1):
        self._step(step)
      self.writer.flush()
    except BaseException:
      self._close(quietly=True)
      raise
    self._close()
    final = self.executor.gather()
    rows = rows_lib.logged_results(self.run, self.group) or [
        {"step": self.position, **r, **e} for r, e in zip(self.last_rows, self.last_evals)]
    return GroupResult(final, rows)

  def due(self, step: int) -> Due:
    """What to do after ``step``: the schedule's actions, and a checkpoint and stop on
    SIGTERM/SIGINT (at once alone; at a synchronising step, agreed by all processes, in a
    multi-process run)."""
    due = self.schedule.at(step)
    if self.multiprocess:
      stop = self.signals.agreed() if (due.log or due.checkpoint) else None
    else:
      stop = self.signals.signum
    return due._replace(stop=stop, checkpoint=due.checkpoint or stop is not None)

  def _close(self, quietly: bool = False) -> None:
    """Closes the writers and the checkpointer (waiting for the last save); raises the
    first of their errors, or none when ``quietly`` (another error is on its way)."""
    failure = None
    for close in (self.writer.close, self.checkpointer.close):
      try:
        close()
      except Exception as error:  # pylint: disable=broad-except
        failure = failure or error
    if failure is not None and not quietly:
      raise failure

  def _step(self, step: int) -> None:
    metrics = self.executor.step(programs.host_batches(self.group, self.executor,
                                                       self.position))
    self.position += 1
    self.bar.advance()
    faults.point("step", step)
    self.checkpointer.check_save()  # a save that failed in the background stops the run here
    due = self.due(step)
    if not due.any_action:
      return
    host = self.executor.fetch(metrics)
    flags = self.executor.flags()
    self._check_divergence(step, flags)
    evals, cut_short = self._evaluate(step, due.evaluators)
    if due.log or due.evaluators:
      self._log(step, host, flags, evals)
    stop = due.stop if due.stop is not None else self.signals.signum if cut_short else None
    if due.checkpoint or stop is not None:
      self._save(step)
    if stop is not None:
      self.writer.flush()
      self.checkpointer.wait_until_finished()
      if cut_short:
        unfinished.record(self.group, step, cut_short)
      raise Interrupted(stop, step, str(self.group.checkpoint_dir / str(step)), cut_short)

  def _collapse_monitor(self) -> CollapseMonitor | None:
    monitor = self.config.monitor
    if not monitor.collapse_patience or self.group.traits.latent_dim == 0:
      return None  # off, or a model without a latent (a language model: KL = 0 always)
    previous = [r for r in writers_lib.read_jsonl(self.run.workdir / writers_lib.METRICS_FILE)
                if self.owns(r) and r.get("step", 0) <= self.position]
    labels = [grid_lib.point_label(self.run.points[m]) if self.run.stacked else ""
              for m in self.group.models]
    return CollapseMonitor(monitor.collapse_kl, monitor.collapse_patience, self.group.models,
                           labels, previous)

  def _check_divergence(self, step: int, flags: tuple[np.ndarray, np.ndarray]) -> None:
    """Warns once per newly masked model of a sweep; raises when none is left."""
    active, masked_at = flags
    bound = self.config.optimizer.max_consecutive_skips
    for k in np.flatnonzero(~active):
      if self.run.stacked and int(k) not in self.reported:
        self.reported.add(int(k))
        model = self.group.models[k]
        logging.warning(
            "Model %d (%s) diverged: masked at its step %d after more than %d consecutive "
            "non-finite steps; the others continue.", model,
            grid_lib.point_label(self.run.points[model]), masked_at[k], bound)
    if not active.any():
      raise NonFiniteError(self._nonfinite_message(step))

  def _nonfinite_message(self, step: int) -> str:
    bound = self.config.optimizer.max_consecutive_skips
    advice = ("Lower the learning rate, set optimizer.grad_clip_norm, or check the data for "
              "NaNs.")
    intact = ("no checkpoint had been written yet" if self.last_checkpoint is None else
              f"the last checkpoint (step {self.last_checkpoint}) is intact")
    if not self.run.stacked:
      return (f"More than {bound} consecutive updates were skipped for a non-finite loss or "
              f"gradient (by step {step}; optimizer.max_consecutive_skips={bound}). The run "
              f"stopped; {intact}. {advice}")
    return (f"All {len(self.group.models)} models of the sweep's program diverged (more than "
            f"{bound} consecutive non-finite steps each) by step {step}; {intact}. {advice}")

  def _evaluate(self, step: int, evaluators: tuple[Any, ...]
                ) -> tuple[list[dict[str, Any]] | None, tuple[str, ...]]:
    """Runs the due evaluators: per model, their results (None when none is due), and the
    names of those a stop signal cut short (that one and the ones after it)."""
    if not evaluators:
      return None, ()
    view = StackView(self.executor)
    evals: list[dict[str, Any]] = [{} for _ in self.group.models]
    for i, evaluator in enumerate(evaluators):
      try:
        if self.signals.signum is not None and not self.multiprocess:
          raise StopRequested(self.signals.signum)  # stopping already: start none
        results = evaluator(view, step)
      except StopRequested:
        return evals, tuple(e.name for e in evaluators[i:])
      for k, result in enumerate(results):
        evals[k].update(result)
        self.last_evals[k].update(result)
      faults.point("evaluation", step)
    return evals, ()

  def _log(self, step: int, host: dict[str, np.ndarray], flags: tuple[np.ndarray, np.ndarray],
           evals: list[dict[str, Any]] | None) -> None:
    now = time.perf_counter()
    rate = (step - self.clock[1]) / max(now - self.clock[0], 1e-9)
    self.clock = (now, step)
    collapsed = None if self.monitor is None else [
        self.monitor.update(k, float(host["kl_max"][k])) for k in range(len(self.group.models))]
    rows = rows_lib.model_rows(self.run, self.group, step, host, flags, evals, rate, collapsed)
    self.writer.write_rows(step, rows)
    self.last_rows = rows

  def _save(self, step: int) -> None:
    self.writer.flush()  # the logs up to here survive a crash with the checkpoint
    resume.save_checkpoint(self.checkpointer, self.run, self.group, step, self.position,
                           self.executor.gather())
    self.last_checkpoint = step
    faults.point("checkpoint", step)
