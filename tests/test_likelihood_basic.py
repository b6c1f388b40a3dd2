"""Active units and mean KL per dimension (vaejax.evaluation.likelihood)."""

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import numpy as np
import pytest

from vaejax.evaluation import likelihood


def test_active_units_known_answer():
  rng = np.random.default_rng(0)
  # Columns with exactly these population variances: 0, 0.005, 0.02, 1.
  base = rng.standard_normal((1000, 4))
  base = (base - base.mean(0)) / base.std(0)
  means = base * np.sqrt([0.0, 0.005, 0.02, 1.0]) + np.array([3.0, -1.0, 0.5, 0.0])
  chex.assert_trees_all_close(
      likelihood.posterior_mean_variance(means), np.array([0.0, 0.005, 0.02, 1.0]), atol=1e-6
  )
  assert int(likelihood.active_units(means)) == 2
  assert int(likelihood.active_units(means, threshold=0.001)) == 3
  assert int(likelihood.active_units(means, threshold=2.0)) == 0


def test_active_units_under_jit():
  means = np.array([[0.0, 1.0], [0.0, -1.0], [0.0, 1.0]], np.float32)
  assert int(jax.jit(likelihood.active_units)(means)) == 1


@hypothesis.settings(deadline=None, max_examples=30)
@hypothesis.given(
    means=hnp.arrays(np.float64, st.tuples(st.integers(2, 20), st.integers(1, 6)),
                     elements=st.floats(-10, 10)),
    shift=st.floats(-100, 100),
)
def test_active_units_matches_numpy_and_ignores_shifts(means, shift):
  expected = int(np.sum(np.var(means, axis=0) > 0.01))
  # Activity is a variance over the data: a constant offset cannot change it (up to
  # float32 rounding, so stay away from the threshold).
  variances = np.var(means, axis=0)
  hypothesis.assume(np.all(np.abs(variances - 0.01) > 1e-3))
  assert int(likelihood.active_units(means)) == expected
  assert int(likelihood.active_units(means + shift)) == expected


def test_mean_kl_per_dim_standard_normal_reference():
  rng = np.random.default_rng(1)
  mean = rng.normal(size=(50, 3))
  log_var = rng.normal(size=(50, 3))
  reference = np.mean(0.5 * (mean**2 + np.exp(log_var) - 1.0 - log_var), axis=0)
  got = likelihood.mean_kl_per_dim(mean.astype(np.float32), log_var.astype(np.float32))
  chex.assert_shape(got, (3,))
  chex.assert_trees_all_close(got, reference, rtol=1e-5)


def test_mean_kl_per_dim_against_prior_reference():
  rng = np.random.default_rng(2)
  mq, lq, mp, lp = (rng.normal(size=(20, 4)) for _ in range(4))
  reference = np.mean(
      0.5 * ((mq - mp) ** 2 / np.exp(lp) + np.exp(lq - lp) - 1.0 - (lq - lp)), axis=0
  )
  got = likelihood.mean_kl_per_dim(*(a.astype(np.float32) for a in (mq, lq, mp, lp)))
  chex.assert_trees_all_close(got, reference, rtol=1e-5, atol=1e-6)
  # A prior equal to the posterior gives zero KL.
  chex.assert_trees_all_close(likelihood.mean_kl_per_dim(mq, lq, mq, lq), np.zeros(4), atol=1e-7)


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((1, 3)), np.zeros((2, 3, 4))])
def test_active_units_rejects_bad_shapes(bad):
  with pytest.raises(ValueError, match="Posterior means must be"):
    likelihood.active_units(bad)


def test_mean_kl_rejects_half_a_prior():
  with pytest.raises(ValueError, match="together"):
    likelihood.mean_kl_per_dim(np.zeros((2, 2)), np.zeros((2, 2)), prior_mean=np.zeros((2, 2)))


def test_negative_threshold_rejected():
  with pytest.raises(ValueError, match="threshold"):
    likelihood.active_units(np.zeros((3, 2)), threshold=-1.0)


def test_paired_difference_is_the_mean_and_paired_standard_error_of_differences():
  from vaejax.evaluation import likelihood as lik  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  difficulty = rng.normal(-90.0, 10.0, 500)  # shared by both models: cancels when paired
  a = difficulty + 1.0 + rng.normal(0, 0.5, 500)
  b = difficulty + rng.normal(0, 0.5, 500)
  out = lik.paired_difference(a, b)
  d = a - b
  np.testing.assert_allclose(out["mean_difference"], d.mean())
  np.testing.assert_allclose(out["paired_stderr"], d.std(ddof=1) / np.sqrt(500))
  assert out["paired_stderr"] < a.std(ddof=1) / np.sqrt(500) / 5  # pairing removes difficulty
  with pytest.raises(ValueError, match="one length"):
    lik.paired_difference(a, b[:3])
