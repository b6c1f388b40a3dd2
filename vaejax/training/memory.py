"""Memory budgets: refuse, before allocating anything, to stack more models than fit.

The budget of an accelerator is its free memory (``device.memory_stats()``); on CPU, which
reports none, it is :data:`CPU_MEMORY_FRACTION` of the available physical memory.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np

CPU_MEMORY_FRACTION = 0.8  # of available RAM: leave room for the host-side program
_GIB = 2**30


class MemoryBudgetError(ValueError):
  """The requested models do not fit in the memory budget (a ValueError, caught as one)."""


def tree_bytes(tree: Any) -> int:
  """Bytes of every array (or ShapeDtypeStruct) leaf of ``tree``."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def memory_budget(device: Any | None = None, budget_bytes: float | None = None) -> int:
  """Bytes a stack of models may use on ``device`` (default: the first device).

  ``budget_bytes`` > 0 overrides. Accelerators: ``bytes_limit - bytes_in_use`` from
  ``device.memory_stats()``. CPU (no stats): :data:`CPU_MEMORY_FRACTION` of the available
  physical memory (``os.sysconf``), or 8 GiB where that is unknown.
  """
  if budget_bytes:
    return int(budget_bytes)
  device = device if device is not None else jax.devices()[0]
  stats = None
  try:
    stats = device.memory_stats()
  except (AttributeError, NotImplementedError, RuntimeError):  # some backends lack it
    stats = None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  try:
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    available = 10 * _GIB
  return int(CPU_MEMORY_FRACTION * available)


def gib(num_bytes: float) -> str:
  return f"{num_bytes / _GIB:.3g} GiB"


def check_memory(
    *,
    num_models: int,
    bytes_per_model: int,
    parallel_bytes: int,
    budget: int,
    model_devices: int = 1,
    what: str = "",
) -> None:
  r"""Raises :class:`MemoryBudgetError` unless the models fit in ``budget`` (per device).

  Needed bytes per device: ⌈M / D_model⌉ · ``bytes_per_model`` (the resident train
  states) + ``parallel_bytes`` (what one program needs beyond them: its activations and
  batches). The message says how many models fit.
  """
  per_device = math.ceil(num_models / model_devices)
  need = per_device * bytes_per_model + parallel_bytes
  if need <= budget:
    return
  fit = max((budget - parallel_bytes) // max(bytes_per_model, 1), 0) * model_devices
  raise MemoryBudgetError(
      f"{num_models} models do not fit{what}: they need about {gib(need)} per device "
      f"({gib(bytes_per_model)} of parameters and optimizer state per model, "
      f"{gib(parallel_bytes)} for the running program) but the budget is {gib(budget)}. "
      f"At most {int(fit)} models fit; use fewer models or seeds, a smaller chunk_size, "
      "more devices on the model axis, or raise execution.memory_budget_gb.")
