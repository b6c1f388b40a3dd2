"""The ``disentanglement`` evaluator: the six disentanglement_lib metrics of every model.

Scores each model's encoder mean (:func:`vaejax.evaluation.representation.
evaluate_disentanglement`) at a preset's sample counts and writes
``disentanglement.json`` per model (step, preset and its description, seed, metrics,
sample counts, scores, timings); a file with the same step and settings is reused rather
than recomputed, so re-running a finished evaluation is free.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from vaejax.evaluation.evaluators.base import (
  EvaluationError,
  Evaluator,
  config_int,
  require_ground_truth,
  track,
  write_json,
)
from vaejax.evaluation.evaluators.registry import register


def _representation():
  """:mod:`vaejax.evaluation.representation`, imported when first needed (it imports
  scikit-learn, seconds that runs without this evaluator should not pay)."""
  from vaejax.evaluation import representation  # pylint: disable=g-import-not-at-top

  return representation


@register("disentanglement")
class DisentanglementEvaluator(Evaluator):
  """The six disentanglement_lib metrics on each model's encoder mean."""

  RESULTS_FILE = "disentanglement.json"

  def __init__(self, name, group, setup, requested=False):
    super().__init__(name, group, setup, requested)
    representation = _representation()
    where = f"evals.{name}"
    self.preset = group["preset"]
    if self.preset not in representation.METRIC_PRESETS:
      raise EvaluationError(f"Config {where}.preset={self.preset!r} is not a preset; known: "
                            f"{sorted(representation.METRIC_PRESETS)}.")
    self.seed = config_int(group, "seed", where, minimum=0)
    try:
      self.metrics = representation.check_metrics(tuple(group["metrics"]))
    except ValueError as error:
      raise EvaluationError(f"Config {where}.metrics: {error}") from None
    if self.enabled:
      require_ground_truth(setup, name, "disentanglement", self.requested)

  def settings(self, step: int, m: int) -> dict[str, Any]:
    """What a cached ``disentanglement.json`` must match: the step, the metric settings and
    which model it scored (its point and seed; a workdir may be reused by another grid)."""
    return {"step": int(step), "preset": self.preset, "seed": self.seed,
            "metrics": list(self.metrics), "model_seed": int(self.setup.seeds[m]),
            "point": json.loads(json.dumps(dict(self.setup.points[m]), default=list))}

  def _cached(self, step: int) -> list[dict[str, Any] | None]:
    """Each model's up-to-date results file, or None; decided by process 0 and shared, so
    every process of a multi-process run takes the same (collective) path."""
    cached = []
    for m in range(len(self.setup.seeds)):
      path = self.setup.model_dirs[m] / self.RESULTS_FILE
      previous = json.loads(path.read_text()) if path.exists() else None
      settings = self.settings(step, m)
      fresh = previous is not None and all(previous.get(k) == v for k, v in settings.items())
      cached.append(previous if fresh else None)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      use = multihost_utils.broadcast_one_to_all(
          np.asarray([c is not None for c in cached], bool))
      cached = [c if bool(u) else None for c, u in zip(cached, np.asarray(use))]
    return cached

  def _score(self, stack, step: int, m: int) -> dict[str, Any]:
    """Model ``m``'s results file: its scores, timings and settings (and writes it)."""
    setup, representation = self.setup, _representation()
    start, cpu_start = time.perf_counter(), time.process_time()
    timings: dict[str, dict[str, float]] = {}
    scores = representation.evaluate_disentanglement(
        setup.model, stack.params(m), setup.dataset.ground_truth, self.seed, self.preset,
        metrics=self.metrics, timings=timings)
    results = {
        **self.settings(step, m),
        "preset_description": representation.describe_preset(self.preset),
        "sample_counts": {n: representation.METRIC_PRESETS[self.preset].get(n, "defaults")
                          for n in self.metrics},
        "scores": scores,
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(time.process_time() - cpu_start, 2),
        "seconds_per_metric": timings,
        "data": setup.dataset.name,
    }
    write_json(setup.model_dirs[m] / self.RESULTS_FILE, results)
    return results

  def evaluate(self, stack, step):
    rows = []
    cached = self._cached(step)
    for m in track(range(len(self.setup.seeds)), "disentanglement metrics"):
      results = cached[m] if cached[m] is not None else self._score(stack, step, m)
      logging.info("Disentanglement of model %d (%s): %s",
                   m, self.setup.model_dirs[m] / self.RESULTS_FILE,
                   ", ".join(f"{k}={v:.3f}" for k, v in sorted(results["scores"].items())))
      rows.append(dict(results["scores"]))
    return rows
