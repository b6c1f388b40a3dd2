"""Samplers: draw from a ground-truth dataset, encode, and score with the pure metrics.

The dataset follows disentanglement_lib's ground-truth interface
(:class:`GroundTruth`): factors are sampled uniformly and rendered into
observations. A representation function maps a batch of observations to codes
``(N, d)``; pass the jit-compiled encoder *mean*. It is called in chunks of
``chunk_size`` observations, the last chunk padded to the same size, so a
jitted function compiles once.

Defaults are those of dlib's ``unsupervised_study_v1`` metric configs. Every
sampler takes ``seed`` (an int or a ``numpy.random.Generator``) and draws all of
its randomness from ``numpy.random.default_rng(seed)``. dlib uses a
``RandomState`` and draws point by point; here batches of points are drawn at
once, so the protocol is the same but exact numbers differ from dlib's for the
same seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from vaejax.evaluation.disentanglement import (
    _checks,
    fixed_factor,
    information,
    prediction,
    udr_ranking,
    unsupervised,
)
from vaejax.utils import stopping
from vaejax.utils.checks import check_int

RepresentationFn = Callable[[np.ndarray], Any]
Seed = int | np.random.Generator
DEFAULT_CHUNK_SIZE = 256
# Batches of fixed-factor points are rendered and encoded this many chunks at a time.
_CHUNKS_PER_DRAW = 16


class GroundTruth(Protocol):
  """What the samplers need from a ground-truth dataset (disentanglement_lib semantics)."""

  factor_sizes: tuple[int, ...]

  def sample_factors(self, num: int, rng: np.random.Generator) -> np.ndarray:
    """``(num, K)`` integer factor classes, each uniform over ``range(factor_sizes[k])``."""

  def sample_observations_from_factors(self, factors: np.ndarray,
                                       rng: np.random.Generator) -> np.ndarray:
    """Observations ``(num, *observation_shape)`` rendered from ``factors``."""

  def sample(self, num: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(factors, observations)`` of ``num`` points."""


class FactorGridGroundTruth:
  """A ground truth whose observations are its factor classes themselves (float32).

  A representation function applied to these observations is a function of the
  factors, which makes metrics' ceilings and chance levels easy to probe; used
  by the tests and the speed benchmark.
  """

  def __init__(self, factor_sizes: Sequence[int], factor_names: Sequence[str] | None = None):
    self.factor_sizes = tuple(check_int(s, "factor size", minimum=1) for s in factor_sizes)
    if not self.factor_sizes:
      raise ValueError("factor_sizes must name at least one factor.")
    if factor_names is None:
      factor_names = tuple(f"factor_{k}" for k in range(len(self.factor_sizes)))
    if len(factor_names) != len(self.factor_sizes):
      raise ValueError(
          f"got {len(factor_names)} factor_names for {len(self.factor_sizes)} factors.")
    self.factor_names = tuple(factor_names)
    self.observation_shape = (len(self.factor_sizes),)

  def sample_factors(self, num: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, self.factor_sizes, size=(num, len(self.factor_sizes)))

  def sample_observations_from_factors(self, factors: np.ndarray,
                                       rng: np.random.Generator) -> np.ndarray:
    del rng  # Deterministic rendering.
    return np.asarray(factors, dtype=np.float32)

  def sample(self, num: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    factors = self.sample_factors(num, rng)
    return factors, self.sample_observations_from_factors(factors, rng)


def _rng(seed: Seed) -> np.random.Generator:
  if isinstance(seed, np.random.Generator):
    return seed
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise TypeError(f"seed must be an int or a numpy Generator, got {seed!r}.")
  return np.random.default_rng(seed)


def _classifier_seed(rng: np.random.Generator) -> int:
  """A seed for a scikit-learn estimator, drawn from the metric's own generator."""
  return int(rng.integers(2**31 - 1))


def _num_factors(ground_truth: GroundTruth) -> int:
  sizes = getattr(ground_truth, "factor_sizes", None)
  if sizes is None or len(sizes) == 0:
    raise ValueError(f"ground_truth must have non-empty factor_sizes, got {sizes!r}.")
  return len(sizes)


def _sample_factors(ground_truth: GroundTruth, num: int, rng: np.random.Generator) -> np.ndarray:
  factors = np.asarray(ground_truth.sample_factors(num, rng))
  if factors.shape != (num, _num_factors(ground_truth)):
    raise ValueError(f"ground_truth.sample_factors({num}) returned shape {factors.shape}, "
                     f"expected {(num, _num_factors(ground_truth))}.")
  return factors.copy()  # We write into it; never alias the dataset's memory.


def represent(representation_fn: RepresentationFn, observations,
              chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
  """Applies ``representation_fn`` in chunks of exactly ``chunk_size`` rows; returns ``(N, d)``.

  The last chunk is padded by repeating its final observation (outputs for the
  padding are dropped), so a jit-compiled function sees a single input shape. A pending
  stop signal ends it between chunks (:func:`vaejax.utils.stopping.check`).
  """
  chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
  observations = np.asarray(observations)
  n = observations.shape[0]
  if n == 0:
    raise ValueError("observations must contain at least one point.")
  outputs = []
  for start in range(0, n, chunk_size):
    stopping.check()
    chunk = observations[start:start + chunk_size]
    m = chunk.shape[0]
    if m < chunk_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], chunk_size - m, axis=0)])
    codes = np.asarray(representation_fn(chunk))
    if codes.ndim != 2 or codes.shape[0] != chunk_size:
      raise ValueError(f"representation_fn must map {chunk_size} observations to a "
                       f"({chunk_size}, d) array, got shape {codes.shape}.")
    outputs.append(codes[:m])
  return np.concatenate(outputs)


