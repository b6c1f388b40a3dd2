"""Metric writers: one interface fanned out to JSONL, TensorBoard and progress (clu's pattern).

Every logged step produces one *row* per model (a dict with ``step``, ``loss``, ...;
vectors such as ``kl_per_dim`` as lists). :class:`MetricWriter` has one method that
matters, ``write_rows(step, rows)``; :class:`MultiWriter` hands each call to several:

* :class:`JsonlWriter`: ``DIR/metrics.jsonl``, one JSON object per row;
* :class:`TensorBoardWriter`: event files (one run per model of a stack, so
  TensorBoard overlays their curves);
* :class:`ProgressWriter`: a tqdm bar with rate and ETA on a terminal, else one log line
  per logged step.

On resume the rows past the restored step are dropped (and TensorBoard purges them), so
the logs read like a run that never stopped; evaluations finished on resume (a stop cut
them short) are merged into their step's rows (:meth:`MetricWriter.merge_rows`). clu's own
writers need TensorFlow; these do not. Only process 0 of a multi-process run writes
(:func:`create_writers`). A write that fails for a full disk raises
:class:`vaejax.utils.files.DiskFullError` naming the file (TensorBoard's, written in a
background thread, at the next logged step or flush).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from vaejax.utils import files
from vaejax.utils import progress as progress_lib

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
HISTOGRAM_PREFIX = "hist/"  # row keys only TensorBoard writes, as histograms
Row = Mapping[str, Any]
# Row fields that identify a model rather than measure it: not TensorBoard scalars.
_IDENTITY = ("step", "model", "point", "group", "active", "masked_at")
# Fields that say which model's row it is (a single run's rows have none).
_ROW_KEY = ("model", "group")


def to_python(value: Any) -> Any:
  """Numbers and arrays → JSON-ready Python values (exact: float32 → float64 is lossless)."""
  if isinstance(value, Mapping):
    return {k: to_python(v) for k, v in value.items()}
  if isinstance(value, (str, type(None))):
    return value
  array = np.asarray(value)
  if array.ndim > 0:
    return array.tolist()
  return array.item()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The rows of a JSONL file; a torn last line (a run killed mid-write) is skipped."""
  path = Path(path)
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows


def write_jsonl(path: str | os.PathLike, rows: Sequence[Row]) -> None:
  """Writes ``rows`` atomically (temp file, fsync, rename)."""
  with files.atomic_open(path) as f:
    f.writelines(json.dumps(to_python(row)) + "\n" for row in rows)


def merge_jsonl(path: str | os.PathLike, rows: Sequence[Row]) -> None:
  """Merges each of ``rows`` into the last row of ``path`` with the same ``step`` (and
  ``model`` and ``group``, where rows have them), or appends it where there is none.
  Atomic."""
  path = Path(path)
  existing = read_jsonl(path)
  for row in rows:
    row = to_python({k: v for k, v in row.items() if not k.startswith(HISTOGRAM_PREFIX)})
    key = tuple(row.get(k) for k in ("step", *_ROW_KEY))
    match = next((r for r in reversed(existing)
                  if tuple(r.get(k) for k in ("step", *_ROW_KEY)) == key), None)
    if match is None:
      existing.append(row)
    else:
      match.update(row)
  write_jsonl(path, existing)


def rewound_path(path: str | os.PathLike) -> Path:
  """Where :func:`truncate_jsonl` keeps the rows it takes out of ``path``."""
  path = Path(path)
  return path.with_name(f"{path.stem}.rewound{path.suffix}")


def truncate_jsonl(path: str | os.PathLike, last_step: int,
                   owns: Callable[[Row], bool] = lambda row: True) -> int:
  """Takes the rows ``owns`` claims whose ``step`` is past ``last_step`` out of ``path``
  (a run resuming from an older checkpoint logs those steps again) and appends them to
  :func:`rewound_path`, so no logged row is lost; drops torn lines. Atomic; returns the
  number of rows kept."""
  path = Path(path)
  if not path.exists():
    return 0
  rows = read_jsonl(path)
  kept = [row for row in rows if not owns(row) or row.get("step", math.inf) <= last_step]
  if len(kept) < len(rows):
    rewound = [row for row in rows if owns(row) and row.get("step", math.inf) > last_step]
    archive = rewound_path(path)
    write_jsonl(archive, read_jsonl(archive) + rewound)
    # Expected after any stop: the rows are kept, so this is no warning.
    logging.info("%s: %d row(s) past step %d moved to %s (the run continues from step %d).",
                 path, len(rewound), last_step, archive, last_step)
  write_jsonl(path, kept)
  return len(kept)


