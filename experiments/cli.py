"""What every entry point shares: absl flag parsing and errors as one line.

A bad flag, config file, preset or ``--config.KEY=VALUE`` override, and the library's
input errors (ValueError, KeyError, FileNotFoundError, ...), end the program with one
``error: ...`` line instead of a traceback; ``--traceback`` shows the full trace.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from absl import app, flags, logging

from vaejax.training import distributed, loop
from vaejax.training.interrupt import Interrupted

T = TypeVar("T")

TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the full traceback of input errors.")
COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-process runs: host:port of process 0 (passed to jax.distributed.initialize). "
    "Omitted: a single process, or the cluster JAX detects itself (SLURM, Cloud TPU).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process runs: processes.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index.")
INPUT_ERRORS = (ValueError, KeyError, FileNotFoundError, loop.NonFiniteError)


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


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns config-file and override errors into one line."""
  try:
    remaining = flags.FLAGS(argv)
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
  if "config" in flags.FLAGS and type(flags.FLAGS["config"].value).__name__ == "_ErrorConfig":
    # config_flags defers a file that does not load until the config is first used.
    path = _config_path(argv)
    where = "does not exist" if not os.path.exists(path) else "cannot be loaded"
    sys.exit(f"error: the config file {path} {where}; give a config file such as "
             "experiments/configs/vae_mnist.py[:PRESET].")
  return remaining


def run_command(command: Callable[[], T], argv: list[str]) -> T:
  """Runs ``command()`` (an entry point's work), reporting input errors as one line."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  _hide_info_logs_from("orbax")
  try:
    distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
    return command()
  except Interrupted as stop:
    logging.flush()
    print(stop, file=sys.stderr)
    sys.exit(stop.exit_code)
  except INPUT_ERRORS as error:
    if TRACEBACK.value:
      raise
    logging.flush()
    sys.exit(f"error: {one_line(error)}")


def one_line(error: BaseException) -> str:
  """An error's message on one line (a KeyError's without the repr quotes)."""
  message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _hide_info_logs_from(*packages: str) -> None:
  """Drops absl INFO logs emitted from ``packages`` (e.g. orbax's per-save chatter);
  warnings and errors still show."""
  import logging as std_logging  # pylint: disable=g-import-not-at-top

  markers = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

  def keep(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        m in record.pathname for m in markers)

  logging.get_absl_handler().addFilter(keep)
