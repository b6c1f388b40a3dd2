"""Tests for the unsupervised scores and UDR: known answers, independent references, laws.

References written here: the Gaussian KL from determinants and inverses, scipy's
``sqrtm`` on dlib's matrix, sklearn's ``mutual_info_score`` on numpy-histogram bins,
scipy's ``spearmanr`` and ``rankdata``, and the relative-strength score by hand.
"""

from __future__ import annotations

import chex
import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import mutual_info_score as sk_mutual_info

from vaejax.evaluation import disentanglement as dis

SIZES = (3, 4, 5)
GRID = dis.FactorGridGroundTruth(SIZES)


def _spd(seed: int, d: int, jitter: float = 0.05) -> np.ndarray:
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(d, d)) * rng.uniform(0.1, 3.0, size=(d, 1))
  return a @ a.T + jitter * np.eye(d)


spd_cases = st.tuples(st.integers(0, 2**31 - 1), st.integers(1, 6))


def _kl_to_marginals(cov):
  """KL(N(0, cov) || N(0, diag cov)) from its textbook form, determinants and an inverse."""
  d = cov.shape[0]
  diag = np.diag(np.diag(cov))
  return 0.5 * (np.trace(np.linalg.inv(diag) @ cov) - d
                + np.log(np.linalg.det(diag) / np.linalg.det(cov)))


# ------------------------------------------------------------------ unsupervised, pure


@settings(max_examples=40, deadline=None)
@given(spd_cases)
def test_total_correlation_is_the_kl_to_the_product_of_marginals(case):
  cov = _spd(*case)
  tc = dis.gaussian_total_correlation(cov)
  assert tc >= 0.0  # Hadamard's inequality.
  np.testing.assert_allclose(tc, _kl_to_marginals(cov), rtol=1e-7, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(spd_cases, st.lists(st.floats(0.01, 100.0), min_size=6, max_size=6),
       st.lists(st.booleans(), min_size=6, max_size=6))
def test_total_correlation_ignores_the_scale_and_sign_of_each_code(case, scales, flips):
  cov = _spd(*case)
  s = (np.asarray(scales) * np.where(flips, -1.0, 1.0))[: cov.shape[0]]
  np.testing.assert_allclose(dis.gaussian_total_correlation(s[:, None] * cov * s[None, :]),
                             dis.gaussian_total_correlation(cov), rtol=1e-6, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(spd_cases)
def test_wasserstein_correlation_matches_scipy_sqrtm_of_dlibs_matrix(case):
  cov = _spd(*case)
  reference = 2 * np.trace(cov) - 2 * np.trace(scipy.linalg.sqrtm(cov * np.diag(cov)[:, None]))
  w = dis.gaussian_wasserstein_correlation(cov)
  np.testing.assert_allclose(w, np.real(reference), rtol=1e-6, atol=1e-8 * np.trace(cov))
  assert 0.0 <= w <= 2.0 * np.trace(cov)
  # Scaling every code by c scales the covariance by c^2, and W with it.
  np.testing.assert_allclose(dis.gaussian_wasserstein_correlation(9.0 * cov), 9.0 * w,
                             rtol=1e-6, atol=1e-8 * np.trace(cov))


def test_diagonal_covariance_has_no_correlation():
  cov = np.diag([0.5, 3.0, 7.0])
  assert dis.gaussian_total_correlation(cov) == pytest.approx(0.0, abs=1e-14)
  assert dis.gaussian_wasserstein_correlation(cov) == pytest.approx(0.0, abs=1e-12)


def test_identical_codes_have_infinite_total_correlation():
  assert dis.gaussian_total_correlation(np.ones((2, 2))) == np.inf


def _reference_mi_score(codes, num_bins=20):
  binned = [np.digitize(c, np.histogram(c, num_bins)[1][:-1]) for c in codes.T]
  d = len(binned)
  pairs = [sk_mutual_info(binned[i], binned[j]) for i in range(d) for j in range(d) if i != j]
  return np.sum(pairs) / (d * d - d)


@pytest.mark.parametrize("seed", [0, 1])
def test_mutual_info_score_matches_sklearn_on_histogram_bins(seed):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(700, 4))
  codes = np.c_[z, np.tanh(z[:, 0] + 0.3 * z[:, 1]), np.full(700, 2.0)]  # one constant code
  assert dis.mutual_info_score(codes) == pytest.approx(_reference_mi_score(codes), rel=1e-10)


def test_unsupervised_scores_known_answers():
  rng = np.random.default_rng(0)
  independent = rng.normal(size=(4000, 4)) * np.array([0.3, 1.0, 2.0, 5.0])
  low = dis.unsupervised_scores(independent)
  assert low["gaussian_total_correlation"] < 0.01
  assert low["gaussian_wasserstein_correlation_norm"] < 0.01
  # A code that repeats one dimension (plus a little noise) in a second one.
  repeated = np.c_[independent, independent[:, 1] + 0.05 * rng.normal(size=4000)]
  high = dis.unsupervised_scores(repeated)
  # Two unit-variance codes with correlation rho have TC = -1/2 log(1 - rho^2).
  rho2 = 1.0 / (1.0 + 0.05**2)
  assert high["gaussian_total_correlation"] == pytest.approx(-0.5 * np.log(1 - rho2), rel=0.05)
  assert high["gaussian_wasserstein_correlation_norm"] > 10 * low[
      "gaussian_wasserstein_correlation_norm"]
  # Two codes only: the score is the MI of the pair, large when one repeats the other.
  pair = dis.unsupervised_scores(repeated[:, [1, 4]])
  alone = dis.unsupervised_scores(independent[:, :2])
  assert pair["mutual_info_score"] > 1.5 and alone["mutual_info_score"] < 0.1


def test_constant_codes_add_no_total_correlation():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(500, 3))
  z[:, 2] += z[:, 0]
  with_constant = np.c_[z, np.full(500, 0.1)]
  plain, padded = dis.unsupervised_scores(z), dis.unsupervised_scores(with_constant)
  assert padded["gaussian_total_correlation"] == pytest.approx(
      plain["gaussian_total_correlation"], rel=1e-9)
  assert padded["gaussian_wasserstein_correlation"] == pytest.approx(
      plain["gaussian_wasserstein_correlation"], rel=1e-9)
  # The mutual-information score keeps the constant code in its denominator (dlib).
  assert padded["mutual_info_score"] == pytest.approx(
      plain["mutual_info_score"] * 6 / 12, rel=1e-9)
  collapsed = dis.unsupervised_scores(np.ones((50, 3)))
  assert collapsed == {"gaussian_total_correlation": 0.0, "gaussian_wasserstein_correlation": 0.0,
                       "gaussian_wasserstein_correlation_norm": 0.0, "mutual_info_score": 0.0}


