"""What every evaluator shares: the base class, the stack it runs on, the held-out data.

* :class:`Evaluator`: one configured evaluator (``due``, ``evaluate``, ``__call__``);
* :class:`Setup`: what it may read of one program's stack (model, dataset, config, seeds,
  points, model directories, held-out batches, logged history);
* :class:`Stack` (the protocol) and :class:`StackView` (an executor seen as a stack);
* :func:`held_out_split`, :func:`check_held_out`, :func:`held_out_batches`: the fixed
  held-out data every evaluation uses;
* helpers the evaluators share: config checks (:func:`config_int`), the ground-truth
  requirement, every model's posterior of the same observations (:func:`encode_all`),
  result files (:func:`write_json`, process 0 only, atomic) and progress
  (:func:`vaejax.utils.progress.track`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np

from vaejax import rng
from vaejax.models import codec
from vaejax.utils import files, stopping
from vaejax.utils.checks import check_int, check_number
from vaejax.utils.progress import track

Array = jax.Array
Batch = dict[str, Any]

__all__ = [
    "Array", "Batch", "EvaluationError", "Evaluator", "Setup", "Stack", "StackView",
    "check_held_out", "config_int", "config_number", "encode_all", "held_out_batches",
    "held_out_split", "is_writer", "make_posterior_fn", "require_ground_truth", "track",
    "write_json",
]


# Evaluators under these names log the run's held-out numbers as ``eval/*``: the image
# models' ELBO terms, and the sequence models' NLL, perplexity and the rest.
EVAL_NAMES = ("elbo", "text")


class EvaluationError(ValueError):
  """An evaluator that cannot run with this model or data (raised before compiling)."""


# ----------------------------------------------------------------------------- held-out data


def held_out_split(dataset: Any, split: str) -> str:
  """The split evaluators read: ``split``, else "test", else "validation"; procedural
  data (sampled in jit) fall back to their training distribution on a separate key stream."""
  splits = tuple(dataset.splits)
  if split:
    if split not in splits:
      raise EvaluationError(f"Config eval.split={split!r} is not a split of "
                            f"{dataset.name!r}; its splits are {splits}.")
    return split
  for candidate in ("test", "validation"):
    if candidate in splits:
      return candidate
  if dataset.jax_sampler("train") is not None:
    return "train"  # procedural: held out by a separate key stream
  raise EvaluationError(f"Dataset {dataset.name!r} has no held-out split (splits {splits}); "
                        "set eval.split.")


def check_held_out(dataset: Any, eval_config: Any) -> tuple[str, int]:
  """``(split, number of batches)`` of the held-out data, or one error naming the key."""
  split = held_out_split(dataset, eval_config.split)
  size, num = eval_config.batch_size, eval_config.num_batches
  sampled = dataset.jax_sampler(split) is not None
  total = dataset.num_examples(split)
  if total is not None and not sampled and size > total:
    raise EvaluationError(
        f"Config eval.batch_size={size} exceeds the {total} examples of "
        f"{dataset.name}/{split}; set --config.eval.batch_size to at most {total}.")
  if num == 0:
    if total is None:
      raise EvaluationError(
          f"Config eval.num_batches=0 (the whole split) needs a finite split; "
          f"{dataset.name!r} is unbounded. Set eval.num_batches > 0.")
    num = max(total // size, 1)
  return split, num


def held_out_batches(dataset: Any, eval_config: Any) -> list[Batch]:
  """The fixed held-out batches every evaluation uses (host arrays).

  ``eval.num_batches`` batches of ``eval.batch_size`` from the held-out split (0 = every
  full batch of a finite split), drawn with :data:`vaejax.rng.EVAL_DATA_SEED`: a property
  of the data, the same for every model of a stack. Samplers draw from the key stream
  :data:`vaejax.rng.EVAL_DATA`, apart from every training stream.
  """
  split, num = check_held_out(dataset, eval_config)
  size = eval_config.batch_size
  sampler = dataset.jax_sampler(split)
  if sampler is not None:
    key = rng.stream_key(rng.EVAL_DATA_SEED, rng.EVAL_DATA)
    sample = jax.jit(lambda i: sampler(jax.random.fold_in(key, i), size))
    return [jax.device_get(sample(i)) for i in range(num)]
  return [dataset.get_batch(split, i, size, rng.EVAL_DATA_SEED) for i in range(num)]


# ----------------------------------------------------------------------------- the stack


class Setup(NamedTuple):
  """What every evaluator of one program's stack may read.

  Attributes:
    model: the Flax module (one architecture for the whole stack).
    dataset: the dataset object.
    config: the stack's training config (its static values).
    seeds: one seed per model.
    points: one grid point per model (``{}`` for a single run).
    model_dirs: where each model's files go (the workdir for a single run).
    held_out: a function returning the held-out batches (computed once, on first use).
    history: a function giving model k's rows logged so far (for figures over training),
      or None.
  """

  model: Any
  dataset: Any
  config: Any
  seeds: Sequence[int]
  points: Sequence[Mapping[str, Any]]
  model_dirs: Sequence[Path]
  held_out: Callable[[], list[Batch]]
  history: Callable[[int], list[dict[str, Any]]] | None = None

  @property
  def conditional(self) -> bool:
    return codec.is_conditional(self.model)

  @property
  def num_dims(self) -> int | None:
    """Data dimensions per example (bits/dim); None for token data (no fixed size)."""
    if getattr(self.dataset, "image_shape", None) is None:
      return None
    return int(np.prod(self.dataset.image_shape))


class Stack(Protocol):
  """The models as an evaluator sees them (an executor provides this)."""

  def map_models(self, fn: Callable, *shared: Any, batched: bool = True) -> list[Any]:
    """Per model, ``fn(params, seed, *shared)`` on host arrays."""

  def params(self, index: int) -> Any:
    """Model ``index``'s parameters (host arrays)."""


