"""Planning a run: everything decided before anything compiles, decided once.

:func:`make_plan` turns a config (and a sweep's grid) into a :class:`Plan`: the run's
config as the plain dict that ``config.json`` and every checkpoint record, its points, the
groups of points that stack into one program (:func:`vaejax.sweeps.grid.groups`) and, per
group, a :class:`GroupPlan` with the model and its :class:`ModelTraits`, the dataset,
seeds, each model's hyper-parameters (built once per point), optimizer, placement and
evaluators. Every mistake is one error here, before anything compiles.
:func:`with_resume_steps` (called holding the workdir lock) adds where each group resumes:
the checkpoint probe, once per checkpoint directory. :mod:`vaejax.training.loop` runs it.
"""

from __future__ import annotations

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
from vaejax.training import checkpoint as checkpoint_lib
from vaejax.training import memory, mesh as mesh_lib
from vaejax.training import step as step_lib
from vaejax.training import writers as writers_lib
from vaejax.training.executor import resolve_chunk_size
from vaejax.training.optimizer import optimizer_from_config
from vaejax.training.state import abstract_stack
from vaejax.types import TOKENS, DataSpec

MODELS_DIR = "models"
Point = dict[str, Any]


class ModelTraits(NamedTuple):
  """What the loop needs to know of a built model besides its parameters.

  Attributes:
    conditional: the model reads labels (a conditional VAE); batches must carry them.
    latent_groups: the group (level) of each latent dimension of a hierarchical model.
    latent_dim: the number of latent dimensions, where the model declares it.
  """

  conditional: bool
  latent_groups: tuple[int, ...] | None
  latent_dim: int | None


def model_traits(model: Any) -> ModelTraits:
  """A model's :class:`ModelTraits`: the one place training reads them off a model."""
  groups = getattr(model, "latent_groups", None)
  return ModelTraits(conditional=codec.is_conditional(model),
                     latent_groups=None if groups is None else tuple(int(g) for g in groups),
                     latent_dim=getattr(model, "latent_dim", None))


def build_model(config: Any, dataset: Any) -> tuple[Any, ModelTraits]:
  """The model ``config`` trains on ``dataset`` (built from what the dataset describes,
  :func:`data_spec`: an image shape and classes, or a vocabulary and length) and its
  traits: planning a run and :func:`vaejax.load_run` both build a run's model here.

  Raises:
    ConfigError: a conditional model on a dataset without labels.
    ValueError: an image model on token sequences or the reverse, or a bad model setting.
  """
  model = models_lib.create_model(config.model, data_spec(dataset))
  traits = model_traits(model)
  if traits.conditional and dataset.num_classes is None:
    raise config_lib.ConfigError(f"Model {config.model.name!r} is conditional but dataset "
                                 f"{dataset.name!r} has no labels.")
  return model, traits


class GroupPlan(NamedTuple):
  """One program's models and everything built for them before compiling."""

  index: int
  models: tuple[int, ...]  # global model indices
  # The group's config: the run's config with the group's first point applied. Points of
  # one group differ only in per-model numbers, which are in ``hyper``.
  config: ml_collections.ConfigDict
  model: Any
  traits: ModelTraits
  dataset: Any
  seeds: list[int]
  hyper: step_lib.Hyperparams  # each model's, stacked on a leading model axis
  optimizer: Any
  importance: step_lib.Importance
  free_bits_groups: tuple[int, ...] | None
  total_correlation: bool
  mesh: Any
  chunk_size: int
  budget: int
  evaluators: list[evaluators_lib.Evaluator]
  directory: Path  # the group's directory (its checkpoints live below it)
  resume_step: int | None = None  # the checkpoint to resume from (:func:`with_resume_steps`)

  @property
  def checkpoint_dir(self) -> Path:
    return self.directory / checkpoint_lib.CHECKPOINT_DIR

  @property
  def spec(self) -> DataSpec:
    """What the dataset's batches hold (what the models are built and initialised on)."""
    return data_spec(self.dataset)


class Plan(NamedTuple):
  """A validated run: its config, points, groups and where everything goes."""

  config: ml_collections.ConfigDict  # the run's config (a sweep's records its grid)
  # The run's config as a plain dict, computed once: written to config.json and into every
  # checkpoint's metadata, and what a resumed run is compared with.
  saved_config: dict[str, Any]
  workdir: Path
  points: list[Point]
  saved_points: list[dict[str, Any]]  # the points as plain dicts (checkpoint metadata)
  stacked: bool  # a sweep (rows carry model and point) rather than a single run
  groups: list[GroupPlan]

  def model_dir(self, model: int) -> Path:
    """Where model ``model``'s files (figures, result JSONs) go."""
    return model_dir(self.workdir, model, self.stacked)

  def group_label(self, group: GroupPlan) -> str:
    """``"group 2/3"`` when the run has several groups, else ``""``."""
    return f"group {group.index + 1}/{len(self.groups)}" if len(self.groups) > 1 else ""


