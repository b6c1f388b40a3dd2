"""Images/s of the procedural dSprites renderer; prints one JSON line.

python -m experiments.benchmarks.render_speed [--batch_size=256] [--repeats=20]

Measures, on the default JAX backend, after a warm-up and blocking on results:
``render``: ``jax.jit(render)`` of fixed random classes; ``sampler``: the jitted
``sample_batch`` (uniform factors + render, what a train step would run);
``get_batch``: the host path (``Dataset.get_batch``, including the transfer).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from vaejax import data
from vaejax.data import dsprites


def _median_seconds(fn, repeats: int, deadline: float | None = None) -> float:
  """Median seconds of ``repeats`` calls after a warm-up; no call starts after ``deadline``
  (a ``time.perf_counter()`` value) once one has been timed."""
  jax.block_until_ready(fn())  # warm-up (compilation)
  times = []
  for _ in range(repeats):
    if times and deadline is not None and time.perf_counter() > deadline:
      break
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure(batch_size: int, repeats: int, deadline: float | None = None) -> dict:
  """The JSON record of the module docstring's three rates at ``batch_size``."""
  b = batch_size
  rng = np.random.default_rng(0)
  classes = jax.device_put(
      np.stack([rng.integers(0, s, b) for s in dsprites.GT_FACTOR_SIZES], 1).astype(np.int32))
  render = jax.jit(dsprites.render)
  sampler = jax.jit(data.sample_batch, static_argnums=1)
  key = jax.random.key(0)
  ds = data.load({"name": "dsprites_procedural"})
  step = iter(range(10**9))

  seconds = {
      "render": _median_seconds(lambda: render(classes), repeats, deadline),
      "sampler": _median_seconds(lambda: sampler(key, b), repeats, deadline),
      "get_batch": _median_seconds(lambda: ds.get_batch("train", next(step), b, 0), repeats,
                                   deadline),
  }
  return {
      "benchmark": "dsprites_render_speed",
      "backend": jax.default_backend(),
      "device": str(jax.devices()[0]),
      "batch_size": b,
      "repeats": repeats,
      **{f"{k}_images_per_s": round(b / v) for k, v in seconds.items()},
      **{f"{k}_ms_per_batch": round(1e3 * v, 3) for k, v in seconds.items()},
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  print(json.dumps(measure(args.batch_size, args.repeats)))


if __name__ == "__main__":
  main()
