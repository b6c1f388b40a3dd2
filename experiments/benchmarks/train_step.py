r"""Train-step throughput of vaejax against a PyTorch eager baseline.

``PYTHONPATH=. python -m experiments.benchmarks.train_step [--model=conv_vae]
[--batch_size=64] [--framework=jax|torch|compare] [--conv_impl=fast] [--dtype=float32]``

Times the full train step (forward, ELBO, backward, Adam update) on one fixed batch held
on the device (training on procedural dSprites renders the batch inside the step as well;
``render_speed.py`` times that part), after compiling and a warm-up, blocking on the
results, median of repeats, and prints one JSON line:

* ``--framework=jax`` (default): the step of :func:`vaejax.training.step.make_train_step`,
  jit-compiled as the training loop compiles a single run's program (the masked step of
  :func:`~vaejax.training.step.make_masked_step` with ``lax.cond``, the state donated;
  non-finite guard, per-model hyper-parameters and metrics included);
* ``--framework=torch``: :mod:`experiments.benchmarks.torch_models` (same architecture,
  loss, optimizer and initial weights; eager mode; ``torch.set_num_threads(--torch_threads)``);
* ``--framework=compare``: both, interleaved repeat by repeat (``timing.interleaved_rates``),
  with ``ratio`` = median over repeats of (vaejax images/s) / (PyTorch images/s), so a
  speed claim is a side-by-side ratio from one run. ``cpu_ratio`` is the same on images
  per CPU-second of the process, steadier when other jobs load the machine.

Models: ``conv_vae`` (default), the disentanglement_lib dSprites VAE on 64×64×1 dSprites
images, and ``mlp_vae`` (784-512-256-10 and back) on 28×28×1 binarised MNIST (the
shared ``mnist10k.npz`` when present, else random binary images of the same size).

Threads: XLA:CPU runs its ops on an intra-op pool of one thread per core (its YNNPACK
matmuls also use a pool of their own); ``XLA_FLAGS`` must be set before Python starts
(the line records ``xla_flags``). PyTorch uses ``--torch_threads`` OpenMP threads.
The harness needs only jax, flax, optax, chex and absl (torch for the baseline): of vaejax
it imports the models and ``vaejax.training.{step,state,optimizer}``, which do not import
ml_collections, so it runs with ``PYTHONPATH=.`` on an accelerator host; ``backend`` tells
where JAX ran. This command line runs the PyTorch baseline on the CPU, in float32;
:mod:`experiments.benchmarks.device_suite` calls :func:`make_runners` and :func:`measure` to
run both on the same GPU, in float32 and bfloat16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks import timing
from vaejax import models, objectives
from vaejax.training.optimizer import make_optimizer
from vaejax.training.state import StackState, create_train_state
from vaejax.training.step import Hyperparams, make_masked_step, make_train_step

IMAGE_SHAPES = {"conv_vae": (64, 64, 1), "mlp_vae": (28, 28, 1)}
LEARNING_RATE = 1e-4  # disentanglement_lib's Adam(1e-4, 0.9, 0.999, 1e-8)
MAX_CONSECUTIVE_SKIPS = 10  # the config default (a guard that never triggers here)


def make_images(model_name: str, batch_size: int, seed: int) -> tuple[np.ndarray, str]:
  """A fixed NHWC float32 batch in {0, 1} for ``model_name`` and the name of its source."""
  rng = np.random.default_rng(seed)
  if model_name == "conv_vae":
    from vaejax.data import dsprites  # pylint: disable=g-import-not-at-top
    classes = np.stack([rng.integers(0, n, batch_size) for n in dsprites.GT_FACTOR_SIZES], 1)
    return dsprites.render_numpy(classes.astype(np.int32)), "dsprites_procedural"
  from vaejax.data import mnist  # pylint: disable=g-import-not-at-top
  path = mnist.shared_data_dir() / mnist.NPZ_FILENAME
  if path.is_file():
    with np.load(path) as f:
      digits = f["images"][rng.choice(len(f["images"]), batch_size, replace=False)]
    return (digits[..., None] >= 128).astype(np.float32), "mnist10k_binarized"
  shape = (batch_size, *IMAGE_SHAPES[model_name])
  return (rng.random(shape) < 0.13).astype(np.float32), "random_binary"


class JaxRunner:
  """The vaejax train step, jit-compiled as the training loop compiles a single run.

  A single run is a chunk of one model: the masked step over a
  :class:`~vaejax.training.state.StackState` with unstacked leaves (``lax.cond`` skips a
  diverged model), its state donated, the hyper-parameters traced float32 numbers.
  """

  learning_rate = LEARNING_RATE  # Adam's rate of the timed step (a subclass may set its own)

  def __init__(self, model_name: str, images: np.ndarray, seed: int, conv_impl: str = "fast",
               dtype: str = "float32"):
    model = models.create_model(
        {"name": model_name, "conv_impl": conv_impl, "dtype": dtype}, images.shape[1:])
    self._compile(model, images.shape[1:], {"image": images}, seed)

  def _compile(self, model, spec, batch: dict[str, Any], seed: int) -> None:
    """Initialises ``model`` for ``spec`` and jits its step on ``batch`` (held on the device)."""
    self.model = model
    optimizer = make_optimizer()  # Adam's direction; the step applies the rate
    state = create_train_state(self.model, optimizer, seed, spec)
    self.initial_params = jax.device_get(state.params)
    self.state = StackState(models=state, active=jnp.asarray(True),
                            masked_at=jnp.asarray(-1, jnp.int32))
    step = make_masked_step(make_train_step(self.model, optimizer), MAX_CONSECUTIVE_SKIPS,
                            use_cond=True)
    self.step = jax.jit(step, donate_argnums=0)
    self.batch = jax.device_put(dict(batch))
    self.hyper = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32),
                              Hyperparams(objectives.LossSettings(), self.learning_rate, 0))
    self.metrics = None

  def run(self, steps: int) -> None:
    state = self.state
    for _ in range(steps):
      state, self.metrics = self.step(state, self.batch, self.hyper)
    self.state = jax.block_until_ready(state)

  def loss(self) -> float:
    return float(self.metrics["loss"])

  def num_params(self) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.initial_params))


class TorchRunner:
  """The PyTorch eager baseline, started from the same weights as ``jax_params``.

  ``device="cuda"`` runs it on the GPU (each ``run`` then ends with
  ``torch.cuda.synchronize()``, as the JAX runner blocks on its state); ``dtype="bfloat16"``
  runs forward and loss under ``torch.autocast`` (PyTorch's mixed precision; the weights,
  Adam and the reduced loss stay float32).
  """

  def __init__(self, model_name: str, images: np.ndarray, seed: int, jax_params: Any,
               threads: int, device: str = "cpu", dtype: str = "float32"):
    import torch  # pylint: disable=g-import-not-at-top

    from experiments.benchmarks import torch_models  # pylint: disable=g-import-not-at-top

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    self.model = torch_models.create_model(model_name, images.shape[1:])
    torch_models.load_flax_params(self.model, jax_params)
    self.model.to(device)
    autocast = torch.bfloat16 if dtype == "bfloat16" else None
    self.step = torch_models.make_train_step(self.model, LEARNING_RATE, autocast=autocast)
    self.x = torch_models.to_nchw(images).to(device)
    self.sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else None
    self.last_loss = None
    self.version = torch.__version__
    self.params = torch_models.num_params(self.model)

  def run(self, steps: int) -> None:
    for _ in range(steps):
      self.last_loss = self.step(self.x)
    if self.sync is not None:
      self.sync()

  def loss(self) -> float:
    return float(self.last_loss)

  def num_params(self) -> int:
    return self.params


def make_runners(model_name: str, batch_size: int, seed: int, frameworks: tuple[str, ...],
                 *, conv_impl: str = "fast", dtype: str = "float32", torch_threads: int = 2,
                 torch_device: str = "cpu", torch_dtype: str = "float32",
                 extra_conv_impls: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
  """``({name: runner}, data source)`` on one fixed batch; ``frameworks`` is a subset of
  ``("jax", "torch")`` (the JAX model is built either way: it gives the weights), and each
  of ``extra_conv_impls`` adds a vaejax runner ``jax_<impl>`` with that conv formulation."""
  images, data_source = make_images(model_name, batch_size, seed)
  jax_runner = JaxRunner(model_name, images, seed, conv_impl, dtype)
  runners: dict[str, Any] = {}
  if "jax" in frameworks:
    runners["jax"] = jax_runner
  for impl in extra_conv_impls:
    runners[f"jax_{impl}"] = JaxRunner(model_name, images, seed, impl, dtype)
  if "torch" in frameworks:
    runners["torch"] = TorchRunner(model_name, images, seed, jax_runner.initial_params,
                                   torch_threads, torch_device, torch_dtype)
  return runners, data_source


def measure(runners: dict[str, Any], batch_size: int, steps: int, repeats: int
            ) -> dict[str, Any]:
  """Images/s of warmed-up ``runners``, interleaved repeat by repeat: ``images_per_sec``
  and ``images_per_cpu_sec`` of the first runner; with ``jax`` and ``torch``, ``torch_*``
  and the paired ``ratio`` / ``cpu_ratio`` (module docstring); for any other runner
  ``<name>_images_per_sec`` and ``<name>_vs_jax``, its paired ratio to ``jax``."""
  rates = timing.interleaved_rates(
      {k: (lambda r=r: r.run(steps)) for k, r in runners.items()}, steps * batch_size, repeats)
  subject = next(iter(runners))
  result = {
      "images_per_sec": round(rates[subject].median(), 1),
      "images_per_cpu_sec": round(rates[subject].median("cpu"), 1),
      "step_ms": round(1000 * batch_size / rates[subject].median(), 2),
  }
  for name in runners:
    if name not in ("jax", "torch") and "jax" in runners:
      result[f"{name}_images_per_sec"] = round(rates[name].median(), 1)
      result[f"{name}_vs_jax"] = round(timing.paired_ratio(rates[name], rates["jax"]), 3)
  if "jax" in runners and "torch" in runners:
    jax_rates, torch_rates = rates["jax"], rates["torch"]
    result.update({
        "torch_images_per_sec": round(torch_rates.median(), 1),
        "torch_images_per_cpu_sec": round(torch_rates.median("cpu"), 1),
        "ratio": round(timing.paired_ratio(jax_rates, torch_rates), 3),
        "cpu_ratio": round(timing.paired_ratio(jax_rates, torch_rates, "cpu"), 3),
        "ratios_per_repeat": [round(a / b, 3) for a, b in zip(jax_rates.wall, torch_rates.wall)],
    })
  result["final_loss"] = {k: round(r.loss(), 3) for k, r in runners.items()}
  return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """Parses and checks the command line (bad values exit with a message naming them)."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="conv_vae", choices=sorted(IMAGE_SHAPES))
  parser.add_argument("--batch_size", type=int, default=64, help="Images per train step.")
  parser.add_argument("--framework", default="jax", choices=["jax", "torch", "compare"],
                      help="Time the vaejax step, the PyTorch baseline, or both interleaved.")
  parser.add_argument("--conv_impl", default="fast", choices=["fast", "fast_lax", "textbook"],
                      help="vaejax conv formulation (conv_vae only).")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="vaejax compute dtype (parameters and loss stay float32).")
  parser.add_argument("--repeats", type=int, default=7, help="Timed repeats; medians reported.")
  parser.add_argument("--steps", type=int, default=10, help="Train steps per timed repeat.")
  parser.add_argument("--warmup", type=int, default=3, help="Untimed steps after compiling.")
  parser.add_argument("--torch_threads", type=int, default=2, help="torch.set_num_threads.")
  parser.add_argument("--seed", type=int, default=0, help="Seed of the weights and the batch.")
  args = parser.parse_args(argv)
  for name in ("batch_size", "repeats", "steps", "torch_threads"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
  if args.warmup < 0:
    parser.error(f"--warmup must be >= 0, got {args.warmup}.")
  if args.model != "conv_vae" and args.conv_impl != "fast":
    parser.error(f"--conv_impl applies to conv_vae only, not {args.model}.")
  return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark of the command line ``argv``; prints and returns its JSON record."""
  args = parse_args(argv)
  name, batch = args.model, args.batch_size
  frameworks = {"jax": ("jax",), "torch": ("torch",), "compare": ("jax", "torch")}
  runners, data_source = make_runners(
      name, batch, args.seed, frameworks[args.framework], conv_impl=args.conv_impl,
      dtype=args.dtype, torch_threads=args.torch_threads)
  for runner in runners.values():
    runner.run(1 + args.warmup)  # the first JAX call compiles
  measured = measure(runners, batch, args.steps, args.repeats)
  subject = next(iter(runners))
  result = {
      "benchmark": "train_step",
      "model": name,
      "framework": args.framework,
      "batch_size": batch,
      **{k: measured.pop(k) for k in ("images_per_sec", "images_per_cpu_sec", "step_ms")},
      "backend": jax.default_backend() if subject == "jax" else "cpu",
      "device": str(jax.devices()[0]) if subject == "jax" else platform.processor() or "cpu",
      "conv_impl": args.conv_impl if name == "conv_vae" else None,
      "dtype": args.dtype,
      "num_params": runners[subject].num_params(),
      "data": data_source,
      "repeats": args.repeats,
      "steps_per_repeat": args.steps,
      "cpu_count": os.cpu_count(),
      "load_average_1min": round(os.getloadavg()[0], 2),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax_version": jax.__version__,
  }
  if "torch" in runners:
    result.update({"torch_version": runners["torch"].version,
                   "torch_threads": args.torch_threads})
  result.update(measured)
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
