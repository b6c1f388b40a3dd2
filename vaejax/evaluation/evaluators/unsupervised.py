r"""The ``unsupervised`` evaluator: disentanglement_lib's scores that need no labels.

``num_points`` observations (dlib: 10,000) drawn uniformly over the factor grid with
``seed``, the same for every model and encoded by all models at once; then
:math:`\Sigma = \operatorname{cov}(\text{codes})`: Gaussian total correlation
:math:`\tfrac12(\sum_i \log \Sigma_{ii} - \log\det\Sigma)`, Gaussian Wasserstein
correlation (and divided by :math:`\operatorname{tr}\Sigma`), and the mean pairwise
discrete mutual information of the codes (20 bins). See
:mod:`vaejax.evaluation.disentanglement.unsupervised`.
"""

from __future__ import annotations

import numpy as np

from vaejax.evaluation.evaluators.base import (
  Evaluator,
  config_int,
  encode_all,
  make_posterior_fn,
  require_ground_truth,
)
from vaejax.evaluation.evaluators.registry import register


@register("unsupervised")
class UnsupervisedEvaluator(Evaluator):
  """disentanglement_lib's unsupervised scores on each model's encoder mean."""

  def __init__(self, name, group, setup, requested=False):
    super().__init__(name, group, setup, requested)
    self.num_points = config_int(group, "num_points", f"evals.{name}", minimum=2)
    self.seed = config_int(group, "seed", f"evals.{name}", minimum=0)
    self._ground_truth = (require_ground_truth(setup, name, "unsupervised", self.requested)
                          if self.enabled else None)
    self._fn = make_posterior_fn(setup.model)

  def evaluate(self, stack, step):
    # Imported here: the metrics import scikit-learn, which runs without them need not.
    from vaejax.evaluation.disentanglement import (  # pylint: disable=g-import-not-at-top
        unsupervised,
    )

    ground_truth = self._ground_truth or require_ground_truth(self.setup, self.name,
                                                              "unsupervised", self.requested)
    _, observations = ground_truth.sample(self.num_points, np.random.default_rng(self.seed))
    means, _ = encode_all(stack, self._fn, observations)
    return [unsupervised.unsupervised_scores(codes) for codes in means]
