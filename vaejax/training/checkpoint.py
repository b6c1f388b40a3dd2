"""Exact-resume checkpoints with orbax: the one save and restore path of every run.

A checkpoint holds two items: ``state``, the whole stacked train state (parameters,
optimizer states, steps, PRNG keys, skip counters, which models are active), and
``meta``, a JSON dict with the data position, the config and the grid points that
produced the run. Orbax writes each step to a temporary directory and renames it when
complete, so a process killed mid-write leaves the previous checkpoints readable; old
checkpoints are deleted only after a newer one is finalized, and at least two are kept.

Every read goes through :func:`read_checkpoint` (and :func:`read_meta` for the metadata
alone), which opens no ``CheckpointManager``: it creates, tidies and moves nothing and
takes no lock, so it reads a complete checkpoint (:func:`complete_steps`) while another
process trains in the same directory. Runs resume through :func:`latest_resumable_step`
(the newest checkpoint whose metadata reads, checked against the config before anything
compiles; the plan calls it once per checkpoint directory,
:func:`vaejax.training.plan.with_resume_steps`) and :func:`restore_latest` (the newest that
restores cleanly), both driven by :func:`vaejax.training.resume.restore_or_init` for
training and evaluation alike; :func:`restore_state` reads a checkpoint without a target
(for inspecting a finished run) and :func:`vaejax.load_run` reads one model of a run.
A checkpoint that fails to read (a truncated array file, garbage metadata, a missing item)
is moved to ``checkpoints/corrupt-STEP/`` (never deleted, never in the way of a later
save) with one warning naming it and why in a few words, and the next older one is used;
orbax's own logs of the failed read (and TensorStore's callbacks into its closed event
loop) are kept off the console, so that warning is the only line.

A save that fails in orbax's background thread (a full disk) surfaces at the next
:meth:`Checkpointer.check_save` (the loop calls it after every step) as one error naming
the checkpoint and, for a full disk, the free space (:class:`vaejax.utils.files.DiskFullError`);
the save's temporary directory is removed at once, and leftovers of saves a crash cut
short are removed before a run reads its checkpoints
(:func:`~vaejax.training.checkpoint_failures.remove_unfinished_saves`). How those failures
read is :mod:`vaejax.training.checkpoint_failures`'s.

A checkpoint that reads but holds a different train-state *layout* (written by another
version of vaejax) is not corrupt and is never moved: if the only difference is fields
added since (:data:`ADDED_FIELDS`, counters that start at zero), it resumes with those at
zero and one warning; any other difference is an error naming the fields.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from typing_extensions import Self

from vaejax import config as config_lib
from vaejax.training import checkpoint_failures as failures
from vaejax.training.checkpoint_failures import (  # noqa: F401  (part of this interface)
    TMP_SUFFIX,
    remove_unfinished_saves,
)
from vaejax.utils import files

CHECKPOINT_DIR = "checkpoints"

# Train-state fields added after checkpoints may have been written without them, and
# that restore as zeros: counters, so a resumed run counts from its resume.
ADDED_FIELDS = ("grad_norm_skips",)


class LayoutMismatch(ValueError):
  """A readable checkpoint whose train-state fields differ from the run's."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (for a reason other than a full disk)."""


