r"""Sweeps: M models that differ in loss settings and seeds, trained as one program.

A sweep is a list of :class:`ModelSpec` (a seed and a :class:`~vaejax.objectives.LossSettings`)
from a grid: the Cartesian product of setting values, rows of settings varied together
(``paired``), and seeds. Every model shares the architecture, optimizer and batch size;
its train state (params, optimizer state, key, counters) is stacked on a leading model
axis, and model *i* is exactly the run ``experiments.train`` would make with seed
``s_i`` and settings ``θ_i``: the same initialisation, the same data order
(``Dataset.get_batch(split, t, B, s_i)`` or the in-jit sampler keyed by (s_i, t)) and the
same sample keys.

Execution (``sweep.strategy``) splits the M models into *chunks*, each one compiled
program that advances its models one step:

* ``"vmap"``: one chunk of M, the per-model step ``jax.vmap``-ed over the model axis;
* ``"sequential"``: M chunks of one, a Python loop over models dispatching the same
  jitted step; JAX's asynchronous dispatch overlaps consecutive models;
* ``"chunked"``: chunks of ``chunk_size`` models (vmap inside, loop outside), e.g. to fit
  memory;
* ``"auto"``: ``"sequential"`` on CPU, where vmap is slower than a loop (measured with
  ``experiments/benchmarks/sweep_throughput.py`` on 2 cores, M = 16–64: vmap ran at
  0.51–0.55× the throughput of one-after-another runs for the MLP VAE, 0.75–0.79× for the
  conv VAE; the loop at 1.00–1.13×), ``"vmap"`` on accelerators (one program fills the
  chip), shrunk to the largest chunk that fits in memory, and ``"vmap"`` whenever a mesh
  spreads models over devices.

Divergence: a model whose loss or gradient stays non-finite for more than
``optimizer.max_consecutive_skips`` consecutive steps is *masked*: from then on its state
is frozen (``SweepState.active`` False, ``masked_at`` its step) and its log rows say so;
the others continue. The sweep stops only when every model is masked.

:func:`train_sweep` is the entry point of ``python -m experiments.sweep``: it logs one
``metrics.jsonl`` row per model per logged step (carrying the model's seed and
settings), checkpoints with orbax and resumes exactly, evaluates every model and writes
the report of :mod:`vaejax.sweep_plots`.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np
from absl import logging

import vaejax
from vaejax import checkpointing, config_utils, logging_utils, objectives, sharding, train
from vaejax import data as data_lib
from vaejax import models as models_lib
from vaejax.data import base as data_base

if TYPE_CHECKING:
  import ml_collections

Array = jax.Array
Batch = dict[str, Any]

# The execution engine lives in vaejax.sharding; these names are part of this API too.
STRATEGIES = sharding.STRATEGIES
SweepState = sharding.SweepState
SweepExecutor = sharding.SweepExecutor
Chunk = sharding.Chunk
init_state = sharding.init_state
make_masked_step = sharding.make_masked_step
resolve_chunk_size = sharding.resolve_chunk_size
plan_chunks = sharding.plan_chunks
SWEEP_KEYS = ("grid", "paired", "seeds", "strategy", "chunk_size", "model_devices",
              "data_devices", "memory_budget_gb")
# Keys that change where models run, not what they compute: a resumed sweep may change
# them (numbers then match the uninterrupted run up to float rounding, not bit for bit).
PLACEMENT_KEYS = tuple(f"sweep.{k}" for k in (
    "strategy", "chunk_size", "model_devices", "data_devices", "memory_budget_gb"))
RESULTS_FILE = "results.jsonl"
REPORT_DIR = "report"


# ----------------------------------------------------------------------------- the grid


class ModelSpec(NamedTuple):
  """One model of a sweep: its seed and its loss settings (Python numbers)."""

  seed: int
  settings: objectives.LossSettings

  def as_dict(self) -> dict[str, Any]:
    return {"seed": self.seed, **self.settings._asdict()}

  def label(self, fields: Sequence[str]) -> str:
    """E.g. ``"beta=4 seed=1"`` for the given (varying) fields."""
    row = self.as_dict()
    return " ".join(f"{f}={row[f]:g}" for f in fields)


def _values(name: str, values: Any, *, integer: bool = False) -> tuple:
  if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
    raise ValueError(  # noqa: TRY004  (a bad config value: ValueError like the others)
        f"Sweep values for {name!r} must be a non-empty list or tuple of numbers; got "
        f"{values!r}.")
  if not values:
    raise ValueError(f"Sweep values for {name!r} are empty; give at least one value.")
  kind = numbers.Integral if integer else numbers.Real
  for v in values:
    if isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v):
      what = "integers" if integer else "finite numbers"
      raise ValueError(f"Sweep values for {name!r} must be {what}; got {values!r}.")
  return tuple(values)


def _check_field(name: str) -> None:
  if name not in objectives.LossSettings._fields:
    raise KeyError(
        f"Unknown sweep setting {name!r}; a sweep varies LossSettings fields: "
        f"{', '.join(objectives.LossSettings._fields)} (seeds go in 'seeds').")


def make_grid(
    grid: Mapping[str, Sequence[float]] | None = None,
    *,
    paired: Mapping[str, Sequence[float]] | None = None,
    seeds: Sequence[int] = (0,),
    base: objectives.LossSettings = objectives.DEFAULT_SETTINGS,
) -> list[ModelSpec]:
  """The models of a sweep: grid product × paired rows × seeds, over ``base`` settings.

  Args:
    grid: setting name → values; every combination is a model (first key outermost).
    paired: setting name → values of equal length, varied together (row *k* sets every
      name to its *k*-th value), e.g. ``capacity_max`` with ``capacity_steps``.
    seeds: one model per seed for every setting (innermost, so seeds of one setting
      are adjacent).
    base: the settings the grid overrides.

  Raises:
    KeyError: a name that is not a LossSettings field.
    ValueError: an empty grid or value list, non-numbers, paired lists of different
      lengths, a name in both ``grid`` and ``paired``, bad or duplicate seeds, or a
      setting out of range (negative β, ...).
  """
  grid = dict(grid or {})
  paired = dict(paired or {})
  for name in (*grid, *paired):
    _check_field(name)
  both = sorted(set(grid) & set(paired))
  if both:
    raise ValueError(f"Sweep setting(s) {both} appear in both grid and paired; use one.")
  grid_values = {k: _values(k, v) for k, v in grid.items()}
  paired_values = {k: _values(k, v) for k, v in paired.items()}
  lengths = {k: len(v) for k, v in paired_values.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(
        f"Paired sweep settings must have the same number of values; got lengths {lengths}.")
  seeds = _values("seeds", seeds, integer=True)
  if any(not 0 <= s < data_base.MAX_SEED for s in seeds) or len(set(seeds)) != len(seeds):
    raise ValueError(f"Sweep seeds must be distinct integers in [0, 2**32); got {seeds!r}.")
  rows = [dict(zip(paired_values, r)) for r in zip(*paired_values.values())] or [{}]
  specs = []
  for combo in itertools.product(*grid_values.values()):
    for row in rows:
      settings = base._replace(**dict(zip(grid_values, combo)), **row)
      try:
        objectives.validate_settings(settings)
      except ValueError as e:
        raise ValueError(f"Sweep point {dict(zip(grid_values, combo), **row)}: {e}") from e
      specs.extend(ModelSpec(int(s), settings) for s in seeds)
  return specs


def grid_from_config(config: ml_collections.ConfigDict) -> list[ModelSpec]:
  """:func:`make_grid` from ``config.sweep`` over the settings of ``config.loss``."""
  if "sweep" not in config:
    raise KeyError("The config has no 'sweep' group (grid, paired, seeds, strategy, ...).")
  sweep = config.sweep
  unknown = sorted(set(sweep.keys()) - set(SWEEP_KEYS))
  if unknown:
    raise config_utils.UnknownKeyError(
        f"Unknown sweep config key(s) {unknown}; the keys of 'sweep' are: "
        f"{', '.join(SWEEP_KEYS)}.")
  base, _ = train.loss_settings_from_config(config)
  grid = _as_mapping(sweep.get("grid"), "sweep.grid")
  paired = _as_mapping(sweep.get("paired"), "sweep.paired")
  if not grid and not paired and len(tuple(sweep.get("seeds") or ())) < 2:
    raise ValueError(
        "The sweep is empty: sweep.grid and sweep.paired set no values and there are fewer "
        "than 2 seeds. Set e.g. --config.sweep.grid.beta='(1, 4)'.")
  return make_grid(grid, paired=paired, seeds=tuple(sweep.get("seeds") or (config.seed,)),
                   base=base)


def _as_mapping(group: Any, name: str) -> dict[str, Any]:
  if group is None:
    return {}
  if hasattr(group, "to_dict"):
    group = group.to_dict()
  if not isinstance(group, Mapping):
    raise ValueError(  # noqa: TRY004  (a bad config value)
        f"{name} must be a group of setting → values; got {group!r}.")
  return dict(group)


def varying_fields(specs: Sequence[ModelSpec]) -> tuple[str, ...]:
  """The settings that differ between models (in LossSettings order)."""
  fields = objectives.LossSettings._fields
  return tuple(f for f in fields if len({getattr(s.settings, f) for s in specs}) > 1)


def settings_arrays(specs: Sequence[ModelSpec]) -> objectives.LossSettings:
  """Every field as an (M,) float32 numpy array (constant fields repeated)."""
  objectives.stack_settings([s.settings for s in specs])  # validates each
  return objectives.LossSettings(*(
      np.asarray([float(getattr(s.settings, f)) for s in specs], np.float32)
      for f in objectives.LossSettings._fields))


# ----------------------------------------------------------------------------- logging


class SweepLogger:
  """``metrics.jsonl`` (one row per model per logged step) and per-model TensorBoard runs.

  Rows past ``start_step`` (left by a killed run) are dropped on resume and TensorBoard
  purges them too, as :class:`vaejax.logging_utils.MetricLogger` does for one model.
  TensorBoard runs are ``tensorboard/m000`` ... so its UI overlays the models' curves.
  Only process 0 writes.
  """

  def __init__(self, workdir: Path, start_step: int, total_steps: int, num_models: int,
               progress: bool | None = None):
    import tqdm  # pylint: disable=g-import-not-at-top

    self.enabled = jax.process_index() == 0
    self.workdir = workdir
    self.path = workdir / logging_utils.METRICS_FILE
    self._start = start_step
    self._writers: dict[int, Any] = {}
    self._file = None
    if self.enabled:
      logging_utils.truncate_jsonl(self.path, start_step)
      self._file = open(self.path, "a")  # noqa: SIM115  (closed by close())
    if progress is None:
      progress = self.enabled and os.isatty(2)
    self._bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not progress,
                          unit="step", dynamic_ncols=True, smoothing=0.1)
    self._last = (time.perf_counter(), start_step)
    self.num_models = num_models

  def _writer(self, model: int):
    if model not in self._writers:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writers[model] = SummaryWriter(
          str(self.workdir / logging_utils.TENSORBOARD_DIR / f"m{model:03d}"),
          purge_step=self._start + 1 if self._start else None)
    return self._writers[model]

  def advance(self, steps: int = 1) -> None:
    self._bar.update(steps)

  def write(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
    now = time.perf_counter()
    rate = (step - self._last[1]) / max(now - self._last[0], 1e-9)
    self._last = (now, step)
    if not self.enabled:
      return
    for row in rows:
      row = {"step": int(step), **logging_utils.to_python(row), "steps_per_sec": rate}
      self._file.write(json.dumps(row) + "\n")
      writer = self._writer(row["model"])
      for key, value in row.items():
        if key in ("step", "model", "seed") or key in objectives.LossSettings._fields:
          continue
        if isinstance(value, list):
          for i, v in enumerate(value):
            if isinstance(v, (int, float)):
              writer.add_scalar(f"{key}/{i:02d}", v, step)
        elif isinstance(value, (int, float)):
          writer.add_scalar(key, value, step)
    self._file.flush()
    losses = [r["loss"] for r in rows if r.get("active", True)]
    summary = (f"{len(losses)}/{len(rows)} active, loss {np.nanmin(losses):.4g}..."
               f"{np.nanmax(losses):.4g}" if losses else "all models masked")
    if self._bar.disable:
      logging.info("step %d: %s (%.2f steps/s)", step, summary, rate)
    else:
      self._bar.set_postfix_str(summary, refresh=True)

  def close(self) -> None:
    self._bar.close()
    if self._file is not None:
      self._file.close()
    for writer in self._writers.values():
      writer.close()


# ----------------------------------------------------------------------------- the run


class SweepResult(NamedTuple):
  """What :func:`train_sweep` returns.

  Attributes:
    state: the final stacked state.
    specs: the models.
    rows: one dict per model: seed, settings, ``active``, ``masked_at``, final metrics.
    report: the report files written (empty without ``write_report``).
  """

  state: SweepState
  specs: list[ModelSpec]
  rows: list[dict[str, Any]]
  report: list[Path]


def sweep_config(grid: Mapping[str, Sequence[float]] | None = None, *,
                 paired: Mapping[str, Sequence[float]] | None = None,
                 seeds: Sequence[int] = (0, 1, 2)) -> ml_collections.ConfigDict:
  """A ``config.sweep`` group with the defaults of every key (see :data:`SWEEP_KEYS`)."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  return ml_collections.ConfigDict({
      "grid": ml_collections.ConfigDict({k: tuple(v) for k, v in (grid or {}).items()}),
      "paired": ml_collections.ConfigDict({k: tuple(v) for k, v in (paired or {}).items()}),
      "seeds": tuple(seeds),
      "strategy": "auto",  # "auto" | "vmap" | "sequential" | "chunked"
      "chunk_size": 0,  # models per program for "chunked"
      "model_devices": 1,  # mesh: devices along the model axis (0 = all)
      "data_devices": 1,  # mesh: devices along the data axis (0 = all)
      "memory_budget_gb": 0.0,  # 0 = the device's free memory (CPU: 80% of available RAM)
  })