# ------------------------------------------------------------------ unsupervised, sampler


def test_compute_unsupervised_on_the_factor_grid():
  independent = dis.compute_unsupervised(GRID, lambda obs: obs, num_train=3000)
  assert independent["gaussian_total_correlation"] < 0.01
  assert independent["gaussian_wasserstein_correlation_norm"] < 0.01
  # Repeating factor 0 in a second dimension makes the two codes identical: TC is infinite.
  repeated_fn = lambda obs: np.c_[obs, obs[:, :1]]
  repeated = dis.compute_unsupervised(GRID, repeated_fn, num_train=3000)
  assert repeated["gaussian_total_correlation"] == np.inf
  assert repeated["mutual_info_score"] > 5 * independent["mutual_info_score"]
  # A noisy copy keeps TC finite and large.
  noisy = lambda obs: np.c_[obs, obs[:, :1] + 0.1 * np.cos(7.0 * obs.sum(1, keepdims=True))]
  assert dis.compute_unsupervised(GRID, noisy, num_train=3000)[
      "gaussian_total_correlation"] > 1.0


def test_unsupervised_is_optional_in_evaluate_all():
  assert tuple(dis.METRICS) == ("beta_vae", "factor_vae", "mig", "dci", "sap",
                                "modularity_explicitness")
  assert "unsupervised" in dis.OPTIONAL_METRICS and "unsupervised" not in dis.METRICS
  fn = lambda obs: np.c_[obs, obs[:, 0] + obs[:, 1]]
  scores = dis.evaluate_all(GRID, fn, seed=5, metrics=["unsupervised"],
                            unsupervised={"num_train": 800})
  direct = dis.compute_unsupervised(GRID, fn, seed=5, num_train=800)
  assert scores == {f"unsupervised/{k}": v for k, v in direct.items()}


# ------------------------------------------------------------------------------- UDR


@pytest.mark.parametrize("matrix, expected", [
    (np.eye(3), 1.0),
    ([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], 2.0 / 3.0),
    (np.ones((3, 3)), 1.0 / 3.0),
    (np.zeros((3, 3)), 0.0),
    ([[0.5, 0.0], [0.0, 0.0]], 0.25),  # 0.5 from the live row/column, 0 from the dead ones
    (np.zeros((0, 4)), 0.0),
])
def test_relative_strength_known_answers(matrix, expected):
  assert dis.relative_strength(np.asarray(matrix)) == pytest.approx(expected)


def _by_hand_relative_strength(r):
  cols = [r[:, b].max() ** 2 / r[:, b].sum() if r[:, b].sum() > 0 else 0.0
          for b in range(r.shape[1])]
  rows = [r[a].max() ** 2 / r[a].sum() if r[a].sum() > 0 else 0.0 for a in range(r.shape[0])]
  return 0.5 * (np.mean(cols) + np.mean(rows))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(5, 60), st.integers(1, 4))