class Checkpointer:
  """A thin wrapper over ``ocp.CheckpointManager`` for (state, meta) checkpoints.

  Args:
    directory: where step directories are written.
    max_to_keep: how many recent checkpoints to keep (at least 2, so a crash while one
      is written never leaves none).
    async_save: write in a background thread (the arrays are copied first, so training
      continues safely).
  """

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3, async_save: bool = True):
    if max_to_keep < 2:
      raise ValueError(f"max_to_keep must be >= 2, got {max_to_keep}.")
    _drop_closed_loop_callbacks()
    failures.drop_orbax_error_logs()
    self.directory = Path(directory).resolve()
    self._saving: int | None = None  # the step whose background save may still fail
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        cleanup_tmp_directories=True,  # leftovers of a killed write
        enable_async_checkpointing=async_save,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def read_meta(self, step: int) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without touching its arrays (:func:`read_meta`)."""
    return read_meta(self.directory, step)

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts writing checkpoint ``step`` (returns before the write completes).

    Raises:
      DiskFullError / CheckpointWriteError: this save, or the one before it (finished in
        the background meanwhile), failed.
    """
    self.wait_until_finished()  # orbax would wait too; this way its failure reads well
    self._saving = step
    with self._failures_of(step):
      self._manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta)),
          force=True,
      )

  def check_save(self) -> None:
    """Raises the failure of the last background save once it has ended (cheap: call it
    after every step); returns at once while it runs or after it succeeded."""
    if self._saving is not None and not self._manager.is_saving_in_progress():
      self.wait_until_finished()

  @contextlib.contextmanager
  def _failures_of(self, step: int) -> Iterator[None]:
    """Turns a failed write of checkpoint ``step`` into one error (and removes its
    temporary directory)."""
    try:
      yield
    except Exception as error:  # pylint: disable=broad-except  (orbax, TensorStore, OS)
      self._saving = None
      failures.remove_unfinished_saves(self.directory, step)
      good = [s for s in self.all_steps() if s != step]
      note = (f"; the newest complete checkpoint is step {good[-1]}" if good else
              "; no complete checkpoint was written yet")
      where = self.directory / str(step)
      if files.is_disk_full(error):
        raise files.DiskFullError(self.directory, files.free_bytes(self.directory),
                                  f"checkpoint {step} ({where})", note) from None
      raise CheckpointWriteError(
          f"Checkpoint {step} could not be written to {where} ({failures.short_reason(error)})"
          f"{note}.") from None

  def restore(self, step: int, target: Any = None) -> tuple[Any, dict[str, Any]]:
    """Restores ``(state, meta)`` of checkpoint ``step`` into the structure of ``target``.

    ``target`` is a state pytree of the same structure (e.g. a freshly initialised one
    or its ``jax.eval_shape``); it only gives shapes and dtypes. Without it the state
    comes back as the nested dicts of arrays stored on disk.
    """
    return _read(self.directory, step, target)

  def state_fields(self, step: int) -> set[str]:
    """Dotted names of the arrays checkpoint ``step`` holds (``models.params.…``)."""
    return _stored_fields(self.directory, step)

  def restore_with_zeros(self, step: int, target: Any, missing: Iterable[str]
                         ) -> tuple[Any, dict[str, Any]]:
    """:meth:`restore` into ``target``'s structure, the fields ``missing`` on disk set to
    zeros (with ``target``'s shapes, dtypes and shardings)."""
    return _read_with_zeros(self.directory, step, target, missing)

  def wait_until_finished(self) -> None:
    """Waits for the background save; raises its failure as one error."""
    if self._saving is None:
      self._manager.wait_until_finished()
      return
    with self._failures_of(self._saving):
      self._manager.wait_until_finished()
    self._saving = None

  def close(self) -> None:
    """Waits for the background save (raising its failure) and closes the manager."""
    try:
      self.wait_until_finished()
    finally:
      with contextlib.suppress(Exception):  # a failed save was reported just above
        self._manager.close()

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def check_points(saved: Sequence[Mapping[str, Any]] | None, points: Sequence[Mapping[str, Any]],
                 where: str) -> None:
  """Raises ConfigError when a run's grid points differ from its checkpoint's."""
  saved = [dict(p) for p in (saved or [{}])]
  points = [config_lib.to_dict(p) for p in points]
  if config_lib.to_dict({"p": saved}) != config_lib.to_dict({"p": points}):
    raise config_lib.ConfigError(
        f"The workdir holds a checkpoint ({where}) of another grid ({len(saved)} points, "
        f"first {saved[0]}) than this run ({len(points)} points, first {points[0]}). A sweep "
        "resumes only with the same --grid flags; use a new --workdir for another grid.")


