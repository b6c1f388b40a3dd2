"""Pure text metrics: importance-sampled NLL, perplexity, mutual information, text outputs;
and the Markov-chain reference the engine's NLL invariant test will use."""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.text_fixtures import MarkovChain
from vaejax import models
from vaejax.data.text import Vocabulary
from vaejax.evaluation import likelihood, text
from vaejax.types import DataSpec, example_batch

SPEC = DataSpec.tokens(9, 6)
TOKENS = np.array([[4, 5, 6, 3, 0, 0], [7, 3, 0, 0, 0, 0], [8, 8, 4, 5, 6, 3]], np.int32)
VOCAB = Vocabulary(("<pad>", "<unk>", "<bos>", "<eos>", "a", "b", "c", "d", "e"), [0] * 9)


@functools.cache
def _model(name: str):
  model = models.create_model(
      {"name": name, "embedding_size": 4, "hidden_size": 8, "latent_dim": 2}, SPEC)
  keys = {"params": jax.random.key(0), "sample": jax.random.key(1)}
  return model, jax.jit(model.init)(keys, example_batch(SPEC)["tokens"])["params"]


def _numpy_log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


# ----------------------------------------------------------------------------- NLL, perplexity


def test_language_model_log_likelihood_is_exact():
  model, params = _model("lstm_lm")
  got = text.log_likelihood(model, params, TOKENS, jax.random.key(0), 50)
  logits = jax.jit(model.apply, static_argnames="method")(
      {"params": params}, jnp.zeros((3, 0)), TOKENS, method="decode")["categorical_logits"]
  log_softmax = _numpy_log_softmax(logits)
  want = [sum(log_softmax[b, t, tok] for t, tok in enumerate(row) if tok) for b, row in
          enumerate(TOKENS)]
  np.testing.assert_allclose(got, want, rtol=1e-5)  # float32 sums of <= 6 log-probs


def test_vae_importance_sampled_likelihood_matches_a_numpy_reference():
  """log p̂_K(x) = log mean_k p(x|z_k) N(z_k; 0, I) / q(z_k|x), recomputed in float64 numpy
  from the model's encoder and decoder with the K draws of the documented key schedule
  (sample k of chunk c: ``split(split(key, C)[c], chunk)[k]``; one chunk here)."""
  model, params = _model("lstm_vae")
  key, k_samples = jax.random.key(3), 8
  got = text.log_likelihood(model, params, TOKENS, key, k_samples, chunk_size=k_samples)
  apply = jax.jit(model.apply, static_argnames="method")
  mean, log_var = (np.asarray(a, np.float64) for a in apply({"params": params}, TOKENS,
                                                              method="encode"))
  log_w = []
  for sample_key in jax.random.split(jax.random.split(key, 1)[0], k_samples):
    eps = np.asarray(jax.random.normal(sample_key, mean.shape), np.float64)
    z = mean + np.exp(0.5 * log_var) * eps
    logits = apply({"params": params}, jnp.asarray(z, jnp.float32), TOKENS, method="decode")
    log_softmax = _numpy_log_softmax(logits["categorical_logits"])
    log_px = np.array([sum(log_softmax[b, t, tok] for t, tok in enumerate(row) if tok)
                       for b, row in enumerate(TOKENS)])
    log_pz = -0.5 * np.sum(np.log(2 * np.pi) + z**2, axis=1)
    log_qz = -0.5 * np.sum(np.log(2 * np.pi) + log_var + eps**2, axis=1)
    log_w.append(log_px + log_pz - log_qz)
  log_w = np.stack(log_w)
  top = log_w.max(0)
  want = top + np.log(np.mean(np.exp(log_w - top), axis=0))
  np.testing.assert_allclose(got, want, rtol=1e-5)  # float32 weights of ~20 nats


def test_perplexity_counts_every_scored_token():
  nll = np.array([10.0, 4.0, 7.0])
  lengths = np.array([4, 2, 6])
  assert text.perplexity(nll, lengths) == pytest.approx(math.exp(21.0 / 12.0))
  with pytest.raises(ValueError, match="positive"):
    text.perplexity(nll, np.array([4, 0, 6]))


