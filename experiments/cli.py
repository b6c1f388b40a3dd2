"""What every entry point shares: absl flag parsing, errors and stops as one line.

A bad flag, config file (a syntax error: its file and line), preset or
``--config.KEY=VALUE`` override, and the library's input errors (ValueError, KeyError,
FileNotFoundError, ...), end the program with one ``error: ...`` line instead of a
traceback; ``--traceback`` shows the full trace. So does a write that finds the disk full
(the path and the free space) or a checkpoint that cannot be written. SIGTERM and SIGINT
stop the command within seconds, wherever it is (training, evaluation, figures, report):
one line saying what was kept, exit status 143 / 130 (:mod:`vaejax.utils.stopping`).
"""

from __future__ import annotations

import logging as std_logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

from absl import app, flags, logging

from vaejax.training import checkpoint, distributed, loop
from vaejax.utils.files import DiskFullError
from vaejax.utils.stopping import StopRequested, StopSignals

T = TypeVar("T")

TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the full traceback of input errors.")
COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-process runs: host:port of process 0 (passed to jax.distributed.initialize). "
    "Omitted: a single process, or the cluster JAX detects itself (SLURM, Cloud TPU).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process runs: processes.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index.")
INPUT_ERRORS = (ValueError, KeyError, FileNotFoundError, loop.NonFiniteError)
# Errors of writing that say everything in one line, and what re-running then does.
WRITE_ERRORS = (DiskFullError, checkpoint.CheckpointWriteError)
RERUN = ("re-run the same command once there is room: it resumes from the newest complete "
         "checkpoint")


def _innermost_message(error: BaseException) -> str:
  """The message of the innermost wrapped exception, on one line."""
  message = error
  while isinstance(message, BaseException) and message.args:
    message = message.args[0]
  return " ".join(str(message).split())


def _config_path(argv: list[str]) -> str:
  """The ``--config=FILE[:PRESET]`` file as given (for messages)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg[len("--config="):].split(":", 1)[0]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
  return "?"


def _config_file_error(error: BaseException, path: str) -> str | None:
  """One line for an error raised while the config file ``path`` loaded (its syntax, or
  its code): the file, the line and the error; None when the error is not the file's."""
  if path == "?" or not os.path.isfile(path):
    return None
  target = os.path.realpath(path)
  if isinstance(error, SyntaxError) and error.filename and (
      os.path.realpath(error.filename) == target):
    return (f"the config file {path} has a syntax error at line {error.lineno}: "
            f"{error.msg}.")
  if isinstance(error, (flags.Error, AttributeError, KeyError, TypeError, ValueError)):
    return None  # the config's own checks and the overrides' errors: see _flag_error
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if os.path.realpath(f.filename) == target]
  if not frames:
    return None
  message = _innermost_message(error) or type(error).__name__
  return (f"the config file {path} failed at line {frames[-1].lineno}: "
          f"{type(error).__name__}: {message}")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns config-file and override errors into one line."""
  try:
    remaining = flags.FLAGS(argv)
  except Exception as error:  # pylint: disable=broad-except  (re-raised below unless known)
    in_file = _config_file_error(error, _config_path(argv))
    if in_file is not None:
      sys.exit(f"error: {in_file}")
    return _flag_error(error, argv)
  if "config" in flags.FLAGS and type(flags.FLAGS["config"].value).__name__ == "_ErrorConfig":
    # config_flags defers a file that does not load until the config is first used.
    path = _config_path(argv)
    where = "does not exist" if not os.path.exists(path) else "cannot be loaded"
    sys.exit(f"error: the config file {path} {where}; give a config file such as "
             "experiments/configs/vae_mnist.py[:PRESET].")
  return remaining


def _flag_error(error: Exception, argv: list[str]) -> list[str]:
  """Exits with one line for a flag or override error; re-raises anything else."""
  try:
    raise error
  except flags.Error as error:  # e.g. a missing flag, a bad config file or preset
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    sys.exit(f"error: {lines[-1] if lines else error}")
  except AttributeError as error:
    if "get_config" in str(error):
      sys.exit(f"error: the config file {_config_path(argv)} defines no get_config(); a "
               "config file defines get_config(preset='') returning an "
               "ml_collections.ConfigDict (see experiments/configs/).")
    key, _, hint = _innermost_message(error).partition(" ")
    overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
    sys.exit(f"error: the config has no key {key} (overrides: {overrides}). {hint}".rstrip())
  except KeyError as error:  # --config.KEY=VALUE with an unknown KEY
    key, _, hint = _innermost_message(error).partition(" ")
    overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
    sys.exit(f"error: the config has no key {key} (overrides: {overrides}). {hint}".rstrip())
  except (TypeError, ValueError) as error:
    sys.exit(f"error: bad --config override: {_innermost_message(error)}")


def run_command(command: Callable[[], T], argv: list[str]) -> T:
  """Runs ``command()`` (an entry point's work), reporting input errors, write errors and
  stop signals as one line."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  _hide_info_logs_from("orbax")
  try:
    distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
    with StopSignals():
      return command()
  except StopRequested as stop:
    logging.flush()
    print(stop, file=sys.stderr)
    sys.exit(stop.exit_code)
  except KeyboardInterrupt:  # a second Ctrl-C while stopping: at once, still one line
    logging.flush()
    print("Stopped at once by a second SIGINT; re-run the same command to resume from the "
          "newest checkpoint.", file=sys.stderr)
    sys.exit(128 + signal.SIGINT)
  except WRITE_ERRORS as error:
    if TRACEBACK.value:
      raise
    logging.flush()
    sys.exit(f"error: {one_line(error)}; {RERUN}.")
  except INPUT_ERRORS as error:
    if TRACEBACK.value:
      raise
    logging.flush()
    sys.exit(f"error: {one_line(error)}")


def one_line(error: BaseException) -> str:
  """An error's message on one line (a KeyError's without the repr quotes)."""
  message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  return "; ".join(line.strip() for line in message.splitlines() if line.strip())


class _NoTpuProbe(std_logging.Filter):
  """Drops JAX's INFO record that no TPU library is installed (every CPU or GPU run tries
  the TPU backend first); every other record, at every level, passes."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not (record.levelno == std_logging.INFO
                and record.getMessage().startswith("Unable to initialize backend 'tpu'"))


def quiet_tpu_probe() -> None:
  """Installs :class:`_NoTpuProbe` on JAX's backend logger (once)."""
  logger = std_logging.getLogger("jax._src.xla_bridge")
  if not any(isinstance(f, _NoTpuProbe) for f in logger.filters):
    logger.addFilter(_NoTpuProbe())


quiet_tpu_probe()  # at import: the entry points import this before JAX picks a backend


def _hide_info_logs_from(*packages: str) -> None:
  """Drops absl INFO logs emitted from ``packages`` (e.g. orbax's per-save chatter);
  warnings and errors still show."""
  import logging as std_logging  # pylint: disable=g-import-not-at-top

  markers = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

  def keep(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        m in record.pathname for m in markers)

  logging.get_absl_handler().addFilter(keep)
