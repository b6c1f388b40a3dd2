"""Stopping a run cleanly on SIGTERM (preemption) and SIGINT (Ctrl-C).

Inside :class:`StopSignals` (:mod:`vaejax.utils.stopping`) the first SIGTERM or SIGINT is
recorded instead of killing the process. During training the loop finishes the current
step, writes a checkpoint at that step, flushes its logs and raises :class:`Interrupted`.
During an evaluation (periodic or at the end) the evaluator stops at its next unit of
work (:func:`vaejax.utils.stopping.check`); the loop then checkpoints that step, records
which evaluators did not finish (:mod:`vaejax.training.unfinished`) and raises
:class:`Interrupted`. The entry points print one line and exit with 128 + the signal
number (143 for SIGTERM, 130 for SIGINT); the same command resumes bit-identically and
first runs the evaluators the stop cut short.

Multi-process runs must stop at the same step on every process (their checkpoint is
written collectively): :meth:`StopSignals.agreed` all-gathers the processes' flags (at
log and checkpoint steps, where the processes synchronise anyway), so every process sees
the first signal any of them received at the same step.
"""

from __future__ import annotations

from vaejax.utils.stopping import SIGNALS, StopRequested, StopSignals, signal_name

__all__ = ["SIGNALS", "Interrupted", "StopRequested", "StopSignals"]


class Interrupted(StopRequested):
  """The run stopped on a signal after writing a checkpoint at ``step``.

  Attributes:
    signum, step: the signal and the checkpointed step.
    where: the checkpoint's directory.
    unfinished: the evaluators the stop cut short at ``step`` (they run first on resume).
  """

  def __init__(self, signum: int, step: int, where: str, unfinished: tuple[str, ...] = ()):
    self.step, self.where, self.unfinished = int(step), where, tuple(unfinished)
    name = signal_name(signum)
    if unfinished:
      message = (f"Stopped by {name} during the evaluation ({', '.join(unfinished)}) of step "
                 f"{step}; the step is checkpointed in {where}; re-run the same command to "
                 "finish the evaluation (training does not repeat).")
    else:
      message = (f"Stopped by {name} after step {step}: checkpoint written to {where}; "
                 "re-run the same command to resume.")
    super().__init__(signum, f"step {step}", message)
