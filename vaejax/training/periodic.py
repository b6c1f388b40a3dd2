"""Periodic actions: when the loop logs, checkpoints and evaluates (clu's ``periodic_actions``).

A :class:`Schedule` says when one action is due: every ``every`` steps, at the steps in
``at`` and at the last step. :class:`TrainingSchedule` holds the loop's schedules (rows
every ``log_every`` steps and at the end, checkpoints every ``checkpoint_every`` steps and
at the end, each evaluator by its ``every`` / ``at_end``) and answers, for one step, with a
:class:`Due`: the one place that decides what the loop does after a step. Steps count from
1 (step *t* is the state after *t* updates).

>>> schedule = Schedule(every=4, at=(6,), at_end=True)
>>> [step for step in range(1, 11) if schedule.due(step, last_step=10)]
[4, 6, 8, 10]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from vaejax.utils.checks import check_int


class Schedule(NamedTuple):
  """When one periodic action is due.

  Attributes:
    every: every this many steps (0 = never by period).
    at: the steps at which it is due besides.
    at_end: due at the last step of the run.
  """

  every: int = 0
  at: tuple[int, ...] = ()
  at_end: bool = False

  @classmethod
  def create(cls, every: int = 0, at: Iterable[int] = (), at_end: bool = False) -> Schedule:
    """A checked schedule (``every`` and each of ``at`` integers ≥ 0)."""
    every = check_int(every, "every", minimum=0)
    return cls(every, tuple(sorted(check_int(s, "at", minimum=1) for s in at)), bool(at_end))

  def due(self, step: int, last_step: int) -> bool:
    """Whether the action runs after ``step`` of a run that ends at ``last_step``."""
    periodic = self.every > 0 and step % self.every == 0
    return periodic or step in self.at or (self.at_end and step == last_step)


class Due(NamedTuple):
  """What the loop does after one step.

  Attributes:
    log: write each model's row.
    checkpoint: save a checkpoint (also after a stop signal).
    evaluators: the evaluators to run, in config order.
    stop: the stop signal to end the run on after this step (None = go on).
  """

  log: bool = False
  checkpoint: bool = False
  evaluators: tuple[Any, ...] = ()
  stop: int | None = None

  @property
  def any_action(self) -> bool:
    """Whether the step needs its metrics on the host (a row, an evaluation or a save)."""
    return self.log or self.checkpoint or bool(self.evaluators)


class TrainingSchedule:
  """The loop's periodic actions over a run that ends at ``last_step``.

  Args:
    last_step: the run's last step (``config.num_steps``).
    log_every: rows every this many steps (and at the end).
    checkpoint_every: checkpoints every this many steps (and at the end).
    evaluators: objects with ``every`` and ``at_end`` (the evaluators of ``config.evals``);
      each runs on the schedule its two fields give.
  """

  def __init__(self, last_step: int, log_every: int, checkpoint_every: int,
               evaluators: Sequence[Any] = ()):
    self.last_step = check_int(last_step, "num_steps", minimum=1)
    self.log = Schedule.create(every=log_every, at_end=True)
    self.checkpoint = Schedule.create(every=checkpoint_every, at_end=True)
    self.evaluators = [(e, Schedule.create(every=e.every, at_end=e.at_end)) for e in evaluators]

  @classmethod
  def from_config(cls, config: Any, evaluators: Sequence[Any] = ()) -> TrainingSchedule:
    """The schedule of a training config (``num_steps``, ``log_every``,
    ``checkpoint_every``) and its built evaluators."""
    return cls(config.num_steps, config.log_every, config.checkpoint_every, evaluators)

  def at(self, step: int) -> Due:
    """What is due after ``step`` (stop signals aside: the loop adds those)."""
    last = self.last_step
    return Due(log=self.log.due(step, last), checkpoint=self.checkpoint.due(step, last),
               evaluators=tuple(e for e, s in self.evaluators if s.due(step, last)))
