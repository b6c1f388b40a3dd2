"""Tests for vaejax.evaluation.disentanglement: known answers, references and errors.

Known answers: the true factors as codes score (about) 1, pure noise scores
chance, a rotation of the factors loses the axis-aligned scores but not the
information, a duplicated code has a MIG gap of 0. References: sklearn's
``mutual_info_score``, scipy's entropy and a direct, loop-by-loop MIG.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import mutual_info_score

from vaejax.evaluation import disentanglement as dis

SIZES = (2, 3, 4, 5)  # All <= 20 bins, so a true factor keeps all its information.
K = len(SIZES)


def _factors(n: int, seed: int, sizes=SIZES) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, sizes, size=(n, len(sizes)))


def _scaled(factors, sizes=SIZES) -> np.ndarray:
  return factors / (np.asarray(sizes) - 1.0) - 0.5


def _rotation() -> np.ndarray:
  rot = np.linalg.qr(np.random.default_rng(8).normal(size=(K, K)))[0]
  assert np.abs(rot).max() < 0.8  # Precondition: every code mixes several factors.
  return rot


def _noise_fn(seed: int = 0, dim: int = K):
  rng = np.random.default_rng(seed)
  return lambda obs: rng.normal(size=(obs.shape[0], dim))


class _EmbeddedGrid:
  """An independent fake ground truth: observations are a fixed linear embedding of the factors."""

  factor_sizes = SIZES
  factor_names = ("a", "b", "c", "d")
  observation_shape = (7,)
  embedding = np.random.default_rng(1).normal(size=(K, 7))

  def sample_factors(self, num, rng):
    return np.stack([rng.integers(s, size=num) for s in self.factor_sizes], axis=1)

  def sample_observations_from_factors(self, factors, rng):
    del rng
    return factors @ self.embedding

  def sample(self, num, rng):
    factors = self.sample_factors(num, rng)
    return factors, self.sample_observations_from_factors(factors, rng)


def _decode_embedding(obs):
  # The least-squares inverse recovers the factors; rounding removes float error, which would
  # otherwise straddle the histogram edges that integer codes sit on.
  return np.round(obs @ np.linalg.pinv(_EmbeddedGrid.embedding))


# ----------------------------------------------------------------- information


def test_discretize_gives_integers_their_own_bins():
  values = np.tile(np.arange(20.0), 3)
  codes = np.stack([values, 7.0 * values - 3.0, np.full_like(values, 2.5)], axis=1)
  out = dis.discretize(codes, num_bins=20)
  np.testing.assert_array_equal(out[:, 0], values.astype(int) + 1)
  np.testing.assert_array_equal(out[:, 1], values.astype(int) + 1)
  assert np.unique(out[:, 2]).size == 1  # A constant code falls in one bin.


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.int64, st.tuples(st.integers(2, 40), st.integers(1, 3)),
                  elements=st.integers(-800, 800)),
       st.integers(1, 25))
def test_discretize_is_monotone_and_spans_the_bins(raw, num_bins):
  codes = raw / 8.0
  out = dis.discretize(codes, num_bins)
  assert out.min() >= 1 and out.max() <= num_bins
  for j in range(codes.shape[1]):
    order = np.argsort(codes[:, j], kind="stable")
    assert np.all(np.diff(out[order, j]) >= 0)
    if np.ptp(codes[:, j]) > 0:
      assert out[order[0], j] == 1 and out[order[-1], j] == num_bins


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 60), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_discrete_mutual_info_matches_sklearn(n, d, num_factors, seed):
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, 5, size=(n, d))
  factors = (codes[:, :1] + rng.integers(0, 3, size=(n, num_factors))) % 4  # Dependent.
  got = dis.discrete_mutual_info(codes, factors)
  want = np.array([[mutual_info_score(factors[:, k], codes[:, i]) for k in range(num_factors)]
                   for i in range(d)])
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_discrete_entropy_matches_scipy():
  factors = _factors(500, 0, sizes=(2, 7, 30))
  want = [scipy.stats.entropy(np.bincount(factors[:, k])) for k in range(3)]
  np.testing.assert_allclose(dis.discrete_entropy(factors), want, rtol=1e-12)


def _direct_mig(codes, factors, num_bins=20):
  """dlib's recipe written out: histogram bins, sklearn MI, entropy as MI(y; y)."""
  binned = [np.digitize(c, np.histogram(c, num_bins)[1][:-1]) for c in codes.T]
  gaps = []
  for y in factors.T:
    mi = sorted((mutual_info_score(y, b) for b in binned), reverse=True)
    gaps.append((mi[0] - mi[1]) / mutual_info_score(y, y))
  return np.mean(gaps)


