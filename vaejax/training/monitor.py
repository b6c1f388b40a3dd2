"""Posterior-collapse monitoring over the logged rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging


class CollapseMonitor:
  """Warns once when the KL of every example stays below ``threshold`` nats for
  ``patience`` logged steps in a row (posterior collapse), naming the remedies.

  The streaks are rebuilt from the rows already logged, so a resumed run flags the same
  rows as one that never stopped.
  """

  REMEDIES = ("free bits (loss.free_bits), KL warm-up (loss.warmup_steps), capacity "
              "annealing (loss.capacity_gamma, loss.capacity_max) or a posterior variance "
              "floor (model.posterior_min_variance)")

  def __init__(self, threshold: float, patience: int, models: Sequence[int],
               labels: Sequence[str], previous_rows: Sequence[Mapping[str, Any]] = ()):
    self.threshold, self.patience = float(threshold), int(patience)
    self.labels = list(labels)
    index = {m: k for k, m in enumerate(models)}
    self.streaks = [0] * len(models)
    for row in previous_rows:
      k = index.get(row.get("model", models[0]))  # a single run's rows have no "model"
      if k is not None and "kl_max" in row:
        self.update(k, row["kl_max"], warn=False)

  def update(self, k: int, kl_max: float, warn: bool = True) -> bool:
    """Counts model ``k``'s logged step; returns whether it is in collapse."""
    collapsed_now = bool(np.isfinite(kl_max)) and kl_max < self.threshold
    self.streaks[k] = self.streaks[k] + 1 if collapsed_now else 0
    if warn and self.streaks[k] == self.patience:
      logging.warning(
          "Posterior collapse%s: the KL of every example has stayed below %g nats for %d "
          "logged steps; the latents carry no information. Counter it with %s.",
          f" of {self.labels[k]}" if self.labels[k] else "", self.threshold, self.patience,
          self.REMEDIES)
    return self.patience > 0 and self.streaks[k] >= self.patience
