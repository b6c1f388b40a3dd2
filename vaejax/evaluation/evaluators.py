r"""Evaluators chosen by config, run on a stack of M ≥ 1 models.

A training config's ``evals`` group names evaluators (big_vision's pattern)::

    config.evals.elbo = {"type": "elbo", "every": 1000, "at_end": True}
    config.evals.dis = {"type": "disentanglement", "every": 0, "at_end": True, ...}

:func:`build` makes one :class:`Evaluator` per entry from its group and the run's
:class:`Setup` (model, dataset, held-out data, the stack's seeds and points, where each
model's files go). An evaluator is called with a :class:`Stack` (the models' parameters,
and ``map_models`` to run a function on all of them, vmapped where the executor vmaps)
and returns one dict of results per model, which the loop logs (keys prefixed with the
evaluator's name; the evaluator named ``elbo`` logs ``eval/*``). Built-in types:

* ``elbo``: held-out ELBO, reconstruction, KL (and per dimension), bits/dim, active units;
* ``iwae``: importance-weighted NLL (K samples), the ELBO gap, collapse report
  (``likelihood.json``);
* ``disentanglement``: the six disentanglement_lib metrics on the encoder mean
  (``disentanglement.json``);
* ``figures``: reconstructions, samples, traversals, interpolation, KL per dimension,
  animated traversals and latent-arithmetic figures (``figures/``);
* ``unsupervised``: disentanglement_lib's scores that need no labels (Gaussian total
  correlation, Wasserstein correlation, mean pairwise mutual information);
* ``udr``: Unsupervised Disentanglement Ranking, a sweep-level score comparing each model
  with the other seeds of its setting;
* ``arithmetic``: latent arithmetic on dSprites, measured on the decoded sprites
  (``arithmetic.json``).

Every model's keys derive from its own seed (:mod:`vaejax.rng`) and the held-out data are
the dataset's (not the model's), so model *i* of a sweep is evaluated exactly as the
single run with its settings.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np
from absl import logging

from vaejax import distributions, objectives, rng
from vaejax.evaluation import likelihood

Array = jax.Array
Batch = dict[str, Any]


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


# ----------------------------------------------------------------------------- setup


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
    return bool(getattr(self.model, "conditional", False))

  @property
  def num_dims(self) -> int:
    return int(np.prod(self.dataset.image_shape))


class Stack(Protocol):
  """The models as an evaluator sees them (an executor provides this)."""

  def map_models(self, fn: Callable, *shared: Any, batched: bool = True) -> list[Any]:
    """Per model, ``fn(params, seed, *shared)`` on host arrays."""

  def params(self, index: int) -> Any:
    """Model ``index``'s parameters (host arrays)."""


def _progress(items: Sequence[Any], what: str) -> Iterable[Any]:
  """Iterates ``items`` with a tqdm bar on a terminal, else one log line at the start."""
  if sys.stderr.isatty() and len(items) > 1:
    import tqdm  # pylint: disable=g-import-not-at-top
    return tqdm.tqdm(items, desc=what, leave=False, dynamic_ncols=True)
  logging.info("%s: %d item(s)...", what, len(items))
  return items


def _is_writer() -> bool:
  """Only process 0 of a multi-process run writes files (every process computes)."""
  return jax.process_index() == 0


def _write_json(path: Path, value: Any) -> None:
  """Atomic JSON write: a killed process leaves the old file or the new one, never half."""
  if not _is_writer():
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)


class Evaluator:
  """One configured evaluator. Subclasses set ``keys`` and implement :meth:`evaluate`.

  Args:
    name: its name in ``config.evals`` (the prefix of its logged keys).
    group: its config group (``type``, ``every``, ``at_end`` and the type's keys).
    setup: the stack it evaluates.
  """

  keys: tuple[str, ...] = ()  # the type's own config keys (besides type/every/at_end)
  logs_results = True  # its results go into the rows (False: it only writes files)

  def __init__(self, name: str, group: Mapping[str, Any], setup: Setup,
               requested: bool = False):
    self.name = name
    self.every = int(group["every"])
    self.at_end = bool(group["at_end"])
    self.setup = setup
    self.requested = requested
    self.prefix = "eval/" if name == "elbo" else f"{name}/"

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


