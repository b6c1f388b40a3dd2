r"""Sequence models over token batches: the LSTM VAE of Bowman et al. 2016 and its LSTM LM.

``lstm_vae``: an embedding and an LSTM encoder read the sentence (words and ``<eos>``);
its hidden state after the last token gives q(z|x) = N(μ, diag σ²) (d = 32 by default).
An LSTM decoder, teacher-forced on ``<bos>`` + tokens[:-1], gives categorical logits per
position:

.. math::
   c_0 = W_c z + b_c,\quad h_0 = \tanh c_0,\qquad
   (h_t, c_t) = \mathrm{LSTM}\bigl([e(y_{t-1}) ; z],\ (h_{t-1}, c_{t-1})\bigr),\qquad
   p(y_t \mid y_{<t}, z) = \mathrm{softmax}(W_o h_t + b_o).

**How z enters the decoder: both ways, as He et al. 2019 do.** The initial state alone
(Bowman et al.) leaves z to survive T steps of the LSTM's forgetting, so late words
barely see it; z concatenated to every input gives each position direct access. With
both, a collapsed posterior (KL ≈ 0) means the decoder *chose* to ignore a code it could
read at every step, which is the collapse the cures (warm-up, free bits, word dropout)
are measured against; He et al. still observe full collapse of the plain VAE with this
decoder. The concatenation costs one (B, d) × (d, 4H) product per sentence: the input
projection of all time steps is computed before the recurrence, so only h_{t−1} W_hh
runs inside the scan.

**Word dropout** (Bowman et al.): with ``word_keep`` < 1, each decoder input word
(never ``<bos>``, never padding) is replaced by ``<unk>`` with probability
1 − ``word_keep``, using the ``"dropout"`` RNG stream. It runs only when the caller
passes that stream, as a training step does (``rngs={"sample": k1, "dropout": k2}``);
evaluation, decoding and ``init`` pass none and see every word. The same key gives the
same mask.

``lstm_lm``: the same decoder with no latent (zero initial state, nothing concatenated):
the language model a collapsed VAE equals. Its :class:`~vaejax.types.VAEOutput` has a
zero-dimensional posterior, ``mean``/``log_var``/``z`` of shape (B, 0), so the objective's
KL (a sum over no dimensions) is exactly 0, free bits have no group to act on, and the
importance-weighted bound is the exact log-likelihood (every weight is p(x)).

The LSTM is PyTorch's (gates i, f, g, o; ``c = σ(f)c + σ(i)tanh(g)``, ``h = σ(o)tanh(c)``)
with one bias, scanned over time with ``jax.lax.scan`` (time-major inside the module).
Decoding (:meth:`SequenceVAE.generate`) runs the same cell for ``max_length`` steps, greedy
or sampled, and writes ``<pad>`` after the first ``<eos>``, so its output is a token batch.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vaejax import distributions
from vaejax.models import registry, vae
from vaejax.types import BOS_ID, EOS_ID, PAD_ID, TOKENS, UNK_ID, DataSpec, VAEOutput
from vaejax.utils.checks import check_int, check_number

Array = jax.Array
Carry = tuple[Array, Array]


def _dense(x: Array, kernel: Array, bias: Array | None = None) -> Array:
  """``x @ kernel (+ bias)`` over the last axis as one 2-D product: XLA:CPU runs a 3-D ``x``
  (B, T, ·) ~25 % slower, forward and backward (measured on the output layer); the bias is
  added before the reshape, where XLA fuses it into the product."""
  out = x.reshape(-1, x.shape[-1]) @ kernel
  if bias is not None:
    out = out + bias
  return out.reshape(x.shape[:-1] + kernel.shape[-1:])


def _transposed(x: Array) -> Array:
  """``x.T`` materialised: XLA:CPU runs ``x.T @ y`` with x (704, 256), y (704, 1024) — a
  weight gradient — at half the speed of the same product on a contiguous transpose (its
  simplifier would fold a plain ``.T`` back into the product; the barrier keeps it)."""
  return jax.lax.optimization_barrier(x.T)


@jax.custom_vjp
def _projection(x: Array, kernel: Array) -> Array:
  """:func:`_dense` of the LSTM inputs, whose kernel gradient uses :func:`_transposed`."""
  return _dense(x, kernel)


def _projection_forward(x, kernel):
  return _dense(x, kernel), (x, kernel)


def _projection_backward(residuals, grad):
  x, kernel = residuals
  rows = grad.reshape(-1, grad.shape[-1])
  d_x = (rows @ kernel.T).reshape(x.shape)
  return d_x, _transposed(x.reshape(-1, x.shape[-1])) @ rows


_projection.defvjp(_projection_forward, _projection_backward)


def lstm_cell(recurrent_kernel: Array, carry: Carry, projected: Array) -> tuple[Carry, Array]:
  """One LSTM step from the input's projection ``x W_ih + b`` (B, 4H); gates i, f, g, o."""
  (h, c), _ = _cell_with_gates(recurrent_kernel, carry, projected)
  return (h, c), h


