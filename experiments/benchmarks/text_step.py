r"""Train-step throughput of vaejax's LSTM VAE against its PyTorch eager twin, in tokens/s.

``PYTHONPATH=. python -m experiments.benchmarks.text_step [--framework=jax|torch|compare]
[--batch_size=32] [--max_vocab=5000] [--embedding_size=256] [--hidden_size=256]
[--latent_dim=32]``

Times one full train step (forward, ELBO, backward, Adam update) of ``lstm_vae`` on one
fixed batch of Tiny Shakespeare (``../shared/data``; random sentences of the same lengths
when the file is absent), after compiling and a warm-up, blocking on the results, and
prints one JSON line; with ``--framework=compare`` both frameworks run interleaved repeat
by repeat (:func:`experiments.benchmarks.timing.interleaved_rates`) and ``ratio`` is the
median over repeats of (vaejax tokens/s) / (PyTorch tokens/s).

* vaejax: the engine's train step, :func:`vaejax.training.step.make_train_step` wrapped
  in :func:`~vaejax.training.step.make_masked_step` with ``lax.cond`` and jit-compiled
  with the state donated, as the training loop compiles a single run's program (the ELBO
  of :func:`vaejax.objectives.elbo_loss`, Adam, the non-finite guard, traced
  hyper-parameters and every logged metric included).
* PyTorch: :mod:`experiments.benchmarks.torch_text`, same architecture, loss, Adam and
  initial weights (copied from flax), eager, ``torch.set_num_threads(--torch_threads)``.

Tokens: ``tokens_per_sec`` counts scored tokens (words and ``<eos>``: the batch's
``length`` summed); ``positions_per_sec`` the padded (B × T) positions both frameworks
compute. Word dropout is off (``word_keep`` = 1) on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from typing import Any

import jax
import numpy as np

from experiments.benchmarks import timing, train_step
from vaejax import data, models
from vaejax.types import EOS_ID, DataSpec

LEARNING_RATE = 1e-3  # Texar's and He et al.'s Adam rate for text VAEs
MAX_CONSECUTIVE_SKIPS = 10  # the schema's default (the masking's bound)


def make_batch(batch_size: int, max_vocab: int, max_length: int | None, seed: int
               ) -> tuple[dict[str, np.ndarray], DataSpec, str]:
  """A training batch of Tiny Shakespeare, its spec and the data's name (random
  sentences of Tiny Shakespeare's lengths when the file is absent)."""
  try:
    dataset = data.load({"name": "tiny_shakespeare", "max_vocab": max_vocab,
                         "max_length": max_length})
  except FileNotFoundError:
    rng = np.random.default_rng(seed)
    length = max_length or 22
    lengths = rng.integers(2, min(length, 16) + 1, batch_size)
    tokens = np.zeros((batch_size, length), np.int32)
    for row, n in enumerate(lengths):
      tokens[row, :n - 1] = rng.integers(4, max_vocab, n - 1)
      tokens[row, n - 1] = EOS_ID
    batch = {"tokens": tokens, "length": lengths.astype(np.int32)}
    return batch, DataSpec.tokens(max_vocab, length), "random_tokens"
  return dataset.get_batch("train", 0, batch_size, seed), dataset.spec, "tiny_shakespeare"


class JaxRunner(train_step.JaxRunner):
  """The engine's step (module docstring) on one token batch held on the device."""

  learning_rate = LEARNING_RATE

  def __init__(self, model_config: dict[str, Any], spec: DataSpec, batch: dict[str, Any],
               seed: int):
    self._compile(models.create_model(model_config, spec), spec, batch, seed)


