"""What a group logs: one row per model per logged step, and a finished group's results.

A row holds ``step``, the step's metrics, any evaluations of that step and
``steps_per_sec``; a sweep's rows also carry ``model``, ``point``, ``active``,
``masked_at`` (and ``group`` when the sweep runs several programs). A group's *results*
are its rows in ``metrics.jsonl`` merged in order: the latest value of every key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from vaejax.training import writers as writers_lib
from vaejax.training.plan import GroupPlan, Plan

Row = dict[str, Any]


def owner(run: Plan, group: GroupPlan) -> Callable[[Mapping[str, Any]], bool]:
  """Whether a row of ``metrics.jsonl`` is ``group``'s (every row, for one group)."""
  if len(run.groups) > 1:
    return lambda row: row.get("group") == group.index
  return lambda row: True


def logged_results(run: Plan, group: GroupPlan) -> list[Row] | None:
  """Per model of ``group``, its rows of ``metrics.jsonl`` merged in order (the latest value
  of every key: the final training metrics and every evaluation); None where the log is
  not readable here (processes other than 0 may not see it)."""
  path = run.workdir / writers_lib.METRICS_FILE
  if jax.process_index() != 0 or not path.exists():
    return None
  owns = owner(run, group)
  index = {m: k for k, m in enumerate(group.models)}
  merged: list[Row] = [{} for _ in group.models]
  for row in writers_lib.read_jsonl(path):
    if not owns(row):
      continue
    k = index.get(row.get("model", group.models[0]))
    if k is not None:
      merged[k].update(row)
  return merged


def model_rows(run: Plan, group: GroupPlan, step: int, metrics: Mapping[str, np.ndarray],
               flags: tuple[np.ndarray, np.ndarray], evals: Sequence[Row] | None, rate: float,
               collapsed: Sequence[bool] | None) -> list[Row]:
  """One JSON-ready row per model of ``group`` at ``step``.

  Args:
    metrics: the step's metrics on the host, each with a leading model axis.
    flags: ``(active, masked_at)`` per model.
    evals: per model, the evaluations run at this step (prefixed keys), or None.
    rate: steps per second since the previous row.
    collapsed: per model, whether the collapse monitor flags it (None: no monitor).
  """
  active, masked_at = flags
  rows = []
  for k, model in enumerate(group.models):
    row: Row = {"step": int(step)}
    if run.stacked:
      row.update(model=model, point=run.points[model])
      if len(run.groups) > 1:
        row["group"] = group.index
      row.update(active=bool(active[k]), masked_at=int(masked_at[k]))
    row.update({name: value[k] for name, value in metrics.items()})
    if collapsed is not None:
      row["posterior_collapse"] = bool(collapsed[k])
    if evals is not None:
      row.update(evals[k])
    row["steps_per_sec"] = rate
    rows.append(writers_lib.to_python(row))
  return rows


def by_model(run: Plan, rows_per_group: Sequence[Sequence[Row]]) -> list[Row]:
  """The groups' per-model rows in model order (a sweep's point order)."""
  rows: list[Row] = [{} for _ in run.points]
  for group, group_rows in zip(run.groups, rows_per_group):
    for k, model in enumerate(group.models):
      rows[model] = group_rows[k]
  return rows


def final_results(run: Plan, rows: Sequence[Row]) -> list[Row]:
  """``results.jsonl``'s rows from :func:`by_model`'s: per model its point and latest
  results (the histograms, which only TensorBoard shows, left out)."""
  return [{"model": i, "point": run.points[i], **{
      k: v for k, v in row.items()
      if k not in ("model", "point") and not k.startswith(writers_lib.HISTOGRAM_PREFIX)}}
          for i, row in enumerate(rows)]
