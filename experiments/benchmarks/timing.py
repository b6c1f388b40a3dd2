"""Timing helpers shared by the benchmarks: interleaved repeats on two clocks.

Every benchmark here compares variants side by side in one process run: each repeat
calls every variant once, in an order that is reversed on every other repeat
(A B, B A, A B, ...), so a change in machine load or a drift in clock speed hits all
variants alike. Each call is timed on two clocks:

* wall: ``time.perf_counter()``, what a user waits for;
* CPU: ``time.process_time()``, the CPU time of *all threads* of this process (XLA's
  and PyTorch's thread pools included). Other processes' load on a shared machine
  slows the wall clock much more than it changes the CPU time a computation needs, so
  items per CPU-second are the steadier rate there (but they also count threads that
  spin while waiting, and they do not reward parallelism).

A variant is a zero-argument callable that does a fixed amount of work and returns
only once the work is done (for JAX: ends with ``jax.block_until_ready``).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any


@dataclasses.dataclass
class Rates:
  """Items per second of one variant, one entry per repeat."""

  wall: list[float] = dataclasses.field(default_factory=list)
  cpu: list[float] = dataclasses.field(default_factory=list)

  def median(self, clock: str = "wall") -> float:
    return statistics.median(getattr(self, clock))


def time_call(fn: Callable[[], Any]) -> tuple[float, float]:
  """``(wall seconds, process CPU seconds)`` of one call of ``fn``."""
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def interleaved_rates(
    variants: Mapping[str, Callable[[], Any]],
    items: Mapping[str, float] | float,
    repeats: int,
    *,
    alternate: bool = True,
) -> dict[str, Rates]:
  """Times ``repeats`` rounds of all ``variants``; returns items/s per variant and round.

  Args:
    variants: name → callable doing one timed unit of work (warm it up first).
    items: items (e.g. images) one call processes, per variant or the same for all.
    repeats: number of rounds; report medians over them.
    alternate: reverse the order of the variants on every other round.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}.")
  names = list(variants)
  rates = {name: Rates() for name in names}
  for round_index in range(repeats):
    order = names[::-1] if alternate and round_index % 2 else names
    for name in order:
      wall, cpu = time_call(variants[name])
      count = items[name] if isinstance(items, Mapping) else items
      rates[name].wall.append(count / wall)
      rates[name].cpu.append(count / max(cpu, 1e-9))
  return rates


def paired_ratio(numerator: Rates, denominator: Rates, clock: str = "wall") -> float:
  """Median over rounds of the per-round ratio: each ratio compares two variants timed
  back to back, so it cancels load changes slower than one round."""
  pairs = zip(getattr(numerator, clock), getattr(denominator, clock))
  return statistics.median(a / b for a, b in pairs)