def test_mig_matches_direct_sklearn_computation():
  factors = _factors(1500, 1)
  rng = np.random.default_rng(2)
  codes = np.concatenate([_scaled(factors) @ rng.normal(size=(K, 3)),
                          rng.normal(size=(1500, 2))], axis=1)
  score, details = dis.mig(codes, factors)
  assert score == pytest.approx(_direct_mig(codes, factors), abs=1e-12)
  assert details["mutual_info"].shape == (5, K) and details["gap"].shape == (K,)


def test_mig_known_representations():
  factors = _factors(3000, 3)
  true_score, details = dis.mig(factors.astype(float), factors)
  assert true_score > 0.98
  np.testing.assert_array_equal(details["top_code"], np.arange(K))
  noise_score, _ = dis.mig(np.random.default_rng(0).normal(size=(3000, K)), factors)
  assert noise_score < 0.03
  rotated_score, _ = dis.mig(_scaled(factors) @ _rotation(), factors)
  assert rotated_score < 0.6
  # Duplicating the code of factor 0: its top two MIs are equal, so its gap is exactly 0.
  duplicated = np.concatenate([factors[:, :1], factors], axis=1).astype(float)
  _, dup = dis.mig(duplicated, factors)
  assert dup["gap"][0] == 0.0
  assert np.all(dup["gap"][1:] > 0.97)


def test_mig_ignores_a_constant_code():
  factors = _factors(800, 4)
  codes = _scaled(factors) + 0.1 * np.random.default_rng(1).normal(size=(800, K))
  with_constant = np.concatenate([codes, np.full((800, 1), 3.0)], axis=1)
  assert dis.mig(with_constant, factors)[0] == dis.mig(codes, factors)[0]


@pytest.mark.parametrize("mi, expected", [
    ([[1.0, 0.0], [0.0, 1.0]], 1.0),
    ([[1.0, 1.0]], 0.0),
    ([[0.0, 0.0], [1.0, 0.0]], 0.5),  # An uninformative code scores 0 (dlib).
    ([[2.0, 1.0, 0.0]], 0.875),  # 1 - 1 / (4 * 2).
])
def test_modularity_from_mutual_info_known_answers(mi, expected):
  assert dis.modularity_from_mutual_info(np.array(mi)) == pytest.approx(expected)


def test_modularity_known_representations():
  factors = _factors(2000, 5)
  assert dis.modularity(factors.astype(float), factors) > 0.98
  assert dis.modularity(_scaled(factors) @ _rotation(), factors) < 0.9


# ------------------------------------------------------------------ prediction


@pytest.mark.parametrize("matrix, expected", [
    (np.eye(3), (1.0, 1.0)),
    (np.ones((3, 3)), (0.0, 0.0)),
    (np.zeros((3, 2)), (0.0, 0.0)),
    (np.array([[1.0, 1.0], [0.0, 0.0]]), (0.0, 1.0)),  # One code explains both factors.
])
def test_disentanglement_completeness_known_answers(matrix, expected):
  np.testing.assert_allclose(dis.disentanglement_completeness(matrix), expected, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(2, 6), st.integers(2, 6)),
                  elements=st.floats(0.0, 10.0)))
def test_disentanglement_completeness_matches_scipy_entropy(matrix):
  r = matrix if matrix.sum() > 0 else np.ones_like(matrix)
  d_ref = np.sum((1 - scipy.stats.entropy(matrix.T + 1e-11, base=matrix.shape[1]))
                 * r.sum(1) / r.sum())
  c_ref = np.sum((1 - scipy.stats.entropy(matrix + 1e-11, base=matrix.shape[0]))
                 * r.sum(0) / r.sum())
  np.testing.assert_allclose(dis.disentanglement_completeness(matrix), (d_ref, c_ref),
                             atol=1e-9)


DCI_SIZES = (2, 3, 4)


def _dci_data(transform, n_train=600, n_test=300):
  f_train, f_test = _factors(n_train, 6, DCI_SIZES), _factors(n_test, 7, DCI_SIZES)
  return (transform(f_train), f_train, transform(f_test), f_test)


