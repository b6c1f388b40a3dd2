"""Evaluations a stop cut short: recorded beside the checkpoint, finished first on resume.

When a stop signal ends an evaluation at step ``s`` (:class:`~vaejax.training.interrupt.
Interrupted`), the loop checkpoints step ``s`` and records the evaluators that did not
finish in ``checkpoints/unfinished_evaluations.json`` (:func:`record`). The same command
then restores step ``s`` and :func:`finish` runs exactly those evaluators on it, one after
another, merging their results into the step's logged rows (the log reads as if nothing
had stopped) and taking each off the record as it completes; then training goes on, or
a finished run ends, without training again.

A record of another step than the one restored is stale (an older checkpoint was
restored, so that step's evaluation runs again in its turn) and is removed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from vaejax.evaluation.evaluators import Stack
from vaejax.training.interrupt import Interrupted, StopRequested
from vaejax.training.plan import GroupPlan, Plan
from vaejax.utils import files

FILE = "unfinished_evaluations.json"


def _path(group: GroupPlan) -> Path:
  return group.checkpoint_dir / FILE


def record(group: GroupPlan, step: int, names: Sequence[str]) -> None:
  """Records that evaluators ``names`` did not finish at ``step`` (process 0; atomic)."""
  if jax.process_index() == 0:
    files.atomic_write_json(_path(group), {"step": int(step), "evaluators": list(names)})


def read(group: GroupPlan, step: int) -> list[str]:
  """The evaluators recorded as unfinished at ``step`` (a stale record is removed)."""
  path = _path(group)
  try:
    saved = json.loads(path.read_text())
    names = [str(n) for n in saved["evaluators"]] if saved["step"] == step else None
  except FileNotFoundError:
    return []
  except (ValueError, KeyError, TypeError):  # a damaged record: rerun nothing, drop it
    names = None
  if names is None:
    _remove(path)
    return []
  return names


def _remove(path: Path) -> None:
  if jax.process_index() == 0:
    path.unlink(missing_ok=True)


def finish(run: Plan, group: GroupPlan, step: int, stack: Stack, writer: Any,
           names: Sequence[str]) -> list[dict[str, Any]]:
  """Runs the evaluators ``names`` of ``group`` at ``step`` on ``stack`` (the restored
  state), merging each one's results into the step's rows through ``writer`` (a
  :class:`~vaejax.training.writers.MetricWriter`) and updating the record as each
  completes; returns, per model, the results (prefixed keys).

  Raises:
    Interrupted: a stop signal during one of them (it and those after it stay recorded).
  """
  evaluators = [e for e in group.evaluators if e.name in names]
  results: list[dict[str, Any]] = [{} for _ in group.models]
  for i, evaluator in enumerate(evaluators):
    try:
      rows = evaluator(stack, step)
    except StopRequested as stop:
      left = tuple(e.name for e in evaluators[i:])
      record(group, step, left)
      raise Interrupted(stop.signum, step, str(group.checkpoint_dir / str(step)), left
                        ) from None
    for k, row in enumerate(rows):
      results[k].update(row)
    writer.merge_rows(step, [{**_identity(run, group, step, k), **row}
                             for k, row in enumerate(rows)])
    writer.flush()
    remaining = [e.name for e in evaluators[i + 1:]]
    if remaining:
      record(group, step, remaining)
  _remove(_path(group))
  return results


def _identity(run: Plan, group: GroupPlan, step: int, k: int) -> dict[str, Any]:
  """The fields that say whose row a result belongs to (as the logged rows have them)."""
  row: dict[str, Any] = {"step": int(step)}
  if run.stacked:
    row.update(model=group.models[k], point=run.points[group.models[k]])
    if len(run.groups) > 1:
      row["group"] = group.index
  return row
