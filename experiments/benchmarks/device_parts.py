r"""The parts of the device suite (:mod:`experiments.benchmarks.device_suite`), time-boxed.

Each part is a generator ``part(deadline, sizes, ctx)`` of records (dicts with ``status``
= ok | stopped | skipped, ``setting``, ``summary`` and the figures) that starts no new
setting after ``deadline`` (a ``time.perf_counter()`` value), nor one that the last setting's
compile and warm-up time says cannot finish. They call the benchmarks' own functions:

* ``train_step``: :func:`.train_step.make_runners` and :func:`.train_step.measure` (vaejax,
  its ``textbook`` conv formulation and the PyTorch twin, interleaved);
* ``sweep``: :func:`.sweep_throughput.run_config` (vmapped against one after another);
* ``render``: :func:`.render_speed.measure`;
* ``beta_study``: :func:`.beta_study_speed.run`.

``ctx`` holds ``torch_device`` (where the twin runs, or None) and ``torch_note`` (why not).
The benchmark modules are imported inside the parts: the suite checks the packages first.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

MODEL_NAMES = {"conv_vae": "conv VAE (dlib net)", "mlp_vae": "MLP VAE 784-512-256-10"}


@dataclasses.dataclass(frozen=True)
class Sizes:
  """How much each part measures: the accelerator run, or ``--smoke`` on the CPU."""

  train_model: str = "conv_vae"
  # vaejax's conv layers default to a formulation tuned on a CPU ("fast"): on a GPU time
  # XLA's own strided convolutions beside it.
  extra_conv_impls: tuple[str, ...] = ("textbook",)
  train_batches: tuple[int, ...] = (64, 1024)
  dtypes: tuple[str, ...] = ("float32", "bfloat16")
  train_repeats: int = 5
  max_steps_per_repeat: int = 200
  sweep_models: tuple[str, ...] = ("mlp", "conv")
  sweep_num_models: int = 16
  sweep_steps: int = 20
  sweep_repeats: int = 5
  render_batches: tuple[int, ...] = (256, 4096)
  render_repeats: int = 20
  study: dict[str, Any] = dataclasses.field(default_factory=dict)  # beta_study_speed.run


# The smoke run checks the code on a CPU: a small MLP VAE (the dlib net's program takes a
# minute to compile on a loaded 2-core CPU), one or two steps of everything.
SMOKE = Sizes(train_model="mlp_vae", extra_conv_impls=(), train_batches=(4,),
              train_repeats=2, max_steps_per_repeat=2, sweep_models=("mlp",),
              sweep_num_models=2, sweep_steps=1, sweep_repeats=2, render_batches=(8,),
              render_repeats=2, study={"smoke": True})


def split(deadline: float, count: int) -> float:
  """The deadline of the next of ``count`` equal pieces of the time left to ``deadline``."""
  now = time.perf_counter()
  return now + max(deadline - now, 0.0) / max(count, 1)


def stop_reason(what: str) -> str:
  return f"the part's share of the budget ran out before {what}"


def part_train_step(deadline: float, sizes: Sizes, ctx: dict[str, Any]) -> Iterator[dict]:
  """Part 1: one record per (batch size, dtype) of the train step."""
  combos = [(b, d) for b in sizes.train_batches for d in sizes.dtypes]
  name = sizes.train_model
  setup_s = 0.0  # the last setting's compiling and warm-up: the next needs about as long
  for i, (batch, dtype) in enumerate(combos):
    base = {"model": name, "batch_size": batch, "dtype": dtype,
            "setting": f"{MODEL_NAMES[name]}, batch {batch}, {dtype}"}
    left = deadline - time.perf_counter()
    if left <= setup_s:
      reason = stop_reason("this setting") + (
          f" (the last one took {setup_s:.0f} s to compile and warm up; {max(left, 0):.0f} s "
          "were left)" if setup_s else "")
      yield {**base, "status": "stopped", "reason": reason}
      continue
    record, setup_s = _train_step_setting(name, batch, dtype, split(deadline, len(combos) - i),
                                          sizes, ctx)
    yield {**base, **record}


def _train_step_setting(name: str, batch: int, dtype: str, end: float, sizes: Sizes,
                        ctx: dict[str, Any]) -> tuple[dict[str, Any], float]:
  """One setting of part 1, measured until ``end``: (record, seconds of compile + warm-up)."""
  from experiments.benchmarks import timing, train_step  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  frameworks = ("jax", "torch") if ctx["torch_device"] else ("jax",)
  runners, source = train_step.make_runners(
      name, batch, 0, frameworks, dtype=dtype, torch_threads=os.cpu_count() or 1,
      torch_device=ctx["torch_device"] or "cpu", torch_dtype=dtype,
      extra_conv_impls=sizes.extra_conv_impls if name == "conv_vae" else ())
  for runner in runners.values():
    runner.run(3)  # compiles (JAX), warms up (cuDNN, allocators)
  setup_s = time.perf_counter() - start
  step_s = sum(timing.time_call(lambda r=r: r.run(1))[0] for r in runners.values())
  fit = int(0.8 * max(end - time.perf_counter(), 0.0) / max(step_s, 1e-9))
  repeats = max(1, min(sizes.train_repeats, fit))
  steps = max(1, min(sizes.max_steps_per_repeat, fit // repeats))
  measured = train_step.measure(runners, batch, steps, repeats)
  record = {"status": "ok", "data": source, "setup_s": round(setup_s, 1),
            "steps_per_repeat": steps, "repeats": repeats, **measured}
  if repeats < sizes.train_repeats:
    record.update(status="stopped", reason=f"at the share after {repeats} of "
                  f"{sizes.train_repeats} repeats of one step")
  summary = f"vaejax {measured['images_per_sec']:,.0f} img/s"
  if "ratio" in measured:
    summary += (f"; PyTorch {measured['torch_images_per_sec']:,.0f} img/s; "
                f"ratio **{measured['ratio']:.2f}**")
  else:
    summary += f"; PyTorch twin skipped ({ctx['torch_note']})"
  for impl in sizes.extra_conv_impls:
    if f"jax_{impl}_vs_jax" in measured:
      summary += (f"; vaejax `conv_impl={impl}` {measured[f'jax_{impl}_images_per_sec']:,.0f}"
                  f" img/s ({measured[f'jax_{impl}_vs_jax']:.2f}× the default)")
  return {**record, "summary": summary}, setup_s


def part_sweep(deadline: float, sizes: Sizes, ctx: dict[str, Any]) -> Iterator[dict]:
  """Part 2: one record per model kind, the vmapped sweep against one after another."""
  del ctx
  from experiments.benchmarks import sweep_throughput  # pylint: disable=g-import-not-at-top
  m = sizes.sweep_num_models
  names = {"mlp": "MLP VAE 784-512-256-16, batch 128", "conv": "conv VAE (dlib), batch 64"}
  last_s = 0.0  # the last model's compiling and timing: the next (larger) needs more
  for i, name in enumerate(sizes.sweep_models):
    base = {"model": name, "num_models": m, "setting": f"{m} × {names[name]}"}
    start = time.perf_counter()
    if deadline - start <= last_s:
      yield {**base, "status": "stopped", "reason": stop_reason("this model") + (
          f" (the last one took {last_s:.0f} s)" if last_s else "")}
      continue
    rows = sweep_throughput.run_config(
        name, m, ["vmap"], steps=sizes.sweep_steps, repeats=sizes.sweep_repeats,
        with_auto=False, deadline=split(deadline, len(sizes.sweep_models) - i))
    last_s = time.perf_counter() - start
    by = {r["variant"]: r for r in rows}
    seq, vmap = by["baseline"], by["vmap"]
    if "note" in vmap:
      yield {**base, "status": "skipped", "reason": vmap["note"]}
      continue
    record = {**base, "status": "ok", "batch_size": seq["batch_size"],
              "sequential_images_per_s": round(seq["images_per_s"], 1),
              "vmap_images_per_s": round(vmap["images_per_s"], 1),
              "speedup": round(vmap["speedup"], 3), "speedup_best": round(vmap["speedup_best"], 3),
              "steps_per_repeat": vmap["steps"], "repeats": vmap["repeats"],
              "summary": f"vmapped {vmap['images_per_s']:,.0f} img/s; one after another "
                         f"{seq['images_per_s']:,.0f} img/s; **{vmap['speedup']:.2f}×** "
                         "(goal on a GPU ≥ 8×)"}
    if vmap["stopped_at_deadline"]:
      record.update(status="stopped", reason=f"at the share after {vmap['repeats']} repeat(s)")
    yield record


def part_render(deadline: float, sizes: Sizes, ctx: dict[str, Any]) -> Iterator[dict]:
  """Part 3: one record per batch size of the renderer."""
  del ctx
  from experiments.benchmarks import render_speed  # pylint: disable=g-import-not-at-top
  for i, batch in enumerate(sizes.render_batches):
    base = {"batch_size": batch, "setting": f"procedural dSprites, batch {batch}"}
    if time.perf_counter() >= deadline:
      yield {**base, "status": "stopped", "reason": stop_reason("this batch size")}
      continue
    measured = render_speed.measure(batch, sizes.render_repeats,
                                    split(deadline, len(sizes.render_batches) - i))
    measured.pop("batch_size")
    yield {**base, "status": "ok", **measured,
           "summary": f"render {measured['render_images_per_s']:,} img/s; sampler (factors + "
                      f"render) {measured['sampler_images_per_s']:,} img/s; host get_batch "
                      f"{measured['get_batch_images_per_s']:,} img/s"}


def part_beta_study(deadline: float, sizes: Sizes, ctx: dict[str, Any]) -> Iterator[dict]:
  """Part 4: the β study's training record, one per scored model, and a summary."""
  del ctx
  from experiments.benchmarks import beta_study_speed  # pylint: disable=g-import-not-at-top
  yield from beta_study_speed.run(deadline, **sizes.study)


PART_FUNCTIONS: dict[str, Callable[..., Iterator[dict]]] = {
    "train_step": part_train_step, "sweep": part_sweep, "render": part_render,
    "beta_study": part_beta_study}
