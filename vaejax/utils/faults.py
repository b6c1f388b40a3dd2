"""Failure points: deterministic faults for testing that runs never lose work.

Setting ``VAEJAX_FAULT=[ACTION:]POINT@KEY[+SECONDS]`` makes :func:`point` act when a run
passes the failure point ``POINT`` (:data:`POINTS`) with key ``KEY``: a step number for
``step`` (after a step), ``checkpoint`` (right after a checkpoint write started) and
``evaluation`` (after an evaluator), a file name for ``write`` (an atomic write whose
bytes are on disk, just before its rename: :func:`vaejax.utils.files.atomic_open`).
``ACTION`` is ``kill`` (SIGKILL, the default: a crash), ``sigterm`` (a preemption notice)
or ``sigint`` (Ctrl-C); with ``+SECONDS`` the signal comes that long after the point, from
a timer, while the run goes on (e.g. in the middle of a background checkpoint write).
Tests use it to stop a run at a chosen place and check that re-running the same command
resumes exactly. Unset (always, outside tests) it costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "VAEJAX_FAULT"
POINTS = ("step", "checkpoint", "evaluation", "write")
ACTIONS = {"kill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}


def point(name: str, key: int | str) -> None:
  """Sends this process the configured signal if ``VAEJAX_FAULT`` names this point and key
  (at once, or after the configured delay)."""
  target = os.environ.get(ENV)
  if not target:
    return
  action, _, where = target.rpartition(":")
  where, _, delay = where.partition("+")
  if where != f"{name}@{key}":
    return
  signum = ACTIONS[action or "kill"]
  if delay:
    threading.Timer(float(delay), os.kill, (os.getpid(), signum)).start()
  else:
    os.kill(os.getpid(), signum)
