"""The categorical likelihood of token sequences and the ELBO over it."""

from __future__ import annotations

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaejax import distributions, objectives
from vaejax.types import VAEOutput


def _numpy_log_prob(tokens: np.ndarray, logits: np.ndarray) -> np.ndarray:
  """Independent float64 reference: log-softmax gathered, 0 where the token is padding."""
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  chosen = np.take_along_axis(log_softmax, tokens[..., None], -1)[..., 0]
  return np.where(tokens == 0, 0.0, chosen)


def _batch(seed: int, batch: int = 3, length: int = 6, vocab: int = 9):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, length + 1, batch)
  tokens = np.where(np.arange(length) < lengths[:, None], rng.integers(1, vocab, (batch, length)),
                    0).astype(np.int32)
  logits = (3 * rng.standard_normal((batch, length, vocab))).astype(np.float32)
  return tokens, logits


@hypothesis.settings(deadline=None, max_examples=15)
@hypothesis.given(seed=st.integers(0, 2**16), vocab=st.sampled_from([2, 5, 12]))
def test_categorical_log_prob_matches_numpy_with_padding_masked(seed, vocab):
  tokens, logits = _batch(seed, vocab=vocab)
  got = distributions.categorical_log_prob(tokens, logits)
  chex.assert_shape(got, tokens.shape)
  # float32 log-softmax of logits of size ~10: absolute error ~1e-6.
  np.testing.assert_allclose(got, _numpy_log_prob(tokens, logits), atol=2e-5)


def test_padding_contributes_nothing_to_value_or_gradient():
  tokens, logits = _batch(1)
  pad = tokens == 0
  assert pad.any() and (~pad).any()
  changed = np.where(pad[..., None], 1e3 * np.sign(logits), logits).astype(np.float32)

  def total(lg):
    return jnp.sum(distributions.categorical_log_prob(tokens, lg))

  assert total(logits) == total(changed)
  grad = jax.grad(total)(jnp.asarray(logits))
  assert np.all(np.asarray(grad)[pad] == 0.0) and np.all(np.isfinite(grad))
  # Unmasked gradient rows: one-hot(token) − softmax, summing to 0 over the vocabulary.
  np.testing.assert_allclose(np.asarray(grad)[~pad].sum(-1), 0.0, atol=1e-5)


def test_dispatch_and_mean():
  tokens, logits = _batch(2)
  params = {"categorical_logits": jnp.asarray(logits)}
  np.testing.assert_array_equal(distributions.likelihood_log_prob(tokens, params),
                                distributions.categorical_log_prob(tokens, logits))
  probs = distributions.likelihood_mean(params)
  chex.assert_shape(probs, logits.shape)
  shifted = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(probs, shifted / shifted.sum(-1, keepdims=True), atol=1e-6)


def _outputs(logits, latent_dim: int = 2, seed: int = 0) -> VAEOutput:
  rng = np.random.default_rng(seed)
  b = logits.shape[0]
  mean, log_var = (rng.standard_normal((b, latent_dim)).astype(np.float32) for _ in range(2))
  return VAEOutput(jnp.asarray(mean), jnp.asarray(log_var), jnp.asarray(mean),
                   {"categorical_logits": jnp.asarray(logits)})


def test_elbo_sums_over_unmasked_positions_and_latents():
  tokens, logits = _batch(3)
  out = _outputs(logits)
  loss, terms = objectives.elbo_loss(tokens, out)
  recon = _numpy_log_prob(tokens, logits).sum(-1)
  mean, log_var = np.asarray(out.mean, np.float64), np.asarray(out.log_var, np.float64)
  kl = 0.5 * (mean**2 + np.exp(log_var) - 1 - log_var).sum(-1)
  np.testing.assert_allclose(terms["recon"], recon, rtol=1e-5)  # float32 sums of ~6 terms
  np.testing.assert_allclose(terms["kl"], kl, rtol=1e-5)
  np.testing.assert_allclose(loss, np.mean(kl - recon), rtol=1e-5)
  # Every loss setting applies, e.g. free bits of 1 nat per dimension and a warm-up.
  settings = objectives.LossSettings(free_bits=1.0, warmup_steps=10)
  loss_fb, terms_fb = objectives.elbo_loss(tokens, out, settings, step=5)
  expected = -recon.mean() + 0.5 * np.maximum(1.0, 0.5 * (mean**2 + np.exp(log_var) - 1
                                                          - log_var).mean(0)).sum()
  np.testing.assert_allclose(loss_fb, expected, rtol=1e-5)
  assert float(terms_fb["kl_weight"]) == 0.5


def test_a_model_without_latent_has_zero_kl():
  tokens, logits = _batch(4)
  out = _outputs(logits, latent_dim=0)
  loss, terms = objectives.elbo_loss(tokens, out, objectives.LossSettings(free_bits=2.0))
  chex.assert_shape(terms["kl_per_dim"], (3, 0))
  np.testing.assert_array_equal(terms["kl"], 0.0)
  np.testing.assert_allclose(loss, -_numpy_log_prob(tokens, logits).sum(-1).mean(), rtol=1e-5)
  np.testing.assert_array_equal(objectives.log_importance_weight(tokens, out), terms["recon"])


@pytest.mark.parametrize("tokens_dtype, logits_shape, match", [
    (np.int32, (3, 5, 9), r"need \(3, 6, 'V'\)"),
    (np.float32, (3, 6, 9), r"integer tokens of shape \(3, 6\) \(float32\)"),
])
def test_shape_check(tokens_dtype, logits_shape, match):
  tokens, _ = _batch(5)
  out = _outputs(np.zeros(logits_shape, np.float32))
  with pytest.raises(ValueError, match=match):
    objectives.elbo_loss(tokens.astype(tokens_dtype), out)