@pytest.mark.parametrize("model", dis.DCI_MODELS)
def test_dci_true_factors_score_one(model):
  extra = np.random.default_rng(0)
  # The true factors plus one pure-noise code, which must get no importance.
  data = _dci_data(lambda f: np.concatenate(
      [f.astype(float), extra.normal(size=(len(f), 1))], axis=1))
  scores = dis.dci(*data, model=model)
  assert scores["disentanglement"] > 0.95 and scores["completeness"] > 0.95
  assert scores["informativeness_test"] == 1.0
  assert scores["importance_matrix"].shape == (4, 3)
  np.testing.assert_allclose(scores["importance_matrix"].sum(0), 1.0)
  assert scores["importance_matrix"][3].max() < 0.02


def test_dci_rotation_keeps_information_but_not_disentanglement():
  rot = np.linalg.qr(np.random.default_rng(27).normal(size=(3, 3)))[0]
  assert np.abs(rot).max() < 0.8
  scores = dis.dci(*_dci_data(lambda f: _scaled(f, DCI_SIZES) @ rot))
  assert scores["disentanglement"] < 0.6 and scores["completeness"] < 0.6
  assert scores["informativeness_test"] > 0.9


def test_dci_fast_model_tracks_sklearn_gbt():
  mix = np.array([[1.0, 0.3, 0.0], [0.2, 1.0, 0.4], [0.0, 0.0, 1.0]])
  rng = np.random.default_rng(3)
  data = _dci_data(lambda f: _scaled(f, DCI_SIZES) @ mix + 0.1 * rng.normal(size=(len(f), 3)))
  fast, exact = dis.dci(*data, model="hist_gbt"), dis.dci(*data, model="gbt")
  for key in ("disentanglement", "completeness", "informativeness_test"):
    assert fast[key] == pytest.approx(exact[key], abs=0.05), key
  assert 0.3 < exact["disentanglement"] < 0.95  # Neither trivial nor perfect.


def test_dci_is_independent_of_n_jobs():
  data = _dci_data(lambda f: _scaled(f, DCI_SIZES) + 0.2 * np.sin(3.0 * f))
  one, two = dis.dci(*data, n_jobs=1), dis.dci(*data, n_jobs=2)
  np.testing.assert_array_equal(one["importance_matrix"], two["importance_matrix"])


def test_sap_known_representations():
  factors, test = _factors(2000, 8), _factors(1000, 9)
  score, details = dis.sap(factors, factors.astype(float), test, test.astype(float),
                           continuous_factors=True)
  assert score > 0.98 and details["score_matrix"].shape == (K, K)
  noise = np.random.default_rng(0).normal(size=(2000, K))
  assert dis.sap(noise, factors, noise[:1000], test)[0] < 0.05
  # Binary factors: a linear SVM on the matching code is always right.
  binary, binary_test = _factors(800, 10, (2, 2, 2)), _factors(400, 11, (2, 2, 2))
  _, details = dis.sap(binary.astype(float), binary, binary_test.astype(float), binary_test)
  np.testing.assert_array_equal(np.diag(details["score_matrix"]), 1.0)
  assert details["score_matrix"][~np.eye(3, dtype=bool)].max() < 0.6


def test_explicitness_known_representations():
  factors, test = _factors(1500, 12), _factors(800, 13)
  true = dis.explicitness(factors.astype(float), factors, test.astype(float), test)
  assert true["explicitness_score_train"] > 0.95 and true["explicitness_score_test"] > 0.95
  rng = np.random.default_rng(1)
  noise = dis.explicitness(rng.normal(size=(1500, K)), factors, rng.normal(size=(800, K)), test)
  assert abs(noise["explicitness_score_test"] - 0.5) < 0.05


def test_explicitness_constant_code_is_harmless():
  factors, test = _factors(600, 14), _factors(300, 15)
  codes, codes_test = _scaled(factors) + 0.3, _scaled(test) + 0.3
  pad = lambda c: np.concatenate([c, np.full((len(c), 1), 7.0)], axis=1)
  plain = dis.explicitness(codes, factors, codes_test, test)
  padded = dis.explicitness(pad(codes), factors, pad(codes_test), test)
  assert np.all(np.isfinite(list(padded.values())))
  for key in plain:
    assert padded[key] == pytest.approx(plain[key], abs=1e-6)


# --------------------------------------------------------------- fixed factor