def data_spec(dataset: Any) -> DataSpec:
  """``dataset.spec``; for a dataset object without one, images of its ``image_shape``."""
  spec = getattr(dataset, "spec", None)
  return spec if spec is not None else DataSpec.images(dataset.image_shape,
                                                       dataset.num_classes)


def model_dir(workdir: Path, model: int, stacked: bool) -> Path:
  """Where model ``model``'s files go: ``models/mNNN`` of a sweep, a single run's workdir."""
  return workdir / MODELS_DIR / f"m{model:03d}" if stacked else workdir


def checkpoint_dirs(workdir: Path) -> list[Path]:
  """Every checkpoint directory a run or sweep may have in ``workdir`` (one group's, or
  each group's)."""
  return [d / checkpoint_lib.CHECKPOINT_DIR for d in (workdir, *sorted(workdir.glob("group_*")))
          if (d / checkpoint_lib.CHECKPOINT_DIR).is_dir()]


class _Points(NamedTuple):
  """A run's points and what is built for each of them, once."""

  points: list[Point]
  stacked: bool
  configs: list[ml_collections.ConfigDict]  # each point's config
  hypers: list[step_lib.Hyperparams]  # each point's hyper-parameters


def make_plan(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
              grid: Sequence[str] | None = None, overridden: Sequence[str] = (),
              dataset: Any = None, eval_names: Sequence[str] | None = None,
              points: Sequence[Point] | None = None) -> Plan:
  """Validates a run and builds everything that needs no compilation.

  Args:
    config: a training config (:func:`vaejax.config.base_config` and its overrides).
    workdir: the run directory (nothing is written to it here).
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
  dataset_names = None if dataset is not None else data_lib.DATASETS
  config_lib.validate(config, model_names=models_lib.MODELS, dataset_names=dataset_names)
  run_points = _point_configs(config, *_points(config, grid, overridden, points),
                              dataset_names)
  groups = grid_lib.groups(config, run_points.points)
  datasets: dict[str, Any] = {}
  group_plans = []
  for group in groups:
    directory = workdir if len(groups) == 1 else workdir / f"group_{group.index}"
    group_plans.append(_plan_group(group, run_points, workdir, directory, dataset, datasets,
                                   eval_names))
  return Plan(config, config_lib.to_dict(config), workdir, run_points.points,
              [config_lib.to_dict(p) for p in run_points.points], run_points.stacked,
              group_plans)


def with_resume_steps(run: Plan, *, every_layout: bool = True) -> Plan:
  """``run`` with each group's ``resume_step``: the newest checkpoint in its directory
  whose metadata reads and agrees with the run's config and grid
  (:func:`vaejax.training.checkpoint.latest_resumable_step`, called once per directory).

  Call it holding the workdir lock (the probe sets unreadable checkpoints aside). With
  ``every_layout``, every checkpoint directory of the workdir is checked first, so that a
  grid that now splits into other groups is refused before anything is written.

  Raises:
    ConfigError: a checkpoint of another config or grid.
  """
  directories = checkpoint_dirs(run.workdir) if every_layout else []
  directories += [g.checkpoint_dir for g in run.groups if g.checkpoint_dir not in directories]
  steps = {d: checkpoint_lib.latest_resumable_step(d, run.saved_config, run.points)
           for d in directories}
  return run._replace(groups=[g._replace(resume_step=steps[g.checkpoint_dir])
                              for g in run.groups])


# ----------------------------------------------------------------------------- points


class PointError(config_lib.ConfigError):
  """A bad value of one grid point (or of the points of one group), named by its values."""


def _point_error(point: Point, error: Exception) -> PointError:
  return PointError(f"Sweep point {grid_lib.point_label(point)}: {error}")


def _group_error(group: grid_lib.Group, run_points: _Points, error: ValueError) -> ValueError:
  """``error`` of building one group's model, naming the grid values that set the group
  apart (a model's shape: the points of a group share it, other groups differ); unchanged
  for a single run or where no grid value sets the group apart."""
  points = [run_points.points[i] for i in group.models]
  shared = {k: v for k, v in points[0].items() if all(p.get(k) == v for p in points)
            and any(p.get(k) != v for p in run_points.points)}
  if not run_points.stacked or isinstance(error, PointError) or not shared:
    return error
  if len(points) == 1:
    return _point_error(points[0], error)
  return PointError(f"Sweep points with {grid_lib.point_label(shared)} ({len(points)} models): "
                    f"{error}")


def _points(config: ml_collections.ConfigDict, grid: Sequence[str] | None,
            overridden: Sequence[str], points: Sequence[Point] | None
            ) -> tuple[list[Point], bool]:
  """The run's points and whether it is a sweep."""
  if points is not None:
    return [dict(p) for p in points], list(points) != [{}]
  if grid is None:
    return [{}], False
  axes = grid_lib.parse_grid(config, grid, overridden)
  if not axes:
    raise config_lib.ConfigError(
        "The sweep has no grid: give --grid=KEY=V1,V2,... (e.g. --grid=loss.beta=1,4 "
        "--grid=seed=0,1) or a config with a default grid.")
  return grid_lib.points(axes), True


def _point_configs(config: ml_collections.ConfigDict, points: list[Point], stacked: bool,
                   dataset_names: Any) -> _Points:
  """Each point's config (validated; a single run's is ``config``, validated already) and
  hyper-parameters, built once."""
  configs, hypers = [], []
  for point in points:
    point_config = grid_lib.apply_point(config, point)
    try:
      if stacked:
        config_lib.validate(point_config, model_names=models_lib.MODELS,
                            dataset_names=dataset_names)
      hypers.append(step_lib.hyperparams_from_config(point_config))
    except ValueError as error:
      raise (_point_error(point, error) if stacked else error) from None
    configs.append(point_config)
  return _Points(points, stacked, configs, hypers)


# ----------------------------------------------------------------------------- groups


def _plan_group(group: grid_lib.Group, run_points: _Points, workdir: Path, directory: Path,
                dataset: Any, datasets: dict[str, Any],
                eval_names: Sequence[str] | None) -> GroupPlan:
  """Builds and checks one group: model, data, hyper-parameters, placement, evaluators."""
  config = run_points.configs[group.models[0]]
  ds = dataset if dataset is not None else _load_dataset(config, datasets)
  spec = data_spec(ds)
  try:
    model, traits = build_model(config, ds)
  except config_lib.ConfigError:
    raise
  except ValueError as error:  # a grid over the model's shape: name the bad point
    raise _group_error(group, run_points, error) from None
  free_bits_groups = _free_bits_groups(config, traits)
  importance = step_lib.importance_from_config(config)
  for i in group.models:  # K, the estimator and M are static: one per group
    try:
      objectives.validate_importance_settings(
          run_points.hypers[i].loss, *importance,
          has_learned_prior=traits.latent_groups is not None)
      if spec.kind == TOKENS:
        _check_sequence_settings(config, run_points.configs[i], importance, traits)
    except ValueError as error:
      raise (_point_error(run_points.points[i], error) if run_points.stacked else error
             ) from None
  _check_first_batch(ds, config, traits.conditional)
  mesh, chunk_size = _placement(config, len(group.models), len(run_points.points))
  optimizer = optimizer_from_config(config)
  budget = memory.memory_budget(budget_bytes=config.execution.memory_budget_gb * 2**30)
  abstract = abstract_stack(model, optimizer, 1, spec, conditional=traits.conditional)
  memory.check_memory(num_models=len(group.models), bytes_per_model=memory.tree_bytes(abstract),
                      parallel_bytes=0, budget=budget,
                      model_devices=mesh_lib.axis_size(mesh, mesh_lib.MODEL_AXIS))
  seeds = [int(run_points.configs[i].seed) for i in group.models]
  evaluators = _evaluators(group, run_points, config, model, ds, seeds, workdir, eval_names)
  return GroupPlan(
      index=group.index, models=group.models, config=config, model=model, traits=traits,
      dataset=ds, seeds=seeds,
      hyper=step_lib.stack_hyperparams([run_points.hypers[i] for i in group.models]),
      optimizer=optimizer, importance=importance, free_bits_groups=free_bits_groups,
      total_correlation=grid_lib.tc_enabled(config), mesh=mesh, chunk_size=chunk_size,
      budget=budget, evaluators=evaluators, directory=directory)


def _load_dataset(config: Any, cache: dict[str, Any]) -> Any:
  """``vaejax.data.load(config.data)``, once per distinct data config of the run."""
  key = config.data.to_json_best_effort(sort_keys=True)
  if key not in cache:
    cache[key] = data_lib.load(config.data)
  return cache[key]


def _free_bits_groups(config: Any, traits: ModelTraits) -> tuple[int, ...] | None:
  """``loss.free_bits_groups``, else the model's own groups (hierarchical: its levels)."""
  groups = config.loss.free_bits_groups
  groups = tuple(int(g) for g in groups) if groups else traits.latent_groups
  if groups is not None and traits.latent_dim is not None and len(groups) != traits.latent_dim:
    raise config_lib.ConfigError(
        f"Config loss.free_bits_groups has {len(groups)} entries; it needs one group id per "
        f"latent dimension ({traits.latent_dim}).")
  return groups


def _check_sequence_settings(config: Any, point_config: Any, importance: step_lib.Importance,
                             traits: ModelTraits) -> None:
  """What a token-sequence model cannot train with: DReG (its decoder is teacher-forced on
  the sentence, which ``decode(z)`` alone does not have) and, without a latent (the
  language model), β-TC."""
  if importance.estimator == "dreg":
    raise config_lib.ConfigError(
        f"Config loss.estimator='dreg' does not apply to model {config.model.name!r}: its "
        "decoder is teacher-forced on the sentence; use loss.estimator='plain'.")
  if grid_lib.tc_enabled(point_config) and not traits.latent_dim:
    raise config_lib.ConfigError(
        f"Config loss.tc_beta={point_config.loss.tc_beta!r} needs a latent; model "
        f"{config.model.name!r} has none (set loss.tc_beta=1).")


def _check_first_batch(dataset: Any, config: Any, conditional: bool) -> None:
  if dataset.jax_sampler("train") is not None:
    return
  total = dataset.num_examples("train")
  if total is not None and config.batch_size > total:
    raise config_lib.ConfigError(
        f"Config batch_size={config.batch_size} exceeds the {total} training examples of "
        f"{dataset.name}; set --config.batch_size to at most {total}.")
  batch = dataset.get_batch("train", 0, min(2, config.batch_size), config.seed)
  spec = data_spec(dataset)
  if spec.kind == TOKENS:
    tokens = np.asarray(batch["tokens"])
    if tokens.shape[1:] != (spec.max_length,) or not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"Batch tokens are {tokens.dtype} of shape {tokens.shape}; expected "
                       f"int32 (B, {spec.max_length}).")
    return
  image = np.asarray(batch["image"])
  if image.shape[1:] != tuple(dataset.image_shape):
    raise ValueError(f"Batch images have shape {image.shape}; expected (B, "
                     f"{', '.join(map(str, dataset.image_shape))}).")
  if conditional and "label" not in batch:
    raise ValueError("The model is conditional but the batch has no 'label'.")


