r"""Unsupervised scores of a representation: how dependent its code dimensions are.

disentanglement_lib's ``unsupervised_metrics`` protocol, on codes ``(N, d)``
(the encoder means of N points; dlib: 10,000) and their sample covariance
``Sigma = np.cov(codes, rowvar=False)`` (ddof=1). With ``D = diag(Sigma)``:

* Gaussian total correlation, the KL divergence from ``N(0, Sigma)`` to the
  product of its marginals ``N(0, D)``:

  .. math:: \mathrm{TC} = \tfrac12\Big(\sum_i \log \Sigma_{ii} - \log\det\Sigma\Big)
            = -\tfrac12 \log\det C, \quad C = D^{-1/2}\Sigma D^{-1/2}

  (dlib evaluates the first form with ``slogdet``; here the second, from C's
  eigenvalues, which also tells a singular covariance from round-off);

* Gaussian Wasserstein correlation, the squared 2-Wasserstein distance between
  the same two Gaussians:

  .. math:: W = 2\,\mathrm{tr}\,\Sigma - 2\,\mathrm{tr}\sqrt{D\Sigma}
            = 2\,\mathrm{tr}\,\Sigma - 2 \sum_k \sqrt{\lambda_k(D^{1/2}\Sigma D^{1/2})},

  (``D Sigma`` is dlib's ``Sigma * diag(Sigma)[:, None]``; it is similar to the
  positive semi-definite ``D^{1/2} Sigma D^{1/2}``, so the trace of its principal
  square root is the sum of the square roots of that matrix's eigenvalues, and no
  general ``sqrtm`` is needed), and its normalised form ``W / tr Sigma``;

* mutual-information score, the mean pairwise discrete mutual information
  (nats) between different code dimensions, each cut into 20 equal-width
  histogram bins (the discretisation of MIG):

  .. math:: \mathrm{MI} = \frac{1}{d(d-1)} \sum_{i \ne j} I(\bar c_i; \bar c_j).

All three are 0 for independent codes (up to sampling error) and grow with the
dependence between dimensions. They need no ground-truth factors.
"""

from __future__ import annotations

import numpy as np

from vaejax.evaluation.disentanglement import _checks, information


def _check_covariance(cov) -> np.ndarray:
  arr = np.asarray(cov, dtype=np.float64)
  if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 1:
    raise ValueError(f"cov must be a square (d, d) matrix with d >= 1, got shape {arr.shape}.")
  if not np.all(np.isfinite(arr)):
    raise ValueError("cov must be finite.")
  scale = max(float(np.max(np.abs(arr))), np.finfo(np.float64).tiny)
  if not np.allclose(arr, arr.T, rtol=0.0, atol=1e-10 * scale):
    raise ValueError("cov must be symmetric.")
  if np.any(np.diag(arr) < 0):
    i = int(np.argmax(np.diag(arr) < 0))
    raise ValueError(f"cov must have a non-negative diagonal; cov[{i}, {i}] = {arr[i, i]}.")
  return arr


def gaussian_total_correlation(cov) -> float:
  r"""Total correlation of ``N(0, cov)``: ``1/2 (sum_i log cov_ii - log det cov)`` (nats).

  ``>= 0`` by Hadamard's inequality, 0 iff ``cov`` is diagonal, unchanged by
  rescaling any coordinate. Computed as ``-1/2 sum_k log lambda_k`` over the
  eigenvalues of the correlation matrix ``C = D^{-1/2} cov D^{-1/2}`` (the same
  number as dlib's ``slogdet`` form, but scale-free, so singularity is judged
  relative to 1): if ``min lambda <= d * eps`` (float64 epsilon), some code is a
  linear function of the others to working precision, the dependence is
  infinite and the result is ``inf`` (a log-determinant there would be
  round-off, e.g. ~18 nats for two identical codes).

  Args:
    cov: ``(d, d)`` symmetric positive semi-definite with a positive diagonal (a
      constant code has no marginal density; :func:`unsupervised_scores` drops
      constant codes, which are independent of everything, before calling this).

  >>> import numpy as np
  >>> round(gaussian_total_correlation(np.array([[1.0, 0.5], [0.5, 1.0]])), 4)  # -log(1 - ρ²) / 2
  0.1438
  >>> gaussian_total_correlation(np.diag([1.0, 4.0])) == 0
  True
  """
  cov = _check_covariance(cov)
  diag = np.diag(cov)
  if np.any(diag <= 0):
    i = int(np.argmax(diag <= 0))
    raise ValueError(
        f"cov[{i}, {i}] = {diag[i]}: code {i} is constant, so its Gaussian marginal is "
        "degenerate; drop constant codes (they add nothing to the total correlation).")
  root = np.sqrt(diag)
  eigenvalues = np.linalg.eigvalsh(cov / root[:, None] / root[None, :])
  if eigenvalues.min() <= cov.shape[0] * np.finfo(np.float64).eps:
    return float("inf")
  return float(max(-0.5 * np.sum(np.log(eigenvalues)), 0.0))


