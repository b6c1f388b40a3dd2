r"""Train-step throughput of the dSprites conv VAE: "fast" vs "textbook" convolutions.

``python -m experiments.benchmarks.conv_impls [--batch_size=64] [--repeats=5] [--steps=10]``

Times a full jit-compiled train step (forward, backward, Adam update) of the
disentanglement_lib conv VAE on 64×64×1 binary images for each variant, side by side:
the variants run interleaved in each repeat, after a warm-up, with
``jax.block_until_ready`` before the clock is read. Prints one JSON line with the median
images/s of each variant over the repeats and ``ratio`` = fast / textbook. On a shared
machine the wall clock also counts other processes' load, so the line also gives
``images_per_cpu_s``: images per second of this process's CPU time (all threads), a
rate that load on the other cores disturbs less.

Variants: ``textbook``, ``fast`` and ``fast_lax`` (all layers; see
:mod:`vaejax.models.fast_conv`), ``fast_encoder`` / ``fast_decoder`` (only that half
"fast", the other "textbook"). All use the *same* parameters, which the two formulations share.
XLA flags (``XLA_FLAGS``) are read by JAX at start-up; the JSON line records them.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from experiments.benchmarks import timing
from vaejax import objectives
from vaejax.models import networks, vae

_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per train step.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats; the median is reported.")
_STEPS = flags.DEFINE_integer("steps", 10, "Train steps per timed repeat.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps per variant after compiling.")
_VARIANTS = flags.DEFINE_list(
    "variants", ["textbook", "fast"],
    "Any of textbook, fast, fast_lax, fast_encoder, fast_decoder.")

IMAGE_SHAPE = (64, 64, 1)
_IMPLS = {  # variant -> (encoder conv_impl, decoder conv_impl)
    "textbook": ("textbook", "textbook"),
    "fast": ("fast", "fast"),
    "fast_lax": ("fast_lax", "fast_lax"),
    "fast_encoder": ("fast", "textbook"),
    "fast_decoder": ("textbook", "fast"),
}


def make_model(encoder_impl: str, decoder_impl: str) -> vae.VAE:
  return vae.VAE(
      encoder=networks.ConvEncoder(10, conv_impl=encoder_impl),
      decoder=networks.ConvDecoder(IMAGE_SHAPE, conv_impl=decoder_impl),
      image_shape=IMAGE_SHAPE,
  )


def make_train_step(model: vae.VAE, optimizer: optax.GradientTransformation):
  """(params, opt_state, x, key) -> (params, opt_state, loss): one Adam step on the ELBO."""

  def loss_fn(params, x, key):
    outputs = model.apply({"params": params}, x, rngs={"sample": key})
    return objectives.elbo_loss(x, outputs)[0]

  @jax.jit
  def step(params, opt_state, x, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def main(argv: list[str]) -> None:
  del argv
  unknown = sorted(set(_VARIANTS.value) - set(_IMPLS))
  if unknown:
    raise app.UsageError(f"Unknown variants {unknown}; choose from {sorted(_IMPLS)}.")
  batch = _BATCH.value
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((batch,) + IMAGE_SHAPE) < 0.1, jnp.float32)
  optimizer = optax.adam(1e-4, b1=0.9, b2=0.999, eps=1e-8)
  params = make_model("textbook", "textbook").init(
      {"params": jax.random.key(0), "sample": jax.random.key(1)}, x[:1])["params"]

  runs = {}
  for name in _VARIANTS.value:
    step = make_train_step(make_model(*_IMPLS[name]), optimizer)
    state = (params, optimizer.init(params))
    key = jax.random.key(2)
    for _ in range(_WARMUP.value):  # the first call compiles
      key, sub = jax.random.split(key)
      state = step(*state, x, sub)[:2]
    jax.block_until_ready(state)
    runs[name] = {"step": step, "state": state, "key": key}

  def run_steps(run):
    state, key = run["state"], run["key"]
    for _ in range(_STEPS.value):
      key, sub = jax.random.split(key)
      state = run["step"](*state, x, sub)[:2]
    run["state"], run["key"] = jax.block_until_ready(state), key

  # Interleaved, so drifts in machine load hit all variants (experiments/benchmarks/timing.py).
  timed = timing.interleaved_rates(
      {name: functools.partial(run_steps, run) for name, run in runs.items()},
      _STEPS.value * batch, _REPEATS.value)

  def medians(clock):
    return {name: round(rates.median(clock), 1) for name, rates in timed.items()}

  rates, cpu_rates = medians("wall"), medians("cpu")
  result = {
      "benchmark": "conv_vae_train_step",
      "backend": jax.default_backend(),
      "batch_size": batch,
      "repeats": _REPEATS.value,
      "steps_per_repeat": _STEPS.value,
      "images_per_s": rates,
      "images_per_cpu_s": cpu_rates,
      "load_average_1min": round(os.getloadavg()[0], 2),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  if "fast" in rates and "textbook" in rates:
    result["ratio"] = round(rates["fast"] / rates["textbook"], 2)
    result["cpu_ratio"] = round(cpu_rates["fast"] / cpu_rates["textbook"], 2)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
