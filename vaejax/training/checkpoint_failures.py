"""How checkpoint failures read: one line each, and no leftovers.

Orbax and TensorStore report a failed read or write from every thread the failure passes
through (hundreds of lines of tracebacks for one full disk or one truncated file) and
then raise it. :mod:`vaejax.training.checkpoint` raises each failure as one error (a save)
or one warning (a corrupt checkpoint set aside); this module keeps the rest off the
console (:func:`drop_orbax_error_logs`, :func:`quiet_orbax`), says why in a few words
(:func:`short_reason`) and removes the temporary directories of saves that did not finish
(:func:`remove_unfinished_saves`).
"""

from __future__ import annotations

import contextlib
import json
import logging as std_logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from vaejax.utils import files

# How orbax names a step while it is written (then renamed to the step alone).
TMP_SUFFIX = ".orbax-checkpoint-tmp"


def _is_orbax(record: std_logging.LogRecord) -> bool:
  return f"{os.sep}orbax{os.sep}" in record.pathname


def drop_orbax_error_logs() -> None:
  """Orbax logs a failed background write as an exception (ERROR, with a traceback) in
  each thread it passes through (hundreds of lines for one full disk), then raises it;
  :class:`~vaejax.training.checkpoint.Checkpointer` raises that failure as one error, so
  those records are dropped. Orbax's warnings, and errors without a traceback, still show."""
  logger = std_logging.getLogger("absl")
  if any(getattr(f, "_vaejax_orbax_errors", False) for f in logger.filters):
    return

  def keep(record: std_logging.LogRecord) -> bool:
    return not (_is_orbax(record) and record.exc_info
                and std_logging.ERROR <= record.levelno < std_logging.CRITICAL)

  keep._vaejax_orbax_errors = True  # type: ignore[attr-defined]
  logger.addFilter(keep)


@contextlib.contextmanager
def quiet_orbax() -> Iterator[None]:
  """Keeps orbax's logs below CRITICAL off the console while a checkpoint is probed: a
  checkpoint that does not read gets one warning of ours instead
  (:func:`vaejax.training.checkpoint.quarantine`)."""

  def keep(record: std_logging.LogRecord) -> bool:
    return not (_is_orbax(record) and record.levelno < std_logging.CRITICAL)

  logger = std_logging.getLogger("absl")
  logger.addFilter(keep)
  try:
    yield
  finally:
    logger.removeFilter(keep)


def short_reason(error: BaseException) -> str:
  """Why a checkpoint does not read or write, in a few words."""
  text = " ".join(str(error).split())
  if files.is_disk_full(error):
    return "no space left on the device"
  if isinstance(error, json.JSONDecodeError) or "Expecting value" in text:
    return "its metadata is not valid JSON"
  if "was not found in the checkpoint" in text:
    missing = text.split('"')[1] if text.count('"') >= 2 else "an item"
    return f"its {missing}/ item is missing"
  if "error while reading array" in text or "DATA_LOSS" in text or "OUT_OF_RANGE" in text:
    return "its array data are truncated or damaged"
  if isinstance(error, FileNotFoundError):
    return f"file missing: {getattr(error, 'filename', None) or text}"
  first = text.split(". ")[0].split("See full")[0].strip()
  return (first[:120] + "…") if len(first) > 120 else first or type(error).__name__


def remove_unfinished_saves(directory: str | os.PathLike, step: int | None = None) -> None:
  """Removes the temporary directories of checkpoint saves that did not finish (of
  ``step``, or all), quietly. Call it holding the workdir lock: a live run's save in
  progress looks the same."""
  directory = Path(directory)
  pattern = f"*{TMP_SUFFIX}*" if step is None else f"{step}{TMP_SUFFIX}*"
  for leftover in directory.glob(pattern):
    if leftover.is_dir():
      shutil.rmtree(leftover, ignore_errors=True)
    else:
      with contextlib.suppress(OSError):
        leftover.unlink()
