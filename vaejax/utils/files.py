"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the new one.

Every result file, figure, report and config a run writes goes through :func:`atomic_open`:
the bytes go to a temporary file beside the target, are flushed and fsynced, then renamed
over it (``os.replace`` is atomic on POSIX and Windows), and the directory entry is fsynced
so the rename itself survives a power cut. A failed write removes its temporary file.

A write that fails for lack of space (``ENOSPC``, or ``EDQUOT``: over quota) raises
:class:`DiskFullError`, one line naming the file and the space left on its file system;
:func:`raising_disk_full` gives the same error to writers that append (metrics rows).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from vaejax.utils import faults

__all__ = ["DiskFullError", "atomic_open", "atomic_write_bytes", "atomic_write_json",
           "atomic_write_text", "format_bytes", "free_bytes", "is_disk_full",
           "raising_disk_full"]

# errno values that mean "no room": the device is full, or the user's quota is.
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
# How libraries that do not raise OSError (TensorStore under orbax) report it.
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")


class DiskFullError(OSError):
  """A write failed because its file system is full: names the path and the free space.

  >>> str(DiskFullError("/runs/a/metrics.jsonl", free=4096))
  'No space left to write /runs/a/metrics.jsonl (4.0 KiB free on its file system)'

  Args:
    path: the file (or folder) that could not be written.
    free: bytes free on its file system (None: unknown).
    what: how to name it in the message (default: ``path``).
    note: appended to the message (e.g. which checkpoint is still good).
  """

  def __init__(self, path: str | os.PathLike, free: int | None = None, what: str = "",
               note: str = ""):
    self.path, self.free = Path(path), free
    room = "free space unknown" if free is None else f"{format_bytes(free)} free"
    super().__init__(errno.ENOSPC,
                     f"No space left to write {what or path} ({room} on its file system){note}")

  def __str__(self) -> str:
    return str(self.strerror)


def format_bytes(size: int) -> str:
  """``1536`` → ``"1.5 KiB"`` (binary units, one decimal).

  >>> format_bytes(0), format_bytes(2 * 2**20)
  ('0 B', '2.0 MiB')
  """
  if size < 1024:
    return f"{size} B"
  value = float(size)
  for unit in ("KiB", "MiB", "GiB", "TiB"):
    value /= 1024
    if value < 1024 or unit == "TiB":
      break
  return f"{value:.1f} {unit}"


def free_bytes(path: str | os.PathLike) -> int | None:
  """Bytes free on the file system of ``path`` (its nearest existing folder); None if
  it cannot be asked."""
  for folder in (Path(path), *Path(path).parents):
    try:
      return shutil.disk_usage(folder).free
    except OSError:
      continue
  return None


def is_disk_full(error: BaseException) -> bool:
  """Whether ``error`` (or an error it was raised from) reports a full disk or quota."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _NO_SPACE:
      return True
    if any(text in str(error) for text in _NO_SPACE_TEXT):
      return True
    error = error.__cause__ or error.__context__
  return False


@contextlib.contextmanager
def raising_disk_full(path: str | os.PathLike, what: str = "") -> Iterator[None]:
  """Turns an error of a full disk inside the block into :class:`DiskFullError` naming
  ``path`` (or ``what``) and the free space; other errors pass unchanged."""
  try:
    yield
  except DiskFullError:
    raise
  except OSError as error:
    if not is_disk_full(error):
      raise
    raise DiskFullError(path, free_bytes(path), what) from error


def _fsync_dir(directory: Path) -> None:
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:  # some file systems (and Windows) do not open directories
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *,
                encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
  """Opens a temporary file for writing; on a clean exit it replaces ``path``.

  >>> import pathlib, tempfile
  >>> target = pathlib.Path(tempfile.mkdtemp()) / "out" / "note.txt"
  >>> with atomic_open(target) as f:
  ...   _ = f.write("done\\n")
  >>> target.read_text()
  'done\\n'

  Args:
    path: the file to (re)write; missing parent folders are created.
    mode: ``"w"`` (text) or ``"wb"`` (bytes).
    encoding: the text encoding (ignored for ``"wb"``).

  Raises:
    ValueError: ``mode`` is neither ``"w"`` nor ``"wb"``.
    DiskFullError: no space left (an OSError); ``path`` is left as it was.
    OSError: the write failed otherwise (permissions); ``path`` is left as it was.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open takes mode 'w' or 'wb', got {mode!r}.")
  path = Path(path)
  with raising_disk_full(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
      with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
      faults.point("write", path.name)  # tests: a crash with the bytes on disk, not renamed
      os.replace(tmp, path)
    except BaseException:
      with contextlib.suppress(OSError):
        os.unlink(tmp)
      raise
  _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
  """Writes ``text`` (UTF-8) to ``path`` atomically; returns the path."""
  with atomic_open(path, "w") as f:
    f.write(text)
  return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
  """Writes ``data`` to ``path`` atomically; returns the path."""
  with atomic_open(path, "wb") as f:
    f.write(data)
  return Path(path)


def atomic_write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 2,
                      sort_keys: bool = True) -> Path:
  """Writes ``value`` as JSON (one trailing newline) to ``path`` atomically."""
  return atomic_write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n")
