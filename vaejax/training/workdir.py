"""Work directories: checked before anything runs, and held by one process at a time.

:func:`check_workdir` refuses an empty path, a path that is a file and a directory that
cannot be written (probed by creating a file), each in one line naming the path and the
fix. :class:`WorkdirLock` makes a second process that starts on the same workdir refuse at
once, naming the holder, instead of interleaving its logs and checkpoints with the first
one's. The lock file ``DIR/.vaejax.lock`` holds the holder's host, pid and start time; a
thread refreshes its modification time every :data:`HEARTBEAT_SECONDS`. A lock is *stale*
when its holder is gone: on the same host its pid is dead, or its heartbeat is older than
:data:`STALE_SECONDS` (a holder on another host, or a frozen one); a stale lock is taken
over with a warning. In a multi-process run only process 0 takes the lock.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import jax
from absl import logging
from typing_extensions import Self

LOCK_FILE = ".vaejax.lock"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0  # no heartbeat for 5 minutes: the holder is gone


class WorkdirError(ValueError):
  """A workdir that cannot be used (a ValueError: reported as one line by the CLI)."""


class WorkdirLockedError(WorkdirError):
  """Another live process holds the workdir."""


def check_workdir(workdir: str | os.PathLike | None, *, create: bool = True) -> Path:
  """The resolved workdir, created and probed for writing, or one :class:`WorkdirError`.

  Args:
    workdir: the path given by the user.
    create: create it (and its parents) when missing; else it must exist.
  """
  if workdir is None or not str(workdir).strip():
    raise WorkdirError("--workdir is empty; give the directory for logs and checkpoints, "
                       "e.g. --workdir=runs/my_run.")
  path = Path(workdir).expanduser().resolve()
  if path.exists() and not path.is_dir():
    raise WorkdirError(f"--workdir {path} is a file, not a directory; choose another path.")
  if not path.exists():
    if not create:
      raise WorkdirError(f"--workdir {path} does not exist; give a run's directory.")
    try:
      path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
      raise WorkdirError(f"Cannot create --workdir {path} ({error.strerror}); choose a "
                         "writable location.") from None
  probe = path / f".write-probe-{os.getpid()}"
  try:
    probe.write_text("")
    probe.unlink()
  except OSError as error:
    raise WorkdirError(f"Cannot write to --workdir {path} ({error.strerror}); fix its "
                       "permissions or choose a writable location.") from None
  return path


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, owned by someone else
    return True
  return True


def read_lock(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The lock's holder (``host``, ``pid``, ``started``, ``age``: seconds since its last
  heartbeat), or None when the workdir is not locked."""
  path = Path(workdir) / LOCK_FILE
  try:
    holder = json.loads(path.read_text())
    holder["age"] = time.time() - path.stat().st_mtime
    return holder
  except FileNotFoundError:
    return None
  except (json.JSONDecodeError, OSError):
    return {"host": "?", "pid": -1, "started": 0.0, "age": time.time() - _mtime(path)}


def _mtime(path: Path) -> float:
  try:
    return path.stat().st_mtime
  except OSError:
    return 0.0


def is_stale(holder: dict[str, Any]) -> bool:
  """Whether a lock's holder is gone (dead pid on this host, or no heartbeat for long)."""
  if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
    return True
  return holder.get("age", 0.0) > STALE_SECONDS


class WorkdirLock:
  """Holds ``DIR/.vaejax.lock`` while a run (or an evaluation writing into it) works.

  Use as a context manager; only process 0 of a multi-process run takes the lock (the
  others share its run). Raises :class:`WorkdirLockedError` when a live process holds it.

  Args:
    workdir: the (checked) work directory.
    purpose: what the holder does, shown to a second process (e.g. "training").
  """

  def __init__(self, workdir: str | os.PathLike, purpose: str = "training"):
    self.path = Path(workdir) / LOCK_FILE
    self.purpose = purpose
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._held = False

  def _create(self) -> bool:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
              "purpose": self.purpose}
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(record, f)
    return True

  def acquire(self) -> Self:
    """Takes the lock (process 0); every process of a multi-process run learns whether it
    could, so all of them stop when it is held elsewhere."""
    error = None
    if jax.process_index() == 0:
      try:
        self._acquire_here()
      except WorkdirLockedError as locked:
        error = locked
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      import numpy as np  # pylint: disable=g-import-not-at-top
      taken = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
      if not taken and error is None:
        error = WorkdirLockedError(f"The workdir {self.path.parent} is in use: process 0 could "
                                   "not take its lock (see process 0's error).")
    if error is not None:
      raise error
    return self

  def _take_over(self, holder: dict[str, Any]) -> bool:
    """Replaces a stale lock; only one of several processes racing to do so wins (the one
    that creates the takeover marker)."""
    marker = self.path.with_name(LOCK_FILE + ".takeover")
    try:
      fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      if time.time() - _mtime(marker) < HEARTBEAT_SECONDS:
        return False  # another process is taking over right now
      marker.unlink(missing_ok=True)  # a takeover that died half-way
      return self._take_over(holder)
    try:
      os.close(fd)
      current = read_lock(self.path.parent)
      if current is not None and (current.get("pid"), current.get("started")) != (
          holder.get("pid"), holder.get("started")):
        return False  # someone took it over meanwhile: it is not the stale lock any more
      logging.warning(
          "Taking over the stale lock of %s (held by pid %s on %s, last heartbeat %.0f s ago): "
          "that process is gone.", self.path.parent, holder.get("pid"), holder.get("host"),
          holder.get("age", 0.0))
      self.path.unlink(missing_ok=True)
      return self._create()
    finally:
      marker.unlink(missing_ok=True)

  def _acquire_here(self) -> None:
    if not self._create():
      holder = read_lock(self.path.parent)
      if holder is None or is_stale(holder):
        if self._create() if holder is None else self._take_over(holder):
          self._start()
          return
        holder = read_lock(self.path.parent) or {}
      raise WorkdirLockedError(
          f"The workdir {self.path.parent} is in use by process {holder.get('pid')} on host "
          f"{holder.get('host')} ({holder.get('purpose', 'a run')}, started "
          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))}); "
          f"wait for it to finish or use another --workdir (a lock without a heartbeat for "
          f"{STALE_SECONDS:.0f} s counts as stale and is taken over).")
    self._start()

  def _start(self) -> Self:
    self._held = True
    self._thread = threading.Thread(target=self._beat, name="vaejax-workdir-heartbeat",
                                    daemon=True)
    self._thread.start()
    return self

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        os.utime(self.path)
      except OSError:
        return

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    if self._held:
      self.path.unlink(missing_ok=True)
      self._held = False

  def __enter__(self) -> Self:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
