r"""What the one engine costs: sweeps vs separate runs, and the single run vs an older commit.

Two measurements, each a side-by-side ratio of interleaved repeats (``timing.py``):

``--mode=sweep``: M models trained as one sweep (one :class:`Executor` holding the stack,
strategy ``auto``) against the same M models as M separate single runs (M executors of
one model each, stepped one after another, as M ``experiments.train`` commands would run
them without their start-up), in model-steps per second after warm-up::

    PYTHONPATH=. python experiments/benchmarks/engine_overhead.py --mode=sweep --model=mlp \
        --num_models=16
    PYTHONPATH=. python experiments/benchmarks/engine_overhead.py --mode=sweep --model=conv \
        --num_models=4

``--mode=commit``: the single run's train step as the loop runs it (this tree: the
executor's program for a stack of one; the older tree: whatever its loop jitted) against
the same step of an older commit, for the dSprites conv VAE with batches rendered in the
program (the main job). Two versions of the package cannot share a process, so each
round runs both in fresh subprocesses, in alternating order; the ratio is the median over
rounds of (this tree's steps/s) / (older commit's steps/s)::

    PYTHONPATH=. python experiments/benchmarks/engine_overhead.py --mode=commit --before=d2019cb

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The step timed in a subprocess: conv VAE, procedural dSprites sampled in the program,
# batch 64, β = 4, Adam 1e-3 (the main job's settings). Prints steps/s.
_NEW_STEP = r"""
import json, sys, time, jax, numpy as np
from vaejax import data, models, objectives
from vaejax.training.executor import Executor
from vaejax.training.optimizer import make_optimizer
from vaejax.training.state import init_stack
from vaejax.training.step import Hyperparams, make_batch_fn, make_train_step, stack_hyperparams
steps, warmup = int(sys.argv[1]), int(sys.argv[2])
ds = data.load({"name": "dsprites_procedural"})
model = models.create_model({"name": "conv_vae", "latent_dim": 10}, ds.image_shape)
opt = make_optimizer()
hyper = stack_hyperparams([Hyperparams(objectives.LossSettings(beta=4.0), 1e-3, 0)])
ex = Executor(make_train_step(model, opt), [0], hyper, chunk_size=1, max_consecutive_skips=10,
              batch_fn=make_batch_fn(ds, 64))
ex.load(init_stack(model, opt, [0], ds.image_shape))
def run(n):
  for _ in range(n):
    m = ex.step()
  jax.block_until_ready((m, ex.chunk_states))
run(warmup)
t = time.perf_counter(); run(steps); rate = steps / (time.perf_counter() - t)
print(json.dumps({"steps_per_sec": rate}))
"""

_OLD_STEP = r"""
import json, sys, time, jax, jax.numpy as jnp
from vaejax import data, models, objectives, train
steps, warmup = int(sys.argv[1]), int(sys.argv[2])
ds = data.load({"name": "dsprites_procedural"})
model = models.create_model({"name": "conv_vae", "latent_dim": 10}, ds.image_shape)
opt = train.make_optimizer(1e-3)
state = train.create_train_state(model, opt, 0, ds.image_shape)
step = jax.jit(train.make_train_step(model, opt, batch_fn=train.make_batch_fn(ds, 64, 0)))
settings = jax.tree.map(jnp.asarray, objectives.LossSettings(beta=4.0))
def run(n):
  global state
  for _ in range(n):
    state, m = step(state, None, settings)
  jax.block_until_ready((state, m))