def _drop_closed_loop_callbacks() -> None:
  """After a failed read, TensorStore's completion callbacks of the other arrays fire into
  orbax's already-closed asyncio loop and each reports an unraisable "RuntimeError: Event
  loop is closed" traceback (dozens per failure). This hook drops exactly those; every
  other unraisable exception still reaches the previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, "_vaejax_drops_closed_loop", False):
    return

  def hook(unraisable):
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      return
    previous(unraisable)

  hook._vaejax_drops_closed_loop = True  # type: ignore[attr-defined]
  sys.unraisablehook = hook


def quarantine(directory: str | os.PathLike, step: int, reason: BaseException | str) -> Path:
  """Moves checkpoint ``step`` aside to ``corrupt-STEP`` (process 0), warning in one line."""
  _drop_closed_loop_callbacks()
  directory = Path(directory)
  source = directory / str(step)
  target = directory / f"corrupt-{step}"
  suffix = 2
  while target.exists():
    target = directory / f"corrupt-{step}-{suffix}"
    suffix += 1
  reason = reason if isinstance(reason, str) else failures.short_reason(reason)
  if jax.process_index() == 0 and source.exists():
    os.replace(source, target)
  logging.warning("Checkpoint %s does not restore (%s); moved it to %s and fell back to the "
                  "next older checkpoint.", source, reason, target)
  return target


def _child(node: Any, key: str) -> Any:
  return node[int(key)] if isinstance(node, list) else node[key]


def _zeros(like: jax.ShapeDtypeStruct) -> Any:
  value = np.zeros(like.shape, like.dtype)
  sharding = getattr(like, "sharding", None)
  if sharding is None:
    return value
  return jax.make_array_from_callback(like.shape, sharding, lambda index: value[index])


def _layout_difference(directory: Path, step: int, target: Any
                       ) -> tuple[set[str], set[str]] | None:
  """``(missing on disk, not in target)`` field names, or None if the layout is unreadable."""
  try:
    stored = _stored_fields(directory, step)
  except Exception:  # pylint: disable=broad-except  (unreadable metadata: corrupt)
    return None
  wanted = set(ocp.tree.to_flat_dict(target, sep="."))
  return wanted - stored, stored - wanted


# ----------------------------------------------------------------------------- reading


def complete_steps(directory: str | os.PathLike) -> list[int]:
  """The steps of the complete checkpoints in ``directory``, newest first (it only reads).

  Complete means finalized as orbax defines it
  (:func:`orbax.checkpoint.utils.is_checkpoint_finalized`): a save in progress writes
  ``STEP.orbax-checkpoint-tmp-*`` and renames it to ``STEP`` when done (where renames are
  not atomic, e.g. on GCS, ``commit_success.txt`` marks it instead). Set-aside
  ``corrupt-STEP`` directories are not steps.
  """
  directory = Path(directory)
  if not directory.is_dir():
    return []
  steps = [int(path.name) for path in directory.iterdir()
           if path.name.isdigit() and path.is_dir() and ocp.utils.is_checkpoint_finalized(path)]
  return sorted(steps, reverse=True)


def _restore_items(step_dir: Path, **items: Any) -> dict[str, Any]:
  """The named items of one step directory, read by a plain orbax checkpointer: unlike a
  ``CheckpointManager`` it creates, tidies and deletes nothing."""
  reader = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    return reader.restore(step_dir, args=ocp.args.Composite(**items))
  finally:
    reader.close()


def _stored_tree(directory: Path, step: int) -> Any:
  """The stored state's tree of array metadata (shapes and dtypes, no arrays read)."""
  return ocp.StandardCheckpointer().metadata(directory / str(step) / "state").item_metadata.tree


def _stored_fields(directory: Path, step: int) -> set[str]:
  return set(ocp.tree.to_flat_dict(_stored_tree(directory, step), sep="."))


def _read(directory: Path, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
  """``(state, meta)`` of checkpoint ``step`` into ``target``'s structure (None: as stored,
  on this process's default device)."""
  if target is None:
    placement = jax.device_put(np.zeros((), np.int32)).sharding
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=placement),
                          _stored_tree(directory, step))
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = _restore_items(directory / str(step), state=ocp.args.StandardRestore(abstract),
                            meta=ocp.args.JsonRestore())
  return restored["state"], dict(restored["meta"])