def test_beta_vae_features_known_answer():
  a = np.array([[[0.0, 1.0], [2.0, 1.0]]])
  b = np.array([[[1.0, 1.0], [0.0, 1.0]]])
  np.testing.assert_allclose(dis.beta_vae_features(a, b), [[1.5, 0.0]])


def test_factor_vae_votes_and_score_known_answers():
  # Batch 0 fixes factor 1 and dimension 2 is constant within it; batch 1 fixes factor 0
  # and dimension 0 is constant.
  codes = np.array([[[0.0, 1.0, 5.0], [2.0, 3.0, 5.0]],
                    [[1.0, 0.0, 0.0], [1.0, 4.0, 2.0]]])
  votes = dis.factor_vae_votes(codes, [1, 0], np.ones(3), num_factors=2)
  np.testing.assert_array_equal(votes, [[1, 0, 0], [0, 0, 1]])
  scores = dis.factor_vae_score(np.array([[3, 0], [1, 4]]), np.array([[1, 1], [1, 1]]))
  assert scores == {"train_accuracy": 7 / 8, "eval_accuracy": 0.5}


def test_factor_vae_pruning():
  var = np.array([1.0, (0.05 * 0.99) ** 2, 0.0, 0.05 ** 2])
  np.testing.assert_array_equal(dis.factor_vae_active_dims(var), [True, False, False, True])
  np.testing.assert_array_equal(dis.factor_vae_active_dims(var, threshold=0.0),
                                [True, True, False, True])


# ------------------------------------------------------------------- samplers

GRID = dis.FactorGridGroundTruth(SIZES)
SMALL = {
    "beta_vae": {"num_train": 400, "num_eval": 300, "batch_size": 16},
    "factor_vae": {"num_train": 300, "num_eval": 300, "num_variance_estimate": 1000},
    "mig": {"num_train": 1500},
    "dci": {"num_train": 600, "num_test": 300},
    "sap": {"num_train": 800, "num_test": 400},
    "modularity_explicitness": {"num_train": 1000, "num_test": 500},
}


def test_evaluate_all_true_factors_score_one():
  scores = dis.evaluate_all(GRID, lambda obs: obs, **SMALL)
  assert scores["beta_vae/eval_accuracy"] > 0.98
  assert scores["factor_vae/eval_accuracy"] == 1.0
  assert scores["factor_vae/num_active_dims"] == K
  assert scores["mig/discrete_mig"] > 0.98
  assert scores["dci/disentanglement"] > 0.95 and scores["dci/completeness"] > 0.95
  assert scores["modularity_explicitness/modularity_score"] > 0.98
  assert scores["modularity_explicitness/explicitness_score_test"] > 0.95
  assert 0.0 <= scores["sap/sap_score"] <= 1.0
  assert all(isinstance(v, float) for v in scores.values())


def test_evaluate_all_noise_scores_chance():
  scores = dis.evaluate_all(GRID, _noise_fn(), **SMALL)
  assert abs(scores["beta_vae/eval_accuracy"] - 1 / K) < 0.1
  assert scores["factor_vae/eval_accuracy"] < 0.4
  assert scores["mig/discrete_mig"] < 0.03
  assert scores["dci/disentanglement"] < 0.1
  assert scores["sap/sap_score"] < 0.05
  assert abs(scores["modularity_explicitness/explicitness_score_test"] - 0.5) < 0.06


def test_samplers_render_observations_through_the_protocol():
  fake = _EmbeddedGrid()
  beta = dis.compute_beta_vae(fake, _decode_embedding, num_train=300, num_eval=200,
                              batch_size=8)
  assert beta["eval_accuracy"] > 0.98
  assert dis.compute_mig(fake, _decode_embedding, num_train=1500)["discrete_mig"] > 0.98
  # The raw observations mix all factors, so the same metric is far from 1 on them.
  assert dis.compute_mig(fake, lambda obs: obs, num_train=1500)["discrete_mig"] < 0.5


def test_rotation_keeps_explicitness_not_mig():
  rot = _rotation()
  fn = lambda obs: _scaled(obs) @ rot
  scores = dis.evaluate_all(GRID, fn, metrics=["mig", "modularity_explicitness"], **SMALL)
  assert scores["modularity_explicitness/explicitness_score_test"] > 0.9  # Linear read-out.
  assert scores["mig/discrete_mig"] < 0.6


