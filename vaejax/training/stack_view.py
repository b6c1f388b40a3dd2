"""What evaluators see of a running (or restored) stack of models.

The evaluators' ``Stack`` protocol (:mod:`vaejax.evaluation.evaluators`): per-model
functions over the stack's parameters, and one model's parameters on the host.
"""

from __future__ import annotations

from typing import Any

import jax

from vaejax.training.executor import Executor
from vaejax.training.state import StackState


class StackView:
  """An :class:`~vaejax.training.executor.Executor` as evaluators use it."""

  def __init__(self, executor: Executor):
    self._executor = executor
    self._host: StackState | None = None

  def map_models(self, fn, *shared, batched: bool = True) -> list[Any]:
    """Per model, ``fn(params, seed, *shared)`` (:meth:`Executor.map_models`)."""
    return self._executor.map_models(fn, *shared, batched=batched)

  def params(self, index: int) -> Any:
    """Model ``index``'s parameters as host arrays (the stack is gathered once)."""
    if self._host is None:
      self._host = self._executor.gather()
    return jax.tree.map(lambda x: x[index], self._host.models.params)
