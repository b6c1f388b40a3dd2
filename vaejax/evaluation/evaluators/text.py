r"""The ``text`` evaluator: sequence models scored on a whole held-out split.

For every model of the stack, over *every* sentence of the held-out split (``eval.split``:
"test" by default; nothing dropped, nothing cut), with the pure functions of
:mod:`vaejax.evaluation.text`:

* ``nll``: :math:`-\frac1N \sum_x \log \hat p_K(x)`, the importance-weighted bound with
  K = ``num_samples`` samples of q(z|x) (He et al. 2019 use 500; K = 1 is the ELBO), in
  nats per sentence; exact for the language model (no latent: every weight is p(x));
* ``ppl``: :math:`\exp(\sum_x \mathrm{NLL}(x) / \sum_x n_x)`, n_x the scored tokens of x
  (words and ``<eos>``), as PTB perplexities count them;
* ``kl``, ``recon``, ``elbo``, ``kl_per_dim``: the ELBO's terms of one sample z ~ q(z|x);
* ``mi``: He et al.'s estimate of I(x; z) under q, the aggregate posterior approximated by
  the mixture of *all* N sentences' posteriors;
* ``active_units``: Burda et al.'s Cov_x E_q[z_j] > 0.01;
* ``num_sentences``, ``num_tokens``, ``num_samples`` (the K used) and ``seconds``.

The importance samples' keys come from the evaluator's ``seed`` (the same for every model,
as :mod:`~vaejax.evaluation.evaluators.iwae`'s), so model *i* of a sweep is scored exactly
as its single run. Results, with the NLL of every sentence, go to ``text.json`` in the
model's directory; ``figures/reconstructions.txt`` (greedy decodes of the posterior
means of the first ``num_sentences`` sentences), ``figures/prior_samples.txt`` (z ~ N(0, I)
decoded greedily and sampled) and ``figures/homotopies.txt`` (greedy decodes along the
line between the codes of two sentences, Bowman et al.'s table) are written atomically
(``num_sentences`` = 0: none).

Cost: K decoder passes per sentence dominate (the encoder runs once per sentence); the
split goes through in padded batches of ``batch_size`` sentences (one compiled shape) and
samples in chunks of ``chunk_size`` (memory ∝ ``chunk_size`` × ``batch_size`` × T × V).
Progress shows per batch.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from vaejax import objectives, rng
from vaejax.evaluation import text as text_metrics
from vaejax.evaluation.evaluators.base import (
    EvaluationError,
    Evaluator,
    config_int,
    held_out_split,
    is_writer,
    track,
    write_json,
)
from vaejax.evaluation.evaluators.registry import register
from vaejax.models import codec
from vaejax.utils import files

FIGURES_DIR = "figures"
HOMOTOPY_PAIRS = 3  # pairs of held-out sentences (0, 1), (2, 3), (4, 5)


@functools.lru_cache(maxsize=32)
def make_text_fn(model: Any, num_samples: int, chunk_size: int) -> Callable:
  """``(params, seed, tokens, key) -> per-sentence terms`` for :meth:`Stack.map_models`:
  ``log_px`` (the K-sample bound), ``recon``, ``kl``, ``kl_per_dim``, and the posterior
  ``mean``, ``log_var`` with the ELBO's sample ``z`` (for MI and active units)."""
  samples = num_samples if model.latent_dim else 1  # the LM: exact at K = 1

  def fn(params, seed, tokens, key):
    del seed  # the evaluator's keys, the same for every model
    iwae_key, elbo_key = jax.random.split(key)
    log_px = text_metrics.log_likelihood(model, params, tokens, iwae_key, samples,
                                         min(chunk_size, samples))
    outputs = model.apply({"params": params}, tokens, rngs={"sample": elbo_key})
    terms = objectives.elbo_terms(tokens, outputs)
    return {"log_px": log_px, "recon": terms["recon"], "kl": terms["kl"],
            "kl_per_dim": terms["kl_per_dim"], "mean": outputs.mean,
            "log_var": outputs.log_var, "z": outputs.z}

  return fn


def summarize_text(chunks: Sequence[Mapping[str, Any]], lengths: np.ndarray,
                   num_samples: int) -> tuple[dict[str, Any], np.ndarray]:
  """The evaluator's numbers from :func:`make_text_fn`'s outputs over a whole split, and
  the NLL of every sentence (nats)."""
  cat = {k: np.concatenate([np.asarray(c[k]) for c in chunks]) for k in chunks[0]}
  nll = -cat["log_px"].astype(np.float64)
  mean = cat["mean"]
  has_latent = mean.shape[1] > 0
  results = {
      "nll": float(nll.mean()),
      "ppl": text_metrics.perplexity(nll, lengths),
      "elbo": float(np.mean(cat["recon"] - cat["kl"])),
      "recon": float(np.mean(cat["recon"])),
      "kl": float(np.mean(cat["kl"])),
      "kl_per_dim": np.mean(cat["kl_per_dim"], axis=0).tolist(),
      "mi": float(text_metrics.mutual_information(mean, cat["log_var"], cat["z"]))
            if has_latent else 0.0,
      "active_units": int(text_metrics.active_units(mean)) if has_latent else 0,
      "num_sentences": int(nll.shape[0]),
      "num_tokens": int(np.sum(lengths)),
      "num_samples": int(num_samples if has_latent else 1),
  }
  return results, nll


