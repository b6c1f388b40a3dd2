r"""The ``udr`` evaluator: Unsupervised Disentanglement Ranking, a sweep-level score.

UDR (Duan et al. 2020; disentanglement_lib's protocol): every model encodes the same
``num_points`` observations (dlib: 1,000); per model the KL per latent
:math:`\operatorname{mean} \tfrac12(\mu^2 + \sigma^2 - \log\sigma^2 - 1)` marks latents
with KL ≤ 0.01 inactive; codes are standardised; each ordered pair of models *of the same
setting* (points equal but for ``seed``) gets a similarity matrix (|Lasso(α = 0.1)|
coefficients, or |Spearman| correlations) and a pair score; a model's UDR is the median of
its pair scores (NaN for a model without another seed). See
:mod:`vaejax.evaluation.disentanglement.udr_ranking`.
"""

from __future__ import annotations

import numpy as np

from vaejax.evaluation.evaluators.base import (
  EvaluationError,
  Evaluator,
  config_int,
  encode_all,
  make_posterior_fn,
  require_ground_truth,
)
from vaejax.evaluation.evaluators.registry import register


@register("udr")
class UdrEvaluator(Evaluator):
  """UDR of every model among the other seeds of its setting."""

  def __init__(self, name, group, setup, requested=False):
    super().__init__(name, group, setup, requested)
    from vaejax.evaluation.disentanglement import udr_ranking  # pylint: disable=g-import-not-at-top

    self._udr = udr_ranking
    where = f"evals.{name}"
    self.num_points = config_int(group, "num_points", where, minimum=2)
    self.seed = config_int(group, "seed", where, minimum=0)
    self.method = group["method"]
    if self.method not in udr_ranking.METHODS:
      raise EvaluationError(f"Config {where}.method={self.method!r} is not a UDR method; "
                            f"known: {', '.join(udr_ranking.METHODS)}.")
    self._ground_truth = (require_ground_truth(setup, name, "udr", self.requested)
                          if self.enabled else None)
    self._fn = make_posterior_fn(setup.model)

  def evaluate(self, stack, step):
    ground_truth = self._ground_truth or require_ground_truth(self.setup, self.name, "udr",
                                                              self.requested)
    _, observations = ground_truth.sample(self.num_points, np.random.default_rng(self.seed))
    means, log_vars = encode_all(stack, self._fn, observations)
    kl = np.mean(0.5 * (means**2 + np.exp(log_vars) - log_vars - 1.0), axis=1)
    settings = [repr(sorted((k, v) for k, v in p.items() if k != "seed"))
                for p in self.setup.points]
    result = self._udr.udr(means, kl, groups=settings, method=self.method)
    return [{"udr": float(score), "active_dims": int(active.sum())}
            for score, active in zip(result["model_scores"], result["active"])]
