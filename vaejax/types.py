"""The two data contracts every part of vaejax shares: batches and model outputs.

A batch is a dict of arrays:

* ``"image"``: float32, NHWC, values in [0, 1] (dSprites and binarised data in {0, 1});
* ``"label"`` (optional): int32 ``(B,)`` class labels;
* ``"factors"`` (optional): int32 ``(B, K)`` ground-truth factor classes.

A model's forward pass returns a :class:`VAEOutput` holding distribution parameters,
never a loss; :mod:`vaejax.objectives` turns it into one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

Array = jax.Array
Batch = dict[str, Any]


class VAEOutput(NamedTuple):
  """Parameters of q(z|x), the sample z, p(x|z) and, optionally, a learned prior.

  Attributes:
    mean: posterior means, ``(B, d)``. Hierarchical models concatenate all levels.
    log_var: posterior log-variances, same shape as ``mean``.
    z: the reparameterised sample ``mean + exp(log_var / 2) * eps``, same shape.
    likelihood: parameters of p(x|z), e.g. ``{"logits": (B, H, W, C)}`` for a
      Bernoulli decoder or ``{"mean": ..., "log_var": ...}`` for a Gaussian one.
    prior_mean: means of p(z) when the prior is not N(0, I) (hierarchical models:
      the top-down prior of each level), else None.
    prior_log_var: log-variances of that prior, else None.
  """

  mean: Array
  log_var: Array
  z: Array
  likelihood: dict[str, Array]
  prior_mean: Array | None = None
  prior_log_var: Array | None = None