class MetricWriter:
  """The interface: ``write_rows`` per logged step, ``flush`` and ``close``."""

  def write_rows(self, step: int, rows: Sequence[Row]) -> None:
    raise NotImplementedError

  def merge_rows(self, step: int, rows: Sequence[Row]) -> None:
    """Adds ``rows`` (more results of ``step``, e.g. evaluations finished on resume) to the
    rows already written at ``step``."""
    self.write_rows(step, rows)

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class MultiWriter(MetricWriter):
  """Hands every call to each of ``writers`` in turn."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self.writers = list(writers)

  def write_rows(self, step, rows):
    for writer in self.writers:
      writer.write_rows(step, rows)

  def merge_rows(self, step, rows):
    for writer in self.writers:
      writer.merge_rows(step, rows)

  def flush(self):
    for writer in self.writers:
      writer.flush()

  def close(self):
    for writer in self.writers:
      writer.close()


class JsonlWriter(MetricWriter):
  """One JSON object per row, appended to ``path`` and flushed every call.

  Args:
    path: the JSONL file.
    start_step: the step the run resumes from; rows past it that ``owns`` claims (by
      default: all) are dropped first.
    owns: which existing rows belong to this run (e.g. one group of a sweep).
  """

  def __init__(self, path: str | os.PathLike, start_step: int,
               owns: Callable[[Row], bool] = lambda row: True):
    self.path = Path(path)
    truncate_jsonl(self.path, start_step, owns)
    self._file = open(self.path, "a")  # noqa: SIM115  (closed by close())

  def write_rows(self, step, rows):
    lines = "".join(json.dumps(to_python({k: v for k, v in row.items()
                                          if not k.startswith(HISTOGRAM_PREFIX)})) + "\n"
                    for row in rows)
    with files.raising_disk_full(self.path):
      self._file.write(lines)
      self._file.flush()

  def merge_rows(self, step, rows):
    self.close()
    merge_jsonl(self.path, rows)
    self._file = open(self.path, "a")  # noqa: SIM115  (closed by close())

  def flush(self):
    with files.raising_disk_full(self.path):
      self._file.flush()

  def close(self):
    with files.raising_disk_full(self.path):
      self._file.close()


class TensorBoardWriter(MetricWriter):
  """Scalars of every row as TensorBoard events (vectors as ``key/00``, ``key/01``, ...).

  Args:
    logdir: the event directory.
    start_step: events past it (left by a killed run) are purged.
    per_model: one sub-run per model (``m000``, ``m001``, ... by the rows' ``model``).
  """

  def __init__(self, logdir: str | os.PathLike, start_step: int, per_model: bool = False):
    self.logdir = Path(logdir)
    self._start = start_step
    self._per_model = per_model
    self._writers: dict[str, Any] = {}
    self._failed: BaseException | None = None  # the first failed write of any event file

  def _raise_failure(self) -> None:
    """Raises the first failed write of the event writers' background thread (a full disk
    as one DiskFullError naming the event directory)."""
    if self._failed is None:
      return
    error, self._failed = self._failed, None
    if files.is_disk_full(error):
      raise files.DiskFullError(self.logdir, files.free_bytes(self.logdir),
                                f"TensorBoard events in {self.logdir}") from None
    raise error

  def _keep_failures(self, writer: Any) -> None:
    """tensorboardX writes events in a background thread that a failed write (a full disk)
    ends, after which its bounded queue fills and the run would hang. The thread's file
    writes are wrapped so that a failure is kept (for :meth:`_raise_failure`, in the main
    thread) and the thread goes on, dropping the events that no longer fit."""
    events = getattr(getattr(writer._get_file_writer(), "event_writer", None), "_ev_writer",
                     None)
    if events is None:  # another tensorboardX layout: its thread reports failures itself
      return
    for method in ("write_event", "flush"):
      original = getattr(events, method)

      def guarded(*args, _original=original):
        if self._failed is not None:
          return None
        try:
          return _original(*args)
        except Exception as error:  # pylint: disable=broad-except  (raised in the main thread)
          self._failed = error
          return None

      setattr(events, method, guarded)

  def _writer(self, name: str):
    self._raise_failure()
    if name not in self._writers:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      # purge_step makes TensorBoard discard the events (step >= purge_step) that a
      # killed run wrote past the step it resumes from.
      writer = SummaryWriter(str(self.logdir / name) if name else str(self.logdir),
                             purge_step=self._start + 1)
      self._keep_failures(writer)
      self._writers[name] = writer
    return self._writers[name]

  def write_rows(self, step, rows):
    for row in rows:
      writer = self._writer(f"m{int(row['model']):03d}" if self._per_model else "")
      for key, value in row.items():
        if key in _IDENTITY:
          continue
        if key.startswith(HISTOGRAM_PREFIX) or key.endswith("kl_per_dim"):
          name = key[len(HISTOGRAM_PREFIX):] if key.startswith(HISTOGRAM_PREFIX) else key
          values = np.asarray(value, np.float64)
          if values.size and np.isfinite(values).all():
            writer.add_histogram(name, values, step)
          if key.startswith(HISTOGRAM_PREFIX):
            continue
        if isinstance(value, list):
          for i, v in enumerate(value):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
              writer.add_scalar(f"{key}/{i:02d}", v, step)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
          writer.add_scalar(key, value, step)

  def flush(self):
    with files.raising_disk_full(self.logdir, f"TensorBoard events in {self.logdir}"):
      for writer in self._writers.values():
        writer.flush()
    self._raise_failure()

  def close(self):
    with files.raising_disk_full(self.logdir, f"TensorBoard events in {self.logdir}"):
      for writer in self._writers.values():
        writer.close()
    self._raise_failure()


class ProgressWriter(MetricWriter):
  """Training progress (:class:`vaejax.utils.progress.Progress`): a bar with rate, ETA and
  a summary of the last rows on a terminal, else one log line per logged step.

  Args:
    start_step, total_steps: the bar's range.
    enabled: show a bar; None = when stderr is a terminal.
    label: prefixed to log lines and the bar (e.g. "group 2/3").
  """

  SUMMARY_KEYS = ("loss", "recon", "kl", "eval/elbo", "eval/active_units", "skips")

  def __init__(self, start_step: int, total_steps: int, enabled: bool | None = None,
               label: str = ""):
    self._progress = progress_lib.Progress(total_steps, initial=start_step, label=label,
                                           unit="step", enabled=enabled)

  def advance(self, steps: int = 1) -> None:
    self._progress.advance(steps)

  @classmethod
  def summary(cls, rows: Sequence[Row]) -> str:
    """``loss=103.2 kl=12.1 ...`` for one row; active models and the loss range for many."""
    if len(rows) == 1 and "model" not in rows[0]:
      parts = []
      for key in cls.SUMMARY_KEYS:
        value = rows[0].get(key)
        if isinstance(value, float):
          parts.append(f"{key}={value:.4g}")
        elif isinstance(value, int) and not isinstance(value, bool):
          parts.append(f"{key}={value}")
      return " ".join(parts)
    losses = [r["loss"] for r in rows if r.get("active", True)]
    if not losses:
      return f"0/{len(rows)} active: all models masked"
    return (f"{len(losses)}/{len(rows)} active, loss {np.nanmin(losses):.4g}..."
            f"{np.nanmax(losses):.4g}")

  def merge_rows(self, step, rows):
    del step, rows  # the step's own line was shown when it was logged

  def write_rows(self, step, rows):
    summary = self.summary(rows)
    if not self._progress.enabled:  # a log line says which step and how fast
      rate = rows[0].get("steps_per_sec", math.nan) if rows else math.nan
      summary = f"step {step}: {summary} ({rate:.2f} steps/s)"
    self._progress.report(summary)

  def close(self):
    self._progress.close()


def create_writers(workdir: str | os.PathLike, start_step: int, total_steps: int, *,
                   stacked: bool, owns: Callable[[Row], bool] = lambda row: True,
                   progress: bool | None = None, label: str = "") -> tuple[MultiWriter,
                                                                           ProgressWriter]:
  """The writers of a run: JSONL, TensorBoard and progress (files on process 0 only).

  Returns the :class:`MultiWriter` and its :class:`ProgressWriter` (to ``advance``).
  """
  workdir = Path(workdir)
  is_writer = jax.process_index() == 0
  bar = ProgressWriter(start_step, total_steps, progress if is_writer else False, label)
  writers: list[MetricWriter] = [bar]
  if is_writer:
    writers = [JsonlWriter(workdir / METRICS_FILE, start_step, owns),
               TensorBoardWriter(workdir / TENSORBOARD_DIR, start_step, per_model=stacked),
               bar]
  return MultiWriter(writers), bar
