"""Stopping cleanly on SIGTERM (preemption) and SIGINT (Ctrl-C).

Inside :class:`StopSignals` the first SIGTERM or SIGINT is recorded instead of killing
the process; the loop finishes the current step (and any evaluation due at it), writes a
checkpoint at that step, flushes its logs and raises :class:`Interrupted`. The entry
points print one line and exit with 128 + the signal number (143 for SIGTERM, 130 for
SIGINT); the same command resumes bit-identically. A second signal while stopping
interrupts at once (the default behaviour).

Multi-process runs must stop at the same step on every process (their checkpoint is
written collectively): :meth:`StopSignals.agreed` all-gathers the processes' flags (at
log and checkpoint steps, where the processes synchronise anyway), so every process sees
the first signal any of them received at the same step.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import jax
import numpy as np
from typing_extensions import Self

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):  # noqa: N818  (a stop, not an error)
  """The run stopped on a signal after writing a checkpoint at ``step``."""

  def __init__(self, signum: int, step: int, where: str):
    self.signum, self.step, self.where = int(signum), int(step), where
    super().__init__(
        f"Stopped by {signal.Signals(signum).name} after step {step}: checkpoint written to "
        f"{where}; re-run the same command to resume.")

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


class StopSignals:
  """Records the first SIGTERM/SIGINT while active (a context manager; main thread only)."""

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    if self.signum is not None:  # a second signal: stop now
      signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
      signal.raise_signal(signum)
      return
    self.signum = signum

  def __enter__(self) -> Self:
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  @property
  def requested(self) -> bool:
    """Whether this process received a stop signal (single-process runs act on it)."""
    return self.signum is not None

  def agreed(self) -> int | None:
    """The signal to stop on, agreed by all processes (None = go on). Collective in a
    multi-process run: call it at the same steps on every process."""
    if jax.process_count() == 1:
      return self.signum
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
    received = [int(f) for f in np.ravel(flags) if f]
    return received[0] if received else None
