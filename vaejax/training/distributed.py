"""Many processes, one run: JAX's own multi-process runtime (``jax.distributed``).

Every process runs the same command; :func:`initialize` connects them before anything
touches a device. Then ``jax.devices()`` lists every process's devices, the
``("model", "data")`` mesh spans them all, and the loop's collectives (gathering metrics,
agreeing to stop on a signal, writing checkpoints) involve every process. Only process 0
writes logs, results, figures and the workdir lock; orbax writes checkpoints collectively.

On CPU the collectives go through gloo (``jax_cpu_collectives_implementation``), so
several processes on one machine (or on several, over TCP) form one run; this is how the
multi-process tests run here.
"""

from __future__ import annotations

import os

import jax
from absl import logging


def cluster_detected() -> bool:
  """Whether the environment is one where ``jax.distributed.initialize()`` finds its peers
  itself (a SLURM job with several tasks, a Cloud TPU pod slice)."""
  if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
    return True
  return any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Connects this process to the others of a multi-process run; returns whether it did.

  With ``coordinator_address`` (``host:port`` of process 0), ``num_processes`` and
  ``process_id`` the run is set up explicitly; without them, only where JAX detects the
  cluster itself (:func:`cluster_detected`); otherwise the run is a single process. Call it
  first thing, before any JAX computation.

  Raises:
    ValueError: some of the three arguments given but not all, or out of range.
  """
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise ValueError(
        "Give --coordinator_address, --num_processes and --process_id together (or none, for "
        "a single process or a cluster JAX detects itself: SLURM, Cloud TPU); got "
        f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
        f"process_id={process_id!r}.")
  if all(given):
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, --num_processes="
                       f"{num_processes}).")
  elif not cluster_detected():
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices only
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  logging.info("Process %d of %d; %d devices in all (%d here).", jax.process_index(),
               jax.process_count(), jax.device_count(), jax.local_device_count())
  return True