def test_average_ranks_and_spearman_match_scipy(seed, n, d):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 4, size=(n, d)).astype(float)  # many ties
  y = x[:, ::-1] + rng.integers(0, 2, size=(n, d))
  np.testing.assert_array_equal(dis.average_ranks(x),
                                np.stack([scipy.stats.rankdata(c) for c in x.T], axis=1))
  want = np.array([[0.0 if np.ptp(x[:, a]) == 0 or np.ptp(y[:, b]) == 0
                    else abs(scipy.stats.spearmanr(x[:, a], y[:, b])[0])
                    for b in range(d)] for a in range(d)])
  np.testing.assert_allclose(dis.spearman_similarity(x, y), want, atol=1e-12)


def _models(seed=0, n=1000, d=4):
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d)
  perm = rng.permutation(d)
  signs = np.where(np.arange(d) % 2 == 0, -1.0, 1.0)
  return rng, base, 2.0 * base[:, perm] * signs + 0.7


def test_udr_of_a_signed_permutation():
  rng, base, permuted = _models()
  kl = np.ones((2, 4))
  spear = dis.udr([base, permuted], kl, method="spearman")
  rho = np.abs(scipy.stats.spearmanr(base, permuted)[0][:4, 4:])
  want = _by_hand_relative_strength(rho)
  chex.assert_trees_all_close(spear["model_scores"], np.full(2, want), atol=1e-12)
  assert want > 0.9  # 1 / (1 + sum of |rho| between unrelated codes ~ 1/sqrt(N))
  # Lasso on standardised codes: each target is one standardised feature exactly, so the
  # soft-thresholded weight is 1 - alpha and every other weight is zero.
  lasso = dis.udr([base, permuted], kl, method="lasso")
  chex.assert_trees_all_close(lasso["model_scores"], np.full(2, 0.9), atol=1e-3)
  similarity = lasso["similarity"][0, 1]
  assert np.count_nonzero(similarity > 1e-6) == 4
  unrelated = dis.udr([base, rng.normal(size=base.shape)], kl, method="lasso")
  assert np.all(unrelated["model_scores"] < 0.05)
  unrelated_s = dis.udr([base, rng.normal(size=base.shape)], kl, method="spearman")
  assert np.all(unrelated_s["model_scores"] < 0.1)


def test_udr_penalises_a_rotation():
  _, base, _ = _models(n=1500)
  standard = (base - base.mean(0)) / base.std(0)
  rot = np.linalg.qr(np.random.default_rng(4).normal(size=(4, 4)))[0]
  for method in dis.UDR_METHODS:
    perm = dis.udr([standard, standard[:, ::-1]], np.ones((2, 4)), method=method)
    rotated = dis.udr([standard, standard @ rot], np.ones((2, 4)), method=method)
    assert rotated["model_scores"].max() < perm["model_scores"].min() - 0.2, method


@pytest.mark.parametrize("method", ["lasso", "spearman"])
def test_udr_ignores_inactive_latents(method):
  rng, base, permuted = _models(seed=2, d=3)
  plain = dis.udr([base, permuted], np.ones((2, 3)), method=method)
  noise = lambda: rng.normal(size=(1000, 2))
  codes = [np.c_[noise()[:, :1], base, noise()[:, 1:]], np.c_[permuted, noise()]]
  kl = np.array([[0.01, 1.0, 2.0, 3.0, 0.0], [1.0, 1.0, 1.0, 0.005, 0.0]])
  padded = dis.udr(codes, kl, method=method)
  chex.assert_trees_all_close(padded["model_scores"], plain["model_scores"], atol=1e-9)
  np.testing.assert_array_equal(padded["active"], kl > 0.01)
  assert np.all(padded["similarity"][0, 1][~padded["active"][0]] == 0.0)
  # The same noise counted as active drags the score down.
  counted = dis.udr(codes, np.ones((2, 5)), method=method)
  assert np.all(counted["model_scores"] < plain["model_scores"] - 0.1)