class StackView:
  """A :class:`Stack` over an executor (``map_models`` and ``gather()`` of its state):
  per-model functions, and host parameters gathered once on first use."""

  def __init__(self, executor: Any):
    self._executor = executor
    self._host: Any = None

  def map_models(self, fn: Callable, *shared: Any, batched: bool = True) -> list[Any]:
    return self._executor.map_models(fn, *shared, batched=batched)

  def params(self, index: int) -> Any:
    if self._host is None:
      self._host = self._executor.gather()
    return jax.tree.map(lambda x: x[index], self._host.models.params)


# ----------------------------------------------------------------------------- the base class


class Evaluator:
  """One configured evaluator. Subclasses implement :meth:`evaluate` and check their own
  config keys (listed in the schema, :func:`vaejax.config.base_config`) in ``__init__``.

  Args:
    name: its name in ``config.evals`` (the prefix of its logged keys).
    group: its config group (``type``, ``every``, ``at_end`` and the type's keys).
    setup: the stack it evaluates.
    requested: asked for by name (e.g. by ``experiments.evaluate``), so it runs even
      with ``every = 0`` and ``at_end = False``.
  """

  logs_results = True  # its results go into the rows (False: it only writes files)

  def __init__(self, name: str, group: Mapping[str, Any], setup: Setup,
               requested: bool = False):
    self.name = name
    self.every = int(group["every"])
    self.at_end = bool(group["at_end"])
    self.setup = setup
    self.requested = requested
    self.prefix = "eval/" if name in EVAL_NAMES else f"{name}/"

  @property
  def enabled(self) -> bool:
    """Whether it will run (during training, or because it was asked for by name): its
    data and model requirements are checked when it is built."""
    return self.every > 0 or self.at_end or self.requested

  def due(self, step: int, last_step: int) -> bool:
    """Whether to run after ``step`` of a run that ends at ``last_step``."""
    return (self.every > 0 and step % self.every == 0) or (self.at_end and step == last_step)

  def evaluate(self, stack: Stack, step: int) -> list[dict[str, Any]]:
    """Per model, a dict of results (unprefixed keys)."""
    raise NotImplementedError

  def __call__(self, stack: Stack, step: int) -> list[dict[str, Any]]:
    return [{self.prefix + k: v for k, v in row.items()}
            for row in self.evaluate(stack, step)]


# ----------------------------------------------------------------------------- shared helpers


def config_int(group: Mapping[str, Any], key: str, where: str, minimum: int = 1) -> int:
  """``group[key]`` as an int ≥ ``minimum``, or an :class:`EvaluationError` naming
  ``Config {where}.{key}``."""
  return check_int(group[key], f"Config {where}.{key}", minimum=minimum, error=EvaluationError)


def config_number(group: Mapping[str, Any], key: str, where: str) -> float:
  """``group[key]`` as a finite float, or an :class:`EvaluationError` naming it."""
  return check_number(group[key], f"Config {where}.{key}", error=EvaluationError)


def is_writer() -> bool:
  """Only process 0 of a multi-process run writes files (every process computes)."""
  return jax.process_index() == 0


def write_json(path: Path, value: Any) -> None:
  """A result file, atomically (:mod:`vaejax.utils.files`), from process 0 only."""
  if is_writer():
    files.atomic_write_json(path, value)


def require_ground_truth(setup: Setup, name: str, kind: str, requested: bool = False) -> Any:
  """The dataset's ground truth for evaluator ``name`` of type ``kind``, or one error
  saying which datasets have one (and that a conditional model cannot be scored).

  ``requested``: asked for by name (``experiments.evaluate --evals=...``): the error then
  says the run cannot be scored, rather than how to switch the evaluator off in training.
  """
  ground_truth = getattr(setup.dataset, "ground_truth", None)
  if ground_truth is None:
    needs = (f"Evaluator evals.{name} ({kind}) needs a dataset with ground-truth factors "
             f"(dsprites, dsprites_procedural)")
    if requested:
      raise EvaluationError(f"{needs}; this run was trained on {setup.dataset.name!r}, which "
                            "has none, so it cannot be evaluated on this run.")
    raise EvaluationError(f"{needs}; {setup.dataset.name!r} has none. Set "
                          f"--config.evals.{name}.at_end=False.")
  if setup.conditional:
    raise EvaluationError(f"Evaluator evals.{name} ({kind}) encodes observations without "
                          f"labels; model {setup.config.model.name!r} is conditional.")
  return ground_truth


@functools.lru_cache(maxsize=64)
def make_posterior_fn(model: Any) -> Callable:
  """``(params, seed, x) -> (mean, log_var)`` of q(z|x), for :meth:`Stack.map_models`."""

  def fn(params, seed, x):
    del seed
    return codec.encode(model, params, x)

  return fn


def encode_all(stack: Stack, fn: Callable, observations: np.ndarray,
               chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Every model's posterior of the same observations: ``(M, N, d)`` means and log-variances.

  One program call per chunk of observations encodes all models (vmapped where the
  executor vmaps); the last chunk is padded so the program compiles once.
  """
  means, log_vars = [], []
  n = observations.shape[0]
  for start in range(0, n, chunk):
    stopping.check()
    x = observations[start:start + chunk]
    k = x.shape[0]
    if k < chunk:
      x = np.concatenate([x, np.repeat(x[-1:], chunk - k, axis=0)])
    outs = stack.map_models(fn, np.asarray(x, np.float32))
    means.append(np.stack([o[0][:k] for o in outs]))
    log_vars.append(np.stack([o[1][:k] for o in outs]))
  return np.concatenate(means, axis=1), np.concatenate(log_vars, axis=1)
