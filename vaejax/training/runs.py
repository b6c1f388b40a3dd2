r"""A trained model in a notebook: :func:`load_run` finds one model of a run or sweep.

``load_run(workdir, model=i | point={...})`` reads the run's ``config.json`` and the
newest complete checkpoint of the model's group through
:func:`vaejax.training.checkpoint.read_checkpoint`, the one read of a checkpoint that
training and ``experiments.evaluate`` restore through as well. It only reads: no lock, no
``CheckpointManager`` (which would tidy a running save's files), nothing written, so it
loads a run while another process trains in it (a save in progress is not complete and is
skipped). What it returns, a :class:`vaejax.training.trained.Run`, encodes, decodes,
samples and scores (:mod:`vaejax.training.trained`).

Every mistake is one line naming what exists: a missing workdir, no ``config.json``, no
complete checkpoint, a step that was not saved (the saved ones), ``model=`` out of range
(how many there are), a point that is unknown, ambiguous or has a key that is not a grid
key (the points), ``model=`` with ``point=``, a checkpoint of another train-state layout.

Why here, in :mod:`vaejax.training`: a run's files (``config.json``, the checkpoint
layout, the groups of a sweep) are what training writes, and the loaded model is rebuilt
exactly as training builds it (:func:`vaejax.training.plan.build_model`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
from absl import logging

from vaejax.sweeps import grid as grid_lib
from vaejax.training import checkpoint as checkpoint_lib
from vaejax.training.finished import load_config
from vaejax.training.plan import checkpoint_dirs
from vaejax.training.state import StackState, TrainState
from vaejax.training.trained import Run
from vaejax.utils.checks import check_int

__all__ = ["Run", "load_run"]

_MAX_LISTED = 12  # points named in one error message
_ATTEMPTS = 20  # reads of the newest checkpoint while a training process replaces it


def load_run(workdir: str | os.PathLike, *, model: int | None = None,
             point: Mapping[str, Any] | None = None, step: int | None = None,
             dataset: Any = None) -> Run:
  """One trained model of a run or sweep in ``workdir``, read-only.

  >>> import tempfile
  >>> import jax
  >>> import numpy as np
  >>> from vaejax import config as config_lib, data, load_run
  >>> from vaejax.training import loop
  >>> images = (np.random.default_rng(0).random((32, 6, 6, 1)) < 0.3).astype(np.float32)
  >>> tiny = data.ArrayDataset("tiny", {s: data.SplitArrays(images, binary=True)
  ...                                   for s in ("train", "test")}, image_shape=(6, 6, 1))
  >>> config = config_lib.base_config()
  >>> config.model.update(name="mlp_vae", hidden_sizes=(8,), latent_dim=2)
  >>> config.data.name = "mnist_npz"  # nominal: the dataset is passed in
  >>> config.num_steps, config.batch_size, config.checkpoint_every = 4, 8, 2
  >>> config.eval.num_batches, config.eval.batch_size = 1, 8
  >>> config.evals.figures.at_end = False
  >>> workdir = tempfile.mkdtemp()
  >>> _ = loop.train(config, workdir, grid=["loss.beta=1,4"], dataset=tiny, progress=False,
  ...                write_report=False)
  >>> run = load_run(workdir, point={"loss.beta": 4.0}, dataset=tiny)
  >>> run
  Run(... model 1 of 2 (loss.beta=4), step 4, mlp_vae)
  >>> x = images[:3]
  >>> mean, log_var = run.encode(x)
  >>> mean.shape, run.reconstruct(x).shape, run.decode(mean).likelihood["logits"].shape
  ((3, 2), (3, 6, 6, 1), (3, 6, 6, 1))
  >>> run.elbo(x, jax.random.key(0)).shape, run.iwae(x, 16, jax.random.key(1)).shape
  ((3,), (3,))
  >>> run.sample(5, jax.random.key(2)).shape, run.traverse(x, 0, [-2.0, 0.0, 2.0]).shape
  ((5, 6, 6, 1), (3, 3, 6, 6, 1))
  >>> load_run(workdir, point={"loss.beta": 2.0}, dataset=tiny)
  Traceback (most recent call last):
  ...
  ValueError: No model of ... has point loss.beta=2; its points are 0: loss.beta=1, 1: loss.beta=4.

  Args:
    workdir: a directory ``experiments.train`` or ``experiments.sweep`` wrote.
    model: the model's index in a sweep (its ``model`` in ``metrics.jsonl``); a single run
      needs neither this nor ``point``.
    point: grid values picking one model of a sweep, e.g. ``{"loss.beta": 4.0, "seed": 1}``;
      grid keys may be left out as long as the others pick one model.
    step: a saved step to load (default: the newest complete checkpoint).
    dataset: the dataset object the run was trained on, when ``config.data`` cannot load
      it (a dataset passed to ``loop.train``); default: ``vaejax.data.load(config.data)``
      on first use (the model is built from what it describes).

  Returns:
    A :class:`vaejax.training.trained.Run` (``config``, ``model``, ``params``, ``point``,
    ``step``, ``index``, ``dataset`` and the methods).

  Raises:
    FileNotFoundError: no such workdir, no ``config.json``, no complete checkpoint.
    ValueError: a bad ``model``, ``point`` or ``step``;
      :class:`~vaejax.training.checkpoint.LayoutMismatch` (a ValueError): a checkpoint
      written by a vaejax with another train-state layout.
  """
  workdir = _existing_workdir(workdir)
  config = load_config(workdir)
  groups = _saved_groups(workdir)
  points = [dict(p) for p in groups[0].meta.get("points") or [{}]]
  index = _pick(points, model, point, workdir)
  group = _group_of(groups, index, points, workdir)
  chosen, state = _read_state(group, step)
  position = list(group.meta.get("models", range(len(points)))).index(index)
  params = jax.device_get(jax.tree.map(lambda leaf: leaf[position], state["models"]["params"]))
  run_config = grid_lib.apply_point(config, points[index]) if points[index] else config
  return Run(workdir=workdir, config=ml_collections.FrozenConfigDict(run_config),
             params=params, point=points[index], step=chosen, index=index,
             num_models=len(points), given_dataset=dataset, source=group.directory / str(chosen))


class _Group(NamedTuple):
  """A checkpoint directory of the run: its complete steps (newest first) and the newest
  one's metadata (the run's points, the group's models)."""

  directory: Path
  steps: list[int]
  meta: dict[str, Any]


