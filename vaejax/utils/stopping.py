"""Stop signals: SIGTERM (preemption) and SIGINT (Ctrl-C) recorded, then acted on between units.

Inside :class:`StopSignals` the first SIGTERM or SIGINT is recorded instead of killing the
process. Work then stops at the next place that can stop safely:

* the training loop checks after every step (it checkpoints that step first);
* long work with nothing unsaved between its units (an evaluator's models, metrics,
  encoding chunks and classifier fits, figures, the sweep report) calls :func:`check`
  between units, which raises :class:`StopRequested` when a stop is pending, so a stop
  lands within one unit (seconds) wherever it arrives.

A second signal while stopping interrupts at once (the default behaviour). Multi-process
runs must stop at the same step on every process (their checkpoint is written
collectively): there :func:`check` never raises, and the loop stops at the step that
:meth:`StopSignals.agreed` all-gathers.

>>> with StopSignals():
...   check()  # nothing pending: returns
...   request(15)
...   check("the report")
Traceback (most recent call last):
...
vaejax.utils.stopping.StopRequested: Stopped by SIGTERM during the report; ...
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["SIGNALS", "StopRequested", "StopSignals", "check", "pending", "request"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)

# The process's stop state: the pending signal, whether checks may raise (single
# process), and how many StopSignals contexts are open (nested ones share the state).
_state: dict[str, Any] = {"pending": None, "checks": True, "depth": 0}


class StopRequested(Exception):  # noqa: N818  (a stop, not an error)
  """A stop signal arrived; raised between units of work (:func:`check`).

  Attributes:
    signum: the signal (15 = SIGTERM, 2 = SIGINT).
    during: what was running, for the message (e.g. "the sweep report").
  """

  def __init__(self, signum: int, during: str = "", message: str = ""):
    self.signum, self.during = int(signum), during
    where = f" during {during}" if during else ""
    super().__init__(message or (
        f"Stopped by {signal_name(signum)}{where}; every file written so far is complete; "
        "re-run the same command to finish."))

  @property
  def exit_code(self) -> int:
    """128 + the signal number: 143 for SIGTERM, 130 for SIGINT (a shell's convention)."""
    return 128 + self.signum


def signal_name(signum: int) -> str:
  """``15`` → ``"SIGTERM"``."""
  return signal.Signals(signum).name


def request(signum: int) -> None:
  """Records a stop (the signal handler's job; tests call it directly)."""
  if _state["pending"] is None:
    _state["pending"] = int(signum)


def pending() -> int | None:
  """The stop signal received and not yet acted on (None: go on)."""
  return _state["pending"]


def check(during: str = "") -> None:
  """Raises :class:`StopRequested` if a stop is pending (single-process runs only).

  Call it between units of work that leave nothing half-written when abandoned.
  """
  if _state["pending"] is not None and _state["checks"]:
    raise StopRequested(_state["pending"], during)


class StopSignals:
  """Records the first SIGTERM/SIGINT while active (a context manager; main thread only).

  Contexts nest (the entry point's and the loop's): the outermost one starts and ends
  with nothing pending.
  """

  def __init__(self):
    self._previous: dict[int, Any] = {}

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    if _state["pending"] is not None:  # a second signal: stop now
      signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
      signal.raise_signal(signum)
      return
    request(signum)

  def __enter__(self) -> StopSignals:  # noqa: PYI034  (Python 3.10: no typing.Self)
    if _state["depth"] == 0:
      import jax  # pylint: disable=g-import-not-at-top

      _state.update(pending=None, checks=jax.process_count() == 1)
    _state["depth"] += 1
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
    _state["depth"] -= 1
    if _state["depth"] == 0:
      _state["pending"] = None

  @property
  def signum(self) -> int | None:
    """The signal received (None: none yet)."""
    return _state["pending"]

  @property
  def requested(self) -> bool:
    """Whether this process received a stop signal (single-process runs act on it)."""
    return _state["pending"] is not None

  def agreed(self) -> int | None:
    """The signal to stop on, agreed by all processes (None = go on). Collective in a
    multi-process run: call it at the same steps on every process."""
    import jax  # pylint: disable=g-import-not-at-top

    if jax.process_count() == 1:
      return self.signum
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
    received = [int(f) for f in np.ravel(flags) if f]
    return received[0] if received else None
