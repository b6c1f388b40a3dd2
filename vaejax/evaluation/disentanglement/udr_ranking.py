r"""Unsupervised Disentanglement Ranking (UDR; Duan et al. 2020), dlib's ``udr_sklearn`` protocol.

The premise: disentangled solutions are alike across random seeds (each is an
axis-aligned copy of the same factors, up to permutation and sign), entangled
ones differ by arbitrary rotations. For M models with codes of the *same* N
points (dlib: 1,000) and per-latent KL ``kl_m`` (d,):

1. standardise every model's codes (zero mean, unit variance per dimension;
   a constant dimension becomes 0); a latent is *active* iff its mean KL
   exceeds ``kl_threshold`` (0.01 nats);
2. for each ordered pair (i, j), i != j, a similarity matrix ``R`` of shape
   (active_i, active_j): ``|W|`` of a Lasso (``alpha = 0.1``) regression of
   model j's codes on model i's (``R[a, b]`` = weight of latent a of i in
   predicting latent b of j), or the absolute Spearman rank correlations;
3. the pair score is the mean of the two "relative strength" terms

   .. math:: s_{\text{col}} = \frac{1}{|B|}\sum_b \frac{\max_a R_{ab}^2}{\sum_a R_{ab}},\qquad
             s_{\text{row}} = \frac{1}{|A|}\sum_a \frac{\max_b R_{ab}^2}{\sum_b R_{ab}},

   where a column (row) whose entries are all 0 contributes 0 (dlib turns the
   0/0 into 0 before averaging). A permutation with sign flips scores 1;
4. model i's UDR is the median of the pair scores ``P[j, i]`` over the other
   models j of its group (dlib: the column of the pair matrix, i.e. the pairs
   in which model i's codes are the regression targets).

Edge cases decided here (dlib raises on them): a pair in which either model
has no active latent scores 0; a model alone in its group has no pairs and its
UDR is NaN. With ``method="spearman"`` a constant active dimension correlates 0
with everything (dlib's NaN there would zero the whole pair); the ranks use the
average rank for ties, as ``scipy.stats.spearmanr`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import linear_model

from vaejax.evaluation.disentanglement import _checks
from vaejax.utils import stopping

METHODS = ("lasso", "spearman")
DEFAULT_KL_THRESHOLD = 0.01
DEFAULT_LASSO_ALPHA = 0.1


def standardize(codes) -> np.ndarray:
  """``(x - mean) / std`` per column (ddof=0, as sklearn's StandardScaler); constant -> 0."""
  codes = _checks.check_codes(codes)
  centred = codes - codes.mean(axis=0)
  std = codes.std(axis=0)
  return centred / np.where(std > 0, std, 1.0)


def average_ranks(codes) -> np.ndarray:
  """Ranks ``1..N`` of every column, ties sharing the mean of the ranks they span (float64)."""
  codes = np.asarray(codes, dtype=np.float64)
  ranks = np.empty_like(codes)
  for j in range(codes.shape[1]):
    column = codes[:, j]
    order = np.argsort(column, kind="stable")
    ordered = column[order]
    new_value = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    group = np.cumsum(new_value) - 1  # tie-group id of each sorted position
    starts = np.flatnonzero(new_value)
    ends = np.append(starts[1:], column.size)  # one past each group's last position
    mean_rank = (starts + 1 + ends) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks[order, j] = mean_rank[group]
  return ranks


def lasso_similarity(codes_from, codes_to, alpha: float = DEFAULT_LASSO_ALPHA) -> np.ndarray:
  """``|W|`` (d_from, d_to) of a ``sklearn.linear_model.Lasso(alpha)`` from one code to another.

  ``R[a, b]`` is the absolute weight of ``codes_from[:, a]`` in the sparse linear
  prediction of ``codes_to[:, b]``; every target is fitted separately (sklearn's
  Lasso with a 2-D target), with an intercept. Pass standardised codes.
  """
  x = _checks.check_codes(codes_from, "codes_from")
  y = _checks.check_codes(codes_to, "codes_to")
  _checks.check_same_length(x, y, "codes_from", "codes_to")
  if not np.isfinite(alpha) or alpha <= 0:
    raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}.")
  model = linear_model.Lasso(alpha=alpha).fit(x, y)
  return np.abs(np.reshape(model.coef_, (y.shape[1], x.shape[1]))).T