def _existing_workdir(workdir: str | os.PathLike) -> Path:
  if workdir is None or not str(workdir).strip():
    raise ValueError("load_run needs a run's directory (the --workdir it was trained in).")
  path = Path(workdir).expanduser().resolve()
  if not path.is_dir():
    raise FileNotFoundError(f"No run at {path}: the directory does not exist"
                            + (" (it is a file)." if path.exists() else "."))
  return path


def _saved_groups(workdir: Path) -> list[_Group]:
  """Every checkpoint directory with a complete checkpoint whose metadata reads."""
  groups = []
  for directory in checkpoint_dirs(workdir):
    found = _newest(directory, checkpoint_lib.read_meta)
    if found is not None:
      groups.append(_Group(directory, checkpoint_lib.complete_steps(directory), found[1]))
  if not groups:
    raise FileNotFoundError(
        f"No complete checkpoint under {workdir}: train the run first (a first checkpoint "
        "still being written does not count until it is complete).")
  return groups


# ----------------------------------------------------------------------------- which model


def _label(point: Mapping[str, Any]) -> str:
  return grid_lib.point_label(point)


def _listed(points: Sequence[Mapping[str, Any]], indices: Sequence[int] | None = None) -> str:
  """``"0: loss.beta=1 seed=0, 1: ..."``, at most :data:`_MAX_LISTED` of them."""
  indices = range(len(points)) if indices is None else indices
  shown = [f"{i}: {_label(points[i])}" for i in list(indices)[:_MAX_LISTED]]
  more = len(indices) - len(shown)
  return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _plain(value: Any) -> Any:
  """Lists and tuples compare alike (checkpoint metadata is JSON: tuples come back lists)."""
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def _pick(points: list[dict[str, Any]], model: Any, point: Any, where: Path) -> int:
  """The index of the model that ``model=`` or ``point=`` names (a single run: 0)."""
  n = len(points)
  if model is not None and point is not None:
    raise ValueError("Give model= or point=, not both: each picks a model by itself.")
  if model is not None:
    model = check_int(model, "model", minimum=0)
    if model >= n:
      raise ValueError(f"model={model} is out of range: the run in {where} has {n} model(s), "
                       f"0 to {n - 1}.")
    return model
  if point is not None and not isinstance(point, Mapping):
    raise ValueError(f"point={point!r} must be a dict of grid values, e.g. "
                     "{'loss.beta': 4.0, 'seed': 1}.")
  if not point:  # None or {}: only a single run needs no pick
    if n == 1:
      return 0
    raise ValueError(f"{where} is a sweep of {n} models: pick one with model=0..{n - 1} or "
                     f"point={{...}}; its points are {_listed(points)}.")
  keys = sorted(set().union(*points))
  unknown = sorted(set(point) - set(keys))
  if unknown:
    grid = f"its grid keys are {keys}" if keys else "it is a single run, with no grid"
    raise ValueError(f"point key(s) {unknown} are not grid keys of {where}: {grid}.")
  matches = [i for i, p in enumerate(points)
             if all(_plain(p.get(k)) == _plain(v) for k, v in point.items())]
  if not matches:
    raise ValueError(f"No model of {where} has point {_label(point)}; its points are "
                     f"{_listed(points)}.")
  if len(matches) > 1:
    raise ValueError(f"point {_label(point)} is ambiguous: models {_listed(points, matches)} "
                     f"match it; add the other grid keys ({sorted(set(keys) - set(point))}).")
  return matches[0]