def gaussian_wasserstein_correlation(cov) -> float:
  r"""Squared 2-Wasserstein distance between ``N(0, cov)`` and ``N(0, diag(cov))``.

  ``2 tr cov - 2 tr sqrt(D cov)`` with ``D = diag(cov)``, computed as
  ``2 tr cov - 2 sum_k sqrt(lambda_k)`` over the eigenvalues of
  ``D^{1/2} cov D^{1/2}`` (negative round-off eigenvalues clipped to 0).
  In ``[0, 2 tr cov]``; 0 iff ``cov`` is diagonal; it scales like a variance.

  Args:
    cov: ``(d, d)`` symmetric positive semi-definite; zero variances are allowed.

  >>> import numpy as np
  >>> round(gaussian_wasserstein_correlation(np.array([[1.0, 0.5], [0.5, 1.0]])), 4)
  0.1363
  >>> gaussian_wasserstein_correlation(np.diag([1.0, 4.0]))
  0.0
  """
  cov = _check_covariance(cov)
  root = np.sqrt(np.diag(cov))
  eigenvalues = np.linalg.eigvalsh(root[:, None] * cov * root[None, :])
  w = 2.0 * np.trace(cov) - 2.0 * np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None)))
  return float(max(w, 0.0))


def mutual_info_score(codes, num_bins: int = information.DEFAULT_NUM_BINS) -> float:
  """Mean discrete mutual information (nats) over ordered pairs of different code dimensions.

  Each code is discretised with :func:`~information.discretize` (``num_bins``
  equal-width histogram bins, as for MIG) and the plug-in MI of every pair comes
  from :func:`~information.discrete_mutual_info`; the diagonal (each code's own
  entropy) is left out: ``sum_{i != j} I_ij / (d^2 - d)``. A constant code has
  zero MI with every other and still counts in the denominator (as in dlib).

  Args:
    codes: ``(N, d)`` real, finite, d >= 2.
    num_bins: histogram bins per code (dlib: 20).

  >>> import numpy as np
  >>> x = np.linspace(0.0, 1.0, 40)
  >>> round(mutual_info_score(np.stack([x, x], 1)), 3)  # a copy: MI = H(20 equal bins) = log 20
  2.996
  """
  codes = _checks.check_codes(codes, min_dims=2)
  binned = information.discretize(codes, num_bins)
  mi = information.discrete_mutual_info(binned, binned)
  d = codes.shape[1]
  return float((mi.sum() - np.trace(mi)) / (d * d - d))


def unsupervised_scores(codes, num_bins: int = information.DEFAULT_NUM_BINS) -> dict[str, float]:
  """All of dlib's unsupervised scores of codes ``(N, d)``, keyed as dlib names them.

  ``Sigma = np.cov(codes, rowvar=False)`` (ddof=1). Codes that are exactly
  constant are left out of the total correlation (a constant is independent of
  everything, so this is its exact value; dlib returns NaN there); if every code
  is constant the total and Wasserstein correlations are 0 and so is the
  normalised Wasserstein correlation (dlib: 0/0).

  Args:
    codes: ``(N >= 2, d >= 2)`` real, finite; dlib uses the means of 10,000 points.
    num_bins: histogram bins for the mutual-information score.

  Returns:
    ``gaussian_total_correlation``, ``gaussian_wasserstein_correlation``,
    ``gaussian_wasserstein_correlation_norm`` (divided by ``tr Sigma``) and
    ``mutual_info_score``.

  >>> import numpy as np
  >>> z = np.random.default_rng(0).standard_normal((1000, 2))
  >>> scores = unsupervised_scores(np.stack([z[:, 0], z[:, 0] + z[:, 1]], 1))  # ρ ≈ 0.71
  >>> for name in sorted(scores):
  ...   print(name)
  gaussian_total_correlation
  gaussian_wasserstein_correlation
  gaussian_wasserstein_correlation_norm
  mutual_info_score
  >>> 0.3 < scores["gaussian_total_correlation"] < 0.4  # -log(1 - ρ²) / 2 = 0.35
  True
  """
  codes = _checks.check_codes(codes, min_dims=2)
  cov = np.atleast_2d(np.cov(codes, rowvar=False))
  varying = np.ptp(codes, axis=0) > 0
  total_correlation = (gaussian_total_correlation(cov[np.ix_(varying, varying)])
                       if varying.any() else 0.0)
  wasserstein = gaussian_wasserstein_correlation(cov)
  trace = float(np.trace(cov))
  return {
      "gaussian_total_correlation": total_correlation,
      "gaussian_wasserstein_correlation": wasserstein,
      "gaussian_wasserstein_correlation_norm": wasserstein / trace if trace > 0 else 0.0,
      "mutual_info_score": mutual_info_score(codes, num_bins),
  }
