r"""Sweep throughput: M models in one stack against M runs one after another.

``PYTHONPATH=. python experiments/benchmarks/sweep_throughput.py [--models=mlp,conv]
[--num_models=1,4,16,64] [--strategies=sequential,vmap,chunked] [--steps=3] [--repeats=3]``

For each model and M, times (after compiling and a warm-up, blocking on the results)
the :class:`vaejax.training.executor.Executor` the training loop runs:

* ``baseline``: the same M models as M separate single-model executors (the program of
  a single run, ``experiments.train``), one after another, S steps each (what M
  invocations of ``experiments.train`` would do, minus start-up and compilation, which
  a sweep saves too but this benchmark leaves out);
* each strategy of ``--strategies`` as one executor of all M models:
  ``sequential`` (a loop of single-model programs, interleaved across models), ``vmap``
  (one vmapped program of M) and ``chunked`` (vmapped programs of ``--chunk_size``), S
  steps of all M models. ``auto`` in the table marks the strategy
  :func:`vaejax.training.executor.resolve_chunk_size` picks on this backend (it is timed
  even when not listed).

Every model has its own seed and β (1 + i mod 4), learning rate 1e-4, and samples its
batches inside the program from (seed, step), as the loop does for procedural data.
Variants run interleaved in each repeat; the median over repeats is reported as
model-steps/s and as ``speedup`` = variant / baseline throughput, and ``speedup_best``
from the fastest repeat of each (robust on a shared, noisy machine). Configurations that
do not fit in device memory are reported as such (the check the loop runs).

Models: ``mlp`` = the MLP VAE of ``vae_mnist.py`` (784-512-256-16, batch 128, Bernoulli
28×28 images sampled inside the step); ``conv`` = the disentanglement_lib dSprites conv VAE
(batch 64, procedural dSprites rendered inside the step). Needs only jax, flax, optax,
orbax, chex and absl (no ml_collections: see :func:`_importable_without_ml_collections`).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import types

from absl import app, flags


def _importable_without_ml_collections() -> None:
  """The executor imports ``vaejax.config`` (for its list of strategies), which imports
  ml_collections; accelerator hosts may lack it, so an empty stand-in lets this benchmark
  import the executor (nothing here builds a config)."""
  try:
    import ml_collections  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    stub = types.ModuleType("ml_collections")
    stub.ConfigDict = type("ConfigDict", (), {})
    stub.FieldReference = type("FieldReference", (), {})
    sys.modules["ml_collections"] = stub


_importable_without_ml_collections()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from vaejax import models  # noqa: E402
from vaejax.data import dsprites  # noqa: E402
from vaejax.objectives import LossSettings  # noqa: E402
from vaejax.training import memory  # noqa: E402
from vaejax.training.executor import Executor, resolve_chunk_size  # noqa: E402
from vaejax.training.optimizer import make_optimizer  # noqa: E402
from vaejax.training.state import init_stack  # noqa: E402
from vaejax.training.step import Hyperparams, make_train_step, stack_hyperparams  # noqa: E402

_MODELS = flags.DEFINE_list("models", ["mlp", "conv"], "Any of mlp, conv.")
_NUM_MODELS = flags.DEFINE_list("num_models", ["1", "4", "16", "64"], "Sweep sizes M.")
_STRATEGIES = flags.DEFINE_list(
    "strategies", ["sequential", "vmap", "chunked"], "Executor strategies to time.")
_CHUNK = flags.DEFINE_integer("chunk_size", 4, "Models per program of 'chunked'.")
_STEPS = flags.DEFINE_integer("steps", 3, "Steps of every model per timed repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats; the median is reported.")
_MAX_MODEL_STEPS = flags.DEFINE_integer(
    "max_model_steps", 0, "If > 0, cap M × steps per repeat by lowering steps (slow CPUs).")
_OUT = flags.DEFINE_string("out", "", "Also write the markdown table to this file.")

LEARNING_RATE = 1e-4
MAX_CONSECUTIVE_SKIPS = 10


def make_setup(name: str):
  """(model, image_shape, batch_size, sampler(key, batch) -> batch)."""
  if name == "mlp":
    shape = (28, 28, 1)
    model = models.create_model(
        {"name": "mlp_vae", "latent_dim": 16, "hidden_sizes": (512, 256)}, shape)

    def sampler(key, batch_size):
      probs = jnp.full((batch_size, *shape), 0.15, jnp.float32)
      return {"image": jax.random.bernoulli(key, probs).astype(jnp.float32)}

    return model, shape, 128, sampler
  if name == "conv":
    shape = (64, 64, 1)
    model = models.create_model({"name": "conv_vae", "latent_dim": 10}, shape)
    return model, shape, 64, dsprites.sample_batch
  raise ValueError(f"Unknown model {name!r}; expected mlp or conv.")


def _strategy_name(chunk_size: int, num_models: int) -> str:
  return "sequential" if chunk_size == 1 else "vmap" if chunk_size == num_models else "chunked"


def run_config(name: str, num_models: int, strategies: list[str], *, steps: int = 3,
               repeats: int = 3, chunk_size: int = 4, max_model_steps: int = 0,
               with_auto: bool = True, deadline: float | None = None) -> list[dict]:
  """Times the baseline and ``strategies`` (plus the ``auto`` one if ``with_auto``) for M =
  ``num_models`` models ``name``; prints and returns one row per variant.

  ``deadline`` (a ``time.perf_counter()`` value): no repeat starts after it (the first
  always runs); the rows say how many ran and whether the deadline cut them short.
  """
  model, shape, batch_size, sampler = make_setup(name)
  optimizer = make_optimizer()
  step_fn = make_train_step(model, optimizer)
  seeds = list(range(num_models))
  hypers = [Hyperparams(LossSettings(beta=1.0 + i % 4), LEARNING_RATE, 0) for i in seeds]
  if max_model_steps:
    steps = max(1, min(steps, max_model_steps // num_models))

  def batch_fn(seed, step):
    key = jax.random.fold_in(jax.random.key(seed), 7)
    return sampler(jax.random.fold_in(key, step), batch_size)

  state0 = init_stack(model, optimizer, seeds, shape)

  def executor(models_seeds, models_hypers, chunk_size):
    return Executor(step_fn, models_seeds, stack_hyperparams(models_hypers),
                    chunk_size=chunk_size, max_consecutive_skips=MAX_CONSECUTIVE_SKIPS,
                    batch_fn=batch_fn)

  # The baseline: M single-model executors (one shared compiled program), one after another.
  singles = []
  for i in seeds:
    single = executor([seeds[i]], [hypers[i]], 1)
    single.load(jax.tree.map(lambda x, i=i: x[i:i + 1], state0))
    singles.append(single)

  def baseline():
    out = None
    for single in singles:
      for _ in range(steps):
        out = single.step()
    return out

  auto = _strategy_name(resolve_chunk_size("auto", num_models), num_models)
  variants = {"baseline": baseline}
  notes = {}
  for strategy in dict.fromkeys([*strategies, *([auto] if with_auto else [])]):
    size = resolve_chunk_size(strategy, num_models, chunk_size=min(chunk_size, num_models))
    if strategy == "chunked" and size in (1, num_models):
      continue  # the same as sequential or vmap
    stack = executor(seeds, hypers, size)
    stack.load(state0)
    if size > 1:
      try:
        memory.check_memory(num_models=num_models,
                            bytes_per_model=memory.tree_bytes(state0) // num_models,
                            parallel_bytes=stack.program_temp_bytes(),
                            budget=memory.memory_budget())
      except memory.MemoryBudgetError as e:
        notes[strategy] = f"does not fit: {e}"
        continue

    def run(stack=stack):
      out = None
      for _ in range(steps):
        out = stack.step()
      return out

    variants[strategy] = run

  times = {k: [] for k in variants}
  for fn in variants.values():  # compile and warm up
    jax.block_until_ready(fn())
  for _ in range(repeats):
    if deadline is not None and times["baseline"] and time.perf_counter() > deadline:
      break
    for key, fn in variants.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[key].append(time.perf_counter() - start)
  base = num_models * steps / statistics.median(times["baseline"])
  base_best = num_models * steps / min(times["baseline"])
  rows = []
  for key in list(variants) + list(notes):
    row = {"model": name, "num_models": num_models, "variant": key, "steps": steps,
           "batch_size": batch_size, "backend": jax.default_backend(),
           "device": jax.devices()[0].device_kind, "auto": key == auto}
    if key in variants:
      rate = num_models * steps / statistics.median(times[key])
      best = num_models * steps / min(times[key])
      row.update(model_steps_per_s=rate, images_per_s=rate * batch_size, speedup=rate / base,
                 speedup_best=best / base_best, seconds=[round(t, 4) for t in times[key]],
                 repeats=len(times[key]), stopped_at_deadline=len(times[key]) < repeats)
    else:
      row["note"] = notes[key]
    rows.append(row)
    print(json.dumps(row), flush=True)
  return rows


def table(rows: list[dict]) -> str:
  lines = ["| model | M | variant | model-steps/s (median) | speedup, median | speedup, best |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    name = r["variant"] + (" (auto)" if r["auto"] else "")
    if "note" in r:
      lines.append(f"| {r['model']} | {r['num_models']} | {name} | does not fit | — | — |")
    else:
      lines.append(f"| {r['model']} | {r['num_models']} | {name} | "
                   f"{r['model_steps_per_s']:.1f} | {r['speedup']:.2f}× | "
                   f"{r['speedup_best']:.2f}× |")
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
  del argv
  print(json.dumps({"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
                    "jax": jax.__version__, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}))
  rows = []
  for name in _MODELS.value:
    for m in _NUM_MODELS.value:
      rows += run_config(name, int(m), list(_STRATEGIES.value), steps=_STEPS.value,
                         repeats=_REPEATS.value, chunk_size=_CHUNK.value,
                         max_model_steps=_MAX_MODEL_STEPS.value)
  text = table(rows)
  print(text)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(text)


if __name__ == "__main__":
  app.run(main)