@register("text")
class TextEvaluator(Evaluator):
  """NLL, perplexity, KL, MI, active units and text outputs of sequence models."""

  RESULTS_FILE = "text.json"

  def __init__(self, name, group, setup, requested=False):
    super().__init__(name, group, setup, requested)
    where = f"evals.{name}"
    self.num_samples = config_int(group, "num_samples", where)
    self.chunk_size = config_int(group, "chunk_size", where)
    self.batch_size = config_int(group, "batch_size", where)
    self.num_sentences = config_int(group, "num_sentences", where, minimum=0)
    self.homotopy_steps = config_int(group, "homotopy_steps", where, minimum=2)
    self.seed = config_int(group, "seed", where, minimum=0)
    if self.enabled:
      self._check_setup(name)
    self._fn = make_text_fn(setup.model, self.num_samples, self.chunk_size)

  def _check_setup(self, name: str) -> None:
    setup = self.setup
    if codec.data_key(setup.model) != "tokens" or not hasattr(setup.dataset, "vocabulary"):
      raise EvaluationError(
          f"Evaluator evals.{name} (text) scores sequence models (lstm_vae, lstm_lm) on "
          f"token datasets; model {setup.config.model.name!r} on {setup.dataset.name!r} is "
          f"not one. Set --config.evals.{name}.at_end=False.")
    self.split = held_out_split(setup.dataset, setup.config.eval.split)

  def _batches(self) -> tuple[list[tuple[np.ndarray, int]], np.ndarray, np.ndarray]:
    """The split in padded batches ``(tokens, real rows)``, its tokens and lengths."""
    arrays = self.setup.dataset.arrays(self.split)
    tokens, size = arrays.tokens, self.batch_size
    batches = []
    for start in range(0, len(arrays), size):
      rows = tokens[start:start + size]
      real = rows.shape[0]
      if real < size:  # one compiled shape: repeat the last sentence, drop its results
        rows = np.concatenate([rows, np.repeat(rows[-1:], size - real, axis=0)])
      batches.append((rows, real))
    return batches, tokens, arrays.lengths

  def evaluate(self, stack, step):
    setup = self.setup
    batches, tokens, lengths = self._batches()
    key = jax.random.key(self.seed)
    per_model: list[list[dict]] = [[] for _ in setup.seeds]
    start = time.perf_counter()
    label = f"text {self.split} ({len(tokens)} sentences, K={self.num_samples})"
    for i, (rows, real) in enumerate(track(batches, label)):
      outs = stack.map_models(self._fn, rows, jax.random.fold_in(key, i))
      for m, out in enumerate(outs):
        per_model[m].append(jax.tree.map(lambda a, real=real: np.asarray(a)[:real], out))
    seconds = (time.perf_counter() - start) / max(len(per_model), 1)
    results = []
    for m, chunks in enumerate(per_model):
      row, nll = summarize_text(chunks, lengths, self.num_samples)
      row["seconds"] = seconds
      write_json(setup.model_dirs[m] / self.RESULTS_FILE,
                 {"step": step, "split": self.split, **row, "nll_per_sentence": nll.tolist()})
      self._write_texts(m, stack.params(m), tokens)
      results.append(row)
    return results

  def _write_texts(self, m: int, params: Any, tokens: np.ndarray) -> None:
    """Reconstructions, prior samples and homotopies of model ``m`` as ``figures/*.txt``."""
    if not is_writer() or not self.num_sentences:
      return
    model, vocab, n = self.setup.model, self.setup.dataset.vocabulary, self.num_sentences
    out = self.setup.model_dirs[m] / FIGURES_DIR
    key = rng.stream_key(self.setup.seeds[m], rng.FIGURES)
    pairs = text_metrics.reconstructions(model, params, tokens[:n], vocab)
    files.atomic_write_text(out / "reconstructions.txt", "".join(
        f"x: {x}\n→ {y}\n\n" for x, y in pairs))
    greedy = text_metrics.prior_samples(model, params, key, n, vocab, greedy=True)
    sampled = text_metrics.prior_samples(model, params, key, n, vocab)
    files.atomic_write_text(out / "prior_samples.txt", _section(
        "greedy decodes of z ~ N(0, I)", greedy) + "\n" + _section(
        "sampled decodes (temperature 1) of the same z", sampled))
    homotopies = []
    for a in range(min(HOMOTOPY_PAIRS, len(tokens) // 2)):
      path = text_metrics.homotopy(model, params, tokens[2 * a], tokens[2 * a + 1], vocab,
                                   self.homotopy_steps)
      homotopies.append(_section(f"sentences {2 * a + 1} → {2 * a + 2} of the split", path))
    files.atomic_write_text(out / "homotopies.txt", "\n".join(homotopies))


def _section(title: str, lines: Sequence[str]) -> str:
  return f"# {title}\n" + "".join(f"{line}\n" for line in lines)
