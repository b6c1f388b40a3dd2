"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the new one.

Every result file, figure, report and config a run writes goes through :func:`atomic_open`:
the bytes go to a temporary file beside the target, are flushed and fsynced, then renamed
over it (``os.replace`` is atomic on POSIX and Windows), and the directory entry is fsynced
so the rename itself survives a power cut. A failed write removes its temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]


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
    OSError: the write failed (disk full, permissions); ``path`` is left as it was.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open takes mode 'w' or 'wb', got {mode!r}.")
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
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