def _eval_split(dataset: Any, requested: str) -> str:
  splits = tuple(dataset.splits)
  if requested:
    if requested not in splits:
      raise config_utils.ConfigError(
          f"Config eval.split={requested!r} is not a split of {dataset.name!r}; its splits "
          f"are {splits}.")
    return requested
  for candidate in ("test", "validation", "train"):
    if candidate in splits:
      return candidate
  return splits[0]


def eval_batches(dataset: Any, config: ml_collections.ConfigDict) -> list[Batch]:
  """The fixed evaluation batches every model of the sweep is evaluated on.

  ``eval.num_batches`` batches of ``eval.batch_size`` from the eval split (0 = the whole
  finite split), drawn with ``config.seed``; for in-jit samplers from a key stream apart
  from every model's training stream.
  """
  split = _eval_split(dataset, config.eval.split)
  size, num = config.eval.batch_size, config.eval.num_batches
  sampler = dataset.jax_sampler(split)
  if num == 0:
    total = dataset.num_examples(split)
    if total is None:
      raise config_utils.ConfigError(
          f"eval.num_batches=0 (the whole split) needs a finite split; {dataset.name!r} is "
          "unbounded. Set eval.num_batches > 0.")
    num = max(total // size, 1)
  if sampler is not None:
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), sharding.EVAL_STREAM)
    sample = jax.jit(lambda i: sampler(jax.random.fold_in(key, i), size))
    return [jax.device_get(sample(i)) for i in range(num)]
  return [dataset.get_batch(split, i, size, config.seed) for i in range(num)]