def spearman_similarity(codes_from, codes_to) -> np.ndarray:
  """``|rho|`` (d_from, d_to): absolute Spearman rank correlation of every pair of columns.

  The Pearson correlation of :func:`average_ranks`; a constant column
  correlates 0 with everything.
  """
  x = _checks.check_codes(codes_from, "codes_from")
  y = _checks.check_codes(codes_to, "codes_to")
  _checks.check_same_length(x, y, "codes_from", "codes_to")
  rx, ry = standardize(average_ranks(x)), standardize(average_ranks(y))
  return np.abs(rx.T @ ry) / x.shape[0]


def relative_strength(similarity) -> float:
  """Pair score of a non-negative similarity matrix ``R`` (A, B): mean of its column and row terms.

  Column term: mean over columns of ``max_a R_ab^2 / sum_a R_ab``; row term
  likewise over rows; an all-zero column or row contributes 0. In [0, 1] when
  R's entries are <= 1 (correlations); 1 iff every row and column holds one
  entry of 1 (a signed permutation). An empty matrix (no active latents on one
  side) scores 0.

  >>> import numpy as np
  >>> relative_strength(np.eye(3))  # a permutation: every latent matched once
  1.0
  >>> relative_strength(np.full((2, 2), 0.5))
  0.25
  """
  r = np.asarray(similarity, dtype=np.float64)
  if r.ndim != 2:
    raise ValueError(f"similarity must be a 2-D matrix, got shape {r.shape}.")
  if not np.all(np.isfinite(r)) or np.any(r < 0):
    raise ValueError("similarity must be finite and non-negative.")
  if r.size == 0:
    return 0.0

  def term(axis: int) -> float:
    total = r.sum(axis=axis)
    peak = r.max(axis=axis)
    return float(np.mean(np.where(total > 0, peak**2 / np.where(total > 0, total, 1.0), 0.0)))

  return 0.5 * (term(0) + term(1))


def _check_models(codes_per_model, kl_per_model) -> tuple[np.ndarray, np.ndarray]:
  codes = [_checks.check_codes(c, f"codes_per_model[{m}]") for m, c in enumerate(codes_per_model)]
  if len(codes) < 2:
    raise ValueError(f"UDR compares models: need codes of at least 2 models, got {len(codes)}.")
  for m, c in enumerate(codes[1:], start=1):
    if c.shape != codes[0].shape:
      raise ValueError(
          f"every model must encode the same points into the same width: "
          f"codes_per_model[0] has shape {codes[0].shape}, codes_per_model[{m}] {c.shape}.")
  kl = np.asarray(kl_per_model, dtype=np.float64)
  if kl.shape != (len(codes), codes[0].shape[1]):
    raise ValueError(f"kl_per_model must have shape (num_models, num_latents) = "
                     f"{(len(codes), codes[0].shape[1])}, got {kl.shape}.")
  if not np.all(np.isfinite(kl)) or np.any(kl < 0):
    raise ValueError("kl_per_model must be finite and non-negative (mean KL per latent, nats).")
  return np.stack(codes), kl


def _check_groups(groups, num_models: int) -> np.ndarray:
  if groups is None:
    return np.zeros(num_models, dtype=np.int64)
  groups = list(groups)
  if len(groups) != num_models:
    raise ValueError(f"groups must give one label per model ({num_models}), got {len(groups)}.")
  _, labels = np.unique(np.asarray([repr(g) for g in groups]), return_inverse=True)
  return labels.reshape(-1)