def _cell_with_gates(recurrent_kernel: Array, carry: Carry, projected: Array):
  """:func:`lstm_cell` that also returns its activated gates (i, f, g, o) and tanh(c)."""
  h, c = carry
  gates = projected + h @ recurrent_kernel
  i, f, g, o = jnp.split(gates, 4, axis=-1)
  i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
  c = f * c + i * g
  tanh_c = jnp.tanh(c)
  h = o * tanh_c
  return (h, c), (i, f, g, o, tanh_c)


@jax.custom_vjp
def lstm_scan(recurrent_kernel: Array, projected: Array, h0: Array, c0: Array) -> Array:
  r"""Hidden states (T, B, H) of an LSTM over time-major input projections (T, B, 4H).

  The value is ``lax.scan`` of :func:`lstm_cell`. The gradient is the usual
  backpropagation through time, arranged as cuDNN and PyTorch do: the backward scan
  computes only each step's gate gradients :math:`δ_t` (B, 4H) and
  :math:`∂h_{t-1} = δ_t W_{hh}^	op`; the recurrent kernel's gradient
  :math:`\sum_t h_{t-1}^	op δ_t` is one (H, T·B) × (T·B, 4H) product after the scan.
  (Autodiff of the scan accumulates it step by step in T small products, about 1.5× the
  time of the whole backward pass on CPU.) Forward-mode differentiation is not defined.
  """
  carry = (h0, c0)
  _, hs = jax.lax.scan(functools.partial(lstm_cell, recurrent_kernel), carry, projected)
  return hs


def _lstm_scan_forward(recurrent_kernel, projected, h0, c0):
  def step(carry, x):
    new_carry, gates = _cell_with_gates(recurrent_kernel, carry, x)
    return new_carry, (new_carry, gates)

  _, ((hs, cs), gates) = jax.lax.scan(step, (h0, c0), projected)
  h_prev = jnp.concatenate([h0[None], hs[:-1]])
  c_prev = jnp.concatenate([c0[None], cs[:-1]])
  return hs, (recurrent_kernel, h_prev, c_prev, gates)


def _lstm_scan_backward(residuals, d_hs):
  recurrent_kernel, h_prev, c_prev, gates = residuals
  kernel_t = recurrent_kernel.T  # transposed once, not in every step (≈ 6 % of this pass)

  def step(carry, inputs):
    d_h_next, d_c_next = carry
    d_h_out, c_before, (i, f, g, o, tanh_c) = inputs
    d_h = d_h_out + d_h_next
    d_c = d_c_next + d_h * o * (1.0 - tanh_c * tanh_c)
    delta = jnp.concatenate([d_c * g * i * (1.0 - i), d_c * c_before * f * (1.0 - f),
                             d_c * i * (1.0 - g * g), d_h * tanh_c * o * (1.0 - o)], axis=-1)
    return (delta @ kernel_t, d_c * f), delta

  zero = jnp.zeros_like(h_prev[0])
  (d_h0, d_c0), deltas = jax.lax.scan(step, (zero, zero), (d_hs, c_prev, gates), reverse=True)
  d_kernel = _transposed(h_prev.reshape(-1, h_prev.shape[-1])) @ deltas.reshape(
      -1, deltas.shape[-1])
  return d_kernel, deltas, d_h0, d_c0


