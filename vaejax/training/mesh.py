r"""Device meshes for stacks of models: a ``("model", "data")`` mesh and array placement.

With a :class:`jax.sharding.Mesh` of shape (model devices, data devices):

* every leaf of a program's stacked state is sharded ``P("model")``: each device along the
  model axis holds and trains M / D_model whole models (a single-model program's state
  is replicated);
* every stacked batch ``(M, B, ...)`` is sharded ``P("model", "data")``: each model's batch
  is split over the data axis (data parallelism inside a model; XLA inserts the
  all-reduce of the gradient, so the numbers equal one device's up to float summation
  order).

XLA's SPMD partitioner compiles the same ``jit(vmap(step))`` program for any mesh, so one
code path serves 1 device, 8 CPU test devices and a multi-host GPU pod.

Multi-host: call ``jax.distributed.initialize()`` first thing on every host; then
``jax.devices()`` lists every host's devices and :func:`make_mesh` spans them all. Every
host runs the same program: batches made on the host are computed in full on each host
(they are pure functions of seed and step) and :func:`put_global` hands each device its
slice; :func:`to_host` gathers results across hosts. :func:`to_host` is the one place the
training loop moves data from the devices to the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vaejax.utils.checks import check_int

MODEL_AXIS = "model"
DATA_AXIS = "data"


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
    try:
      check_int(value, name, minimum=0)
    except ValueError:
      raise ValueError(f"{name} must be an int >= 0 (0 = all remaining devices); got "
                       f"{value!r}.") from None
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
        f"execution.chunk_size) that is a multiple of {m}, or set execution.model_devices to a "
        f"divisor of {models_per_program}.")
  if batch_size % d:
    raise ValueError(
        f"The mesh's data axis has {d} devices, which does not divide batch_size="
        f"{batch_size}; use a batch size that is a multiple of {d}, or set "
        f"execution.data_devices to a divisor of {batch_size}.")


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