def _check_sweep_group(config: ml_collections.ConfigDict) -> None:
  sweep = config.sweep
  for name in ("chunk_size", "model_devices", "data_devices"):
    value = sweep.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise config_utils.ConfigError(f"Config sweep.{name}={value!r} must be an int >= 0.")
  budget = sweep.get("memory_budget_gb", 0.0)
  if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (
      math.isfinite(budget) and budget >= 0):
    raise config_utils.ConfigError(
        f"Config sweep.memory_budget_gb={budget!r} must be a number >= 0 (0 = the device's).")
  if sweep.get("strategy", "auto") not in STRATEGIES:
    raise config_utils.ConfigError(
        f"Unknown sweep.strategy {sweep.strategy!r}; expected one of {STRATEGIES}.")


class _Parts(NamedTuple):
  dataset: Any
  model: Any
  optimizer: Any
  specs: list[ModelSpec]
  free_bits_groups: tuple[int, ...] | None
  conditional: bool
  mesh: jax.sharding.Mesh | None
  chunk_size: int
  budget: int


def _build(config: ml_collections.ConfigDict, dataset: Any) -> _Parts:
  """Validates everything and builds the pieces; nothing is compiled yet."""
  config_utils.validate_config(
      config, model_names=models_lib.MODELS,
      dataset_names=None if dataset is not None else data_lib.DATASETS, extra_keys=("sweep",))
  specs = grid_from_config(config)
  _check_sweep_group(config)
  _, groups = train.loss_settings_from_config(config)
  dataset = dataset if dataset is not None else data_lib.load(config.data)
  model = models_lib.create_model(config.model, tuple(dataset.image_shape), dataset.num_classes)
  conditional = bool(getattr(model, "conditional", False))
  latent_dim = getattr(model, "latent_dim", None)
  if groups is not None and latent_dim is not None and len(groups) != latent_dim:
    raise config_utils.ConfigError(
        f"Config loss.free_bits_groups has {len(groups)} entries; it needs one group id per "
        f"latent dimension ({latent_dim}).")
  if conditional and dataset.num_classes is None:
    raise config_utils.ConfigError(
        f"Model {config.model.name!r} is conditional but dataset {dataset.name!r} has no "
        "labels.")
  sweep = config.sweep
  mesh = None
  if (sweep.model_devices, sweep.data_devices) != (1, 1):
    mesh = sharding.make_mesh(sweep.model_devices, sweep.data_devices)
  model_devices = sharding.axis_size(mesh, sharding.MODEL_AXIS)
  chunk_size = resolve_chunk_size(sweep.strategy, len(specs), chunk_size=sweep.chunk_size,
                                  model_devices=model_devices)
  sharding.check_divisible(mesh, models_per_program=chunk_size, batch_size=config.batch_size)
  if len(specs) % chunk_size and mesh is not None:
    sharding.check_divisible(mesh, models_per_program=len(specs) % chunk_size,
                             batch_size=config.batch_size)
  optimizer = train.optimizer_from_config(config)
  budget = sharding.memory_budget(budget_bytes=sweep.memory_budget_gb * 2**30)
  # The early check, before any allocation: the resident states alone must fit.
  abstract = jax.eval_shape(lambda: train.create_train_state(
      model, optimizer, 0, tuple(dataset.image_shape), conditional=conditional))
  sharding.check_memory(num_models=len(specs), bytes_per_model=sharding.tree_bytes(abstract),
                        parallel_bytes=0, budget=budget, model_devices=model_devices)
  return _Parts(dataset, model, optimizer, specs, groups, conditional, mesh, chunk_size, budget)


