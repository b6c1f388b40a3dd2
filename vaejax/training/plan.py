"""Planning a run: validate the config, the grid and every point, build the models,
evaluators and data checks — everything that needs no compilation, so that every mistake is
one error before anything compiles.

:func:`plan` turns a config (and a sweep's grid) into a :class:`Plan`: its points, the
groups of points that stack into one program (:func:`vaejax.sweeps.grid.groups`) and, per
group, a :class:`GroupPlan` with the model, dataset, seeds, stacked hyper-parameters,
placement and evaluators. :mod:`vaejax.training.loop` runs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from vaejax import config as config_lib
from vaejax import data as data_lib
from vaejax import models as models_lib
from vaejax import objectives
from vaejax.models import codec
from vaejax.evaluation import evaluators as evaluators_lib
from vaejax.sweeps import grid as grid_lib
from vaejax.training import memory, mesh as mesh_lib, writers as writers_lib
from vaejax.training.executor import resolve_chunk_size
from vaejax.training.optimizer import optimizer_from_config
from vaejax.training.state import abstract_stack
from vaejax.training.step import hyperparams_from_config, importance_from_config, stack_hyperparams

MODELS_DIR = "models"
Point = dict[str, Any]


class GroupPlan(NamedTuple):
  """One program's models and everything built for them before compiling."""

  index: int
  models: tuple[int, ...]  # global model indices
  config: ml_collections.ConfigDict  # the group's config (its first point applied)
  model: Any
  dataset: Any
  seeds: list[int]
  hyper: Any  # stacked Hyperparams
  free_bits_groups: tuple[int, ...] | None
  total_correlation: bool
  mesh: Any
  chunk_size: int
  budget: int
  evaluators: list[evaluators_lib.Evaluator]
  directory: Path  # where the group's checkpoints live


class Plan(NamedTuple):
  """A validated run: its points, groups and where everything goes."""

  config: ml_collections.ConfigDict
  workdir: Path
  points: list[Point]
  stacked: bool  # a sweep (rows carry model and point) rather than a single run
  groups: list[GroupPlan]

  def model_dir(self, model: int) -> Path:
    """Where model ``model``'s files (figures, result JSONs) go."""
    return self.workdir / MODELS_DIR / f"m{model:03d}" if self.stacked else self.workdir


def _point_error(point: Point, error: Exception) -> config_lib.ConfigError:
  return config_lib.ConfigError(f"Sweep point {grid_lib.point_label(point)}: {error}")


def _free_bits_groups(config: Any, model: Any) -> tuple[int, ...] | None:
  """``loss.free_bits_groups``, else the model's own groups (hierarchical: its levels)."""
  groups = config.loss.free_bits_groups
  groups = tuple(int(g) for g in groups) if groups else getattr(model, "latent_groups", None)
  latent_dim = getattr(model, "latent_dim", None)
  if groups is not None and latent_dim is not None and len(groups) != latent_dim:
    raise config_lib.ConfigError(
        f"Config loss.free_bits_groups has {len(groups)} entries; it needs one group id per "
        f"latent dimension ({latent_dim}).")
  return None if groups is None else tuple(groups)


def _check_first_batch(dataset: Any, config: Any, conditional: bool) -> None:
  if dataset.jax_sampler("train") is not None:
    return
  total = dataset.num_examples("train")
  if total is not None and config.batch_size > total:
    raise config_lib.ConfigError(
        f"Config batch_size={config.batch_size} exceeds the {total} training examples of "
        f"{dataset.name}; set --config.batch_size to at most {total}.")
  batch = dataset.get_batch("train", 0, min(2, config.batch_size), config.seed)
  image = np.asarray(batch["image"])
  if image.shape[1:] != tuple(dataset.image_shape):
    raise ValueError(f"Batch images have shape {image.shape}; expected (B, "
                     f"{', '.join(map(str, dataset.image_shape))}).")
  if conditional and "label" not in batch:
    raise ValueError("The model is conditional but the batch has no 'label'.")


def _load_dataset(config: Any, cache: dict[str, Any], dataset: Any) -> Any:
  if dataset is not None:
    return dataset
  key = json.dumps(config_lib.to_dict(config.data), sort_keys=True)
  if key not in cache:
    cache[key] = data_lib.load(config.data)
  return cache[key]


