"""The BetaVAE and FactorVAE scores: classify which factor was held fixed in a batch.

Both metrics draw batches in which one factor is fixed (the sampling lives in
:mod:`vaejax.evaluation.disentanglement.sampling`); the pure functions here turn
the resulting codes into features or votes and those into accuracies.
Codes of a set of P batches of B points each are shaped ``(P, B, d)``.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import exceptions, linear_model

from vaejax.evaluation.disentanglement import _checks
from vaejax.utils.checks import check_int

DEFAULT_PRUNE_THRESHOLD = 0.05


def _check_batches(codes, name: str, min_batch: int) -> np.ndarray:
  arr = np.asarray(codes, dtype=np.float64)
  if arr.ndim != 3:
    raise ValueError(
        f"{name} must be (num_points, batch_size, num_codes), got shape {arr.shape}.")
  if arr.shape[1] < min_batch:
    raise ValueError(f"{name} needs batches of at least {min_batch} points, got {arr.shape[1]}.")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} must be finite.")
  return arr


def beta_vae_features(codes_a, codes_b) -> np.ndarray:
  """BetaVAE feature of each pair of batches: ``mean_b |r_a - r_b|`` (Higgins et al. 2017).

  Args:
    codes_a, codes_b: ``(P, B, d)`` codes of P pairs of batches whose points
      share the value of one factor pairwise.

  Returns:
    ``(P, d)`` features; the dimension that encodes the shared factor is small.

  >>> import numpy as np
  >>> a = np.array([[[0.0, 1.0], [0.0, 3.0]]])  # 1 pair of batches of 2 points, d = 2
  >>> b = np.array([[[0.0, 2.0], [0.0, 0.0]]])  # dimension 0 shared: feature 0
  >>> beta_vae_features(a, b).tolist()
  [[0.0, 2.0]]
  """
  a = _check_batches(codes_a, "codes_a", 1)
  b = _check_batches(codes_b, "codes_b", 1)
  if a.shape != b.shape:
    raise ValueError(f"codes_a and codes_b must have the same shape, got {a.shape} and {b.shape}.")
  return np.mean(np.abs(a - b), axis=1)


def beta_vae_score(features_train, labels_train, features_eval, labels_eval, *,
                   seed: int = 0) -> dict[str, float]:
  """Accuracy of a logistic regression that predicts the fixed factor from BetaVAE features.

  ``LogisticRegression(random_state=seed)`` with current scikit-learn defaults
  (multinomial, lbfgs, C=1, 100 iterations); dlib-era scikit-learn defaulted to
  one-vs-rest liblinear, which current versions no longer offer for > 2 classes,
  so numbers can differ slightly from dlib's for the same features. Convergence
  warnings are silenced (the protocol fixes the iterations).

  Args:
    features_train, features_eval: ``(P, d)`` features, e.g. from
      :func:`beta_vae_features` (dlib: 10000 and 5000 points).
    labels_train, labels_eval: ``(P,)`` index of the fixed factor.
    seed: the classifier's ``random_state``.

  Returns:
    ``{"train_accuracy", "eval_accuracy"}``; chance is 1/K.

  >>> import numpy as np
  >>> labels = np.array([0, 1, 0, 1, 1, 0])
  >>> features = 1.0 - np.eye(2)[labels]  # the fixed factor's dimension is small
  >>> beta_vae_score(features, labels, features, labels)
  {'train_accuracy': 1.0, 'eval_accuracy': 1.0}
  """
  x_train = _checks.check_codes(features_train, "features_train")
  x_eval = _checks.check_codes(features_eval, "features_eval")
  y_train = _checks.check_factors(np.reshape(labels_train, (-1, 1)), "labels_train")[:, 0]
  y_eval = _checks.check_factors(np.reshape(labels_eval, (-1, 1)), "labels_eval")[:, 0]
  _checks.check_same_length(x_train, y_train, "features_train", "labels_train")
  _checks.check_same_length(x_eval, y_eval, "features_eval", "labels_eval")
  _checks.check_same_width(x_train, x_eval, "features_train", "features_eval")
  _checks.check_classes(y_train, "labels_train")
  clf = linear_model.LogisticRegression(random_state=seed)
  with warnings.catch_warnings():
    # The protocol fixes 100 iterations; not converging within them is expected.
    warnings.simplefilter("ignore", exceptions.ConvergenceWarning)
    clf.fit(x_train, y_train)
  return {"train_accuracy": float(np.mean(clf.predict(x_train) == y_train)),
          "eval_accuracy": float(np.mean(clf.predict(x_eval) == y_eval))}


def factor_vae_active_dims(global_variances,
                           threshold: float = DEFAULT_PRUNE_THRESHOLD) -> np.ndarray:
  """Mask of code dimensions kept by FactorVAE's pruning: ``sqrt(Var) >= threshold`` and
  ``Var > 0``.

  dlib's study configuration uses ``threshold = 0.05`` (its code default is 0);
  dimensions with zero variance are always pruned here, since the score divides
  by the variance.

  >>> import numpy as np
  >>> factor_vae_active_dims(np.array([1.0, 1e-4, 0.0])).tolist()  # std 1, 0.01, 0
  [True, False, False]
  """
  var = np.asarray(global_variances, dtype=np.float64)
  if var.ndim != 1 or not np.all(np.isfinite(var)) or np.any(var < 0):
    raise ValueError("global_variances must be a finite, non-negative 1-D array.")
  if not np.isfinite(threshold) or threshold < 0:
    raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}.")
  return (np.sqrt(var) >= threshold) & (var > 0)


def factor_vae_votes(codes, factor_index, global_variances, num_factors: int,
                     active_dims=None) -> np.ndarray:
  """FactorVAE votes (Kim & Mnih 2018): which dimension varies least when a factor is fixed.

  For batch ``p`` (factor ``k_p`` fixed across its B points) the vote goes to
  ``argmin_{j active} Var_b(r_pbj) / Var(r_j)`` (variances with ddof=1), the
  dimension whose normalised within-batch variance is smallest.

  Args:
    codes: ``(P, B, d)`` codes, B >= 2.
    factor_index: ``(P,)`` the fixed factor of each batch, in ``0..num_factors-1``.
    global_variances: ``(d,)`` variances of each code over the data.
    num_factors: K.
    active_dims: ``(d,)`` bool mask; default :func:`factor_vae_active_dims`.

  Returns:
    ``(K, d)`` int64 vote counts indexed by original code dimension.

  >>> import numpy as np
  >>> codes = np.array([[[0.0, 1.0], [0.0, -1.0]],   # factor 0 fixed: dimension 0 still
  ...                   [[1.0, 0.0], [-1.0, 0.0]]])  # factor 1 fixed: dimension 1 still
  >>> factor_vae_votes(codes, np.array([0, 1]), np.ones(2), num_factors=2).tolist()
  [[1, 0], [0, 1]]
  """
  codes = _check_batches(codes, "codes", 2)
  num_factors = check_int(num_factors, "num_factors", minimum=1)
  labels = _checks.check_factors(np.reshape(factor_index, (-1, 1)), "factor_index")[:, 0]
  _checks.check_same_length(codes, labels, "codes", "factor_index")
  if labels.size and (labels.min() < 0 or labels.max() >= num_factors):
    raise ValueError(f"factor_index must lie in [0, {num_factors}), got values "
                     f"{labels.min()}..{labels.max()}.")
  var = np.asarray(global_variances, dtype=np.float64)
  if var.shape != (codes.shape[2],):
    raise ValueError(f"global_variances must have shape ({codes.shape[2]},), got {var.shape}.")
  active = factor_vae_active_dims(var) if active_dims is None else np.asarray(active_dims, bool)
  if active.shape != var.shape or not active.any() or np.any(var[active] <= 0):
    raise ValueError("active_dims must select at least one dimension with positive variance.")
  dims = np.flatnonzero(active)
  local = np.var(codes[:, :, dims], axis=1, ddof=1) / var[dims]
  votes = np.zeros((num_factors, codes.shape[2]), dtype=np.int64)
  np.add.at(votes, (labels, dims[np.argmin(local, axis=1)]), 1)
  return votes


def factor_vae_score(votes_train, votes_eval) -> dict[str, float]:
  """Majority-vote classifier accuracy from FactorVAE votes, as dlib computes it.

  The classifier maps each code dimension ``j`` to ``argmax_k votes_train[k, j]``
  (ties to the lowest factor index); accuracy is the fraction of votes whose
  factor is the one their dimension maps to: ``sum_j V[c_j, j] / sum V``.

  Args:
    votes_train, votes_eval: ``(K, d)`` non-negative vote counts with >= 1 vote.

  Returns:
    ``{"train_accuracy", "eval_accuracy"}``; 1 when every factor has its own dimension.

  >>> import numpy as np
  >>> votes = np.array([[5, 0], [1, 4]])  # dimension 0 -> factor 0, dimension 1 -> factor 1
  >>> factor_vae_score(votes, votes)  # (5 + 4) / 10
  {'train_accuracy': 0.9, 'eval_accuracy': 0.9}
  """
  vt, ve = np.asarray(votes_train), np.asarray(votes_eval)
  for name, v in (("votes_train", vt), ("votes_eval", ve)):
    if v.ndim != 2 or np.any(v < 0) or v.sum() <= 0:
      raise ValueError(f"{name} must be a non-negative (num_factors, num_codes) array with votes.")
  if vt.shape != ve.shape:
    raise ValueError(f"votes_train and votes_eval shapes differ: {vt.shape} vs {ve.shape}.")
  classifier = np.argmax(vt, axis=0)
  cols = np.arange(vt.shape[1])
  return {"train_accuracy": float(vt[classifier, cols].sum() / vt.sum()),
          "eval_accuracy": float(ve[classifier, cols].sum() / ve.sum())}