def _make_executor(config, parts: _Parts, chunk_size: int) -> SweepExecutor:
  sampler = parts.dataset.jax_sampler("train")
  batch_fn = None
  if sampler is not None:
    def batch_fn(seed, step):
      return train.make_batch_fn(parts.dataset, config.batch_size, seed)(step)
  step_fn = train.make_train_step(
      parts.model, parts.optimizer, free_bits_groups=parts.free_bits_groups,
      total_correlation=any(float(s.settings.tc_beta) != 1.0 for s in parts.specs),
      conditional=parts.conditional)
  return SweepExecutor(step_fn, [s.seed for s in parts.specs], settings_arrays(parts.specs),
                       chunk_size=chunk_size,
                       max_consecutive_skips=config.optimizer.max_consecutive_skips,
                       batch_fn=batch_fn, mesh=parts.mesh)


def _fit_executor(config, parts: _Parts, executor: SweepExecutor,
                  get_batch: Callable[[int], Batch] | None) -> SweepExecutor:
  """Checks the compiled programs' memory; "auto" halves the chunk until it fits."""
  state = executor.gather()
  state_bytes = sharding.tree_bytes(state) // len(parts.specs)
  model_devices = sharding.axis_size(parts.mesh, sharding.MODEL_AXIS)
  while True:
    batches = None if get_batch is None else executor.host_batches(get_batch)
    temp = executor.program_temp_bytes(batches)
    size = executor.chunks[0].stop - executor.chunks[0].start
    try:
      sharding.check_memory(num_models=len(parts.specs), bytes_per_model=state_bytes,
                            parallel_bytes=temp, budget=parts.budget,
                            model_devices=model_devices,
                            what=f" with {size} models per program")
      return executor
    except sharding.SweepMemoryError:
      if config.sweep.strategy != "auto" or size == 1 or parts.mesh is not None:
        raise
      logging.info("Sweep: %d models per program do not fit; trying %d.", size, size // 2)
      executor = _make_executor(config, parts, max(size // 2, 1))
      executor.load(state)


def train_sweep(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    dataset: Any = None,
    progress: bool | None = None,
    write_report: bool = True,
) -> SweepResult:
  """Trains (or resumes) every model of ``config.sweep`` in ``workdir``.

  Writes ``metrics.jsonl`` (one row per model per logged step, with ``model``, ``seed``,
  the settings, ``active`` and ``masked_at``), TensorBoard runs, ``config.json``, orbax
  checkpoints of the stacked state, and at the end ``results.jsonl`` (per model: settings,
  final train metrics, ``eval/*``) and the report (tables and plots) in ``report/``.
  Re-running the same command resumes exactly from the newest checkpoint.

  Args:
    config: a training config (see ``experiments/configs/``) with a ``sweep`` group
      (:func:`sweep_config`).
    workdir: the sweep directory.
    dataset: a dataset object to use instead of ``vaejax.data.load(config.data)``.
    progress: show a progress bar (None: when stderr is a terminal).
    write_report: write ``report/`` (tables and figures) at the end.

  Raises:
    ValueError / KeyError: a bad config or grid, a mesh that does not divide the models or
      the batch, more models than fit in memory (with how many fit).
    vaejax.train.NonFiniteError: every model diverged.
  """
  workdir = Path(workdir).resolve()
  config_dict = config_utils.to_dict(config)
  parts = _build(config, dataset)
  specs = parts.specs
  ckpt_dir = workdir / checkpointing.CHECKPOINT_DIR
  latest = checkpointing.latest_resumable_step(
      ckpt_dir, config_dict, ignore=config_utils.RESUMABLE_KEYS + PLACEMENT_KEYS)

  state = init_state(parts.model, parts.optimizer, [s.seed for s in specs],
                     tuple(parts.dataset.image_shape), conditional=parts.conditional)
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir / train.CONFIG_FILE).write_text(
        json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
  ckpt = checkpointing.Checkpointer(ckpt_dir)
  position = 0
  if latest is not None:
    state, meta = ckpt.restore(latest, state)
    position = int(meta["data_position"])
    logging.info("Sweep resumed from step %d (%s).", latest, ckpt_dir)

  def get_batch(model: int) -> Batch:
    return parts.dataset.get_batch("train", position, config.batch_size, specs[model].seed)

  executor = _make_executor(config, parts, parts.chunk_size)
  executor.load(state)
  del state
  in_program = executor.batch_fn is not None
  executor = _fit_executor(config, parts, executor, None if in_program else get_batch)
  logging.info("Sweep of %d models, %d per program (%s strategy on %s), steps %d → %d.",
               len(specs), executor.chunks[0].stop - executor.chunks[0].start,
               config.sweep.strategy, jax.default_backend(), position, config.num_steps)

  eval_fn = train.make_eval_step(parts.model, conditional=parts.conditional)
  evals = eval_batches(parts.dataset, config) if config.eval_every else []
  num_dims = int(np.prod(parts.dataset.image_shape))
  reported_masked: set[int] = set()
  last_metrics: dict[str, np.ndarray] = {}
  last_eval: list[dict[str, Any]] = [{} for _ in specs]

  def rows_for(metrics, active, masked_at, eval_rows=None):
    rows = []
    for i, spec in enumerate(specs):
      row = {"model": i, **spec.as_dict(), "active": bool(active[i]),
             "masked_at": int(masked_at[i])}
      row.update({k: v[i] for k, v in metrics.items()})
      if eval_rows is not None:
        row.update(eval_rows[i])
      rows.append(row)
    return rows

  logger = SweepLogger(workdir, position, config.num_steps, len(specs), progress)
  try:
    for step in range(position + 1, config.num_steps + 1):
      batches = None if in_program else executor.host_batches(get_batch)
      metrics = executor.step(batches)
      position += 1
      logger.advance()
      is_log, is_eval, is_ckpt = train.step_events(config, step)
      if not (is_log or is_eval or is_ckpt):
        continue
      last_metrics = executor.fetch(metrics)
      active, masked_at = executor.flags()
      for i in np.flatnonzero(~active):
        if i not in reported_masked:
          reported_masked.add(int(i))
          logging.warning(
              "Sweep model %d (%s) diverged: masked at its step %d after more than %d "
              "consecutive non-finite steps; the others continue.", i,
              specs[i].label(("seed", *varying_fields(specs))), masked_at[i],
              config.optimizer.max_consecutive_skips)
      if is_log or is_eval:
        eval_rows = None
        if is_eval:
          outs = executor.evaluate(eval_fn, evals)
          last_eval = [train.summarize_eval(o, num_dims) for o in outs]
          eval_rows = last_eval
        logger.write(step, rows_for(last_metrics, active, masked_at, eval_rows))
      if is_ckpt:
        meta = {"step": step, "data_position": position, "config": config_dict,
                "models": [s.as_dict() for s in specs], "vaejax_version": vaejax.__version__}
        ckpt.save(step, executor.gather(), meta)
      if not active.any():
        raise train.NonFiniteError(
            f"All {len(specs)} models of the sweep diverged (more than "
            f"{config.optimizer.max_consecutive_skips} consecutive non-finite steps each) by "
            f"step {step}. Lower the learning rate, set optimizer.grad_clip_norm, or check "
            "the data for NaNs.")
  finally:
    logger.close()
    ckpt.close()

  state = executor.gather()
  active, masked_at = executor.flags()
  if evals and not any(last_eval):
    last_eval = [train.summarize_eval(o, num_dims) for o in executor.evaluate(eval_fn, evals)]
  rows = rows_for(last_metrics, active, masked_at, last_eval)
  paths: list[Path] = []
  if jax.process_index() == 0:
    with open(workdir / RESULTS_FILE, "w") as f:
      f.writelines(json.dumps(logging_utils.to_python(row)) + "\n" for row in rows)
    if write_report:
      from vaejax import sweep_plots  # pylint: disable=g-import-not-at-top
      paths = sweep_plots.write_report(rows, workdir / REPORT_DIR)
      logging.info("Sweep report: %s", ", ".join(str(p) for p in paths))
  return SweepResult(state, specs, rows, paths)