def plan(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
         grid: Sequence[str] | None = None, overridden: Sequence[str] = (),
         dataset: Any = None, eval_names: Sequence[str] | None = None,
         points: Sequence[Point] | None = None) -> Plan:
  """Validates a run and builds everything that needs no compilation.

  Args:
    config: a training config (:func:`vaejax.config.base_config` and its overrides).
    workdir: the run directory.
    grid: ``KEY=V1,V2,...`` axes (a sweep); None = a single run of ``config``.
    overridden: keys also set by ``--config.KEY`` (a grid over them is an error).
    dataset: a dataset object to use instead of ``vaejax.data.load(config.data)``.
    eval_names: build these evaluators of ``config.evals`` (whether or not they run
      during training; for ``experiments.evaluate``); None = the enabled ones.
    points: a sweep's points, already parsed (a finished run's, from its checkpoints),
      instead of ``grid``.

  Raises:
    ConfigError (a ValueError) / KeyError: one line naming the bad key or value.
  """
  workdir = Path(workdir).resolve()
  config_lib.validate(config, model_names=models_lib.MODELS,
                      dataset_names=None if dataset is not None else data_lib.DATASETS)
  if points is not None:
    points, stacked = [dict(p) for p in points], list(points) != [{}]
  elif grid is None:
    points, stacked = [{}], False
  else:
    axes = grid_lib.parse_grid(config, grid, overridden)
    if not axes:
      raise config_lib.ConfigError(
          "The sweep has no grid: give --grid=KEY=V1,V2,... (e.g. --grid=loss.beta=1,4 "
          "--grid=seed=0,1) or a config with a default grid.")
    points, stacked = grid_lib.points(axes), True
  configs = []
  for point in points:
    run = grid_lib.apply_point(config, point)
    try:
      config_lib.validate(run, model_names=models_lib.MODELS,
                          dataset_names=None if dataset is not None else data_lib.DATASETS)
      hyperparams_from_config(run)
    except ValueError as error:
      raise (_point_error(point, error) if stacked else error) from None
    configs.append(run)

  datasets: dict[str, Any] = {}
  group_plans = []
  groups = grid_lib.groups(config, points)
  total_models = len(points)
  for group in groups:
    gconfig = configs[group.models[0]]
    ds = _load_dataset(gconfig, datasets, dataset)
    model = models_lib.create_model(gconfig.model, tuple(ds.image_shape), ds.num_classes)
    conditional = codec.is_conditional(model)
    if conditional and ds.num_classes is None:
      raise config_lib.ConfigError(
          f"Model {gconfig.model.name!r} is conditional but dataset {ds.name!r} has no labels.")
    free_bits_groups = _free_bits_groups(gconfig, model)
    importance = importance_from_config(gconfig)
    for i in group.models:  # K, the estimator and M are static: one per group
      try:
        objectives.validate_importance_settings(
            hyperparams_from_config(configs[i]).loss, *importance,
            has_learned_prior=getattr(model, "latent_groups", None) is not None)
      except ValueError as error:
        raise (_point_error(points[i], error) if stacked else error) from None
    _check_first_batch(ds, gconfig, conditional)
    execution = gconfig.execution
    mesh = None
    if (execution.model_devices, execution.data_devices) != (1, 1):
      mesh = mesh_lib.make_mesh(execution.model_devices, execution.data_devices)
    model_devices = mesh_lib.axis_size(mesh, mesh_lib.MODEL_AXIS)
    num = len(group.models)
    requested = execution.chunk_size
    if execution.strategy == "chunked" and isinstance(requested, int) and (
        num < requested <= len(points)):
      requested = num  # a group smaller than the chunk is one chunk
    chunk_size = resolve_chunk_size(execution.strategy, num, chunk_size=requested,
                                    model_devices=model_devices)
    mesh_lib.check_divisible(mesh, models_per_program=chunk_size,
                             batch_size=gconfig.batch_size)
    if num % chunk_size and mesh is not None:
      mesh_lib.check_divisible(mesh, models_per_program=num % chunk_size,
                               batch_size=gconfig.batch_size)
    optimizer = optimizer_from_config(gconfig)
    budget = memory.memory_budget(budget_bytes=execution.memory_budget_gb * 2**30)
    abstract = abstract_stack(model, optimizer, 1, tuple(ds.image_shape),
                              conditional=conditional)
    memory.check_memory(num_models=num, bytes_per_model=memory.tree_bytes(abstract),
                        parallel_bytes=0, budget=budget, model_devices=model_devices)
    seeds = [int(configs[i].seed) for i in group.models]
    model_dirs = [workdir / MODELS_DIR / f"m{i:03d}" if stacked else workdir
                  for i in group.models]
    held_out: dict[str, Any] = {}

    def get_held_out(ds=ds, eval_config=gconfig.eval, cache=held_out):
      if "batches" not in cache:
        cache["batches"] = evaluators_lib.held_out_batches(ds, eval_config)
      return cache["batches"]

    def history(k, models=group.models, path=workdir / writers_lib.METRICS_FILE):
      """Model k's logged rows so far (a single run's rows have no "model")."""
      return [r for r in writers_lib.read_jsonl(path) if r.get("model", 0) == models[k]]

    setup = evaluators_lib.Setup(model, ds, gconfig, seeds, [points[i] for i in group.models],
                                 model_dirs, get_held_out, history)
    evals = evaluators_lib.build(gconfig.evals, setup, eval_names)
    if eval_names is None:
      evals = [e for e in evals if e.enabled]
    if evals:
      evaluators_lib.check_held_out(ds, gconfig.eval)
    directory = workdir if len(groups) == 1 else workdir / f"group_{group.index}"
    group_plans.append(GroupPlan(
        index=group.index, models=group.models, config=gconfig, model=model, dataset=ds,
        seeds=seeds,
        hyper=stack_hyperparams([hyperparams_from_config(configs[i]) for i in group.models]),
        free_bits_groups=free_bits_groups,
        total_correlation=grid_lib.tc_enabled(gconfig), mesh=mesh, chunk_size=chunk_size,
        budget=budget, evaluators=evals, directory=directory))
  del total_models
  return Plan(config, workdir, points, stacked, group_plans)