# ----------------------------------------------------------------------------- elbo


@functools.lru_cache(maxsize=64)
def make_elbo_fn(model: Any, conditional: bool) -> Callable:
  """``(params, seed, batch, index) -> per-example terms`` with the model's eval key.

  Returns ``recon``, ``kl``, ``elbo`` (B,), ``kl_per_dim`` (B, d) of one sample
  z ~ q(z|x) drawn with ``fold_in(stream_key(seed, EVAL_SAMPLE), index)``, and the
  posterior ``mean`` (B, d) for active units.
  """

  def fn(params, seed, batch, index):
    key = jax.random.fold_in(rng.stream_key(seed, rng.EVAL_SAMPLE), index)
    x = batch["image"]
    labels = batch["label"] if conditional else None
    outputs = model.apply({"params": params}, x, labels, rngs={"sample": key})
    return {**objectives.elbo_terms(x, outputs), "mean": outputs.mean}

  return fn


def summarize_elbo(chunks: Sequence[Mapping[str, Any]], num_dims: int) -> dict[str, Any]:
  """Mean ``elbo``, ``recon``, ``kl``, ``kl_per_dim``, ``bits_per_dim`` (−ELBO in bits per
  data dimension), ``active_units`` (Burda et al.) and ``num_examples`` over all examples
  of ``chunks`` (outputs of :func:`make_elbo_fn`)."""
  cat = {k: np.concatenate([np.asarray(c[k]) for c in chunks]) for k in chunks[0]}
  elbo = float(np.mean(cat["elbo"]))
  return {
      "elbo": elbo,
      "recon": float(np.mean(cat["recon"])),
      "kl": float(np.mean(cat["kl"])),
      "kl_per_dim": np.mean(cat["kl_per_dim"], axis=0).tolist(),
      "bits_per_dim": float(objectives.bits_per_dim(-elbo, num_dims)),
      "active_units": int(likelihood.active_units(cat["mean"])),
      "num_examples": int(cat["elbo"].shape[0]),
  }


def evaluate_elbo(stack: Stack, setup: Setup, fn: Callable) -> list[dict[str, Any]]:
  """Per model, :func:`summarize_elbo` over the held-out batches (``fn`` from
  :func:`make_elbo_fn`, built once so rounds reuse the compiled program)."""
  per_model: list[list[dict]] = [[] for _ in setup.seeds]
  for index, batch in enumerate(setup.held_out()):
    for m, out in enumerate(stack.map_models(fn, batch, np.uint32(index))):
      per_model[m].append(out)
  return [summarize_elbo(chunks, setup.num_dims) for chunks in per_model]


class ElboEvaluator(Evaluator):
  """Held-out ELBO terms of every model (one vmapped program per chunk of models)."""

  def __init__(self, name, group, setup, requested=False):
    super().__init__(name, group, setup, requested)
    self._fn = make_elbo_fn(setup.model, setup.conditional)

  def evaluate(self, stack, step):
    return evaluate_elbo(stack, self.setup, self._fn)


# ----------------------------------------------------------------------------- iwae


def _positive_int(group: Mapping[str, Any], key: str, where: str, minimum: int = 1) -> int:
  value = group[key]
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise EvaluationError(f"Config {where}.{key}={value!r} must be an int >= {minimum}.")
  return value


@functools.lru_cache(maxsize=32)
def make_iwae_fn(model: Any, num_samples: int, chunk: int) -> Callable:
  """``(params, seed, x, labels, key) -> per-example IWAE bound, ELBO, KL per dim, mean``."""

  def fn(params, seed, x, labels, key):
    del seed  # the importance samples' keys are the evaluator's, not the model's
    iwae_key, elbo_key = jax.random.split(key)

    def sample_outputs(k):
      return model.apply({"params": params}, x, labels, rngs={"sample": k})

    iwae = likelihood.iwae_log_likelihood(sample_outputs, x, iwae_key, num_samples, chunk)
    # KL to the prior of one sample path (per level: the top-down prior given the
    # sampled levels above), as the training objective sees it.
    terms = objectives.elbo_terms(x, sample_outputs(elbo_key))
    mean, _ = model.apply({"params": params}, x, labels, method="encode")
    return {"iwae": iwae, "elbo": terms["elbo"], "kl_per_dim": terms["kl_per_dim"],
            "mean": mean}

  return fn