lstm_scan.defvjp(_lstm_scan_forward, _lstm_scan_backward)


class LSTM(nn.Module):
  """One LSTM layer; ``input_kernel`` (I, 4H), ``recurrent_kernel`` (H, 4H), ``bias`` (4H,)."""

  input_size: int
  hidden_size: int

  def setup(self):
    four_h = 4 * self.hidden_size
    self.input_kernel = self.param(
        "input_kernel", nn.initializers.lecun_normal(), (self.input_size, four_h))
    self.recurrent_kernel = self.param(
        "recurrent_kernel", nn.initializers.orthogonal(), (self.hidden_size, four_h))
    self.bias = self.param("bias", nn.initializers.zeros, (four_h,))

  def run(self, projected: Array, carry: Carry) -> Array:
    """Hidden states (T, B, H) of time-major input projections (T, B, 4H) from ``carry``."""
    return lstm_scan(self.recurrent_kernel, projected, *carry)

  def zeros(self, batch: int) -> Carry:
    zero = jnp.zeros((batch, self.hidden_size), jnp.float32)
    return zero, zero


class SequenceVAE(nn.Module):
  """LSTM VAE (``latent_dim`` > 0) or LSTM language model (``latent_dim`` = 0); module docstring.

  Attributes:
    vocab_size: V, the number of token ids (specials included).
    max_length: T, the length of token batches and of decoded sequences.
    latent_dim: d; 0 = the language model.
    embedding_size: E, of the encoder's and the decoder's (separate) embeddings.
    hidden_size: H, of both LSTMs.
    word_keep: probability that a decoder input word is kept under word dropout, in (0, 1].
    posterior_min_variance: smooth floor on q's variances (:func:`vae.floor_posterior`).

  ``model.apply({"params": p}, tokens, rngs={"sample": key})``; add a ``"dropout"`` key
  for word dropout (training).
  """

  data_kind = TOKENS  # not a field: what codec.data_key reads (the batch's "tokens")

  vocab_size: int
  max_length: int
  latent_dim: int = 32
  embedding_size: int = 256
  hidden_size: int = 256
  word_keep: float = 1.0
  posterior_min_variance: float = 0.0

  def __post_init__(self):
    check_int(self.vocab_size, "vocab_size", minimum=5)
    check_int(self.max_length, "max_length", minimum=2)
    check_int(self.latent_dim, "latent_dim", minimum=0)
    check_int(self.embedding_size, "embedding_size", minimum=1)
    check_int(self.hidden_size, "hidden_size", minimum=1)
    check_word_keep(self.word_keep)
    vae.check_posterior_floor(self.posterior_min_variance)
    super().__post_init__()

  def setup(self):
    embed_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
    shape = (self.vocab_size, self.embedding_size)
    self.decoder_embedding = self.param("decoder_embedding", embed_init, shape)
    self.decoder = LSTM(self.embedding_size + self.latent_dim, self.hidden_size)
    self.output_kernel = self.param(
        "output_kernel", nn.initializers.lecun_normal(), (self.hidden_size, self.vocab_size))
    self.output_bias = self.param("output_bias", nn.initializers.zeros, (self.vocab_size,))
    if self.latent_dim:
      self.encoder_embedding = self.param("encoder_embedding", embed_init, shape)
      self.encoder = LSTM(self.embedding_size, self.hidden_size)
      self.posterior = nn.Dense(2 * self.latent_dim, name="posterior")
      self.initial_state = nn.Dense(self.hidden_size, name="initial_state")

  def _check_tokens(self, tokens: Any) -> Array:
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(
          f"{self._kind()} takes token batches, int32 (batch, length) ids in [0, "
          f"{self.vocab_size}); got {tokens.dtype} of shape {tokens.shape}"
          f"{' (images?)' if tokens.ndim == 4 else ''}.")
    return tokens.astype(jnp.int32)

  def _check_no_labels(self, labels: Any) -> None:
    if labels is not None:
      raise ValueError(f"{self._kind()} is unconditional; it takes no labels.")

  def _kind(self) -> str:
    return "lstm_vae" if self.latent_dim else "lstm_lm"

  def encode(self, tokens: Array, labels: Any = None) -> tuple[Array, Array]:
    """``(mean, log_var)`` of q(z|x), each (B, d) float32 (d = 0 for the language model).

    ``labels`` (always None: the model is unconditional) keeps the image models' signature.
    """
    self._check_no_labels(labels)
    tokens = self._check_tokens(tokens)
    batch = tokens.shape[0]
    if not self.latent_dim:
      empty = jnp.zeros((batch, 0), jnp.float32)
      return empty, empty
    embedded = self.encoder_embedding[tokens.T]  # (T, B, E), time-major
    hs = self.encoder.run(_projection(embedded, self.encoder.input_kernel) + self.encoder.bias,
                          self.encoder.zeros(batch))
    last = jnp.maximum(jnp.sum(tokens != PAD_ID, axis=1) - 1, 0)  # the <eos> position
    params = self.posterior(hs[last, jnp.arange(batch)])
    mean, log_var = jnp.split(params, 2, axis=-1)
    return mean, vae.floor_posterior(log_var, self.posterior_min_variance)

  def _latent_terms(self, z: Array) -> tuple[Array, Carry]:
    """z's part of every step's gate input (B, 4H), bias included, and the initial state."""
    kernel = self.decoder.input_kernel
    if not self.latent_dim:
      return jnp.broadcast_to(self.decoder.bias, (z.shape[0], kernel.shape[1])), (
          self.decoder.zeros(z.shape[0]))
    c0 = self.initial_state(z)
    return z @ kernel[self.embedding_size:] + self.decoder.bias, (jnp.tanh(c0), c0)

  def _check_z(self, z: Any) -> Array:
    z = jnp.asarray(z, jnp.float32)
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise ValueError(f"z must have shape (batch, {self.latent_dim}); got {z.shape}.")
    return z

  def decode(self, z: Array, tokens: Array, dropout_key: Array | None = None
             ) -> dict[str, Array]:
    """Teacher-forced ``{"categorical_logits": (B, T, V)}`` of p(tokens | z).

    The input at position t is token t − 1 (``<bos>`` at t = 0), so position t's logits
    never see token t. ``dropout_key`` applies word dropout with ``word_keep``.
    """
    if tokens is None:  # e.g. an image model's decode(z, labels) call, as DReG makes
      raise ValueError(f"{self._kind()}.decode(z, tokens) needs the tokens it is "
                       "teacher-forced on; decoding z alone is generate(z).")
    z, tokens = self._check_z(z), self._check_tokens(tokens)
    inputs = jnp.concatenate(
        [jnp.full((tokens.shape[0], 1), BOS_ID, jnp.int32), tokens[:, :-1]], axis=1)
    if dropout_key is not None and self.word_keep < 1:
      inputs = word_dropout(dropout_key, inputs, self.word_keep)
    latent_gates, carry = self._latent_terms(z)
    embedded = self.decoder_embedding[inputs.T]  # (T, B, E)
    projected = _projection(embedded, self.decoder.input_kernel[:self.embedding_size]) + (
        latent_gates)
    hs = self.decoder.run(projected, carry).transpose(1, 0, 2)  # (B, T, H)
    return {"categorical_logits": _dense(hs, self.output_kernel, self.output_bias)}

  def __call__(self, tokens: Array, labels: Any = None) -> VAEOutput:
    """Encodes, draws z with the ``"sample"`` RNG (not for the LM), decodes teacher-forced."""
    mean, log_var = self.encode(tokens, labels)
    z = mean
    if self.latent_dim:
      z = distributions.sample_diag_gaussian(self.make_rng("sample"), mean, log_var)
    key = None
    if self.word_keep < 1 and self.has_rng("dropout"):
      key = self.make_rng("dropout")
    return VAEOutput(mean=mean, log_var=log_var, z=z,
                     likelihood=self.decode(z, tokens, dropout_key=key))

  def generate(self, z: Array, key: Array | None = None, temperature: float = 1.0) -> Array:
    """Decodes ``z`` (B, d) into a token batch (B, T): greedy (``key`` None) or sampled.

    Each step feeds back the chosen token among the words, ``<unk>`` and ``<eos>``
    (``<pad>`` and ``<bos>`` are never targets, so never chosen); after the first
    ``<eos>`` every position is ``<pad>``. Sampling draws from softmax(logits /
    ``temperature``).
    """
    z = self._check_z(z)
    if not isinstance(temperature, jax.core.Tracer):
      check_number(temperature, "temperature", minimum=0, exclusive_minimum=True)
    batch = z.shape[0]
    latent_gates, carry = self._latent_terms(z)
    arrays = (self.decoder_embedding, self.decoder.input_kernel[:self.embedding_size],
              latent_gates, self.decoder.recurrent_kernel, self.output_kernel,
              self.output_bias)
    keys = (jax.random.split(key, self.max_length) if key is not None
            else jnp.zeros((self.max_length,), jnp.uint32))
    start = (carry, jnp.full((batch,), BOS_ID, jnp.int32), jnp.zeros((batch,), bool))
    step = functools.partial(_generate_step, arrays, key is not None, temperature)
    _, tokens = jax.lax.scan(step, start, keys)
    return tokens.T

  def sample_prior(self, key: Array, num_samples: int, greedy: bool = False) -> Array:
    """Token batches decoded from z ~ N(0, I): (num_samples, T); greedy or sampled."""
    z_key, decode_key = jax.random.split(key)
    z = jax.random.normal(z_key, (num_samples, self.latent_dim), jnp.float32)
    return self.generate(z, None if greedy else decode_key)


