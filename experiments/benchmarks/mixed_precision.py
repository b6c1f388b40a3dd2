r"""Mixed precision check: bfloat16 compute against float32, relative to seed-to-seed noise.

``PYTHONPATH=. python -m experiments.benchmarks.mixed_precision [--model=mlp_vae]
[--steps=300] [--seeds=3] [--batch_size=128]``

For each seed s, trains the model twice from the *same* initial parameters on the *same*
batches with the vaejax train step: once with ``dtype="float32"`` and once with
``dtype="bfloat16"`` (bf16 hidden layers, float32 parameters, heads, last layer and
loss; see :mod:`vaejax.models.networks`). With L_{s,p}(t) the training loss at step t,
smoothed by a moving average over ``--window`` steps, it reports

* ``precision_gap``: the root-mean-square over t of L_{s,bf16}(t) − L_{s,f32}(t),
  averaged over seeds (same init and data: only the precision differs);
* ``seed_noise``: the same RMS of L_{s,f32}(t) − L_{s',f32}(t) over pairs of seeds
  (different init and data: the run-to-run noise every comparison has to beat);
* ``gap_over_noise`` = precision_gap / seed_noise: below 1, bf16 follows the float32
  loss curve within seed-to-seed noise.

The first ``--burn_in`` fraction of the steps (where the loss falls by hundreds of nats
per step and any two curves differ mostly by their initial loss) is left out of both
RMS values. The JSON line also gives the final losses (means of the last window).

Data: ``mlp_vae`` trains on binarised 28×28 MNIST (the shared ``mnist10k.npz``, dynamic
binarisation, through the dataset registry); ``conv_vae`` on procedural dSprites sampled
inside the step. Needs jax, flax, optax, chex, absl (no ml_collections, no torch).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vaejax import data, models, objectives
from vaejax.training.optimizer import make_optimizer
from vaejax.training.state import create_train_state
from vaejax.training.step import Hyperparams, make_batch_fn, make_train_step

_DATASETS = {
    "mlp_vae": {"name": "mnist_npz", "binarize": "dynamic"},
    "conv_vae": {"name": "dsprites_procedural"},
}


def smooth(curve: np.ndarray, window: int) -> np.ndarray:
  """Trailing moving average: entry t is the mean of ``curve[t − window + 1 : t + 1]``."""
  kernel = np.ones(window) / window
  return np.convolve(curve, kernel, mode="valid")


def rms(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.sqrt(np.mean((a - b) ** 2)))


def compare_curves(curves: dict[tuple[int, str], np.ndarray], window: int,
                   burn_in: float) -> dict[str, float]:
  """``precision_gap``, ``seed_noise`` and their ratio (module docstring) from raw curves
  keyed by (seed, dtype)."""
  seeds = sorted({seed for seed, _ in curves})
  if len(seeds) < 2:
    raise ValueError(f"Seed-to-seed noise needs >= 2 seeds, got {seeds}.")
  smoothed = {k: smooth(v, window) for k, v in curves.items()}
  start = int(burn_in * len(next(iter(smoothed.values()))))
  cut = {k: v[start:] for k, v in smoothed.items()}
  gap = np.mean([rms(cut[s, "bfloat16"], cut[s, "float32"]) for s in seeds])
  noise = np.mean([rms(cut[a, "float32"], cut[b, "float32"])
                   for a, b in itertools.combinations(seeds, 2)])
  return {"precision_gap": float(gap), "seed_noise": float(noise),
          "gap_over_noise": float(gap / noise)}


@functools.cache
def _programs(model_name: str, dtype: str, image_shape: tuple[int, ...], batch_size: int,
              dataset: Any):
  """(model, optimizer, jitted step) of one configuration, compiled once for every seed.

  The step is the loop's: ``(state, seed, hyper, batch) -> (state, metrics)`` with the
  learning rate a traced number; datasets sampled in jit (procedural dSprites) draw the
  batch of ``(seed, state.step)`` inside the program, as the loop does.
  """
  model = models.create_model({"name": model_name, "dtype": dtype}, image_shape)
  optimizer = make_optimizer()
  train_step = make_train_step(model, optimizer)
  batch_fn = make_batch_fn(dataset, batch_size)

  def step(state, seed, hyper, batch):
    if batch_fn is not None:
      batch = jax.lax.optimization_barrier(batch_fn(seed, state.step))
    return train_step(state, batch, hyper)

  return model, optimizer, jax.jit(step), batch_fn is not None


def train_curve(model_name: str, dtype: str, seed: int, steps: int, batch_size: int,
                learning_rate: float, dataset: Any) -> np.ndarray:
  """Per-step training losses of one run of the vaejax train step."""
  shape = tuple(dataset.image_shape)
  model, optimizer, step, sampled = _programs(model_name, dtype, shape, batch_size, dataset)
  state = create_train_state(model, optimizer, seed, shape)
  hyper = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32),
                       Hyperparams(objectives.LossSettings(), learning_rate, 0))
  seed_array = jnp.asarray(seed, jnp.uint32)
  losses = []
  for t in range(steps):
    batch = None if sampled else dataset.get_batch("train", t, batch_size, seed)
    state, metrics = step(state, seed_array, hyper, batch)
    losses.append(metrics["loss"])
  losses = np.asarray(jax.device_get(losses), np.float64)
  if not np.all(np.isfinite(losses)):
    raise FloatingPointError(f"{model_name} {dtype} seed {seed}: non-finite training loss.")
  return losses


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="mlp_vae", choices=sorted(_DATASETS))
  parser.add_argument("--steps", type=int, default=300, help="Train steps per run.")
  parser.add_argument("--seeds", type=int, default=3, help="Seeds, each run in f32 and bf16.")
  parser.add_argument("--batch_size", type=int, default=0,
                      help="Batch size (0: 128 for mlp_vae, 64 for conv_vae).")
  parser.add_argument("--learning_rate", type=float, default=1e-3, help="Adam learning rate.")
  parser.add_argument("--window", type=int, default=25, help="Moving-average window.")
  parser.add_argument("--burn_in", type=float, default=0.1,
                      help="Fraction of early steps left out of the RMS values.")
  args = parser.parse_args(argv)
  if args.seeds < 2:
    parser.error(f"--seeds must be >= 2 (seed-to-seed noise needs two), got {args.seeds}.")
  if args.window < 1 or args.steps <= args.window:
    parser.error(f"Need 1 <= --window < --steps; got window {args.window}, steps {args.steps}.")
  if args.batch_size < 0 or not 0 <= args.burn_in < 1 or not args.learning_rate > 0:
    parser.error("Need --batch_size >= 0, 0 <= --burn_in < 1 and --learning_rate > 0; got "
                 f"{args.batch_size}, {args.burn_in}, {args.learning_rate}.")
  return args


def main(argv: list[str] | None = None) -> dict:
  """Runs the check of the command line ``argv``; prints and returns its JSON record."""
  args = parse_args(argv)
  name = args.model
  batch = args.batch_size or (128 if name == "mlp_vae" else 64)
  dataset = data.load(_DATASETS[name])
  curves, seconds = {}, {"float32": 0.0, "bfloat16": 0.0}
  for seed in range(args.seeds):
    for dtype in ("float32", "bfloat16"):
      start = time.perf_counter()
      curves[seed, dtype] = train_curve(name, dtype, seed, args.steps, batch,
                                        args.learning_rate, dataset)
      seconds[dtype] += time.perf_counter() - start
  final = {f"{dtype}_seed{seed}": round(float(np.mean(c[-args.window:])), 2)
           for (seed, dtype), c in curves.items()}
  stats = compare_curves(curves, args.window, args.burn_in)
  result = {
      "benchmark": "mixed_precision",
      "model": name,
      "dataset": _DATASETS[name]["name"],
      "backend": jax.default_backend(),
      "steps": args.steps,
      "seeds": args.seeds,
      "batch_size": batch,
      "learning_rate": args.learning_rate,
      "window": args.window,
      "burn_in": args.burn_in,
      **{k: round(v, 3) for k, v in stats.items()},
      "final_loss": final,
      "seconds_incl_compile": {k: round(v, 1) for k, v in seconds.items()},
  }
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