def test_factor_vae_prunes_constant_dimensions():
  with_constant = lambda obs: np.concatenate([obs, np.ones((len(obs), 2))], axis=1)
  scores = dis.compute_factor_vae(GRID, with_constant, **SMALL["factor_vae"])
  assert scores == {"train_accuracy": 1.0, "eval_accuracy": 1.0, "num_active_dims": K}
  collapsed = dis.compute_factor_vae(GRID, lambda obs: np.zeros((len(obs), 3)),
                                     **SMALL["factor_vae"])
  assert collapsed == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0.0}


def test_samplers_are_deterministic_given_the_seed():
  def noisy(seed):
    rng = np.random.default_rng(seed)
    return lambda obs: _scaled(obs) + 0.5 * rng.normal(size=obs.shape)
  kwargs = {"metrics": ["beta_vae", "mig"], **SMALL}
  first = dis.evaluate_all(GRID, noisy(0), seed=3, **kwargs)
  assert dis.evaluate_all(GRID, noisy(0), seed=3, **kwargs) == first
  assert dis.evaluate_all(GRID, noisy(0), seed=4, **kwargs) != first


def test_represent_calls_a_jitted_function_with_one_shape():
  traced_shapes = []

  @jax.jit
  def encode(x):
    traced_shapes.append(x.shape)  # Runs at trace time only.
    return jnp.tanh(x[:, :2] * 2.0)

  obs = np.random.default_rng(0).normal(size=(600, 3)).astype(np.float32)
  codes = dis.represent(encode, obs, chunk_size=256)
  assert traced_shapes == [(256, 3)]
  np.testing.assert_allclose(codes, np.tanh(obs[:, :2] * 2.0), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------- errors

_F = _factors(50, 20)
_C = _scaled(_F)


@pytest.mark.parametrize("call, match", [
    (lambda: dis.mig(_C[:40], _F), "same number of points"),
    (lambda: dis.mig(_C, _F + 0.5), "integer class indices"),
    (lambda: dis.mig(np.where(_C > 0.4, np.nan, _C), _F), "finite"),
    (lambda: dis.mig(_C[:, :1], _F), "at least 2 code dimensions"),
    (lambda: dis.mig(_C, np.c_[_F, np.zeros(50, int)]), "factor 4 takes a single value"),
    (lambda: dis.mig(_C[:1], _F[:1]), "at least 2 points"),
    (lambda: dis.mig(_C[:, 0], _F), "2-D"),
    (lambda: dis.discretize(_C, num_bins=0), "num_bins"),
    (lambda: dis.modularity(_C, _F[:, :1]), "at least 2 factors"),
    (lambda: dis.dci(_C, _F, _C, _F[:, :3]), "same number of columns"),
    (lambda: dis.dci(_C, _F, _C, _F, model="forest"), "model must be one of"),
    (lambda: dis.dci(_C[:3], _F[:3] * 0, _C, _F), r"factors_train\[:, 0\] takes a single value"),
    (lambda: dis.sap(_C, _F * 0, _C, _F), "single value"),
    (lambda: dis.explicitness(_C, _F, _C, _F * 0), "single class"),
    (lambda: dis.beta_vae_score(_C, np.zeros(50), _C, np.zeros(50)), "single value"),
    (lambda: dis.factor_vae_votes(np.ones((2, 1, 3)), [0, 1], np.ones(3), 2), "at least 2"),
    (lambda: dis.factor_vae_votes(np.ones((2, 4, 3)), [0, 2], np.ones(3), 2), "factor_index"),
    (lambda: dis.compute_factor_vae(GRID, lambda o: o, batch_size=1), "batch_size"),
    (lambda: dis.compute_mig(GRID, lambda o: o[:, :1].T, num_train=10), r"\(256, d\) array"),
    (lambda: dis.evaluate_all(GRID, lambda o: o, metrics=["mig", "irs"]), "unknown metric 'irs'"),
    (lambda: dis.evaluate_all(GRID, lambda o: o, dcii={}), "unknown metric 'dcii'"),
    (lambda: dis.evaluate_all(GRID, lambda o: o, mig={"seed": 1}), "pass seed to evaluate_all"),
])
def test_bad_input_gets_one_clear_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_integral_float_factors_are_accepted():
  assert dis.mig(_C, _F.astype(np.float32))[0] == dis.mig(_C, _F)[0]