def _generate_step(arrays, sample: bool, temperature: float, state, key):
  """One decoding step (pure): the scan body of :meth:`SequenceVAE.generate`."""
  embedding, input_kernel, latent_gates, recurrent_kernel, out_kernel, out_bias = arrays
  carry, previous, done = state
  carry, h = lstm_cell(recurrent_kernel, carry, embedding[previous] @ input_kernel + latent_gates)
  # <pad> and <bos> are never targets: a decoder must not emit them.
  logits = (h @ out_kernel + out_bias).at[:, jnp.array([PAD_ID, BOS_ID])].set(-jnp.inf)
  if sample:
    chosen = jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)
  else:
    chosen = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  chosen = jnp.where(done, PAD_ID, chosen)
  return (carry, chosen, done | (chosen == EOS_ID)), chosen


def word_dropout(key: Array, inputs: Array, keep: float) -> Array:
  """``inputs`` with each word (not ``<bos>``, not padding) replaced by ``<unk>`` w.p. 1 − keep."""
  droppable = (inputs != BOS_ID) & (inputs != PAD_ID)
  kept = jax.random.bernoulli(key, keep, inputs.shape)
  return jnp.where(droppable & ~kept, UNK_ID, inputs)


def check_word_keep(value: Any) -> float:
  """``model.word_keep`` must lie in (0, 1]; 1 = no word dropout."""
  return check_number(value, "model.word_keep", minimum=0, maximum=1, exclusive_minimum=True)