# ----------------------------------------------------------------------------- mutual information


def _numpy_mi(mean, log_var, z):
  """The estimator in float64 numpy, written out (independent reference)."""
  var = np.exp(log_var)
  neg_entropy = np.mean(-0.5 * np.sum(np.log(2 * np.pi) + 1 + log_var, axis=1))
  diff = z[:, None, :] - mean[None, :, :]
  log_q = -0.5 * np.sum(np.log(2 * np.pi) + log_var[None] + diff**2 / var[None], axis=2)
  top = log_q.max(1, keepdims=True)
  log_qz = (top + np.log(np.exp(log_q - top).sum(1, keepdims=True)))[:, 0] - np.log(len(z))
  return neg_entropy - log_qz.mean()


def test_mutual_information_of_a_linear_gaussian_encoder():
  """x ~ N(0, I), q(z|x) = N(a x, s²): I(x; z) = ½ Σ_j log(1 + a_j² / s_j²)."""
  rng = np.random.default_rng(0)
  n, a, s = 2000, np.array([2.0, 0.5, 0.0]), np.array([0.5, 1.0, 1.0])
  x = rng.standard_normal((n, 3))
  mean = a * x
  log_var = np.broadcast_to(2 * np.log(s), (n, 3)).copy()
  z = mean + s * rng.standard_normal((n, 3))
  got = float(text.mutual_information(mean, log_var, z))
  np.testing.assert_allclose(got, _numpy_mi(mean, log_var, z), atol=1e-4)  # float32, N = 2000
  closed_form = 0.5 * np.sum(np.log1p(a**2 / s**2))  # 1.52 nats
  # The batch estimate is biased low by ~log N / N per nat of spread; 0.1 nat covers it here.
  assert abs(got - closed_form) < 0.1
  assert float(text.mutual_information(np.zeros((5, 0)), np.zeros((5, 0)),
                                       np.zeros((5, 0)))) == 0.0


def test_active_units_is_the_library_function():
  assert text.active_units is likelihood.active_units  # one definition (Burda et al.)
  means = np.stack([np.linspace(-1, 1, 10), np.full(10, 0.3)], 1)
  assert int(text.active_units(means)) == 1 and int(text.active_units(np.zeros((10, 0)))) == 0


# ----------------------------------------------------------------------------- text outputs


def test_reconstructions_samples_and_homotopies_as_text():
  model, params = _model("lstm_vae")
  pairs = text.reconstructions(model, params, TOKENS, VOCAB)
  assert [p[0] for p in pairs] == ["a b c", "d", "e e a b c"]
  samples = text.prior_samples(model, params, jax.random.key(1), 4, VOCAB)
  assert len(samples) == 4 and all(isinstance(s, str) for s in samples)
  path = text.homotopy(model, params, TOKENS[0], TOKENS[1], VOCAB, num_steps=3)
  assert len(path) == 3
  assert [path[0], path[-1]] == [pairs[0][1], pairs[1][1]]  # the ends decode the two means


# ----------------------------------------------------------------------------- Markov reference


def test_markov_chain_exact_nll_is_a_normalised_distribution():
  """Over every sentence of ≤ 3 words the conditioned probabilities sum to 1, and the
  sampler's frequencies match them."""
  chain = MarkovChain.random(num_words=3, end_probability=0.4, max_words=3, seed=1)
  sentences = [list(s) for n in (1, 2, 3) for s in itertools.product(chain.words, repeat=n)]
  probs = np.exp([-chain.nll(s) for s in sentences])
  assert probs.sum() == pytest.approx(1.0, abs=1e-12)
  drawn = chain.sample(4000, seed=2)
  counts = {" ".join(s): 0 for s in sentences}
  for s in drawn:
    counts[" ".join(s)] += 1
  freq = np.array([counts[" ".join(s)] for s in sentences]) / len(drawn)
  assert np.max(np.abs(freq - probs)) < 4 * np.sqrt(probs.max() / len(drawn))