def _placement(config: Any, num_models: int, total_models: int) -> tuple[Any, int]:
  """The group's mesh (None without one) and models per program, checked against it."""
  execution = config.execution
  mesh = None
  if (execution.model_devices, execution.data_devices) != (1, 1):
    mesh = mesh_lib.make_mesh(execution.model_devices, execution.data_devices)
  requested = execution.chunk_size
  if execution.strategy == "chunked" and isinstance(requested, int) and (
      num_models < requested <= total_models):
    requested = num_models  # a group smaller than the chunk is one chunk
  chunk_size = resolve_chunk_size(execution.strategy, num_models, chunk_size=requested,
                                  model_devices=mesh_lib.axis_size(mesh, mesh_lib.MODEL_AXIS))
  mesh_lib.check_divisible(mesh, models_per_program=chunk_size, batch_size=config.batch_size)
  if num_models % chunk_size and mesh is not None:
    mesh_lib.check_divisible(mesh, models_per_program=num_models % chunk_size,
                             batch_size=config.batch_size)
  return mesh, chunk_size


def _evaluators(group: grid_lib.Group, run_points: _Points, config: Any, model: Any,
                dataset: Any, seeds: list[int], workdir: Path,
                eval_names: Sequence[str] | None) -> list[evaluators_lib.Evaluator]:
  """The group's evaluators of ``config.evals`` (built and checked now)."""
  held_out: dict[str, Any] = {}

  def get_held_out():
    if "batches" not in held_out:
      held_out["batches"] = evaluators_lib.held_out_batches(dataset, config.eval)
    return held_out["batches"]

  def history(k, models=group.models, path=workdir / writers_lib.METRICS_FILE):
    """Model k's logged rows so far (a single run's rows have no "model")."""
    return [r for r in writers_lib.read_jsonl(path) if r.get("model", 0) == models[k]]

  setup = evaluators_lib.Setup(
      model, dataset, config, seeds, [run_points.points[i] for i in group.models],
      [model_dir(workdir, i, run_points.stacked) for i in group.models], get_held_out, history)
  evaluators = evaluators_lib.build(config.evals, setup, eval_names)
  if eval_names is None:
    evaluators = [e for e in evaluators if e.enabled]
  if evaluators:
    evaluators_lib.check_held_out(dataset, config.eval)
  return evaluators
