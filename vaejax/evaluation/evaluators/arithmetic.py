"""The ``arithmetic`` evaluator: latent arithmetic on dSprites, measured (``arithmetic.json``).

Attribute vectors v = mean encoding of images with factor value a − that with value b
(other factors random); z' = μ(x) + α v decoded; per factor the fraction of queries whose
decoded sprite moved as the factor change means (position: centroid shift in pixels;
scale: area ratio; shape: the nearest rendered template has the target shape). See
:mod:`vaejax.evaluation.arithmetic`.
"""

from __future__ import annotations

import numpy as np

from vaejax.evaluation.evaluators.base import (
  EvaluationError,
  Evaluator,
  config_int,
  config_number,
  require_ground_truth,
  track,
  write_json,
)
from vaejax.evaluation.evaluators.registry import register
from vaejax.models import codec

DSPRITES_FACTORS = {"shape", "scale", "pos_x", "pos_y"}


@register("arithmetic")
class ArithmeticEvaluator(Evaluator):
  """Latent arithmetic of every model on dSprites (``arithmetic.json`` per model)."""

  RESULTS_FILE = "arithmetic.json"

  def __init__(self, name, group, setup, requested=False):
    super().__init__(name, group, setup, requested)
    where = f"evals.{name}"
    self.num_examples = config_int(group, "num_examples", where)
    self.num_queries = config_int(group, "num_queries", where)
    self.seed = config_int(group, "seed", where, minimum=0)
    self.alpha = config_number(group, "alpha", where)
    if self.enabled:
      ground_truth = require_ground_truth(setup, name, "arithmetic", self.requested)
      if not DSPRITES_FACTORS <= set(ground_truth.factor_names):
        raise EvaluationError(f"Evaluator evals.{name} (arithmetic) needs dSprites' factors; "
                              f"{setup.dataset.name!r} has {ground_truth.factor_names}.")

  def evaluate(self, stack, step):
    from vaejax.evaluation import arithmetic  # pylint: disable=g-import-not-at-top

    model, rows = self.setup.model, []
    for m in track(range(len(self.setup.seeds)), "latent arithmetic"):
      params = stack.params(m)
      table = arithmetic.arithmetic_accuracy(
          lambda x, p=params: np.asarray(codec.encode(model, p, x)[0]),
          lambda z, p=params: np.asarray(codec.decode_mean(model, p, z)),
          self.setup.dataset.ground_truth, alpha=self.alpha, num_examples=self.num_examples,
          num_queries=self.num_queries, seed=self.seed)
      write_json(self.setup.model_dirs[m] / self.RESULTS_FILE, {"step": step, "table": table})
      rows.append({f"{factor}/{k}": v for factor, row in table.items()
                   for k, v in row.items() if k in ("accuracy", "ratio")})
    return rows
