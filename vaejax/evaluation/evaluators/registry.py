"""The evaluator types by name: :data:`EVALUATORS`, :func:`register` and :func:`lookup`.

A built-in type ``T`` lives in the module ``vaejax.evaluation.evaluators.T`` whose class is
decorated ``@register("T")``; :func:`lookup` imports that module the first time ``T`` is
asked for (big_vision finds its evaluators by module name the same way). Code outside the
package registers its own types with :func:`register` before building.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

EVALUATORS: dict[str, type] = {}
_PACKAGE = "vaejax.evaluation.evaluators"


def register(kind: str) -> Callable[[type], type]:
  """Class decorator adding an evaluator type (its config group needs a schema entry)."""
  def decorator(cls: type) -> type:
    if kind in EVALUATORS:
      raise ValueError(f"An evaluator type named {kind!r} is already registered.")
    EVALUATORS[kind] = cls
    return cls
  return decorator


def lookup(kind: Any) -> type | None:
  """The class registered as ``kind``, importing the module of that name from the package
  if it is not registered yet; None if there is none."""
  if kind not in EVALUATORS and isinstance(kind, str) and kind.isidentifier():
    module = f"{_PACKAGE}.{kind}"
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as error:
      if error.name != module:  # the module exists but an import inside it failed
        raise
  return EVALUATORS.get(kind)