class TorchRunner:
  """The PyTorch eager twin, started from the same weights as ``jax_params``."""

  def __init__(self, model_config: dict[str, Any], spec: DataSpec, tokens: np.ndarray,
               seed: int, jax_params: Any, threads: int):
    import torch  # pylint: disable=g-import-not-at-top

    from experiments.benchmarks import torch_text  # pylint: disable=g-import-not-at-top

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    self.model = torch_text.LSTMVAE(spec.vocab_size, model_config["embedding_size"],
                                    model_config["hidden_size"], model_config["latent_dim"])
    torch_text.load_flax_params(self.model, jax_params)
    self.step = torch_text.make_train_step(self.model, LEARNING_RATE)
    self.tokens = torch.from_numpy(np.asarray(tokens, np.int64))
    self.last_loss = None
    self.version = torch.__version__
    self.params = torch_text.num_params(self.model)

  def run(self, steps: int) -> None:
    for _ in range(steps):
      self.last_loss = self.step(self.tokens)

  def loss(self) -> float:
    return float(self.last_loss)

  def num_params(self) -> int:
    return self.params


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """Parses and checks the command line (bad values exit with a message naming them)."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--framework", default="jax", choices=["jax", "torch", "compare"])
  parser.add_argument("--batch_size", type=int, default=32, help="Sentences per step.")
  parser.add_argument("--max_vocab", type=int, default=5000, help="Vocabulary size V.")
  parser.add_argument("--max_length", type=int, default=None,
                      help="T; default: the longest Tiny Shakespeare sentence.")
  parser.add_argument("--embedding_size", type=int, default=256)
  parser.add_argument("--hidden_size", type=int, default=256)
  parser.add_argument("--latent_dim", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=7, help="Timed repeats; medians reported.")
  parser.add_argument("--steps", type=int, default=10, help="Train steps per timed repeat.")
  parser.add_argument("--warmup", type=int, default=3, help="Untimed steps after compiling.")
  parser.add_argument("--torch_threads", type=int, default=2, help="torch.set_num_threads.")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  for name in ("batch_size", "max_vocab", "embedding_size", "hidden_size", "latent_dim",
               "repeats", "steps", "torch_threads"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
  if args.warmup < 0:
    parser.error(f"--warmup must be >= 0, got {args.warmup}.")
  return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark of the command line ``argv``; prints and returns its JSON record."""
  args = parse_args(argv)
  batch, spec, source = make_batch(args.batch_size, args.max_vocab, args.max_length, args.seed)
  config = {"name": "lstm_vae", "embedding_size": args.embedding_size,
            "hidden_size": args.hidden_size, "latent_dim": args.latent_dim}
  runners: dict[str, Any] = {}
  jax_runner = JaxRunner(config, spec, batch, args.seed)
  if args.framework in ("jax", "compare"):
    runners["jax"] = jax_runner
  if args.framework in ("torch", "compare"):
    runners["torch"] = TorchRunner(config, spec, batch["tokens"], args.seed,
                                   jax_runner.initial_params, args.torch_threads)
  for runner in runners.values():
    runner.run(1 + args.warmup)  # the first JAX call compiles

  scored = int(np.sum(batch["length"]))
  positions = int(batch["tokens"].size)
  rates = timing.interleaved_rates(
      {k: (lambda r=r: r.run(args.steps)) for k, r in runners.items()}, args.steps * scored,
      args.repeats)
  subject = "jax" if "jax" in runners else "torch"
  median = rates[subject].median()
  result = {
      "benchmark": "text_step", "model": "lstm_vae", "framework": args.framework,
      "batch_size": args.batch_size, "max_length": spec.max_length,
      "vocab_size": spec.vocab_size, "embedding_size": args.embedding_size,
      "hidden_size": args.hidden_size, "latent_dim": args.latent_dim,
      "tokens_per_sec": round(median, 1),
      "positions_per_sec": round(median * positions / scored, 1),
      "tokens_per_cpu_sec": round(rates[subject].median("cpu"), 1),
      "step_ms": round(1000 * scored / median, 2),
      "backend": jax.default_backend() if subject == "jax" else "cpu",
      "device": str(jax.devices()[0]) if subject == "jax" else platform.processor() or "cpu",
      "num_params": runners[subject].num_params(), "data": source,
      "scored_tokens_per_batch": scored, "repeats": args.repeats,
      "steps_per_repeat": args.steps, "cpu_count": os.cpu_count(),
      # Adam's rate of the timed JAX step (the PyTorch twin's is LEARNING_RATE)
      "learning_rate": float(jax_runner.hyper.learning_rate),
      "load_average_1min": round(os.getloadavg()[0], 2),
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax_version": jax.__version__,
  }
  if "torch" in runners:
    result.update({"torch_version": runners["torch"].version,
                   "torch_threads": args.torch_threads,
                   "torch_tokens_per_sec": round(rates["torch"].median(), 1)})
  if args.framework == "compare":
    jax_rates, torch_rates = rates["jax"], rates["torch"]
    result.update({
        "torch_tokens_per_cpu_sec": round(torch_rates.median("cpu"), 1),
        "ratio": round(timing.paired_ratio(jax_rates, torch_rates), 3),
        "cpu_ratio": round(timing.paired_ratio(jax_rates, torch_rates, "cpu"), 3),
        "ratios_per_repeat": [round(a / b, 3) for a, b in zip(jax_rates.wall, torch_rates.wall)],
    })
  result["final_loss"] = {k: round(r.loss(), 3) for k, r in runners.items()}
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