def _read_with_zeros(directory: Path, step: int, target: Any, missing: Iterable[str]
                     ) -> tuple[Any, dict[str, Any]]:
  """:func:`_read` into ``target``'s structure, the fields ``missing`` on disk set to zeros
  (with ``target``'s shapes, dtypes and shardings)."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  present = ocp.tree.serialize_tree(abstract)  # nested dicts and lists, as stored
  zeros = {}
  for name in missing:
    *parents, leaf = name.split(".")
    node = functools.reduce(_child, parents, present)
    zeros[name] = _zeros(node.pop(leaf))
  state, meta = _read(directory, step, present)
  for name, value in zeros.items():
    *parents, leaf = name.split(".")
    functools.reduce(_child, parents, state)[leaf] = value
  return ocp.tree.deserialize_tree(state, target), meta


def read_meta(directory: str | os.PathLike, step: int) -> dict[str, Any]:
  """The JSON metadata of checkpoint ``step`` in ``directory``, without its arrays;
  read-only, like :func:`read_checkpoint`."""
  return dict(_restore_items(Path(directory) / str(step), meta=ocp.args.JsonRestore())["meta"])


def read_checkpoint(directory: str | os.PathLike, step: int, target: Any = None
                    ) -> tuple[Any, dict[str, Any]]:
  """``(state, meta)`` of checkpoint ``step``: the one read of a checkpoint's state.

  Read-only and lock-free: no ``CheckpointManager`` is opened, so nothing in
  ``directory`` is created, tidied or moved, and a complete checkpoint reads while another
  process trains there. :func:`restore_latest` (training and evaluation),
  :func:`restore_state` and :func:`vaejax.load_run` all read through it.

  Args:
    directory: a checkpoint directory (``WORKDIR/checkpoints``).
    step: a complete checkpoint's step (:func:`complete_steps`).
    target: a state pytree (or its ``jax.ShapeDtypeStruct`` leaves) giving the structure,
      shapes, dtypes and placement; None = the state as stored (nested dicts and lists of
      arrays) on this process's default device.

  Raises:
    LayoutMismatch: the checkpoint holds other train-state fields than ``target`` beyond
      :data:`ADDED_FIELDS` (those are read as zeros, with one warning).
    Exception: orbax's error for a checkpoint that does not read (a truncated array file,
      garbage metadata, a missing item).
  """
  directory = Path(directory)
  try:
    return _read(directory, step, target)
  except Exception as error:  # pylint: disable=broad-except  (classified below)
    failure = error
  _drop_closed_loop_callbacks()
  difference = None if target is None else _layout_difference(directory, step, target)
  if difference is None or not any(difference):
    raise failure
  missing, unexpected = difference
  added = {name for name in missing if name.rsplit(".", 1)[-1] in ADDED_FIELDS}
  if unexpected or missing - added:
    raise LayoutMismatch(
        f"Checkpoint {directory / str(step)} was written by a version of vaejax with "
        f"other train-state fields (missing: {sorted(missing - added) or 'none'}; not "
        f"expected: {sorted(unexpected) or 'none'}). Resume it with the version that "
        f"wrote it, or train in a new workdir; nothing was moved.")
  state, meta = _read_with_zeros(directory, step, target, added)
  logging.warning("Checkpoint %s predates train-state field(s) %s; resuming with them at "
                  "zero.", directory / str(step), ", ".join(sorted(added)))
  return state, meta


def latest_resumable_step(
    directory: str | os.PathLike, config: Mapping[str, Any],
    points: Sequence[Mapping[str, Any]] = ({},),
    ignore: Iterable[str] = config_lib.RESUMABLE_KEYS,
) -> int | None:
  """The newest checkpoint step in ``directory`` whose metadata reads (None if none), after
  checking that ``config`` (a plain dict) and the grid ``points`` may continue it.

  Checkpoints whose metadata does not read are quarantined (:func:`quarantine`); the
  leftovers of saves that did not finish are removed first (call it holding the workdir
  lock).
  """
  directory = Path(directory)
  if not directory.exists():
    return None
  if jax.process_index() == 0:
    failures.remove_unfinished_saves(directory)
  for step in complete_steps(directory):
    try:
      with failures.quiet_orbax():
        meta = read_meta(directory, step)
      saved_config = meta["config"]
    except Exception as error:  # pylint: disable=broad-except  (any read failure: corrupt)
      quarantine(directory, step, error)
      continue
    where = str(directory / str(step))
    config_lib.check_resumable(saved_config, config, where, ignore)
    check_points(meta.get("points"), points, where)
    return step
  return None


def restore_latest(directory: str | os.PathLike, target: Any
                   ) -> tuple[Any, dict[str, Any], int] | None:
  """``(state, meta, step)`` of the newest checkpoint that restores into ``target``'s
  structure (:func:`read_checkpoint`), quarantining those that do not read; None when none
  is left.

  Raises:
    LayoutMismatch: the newest readable checkpoint holds other train-state fields than
      ``target`` (beyond :data:`ADDED_FIELDS`, which restore as zeros).
  """
  directory = Path(directory)
  for step in complete_steps(directory):
    try:
      with failures.quiet_orbax():
        state, meta = read_checkpoint(directory, step, target)
    except LayoutMismatch:
      raise
    except Exception as error:  # pylint: disable=broad-except  (unreadable: moved aside)
      quarantine(directory, step, error)
      continue
    return state, meta, step
  return None


def restore_state(directory: str | os.PathLike, step: int | None = None
                  ) -> tuple[Any, dict[str, Any], int]:
  """``(state as nested dicts of arrays, meta, step)`` of checkpoint ``step`` (default:
  the newest) in ``directory``, without a target (for inspecting a finished run)."""
  directory = Path(directory)
  steps = complete_steps(directory)
  if not steps:
    raise FileNotFoundError(f"No checkpoints in {directory.resolve()}: train the run first.")
  step = steps[0] if step is None else step
  state, meta = read_checkpoint(directory, step)
  return state, meta, int(step)
