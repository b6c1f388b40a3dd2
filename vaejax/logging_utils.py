"""Run logs: ``metrics.jsonl``, TensorBoard event files and a progress bar.

``DIR/metrics.jsonl`` holds one JSON object per logged step (``step``, ``loss`` and the
other measurements; vectors such as ``kl_per_dim`` as lists). On resume the rows past
the restored step are dropped and TensorBoard is told to purge them too, so both read
like a run that never stopped.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging
from typing_extensions import Self

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def to_python(value: Any) -> Any:
  """Numbers and arrays → JSON-ready Python values (exact: float32 → float64 is lossless)."""
  if isinstance(value, Mapping):
    return {k: to_python(v) for k, v in value.items()}
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


def truncate_jsonl(path: str | os.PathLike, last_step: int) -> int:
  """Keeps only complete rows with ``step <= last_step``, atomically; returns rows kept."""
  path = Path(path)
  if not path.exists():
    return 0
  kept = [row for row in read_jsonl(path) if row.get("step", math.inf) <= last_step]
  tmp = path.with_suffix(path.suffix + ".tmp")
  with open(tmp, "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in kept)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return len(kept)


def format_row(row: Mapping[str, Any], keys: tuple[str, ...]) -> str:
  """A short human-readable summary of a row, e.g. ``loss=103.2 kl=12.1``."""
  parts = []
  for key in keys:
    value = row.get(key)
    if isinstance(value, float):
      parts.append(f"{key}={value:.4g}")
    elif isinstance(value, int):
      parts.append(f"{key}={value}")
  return " ".join(parts)


def hide_info_logs_from(*packages: str) -> None:
  """Drops absl INFO logs emitted from ``packages`` (e.g. orbax's per-save chatter).

  For command-line entry points; warnings and errors still show.
  """
  import logging as std_logging  # pylint: disable=g-import-not-at-top

  markers = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

  def keep(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        m in record.pathname for m in markers)

  logging.get_absl_handler().addFilter(keep)


class MetricLogger:
  """Writes metrics to JSONL and TensorBoard and drives a tqdm progress bar.

  Args:
    workdir: the run directory.
    start_step: the step training starts (or resumes) from; rows past it are dropped.
    total_steps: the step training ends at, for the progress bar's ETA.
    progress: show a progress bar; None = only when stderr is a terminal.
  """

  SUMMARY_KEYS = ("loss", "recon", "kl", "eval/elbo", "eval/active_units", "skips")

  def __init__(
      self,
      workdir: str | os.PathLike,
      start_step: int,
      total_steps: int,
      progress: bool | None = None,
  ):
    import tqdm  # pylint: disable=g-import-not-at-top
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    self.workdir = Path(workdir)
    self.path = self.workdir / METRICS_FILE
    truncate_jsonl(self.path, start_step)
    self._file = open(self.path, "a")  # noqa: SIM115  (closed by close())
    # purge_step makes TensorBoard discard the events (step >= purge_step) that a killed
    # run wrote past the step it resumes from.
    self._tb = SummaryWriter(str(self.workdir / TENSORBOARD_DIR), purge_step=start_step + 1)
    if progress is None:
      progress = sys.stderr.isatty()
    self._bar = tqdm.tqdm(
        total=total_steps, initial=start_step, disable=not progress, unit="step",
        dynamic_ncols=True, smoothing=0.1,
    )
    self._last_time, self._last_step = time.perf_counter(), start_step

  def advance(self, steps: int = 1) -> None:
    self._bar.update(steps)

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Appends one row (with ``step`` and ``steps_per_sec``) and returns it."""
    now = time.perf_counter()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_time, self._last_step = now, step
    row = {"step": int(step), **to_python(metrics), "steps_per_sec": rate}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    for key, value in row.items():
      if key == "step":
        continue
      if isinstance(value, list):
        for i, v in enumerate(value):
          if isinstance(v, (int, float)):
            self._tb.add_scalar(f"{key}/{i:02d}", v, step)
      elif isinstance(value, (int, float)):
        self._tb.add_scalar(key, value, step)
    summary = format_row(row, self.SUMMARY_KEYS)
    if self._bar.disable:
      logging.info("step %d: %s (%.1f steps/s)", step, summary, rate)
    else:
      self._bar.set_postfix_str(summary, refresh=True)
    return row

  def flush(self) -> None:
    self._file.flush()
    self._tb.flush()

  def close(self) -> None:
    self._bar.close()
    self._file.close()
    self._tb.close()

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
