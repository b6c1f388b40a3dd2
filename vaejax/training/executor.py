r"""Running a stack of M ≥ 1 models: programs, strategies, stepping and per-model evaluation.

An :class:`Executor` holds a :class:`~vaejax.training.state.StackState` split into
*chunks*, each one compiled program: a chunk of C > 1 models runs the per-model step
``jax.vmap``-ed, a chunk of one runs it unbatched, and a step is a Python loop over the
chunks (asynchronous dispatch overlaps them). :func:`resolve_chunk_size` turns a strategy
into a chunk size:

* ``"vmap"``: one chunk of M;
* ``"sequential"``: M chunks of one (a single run is one such chunk);
* ``"chunked"``: chunks of ``chunk_size`` models (vmap inside, loop outside);
* ``"auto"``: ``"sequential"`` on CPU, where vmap of small models is slower than a loop
  (``experiments/benchmarks/sweep_throughput.py`` on 2 cores, M = 16–64: vmap at
  0.51–0.55× the throughput of one-after-another runs for the MLP VAE, 0.75–0.79× for
  the conv VAE; the loop at 1.00–1.13×); ``"vmap"`` on accelerators (one program fills
  the chip) and whenever a mesh spreads models over devices. The loop shrinks an
  ``"auto"`` chunk that does not fit in memory.

Datasets sampled inside the program (procedural dSprites) draw each model's batch from
its seed and step inside the chunk's program, so nothing crosses from the host per step.

At most :data:`STEPS_IN_FLIGHT` steps are dispatched ahead of the device: with many
independent single-model programs queued, CPU runtimes run them concurrently and thrash
(16 MLP VAEs, sequential strategy, 2-core CPU: 0.93× the throughput of the same models
trained one after another with an unbounded queue, 0.97× with two steps in flight), while
two queued steps still keep an accelerator fed.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from vaejax.training import mesh as mesh_lib
from vaejax.config import STRATEGIES
from vaejax.training.state import StackState
from vaejax.training.step import Hyperparams, StepFn, make_masked_step
from vaejax.utils.checks import check_int

Array = jax.Array
Batch = dict[str, Any]
STEPS_IN_FLIGHT = 2


class Chunk(NamedTuple):
  """Models ``start:stop`` run as one program; ``vmapped`` False for a single model."""

  start: int
  stop: int
  vmapped: bool


def resolve_chunk_size(strategy: str, num_models: int, *, chunk_size: int = 0,
                       backend: str | None = None, model_devices: int = 1) -> int:
  """Models per program for ``strategy`` (before any memory-driven shrinking)."""
  if strategy not in STRATEGIES:
    raise ValueError(f"Unknown execution strategy {strategy!r}; expected one of {STRATEGIES}.")
  if strategy == "sequential":
    return 1
  if strategy == "vmap":
    return num_models
  if strategy == "chunked":
    try:
      return check_int(chunk_size, "execution.chunk_size", minimum=1, maximum=num_models)
    except ValueError:
      raise ValueError(
          f"Strategy 'chunked' needs execution.chunk_size in [1, {num_models}] (the number "
          f"of models); got {chunk_size!r}.") from None
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


@functools.lru_cache(maxsize=64)
def _chunk_program(step_fn: StepFn, max_consecutive_skips: int, vmapped: bool,
                   batch_fn: Callable | None, mesh: Mesh | None) -> Callable:
  """The jitted ``(state, seeds, hyper, batch) -> (state, metrics)`` of one chunk.

  Cached, so executors of the same step (e.g. after a re-plan) share compiled programs.
  """
  step = make_masked_step(step_fn, max_consecutive_skips, use_cond=not vmapped)
  step = jax.vmap(step) if vmapped else step
  sample = (jax.vmap(batch_fn) if vmapped else batch_fn) if batch_fn is not None else None
  state_sh = None if mesh is None else mesh_lib.state_sharding(mesh, vmapped)
  batch_sh = None if mesh is None else mesh_lib.batch_sharding(mesh, vmapped)

  def chunk_step(state: StackState, seeds: Array, hyper: Hyperparams, batch: Batch | None):
    if sample is not None:
      batch = sample(seeds, state.models.step)
      if batch_sh is not None:
        batch = jax.lax.with_sharding_constraint(batch, batch_sh)
      # The barrier keeps XLA from fusing (and recomputing) the sampler into each
      # consumer of the images: conv_vae, batch 64, 2-core CPU, interleaved A/B on a
      # loaded machine: 224 ms/step with it, 255 without (a fixed batch: 229).
      batch = jax.lax.optimization_barrier(batch)
    new_state, metrics = step(state, batch, hyper)
    if state_sh is not None:  # keep the model axis where it is, step after step
      new_state = jax.lax.with_sharding_constraint(new_state, state_sh)
    return new_state, metrics

  return jax.jit(chunk_step, donate_argnums=0)


@functools.lru_cache(maxsize=128)
def _model_program(fn: Callable, vmapped: bool, num_shared: int) -> Callable:
  """Jitted ``(params, seed, *shared) -> fn(params, seed, *shared)``, vmapped over models."""
  in_axes = (0, 0) + (None,) * num_shared
  return jax.jit(jax.vmap(fn, in_axes=in_axes) if vmapped else fn)


class Executor:
  """Holds a stack's models in chunks; advances all of them one step per call.

  Args:
    step_fn: one model's un-jitted train step ``(TrainState, batch, hyper) -> (state,
      metrics)`` (:func:`vaejax.training.step.make_train_step`); None for an executor
      that only evaluates (:meth:`map_models`).
    seeds: one seed per model (its data order when batches are sampled in-program).
    hyper: the models' :class:`~vaejax.training.step.Hyperparams`, every leaf an (M,)
      array.
    chunk_size: models per compiled program (1 = a loop of single-model programs).
    max_consecutive_skips: non-finite steps in a row before a model is masked.
    batch_fn: optional pure ``(seed, step) -> batch`` sampling inside the program (e.g.
      procedural dSprites); the host then passes no batches.
    mesh: optional (model, data) mesh; the chunk size must be a multiple of its model
      axis and the batch of its data axis.
  """

  def __init__(self, step_fn: StepFn | None, seeds: Sequence[int], hyper: Hyperparams, *,
               chunk_size: int, max_consecutive_skips: int,
               batch_fn: Callable[[Array, Array], Batch] | None = None,
               mesh: Mesh | None = None):
    self.seeds = [int(s) for s in seeds]
    num = len(self.seeds)
    hyper = jax.tree.map(lambda v: np.asarray(v, np.float32), hyper)
    if num == 0 or any(np.shape(v) != (num,) for v in jax.tree.leaves(hyper)):
      raise ValueError(
          f"Executor needs one seed and one value of every hyper-parameter per model; got "
          f"{num} seeds and leaves of shapes {[np.shape(v) for v in jax.tree.leaves(hyper)]}.")
    self.chunks = plan_chunks(num, chunk_size)
    self.mesh = mesh
    self.batch_fn = batch_fn
    self._programs = {} if step_fn is None else {
        v: _chunk_program(step_fn, max_consecutive_skips, v, batch_fn, mesh)
        for v in {c.vmapped for c in self.chunks}}
    seeds_array = np.asarray(self.seeds, np.uint32)
    self._hyper = [self._put(_take(hyper, c), c) for c in self.chunks]
    self._seeds = [self._put(_take(seeds_array, c), c) for c in self.chunks]
    self._states: list[StackState] = []
    self._in_flight: collections.deque = collections.deque()

  @property
  def num_models(self) -> int:
    return len(self.seeds)

  @property
  def chunk_size(self) -> int:
    return self.chunks[0].stop - self.chunks[0].start

  def _state_sharding(self, chunk: Chunk):
    return None if self.mesh is None else mesh_lib.state_sharding(self.mesh, chunk.vmapped)

  def batch_sharding(self, chunk: Chunk):
    return None if self.mesh is None else mesh_lib.batch_sharding(self.mesh, chunk.vmapped)

  def _put(self, tree: Any, chunk: Chunk) -> Any:
    return mesh_lib.put_global(tree, self._state_sharding(chunk))

  # -- state in and out

  def load(self, state: StackState) -> None:
    """Takes a stacked state (M leading) and places its chunks on the devices.

    Goes through host memory (one transfer each way, no per-leaf programs to compile);
    the placed arrays are always fresh, so the programs may donate them.
    """
    m = int(np.shape(state.active)[0])
    if m != self.num_models:
      raise ValueError(f"The state holds {m} models; this stack has {self.num_models}.")
    host = mesh_lib.to_host(state)
    self._states = [self._put(_take(host, c), c) for c in self.chunks]

  @property
  def chunk_states(self) -> list[StackState]:
    """The device-resident state of each chunk (read-only: the next step donates it)."""
    return list(self._states)

  def gather(self) -> StackState:
    """The stacked state of all models, as host (numpy) arrays."""
    return _join(mesh_lib.to_host(self._states), self.chunks)

  # -- stepping

  def host_batches(self, get_batch: Callable[[int], Batch]) -> list[Any]:
    """Per chunk, the host batches ``get_batch(model index)`` (stacked for vmapped chunks),
    placed on the devices."""
    out = []
    for chunk in self.chunks:
      batches = [get_batch(i) for i in range(chunk.start, chunk.stop)]
      batch = (jax.tree.map(lambda *xs: np.stack(xs), *batches) if chunk.vmapped
               else batches[0])
      out.append(mesh_lib.put_global(batch, self.batch_sharding(chunk)))
    return out

  def step(self, batches: Sequence[Any] | None = None) -> list[dict[str, Array]]:
    """Advances every model one step; returns each chunk's metrics (on the devices)."""
    if (batches is None) != (self.batch_fn is not None):
      raise ValueError("Pass host batches exactly when the stack has no in-program batch_fn.")
    while len(self._in_flight) >= STEPS_IN_FLIGHT:
      jax.block_until_ready(self._in_flight.popleft())
    metrics = []
    for i, chunk in enumerate(self.chunks):
      batch = None if batches is None else batches[i]
      self._states[i], m = self._programs[chunk.vmapped](
          self._states[i], self._seeds[i], self._hyper[i], batch)
      metrics.append(m)
    self._in_flight.append(metrics)
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
          self._states[i], self._seeds[i], self._hyper[i], batch).compile()
      stats = compiled.memory_analysis()
      if stats is not None:
        temp = max(temp, int(stats.temp_size_in_bytes))
    return temp

  def fetch(self, metrics: Sequence[Mapping[str, Array]]) -> dict[str, np.ndarray]:
    """Chunk metrics → host arrays with a leading model axis (M, ...)."""
    host = mesh_lib.to_host(list(metrics))
    parts = [m if c.vmapped else {k: np.asarray(v)[None] for k, v in m.items()}
             for m, c in zip(host, self.chunks)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def flags(self) -> tuple[np.ndarray, np.ndarray]:
    """Host copies of ``(active, masked_at)``, each (M,)."""
    state = mesh_lib.to_host([(s.active, s.masked_at) for s in self._states])
    return (np.concatenate([np.atleast_1d(a) for a, _ in state]),
            np.concatenate([np.atleast_1d(m) for _, m in state]))

  # -- per-model functions (evaluation)

  def map_models(self, fn: Callable, *shared: Any, batched: bool = True) -> list[Any]:
    """Per model, ``fn(params, seed, *shared)`` as host arrays (in model order).

    ``fn`` is jitted once per chunk kind (and cached by identity): with ``batched``,
    vmapped over the models of a vmapped chunk (their parameters and seeds), the
    ``shared`` arguments broadcast; without, one model at a time (for functions whose
    memory grows with the models, e.g. many importance samples). Build ``fn`` once and
    reuse it, so evaluation rounds do not recompile.
    """
    out: list[Any] = []
    for state, seeds, chunk in zip(self._states, self._seeds, self.chunks):
      params = state.models.params
      if chunk.vmapped and not batched:
        program = _model_program(fn, False, len(shared))
        for k in range(chunk.stop - chunk.start):
          one = jax.tree.map(lambda x, k=k: x[k], params)
          out.append(mesh_lib.to_host(program(one, seeds[k], *shared)))
        continue
      program = _model_program(fn, chunk.vmapped, len(shared))
      result = mesh_lib.to_host(program(params, seeds, *shared))
      if chunk.vmapped:
        out.extend(jax.tree.map(lambda x, k=k: x[k], result)
                   for k in range(chunk.stop - chunk.start))
      else:
        out.append(result)
    return out
