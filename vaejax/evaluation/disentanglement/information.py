"""Information-theoretic metrics: MIG and modularity, on histogram-discretised codes.

Everything here follows disentanglement_lib (dlib): each code dimension is cut
into ``num_bins`` (default 20) equal-width bins with numpy's histogram edges and
``np.digitize``; mutual information and entropies are plug-in estimates in nats
from the resulting contingency tables (the estimator behind sklearn's
``mutual_info_score``, which dlib calls). Arrays are ``(N, d)`` codes and
``(N, K)`` integer factors (dlib stores them transposed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vaejax.evaluation.disentanglement import _checks
from vaejax.utils.checks import check_int

DEFAULT_NUM_BINS = 20


def discretize(codes, num_bins: int = DEFAULT_NUM_BINS) -> np.ndarray:
  """Bins every code dimension into ``num_bins`` equal-width bins (dlib's histogram discretiser).

  For column ``c`` with edges ``e_0 < ... < e_B`` from ``np.histogram(c, B)``
  (which spans ``[min c, max c]``), the bin of ``x`` is ``np.digitize(x, e_0..e_{B-1})``,
  i.e. the number of left edges ``<= x``: values lie in ``1..B``, the minimum maps
  to 1 and the maximum to ``B``. A constant column lands in a single bin (numpy
  widens its range to ``[x - 0.5, x + 0.5]``), so it carries no information.

  Args:
    codes: ``(N, d)`` real, finite.
    num_bins: bins per dimension, >= 1.

  Returns:
    ``(N, d)`` int64 bin indices in ``1..num_bins``.

  >>> import numpy as np
  >>> discretize(np.array([[0.0], [0.4], [1.0]]), num_bins=2).ravel().tolist()
  [1, 1, 2]
  """
  codes = _checks.check_codes(codes)
  num_bins = check_int(num_bins, "num_bins", minimum=1)
  out = np.empty(codes.shape, dtype=np.int64)
  for j in range(codes.shape[1]):
    edges = np.histogram(codes[:, j], bins=num_bins)[1]
    out[:, j] = np.digitize(codes[:, j], edges[:-1])
  return out


def _dense_labels(column: np.ndarray) -> tuple[np.ndarray, int]:
  values, inverse = np.unique(column, return_inverse=True)
  return inverse.reshape(-1), values.size


def discrete_entropy(factors) -> np.ndarray:
  """Plug-in entropy ``H(y_k) = -sum_v p(v) log p(v)`` (nats) of every factor column.

  Args:
    factors: ``(N, K)`` integer classes.

  Returns:
    ``(K,)`` float64 entropies (0 for a constant column).

  >>> import numpy as np
  >>> discrete_entropy(np.array([[0], [1], [0], [1]])).round(4).tolist()  # log 2
  [0.6931]
  """
  factors = _checks.check_factors(factors)
  h = np.empty(factors.shape[1])
  for k in range(factors.shape[1]):
    counts = np.unique(factors[:, k], return_counts=True)[1]
    p = counts / factors.shape[0]
    h[k] = -np.sum(p * np.log(p))
  return h


def discrete_mutual_info(codes_discrete, factors) -> np.ndarray:
  """Plug-in mutual information (nats) between every discrete code and every factor.

  ``I(c_i; y_k) = sum_{a,b} p(a,b) log(p(a,b) / (p(a) p(b)))`` over the empirical
  joint distribution; clipped at 0 against round-off, as sklearn's
  ``mutual_info_score`` does.

  Args:
    codes_discrete: ``(N, d)`` integer codes, e.g. from :func:`discretize`.
    factors: ``(N, K)`` integer classes.

  Returns:
    ``(d, K)`` float64 matrix (dlib's ``[num_codes, num_factors]`` layout).

  >>> import numpy as np
  >>> factors = np.array([(a, b) for a in range(2) for b in range(2)])  # a full 2 x 2 grid
  >>> discrete_mutual_info(factors, factors).round(4).tolist()  # I(a; a) = log 2, I(a; b) = 0
  [[0.6931, 0.0], [0.0, 0.6931]]
  """
  codes_discrete = _checks.check_factors(codes_discrete, "codes_discrete")
  factors = _checks.check_factors(factors)
  _checks.check_same_length(codes_discrete, factors, "codes_discrete", "factors")
  n = factors.shape[0]
  code_labels = [_dense_labels(codes_discrete[:, i]) for i in range(codes_discrete.shape[1])]
  factor_labels = [_dense_labels(factors[:, k]) for k in range(factors.shape[1])]
  mi = np.zeros((len(code_labels), len(factor_labels)))
  for i, (a, na) in enumerate(code_labels):
    for k, (b, nb) in enumerate(factor_labels):
      joint = np.bincount(a * nb + b, minlength=na * nb).reshape(na, nb).astype(np.float64)
      ra, rb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
      nz = joint > 0
      # log(n_ab * N / (n_a * n_b)) written as a sum of logs to avoid overflow.
      terms = joint * (np.log(np.where(nz, joint, 1.0)) + np.log(n)
                       - np.log(np.where(nz, ra, 1.0)) - np.log(np.where(nz, rb, 1.0)))
      mi[i, k] = max(float(terms[nz].sum() / n), 0.0)
  return mi


def mig(codes, factors, num_bins: int = DEFAULT_NUM_BINS) -> tuple[float, dict[str, Any]]:
  """Mutual information gap (Chen et al. 2018), dlib's ``discrete_mig``.

  ``MIG = 1/K sum_k (I(c_(1); y_k) - I(c_(2); y_k)) / H(y_k)``, where ``c_(1)``,
  ``c_(2)`` are the codes with the largest and second-largest MI with factor
  ``k``, codes discretised into ``num_bins`` histogram bins. All K factors count
  (dlib includes dSprites' shape; the paper's own evaluation excluded it).
  A constant code simply has zero MI; two identical codes give their factor a
  gap of 0.

  Args:
    codes: ``(N, d)`` real codes, d >= 2 (the gap needs two codes).
    factors: ``(N, K)`` integer classes; each must take >= 2 values (a constant
      factor has zero entropy, so its normalised gap is undefined).
    num_bins: histogram bins per code (dlib: 20).

  Returns:
    ``(score, details)`` with details ``mutual_info`` (d, K), ``entropy`` (K,),
    ``gap`` (K,) normalised gaps and ``top_code`` (K,) the most informative code.

  >>> import numpy as np
  >>> factors = np.array([(a, b) for a in range(4) for b in range(4)])  # a full 4 x 4 grid
  >>> score, details = mig(factors[:, ::-1].astype(float), factors)  # codes: the swapped factors
  >>> round(score, 3), details["top_code"].tolist()
  (1.0, [1, 0])
  >>> round(mig(np.stack([factors[:, 0], factors[:, 0]], 1).astype(float), factors)[0], 3)
  0.0
  """
  codes, factors = _checks.check_pair(codes, factors, min_dims=2)
  entropy = discrete_entropy(factors)
  if np.any(entropy == 0.0):
    k = int(np.argmax(entropy == 0.0))
    raise ValueError(
        f"factor {k} takes a single value ({factors[0, k]}) in these samples, so its entropy is "
        "0 and MIG's normalisation is undefined; drop constant factors or use more samples.")
  mi = discrete_mutual_info(discretize(codes, num_bins), factors)
  top_two = -np.sort(-mi, axis=0)[:2]
  gap = (top_two[0] - top_two[1]) / entropy
  details = {"mutual_info": mi, "entropy": entropy, "gap": gap,
             "top_code": np.argmax(mi, axis=0)}
  return float(np.mean(gap)), details


def modularity_from_mutual_info(mutual_info) -> float:
  """Modularity (Ridgeway & Mozer 2018) of a ``(d, K)`` MI matrix, as dlib computes it.

  For code ``i`` with ``m_ik = I(c_i; y_k)`` and ``theta_i = max_k m_ik``:
  ``delta_i = sum_{k != argmax} m_ik^2 / (theta_i^2 (K - 1))`` and the code's
  modularity is ``1 - delta_i``; a code with no information at all
  (``theta_i = 0``, e.g. a constant code) scores 0, as in dlib. The result is
  the mean over codes, in [0, 1].

  >>> import numpy as np
  >>> modularity_from_mutual_info(np.array([[1.0, 0.0], [0.0, 2.0]]))  # one factor per code
  1.0
  >>> modularity_from_mutual_info(np.array([[1.0, 1.0], [0.0, 2.0]]))  # code 0 informs both
  0.5
  """
  m = np.asarray(mutual_info, dtype=np.float64)
  if m.ndim != 2 or m.shape[1] < 2:
    raise ValueError(f"mutual_info must be a (num_codes, num_factors >= 2) matrix, got {m.shape}.")
  if not np.all(np.isfinite(m)) or np.any(m < 0):
    raise ValueError("mutual_info must be finite and non-negative.")
  sq = np.square(m)
  top = sq.max(axis=1)
  safe_top = np.where(top > 0, top, 1.0)
  delta = (sq.sum(axis=1) - top) / (safe_top * (m.shape[1] - 1))
  per_code = np.where(top > 0, 1.0 - delta, 0.0)
  return float(np.mean(per_code))


def modularity(codes, factors, num_bins: int = DEFAULT_NUM_BINS) -> float:
  """Modularity of codes w.r.t. factors, from the ``num_bins``-histogram MI matrix.

  See :func:`modularity_from_mutual_info` for the formula; needs K >= 2 factors.

  >>> import numpy as np
  >>> factors = np.array([(a, b) for a in range(4) for b in range(4)])
  >>> round(modularity(factors.astype(float), factors), 3)
  1.0
  >>> mixed = np.stack([factors[:, 0] + 4 * factors[:, 1], factors[:, 1]], 1).astype(float)
  >>> round(modularity(mixed, factors), 3)  # code 0 carries both factors
  0.5
  """
  codes, factors = _checks.check_pair(codes, factors, min_factors=2)
  return modularity_from_mutual_info(discrete_mutual_info(discretize(codes, num_bins), factors))
