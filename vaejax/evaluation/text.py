r"""Evaluation of sequence models (:mod:`vaejax.models.sequence`) as pure functions.

* Per-sentence NLL by importance sampling (Burda et al. 2015), K samples of q(z|x):
  :math:`-\log \hat p_K(x) = -\log \frac1K \sum_k p(x|z_k)\,p(z_k)/q(z_k|x)` (K = 1: an
  unbiased ELBO estimate; He et al. 2019 use K = 500), through
  :func:`vaejax.evaluation.likelihood.iwae_log_likelihood` and the library's one log
  weight. The encoder runs once per sentence; only the decoder runs K times. For the
  language model (d = 0) every weight is p(x): the exact NLL, from one sample.
* Perplexity over a corpus: :math:`\exp(\sum_x \mathrm{NLL}(x) / \sum_x n_x)`, n_x the
  scored tokens of x (words and ``<eos>``), as PTB's perplexities count them.
* Mutual information I(x; z) under q (Hoffman & Johnson 2016; He et al. 2019's
  estimator), over a batch of N sentences with one z_n ~ q(z|x_n) each:

  .. math::
     \hat I = \frac1N\sum_n \bigl[-H(q(z|x_n))\bigr]
            - \frac1N\sum_n \log \hat q(z_n),\qquad
     \log \hat q(z) = \log \frac1N \sum_m q(z \mid x_m),

  i.e. E_x[KL(q(z|x) ‖ p(z))] − KL(q(z) ‖ p(z)) with the aggregate posterior q(z)
  approximated by the batch's mixture (p(z) cancels). Biased for small N (log q̂ uses
  the batch itself); report N with it.
* Active units: :func:`vaejax.evaluation.likelihood.active_units` of the posterior means.
* Text: greedy reconstructions, samples from the prior, and homotopies between two
  sentences' codes (Bowman et al. 2016), as strings.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vaejax import distributions
from vaejax.evaluation.likelihood import active_units, iwae_log_likelihood
from vaejax.types import VAEOutput

Array = jax.Array
ArrayLike = Any

__all__ = ["active_units", "homotopy", "log_likelihood", "mutual_information", "perplexity",
           "prior_samples", "reconstructions"]


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "chunk_size"))
def log_likelihood(model: nn.Module, params: Any, tokens: ArrayLike, key: Array,
                   num_samples: int, chunk_size: int = 100) -> Array:
  r"""Per-sentence :math:`\log \hat p_K(x)` in nats, (B,) (negate for the NLL); jitted.

  Args:
    model: a :class:`~vaejax.models.sequence.SequenceVAE` (the VAE or the LM).
    params: its parameters.
    tokens: int32 (B, T) token batch.
    key: PRNG key of the K posterior samples.
    num_samples: K ≥ 1 (the LM uses 1: its estimate is exact for every K).
    chunk_size: samples decoded at once (memory grows with it, not with K).
  """
  variables = {"params": params}
  tokens = jnp.asarray(tokens)
  mean, log_var = model.apply(variables, tokens, method="encode")
  if mean.shape[-1] == 0:
    num_samples = 1

  def sample_outputs(k: Array) -> VAEOutput:
    z = distributions.sample_diag_gaussian(k, mean, log_var)
    return VAEOutput(mean, log_var, z, model.apply(variables, z, tokens, method="decode"))

  return iwae_log_likelihood(sample_outputs, tokens, key, num_samples, chunk_size)


def perplexity(nll: ArrayLike, lengths: ArrayLike) -> float:
  """exp(total NLL / total scored tokens) of sentences with ``nll`` (N,) nats and ``lengths``
  (N,) scored tokens (``<eos>`` included)."""
  nll, lengths = np.asarray(nll, np.float64), np.asarray(lengths, np.float64)
  if nll.shape != lengths.shape or nll.ndim != 1 or not np.all(lengths > 0):
    raise ValueError(f"perplexity needs (N,) NLLs and positive (N,) lengths; got shapes "
                     f"{nll.shape}, {lengths.shape}.")
  return float(math.exp(nll.sum() / lengths.sum()))


@jax.jit
def mutual_information(mean: ArrayLike, log_var: ArrayLike, z: ArrayLike) -> Array:
  """He et al.'s batch estimate of I(x; z) under q in nats (module docstring).

  Args:
    mean, log_var: (N, d) posterior parameters of N sentences.
    z: (N, d), one sample z_n ~ q(z | x_n) per sentence.

  Returns:
    A float32 scalar (0 for d = 0).
  """
  mean, log_var, z = (jnp.asarray(a, jnp.float32) for a in (mean, log_var, z))
  if mean.ndim != 2 or log_var.shape != mean.shape or z.shape != mean.shape:
    raise ValueError(f"mean, log_var and z must be (N, d) of one shape; got {mean.shape}, "
                     f"{log_var.shape}, {z.shape}.")
  num = mean.shape[0]
  neg_entropy = jnp.mean(-0.5 * jnp.sum(distributions.LOG_2PI + 1.0 + log_var, axis=-1))
  log_qz = _log_mixture(z, mean, log_var) - math.log(num)
  return neg_entropy - jnp.mean(log_qz)  # d = 0: both terms are 0


MI_BLOCK = 256  # rows of z per block of the N × N log-density table (memory ∝ block · N · d)


def _log_mixture(z: Array, mean: Array, log_var: Array) -> Array:
  """log Σ_m q(z_n | x_m) for each row z_n, in blocks of :data:`MI_BLOCK` rows, so a whole
  test split (N in the thousands) never holds the N × N × d table at once."""
  num, dim = z.shape
  if dim == 0:  # every density of no dimensions is 1
    return jnp.full((num,), math.log(num), jnp.float32)
  block = min(MI_BLOCK, num)
  padded = jnp.pad(z, ((0, -num % block), (0, 0))).reshape(-1, block, dim)

  def rows(z_block):
    pairs = distributions.diag_gaussian_log_prob(z_block[:, None, :], mean[None], log_var[None])
    return jax.nn.logsumexp(jnp.sum(pairs, axis=-1), axis=1)

  return jax.lax.map(rows, padded).reshape(-1)[:num]


def _texts(vocabulary: Any, tokens: ArrayLike) -> list[str]:
  return [vocabulary.to_text(row) for row in np.asarray(tokens)]


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _apply(model: nn.Module, method: str, static: tuple, params: Any, *args: Any) -> Any:
  """``model.apply`` of ``method`` compiled once per model (the figures call it repeatedly)."""
  return model.apply({"params": params}, *args, *static, method=method)


def reconstructions(model: nn.Module, params: Any, tokens: ArrayLike, vocabulary: Any
                    ) -> list[tuple[str, str]]:
  """``(sentence, greedy decode of its posterior mean)`` for each row of ``tokens``."""
  mean, _ = _apply(model, "encode", (), params, jnp.asarray(tokens))
  decoded = _apply(model, "generate", (), params, mean)
  return list(zip(_texts(vocabulary, tokens), _texts(vocabulary, decoded)))


def prior_samples(model: nn.Module, params: Any, key: Array, num_samples: int, vocabulary: Any,
                  greedy: bool = False) -> list[str]:
  """Sentences decoded from z ~ N(0, I) (for the LM: samples of the language model)."""
  tokens = _apply(model, "sample_prior", (int(num_samples), bool(greedy)), params, key)
  return _texts(vocabulary, tokens)


def homotopy(model: nn.Module, params: Any, tokens_a: ArrayLike, tokens_b: ArrayLike,
             vocabulary: Any, num_steps: int = 5) -> list[str]:
  r"""Greedy decodes along :math:`z(t) = (1 - t)\,μ_a + t\,μ_b`, t = 0, 1/(n−1), ..., 1,
  between the posterior means of two sentences (each (T,) or (1, T))."""
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
    raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}.")
  pair = jnp.concatenate([jnp.reshape(jnp.asarray(t), (1, -1)) for t in (tokens_a, tokens_b)])
  mean, _ = _apply(model, "encode", (), params, pair)
  weights = jnp.linspace(0.0, 1.0, num_steps)[:, None]
  path = (1.0 - weights) * mean[0] + weights * mean[1]
  return _texts(vocabulary, _apply(model, "generate", (), params, path))

