"""The LSTM VAE and LSTM LM: the data → model contract, causality, word dropout, decoding."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaejax import data, models, objectives
from vaejax.models import sequence
from vaejax.types import BOS_ID, EOS_ID, PAD_ID, UNK_ID, DataSpec, example_batch

SPEC = DataSpec.tokens(13, 7)
CONFIG = {"embedding_size": 8, "hidden_size": 16, "latent_dim": 3}
TOKENS = np.array([[5, 6, 7, 8, 3, 0, 0], [9, 3, 0, 0, 0, 0, 0], [4, 4, 4, 4, 4, 4, 3]], np.int32)


@functools.cache
def _model(name: str, word_keep: float = 1.0):
  model = models.create_model({"name": name, "word_keep": word_keep, **CONFIG}, SPEC)
  keys = {"params": jax.random.key(0), "sample": jax.random.key(1)}
  # Parameters do not depend on word_keep: every variant shares those of word_keep = 1.
  init = _model(name)[1] if word_keep != 1 else jax.jit(model.init)(
      keys, example_batch(SPEC, 2)["tokens"])["params"]
  return model, init


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _apply(model, method, static, params, *args, rngs=None):
  """``model.apply`` compiled (eager Flax compiles op by op: slower for these tests)."""
  return model.apply({"params": params}, *args, *static, method=method, rngs=rngs)


def _logits(model, params, tokens, key=1, dropout=None):
  rngs = {"sample": jax.random.key(key)}
  if dropout is not None:
    rngs["dropout"] = jax.random.key(dropout)
  return _apply(model, None, (), params, tokens, rngs=rngs)


# ----------------------------------------------------------------------------- contract


def test_example_batch_of_each_family():
  batch = example_batch(SPEC, 2)
  np.testing.assert_array_equal(batch["tokens"][:, 0], EOS_ID)
  np.testing.assert_array_equal(batch["length"], 1)
  images = example_batch(DataSpec.images((4, 4, 1), num_classes=3), 2)
  chex.assert_shape([images["image"], images["label"]], [(2, 4, 4, 1), (2,)])


def test_every_dataset_describes_its_batches():
  images = data.ArrayDataset("tiny", {"train": data.SplitArrays(np.zeros((4, 6, 6, 1)))},
                             image_shape=(6, 6, 1), num_classes=10)
  assert images.spec == DataSpec.images((6, 6, 1), num_classes=10)
  assert data.load({"name": "dsprites_procedural"}).spec == DataSpec.images((64, 64, 1))


def test_create_model_takes_a_spec_and_the_old_image_form():
  image_model = models.create_model({"name": "mlp_vae"}, DataSpec.images((6, 6, 1)))
  assert image_model == models.create_model({"name": "mlp_vae"}, (6, 6, 1))
  cvae = models.create_model({"name": "mlp_cvae"}, DataSpec.images((6, 6, 1), num_classes=4))
  assert cvae.num_classes == 4
  model, _ = _model("lstm_vae")
  assert (model.vocab_size, model.max_length, model.latent_dim) == (13, 7, 3)


@pytest.mark.parametrize("config, spec, match", [
    ({"name": "mlp_vae"}, SPEC, "'mlp_vae' is built for images but the dataset describes "
                                r"token sequences \(vocab_size=13, max_length=7\)"),
    ({"name": "lstm_vae"}, (28, 28, 1), r"'lstm_vae' is built for tokens but the dataset "
                                       r"describes images \(image_shape=\(28, 28, 1\)\)"),
    ({"name": "lstm_lm"}, DataSpec.images((6, 6, 1)), "models for images: .*'mlp_vae'"),
    ({"name": "lstm_vae", "word_keep": 0.0}, SPEC, r"model.word_keep=0.0 must be .* > 0 and <= 1"),
    ({"name": "lstm_vae", "word_keep": 1.5}, SPEC, "model.word_keep=1.5"),
    ({"name": "lstm_vae", "word_keep": float("nan")}, SPEC, "model.word_keep=nan"),
    ({"name": "lstm_lm", "word_keep": True}, SPEC, "model.word_keep=True"),
    ({"name": "lstm_vae", "dtype": "bfloat16"}, SPEC, "float32 only"),
    ({"name": "lstm_vae", "hidden_size": 0}, SPEC, "model.hidden_size=0"),
])
def test_bad_model_and_data_combinations(config, spec, match, no_compiling):
  with pytest.raises(ValueError, match=match):
    models.create_model(config, spec)


def test_image_batches_labels_and_decoding_without_tokens_are_refused():
  model, params = _model("lstm_vae")
  with pytest.raises(ValueError, match=r"takes token batches.*float32 of shape \(2, 4, 4, 1\)"):
    model.apply({"params": params}, jnp.zeros((2, 4, 4, 1)), rngs={"sample": jax.random.key(0)})
  with pytest.raises(ValueError, match="lstm_vae is unconditional"):
    model.apply({"params": params}, TOKENS, np.zeros(3, np.int32), method="encode")
  with pytest.raises(ValueError, match=r"needs the tokens .* generate\(z\)"):
    model.apply({"params": params}, jnp.zeros((3, 3)), None, method="decode")
  with pytest.raises(ValueError, match="temperature=0.0 must be a finite number > 0"):
    model.apply({"params": params}, jnp.zeros((3, 3)), jax.random.key(0), 0.0,
                method="generate")


# ----------------------------------------------------------------------------- forward pass


@pytest.mark.parametrize("name, latent", [("lstm_vae", 3), ("lstm_lm", 0)])
def test_outputs_and_loss(name, latent):
  model, params = _model(name)
  out = _logits(model, params, TOKENS)
  chex.assert_shape([out.mean, out.log_var, out.z], [(3, latent)] * 3)
  chex.assert_shape(out.likelihood["categorical_logits"], (3, 7, 13))
  loss, terms = jax.jit(objectives.elbo_loss)(TOKENS, out)
  assert np.isfinite(loss) and (latent > 0) == bool(np.all(terms["kl"] > 0))


@pytest.mark.parametrize("name", ["lstm_vae", "lstm_lm"])
def test_position_t_never_sees_token_t(name):
  """Teacher forcing: changing token t changes no logits at positions ≤ t (the decoder
  input at t is token t − 1; <bos> at 0). For the VAE hold z fixed (the encoder reads x)."""
  model, params = _model(name)
  z = jnp.zeros((3, model.latent_dim))
  base = _apply(model, "decode", (), params, z, TOKENS)["categorical_logits"]
  for t in range(TOKENS.shape[1]):
    changed = TOKENS.copy()
    changed[:, t] = 12
    logits = _apply(model, "decode", (), params, z, changed)["categorical_logits"]
    np.testing.assert_array_equal(logits[:, :t + 1], base[:, :t + 1])
    if t + 1 < TOKENS.shape[1]:
      assert not np.allclose(logits[:, t + 1:], base[:, t + 1:])


def test_recon_scores_exactly_the_words_and_eos():
  """recon = Σ over positions < length of log p(token); <bos> and padding are never scored."""
  model, params = _model("lstm_vae")
  out = _logits(model, params, TOKENS)
  logits = np.asarray(out.likelihood["categorical_logits"], np.float64)
  log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  lengths = (TOKENS != PAD_ID).sum(1)
  expected = [sum(log_softmax[b, t, TOKENS[b, t]] for t in range(n)) for b, n in enumerate(lengths)]
  # float32 log-softmax over 13 logits, summed over <= 7 positions.
  recon = jax.jit(objectives.elbo_terms)(TOKENS, out)["recon"]
  np.testing.assert_allclose(recon, expected, rtol=1e-5)


# ----------------------------------------------------------------------------- word dropout


def test_word_dropout_replaces_only_words_and_is_deterministic():
  words = np.tile(TOKENS[:, :-1], (67, 1))[:200]
  inputs = jnp.asarray(np.concatenate([np.full((200, 1), BOS_ID), words], 1))
  dropout = jax.jit(sequence.word_dropout, static_argnums=2)
  dropped = dropout(jax.random.key(3), inputs, 0.6)
  np.testing.assert_array_equal(dropped, dropout(jax.random.key(3), inputs, 0.6))
  changed = np.asarray(dropped != inputs)
  words = np.asarray((inputs != BOS_ID) & (inputs != PAD_ID))
  assert not changed[~words].any() and np.all(np.asarray(dropped)[changed] == UNK_ID)
  assert abs(changed[words].mean() - 0.4) < 0.05  # ~1000 words: std of the rate ≈ 0.016


def test_word_dropout_runs_only_with_a_dropout_rng():
  model, params = _model("lstm_vae", word_keep=0.5)
  plain, _ = _model("lstm_vae")
  evaluation = _logits(model, params, TOKENS).likelihood["categorical_logits"]
  np.testing.assert_array_equal(evaluation,
                                _logits(plain, params, TOKENS).likelihood["categorical_logits"])
  train = [_logits(model, params, TOKENS, dropout=k).likelihood["categorical_logits"]
           for k in (7, 7, 8)]
  np.testing.assert_array_equal(train[0], train[1])
  assert not np.allclose(train[0], evaluation) and not np.allclose(train[0], train[2])
  # Position 0's input is <bos>, never dropped.
  np.testing.assert_array_equal(train[0][:, 0], evaluation[:, 0])


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("name", ["lstm_vae", "lstm_lm"])
def test_sampled_sequences_are_token_batches(name):
  model, params = _model(name)
  tokens = np.asarray(_apply(model, "sample_prior", (40,), params, jax.random.key(5)))
  chex.assert_shape(tokens, (40, 7))
  for row in tokens:
    ends = np.flatnonzero(row == EOS_ID)
    stop = ends[0] + 1 if ends.size else len(row)
    assert np.all(row[stop:] == PAD_ID)
    assert not np.isin(row[:stop], [PAD_ID, BOS_ID]).any()
  np.testing.assert_array_equal(
      tokens, _apply(model, "sample_prior", (40,), params, jax.random.key(5)))


def test_greedy_decoding_follows_the_teacher_forced_argmax():
  """Feeding the greedy output back teacher-forced gives logits whose argmax is that output
  (up to the first <eos>, after which the decoded batch is padding)."""
  model, params = _model("lstm_vae")
  z = jax.random.normal(jax.random.key(2), (4, 3))
  tokens = _apply(model, "generate", (), params, z)
  logits = _apply(model, "decode", (), params, z, tokens)["categorical_logits"]
  masked = np.asarray(logits).copy()
  masked[..., [PAD_ID, BOS_ID]] = -np.inf
  for row, lg in zip(np.asarray(tokens), masked):
    n = int(np.sum(row != PAD_ID))
    np.testing.assert_array_equal(np.argmax(lg[:n], -1), row[:n])
    assert n == len(row) or row[n - 1] == EOS_ID


# ----------------------------------------------------------------------------- the LSTM's gradient


def test_lstm_scan_gradient_equals_autodiff_of_a_plain_loop():
  """The hand-written backward pass against JAX's autodiff of an LSTM written here."""
  rng = np.random.default_rng(0)
  steps, batch, hidden = 5, 3, 4
  kernel = jnp.asarray(0.5 * rng.standard_normal((hidden, 4 * hidden)), jnp.float32)
  projected = jnp.asarray(rng.standard_normal((steps, batch, 4 * hidden)), jnp.float32)
  h0, c0 = (jnp.asarray(rng.standard_normal((batch, hidden)), jnp.float32) for _ in range(2))
  weights = jnp.asarray(rng.standard_normal((steps, batch, hidden)), jnp.float32)

  def reference(kernel, projected, h, c):
    outputs = []
    for t in range(steps):
      gates = projected[t] + h @ kernel
      i, f, g, o = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      outputs.append(h)
    return jnp.sum(weights * jnp.sin(jnp.stack(outputs)))

  def under_test(*args):
    return jnp.sum(weights * jnp.sin(sequence.lstm_scan(*args)))

  args = (kernel, projected, h0, c0)
  np.testing.assert_allclose(jax.jit(under_test)(*args), jax.jit(reference)(*args), rtol=1e-5)
  for got, want in zip(jax.jit(jax.grad(under_test, (0, 1, 2, 3)))(*args),
                       jax.jit(jax.grad(reference, (0, 1, 2, 3)))(*args)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)  # float32, 5 steps
