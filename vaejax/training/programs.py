"""A group's compiled programs: its executor, built from the plan and fitted in memory.

:func:`make_executor` builds the group's train step and
:class:`~vaejax.training.executor.Executor`; :func:`fit_in_memory` checks the compiled
programs' memory against the plan's budget (with ``execution.strategy="auto"`` it halves
the models per program until they fit); :func:`host_batches` makes a step's batches on
the host for datasets that are not sampled inside the program.
"""

from __future__ import annotations

from typing import Any

from absl import logging

from vaejax.training import memory, mesh as mesh_lib
from vaejax.training.executor import Executor
from vaejax.training.plan import GroupPlan
from vaejax.training.step import make_batch_fn, make_train_step


def make_executor(group: GroupPlan, chunk_size: int) -> Executor:
  """The group's executor (no state loaded) with ``chunk_size`` models per program."""
  config = group.config
  step_fn = make_train_step(group.model, group.optimizer,
                            free_bits_groups=group.free_bits_groups,
                            total_correlation=group.total_correlation,
                            conditional=group.traits.conditional, importance=group.importance,
                            skip_threshold=float(config.optimizer.skip_threshold))
  return Executor(step_fn, group.seeds, group.hyper, chunk_size=chunk_size,
                  max_consecutive_skips=config.optimizer.max_consecutive_skips,
                  batch_fn=make_batch_fn(group.dataset, config.batch_size), mesh=group.mesh)


def host_batches(group: GroupPlan, executor: Executor, data_position: int) -> list[Any] | None:
  """The batches of the next step, made on the host (None when sampled in the program)."""
  if executor.batch_fn is not None:
    return None

  def get_batch(k: int):
    return group.dataset.get_batch("train", data_position, group.config.batch_size,
                                   group.seeds[k])

  return executor.host_batches(get_batch)


def fit_in_memory(group: GroupPlan, executor: Executor, data_position: int) -> Executor:
  """``executor`` (its state loaded), or one with fewer models per program, whose compiled
  programs fit the plan's memory budget ("auto" halves the chunk until it fits).

  Raises:
    MemoryBudgetError: the programs do not fit (and the strategy may not shrink them).
  """
  state = executor.gather()
  state_bytes = memory.tree_bytes(state) // executor.num_models
  model_devices = mesh_lib.axis_size(group.mesh, mesh_lib.MODEL_AXIS)
  while True:
    temp = executor.program_temp_bytes(host_batches(group, executor, data_position))
    try:
      memory.check_memory(num_models=executor.num_models, bytes_per_model=state_bytes,
                          parallel_bytes=temp, budget=group.budget, model_devices=model_devices,
                          what=f" with {executor.chunk_size} models per program")
      return executor
    except memory.MemoryBudgetError:
      size = executor.chunk_size
      if group.config.execution.strategy != "auto" or size == 1 or group.mesh is not None:
        raise
      logging.info("%d models per program do not fit; trying %d.", size, size // 2)
      executor = make_executor(group, max(size // 2, 1))
      executor.load(state)
