"""Progress: a tqdm bar on a terminal, log lines elsewhere (one mechanism for every loop).

:class:`Progress` is the one object: ``advance`` moves it, ``report`` shows a message (the
bar's postfix on a terminal; an ``absl`` log line otherwise, so a batch job's log records
what a person would have seen). :func:`track` wraps an iterable for the short loops of the
evaluators. The training writers' ``ProgressWriter`` is a thin metric writer over
:class:`Progress`.

>>> with Progress(total=3, label="demo", enabled=False) as bar:
...   bar.advance(2)
...   bar.position
2
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from absl import logging

from vaejax.utils import stopping

__all__ = ["Progress", "is_terminal", "track"]

T = TypeVar("T")


def is_terminal() -> bool:
  """Whether stderr (where the bar draws) is a terminal."""
  return sys.stderr.isatty()


class Progress:
  """A progress bar with rate and ETA on a terminal, else log lines.

  Args:
    total: the number of units (steps, items) at the end; None = unknown.
    initial: where it starts (a resumed run starts at its restored step).
    label: the bar's description and the prefix of log lines (e.g. "group 2/3").
    unit: what one unit is ("step", "item").
    enabled: show a bar; None = when stderr is a terminal. Disabled, :meth:`report`
      logs instead.
    leave: keep the finished bar on screen.
  """

  def __init__(self, total: int | None = None, *, initial: int = 0, label: str = "",
               unit: str = "it", enabled: bool | None = None, leave: bool = True):
    import tqdm  # pylint: disable=g-import-not-at-top

    self.label = label
    self.enabled = is_terminal() if enabled is None else bool(enabled)
    self._bar = tqdm.tqdm(total=total, initial=initial, disable=not self.enabled, unit=unit,
                          dynamic_ncols=True, smoothing=0.1, desc=label or None, leave=leave)
    self._position = initial

  @property
  def position(self) -> int:
    """Units done so far (counted with or without a bar)."""
    return self._position

  def advance(self, units: int = 1) -> None:
    """Moves the bar ``units`` forward."""
    self._position += units
    self._bar.update(units)

  def report(self, message: str) -> None:
    """Shows ``message``: the bar's postfix, or one log line ``label: message``."""
    if self.enabled:
      self._bar.set_postfix_str(message, refresh=True)
    else:
      logging.info("%s%s", f"{self.label}: " if self.label else "", message)

  def close(self) -> None:
    self._bar.close()

  def __enter__(self) -> Progress:  # noqa: PYI034  (Python 3.10: no typing.Self)
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()


def track(items: Iterable[T], label: str, enabled: bool | None = None) -> Iterator[T]:
  """Iterates ``items`` with a bar on a terminal (when there is more than one), else one
  log line ``label: N item(s)...`` at the start. Before each item it checks for a pending
  stop signal (:func:`vaejax.utils.stopping.check`): the loops it drives stop between items.

  >>> list(track([1, 2], "demo", enabled=False))
  [1, 2]
  """
  items = items if isinstance(items, Sequence) else list(items)
  show = (is_terminal() if enabled is None else enabled) and len(items) > 1
  if not show:
    logging.info("%s: %d item(s)...", label, len(items))
    for item in items:
      stopping.check(label)
      yield item
    return
  with Progress(len(items), label=label, unit="item", enabled=True, leave=False) as bar:
    for item in items:
      stopping.check(label)
      yield item
      bar.advance()
