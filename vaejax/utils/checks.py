"""Validation of scalar arguments and config values: one message shape for every caller.

``check_int`` and ``check_number`` return the value (as ``int`` / ``float``) or raise one
error naming it and what is allowed. Booleans are refused where a number is expected
(``True`` is an ``int`` to Python, never a count to a user). Callers pass their own error
class (``ConfigError``, ``EvaluationError``, ...) and the name the user typed
(``"Config eval.batch_size"``, ``"num_samples"``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_int", "check_number"]


def check_int(value: Any, name: str, *, minimum: int | None = None,
              maximum: int | None = None, error: type[Exception] = ValueError) -> int:
  """``value`` as an ``int`` in ``[minimum, maximum]``, or ``error`` naming it.

  >>> check_int(3, "num_samples", minimum=1)
  3
  >>> check_int(0, "num_samples", minimum=1)
  Traceback (most recent call last):
  ...
  ValueError: num_samples=0 must be an int >= 1.
  """
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise error(f"{name}={value!r} must be an int{_range(minimum, maximum, False)}.")
  if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
    raise error(f"{name}={value!r} must be an int{_range(minimum, maximum, False)}.")
  return int(value)


def check_number(value: Any, name: str, *, minimum: float | None = None,
                 maximum: float | None = None, exclusive_minimum: bool = False,
                 error: type[Exception] = ValueError) -> float:
  """``value`` as a finite ``float`` ≥ ``minimum`` (> with ``exclusive_minimum``) and ≤
  ``maximum``, or ``error`` naming it.

  >>> check_number(0.5, "word_keep", minimum=0, maximum=1, exclusive_minimum=True)
  0.5
  >>> check_number(float("nan"), "beta", minimum=0)
  Traceback (most recent call last):
  ...
  ValueError: beta=nan must be a finite number >= 0.
  """
  kind = f"a finite number{_range(minimum, maximum, exclusive_minimum)}"
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise error(f"{name}={value!r} must be {kind}.")
  value = float(value)
  if not math.isfinite(value):
    raise error(f"{name}={value!r} must be {kind}.")
  below = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
  if below or (maximum is not None and value > maximum):
    raise error(f"{name}={value!r} must be {kind}.")
  return value


def _number_text(x: float) -> str:
  """Integers in full (``4294967295``, not ``4.29497e+09``), other numbers short."""
  return str(x) if isinstance(x, numbers.Integral) else f"{x:g}"


def _range(minimum: float | None, maximum: float | None, exclusive_minimum: bool) -> str:
  low = "" if minimum is None else f"{'>' if exclusive_minimum else '>='} {_number_text(minimum)}"
  high = "" if maximum is None else f"<= {_number_text(maximum)}"
  if low and high:
    return f" {low} and {high}"
  return f" {low or high}" if (low or high) else ""
