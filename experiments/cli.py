"""What every entry point shares: absl flag parsing and errors as one line.

A bad flag, config file, preset or ``--config.KEY=VALUE`` override, and the library's
input errors (ValueError, KeyError, FileNotFoundError, ...), end the program with one
``error: ...`` line instead of a traceback; ``--traceback`` shows the full trace.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from absl import app, flags, logging

from vaejax import logging_utils, train

T = TypeVar("T")

TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the full traceback of input errors.")
INPUT_ERRORS = (ValueError, KeyError, FileNotFoundError, train.NonFiniteError)


def _innermost_message(error: BaseException) -> str:
  """The message of the innermost wrapped exception, on one line."""
  message = error
  while isinstance(message, BaseException) and message.args:
    message = message.args[0]
  return " ".join(str(message).split())


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns config-file and override errors into one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:  # e.g. a missing flag, a bad config file or preset
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    sys.exit(f"error: {lines[-1] if lines else error}")
  except (AttributeError, KeyError) as error:  # --config.KEY=VALUE with an unknown KEY
    key, _, hint = _innermost_message(error).partition(" ")
    overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
    sys.exit(f"error: the config has no key {key} (overrides: {overrides}). {hint}".rstrip())
  except (TypeError, ValueError) as error:
    sys.exit(f"error: bad --config override: {_innermost_message(error)}")


def run_command(command: Callable[[], T], argv: list[str]) -> T:
  """Runs ``command()`` (an entry point's work), reporting input errors as one line."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging_utils.hide_info_logs_from("orbax")
  try:
    return command()
  except INPUT_ERRORS as error:
    if TRACEBACK.value:
      raise
    logging.flush()
    sys.exit(f"error: {error}")