run(warmup)
t = time.perf_counter(); run(steps); rate = steps / (time.perf_counter() - t)
print(json.dumps({"steps_per_sec": rate}))
"""


def _rate(tree: Path, script: str, steps: int, warmup: int) -> float:
  env = dict(os.environ, PYTHONPATH=str(tree), JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS",
                                                                            "cpu"))
  out = subprocess.run([sys.executable, "-c", script, str(steps), str(warmup)], cwd=tree,
                       env=env, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])["steps_per_sec"]


def commit_mode(before: str, rounds: int, steps: int, warmup: int) -> dict:
  """Interleaved subprocess rounds of this tree's and ``before``'s single-run step."""
  with tempfile.TemporaryDirectory() as tmp:
    old_tree = Path(tmp) / "before"
    old_tree.mkdir()
    archive = subprocess.run(["git", "archive", before], cwd=REPO, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
    new_rates, old_rates = [], []
    for r in range(rounds):
      order = [("new", REPO, _NEW_STEP), ("old", old_tree, _OLD_STEP)]
      for name, tree, script in (order if r % 2 == 0 else order[::-1]):
        (new_rates if name == "new" else old_rates).append(_rate(tree, script, steps, warmup))
  ratios = [a / b for a, b in zip(new_rates, old_rates)]
  return {"mode": "commit", "before": before, "model": "conv_vae", "batch_size": 64,
          "rounds": rounds, "steps": steps, "new_steps_per_sec": new_rates,
          "old_steps_per_sec": old_rates, "ratio_median": statistics.median(ratios)}


def sweep_mode(model_name: str, num_models: int, rounds: int, steps: int, warmup: int) -> dict:
  """Interleaved rounds: one M-model sweep executor vs M single-model executors."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, str(REPO))
  from experiments.benchmarks import timing  # pylint: disable=g-import-not-at-top
  from vaejax import data, models, objectives  # pylint: disable=g-import-not-at-top
  from vaejax.training.executor import Executor, resolve_chunk_size  # pylint: disable=g-import-not-at-top
  from vaejax.training.optimizer import make_optimizer  # pylint: disable=g-import-not-at-top
  from vaejax.training.state import init_stack  # pylint: disable=g-import-not-at-top
  from vaejax.training.step import (  # pylint: disable=g-import-not-at-top
      Hyperparams, make_batch_fn, make_train_step, stack_hyperparams)

  if model_name == "conv":
    dataset = data.load({"name": "dsprites_procedural"})
    model = models.create_model({"name": "conv_vae", "latent_dim": 10}, dataset.image_shape)
    batch_size = 64
  else:
    dataset = data.load({"name": "mnist_npz", "binarize": "dynamic"})
    model = models.create_model({"name": "mlp_vae", "latent_dim": 16,
                                 "hidden_sizes": (512, 256)}, dataset.image_shape)
    batch_size = 128
  optimizer = make_optimizer()
  step_fn = make_train_step(model, optimizer)
  seeds = list(range(num_models))
  betas = np.linspace(0.5, 8.0, num_models)
  hypers = [Hyperparams(objectives.LossSettings(beta=float(b)), 1e-3, 0) for b in betas]
  batch_fn = make_batch_fn(dataset, batch_size)
  position = {"t": 0}

  def make(indices, chunk):
    ex = Executor(step_fn, [seeds[i] for i in indices], stack_hyperparams(
        [hypers[i] for i in indices]), chunk_size=chunk, max_consecutive_skips=10,
        batch_fn=batch_fn)
    ex.load(init_stack(model, optimizer, [seeds[i] for i in indices], dataset.image_shape))
    return ex

  chunk = resolve_chunk_size("auto", num_models)
  sweep = make(list(range(num_models)), chunk)
  separate = [make([i], 1) for i in range(num_models)]

  def advance(ex):
    if ex.batch_fn is not None:
      return ex.step()
    return ex.step(ex.host_batches(lambda k: dataset.get_batch(
        "train", position["t"], batch_size, ex.seeds[k])))

  def run_sweep():
    for _ in range(steps):
      m = advance(sweep)
      position["t"] += 1
    jax.block_until_ready((m, sweep.chunk_states))

  def run_separate():
    for ex in separate:  # each run trains its steps, then the next run
      for _ in range(steps):
        m = advance(ex)
        position["t"] += 1
      jax.block_until_ready((m, ex.chunk_states))

  for fn in (run_sweep, run_separate):  # warm-up: compile and settle
    for _ in range(max(warmup // max(steps, 1), 1)):
      fn()
  rates = timing.interleaved_rates({"sweep": run_sweep, "separate": run_separate},
                                   num_models * steps, rounds)
  return {"mode": "sweep", "model": model_name, "num_models": num_models,
          "strategy_auto_chunk": chunk, "backend": jax.default_backend(), "rounds": rounds,
          "steps_per_round": steps,
          "sweep_model_steps_per_sec": rates["sweep"].median(),
          "separate_model_steps_per_sec": rates["separate"].median(),
          "ratio_median": timing.paired_ratio(rates["sweep"], rates["separate"]),
          "cpu_ratio_median": timing.paired_ratio(rates["sweep"], rates["separate"], "cpu")}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--mode", choices=("sweep", "commit"), required=True)
  parser.add_argument("--model", choices=("mlp", "conv"), default="mlp")
  parser.add_argument("--num_models", type=int, default=16)
  parser.add_argument("--before", default="d2019cb", help="the older commit (commit mode)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=0, help="steps per timed call (0: auto)")
  parser.add_argument("--warmup", type=int, default=10)
  args = parser.parse_args(argv)
  if args.rounds < 1 or args.num_models < 1 or args.steps < 0:
    parser.error("--rounds and --num_models must be >= 1, --steps >= 0.")
  start = time.perf_counter()
  if args.mode == "commit":
    result = commit_mode(args.before, args.rounds, args.steps or 60, args.warmup)
  else:
    steps = args.steps or (20 if args.model == "mlp" else 5)
    result = sweep_mode(args.model, args.num_models, args.rounds, steps, args.warmup)
  result["seconds"] = round(time.perf_counter() - start, 1)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