TEXT_DEFAULTS = {"embedding_size": 256, "hidden_size": 256, "word_keep": 1.0}


def _build(config: dict, spec: DataSpec, latent_dim: int) -> SequenceVAE:
  if config["dtype"] != "float32":
    raise ValueError(f"Text models compute in float32 only; got model.dtype={config['dtype']!r}.")
  return SequenceVAE(
      vocab_size=spec.vocab_size, max_length=spec.max_length, latent_dim=latent_dim,
      embedding_size=check_int(config["embedding_size"], "model.embedding_size", minimum=1),
      hidden_size=check_int(config["hidden_size"], "model.hidden_size", minimum=1),
      word_keep=check_word_keep(config["word_keep"]),
      posterior_min_variance=float(config["posterior_min_variance"]))


@registry.register("lstm_vae", data_kind=TOKENS, latent_dim=32, **TEXT_DEFAULTS)
def _build_lstm_vae(config: dict, spec: DataSpec) -> SequenceVAE:
  return _build(config, spec, config["latent_dim"])


@registry.register("lstm_lm", data_kind=TOKENS, **TEXT_DEFAULTS)
def _build_lstm_lm(config: dict, spec: DataSpec) -> SequenceVAE:
  """The language model (no latent: ``latent_dim`` is not used; ``word_keep`` is)."""
  return _build(config, spec, 0)