def udr(codes_per_model, kl_per_model, groups: Sequence[Any] | None = None,
        method: str = "lasso", *, kl_threshold: float = DEFAULT_KL_THRESHOLD,
        alpha: float = DEFAULT_LASSO_ALPHA) -> dict[str, np.ndarray]:
  """UDR of M models from their codes of the same points and their KL per latent.

  See the module docstring for the protocol. Only pairs within a group are
  scored, so one call can rank a whole sweep: pass each model's hyper-parameter
  point (anything hashable by ``repr``) as its group.

  Args:
    codes_per_model: M arrays ``(N, d)`` (or one ``(M, N, d)`` array), the
      encoder means of the same N points (dlib: 1,000) for every model.
    kl_per_model: ``(M, d)`` mean KL(q(z_k|x) || p(z_k)) per latent,
      ``mean_x 1/2 (mu^2 + sigma^2 - log sigma^2 - 1)``.
    groups: one label per model (e.g. its hyper-parameters); None = one group.
    method: ``"lasso"`` (dlib's default) or ``"spearman"``.
    kl_threshold: latents with mean KL <= this are inactive (dlib: 0.01).
    alpha: the Lasso's L1 weight (dlib: 0.1).

  Returns:
    ``model_scores`` (M,) UDR per model (NaN for a model alone in its group);
    ``pair_scores`` (M, M) with ``[i, j]`` the score of the similarity from
    model i to model j (NaN on the diagonal and across groups);
    ``similarity`` (M, M, d, d) the matrices ``R`` on all latents (0 in the
    rows and columns of inactive latents; NaN where the pair is not scored);
    ``active`` (M, d) bool.

  >>> import numpy as np
  >>> codes = np.random.default_rng(0).standard_normal((200, 3))
  >>> other = codes[:, [2, 0, 1]] * np.array([1.0, -2.0, 0.5])  # the same latents, permuted
  >>> result = udr([codes, other], np.ones((2, 3)))  # Lasso(α = 0.1): each weight 1 → 0.9
  >>> result["model_scores"].round(3).tolist(), result["active"].sum(axis=1).tolist()
  ([0.9, 0.9], [3, 3])
  >>> mixed = codes @ np.random.default_rng(1).standard_normal((3, 3))  # latents mixed
  >>> bool((udr([codes, mixed], np.ones((2, 3)))["model_scores"] < 0.6).all())
  True
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  if not np.isfinite(kl_threshold) or kl_threshold < 0:
    raise ValueError(f"kl_threshold must be a finite number >= 0, got {kl_threshold!r}.")
  codes, kl = _check_models(codes_per_model, kl_per_model)
  num_models, _, d = codes.shape
  labels = _check_groups(groups, num_models)
  active = kl > kl_threshold
  standard = [standardize(c)[:, a] for c, a in zip(codes, active)]  # active latents only

  pair_scores = np.full((num_models, num_models), np.nan)
  similarity = np.full((num_models, num_models, d, d), np.nan)
  for i in range(num_models):
    for j in range(num_models):
      if i == j or labels[i] != labels[j]:
        continue
      stopping.check()  # a stop signal ends it between pairs
      r = _similarity(standard[i], standard[j], method, alpha)
      full = np.zeros((d, d))
      full[np.ix_(active[i], active[j])] = r
      similarity[i, j] = full
      pair_scores[i, j] = relative_strength(r)

  model_scores = np.full(num_models, np.nan)
  for i in range(num_models):
    peers = [j for j in range(num_models) if j != i and labels[j] == labels[i]]
    if peers:
      model_scores[i] = np.median(pair_scores[peers, i])
  return {"model_scores": model_scores, "pair_scores": pair_scores, "similarity": similarity,
          "active": active}


def _similarity(codes_from: np.ndarray, codes_to: np.ndarray, method: str,
                alpha: float) -> np.ndarray:
  """The similarity matrix of one ordered pair of models' standardised active codes."""
  if codes_from.shape[1] == 0 or codes_to.shape[1] == 0:
    return np.zeros((codes_from.shape[1], codes_to.shape[1]))
  if method == "lasso":
    return lasso_similarity(codes_from, codes_to, alpha)
  return spearman_similarity(codes_from, codes_to)