def _group_of(groups: list[_Group], index: int, points: list[dict[str, Any]],
              where: Path) -> _Group:
  """The checkpoint directory holding model ``index`` (a sweep split into groups has one
  per group, ``group_K/checkpoints``)."""
  for group in groups:
    if index in group.meta.get("models", range(len(points))):
      return group
  saved = sorted(m for g in groups for m in g.meta.get("models", ()))
  raise FileNotFoundError(
      f"Model {index} ({_label(points[index])}) of {where} has no complete checkpoint yet: "
      f"its group has not saved one (saved models: {saved}).")


# ----------------------------------------------------------------------------- reading


def _newest(directory: Path, read: Callable[[Path, int], Any]) -> tuple[int, Any] | None:
  """``(step, read(directory, step))`` of the newest complete checkpoint that reads; None
  when there is none.

  Every attempt lists the checkpoints afresh: a process training in the workdir meanwhile
  saves newer ones and deletes older ones, so a read that failed while a newer checkpoint
  appeared is retried on the newest. One that fails while it is still the newest is
  unreadable: reported, left in place, and the next older one is read.
  """
  unreadable: set[int] = set()
  for _ in range(_ATTEMPTS):
    steps = [s for s in checkpoint_lib.complete_steps(directory) if s not in unreadable]
    if not steps:
      return None
    try:
      return steps[0], read(directory, steps[0])
    except Exception as error:  # pylint: disable=broad-except  (classified below)
      failure = error
    now = [s for s in checkpoint_lib.complete_steps(directory) if s not in unreadable]
    if now and now[0] == steps[0]:  # not superseded (so not deleted for being old): broken
      unreadable.add(steps[0])
      logging.warning("Checkpoint %s does not read (%s); loading the next older one.",
                      directory / str(steps[0]), " ".join(str(failure).split())[:300])
  raise FileNotFoundError(f"No checkpoint in {directory} read in {_ATTEMPTS} attempts (the "
                          f"last error: {' '.join(str(failure).split())[:300]}).")


def _read_state(group: _Group, step: int | None) -> tuple[int, Any]:
  """``(step, stored state)`` of ``step``, else of the newest complete checkpoint that
  reads (:func:`_newest`)."""
  if step is None:
    found = _newest(group.directory,
                    lambda directory, s: checkpoint_lib.read_checkpoint(directory, s)[0])
    if found is None:
      raise FileNotFoundError(f"No complete checkpoint in {group.directory} any more.")
    step, state = found
  else:
    check_int(step, "step", minimum=0)
    if step not in group.steps:
      raise ValueError(f"No complete checkpoint at step {step} in {group.directory}; its "
                       f"steps are {', '.join(map(str, sorted(group.steps)))}.")
    state, _ = checkpoint_lib.read_checkpoint(group.directory, step)
  _check_layout(state, group.directory / str(step))
  return step, state


def _fields(cls: Any) -> set[str]:
  return set(cls.__dataclass_fields__)


def _check_layout(state: Any, where: Path) -> None:
  """Refuses a state whose train-state fields are not this vaejax's (fields added since,
  :data:`~vaejax.training.checkpoint.ADDED_FIELDS`, may be missing: they are counters)."""
  stored = set(state) | {f"models.{k}" for k in (state.get("models") or {})}
  wanted = _fields(StackState) | {f"models.{k}" for k in _fields(TrainState)}
  added = {f"models.{k}" for k in checkpoint_lib.ADDED_FIELDS}
  missing, unexpected = sorted(wanted - stored - added), sorted(stored - wanted)
  if missing or unexpected:
    raise checkpoint_lib.LayoutMismatch(
        f"Checkpoint {where} was written by a version of vaejax with another train-state "
        f"layout (missing: {missing or 'none'}; not expected: {unexpected or 'none'}); load "
        "it with the version that wrote it.")