def sample_codes_and_factors(ground_truth: GroundTruth, representation_fn: RepresentationFn,
                             num: int, rng: np.random.Generator,
                             chunk_size: int = DEFAULT_CHUNK_SIZE):
  """Draws ``num`` points; returns their codes ``(num, d)`` and factors ``(num, K)``."""
  num = check_int(num, "num", minimum=1)
  codes, factors = [], []
  for start in range(0, num, chunk_size):
    m = min(chunk_size, num - start)
    f, obs = ground_truth.sample(m, rng)
    codes.append(represent(representation_fn, obs, chunk_size))
    factors.append(np.asarray(f))
  return np.concatenate(codes), np.concatenate(factors)


def _fixed_factor_draws(ground_truth, num_points, batch_size, chunk_size, rng):
  """Yields ``(P, B, K)`` factor batches plus the ``(P,)`` index of a factor to fix, in chunks."""
  num_factors = _num_factors(ground_truth)
  per_draw = max(1, _CHUNKS_PER_DRAW * chunk_size // batch_size)
  for start in range(0, num_points, per_draw):
    p = min(per_draw, num_points - start)
    index = rng.integers(num_factors, size=p)
    factors = _sample_factors(ground_truth, p * batch_size, rng)
    yield index, factors.reshape(p, batch_size, num_factors)


def _encode_batches(ground_truth, representation_fn, factors, rng, chunk_size):
  p, b, k = factors.shape
  obs = ground_truth.sample_observations_from_factors(factors.reshape(p * b, k), rng)
  return represent(representation_fn, obs, chunk_size).reshape(p, b, -1)


def beta_vae_sample(ground_truth: GroundTruth, representation_fn: RepresentationFn,
                    num_points: int, batch_size: int, rng: np.random.Generator,
                    chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[np.ndarray, np.ndarray]:
  """BetaVAE training points: features ``(num_points, d)`` and fixed-factor labels.

  Each point: pick factor ``k`` uniformly, draw two batches of ``batch_size``
  factor vectors, copy factor ``k`` of the first batch into the second, encode
  both and take :func:`~fixed_factor.beta_vae_features`.
  """
  features, labels = [], []
  for index, f1 in _fixed_factor_draws(ground_truth, num_points, batch_size, chunk_size, rng):
    p = index.size
    f2 = _sample_factors(ground_truth, p * batch_size, rng).reshape(f1.shape)
    rows = np.arange(p)
    f2[rows, :, index] = f1[rows, :, index]
    r1 = _encode_batches(ground_truth, representation_fn, f1, rng, chunk_size)
    r2 = _encode_batches(ground_truth, representation_fn, f2, rng, chunk_size)
    features.append(fixed_factor.beta_vae_features(r1, r2))
    labels.append(index)
  return np.concatenate(features), np.concatenate(labels)


def factor_vae_sample(ground_truth: GroundTruth, representation_fn: RepresentationFn,
                      num_points: int, batch_size: int, global_variances: np.ndarray,
                      active_dims: np.ndarray, rng: np.random.Generator,
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
  """FactorVAE votes ``(K, d)`` from ``num_points`` batches, each with one random factor fixed."""
  num_factors = _num_factors(ground_truth)
  votes = np.zeros((num_factors, global_variances.shape[0]), dtype=np.int64)
  for index, f in _fixed_factor_draws(ground_truth, num_points, batch_size, chunk_size, rng):
    rows = np.arange(index.size)
    f[rows, :, index] = f[rows, :1, index]
    codes = _encode_batches(ground_truth, representation_fn, f, rng, chunk_size)
    votes += fixed_factor.factor_vae_votes(codes, index, global_variances, num_factors,
                                           active_dims)
  return votes


def compute_beta_vae(ground_truth: GroundTruth, representation_fn: RepresentationFn,
                     seed: Seed = 0, batch_size: int = 64, num_train: int = 10000,
                     num_eval: int = 5000,
                     chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float]:
  """BetaVAE score (Higgins et al. 2017), dlib defaults: batch 64, 10000 train, 5000 eval points.

  Encodes ``2 * batch_size * (num_train + num_eval)`` observations (1.92M at the
  defaults). See :func:`beta_vae_sample` and :func:`~fixed_factor.beta_vae_score`.
  """
  rng = _rng(seed)
  batch_size = check_int(batch_size, "batch_size", minimum=1)
  num_train = check_int(num_train, "num_train", minimum=2)
  num_eval = check_int(num_eval, "num_eval", minimum=1)
  x_train, y_train = beta_vae_sample(ground_truth, representation_fn, num_train, batch_size, rng,
                                     chunk_size)
  x_eval, y_eval = beta_vae_sample(ground_truth, representation_fn, num_eval, batch_size, rng,
                                   chunk_size)
  return fixed_factor.beta_vae_score(x_train, y_train, x_eval, y_eval,
                                     seed=_classifier_seed(rng))


def compute_factor_vae(ground_truth: GroundTruth, representation_fn: RepresentationFn,
                       seed: Seed = 0, batch_size: int = 64, num_train: int = 10000,
                       num_eval: int = 5000, num_variance_estimate: int = 10000,
                       prune_threshold: float = fixed_factor.DEFAULT_PRUNE_THRESHOLD,
                       chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float]:
  """FactorVAE score (Kim & Mnih 2018), dlib defaults.

  Global variances (ddof=1) from ``num_variance_estimate`` points; dimensions
  with standard deviation below ``prune_threshold`` (0.05) are pruned; votes
  from ``num_train`` / ``num_eval`` batches of ``batch_size`` (64) points with
  one factor fixed; majority-vote accuracy. If every dimension is pruned (e.g.
  a fully collapsed encoder) both accuracies are 0, as in dlib.

  Returns:
    ``train_accuracy``, ``eval_accuracy`` and ``num_active_dims`` (the number of
    unpruned dimensions; dlib reports the code width here by mistake).
  """
  rng = _rng(seed)
  batch_size = check_int(batch_size, "batch_size", minimum=2)
  num_train = check_int(num_train, "num_train", minimum=1)
  num_eval = check_int(num_eval, "num_eval", minimum=1)
  num_variance_estimate = check_int(num_variance_estimate, "num_variance_estimate", minimum=2)
  codes, _ = sample_codes_and_factors(ground_truth, representation_fn, num_variance_estimate, rng,
                                      chunk_size)
  codes = _checks.check_codes(codes, "representation codes")
  global_variances = np.var(codes, axis=0, ddof=1)
  active = fixed_factor.factor_vae_active_dims(global_variances, prune_threshold)
  if not active.any():
    return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0.0}
  votes_train = factor_vae_sample(ground_truth, representation_fn, num_train, batch_size,
                                  global_variances, active, rng, chunk_size)
  votes_eval = factor_vae_sample(ground_truth, representation_fn, num_eval, batch_size,
                                 global_variances, active, rng, chunk_size)
  scores = fixed_factor.factor_vae_score(votes_train, votes_eval)
  return {**scores, "num_active_dims": float(active.sum())}


def compute_mig(ground_truth: GroundTruth, representation_fn: RepresentationFn, seed: Seed = 0,
                num_train: int = 10000, num_bins: int = information.DEFAULT_NUM_BINS,
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float]:
  """MIG on ``num_train`` (10000) points with ``num_bins`` (20) histogram bins; key
  ``discrete_mig``."""
  rng = _rng(seed)
  codes, factors = sample_codes_and_factors(ground_truth, representation_fn, num_train, rng,
                                            chunk_size)
  score, _ = information.mig(codes, factors, num_bins)
  return {"discrete_mig": score}


def compute_dci(ground_truth: GroundTruth, representation_fn: RepresentationFn, seed: Seed = 0,
                num_train: int = 10000, num_test: int = 5000, model: str = "hist_gbt",
                n_jobs: int = 1, chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float]:
  """DCI on ``num_train`` (10000) / ``num_test`` (5000) points; see :func:`~prediction.dci`.

  ``model="gbt"`` reproduces dlib exactly but takes minutes; the default
  ``"hist_gbt"`` is the documented fast approximation.
  """
  rng = _rng(seed)
  train = sample_codes_and_factors(ground_truth, representation_fn, num_train, rng, chunk_size)
  test = sample_codes_and_factors(ground_truth, representation_fn, num_test, rng, chunk_size)
  scores = prediction.dci(*train, *test, seed=_classifier_seed(rng), model=model,
                          n_jobs=n_jobs)
  del scores["importance_matrix"]
  return scores


def compute_sap(ground_truth: GroundTruth, representation_fn: RepresentationFn, seed: Seed = 0,
                num_train: int = 10000, num_test: int = 5000, continuous_factors: bool = False,
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float]:
  """SAP on ``num_train`` (10000) / ``num_test`` (5000) points, discrete factors; key
  ``sap_score``."""
  rng = _rng(seed)
  train = sample_codes_and_factors(ground_truth, representation_fn, num_train, rng, chunk_size)
  test = sample_codes_and_factors(ground_truth, representation_fn, num_test, rng, chunk_size)
  score, _ = prediction.sap(*train, *test, continuous_factors=continuous_factors,
                           seed=_classifier_seed(rng))
  return {"sap_score": score}


def compute_modularity_explicitness(
    ground_truth: GroundTruth, representation_fn: RepresentationFn, seed: Seed = 0,
    num_train: int = 10000, num_test: int = 5000, num_bins: int = information.DEFAULT_NUM_BINS,
    chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float]:
  """Modularity (train MI, 20 bins) and explicitness (train/test ROC-AUC), dlib defaults."""
  rng = _rng(seed)
  train = sample_codes_and_factors(ground_truth, representation_fn, num_train, rng, chunk_size)
  test = sample_codes_and_factors(ground_truth, representation_fn, num_test, rng, chunk_size)
  return {"modularity_score": information.modularity(*train, num_bins),
          **prediction.explicitness(*train, *test)}


def compute_unsupervised(ground_truth: GroundTruth, representation_fn: RepresentationFn,
                         seed: Seed = 0, num_train: int = 10000,
                         num_bins: int = information.DEFAULT_NUM_BINS,
                         chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float]:
  """dlib's unsupervised scores on the codes of ``num_train`` (10000) points.

  Gaussian total correlation, Gaussian Wasserstein correlation (raw and divided
  by the trace of the covariance) and the mean pairwise mutual information of
  the codes (``num_bins`` = 20 histogram bins); see
  :func:`~unsupervised.unsupervised_scores`. The factors are drawn (the points
  are uniform over the factor grid) but not used.
  """
  rng = _rng(seed)
  codes, _ = sample_codes_and_factors(ground_truth, representation_fn, num_train, rng,
                                      chunk_size)
  return unsupervised.unsupervised_scores(codes, num_bins)


PosteriorFn = Callable[[np.ndarray], tuple[Any, Any]]


def _posterior_in_chunks(posterior_fn: PosteriorFn, observations: np.ndarray,
                         chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Means and log-variances ``(M, N, d)`` of ``posterior_fn`` applied in padded chunks."""
  n = observations.shape[0]
  means, log_vars = [], []
  for start in range(0, n, chunk_size):
    stopping.check()
    chunk = observations[start:start + chunk_size]
    m = chunk.shape[0]
    if m < chunk_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], chunk_size - m, axis=0)])
    out = posterior_fn(chunk)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
      raise ValueError("posterior_fn must return (mean, log_var), got "
                       f"{type(out).__name__}.")
    mean, log_var = np.asarray(out[0], np.float64), np.asarray(out[1], np.float64)
    if mean.shape != log_var.shape or mean.ndim not in (2, 3) or mean.shape[-2] != chunk_size:
      raise ValueError(
          f"posterior_fn must map {chunk_size} observations to mean and log_var of shape "
          f"({chunk_size}, d) or (num_models, {chunk_size}, d), got {mean.shape} and "
          f"{log_var.shape}.")
    means.append((mean[None] if mean.ndim == 2 else mean)[:, :m])
    log_vars.append((log_var[None] if log_var.ndim == 2 else log_var)[:, :m])
  return np.concatenate(means, axis=1), np.concatenate(log_vars, axis=1)


def udr_sample(ground_truth: GroundTruth, posterior_fns: PosteriorFn | Sequence[PosteriorFn],
               num_points: int, rng: np.random.Generator,
               chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[np.ndarray, np.ndarray]:
  """Encodes the same ``num_points`` observations with every model; returns UDR's inputs.

  Args:
    ground_truth: the dataset to draw observations from.
    posterior_fns: per model ``fn(observations) -> (mean, log_var)``, each
      ``(B, d)``; or one function for a stack of models returning ``(M, B, d)``
      each (e.g. the encoder vmapped over stacked parameters).
    num_points: observations to draw (dlib: 1,000).
    rng: the generator.

  Returns:
    codes ``(M, num_points, d)`` (the means) and KL per latent ``(M, d)``:
    ``mean_x 1/2 (mu^2 + exp(log_var) - log_var - 1)``.
  """
  num_points = check_int(num_points, "num_points", minimum=2)
  chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
  _, observations = ground_truth.sample(num_points, rng)
  observations = np.asarray(observations)
  fns = [posterior_fns] if callable(posterior_fns) else list(posterior_fns)
  if not fns or not all(callable(f) for f in fns):
    raise ValueError("posterior_fns must be a callable or a non-empty sequence of callables.")
  means, log_vars = zip(*(_posterior_in_chunks(f, observations, chunk_size) for f in fns))
  means, log_vars = np.concatenate(means), np.concatenate(log_vars)
  kl = 0.5 * (np.square(means) + np.exp(log_vars) - log_vars - 1.0)
  return means, kl.mean(axis=1)


def compute_udr(ground_truth: GroundTruth, posterior_fns: PosteriorFn | Sequence[PosteriorFn],
                seed: Seed = 0, num_points: int = 1000, groups: Sequence[Any] | None = None,
                method: str = "lasso", kl_threshold: float = udr_ranking.DEFAULT_KL_THRESHOLD,
                alpha: float = udr_ranking.DEFAULT_LASSO_ALPHA,
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, np.ndarray]:
  """UDR (Duan et al. 2020) of several models on ``num_points`` (1000) shared observations.

  Draws the points with :func:`udr_sample` and scores them with
  :func:`~udr_ranking.udr`; see there for ``groups``, ``method`` and the outputs
  (``model_scores`` (M,), ``pair_scores`` (M, M), ``similarity``, ``active``).
  """
  rng = _rng(seed)
  codes, kl = udr_sample(ground_truth, posterior_fns, num_points, rng, chunk_size)
  return udr_ranking.udr(codes, kl, groups, method, kl_threshold=kl_threshold, alpha=alpha)


# The default set: dlib's six supervised metrics. ``evaluate_all()`` runs these.
METRICS: dict[str, Callable[..., dict[str, float]]] = {
    "beta_vae": compute_beta_vae,
    "factor_vae": compute_factor_vae,
    "mig": compute_mig,
    "dci": compute_dci,
    "sap": compute_sap,
    "modularity_explicitness": compute_modularity_explicitness,
}

# Registered metrics that run only when named, so the default outputs stay the six above.
OPTIONAL_METRICS: dict[str, Callable[..., dict[str, float]]] = {
    "unsupervised": compute_unsupervised,
}


def evaluate_all(ground_truth: GroundTruth, representation_fn: RepresentationFn, seed: Seed = 0,
                 metrics: Sequence[str] | None = None,
                 **overrides: Mapping[str, Any]) -> dict[str, float]:
  """Runs several metrics (default: the six of :data:`METRICS`) and flattens their results.

  ``metrics`` may name any metric of :data:`METRICS` or :data:`OPTIONAL_METRICS`
  (e.g. ``"unsupervised"``). Each metric gets a fresh generator from ``seed``
  (as dlib evaluates every metric in its own run with the same seed).
  Per-metric keyword arguments go in ``overrides`` under the metric's name, e.g.
  ``evaluate_all(data, encode, dci={"num_train": 2000}, sap={"num_test": 1000})``.

  Returns:
    ``{"<metric>/<score>": value}``, e.g. ``"mig/discrete_mig"``, ``"dci/completeness"``.
  """
  registry = {**METRICS, **OPTIONAL_METRICS}
  if metrics is None:
    names = tuple(METRICS)
  else:
    names = (metrics,) if isinstance(metrics, str) else tuple(metrics)
  for name in (*names, *overrides):
    if name not in registry:
      raise ValueError(f"unknown metric {name!r}; available: {sorted(registry)}.")
  for name, kwargs in overrides.items():
    if not isinstance(kwargs, Mapping):
      raise TypeError(f"override for {name!r} must be a dict of keyword arguments, got {kwargs!r}.")
    if "seed" in kwargs:
      raise ValueError(f"override for {name!r} sets 'seed'; pass seed to evaluate_all instead.")
  results = {}
  for name in names:
    scores = registry[name](ground_truth, representation_fn, seed=seed, **overrides.get(name, {}))
    results.update({f"{name}/{key}": float(value) for key, value in scores.items()})
  return results
