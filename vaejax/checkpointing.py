"""Exact-resume checkpoints with orbax.

A checkpoint holds two items: ``state``, the whole train state pytree (parameters,
optimizer state, step, PRNG key, skip counters), and ``meta``, a JSON dict with the
data-iterator position and the config that produced the run. Orbax writes each step to a
temporary directory and renames it when complete, so a process killed mid-write leaves
the previous checkpoints readable; old checkpoints are deleted only after a newer one is
finalized, and at least two are kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from typing_extensions import Self

from vaejax import config_utils

CHECKPOINT_DIR = "checkpoints"


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
    self.directory = Path(directory).resolve()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        cleanup_tmp_directories=True,  # leftovers of a killed write
        enable_async_checkpointing=async_save,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "meta")
    )

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def read_meta(self, step: int) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without touching its arrays."""
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts writing checkpoint ``step`` (returns before the write completes)."""
    self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True,
    )

  def restore(self, step: int, target: Any = None) -> tuple[Any, dict[str, Any]]:
    """Restores ``(state, meta)`` of checkpoint ``step`` into the structure of ``target``.

    ``target`` is a state pytree of the same structure (e.g. a freshly initialised one);
    its arrays only give shapes and dtypes. Without it the state comes back as the
    nested dicts of arrays stored on disk (for inspection).
    """
    abstract = None if target is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], dict(restored["meta"])

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def latest_resumable_step(
    directory: str | os.PathLike, config: Mapping[str, Any],
    ignore: Iterable[str] = config_utils.RESUMABLE_KEYS,
) -> int | None:
  """The newest checkpoint step in ``directory`` (None if none), after checking that
  ``config`` (a plain dict) may continue it (:func:`vaejax.config_utils.check_resumable`)."""
  directory = Path(directory)
  if not directory.exists():
    return None
  with Checkpointer(directory) as probe:
    latest = probe.latest_step()
    if latest is not None:
      config_utils.check_resumable(probe.read_meta(latest)["config"], config,
                                   str(directory / str(latest)), ignore)
  return latest