class IwaeEvaluator(Evaluator):
  """Importance-weighted NLL of every model on the held-out batches (``likelihood.json``).

  :math:`\\log \\hat p_K(x) = \\operatorname{logsumexp}_k \\log w_k - \\log K` with K =
  ``num_samples`` (chunked over samples, so K = 5000 fits), the ELBO, their gap, bits/dim,
  active units, KL per dimension and the collapse report (per level for hierarchical
  models). Models run one at a time (K samples × batch dominate memory); the samples'
  keys come from the evaluator's ``seed``, the same for every model.
  """

  keys = ("num_samples", "chunk_size", "max_examples", "seed")
  RESULTS_FILE = "likelihood.json"

  def __init__(self, name, group, setup, requested=False):
    super().__init__(name, group, setup, requested)
    where = f"evals.{name}"
    self.num_samples = _positive_int(group, "num_samples", where)
    self.chunk_size = _positive_int(group, "chunk_size", where)
    self.max_examples = _positive_int(group, "max_examples", where, minimum=0)
    self.seed = _positive_int(group, "seed", where, minimum=0)
    self._fn = make_iwae_fn(setup.model, self.num_samples, self.chunk_size)

  def _batches(self) -> list[tuple[Array, Array | None]]:
    out, seen = [], 0
    for batch in self.setup.held_out():
      if self.max_examples and seen >= self.max_examples:
        break
      x = np.asarray(batch["image"])
      labels = np.asarray(batch["label"]) if self.setup.conditional else None
      if self.max_examples and seen + x.shape[0] > self.max_examples:
        keep = self.max_examples - seen
        x, labels = x[:keep], None if labels is None else labels[:keep]
      out.append((x, labels))
      seen += x.shape[0]
    return out

  def evaluate(self, stack, step):
    key = jax.random.key(self.seed)
    batches = self._batches()
    per_model: list[list[dict]] = [[] for _ in self.setup.seeds]
    start = time.perf_counter()
    for i, (x, labels) in enumerate(_progress(batches, f"IWAE K={self.num_samples}")):
      outs = stack.map_models(self._fn, x, labels, jax.random.fold_in(key, i), batched=False)
      for m, out in enumerate(outs):
        per_model[m].append(out)
    seconds = (time.perf_counter() - start) / max(len(per_model), 1)
    rows = []
    for m, chunks in enumerate(per_model):
      row = {"step": step, **self._summary(chunks), "seconds": seconds}
      # Per-example bounds (for paired comparisons of models on the same examples) go to
      # the file only, not into the logged rows.
      per_example = np.concatenate([np.asarray(c["iwae"]) for c in chunks]).tolist()
      _write_json(self.setup.model_dirs[m] / self.RESULTS_FILE,
                  {**row, "iwae_per_example": per_example})
      rows.append({k: v for k, v in row.items() if k != "step"})
    return rows

  def _summary(self, chunks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    cat = {k: np.concatenate([np.asarray(c[k]) for c in chunks]) for k in chunks[0]}
    setup = self.setup
    iwae_nll = -float(np.mean(cat["iwae"]))
    elbo_nll = -float(np.mean(cat["elbo"]))
    kl_per_dim = np.mean(cat["kl_per_dim"], axis=0)
    n = cat["iwae"].shape[0]
    return {
        "model": setup.config.model.name,
        "dataset": setup.config.data.name,
        "split": held_out_split(setup.dataset, setup.config.eval.split),
        "num_examples": int(n),
        "num_importance_samples": self.num_samples,
        "iwae_nll": iwae_nll,
        "iwae_nll_stderr": float(np.std(cat["iwae"], ddof=1) / math.sqrt(n)) if n > 1
                           else math.nan,
        "elbo_nll": elbo_nll,
        "gap": elbo_nll - iwae_nll,
        "iwae_bits_per_dim": float(objectives.bits_per_dim(iwae_nll, setup.num_dims)),
        "elbo_bits_per_dim": float(objectives.bits_per_dim(elbo_nll, setup.num_dims)),
        "active_units": int(likelihood.active_units(cat["mean"])),
        "latent_dim": int(cat["mean"].shape[1]),
        "kl": float(kl_per_dim.sum()),
        "kl_per_dim": kl_per_dim.tolist(),
        "collapse": likelihood.collapse_report(
            kl_per_dim, getattr(setup.model, "latent_groups", None)),
    }


def format_likelihood_table(results: Mapping[str, Any]) -> str:
  """A short markdown table of one model's :class:`IwaeEvaluator` results."""
  k = results["num_importance_samples"]
  data = (f"{results['model']} on {results['dataset']} ({results['split']}, "
          f"{results['num_examples']} examples)")
  rows = [
      ("model / data", data),
      (f"NLL, IWAE K={k} (nats)", f"{results['iwae_nll']:.2f} ± {results['iwae_nll_stderr']:.2f}"),
      ("NLL, −ELBO (nats)", f"{results['elbo_nll']:.2f}"),
      ("ELBO − IWAE gap (nats)", f"{results['gap']:.2f}"),
      ("bits/dim (IWAE)", f"{results['iwae_bits_per_dim']:.4f}"),
      ("KL (nats)", f"{results['kl']:.2f}"),
      ("active units", f"{results['active_units']} / {results['latent_dim']}"),
      ("collapsed dims (< 0.01 nats)", str(results["collapse"]["num_collapsed"])),
  ]
  if "kl_per_group" in results["collapse"]:
    levels = ", ".join(f"{v:.2f}" for v in results["collapse"]["kl_per_group"])
    rows.append(("KL per level, level 1 first (nats)", levels))
  lines = ["| quantity | value |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- disentanglement


class DisentanglementEvaluator(Evaluator):
  """The six disentanglement_lib metrics on each model's encoder mean.

  Writes ``disentanglement.json`` per model (step, preset and its description, seed,
  metrics, sample counts, scores, timings); a file with the same step and settings is
  reused rather than recomputed, so re-running a finished evaluation is free.
  """

  keys = ("preset", "seed", "metrics")
  RESULTS_FILE = "disentanglement.json"

  def __init__(self, name, group, setup, requested=False):
    super().__init__(name, group, setup, requested)
    from vaejax.evaluation import representation  # pylint: disable=g-import-not-at-top

    self._representation = representation
    where = f"evals.{name}"
    self.preset = group["preset"]
    if self.preset not in representation.METRIC_PRESETS:
      raise EvaluationError(f"Config {where}.preset={self.preset!r} is not a preset; known: "
                            f"{sorted(representation.METRIC_PRESETS)}.")
    self.seed = _positive_int(group, "seed", where, minimum=0)
    try:
      self.metrics = representation.check_metrics(tuple(group["metrics"]))
    except ValueError as error:
      raise EvaluationError(f"Config {where}.metrics: {error}") from None
    if self.enabled:
      if getattr(setup.dataset, "ground_truth", None) is None:
        raise EvaluationError(
            f"Evaluator evals.{name} (disentanglement) needs a dataset with ground-truth "
            f"factors (dsprites, dsprites_procedural); {setup.dataset.name!r} has none. Set "
            f"--config.evals.{name}.at_end=False.")
      if setup.conditional:
        raise EvaluationError(
            f"Evaluator evals.{name} (disentanglement) encodes observations without labels; "
            f"model {setup.config.model.name!r} is conditional.")

  def settings(self, step: int, m: int) -> dict[str, Any]:
    """What a cached ``disentanglement.json`` must match: the step, the metric settings and
    which model it scored (its point and seed; a workdir may be reused by another grid)."""
    return {"step": int(step), "preset": self.preset, "seed": self.seed,
            "metrics": list(self.metrics), "model_seed": int(self.setup.seeds[m]),
            "point": json.loads(json.dumps(dict(self.setup.points[m]), default=list))}

  def _cached(self, step: int) -> list[dict[str, Any] | None]:
    """Each model's up-to-date results file, or None; decided by process 0 and shared, so
    every process of a multi-process run takes the same (collective) path."""
    cached = []
    for m in range(len(self.setup.seeds)):
      path = self.setup.model_dirs[m] / self.RESULTS_FILE
      previous = json.loads(path.read_text()) if path.exists() else None
      settings = self.settings(step, m)
      fresh = previous is not None and all(previous.get(k) == v for k, v in settings.items())
      cached.append(previous if fresh else None)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      use = multihost_utils.broadcast_one_to_all(
          np.asarray([c is not None for c in cached], bool))
      cached = [c if bool(u) else None for c, u in zip(cached, np.asarray(use))]
    return cached

  def evaluate(self, stack, step):
    rep, setup = self._representation, self.setup
    rows = []
    cached = self._cached(step)
    for m in _progress(range(len(setup.seeds)), "disentanglement metrics"):
      path = setup.model_dirs[m] / self.RESULTS_FILE
      settings = self.settings(step, m)
      previous = cached[m]
      if previous is None:
        start, cpu_start = time.perf_counter(), time.process_time()
        timings: dict[str, dict[str, float]] = {}
        scores = rep.evaluate_disentanglement(
            setup.model, stack.params(m), setup.dataset.ground_truth, self.seed, self.preset,
            metrics=self.metrics, timings=timings)
        previous = {
            **settings,
            "preset_description": rep.describe_preset(self.preset),
            "sample_counts": {n: rep.METRIC_PRESETS[self.preset].get(n, "defaults")
                              for n in self.metrics},
            "scores": scores,
            "seconds": round(time.perf_counter() - start, 2),
            "cpu_seconds": round(time.process_time() - cpu_start, 2),
            "seconds_per_metric": timings,
            "data": setup.dataset.name,
        }
        _write_json(path, previous)
      logging.info("Disentanglement of model %d (%s): %s", m, path, ", ".join(
          f"{k}={v:.3f}" for k, v in sorted(previous["scores"].items())))
      rows.append(dict(previous["scores"]))
    return rows


# ----------------------------------------------------------------------------- figures


class FiguresEvaluator(Evaluator):
  """Each model's figures in ``figures/`` of its directory (:func:`vaejax.plotting.write_figures`).

  Inputs are the first held-out images; traversals are ranked by the held-out KL per
  dimension; prior samples use the model's :data:`vaejax.rng.FIGURES` stream.
  """

  keys = ("num_images", "traversal_steps", "traversal_range", "max_traversal_dims",
          "gif_frames")
  logs_results = False
  FIGURES_DIR = "figures"

  def __init__(self, name, group, setup, requested=False):
    super().__init__(name, group, setup, requested)
    where = f"evals.{name}"
    self.num_images = _positive_int(group, "num_images", where)
    self.traversal_steps = _positive_int(group, "traversal_steps", where, minimum=2)
    self.max_traversal_dims = _positive_int(group, "max_traversal_dims", where)
    value = group["traversal_range"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
      raise EvaluationError(f"Config {where}.traversal_range={value!r} must be a number > 0.")
    self.traversal_range = float(value)
    self.gif_frames = _positive_int(group, "gif_frames", where, minimum=0)
    if self.gif_frames == 1:
      raise EvaluationError(f"Config {where}.gif_frames=1 must be 0 (no GIFs) or >= 2.")
    self._elbo_fn = make_elbo_fn(setup.model, setup.conditional)

  def evaluate(self, stack, step):
    from vaejax import plotting  # pylint: disable=g-import-not-at-top

    setup = self.setup
    batches = setup.held_out()
    kls = [row["kl_per_dim"] for row in evaluate_elbo(stack, setup, self._elbo_fn)]
    images = np.concatenate([np.asarray(b["image"]) for b in batches])[
        : max(self.num_images, 2)]
    labels = None
    if setup.conditional:
      labels = np.concatenate([np.asarray(b["label"]) for b in batches])[: images.shape[0]]
    all_labels = None
    if setup.dataset.num_classes:
      all_labels = np.concatenate([np.asarray(b["label"]) for b in batches])
      all_images = np.concatenate([np.asarray(b["image"]) for b in batches])
    for m in _progress(range(len(setup.seeds)), "figures"):
      out = setup.model_dirs[m] / self.FIGURES_DIR
      params = stack.params(m)
      if not _is_writer():
        continue
      plotting.write_figures(
          setup.model, params, images, out, rng.stream_key(setup.seeds[m], rng.FIGURES),
          labels=labels, num_classes=setup.dataset.num_classes if setup.conditional else None,
          kl_per_dim=kls[m], traversal_steps=self.traversal_steps,
          traversal_range=self.traversal_range, max_traversal_dims=self.max_traversal_dims)
      if self.gif_frames:
        from vaejax import animation  # pylint: disable=g-import-not-at-top
        animation.write_traversal_gifs(
            setup.model, params, images[:1], out, kls[m], self.gif_frames,
            label=None if labels is None else int(labels[0]),
            max_dims=self.max_traversal_dims)
      if all_labels is not None and len(np.unique(all_labels)) >= 2:
        self._arithmetic_figures(params, all_images, all_labels, out)
      if hasattr(setup.model, "sample_prior"):
        self._hierarchical_figures(m, params, out)
      logging.info("Figures of %s", out)
    return [{} for _ in setup.seeds]

  def _hierarchical_figures(self, m: int, params, out: Path) -> None:
    """Ancestral samples at several temperatures; the KL of every level over training."""
    from vaejax import plotting  # pylint: disable=g-import-not-at-top

    key = jax.random.fold_in(rng.stream_key(self.setup.seeds[m], rng.FIGURES), 1)
    samples = plotting.temperature_samples(self.setup.model, params, key)
    plotting.save_figure(plotting.plot_temperature_samples(samples, plotting.TEMPERATURES),
                         out / "samples_temperature.png")
    rows = [r for r in (self.setup.history(m) if self.setup.history else ())
            if "kl_per_level" in r]
    if rows:
      plotting.save_figure(plotting.plot_kl_per_level(
          [r["step"] for r in rows], [r["kl_per_level"] for r in rows]),
          out / "kl_per_level.png")

  def _arithmetic_figures(self, params, images, labels, out: Path) -> None:
    """Class arithmetic (unconditional: the mean code of one class minus another's added to
    other examples) or style arithmetic (conditional), from the held-out examples."""
    from vaejax import plotting  # pylint: disable=g-import-not-at-top

    if self.setup.conditional:
      plotting.write_style_arithmetic_figure(self.setup.model, params, images, labels,
                                             out / "style_arithmetic.png")
    else:
      classes = np.unique(labels)
      plotting.write_class_arithmetic_figure(self.setup.model, params, images, labels,
                                             out / "class_arithmetic.png",
                                             int(classes[0]), int(classes[1]))


# ----------------------------------------------------------------------------- unsupervised


def _ground_truth(setup: Setup, name: str, kind: str) -> Any:
  ground_truth = getattr(setup.dataset, "ground_truth", None)
  if ground_truth is None:
    raise EvaluationError(
        f"Evaluator evals.{name} ({kind}) draws observations from a dataset with ground-truth "
        f"factors (dsprites, dsprites_procedural); {setup.dataset.name!r} has none. Set "
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
    return model.apply({"params": params}, x, method="encode")

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
    x = observations[start:start + chunk]
    k = x.shape[0]
    if k < chunk:
      x = np.concatenate([x, np.repeat(x[-1:], chunk - k, axis=0)])
    outs = stack.map_models(fn, np.asarray(x, np.float32))
    means.append(np.stack([o[0][:k] for o in outs]))
    log_vars.append(np.stack([o[1][:k] for o in outs]))
  return np.concatenate(means, axis=1), np.concatenate(log_vars, axis=1)


class UnsupervisedEvaluator(Evaluator):
  """disentanglement_lib's unsupervised scores on each model's encoder mean.

  ``num_points`` observations (dlib: 10,000) drawn uniformly over the factor grid with
  ``seed``, the same for every model and encoded by all models at once; then
  Σ = cov(codes): Gaussian total correlation ½(Σᵢ log Σᵢᵢ − log det Σ), Gaussian
  Wasserstein correlation (and divided by tr Σ), and the mean pairwise discrete mutual
  information of the codes (20 bins). See
  :mod:`vaejax.evaluation.disentanglement.unsupervised`.
  """

  keys = ("num_points", "seed")

  def __init__(self, name, group, setup, requested=False):
    super().__init__(name, group, setup, requested)
    self.num_points = _positive_int(group, "num_points", f"evals.{name}", minimum=2)
    self.seed = _positive_int(group, "seed", f"evals.{name}", minimum=0)
    self._ground_truth = _ground_truth(setup, name, "unsupervised") if self.enabled else None
    self._fn = make_posterior_fn(setup.model)

  def evaluate(self, stack, step):
    from vaejax.evaluation.disentanglement import unsupervised  # pylint: disable=g-import-not-at-top

    ground_truth = self._ground_truth or _ground_truth(self.setup, self.name, "unsupervised")
    _, observations = ground_truth.sample(self.num_points, np.random.default_rng(self.seed))
    means, _ = encode_all(stack, self._fn, observations)
    return [unsupervised.unsupervised_scores(codes) for codes in means]


class UdrEvaluator(Evaluator):
  """UDR (Duan et al. 2020; disentanglement_lib's protocol), a sweep-level score.

  Every model encodes the same ``num_points`` observations (dlib: 1,000); per model the
  KL per latent ``mean ½(μ² + σ² − log σ² − 1)`` marks latents with KL ≤ 0.01 inactive;
  codes are standardised; each ordered pair of models *of the same setting* (points equal
  but for ``seed``) gets a similarity matrix (|Lasso(α = 0.1)| coefficients, or |Spearman|
  correlations) and a pair score; a model's UDR is the median of its pair scores (NaN for
  a model without another seed). See :mod:`vaejax.evaluation.disentanglement.udr_ranking`.
  """

  keys = ("num_points", "method", "seed")

  def __init__(self, name, group, setup, requested=False):
    super().__init__(name, group, setup, requested)
    from vaejax.evaluation.disentanglement import udr_ranking  # pylint: disable=g-import-not-at-top

    self._udr = udr_ranking
    where = f"evals.{name}"
    self.num_points = _positive_int(group, "num_points", where, minimum=2)
    self.seed = _positive_int(group, "seed", where, minimum=0)
    self.method = group["method"]
    if self.method not in udr_ranking.METHODS:
      raise EvaluationError(f"Config {where}.method={self.method!r} is not a UDR method; "
                            f"known: {', '.join(udr_ranking.METHODS)}.")
    self._ground_truth = _ground_truth(setup, name, "udr") if self.enabled else None
    self._fn = make_posterior_fn(setup.model)

  def evaluate(self, stack, step):
    ground_truth = self._ground_truth or _ground_truth(self.setup, self.name, "udr")
    _, observations = ground_truth.sample(self.num_points, np.random.default_rng(self.seed))
    means, log_vars = encode_all(stack, self._fn, observations)
    kl = np.mean(0.5 * (means**2 + np.exp(log_vars) - log_vars - 1.0), axis=1)
    settings = [repr(sorted((k, v) for k, v in p.items() if k != "seed"))
                for p in self.setup.points]
    result = self._udr.udr(means, kl, groups=settings, method=self.method)
    return [{"udr": float(score), "active_dims": int(active.sum())}
            for score, active in zip(result["model_scores"], result["active"])]


# ----------------------------------------------------------------------------- arithmetic


@functools.lru_cache(maxsize=32)
def _mean_codec(model: Any) -> tuple[Callable, Callable]:
  """Jitted ``(params, x) -> encoder mean`` and ``(params, z) -> decoder mean``."""
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode")[0])
  decode = jax.jit(lambda p, z: distributions.likelihood_mean(
      model.apply({"params": p}, z, method="decode")))
  return encode, decode


class ArithmeticEvaluator(Evaluator):
  """Latent arithmetic on dSprites, measured (``arithmetic.json`` per model).

  Attribute vectors v = mean encoding of images with factor value a − that with value b
  (other factors random); z' = μ(x) + α v decoded; per factor the fraction of queries
  whose decoded sprite moved as the factor change means (position: centroid shift in
  pixels; scale: area ratio; shape: the nearest rendered template has the target shape).
  See :mod:`vaejax.evaluation.arithmetic`.
  """

  keys = ("num_examples", "num_queries", "alpha", "seed")
  RESULTS_FILE = "arithmetic.json"

  def __init__(self, name, group, setup, requested=False):
    super().__init__(name, group, setup, requested)
    where = f"evals.{name}"
    self.num_examples = _positive_int(group, "num_examples", where)
    self.num_queries = _positive_int(group, "num_queries", where)
    self.seed = _positive_int(group, "seed", where, minimum=0)
    alpha = group["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
      raise EvaluationError(f"Config {where}.alpha={alpha!r} must be a finite number.")
    self.alpha = float(alpha)
    if self.enabled:
      ground_truth = _ground_truth(setup, name, "arithmetic")
      if not {"shape", "scale", "pos_x", "pos_y"} <= set(ground_truth.factor_names):
        raise EvaluationError(f"Evaluator evals.{name} (arithmetic) needs dSprites' factors; "
                              f"{setup.dataset.name!r} has {ground_truth.factor_names}.")
    self._encode, self._decode = _mean_codec(setup.model)

  def evaluate(self, stack, step):
    from vaejax.evaluation import arithmetic  # pylint: disable=g-import-not-at-top

    setup = self.setup
    rows = []
    for m in _progress(range(len(setup.seeds)), "latent arithmetic"):
      params = stack.params(m)
      table = arithmetic.arithmetic_accuracy(
          lambda x, p=params: np.asarray(self._encode(p, x)),
          lambda z, p=params: np.asarray(self._decode(p, z)),
          setup.dataset.ground_truth, alpha=self.alpha, num_examples=self.num_examples,
          num_queries=self.num_queries, seed=self.seed)
      _write_json(setup.model_dirs[m] / self.RESULTS_FILE, {"step": step, "table": table})
      rows.append({f"{factor}/{k}": v for factor, row in table.items()
                   for k, v in row.items() if k in ("accuracy", "ratio")})
    return rows


# ----------------------------------------------------------------------------- registry


EVALUATORS: dict[str, type[Evaluator]] = {
    "elbo": ElboEvaluator,
    "iwae": IwaeEvaluator,
    "disentanglement": DisentanglementEvaluator,
    "figures": FiguresEvaluator,
    "unsupervised": UnsupervisedEvaluator,
    "udr": UdrEvaluator,
    "arithmetic": ArithmeticEvaluator,
}


def register(kind: str) -> Callable[[type[Evaluator]], type[Evaluator]]:
  """Class decorator adding an evaluator type (its config group needs a schema entry)."""
  def decorator(cls: type[Evaluator]) -> type[Evaluator]:
    if kind in EVALUATORS:
      raise ValueError(f"An evaluator type named {kind!r} is already registered.")
    EVALUATORS[kind] = cls
    return cls
  return decorator


def build(evals: Mapping[str, Mapping[str, Any]], setup: Setup,
          names: Sequence[str] | None = None) -> list[Evaluator]:
  """One evaluator per entry of ``evals`` (or of ``names``, in that order).

  Every evaluator checks its keys now, so a bad value fails before anything compiles.
  """
  explicit = names is not None
  names = list(evals) if names is None else list(names)
  out = []
  for name in names:
    if name not in evals:
      raise EvaluationError(f"No evaluator {name!r} in config.evals; it has: "
                            f"{', '.join(evals)}.")
    group = evals[name]
    kind = group["type"]
    if kind not in EVALUATORS:
      raise EvaluationError(f"Config evals.{name}.type={kind!r} is not an evaluator type; "
                            f"known: {', '.join(EVALUATORS)}.")
    out.append(EVALUATORS[kind](name, group, setup, requested=explicit))
  return out
