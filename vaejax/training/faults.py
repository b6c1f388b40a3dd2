"""Failure points: deterministic faults for testing that runs never lose work.

Setting ``VAEJAX_FAULT=[ACTION:]POINT@STEP`` makes :func:`point` act when the loop passes
the failure point ``POINT`` (:data:`POINTS`: after a step, right after a checkpoint write
started, during an evaluation) at step ``STEP``. ``ACTION`` is ``kill`` (SIGKILL, the
default: a crash), ``sigterm`` (a preemption notice) or ``sigint`` (Ctrl-C). Tests use it
to stop a run at a chosen place and check that re-running the same command resumes
exactly. Unset (always, outside tests) it costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "VAEJAX_FAULT"
POINTS = ("step", "checkpoint", "evaluation")
ACTIONS = {"kill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}


def point(name: str, step: int) -> None:
  """Sends this process the configured signal if ``VAEJAX_FAULT`` names this point and step."""
  target = os.environ.get(ENV)
  if not target:
    return
  action, _, where = target.rpartition(":")
  if where == f"{name}@{step}":
    os.kill(os.getpid(), ACTIONS[action or "kill"])