def test_udr_groups_and_medians():
  rng, base, permuted = _models(seed=3)
  other = rng.normal(size=base.shape)
  other_perm = other[:, ::-1] * -1.0
  codes = [base, other, permuted, other_perm, rng.normal(size=base.shape)]
  out = dis.udr(codes, np.ones((5, 4)), groups=["a", "b", "a", "b", "c"])
  scores, pairs = out["model_scores"], out["pair_scores"]
  chex.assert_trees_all_close(scores[:4], np.full(4, 0.9), atol=1e-3)
  assert np.isnan(scores[4])  # alone in its group
  assert np.isnan(pairs[0, 1]) and np.isnan(pairs[0, 0]) and pairs[0, 2] > 0.89
  assert np.all(np.isnan(out["similarity"][0, 1]))
  # One group of three: model 0's pairs score ~0.9 (the permutation) and ~0 (noise); the
  # median of two is their mean.
  three = dis.udr([base, permuted, other], np.ones((3, 4)))
  assert three["model_scores"][0] == pytest.approx(
      0.5 * (three["pair_scores"][1, 0] + three["pair_scores"][2, 0]))
  assert 0.4 < three["model_scores"][0] < 0.5


def test_udr_with_no_active_latents_scores_zero():
  _, base, permuted = _models()
  out = dis.udr([base, permuted], np.array([np.ones(4), np.zeros(4)]))
  chex.assert_trees_all_close(out["model_scores"], np.zeros(2))


def test_compute_udr_samples_shared_points_and_kl():
  def posterior(rotation, log_var):
    def fn(obs):
      mean = (obs - 1.5) @ rotation
      return mean, np.full_like(mean, log_var)
    return fn

  flip = np.diag([1.0, -1.0, 1.0])[[2, 0, 1]]
  fns = [posterior(np.eye(3), 0.0), posterior(flip, -1.0)]
  out = dis.compute_udr(GRID, fns, seed=1, num_points=600, method="spearman")
  codes, kl = dis.udr_sample(GRID, fns, 600, np.random.default_rng(1))
  # The same generator draws the same points; the KL written out per model.
  obs = GRID.sample(600, np.random.default_rng(1))[1]
  for m, (rotation, log_var) in enumerate([(np.eye(3), 0.0), (flip, -1.0)]):
    mean = (obs - 1.5) @ rotation
    want = 0.5 * (np.mean(mean**2, 0) + np.exp(log_var) - log_var - 1.0)
    chex.assert_trees_all_close(kl[m], want, rtol=1e-10)
    chex.assert_trees_all_close(codes[m], mean)
  # Each code is a monotone function of one factor (|rho| = 1), the others ~0.
  rho = np.abs(scipy.stats.spearmanr(codes[0], codes[1])[0][:3, 3:])
  chex.assert_trees_all_close(out["model_scores"], np.full(2, _by_hand_relative_strength(rho)))
  assert np.all(out["model_scores"] > 0.85)
  # A stacked posterior (num_models, B, d), as a vmapped encoder returns, gives the same.
  stacked = lambda obs: tuple(np.stack(parts) for parts in zip(*(f(obs) for f in fns)))
  again = dis.compute_udr(GRID, stacked, seed=1, num_points=600, method="spearman",
                          chunk_size=128)
  chex.assert_trees_all_close(again["model_scores"], out["model_scores"])


# ---------------------------------------------------------------------------- errors

_Z = np.random.default_rng(9).normal(size=(30, 3))


@pytest.mark.parametrize("call, match", [
    (lambda: dis.gaussian_total_correlation(np.ones((2, 3))), "square"),
    (lambda: dis.gaussian_total_correlation([[1.0, 0.5], [0.2, 1.0]]), "symmetric"),
    (lambda: dis.gaussian_total_correlation([[0.0, 0.0], [0.0, 1.0]]), r"cov\[0, 0\] = 0.0"),
    (lambda: dis.gaussian_wasserstein_correlation([[-1.0]]), "non-negative diagonal"),
    (lambda: dis.mutual_info_score(_Z[:, :1]), "at least 2 code dimensions"),
    (lambda: dis.unsupervised_scores(np.where(_Z > 1, np.inf, _Z)), "finite"),
    (lambda: dis.udr([_Z, _Z], np.ones((2, 3)), method="pearson"), "method must be one of"),
    (lambda: dis.udr([_Z], np.ones((1, 3))), "at least 2 models"),
    (lambda: dis.udr([_Z, _Z[:20]], np.ones((2, 3))), "same points"),
    (lambda: dis.udr([_Z, _Z], np.ones((2, 4))), r"kl_per_model must have shape"),
    (lambda: dis.udr([_Z, _Z], -np.ones((2, 3))), "non-negative"),
    (lambda: dis.udr([_Z, _Z], np.ones((2, 3)), groups=[1]), "one label per model"),
    (lambda: dis.lasso_similarity(_Z, _Z, alpha=0.0), "alpha"),
    (lambda: dis.relative_strength(-np.eye(2)), "non-negative"),
    (lambda: dis.compute_udr(GRID, lambda o: o, num_points=10), r"return \(mean, log_var\)"),
    (lambda: dis.compute_udr(GRID, [], num_points=10), "non-empty sequence"),
])
def test_bad_input_gets_one_clear_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()
