r"""Running a sweep's models: stacked states, programs, device meshes and memory.

A sweep stacks M models on a leading *model axis* (:class:`SweepState`) and advances them
with :class:`SweepExecutor`, which splits them into *chunks*, each one compiled program:
a chunk of C > 1 models runs the per-model step ``jax.vmap``-ed, a chunk of one runs it
unbatched, and a step is a Python loop over the chunks (asynchronous dispatch overlaps
them). :func:`resolve_chunk_size` turns a strategy ("vmap", "sequential", "chunked",
"auto") into a chunk size; see :mod:`vaejax.sweep` for when each wins.

Devices: with a :class:`jax.sharding.Mesh` of shape (model devices, data devices) and axis
names (``"model"``, ``"data"``):

* every leaf of a chunk's stacked state is sharded ``P("model")``: each device along the
  model axis holds and trains C / D_model whole models;
* every stacked batch ``(C, B, ...)`` is sharded ``P("model", "data")``: each model's batch
  is split over the data axis (data parallelism inside a model; XLA inserts the all-reduce
  of the gradient, so the numbers equal one device's up to float summation order).

XLA's SPMD partitioner compiles the same ``jit(vmap(step))`` program for any mesh, so one
code path serves 1 device, 8 CPU test devices and a multi-host GPU pod.

Multi-host: call ``jax.distributed.initialize()`` first thing on every host (on Cloud TPU
and SLURM it finds its peers itself; elsewhere pass ``coordinator_address``,
``num_processes`` and ``process_id``). ``jax.devices()`` then lists every host's devices
and :func:`make_mesh` spans them all. Every host runs the same program: batches made on
the host are computed in full on each host (they are pure functions of seed and step) and
:func:`put_global` hands each device its slice; :func:`to_host` gathers sharded results
across hosts; only process 0 writes logs (orbax writes checkpoints collectively).

Memory: a sweep refuses, before allocating anything, to stack more models than fit. The
budget of an accelerator is its free memory (``device.memory_stats()``); on CPU, which
reports none, it is :data:`CPU_MEMORY_FRACTION` of the available physical memory.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vaejax import objectives, train

Array = jax.Array
Batch = dict[str, Any]
STRATEGIES = ("auto", "vmap", "sequential", "chunked")
EVAL_STREAM = 101  # fold_in tag of evaluation keys, apart from vaejax.train's streams

MODEL_AXIS = "model"
DATA_AXIS = "data"
CPU_MEMORY_FRACTION = 0.8  # of available RAM: leave room for the host-side program
_GIB = 2**30


class SweepMemoryError(ValueError):
  """The requested models do not fit in the memory budget (a ValueError, caught as one)."""


# ----------------------------------------------------------------------------- meshes


def make_mesh(
    model_devices: int = 1, data_devices: int = 1, devices: Sequence[Any] | None = None
) -> Mesh:
  """A (model, data) mesh over the first ``model_devices × data_devices`` devices.

  Args:
    model_devices: devices along the model axis; 0 = all devices left after ``data_devices``.
    data_devices: devices along the data axis; 0 = all devices left after ``model_devices``.
    devices: the devices to use (default ``jax.devices()``, all hosts' devices).

  Raises:
    ValueError: a negative count, both counts 0, or more devices than exist.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  for name, value in (("model_devices", model_devices), ("data_devices", data_devices)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f"{name} must be an int >= 0 (0 = all remaining devices); got {value!r}.")
  if model_devices == 0 and data_devices == 0:
    raise ValueError("model_devices and data_devices cannot both be 0 (all devices).")
  if model_devices == 0:
    model_devices = max(n // data_devices, 1)
  if data_devices == 0:
    data_devices = max(n // model_devices, 1)
  if model_devices * data_devices > n:
    raise ValueError(
        f"A mesh of {model_devices} model × {data_devices} data devices needs "
        f"{model_devices * data_devices} devices; only {n} are available "
        f"({devices[0].platform}). On CPU, set "
        "XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts.")
  grid = np.asarray(devices[: model_devices * data_devices], dtype=object)
  return Mesh(grid.reshape(model_devices, data_devices), (MODEL_AXIS, DATA_AXIS))


def axis_size(mesh: Mesh | None, axis: str) -> int:
  """Devices along ``axis`` of ``mesh`` (1 without a mesh)."""
  return 1 if mesh is None else int(mesh.shape[axis])


def check_divisible(mesh: Mesh | None, *, models_per_program: int, batch_size: int) -> None:
  """Raises ValueError unless the mesh divides the models of one program and the batch.

  Args:
    mesh: the mesh, or None (nothing to check).
    models_per_program: models stacked in one compiled program (the chunk size).
    batch_size: examples per model per step.
  """
  if mesh is None:
    return
  m, d = axis_size(mesh, MODEL_AXIS), axis_size(mesh, DATA_AXIS)
  if models_per_program % m:
    raise ValueError(
        f"The mesh's model axis has {m} devices, which does not divide the "
        f"{models_per_program} models trained per program; use a model count (or "
        f"sweep.chunk_size) that is a multiple of {m}, or set sweep.model_devices to a "
        f"divisor of {models_per_program}.")
  if batch_size % d:
    raise ValueError(
        f"The mesh's data axis has {d} devices, which does not divide batch_size="
        f"{batch_size}; use a batch size that is a multiple of {d}, or set "
        f"sweep.data_devices to a divisor of {batch_size}.")


def state_sharding(mesh: Mesh, stacked: bool = True) -> NamedSharding:
  """Model-axis sharding of stacked leaves (replicated when not ``stacked``)."""
  return NamedSharding(mesh, PartitionSpec(MODEL_AXIS) if stacked else PartitionSpec())


def batch_sharding(mesh: Mesh, stacked: bool = True) -> NamedSharding:
  """``(M, B, ...)`` batches: models over the model axis, examples over the data axis."""
  spec = PartitionSpec(MODEL_AXIS, DATA_AXIS) if stacked else PartitionSpec(DATA_AXIS)
  return NamedSharding(mesh, spec)


def put_global(tree: Any, sharding: NamedSharding | None) -> Any:
  """Places host arrays (the same global values on every host) with ``sharding``.

  Without a sharding, a plain ``jax.device_put``. With one, each device receives its
  slice via ``jax.make_array_from_callback``, which works on one host and on many.
  """
  if sharding is None:
    return jax.device_put(tree)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
  """Numpy copies of (possibly sharded, possibly multi-host) arrays."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(get, tree)


# ----------------------------------------------------------------------------- memory


def tree_bytes(tree: Any) -> int:
  """Bytes of every array (or ShapeDtypeStruct) leaf of ``tree``."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def memory_budget(device: Any | None = None, budget_bytes: float | None = None) -> int:
  """Bytes a sweep may use on ``device`` (default: the first device).

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
  r"""Raises :class:`SweepMemoryError` unless the models fit in ``budget`` (per device).

  Needed bytes per device: ⌈M / D_model⌉ · ``bytes_per_model`` (the resident train
  states) + ``parallel_bytes`` (what one program needs beyond them: its activations and
  batches). The message says how many models fit.
  """
  per_device = math.ceil(num_models / model_devices)
  need = per_device * bytes_per_model + parallel_bytes
  if need <= budget:
    return
  fit = max((budget - parallel_bytes) // max(bytes_per_model, 1), 0) * model_devices
  raise SweepMemoryError(
      f"{num_models} models do not fit{what}: they need about {gib(need)} per device "
      f"({gib(bytes_per_model)} of parameters and optimizer state per model, "
      f"{gib(parallel_bytes)} for the running program) but the budget is {gib(budget)}. "
      f"At most {int(fit)} models fit; use fewer models or seeds, a smaller chunk_size, "
      "more devices on the model axis, or raise sweep.memory_budget_gb.")


# ----------------------------------------------------------------------------- stacked states


class SweepState(flax.struct.PyTreeNode):
  """The stacked train states of a sweep plus which models still train.

  Attributes:
    models: a :class:`vaejax.train.TrainState` whose leaves have a leading model axis.
    active: bool (M,); False once a model diverged (its state is then frozen).
    masked_at: int32 (M,); the model's step when it was masked, −1 while active.
  """

  models: Any
  active: Array
  masked_at: Array


def init_state(model: Any, optimizer: Any, seeds: Sequence[int], image_shape: Sequence[int],
               *, conditional: bool = False) -> SweepState:
  """Initial :class:`SweepState`; model *i* equals ``train.create_train_state(..., seeds[i])``."""
  seeds = jnp.asarray(np.asarray(seeds, np.uint32))

  def one(seed):
    return train.create_train_state(model, optimizer, seed, image_shape, conditional=conditional)

  models = jax.jit(jax.vmap(one))(seeds)
  m = seeds.shape[0]
  return SweepState(models=models, active=jnp.ones((m,), bool),
                    masked_at=jnp.full((m,), -1, jnp.int32))


def make_masked_step(step_fn: train.StepFn, max_consecutive_skips: int, *,
                     use_cond: bool = False):
  """Wraps a train step so that a diverged model is masked and frozen.

  Returns ``(state, batch, settings) -> (state, metrics)`` over one model's
  :class:`SweepState` (unstacked leaves). While active, the model takes ``step_fn``'s
  step; once its run of consecutive skipped updates exceeds ``max_consecutive_skips``
  it becomes inactive: its state is kept from then on and its metrics are NaN (0 for
  integer counters).

  Args:
    step_fn: the train step.
    max_consecutive_skips: the N of "more than N consecutive non-finite steps".
    use_cond: skip the step of an inactive model with ``lax.cond`` (for an unbatched
      model: saves its compute and a select over the whole state); else compute it and
      select with ``jnp.where`` (what ``vmap`` turns a cond into anyway).
  """

  def masked_step(state: SweepState, batch: Batch | None, settings: objectives.LossSettings):
    def run():
      return step_fn(state.models, batch, settings)

    def frozen():
      _, shapes = jax.eval_shape(run)
      return state.models, jax.tree.map(_blank, shapes)

    if use_cond:
      models, metrics = jax.lax.cond(state.active, run, frozen)
    else:
      new, metrics = run()
      models = jax.tree.map(lambda a, b: jnp.where(state.active, a, b), new, state.models)
      metrics = jax.tree.map(lambda m, b: jnp.where(state.active, m, b), metrics, frozen()[1])
    diverged = state.active & (models.consecutive_skips > max_consecutive_skips)
    masked_at = jnp.where(diverged, models.step, state.masked_at)
    return SweepState(models, state.active & ~diverged, masked_at), metrics

  return masked_step


def _blank(shape: jax.ShapeDtypeStruct) -> Array:
  fill = jnp.nan if jnp.issubdtype(shape.dtype, jnp.inexact) else 0
  return jnp.full(shape.shape, fill, shape.dtype)


# ----------------------------------------------------------------------------- execution


class Chunk(NamedTuple):
  """Models ``start:stop`` run as one program; ``vmapped`` False for a single model."""

  start: int
  stop: int
  vmapped: bool


def resolve_chunk_size(strategy: str, num_models: int, *, chunk_size: int = 0,
                       backend: str | None = None, model_devices: int = 1) -> int:
  """Models per program for ``strategy`` (before any memory-driven shrinking)."""
  if strategy not in STRATEGIES:
    raise ValueError(f"Unknown sweep strategy {strategy!r}; expected one of {STRATEGIES}.")
  if strategy == "sequential":
    return 1
  if strategy == "vmap":
    return num_models
  if strategy == "chunked":
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not (
        1 <= chunk_size <= num_models):
      raise ValueError(
          f"Strategy 'chunked' needs sweep.chunk_size in [1, {num_models}] (the number of "
          f"models); got {chunk_size!r}.")
    return chunk_size
  backend = backend or jax.default_backend()
  if model_devices > 1 or backend != "cpu":
    return num_models
  return 1


def plan_chunks(num_models: int, chunk_size: int) -> list[Chunk]:
  """Contiguous chunks of ``chunk_size`` (the last may be smaller); single models unbatched."""
  bounds = [(lo, min(lo + chunk_size, num_models)) for lo in range(0, num_models, chunk_size)]
  return [Chunk(lo, hi, hi - lo > 1) for lo, hi in bounds]


def _take(tree: Any, chunk: Chunk) -> Any:
  """Numpy slice of host arrays: ``start:stop`` for a vmapped chunk, ``start`` otherwise."""
  index = slice(chunk.start, chunk.stop) if chunk.vmapped else chunk.start
  # A copy, not a view: on CPU a device array may alias it, and the programs donate.
  return jax.tree.map(lambda x: np.array(np.asarray(x)[index]), tree)


def _join(parts: Sequence[Any], chunks: Sequence[Chunk]) -> Any:
  """Host arrays of chunk trees joined on a leading model axis."""
  parts = [p if c.vmapped else jax.tree.map(lambda x: np.asarray(x)[None], p)
           for p, c in zip(parts, chunks)]
  return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


@functools.lru_cache(maxsize=16)
def _chunk_program(step_fn: train.StepFn, max_consecutive_skips: int, vmapped: bool,
                   batch_fn: Callable | None, mesh: Mesh | None) -> Callable:
  """The jitted ``(state, seeds, settings, batch) -> (state, metrics)`` of one chunk.

  Cached, so executors of the same step (e.g. after a re-plan) share compiled programs.
  """
  step = make_masked_step(step_fn, max_consecutive_skips, use_cond=not vmapped)
  step = jax.vmap(step) if vmapped else step
  sample = (jax.vmap(batch_fn) if vmapped else batch_fn) if batch_fn is not None else None
  state_sh = None if mesh is None else state_sharding(mesh, vmapped)
  batch_sh = None if mesh is None else batch_sharding(mesh, vmapped)

  def chunk_step(state: SweepState, seeds: Array, settings, batch: Batch | None):
    if sample is not None:
      batch = sample(seeds, state.models.step)
      if batch_sh is not None:
        batch = jax.lax.with_sharding_constraint(batch, batch_sh)
      # As in train.make_train_step: keep XLA from recomputing the sampler per consumer.
      batch = jax.lax.optimization_barrier(batch)
    new_state, metrics = step(state, batch, settings)
    if state_sh is not None:  # keep the model axis where it is, step after step
      new_state = jax.lax.with_sharding_constraint(new_state, state_sh)
    return new_state, metrics

  return jax.jit(chunk_step, donate_argnums=0)


class SweepExecutor:
  """Holds a sweep's models in chunks and advances all of them one step per call.

  Args:
    step_fn: the un-jitted train step ``(TrainState, batch, settings) -> (state,
      metrics)`` of :func:`vaejax.train.make_train_step` (with ``batch_fn=None``).
    seeds: one seed per model (its data order when batches are sampled in-program).
    settings: the models' loss settings, every field an (M,) array.
    chunk_size: models per compiled program (1 = a loop of single-model programs).
    max_consecutive_skips: non-finite steps in a row before a model is masked.
    batch_fn: optional pure ``(seed, step) -> batch`` sampling inside the program (e.g.
      procedural dSprites); the host then passes no batches.
    mesh: optional (model, data) mesh; the chunk size must be a multiple of its model
      axis and the batch of its data axis.
  """

  def __init__(self, step_fn: train.StepFn, seeds: Sequence[int],
               settings: objectives.LossSettings, *, chunk_size: int,
               max_consecutive_skips: int,
               batch_fn: Callable[[Array, Array], Batch] | None = None,
               mesh: Mesh | None = None):
    self.seeds = [int(s) for s in seeds]
    num = len(self.seeds)
    settings = objectives.LossSettings(*(np.asarray(v, np.float32) for v in settings))
    if num == 0 or any(v.shape != (num,) for v in settings):
      raise ValueError(
          f"SweepExecutor needs one seed and one value of every setting per model; got "
          f"{num} seeds and settings of shapes {[v.shape for v in settings]}.")
    self.chunks = plan_chunks(num, chunk_size)
    self.mesh = mesh
    self.batch_fn = batch_fn
    self._programs = {v: _chunk_program(step_fn, max_consecutive_skips, v, batch_fn, mesh)
                      for v in {c.vmapped for c in self.chunks}}
    seeds_array = np.asarray(self.seeds, np.uint32)
    self._settings = [self._put(_take(settings, c), c) for c in self.chunks]
    self._seeds = [self._put(_take(seeds_array, c), c) for c in self.chunks]
    self._states: list[SweepState] = []

  @property
  def num_models(self) -> int:
    return len(self.seeds)

  def _state_sharding(self, chunk: Chunk):
    return None if self.mesh is None else state_sharding(self.mesh, chunk.vmapped)

  def batch_sharding(self, chunk: Chunk):
    return None if self.mesh is None else batch_sharding(self.mesh, chunk.vmapped)

  def _put(self, tree: Any, chunk: Chunk) -> Any:
    return put_global(tree, self._state_sharding(chunk))

  # -- state in and out

  def load(self, state: SweepState) -> None:
    """Takes a stacked state (M leading) and places its chunks on the devices.

    Goes through host memory (one transfer each way, no per-leaf programs to compile);
    the placed arrays are always fresh, so the programs may donate them.
    """
    m = int(np.shape(state.active)[0])
    if m != self.num_models:
      raise ValueError(f"The state holds {m} models; this sweep has {self.num_models}.")
    host = to_host(state)
    self._states = [put_global(_take(host, c), self._state_sharding(c))
                    for c in self.chunks]

  @property
  def chunk_states(self) -> list[SweepState]:
    """The device-resident state of each chunk (read-only: the next step donates it)."""
    return list(self._states)

  def gather(self) -> SweepState:
    """The stacked state of all models, as host (numpy) arrays."""
    return _join(to_host(self._states), self.chunks)

  # -- stepping

  def host_batches(self, get_batch: Callable[[int], Batch]) -> list[Any]:
    """Per chunk, the host batches ``get_batch(model index)`` (stacked for vmapped chunks),
    placed on the devices."""
    out = []
    for chunk in self.chunks:
      batches = [get_batch(i) for i in range(chunk.start, chunk.stop)]
      batch = (jax.tree.map(lambda *xs: np.stack(xs), *batches) if chunk.vmapped
               else batches[0])
      out.append(put_global(batch, self.batch_sharding(chunk)))
    return out

  def step(self, batches: Sequence[Any] | None = None) -> list[dict[str, Array]]:
    """Advances every model one step; returns each chunk's metrics (not fetched)."""
    if (batches is None) != (self.batch_fn is not None):
      raise ValueError("Pass host batches exactly when the sweep has no in-program batch_fn.")
    metrics = []
    for i, chunk in enumerate(self.chunks):
      batch = None if batches is None else batches[i]
      self._states[i], m = self._programs[chunk.vmapped](
          self._states[i], self._seeds[i], self._settings[i], batch)
      metrics.append(m)
    return metrics

  def program_temp_bytes(self, batches: Sequence[Any] | None = None) -> int:
    """Largest scratch memory (activations) of the compiled chunk programs, per device.

    Compiles ahead of time; later steps reuse the compiled programs.
    """
    temp = 0
    for vmapped in self._programs:
      i = next(k for k, c in enumerate(self.chunks) if c.vmapped == vmapped)
      batch = None if batches is None else batches[i]
      compiled = self._programs[vmapped].lower(
          self._states[i], self._seeds[i], self._settings[i], batch).compile()
      stats = compiled.memory_analysis()
      if stats is not None:
        temp = max(temp, int(stats.temp_size_in_bytes))
    return temp

  def fetch(self, metrics: Sequence[Mapping[str, Array]]) -> dict[str, np.ndarray]:
    """Chunk metrics → host arrays with a leading model axis (M, ...)."""
    host = to_host(list(metrics))
    parts = [m if c.vmapped else {k: np.asarray(v)[None] for k, v in m.items()}
             for m, c in zip(host, self.chunks)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def flags(self) -> tuple[np.ndarray, np.ndarray]:
    """Host copies of ``(active, masked_at)``, each (M,)."""
    state = to_host([(s.active, s.masked_at) for s in self._states])
    active = [np.atleast_1d(a) for a, _ in state]
    masked = [np.atleast_1d(m) for _, m in state]
    return np.concatenate(active), np.concatenate(masked)

  # -- evaluation

  def evaluate(self, eval_fn: Callable, batches: Sequence[Batch]) -> list[list[dict]]:
    """Per model, the outputs of ``eval_fn(params, batch, key)`` on every eval batch.

    Keys: ``fold_in(fold_in(PRNGKey(seed), EVAL_STREAM), batch index)`` per model.
    """
    per_model: list[list[dict]] = [[] for _ in self.seeds]
    for state, seeds, chunk in zip(self._states, self._seeds, self.chunks):
      program = _eval_program(eval_fn, chunk.vmapped)
      for index, batch in enumerate(batches):
        out = to_host(program(state.models.params, seeds, batch, np.uint32(index)))
        for j in range(chunk.start, chunk.stop):
          k = j - chunk.start
          per_model[j].append({n: v[k] for n, v in out.items()} if chunk.vmapped else out)
    return per_model


@functools.lru_cache(maxsize=16)
def _eval_program(eval_fn: Callable, vmapped: bool) -> Callable:
  """Jitted ``(params, seed, batch, index) -> eval_fn(params, batch, key)`` (cached)."""

  def one(params, seed, batch, index):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), EVAL_STREAM), index)
    return eval_fn(params, batch, key)

  return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None)) if vmapped else one)
